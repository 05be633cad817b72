//! `relay stun` against a real coturn (`turnserver`) on loopback.
//!
//! Every test starts its own turnserver on free ports, kills it when done (guard + parent
//! death signal) and runs under a time limit. The library is called directly and its
//! report struct inspected; no text is grepped.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use relay_proto::server::Limits;
use relay_proto::stun::{
    AlternateServer, Class, ErrorCode, Message, MessageWriter, Method, Nonce, Realm, Software,
    XorMappedAddress,
};
use relay_tools::probe::{
    self, CredentialArgs, Credentials, ProbeArgs, ProbeOptions, Report, Retransmit, Status,
    TlsArgs, Transport, exit,
};

const REALM: &str = "example.org";
const USER: &str = "alice";
const PASSWORD: &str = "secretpw";
const SECRET: &str = "north-wind-secret";
/// Whole-test limit: coturn start-up plus a handful of loopback round trips.
const TEST_LIMIT: Duration = Duration::from_secs(20);
/// How long coturn may take to free a deleted allocation's 5-tuple.
const DELETE_GRACE: Duration = Duration::from_millis(2500);

/// Runs `f` on its own thread and fails the test if it takes longer than `limit`. Child
/// processes started inside are tied to that thread (PR_SET_PDEATHSIG), so a hung test
/// cannot leave a turnserver behind.
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            h.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: re-raise its panic.
            match h.join() {
                Err(p) => std::panic::resume_unwind(p),
                Ok(()) => unreachable!(),
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test exceeded {limit:?}"),
    }
}

/// Two consecutive free UDP ports on loopback (coturn also binds PORT+1 for RFC 5780).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65_000 && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free UDP port pair on loopback");
}

enum Auth {
    LongTerm,
    Rest,
}

/// A free TCP port on loopback.
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A turnserver process, killed on drop.
struct Turnserver {
    child: Child,
    addr: SocketAddr,
    /// TURN over TLS, when started with [`Turnserver::start_streams`].
    tls_addr: Option<SocketAddr>,
    min_port: u16,
    max_port: u16,
    dir: PathBuf,
}

/// A self-signed certificate for `localhost` and 127.0.0.1, as PEM files in `dir`.
struct SelfSigned {
    cert: PathBuf,
    key: PathBuf,
}

impl SelfSigned {
    fn write(dir: &std::path::Path) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("self-signed certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        fs::write(&cert, ck.cert.pem()).unwrap();
        fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        Self { cert, key }
    }
}

impl Turnserver {
    /// UDP only.
    fn start(auth: Auth) -> Self {
        Self::launch(auth, false)
    }

    /// UDP and TCP on one port, TLS (self-signed, see [`Turnserver::certificate`]) on another.
    fn start_streams(auth: Auth) -> Self {
        Self::launch(auth, true)
    }

