//! Headless Chromium driven over the DevTools protocol: navigate, evaluate script in the
//! page, take a screenshot. The protocol runs over `--remote-debugging-pipe` (Chromium
//! reads commands on fd 3 and writes answers on fd 4, each a JSON message ended by a NUL
//! byte), so no port is opened and no WebSocket client is needed.

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{Netns, browser::Chromium};

/// How long one command may take (a navigation included).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A Chromium and the one page it drives.
pub struct Browser {
    to: File,
    from: File,
    buf: Vec<u8>,
    next_id: u64,
    session: String,
    /// Last: killed (with its helpers) on drop.
    pub chromium: Chromium,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own; result checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Browser {
    /// Starts `binary` headless in `ns` with a `width`×`height` window on a blank page.
    pub fn launch(ns: &Netns, binary: &Path, width: u32, height: u32) -> Result<Self, String> {
        let (cmd_read, cmd_write) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let (ans_read, ans_write) = pipe().map_err(|e| format!("pipe: {e}"))?;
        let (r, w) = (cmd_read.as_raw_fd(), ans_write.as_raw_fd());
        let size = format!("--window-size={width},{height}");
        let chromium = Chromium::launch_configured(
            ns,
            binary,
            "about:blank",
            &["--remote-debugging-pipe", &size, "--hide-scrollbars"],
            move |cmd| {
                // SAFETY: dup2 is async-signal-safe; between fork and exec it only puts
                // the pipe ends where Chromium looks for them (dup2 clears CLOEXEC on
                // the copies; the originals close at exec).
                unsafe {
                    cmd.pre_exec(move || {
                        // Copies above 4 first: either end may itself be fd 3 or 4.
                        let (r, w) = (
                            libc::fcntl(r, libc::F_DUPFD, 10),
                            libc::fcntl(w, libc::F_DUPFD, 10),
                        );
                        if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            },
        )
        .map_err(|e| format!("launch Chromium: {e}"))?;
        // Our copies of Chromium's ends go, so its exit shows as EOF.
        drop((cmd_read, ans_write));
        let mut b = Browser {
            to: File::from(cmd_write),
            from: File::from(ans_read),
            buf: Vec::new(),
            next_id: 0,
            session: String::new(),
            chromium,
        };
        let targets = b.call(None, "Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .ok_or_else(|| format!("no page target in {targets}"))?
            .to_owned();
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session in {attached}"))?
            .to_owned();
        b.page("Page.enable", json!({}))?;
        Ok(b)
    }

    /// Sends `method` (to the page's session, or the browser with `None`) and waits for
    /// its answer, skipping events.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON");
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .map_err(|e| format!("{method}: write to Chromium: {e}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let m = self
                .message(deadline)
                .map_err(|e| format!("{method}: {e}"))?;
            if m["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(e) = m.get("error") {
                return Err(format!("{method}: {e}"));
            }
            return Ok(m["result"].clone());
        }
    }

    /// A command to the page.
    pub fn page(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// The next whole message from Chromium.
    fn message(&mut self, deadline: Instant) -> Result<Value, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == 0) {
                let raw: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&raw[..end])
                    .map_err(|e| format!("bad message: {e}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer within {CALL_TIMEOUT:?}"));
            }
            let mut pfd = libc::pollfd {
                fd: self.from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own; result checked.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            if n == 0 {
                continue;
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.from.read(&mut chunk) {
                Ok(0) => return Err("Chromium closed the DevTools pipe (exited?)".into()),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Opens `url` and waits for its load event.
    pub fn navigate(&mut self, url: &str) -> Result<(), String> {
        let r = self.page("Page.navigate", json!({"url": url}))?;
        if let Some(e) = r.get("errorText") {
            return Err(format!("navigate {url}: {e}"));
        }
        // The load event may come before or after the answer: poll the ready state.
        let deadline = Instant::now() + CALL_TIMEOUT;
        while self.eval("document.readyState")? != "complete" {
            if Instant::now() > deadline {
                return Err(format!("{url} still loading after {CALL_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The value of `expression` in the page (a promise is awaited), as JSON.
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.page(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {e}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expression` until it is `true` or `timeout` passes; the last value on
    /// failure.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expression)?;
            if v == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("`{expression}` still {v} after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), String> {
        use base64::Engine as _;
        // A page not in front is not painted: its screenshot is blank.
        self.page("Page.bringToFront", json!({}))?;
        let r = self.page(
            "Page.captureScreenshot",
            json!({"format": "png", "fromSurface": true}),
        )?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("screenshot: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("{}: {e}", path.display()))
    }
}
