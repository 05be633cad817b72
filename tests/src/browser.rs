//! A real browser in the test topology: headless Chromium started inside a namespace
//! (its own process group, killed as a group on drop), and a tiny HTTP server in the
//! same namespace that serves the test page and takes the page's result.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::Netns;

/// The Chromium binary: `$CHROMIUM` if set, else the first of the usual names on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// What the page posted, and what the test tells it.
#[derive(Default)]
struct Inbox {
    results: Mutex<Vec<String>>,
    /// `POST /progress` bodies: where a long page has got to (e.g. its call is flowing).
    progress: Mutex<Vec<String>>,
    arrived: Condvar,
    progressed: Condvar,
    /// What `GET /control` answers: "stop" once set, else "go".
    stop: AtomicBool,
}

/// An HTTP/1.0-style server on `127.0.0.1` of a namespace: `GET /` (any path but the
/// ones below) serves the page, `POST /result` (or `GET /result?…`) records a result,
/// `POST /progress` a progress report, `GET /control` answers "go" until
/// [`stop_page`](Self::stop_page), then "stop". Stops on drop.
pub struct PageServer {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    /// Binds an ephemeral port on the loopback of `ns` and serves `page` (HTML).
    pub fn start(ns: &Netns, page: &'static str) -> std::io::Result<Self> {
        // The socket belongs to the namespace it was created in, whichever thread uses it.
        let listener = ns.run(|| TcpListener::bind("127.0.0.1:0"))??;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let inbox = Arc::new(Inbox::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (inbox, stop) = (inbox.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let _ = serve(conn, page, &inbox);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Self {
            addr,
            inbox,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT/` (reachable inside the namespace only).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Waits for the first result the page reports.
    pub fn wait_result(&self, timeout: Duration) -> Option<String> {
        wait_first(&self.inbox.results, &self.inbox.arrived, timeout)
    }

    /// Waits for the first progress report the page posts.
    pub fn wait_progress(&self, timeout: Duration) -> Option<String> {
        wait_first(&self.inbox.progress, &self.inbox.progressed, timeout)
    }

    /// From now on `GET /control` answers "stop".
    pub fn stop_page(&self) {
        self.inbox.stop.store(true, Ordering::Relaxed);
    }
}

/// The first entry of `list`, waiting up to `timeout` for one (`arrived` is notified
/// with each).
fn wait_first(list: &Mutex<Vec<String>>, arrived: &Condvar, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut results = list.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(r) = results.first() {
            return Some(r.clone());
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        results = arrived
            .wait_timeout(results, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request, one response, connection closed.
fn serve(mut conn: TcpStream, page: &str, inbox: &Inbox) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("");
    let target = request_line.next().unwrap_or("/");
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = buf[header_end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }

    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, content_type, content): (&str, &str, String) = match (method, path) {
        ("POST", "/result") => {
            record(
                &inbox.results,
                &inbox.arrived,
                String::from_utf8_lossy(&body).into_owned(),
            );
            ("200 OK", "text/plain", "ok\n".into())
        }
        ("GET", "/result") => {
            record(&inbox.results, &inbox.arrived, percent_decode(query));
            ("200 OK", "text/plain", "ok\n".into())
        }
        ("POST", "/progress") => {
            record(
                &inbox.progress,
                &inbox.progressed,
                String::from_utf8_lossy(&body).into_owned(),
            );
            ("200 OK", "text/plain", "ok\n".into())
        }
        ("GET", "/control") => {
            let word = if inbox.stop.load(Ordering::Relaxed) {
                "stop\n"
            } else {
                "go\n"
            };
            ("200 OK", "text/plain", word.into())
        }
        ("GET", "/favicon.ico") => ("404 Not Found", "text/plain", String::new()),
        ("GET", _) => ("200 OK", "text/html; charset=utf-8", page.to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", String::new()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{content}",
        content.len()
    );
    conn.write_all(response.as_bytes())?;
    conn.flush()
}

fn record(list: &Mutex<Vec<String>>, arrived: &Condvar, result: String) {
    list.lock().unwrap_or_else(|e| e.into_inner()).push(result);
    arrived.notify_all();
}

/// `application/x-www-form-urlencoded`-style decoding (`+` is a space).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The page's report: `key=value` lines, keys may repeat.
#[derive(Clone, Debug)]
pub struct Report {
    pub text: String,
}

impl Report {
    pub fn parse(text: String) -> Self {
        Self { text }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.all(key).into_iter().next()
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.text
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect()
    }
}

/// Flags for headless Chromium as root in a bare namespace, plus WebRTC logging.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints,Translate",
    "--autoplay-policy=no-user-gesture-required",
    "--enable-logging=stderr",
    "--v=0",
    // WebRTC's own logs (ICE, TURN port) for the failure report.
    "--vmodule=*/webrtc/*=1,*/p2p/*=1,*turn*=1",
];

/// A running Chromium in its own process group; the whole group is killed on drop and
/// its profile directory removed. Its stderr goes to a file (see [`output`](Self::output)).
pub struct Chromium {
    child: Child,
    pgid: libc::pid_t,
    dir: PathBuf,
    log_path: PathBuf,
}

impl Chromium {
    /// Starts `binary` inside `ns` on `url` with [`CHROMIUM_FLAGS`] and a fresh profile.
    pub fn launch(ns: &Netns, binary: &Path, url: &str) -> std::io::Result<Self> {
        Self::launch_with(ns, binary, url, &[])
    }

    /// Like [`launch`](Self::launch) with `extra` flags after [`CHROMIUM_FLAGS`] (e.g.
    /// `--ignore-certificate-errors` for a relay with a test certificate on `turns:`).
    pub fn launch_with(
        ns: &Netns,
        binary: &Path,
        url: &str,
        extra: &[&str],
    ) -> std::io::Result<Self> {
        Self::launch_configured(ns, binary, url, extra, |_| {})
    }

    /// Like [`launch_with`](Self::launch_with), `configure` adjusting the command last
    /// (the DevTools pipe of [`crate::cdp`]).
    pub fn launch_configured(
        ns: &Netns,
        binary: &Path,
        url: &str,
        extra: &[&str],
        configure: impl FnOnce(&mut std::process::Command),
    ) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("chromium-test-{}", crate::netns::unique_id()));
        std::fs::create_dir_all(&dir)?;
        let profile = dir.join("profile");
        let log_path = dir.join("chromium.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = ns.command(binary.to_str().expect("utf-8 path"));
        cmd.args(CHROMIUM_FLAGS)
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .env("HOME", &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // New process group led by the child: Chromium's helpers (zygote, renderer,
            // network service) inherit it, so one kill(-pgid) ends them all.
            .process_group(0);
        configure(&mut cmd);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let pgid = child.id() as libc::pid_t;
        Ok(Self {
            child,
            pgid,
            dir,
            log_path,
        })
    }

    /// Everything Chromium printed so far.
    pub fn output(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// WebRTC's ICE/TURN/STUN output lines (the `p2p` sources, or lines naming TURN,
    /// STUN or ICE), at most `max` of the last.
    pub fn ice_lines(&self, max: usize) -> String {
        let out = self.output();
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| {
                l.contains("/p2p/")
                    || l.contains("TURN")
                    || l.contains("STUN")
                    || l.contains("ICE")
                    || l.contains("IceConnectionState")
            })
            .collect();
        let skip = lines.len().saturating_sub(max);
        lines[skip..].join("\n")
    }

    /// The process group id (= the leader's pid).
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Kills the whole process group and reaps the leader.
    pub fn kill(&mut self) {
        // SAFETY: kill(2) on our own child's process group; the leader is not reaped
        // yet, so the group id cannot have been reused.
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        // Helpers that outlive the leader for a moment still carry the group id.
        let deadline = Instant::now() + Duration::from_secs(2);
        while group_alive(self.pgid) && Instant::now() < deadline {
            // SAFETY: as above; the group may now only hold our orphaned helpers.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether any process is still in group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    // kill(pgid, 0) fails with ESRCH once no process of the group exists.
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}