    fn certificate(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn launch(auth: Auth, streams: bool) -> Self {
        let port = free_port_pair();
        // Relay range derived from the listening port: distinct per test, clear of it.
        let min_port = 20_000 + (port % 400) * 50;
        let max_port = min_port + 49;
        let dir =
            std::env::temp_dir().join(format!("relay-probe-test-{}-{port}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // An empty config file: Debian's /etc/turnserver.conf (e.g. `syslog`) stays out.
        let conf = dir.join("turnserver.conf");
        fs::write(&conf, "").unwrap();
        let mut cmd = Command::new("turnserver");
        cmd.arg("-c")
            .arg(&conf)
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .arg("--listening-port")
            .arg(port.to_string())
            .arg("--min-port")
            .arg(min_port.to_string())
            .arg("--max-port")
            .arg(max_port.to_string())
            .args(["--realm", REALM]);
        let mut tls_addr = None;
        if streams {
            let certs = SelfSigned::write(&dir);
            let tls_port = free_tcp_port();
            tls_addr = Some(SocketAddr::from(([127, 0, 0, 1], tls_port)));
            cmd.arg("--tls-listening-port")
                .arg(tls_port.to_string())
                .arg("--cert")
                .arg(&certs.cert)
                .arg("--pkey")
                .arg(&certs.key);
        } else {
            cmd.args(["--no-tcp", "--no-tls"]);
        }
        cmd.args([
            "--no-dtls",
            "--no-cli",
            "--no-rfc5780",
            "--allow-loopback-peers",
            "--simple-log",
            "--verbose",
        ])
        .arg("--log-file")
        .arg(dir.join("turnserver.log"))
        .arg("--db")
        .arg(dir.join("turndb"))
        .arg("--pidfile")
        .arg(dir.join("turnserver.pid"));
        match auth {
            Auth::LongTerm => {
                cmd.args(["--lt-cred-mech", "--user"])
                    .arg(format!("{USER}:{PASSWORD}"));
            }
            Auth::Rest => {
                cmd.args(["--use-auth-secret", "--static-auth-secret", SECRET]);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("cannot run `turnserver` (Debian package coturn)");
        let server = Turnserver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls_addr,
            min_port,
            max_port,
            dir,
        };
        server.wait_ready();
        server
    }

    /// Polls with one-shot Bindings until coturn answers.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let opts = ProbeOptions {
            retransmit: Retransmit {
                rto: Duration::from_millis(100),
                tries: 1,
                timeout: Duration::from_millis(100),
                ..Retransmit::default()
            },
            ..ProbeOptions::default()
        };
        while Instant::now() < deadline {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            if probe::probe(&sock, self.addr, &opts).binding.step.status == Status::Ok {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("turnserver did not come up:\n{}", self.log());
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.join("turnserver.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn args(&self) -> ProbeArgs {
        udp_args(&self.addr.to_string())
    }
}

impl Drop for Turnserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The flags' defaults, for SERVER.
fn udp_args(server: &str) -> ProbeArgs {
    ProbeArgs {
        server: server.into(),
        transport: None,
        tls: TlsArgs::default(),
        credentials: CredentialArgs::default(),
        realm: None,
        timeout_ms: 2000,
        tries: 4,
        json: false,
    }
}

fn long_term(password: &str) -> ProbeOptions {
    ProbeOptions {
        credentials: Some(Credentials {
            username: USER.into(),
            password: password.into(),
            rest: false,
        }),
        ..ProbeOptions::default()
    }
}

fn loopback_socket() -> (UdpSocket, SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    (sock, local)
}

fn assert_allocated(ts: &Turnserver, r: &Report, local: SocketAddr) {
    let a = r.allocation.as_ref().expect("allocation report");
    assert_eq!(a.step.status, Status::Ok, "{r:#?}\n{}", ts.log());
    assert_eq!(a.realm.as_deref(), Some(REALM));
    let relayed = a.relayed_address.expect("relayed address");
    assert_eq!(relayed.ip(), ts.addr.ip());
    assert!(
        (ts.min_port..=ts.max_port).contains(&relayed.port()),
        "relayed port {} outside {}..={}",
        relayed.port(),
        ts.min_port,
        ts.max_port
    );
    assert_eq!(a.mapped_address, Some(local));
    assert!(a.lifetime_secs.is_some_and(|l| l > 0), "{a:?}");
    assert!(a.step.rtt_ms.is_some_and(|ms| ms > 0.0 && ms < 2000.0));
    assert_eq!(
        a.response_integrity,
        Some(probe::report::Integrity::Verified)
    );
}

/// Allocates again from `sock` until that succeeds or [`DELETE_GRACE`] has passed; returns
/// the last report. coturn frees a deleted (LIFETIME 0) allocation on its next one-second
/// timer tick, so the 5-tuple is refused with 437 until then.
fn allocate_again(sock: &UdpSocket, ts: &Turnserver) -> Report {
    let start = Instant::now();
    loop {
        let r = probe::probe(sock, ts.addr, &long_term(PASSWORD));
        if r.exit_code == exit::OK || start.elapsed() > DELETE_GRACE {
            return r;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn binding_reports_mapped_address_and_software() {
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start(Auth::LongTerm);
        let (sock, local) = loopback_socket();
        let r = probe::probe(&sock, ts.addr, &ProbeOptions::default());
        assert!(r.reachable, "{r:#?}");
        assert_eq!(r.binding.step.status, Status::Ok);
        assert_eq!(r.binding.mapped_address, Some(local));
        assert!(!r.binding.mapped_address_plain);
        assert_eq!(r.binding.step.transmissions, 1);
        let rtt = r.binding.step.rtt_ms.unwrap();
        assert!(rtt > 0.0 && rtt < 2000.0, "{rtt}");
        assert!(
            r.binding
                .software
                .as_deref()
                .is_some_and(|s| s.to_lowercase().contains("coturn")),
            "{:?}",
            r.binding.software
        );
        assert!(r.allocation.is_none());
        assert_eq!(r.exit_code, exit::OK);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["binding"]["mapped_address"], local.to_string());
        assert_eq!(json["transport"], "udp");
        assert!(json["connect_ms"].is_null());
    });
}

#[test]
fn allocate_succeeds_and_is_deleted() {
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start(Auth::LongTerm);
        let (sock, local) = loopback_socket();
        let r = probe::probe(&sock, ts.addr, &long_term(PASSWORD));
        assert_allocated(&ts, &r, local);
        let a = r.allocation.as_ref().unwrap();
        assert_eq!(a.password_algorithm, Some("MD5"));
        let deleted = a.deleted.as_ref().expect("a delete was attempted");
        assert_eq!(deleted.status, Status::Ok, "{deleted:?}");
        assert_eq!(r.exit_code, exit::OK);

        // The 5-tuple is free again: a second allocation from the same socket succeeds
        // (instead of 437 Allocation Mismatch, see the control test below).
        let again = allocate_again(&sock, &ts);
        assert_allocated(&ts, &again, local);
        assert_eq!(again.exit_code, exit::OK);
    });
}

#[test]
fn kept_allocation_blocks_the_next_one() {
    // Control for the deletion check above: without the Refresh LIFETIME 0, coturn still
    // holds the allocation after the same grace period and refuses a new one with 437.
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start(Auth::LongTerm);
        let (sock, local) = loopback_socket();
        let keep = ProbeOptions {
            keep_allocation: true,
            ..long_term(PASSWORD)
        };
        let r = probe::probe(&sock, ts.addr, &keep);
        assert_allocated(&ts, &r, local);
        assert!(r.allocation.as_ref().unwrap().deleted.is_none());
        let again = allocate_again(&sock, &ts);
        let a = again.allocation.unwrap();
        // coturn answers the unauthenticated Allocate with 437 before any challenge.
        assert_eq!(a.step.status, Status::Error, "{a:?}");
        assert_eq!(a.step.error.as_ref().unwrap().code, 437);
        assert_eq!(again.exit_code, exit::SERVER_ERROR);
    });
}

#[test]
fn wrong_password_is_401_and_exit_1() {
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start(Auth::LongTerm);
        let mut args = ts.args();
        args.credentials.user = Some(USER.into());
        args.credentials.password = Some("not-the-password".into());
        args.json = true;
        let r = probe::execute(&args).unwrap();
        assert!(r.reachable);
        let a = r.allocation.as_ref().unwrap();
        assert_eq!(a.step.status, Status::Error, "{a:?}");
        let e = a.step.error.as_ref().unwrap();
        assert_eq!(e.code, 401);
        assert_eq!(
            e.hint,
            Some("check username/password or shared secret and realm")
        );
        assert!(a.relayed_address.is_none() && a.deleted.is_none());
        assert_eq!(r.exit_code, exit::SERVER_ERROR);
        // run() prints and returns the same code.
        assert_eq!(probe::run(&args), exit::SERVER_ERROR);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["allocation"]["error"]["code"], 401);
        assert_eq!(json["exit_code"], 1);
    });
}

