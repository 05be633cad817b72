//! `relay stun` against a real coturn (`turnserver`) on loopback.
//!
//! Every test starts its own turnserver on free ports, kills it when done (guard + parent
//! death signal) and runs under a time limit. The library is called directly and its
//! report struct inspected; no text is grepped.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use relay_proto::stun::{
    AlternateServer, Class, ErrorCode, Message, MessageWriter, Method, Nonce, Realm, Software,
    XorMappedAddress,
};
use relay_user::probe::{
    self, Credentials, ProbeArgs, ProbeOptions, Report, Retransmit, Status, exit,
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

/// A turnserver process, killed on drop.
struct Turnserver {
    child: Child,
    addr: SocketAddr,
    min_port: u16,
    max_port: u16,
    dir: PathBuf,
}

impl Turnserver {
    fn start(auth: Auth) -> Self {
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
            .args(["--realm", REALM])
            .args([
                "--no-tcp",
                "--no-tls",
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
        ProbeArgs {
            server: self.addr.to_string(),
            user: None,
            password: None,
            secret: None,
            realm: None,
            timeout_ms: 2000,
            tries: 4,
            json: false,
        }
    }
}

impl Drop for Turnserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
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
        let json = r.to_json();
        assert!(
            json.contains(&format!(r#""mapped_address":"{local}""#)),
            "{json}"
        );
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
        args.user = Some(USER.into());
        args.password = Some("not-the-password".into());
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
        let json = r.to_json();
        assert!(json.contains(r#""code":401"#), "{json}");
        assert!(json.ends_with(r#""exit_code":1}"#), "{json}");
    });
}

#[test]
fn rest_secret_allocates() {
    bounded(TEST_LIMIT, || {
        let ts = Turnserver::start(Auth::Rest);
        let mut args = ts.args();
        args.secret = Some(SECRET.into());
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
        args.user = Some("bob".into());
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
        args.secret = Some("not-the-secret".into());
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
            server: format!("127.0.0.1:{port}"),
            user: Some(USER.into()),
            password: Some(PASSWORD.into()),
            secret: None,
            realm: None,
            timeout_ms: 1500,
            tries: 4,
            json: false,
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
        assert_eq!(r.binding.software.as_deref(), Some("own-relay-test"));
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
            server: relay.addr.to_string(),
            user: None,
            password: None,
            secret: Some(SECRET.into()),
            realm: Some(REALM.into()),
            timeout_ms: 2000,
            tries: 4,
            json: true,
        };
        let r = probe::execute(&args).unwrap();
        assert_eq!(r.exit_code, exit::OK, "{r:#?}");
        assert_eq!(relay.allocations(), 0);

        args.secret = None;
        args.user = Some(USER.into());
        args.password = Some("wrong".into());
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
        let relay = OwnRelay::start(|s| s.set_limits(100, 0));
        let (sock, _) = loopback_socket();
        let r = probe::probe(&sock, relay.addr, &long_term(PASSWORD));
        let e = r.allocation.unwrap().step.error.unwrap();
        assert_eq!((e.code, e.hint), (486, Some("user quota reached")));
        assert_eq!(r.exit_code, exit::SERVER_ERROR);

        // No room at all: 508.
        let relay = OwnRelay::start(|s| s.set_limits(0, 10));
        let (sock, _) = loopback_socket();
        let r = probe::probe(&sock, relay.addr, &long_term(PASSWORD));
        let e = r.allocation.unwrap().step.error.unwrap();
        assert_eq!(e.code, 508);
        assert!(e.hint.unwrap().contains("relay full"));
    });
}