#[test]
fn rest_secret_allocates() {
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start(Auth::Rest);
        let mut args = ts.args();
        args.credentials.secret = Some(SECRET.into());
        args.realm = Some(REALM.into());
        let r = probe::execute(&args).unwrap();
        let a = r.allocation.as_ref().unwrap();
        assert!(a.rest);
        assert!(a.username.ends_with(":probe"), "{}", a.username);
        let local = r.local_address.unwrap();
        assert_eq!(
            r.binding.mapped_address.map(|m| m.port()),
            Some(local.port())
        );
        assert_eq!(a.step.status, Status::Ok, "{r:#?}\n{}", ts.log());
        let relayed = a.relayed_address.unwrap();
        assert!((ts.min_port..=ts.max_port).contains(&relayed.port()));
        assert_eq!(a.deleted.as_ref().unwrap().status, Status::Ok);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.exit_code, exit::OK);
        assert_eq!(probe::run(&args), exit::OK);

        // With --user the name part is the user's.
        args.credentials.user = Some("bob".into());
        let r = probe::execute(&args).unwrap();
        let a = r.allocation.as_ref().unwrap();
        assert!(a.username.ends_with(":bob"), "{}", a.username);
        assert_eq!(r.exit_code, exit::OK, "{r:#?}");
    });
}

#[test]
fn wrong_rest_secret_is_401() {
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start(Auth::Rest);
        let mut args = ts.args();
        args.credentials.secret = Some("not-the-secret".into());
        args.realm = Some("other.example".into());
        let r = probe::execute(&args).unwrap();
        let a = r.allocation.as_ref().unwrap();
        assert_eq!(a.step.status, Status::Error, "{a:?}");
        assert_eq!(a.step.error.as_ref().unwrap().code, 401);
        assert_eq!(r.exit_code, exit::SERVER_ERROR);
        // The unexpected realm is reported.
        assert!(r.warnings.iter().any(|w| w.contains("other.example")));
    });
}

#[test]
fn nothing_listening_exits_2_quickly() {
    bounded(TEST_LIMIT, || {
        let port = free_port_pair();
        let args = ProbeArgs {
            credentials: long_term_args(),
            timeout_ms: 1500,
            ..udp_args(&format!("127.0.0.1:{port}"))
        };
        let start = Instant::now();
        let r = probe::execute(&args).unwrap();
        assert!(start.elapsed() < Duration::from_millis(1500 + 500));
        assert!(!r.reachable);
        // Loopback answers with ICMP port unreachable.
        assert_eq!(r.binding.step.status, Status::Unreachable, "{r:#?}");
        assert_eq!(r.allocation.as_ref().unwrap().step.status, Status::Skipped);
        assert_eq!(r.exit_code, exit::NO_ANSWER);
        assert_eq!(probe::run(&args), exit::NO_ANSWER);
    });
}

#[test]
fn silent_server_times_out_with_retransmissions() {
    bounded(TEST_LIMIT, || {
        // Bound but never answering: the datagrams vanish like behind a dropping firewall.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (sock, _) = loopback_socket();
        let opts = ProbeOptions {
            retransmit: Retransmit {
                timeout: Duration::from_millis(1200),
                ..Retransmit::default()
            },
            ..long_term(PASSWORD)
        };
        let start = Instant::now();
        let r = probe::probe(&sock, silent.local_addr().unwrap(), &opts);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1200), "{took:?}");
        assert!(took < Duration::from_millis(1700), "{took:?}");
        assert_eq!(r.binding.step.status, Status::Timeout);
        // 0 ms, 500 ms, 1500 ms would be the 1st, 2nd, 3rd transmission: 2 fit in 1.2 s.
        assert_eq!(r.binding.step.transmissions, 2);
        // Both datagrams are the same Binding request (same transaction id).
        let mut buf = [0u8; 1500];
        silent.set_nonblocking(true).unwrap();
        let mut txids = Vec::new();
        while let Ok(n) = silent.recv(&mut buf) {
            let m = Message::parse(&buf[..n]).unwrap();
            assert_eq!((m.class(), m.method()), (Class::Request, Method::BINDING));
            txids.push(m.transaction_id());
        }
        assert_eq!(txids.len(), 2);
        assert_eq!(txids[0], txids[1]);
        assert_eq!(r.exit_code, exit::NO_ANSWER);
    });
}

/// A fake server answering each request with what `answer` writes.
fn fake_server(
    answer: impl Fn(&Message<'_>, &mut MessageWriter<'_>, u32) -> Class + Send + 'static,
) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut out = [0u8; 1500];
        let mut n_req = 0;
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(req) = Message::parse(&buf[..n]) else {
                continue;
            };
            n_req += 1;
            // Write the attributes into a scratch message to learn the class, then the real one.
            let mut scratch = [0u8; 1500];
            let class = {
                let mut w = MessageWriter::new(
                    &mut scratch,
                    Class::Success,
                    req.method(),
                    req.transaction_id(),
                )
                .unwrap();
                answer(&req, &mut w, n_req)
            };
            let mut w =
                MessageWriter::new(&mut out, class, req.method(), req.transaction_id()).unwrap();
            answer(&req, &mut w, n_req);
            let len = w.finish();
            let _ = sock.send_to(&out[..len], from);
        }
    });
    addr
}

#[test]
fn try_alternate_reports_the_alternate_server() {
    bounded(TEST_LIMIT, || {
        let alternate: SocketAddr = "192.0.2.7:3478".parse().unwrap();
        let server = fake_server(move |req, w, _| {
            if req.method() == Method::BINDING {
                let from = "127.0.0.1:1".parse().unwrap();
                w.attr(&XorMappedAddress(from)).unwrap();
                w.attr(&Software("fake")).unwrap();
                Class::Success
            } else {
                w.attr(&ErrorCode {
                    code: 300,
                    reason: "Try Alternate",
                })
                .unwrap();
                w.attr(&AlternateServer(alternate)).unwrap();
                Class::Error
            }
        });
        let (sock, _) = loopback_socket();
        let r = probe::probe(&sock, server, &long_term(PASSWORD));
        assert_eq!(r.binding.software.as_deref(), Some("fake"));
        let a = r.allocation.unwrap();
        let e = a.step.error.unwrap();
        assert_eq!((e.code, e.alternate_server), (300, Some(alternate)));
        assert_eq!(r.exit_code, exit::SERVER_ERROR);
    });
}

#[test]
fn stale_nonce_is_retried_once() {
    bounded(TEST_LIMIT, || {
        // Binding ok; Allocate: 401, then 438 with a new nonce, then 438 again -> give up.
        let server = fake_server(|req, w, n| {
            if req.method() == Method::BINDING {
                w.attr(&XorMappedAddress("127.0.0.1:1".parse().unwrap()))
                    .unwrap();
                return Class::Success;
            }
            let code = if n == 2 { 401 } else { 438 };
            w.attr(&ErrorCode { code, reason: "" }).unwrap();
            w.attr(&Realm(REALM)).unwrap();
            w.attr(&Nonce(&format!("nonce-{n}"))).unwrap();
            Class::Error
        });
        let (sock, _) = loopback_socket();
        let r = probe::probe(&sock, server, &long_term(PASSWORD));
        let a = r.allocation.unwrap();
        assert_eq!(a.stale_nonce_retries, 1);
        let e = a.step.error.unwrap();
        assert_eq!(e.code, 438);
        assert_eq!(e.hint, Some("clock skew or nonce problem"));
        assert_eq!(r.exit_code, exit::SERVER_ERROR);
    });
}

/// The project's own sans-IO TURN server behind a loopback UDP socket (STUN only: relay
/// sockets are never opened, which the probe does not need). Unlike coturn 4.6 it offers
/// PASSWORD-ALGORITHMS, so this exercises the SHA-256 path; the shared `Server` lets a test
/// look at its allocation table.
struct OwnRelay {
    addr: SocketAddr,
    server: std::sync::Arc<std::sync::Mutex<relay_proto::server::Server>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl OwnRelay {
    fn start(tweak: impl FnOnce(&mut relay_proto::server::Server)) -> Self {
        use relay_proto::auth::{CredentialStore, NonceKey};
        use relay_proto::policy::PeerPolicy;
        use relay_proto::server::{
            ClientOutput, FiveTuple, RelayAddr, Server, ServerConfig, Transport,
        };
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};

        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let config = ServerConfig {
            realm: REALM.into(),
            software: Some("own-relay-test".into()),
            relay_v4: Some(RelayAddr::direct([127, 0, 0, 1].into())),
            ports: 50_000..=50_009,
            ..ServerConfig::default()
        };
        let mut creds = CredentialStore::new(REALM);
        creds.add_user(USER, PASSWORD).unwrap();
        creds.add_shared_secret(SECRET.as_bytes());
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let policy = PeerPolicy::new(vec![], vec![], vec![addr.ip()]);
        let mut server = Server::new(
            config,
            creds,
            policy,
            NonceKey::new([9; 32]),
            Instant::now(),
            unix_now,
        );
        tweak(&mut server);
        let server = Arc::new(Mutex::new(server));
        let stop = Arc::new(AtomicBool::new(false));
        let (srv, halt) = (server.clone(), stop.clone());
        thread::spawn(move || {
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let (mut buf, mut out) = ([0u8; 1500], [0u8; 1500]);
            while !halt.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let mut s = srv.lock().unwrap();
                let tuple = FiveTuple::new(from, addr, Transport::Udp);
                if let ClientOutput::Reply { len } =
                    s.handle_client(Instant::now(), tuple, &buf[..n], &mut out)
                {
                    let _ = sock.send_to(&out[..len], from);
                }
                while s.poll_command().is_some() {}
                while s.poll_event().is_some() {}
            }
        });
        OwnRelay { addr, server, stop }
    }

    fn allocations(&self) -> usize {
        self.server.lock().unwrap().allocation_count()
    }
}

impl Drop for OwnRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn own_relay_negotiates_sha256_and_deletes() {
    bounded(TEST_LIMIT, || {
        let relay = OwnRelay::start(|_| {});
        let (sock, local) = loopback_socket();
        let r = probe::probe(&sock, relay.addr, &long_term(PASSWORD));
        assert_eq!(r.binding.mapped_address, Some(local));
        // SOFTWARE only on authenticated responses: anyone can send a Binding (issue 14).
        assert_eq!(r.binding.software, None);
        let a = r.allocation.as_ref().unwrap();
        assert_eq!(a.step.status, Status::Ok, "{r:#?}");
        assert_eq!(a.password_algorithm, Some("SHA-256"));
        assert_eq!(
            a.response_integrity,
            Some(probe::report::Integrity::Verified)
        );
        let relayed = a.relayed_address.unwrap();
        assert_eq!(relayed.ip(), local.ip());
        assert!((50_000..=50_009).contains(&relayed.port()));
        assert_eq!(a.deleted.as_ref().unwrap().status, Status::Ok);
        assert_eq!(r.exit_code, exit::OK);
        // Deleted on the server, not just answered.
        assert_eq!(relay.allocations(), 0);

        // Control: kept, it is in the table.
        let keep = ProbeOptions {
            keep_allocation: true,
            ..long_term(PASSWORD)
        };
        let (sock, _) = loopback_socket();
        let r = probe::probe(&sock, relay.addr, &keep);
        assert_eq!(r.exit_code, exit::OK, "{r:#?}");
        assert_eq!(relay.allocations(), 1);
    });
}

#[test]
fn own_relay_rest_secret_and_wrong_password() {
    bounded(TEST_LIMIT, || {
        let relay = OwnRelay::start(|_| {});
        let mut args = ProbeArgs {
            credentials: CredentialArgs {
                secret: Some(SECRET.into()),
                ..CredentialArgs::default()
            },
            realm: Some(REALM.into()),
            json: true,
            ..udp_args(&relay.addr.to_string())
        };
        let r = probe::execute(&args).unwrap();
        assert_eq!(r.exit_code, exit::OK, "{r:#?}");
        assert_eq!(relay.allocations(), 0);

        args.credentials.secret = None;
        args.credentials.user = Some(USER.into());
        args.credentials.password = Some("wrong".into());
        let r = probe::execute(&args).unwrap();
        let e = r.allocation.unwrap().step.error.unwrap();
        assert_eq!(e.code, 401);
        assert_eq!(r.exit_code, exit::SERVER_ERROR);
    });
}

#[test]
fn own_relay_quota_and_full_hints() {
    bounded(TEST_LIMIT, || {
        // Per-user quota 0: 486.
        let relay = OwnRelay::start(|s| {
            s.set_limits(Limits {
                max_allocations: 100,
                max_allocations_per_user: 0,
                ..s.limits()
            })
        });
        let (sock, _) = loopback_socket();
        let r = probe::probe(&sock, relay.addr, &long_term(PASSWORD));
        let e = r.allocation.unwrap().step.error.unwrap();
        assert_eq!(
            (e.code, e.hint),
            (
                486,
                Some(
                    "allocation quota reached (this user's, or this source's for TURN REST credentials)"
                )
            )
        );
        assert_eq!(r.exit_code, exit::SERVER_ERROR);

        // No room at all: 508.
        let relay = OwnRelay::start(|s| {
            s.set_limits(Limits {
                max_allocations: 0,
                max_allocations_per_user: 10,
                ..s.limits()
            })
        });
        let (sock, _) = loopback_socket();
        let r = probe::probe(&sock, relay.addr, &long_term(PASSWORD));
        let e = r.allocation.unwrap().step.error.unwrap();
        assert_eq!(e.code, 508);
        assert!(e.hint.unwrap().contains("relay full"));
    });
}

/// A long-term-credential probe of `server` (any SERVER form).
fn stream_args(server: &str) -> ProbeArgs {
    ProbeArgs {
        credentials: long_term_args(),
        ..udp_args(server)
    }
}

/// --user and --password of the test user.
fn long_term_args() -> CredentialArgs {
    CredentialArgs {
        user: Some(USER.into()),
        password: Some(PASSWORD.into()),
        secret: None,
    }
}

/// Allocated over a stream: timings, mapped address = our end of the connection, relayed
/// address from coturn's range, deleted again.
fn assert_stream_allocated(ts: &Turnserver, r: &Report, transport: Transport) {
    assert_eq!(r.transport, transport);
    assert!(r.reachable, "{r:#?}\n{}", ts.log());
    assert!(r.connect_ms.is_some_and(|ms| ms >= 0.0), "{r:#?}");
    assert_eq!(
        r.tls_handshake_ms.is_some(),
        transport == Transport::Tls,
        "{r:#?}"
    );
    let local = r.local_address.expect("local address of the connection");
    assert_eq!(r.binding.mapped_address, Some(local));
    // One transmission over a stream, never a retransmission.
    assert_eq!(r.binding.step.transmissions, 1);
    assert_allocated(ts, r, local);
    let a = r.allocation.as_ref().unwrap();
    assert_eq!(a.deleted.as_ref().map(|d| d.status), Some(Status::Ok));
    assert_eq!(r.exit_code, exit::OK);
}

#[test]
fn coturn_over_tcp_uri() {
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start_streams(Auth::LongTerm);
        let uri = format!("turn:{}?transport=tcp", ts.addr);
        let r = probe::execute(&stream_args(&uri)).unwrap();
        assert_stream_allocated(&ts, &r, Transport::Tcp);

        // The same with --transport tcp and HOST:PORT.
        let mut args = stream_args(&ts.addr.to_string());
        args.transport = Some(Transport::Tcp);
        let r = probe::execute(&args).unwrap();
        assert_stream_allocated(&ts, &r, Transport::Tcp);
    });
}

#[test]
fn coturn_over_tls_with_ca_insecure_and_untrusted() {
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start_streams(Auth::LongTerm);
        let tls = ts.tls_addr.unwrap();

        // Trusting the self-signed certificate with --ca; the name is the IP (an IP SAN).
        let mut args = stream_args(&format!("turns:{tls}"));
        args.tls.ca = Some(ts.certificate());
        let r = probe::execute(&args).unwrap();
        assert_stream_allocated(&ts, &r, Transport::Tls);

        // A name the certificate does not carry: refused before any STUN is sent.
        args.tls.sni = Some("other.example".into());
        let r = probe::execute(&args).unwrap();
        assert!(!r.reachable);
        assert_eq!(r.binding.step.status, Status::Unreachable);
        let detail = r.binding.step.detail.as_deref().unwrap();
        assert!(detail.contains("not trusted"), "{detail}");
        assert!(r.connect_ms.is_some());
        assert_eq!(r.allocation.as_ref().unwrap().step.status, Status::Skipped);
        assert_eq!(r.exit_code, exit::NO_ANSWER);

        // The system trust store does not know it either.
        args.tls.sni = None;
        args.tls.ca = None;
        let r = probe::execute(&args).unwrap();
        assert_eq!(r.binding.step.status, Status::Unreachable, "{r:#?}");
        assert_eq!(r.exit_code, exit::NO_ANSWER);

        // --insecure skips the check; --transport tls with HOST:PORT, SNI "localhost".
        let mut args = stream_args(&format!("localhost:{}", tls.port()));
        args.transport = Some(Transport::Tls);
        args.tls.insecure = true;
        let r = probe::execute(&args).unwrap();
        assert_eq!(r.server_name.as_deref(), Some("localhost"));
        assert_eq!(r.server.port(), tls.port());
        if r.server.ip().is_loopback() && r.server.is_ipv4() {
            assert_stream_allocated(&ts, &r, Transport::Tls);
        } else {
            // localhost resolved to ::1 first: coturn listens on 127.0.0.1 only.
            assert_eq!(r.exit_code, exit::NO_ANSWER, "{r:#?}");
        }
    });
}

#[test]
fn tcp_to_a_closed_port_exits_2() {
    bounded(TEST_LIMIT, || {
        let port = free_tcp_port();
        let mut args = stream_args(&format!("127.0.0.1:{port}"));
        args.transport = Some(Transport::Tcp);
        let r = probe::execute(&args).unwrap();
        assert!(!r.reachable);
        assert_eq!(r.binding.step.status, Status::Unreachable);
        assert!(
            r.binding
                .step
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("refused")),
            "{r:#?}"
        );
        assert!(r.connect_ms.is_none());
        assert_eq!(r.exit_code, exit::NO_ANSWER);
        assert_eq!(probe::run(&args), exit::NO_ANSWER);
    });
}

/// A TCP service that is not STUN: answers every connection with an HTTP error.
///
/// It reads the request before answering and half-closes instead of closing:
/// closing a socket with unread input makes the kernel send RST, which can
/// overtake the answer and turn "not STUN" into "connection reset".
fn http_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for mut c in l.incoming().flatten().take(2) {
            use std::io::Write;
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            let _ = c.shutdown(std::net::Shutdown::Write);
            // Drain until the client closes, so our close sends FIN, not RST.
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    addr
}

#[test]
fn non_stun_service_over_tcp_and_tls() {
    bounded(TEST_LIMIT, || {
        let http = http_server();
        // TCP: something answered, but not STUN: exit 1 with the framing error.
        let mut args = udp_args(&http.to_string());
        args.transport = Some(Transport::Tcp);
        let r = probe::execute(&args).unwrap();
        assert_eq!(r.binding.step.status, Status::BadResponse, "{r:#?}");
        assert!(
            r.binding
                .step
                .detail
                .as_deref()
                .unwrap()
                .contains("not STUN framing"),
            "{r:#?}"
        );
        assert_eq!(r.exit_code, exit::SERVER_ERROR);

        // TLS: the handshake fails, nothing STUN was exchanged: exit 2.
        let mut args = stream_args(&format!("turns:{http}"));
        args.tls.insecure = true;
        let r = probe::execute(&args).unwrap();
        assert_eq!(r.binding.step.status, Status::Unreachable, "{r:#?}");
        assert!(
            r.binding
                .step
                .detail
                .as_deref()
                .unwrap()
                .starts_with("TLS handshake"),
            "{r:#?}"
        );
        assert_eq!(r.exit_code, exit::NO_ANSWER);
    });
}

#[test]
fn binary_prints_json_over_tcp() {
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start_streams(Auth::LongTerm);
        let out = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["stun", &format!("turn:{}?transport=tcp", ts.addr)])
            .args(["-u", USER, "-p", PASSWORD, "--json"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(exit::OK), "{stdout}");
        let j: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        assert_eq!(j["transport"], "tcp");
        assert_eq!(j["server"], ts.addr.to_string());
        assert_eq!(j["reachable"], true);
        assert!(j["connect_ms"].as_f64().is_some(), "{j}");
        assert!(j["tls_handshake_ms"].is_null());
        assert_eq!(j["binding"]["status"], "ok");
        assert_eq!(j["binding"]["mapped_address"], j["local_address"]);
        let a = &j["allocation"];
        assert_eq!(a["status"], "ok");
        assert_eq!(a["credentials"], "long_term");
        assert_eq!(a["realm"], REALM);
        let relayed: SocketAddr = a["relayed_address"].as_str().unwrap().parse().unwrap();
        assert!((ts.min_port..=ts.max_port).contains(&relayed.port()));
        assert_eq!(a["deleted"]["status"], "ok");
        assert_eq!(a["response_integrity"], "verified");
        assert_eq!(j["exit_code"], 0);

        // Text output names the transport and the connect time.
        let out = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["stun", "-t", "tcp", &ts.addr.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(exit::OK), "{text}");
        assert!(
            text.contains("over TCP") && text.contains("tcp connect"),
            "{text}"
        );
    });
}
