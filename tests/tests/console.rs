//! The operator's console (`/` on the admin endpoint) in headless Chromium, end to end in
//! the deployment of CONTEXT.md: while a `turnutils_uclient` session relays through the
//! kernel path and one of the tests' own TURN clients holds an allocation beside it, the
//! page lists both with their user and relayed address, its packet chart shows kernel
//! traffic, its filter narrows the table, and its Disconnect button ends the tests'
//! client's allocation (whose next Refresh then gets 437) and the row goes. Without the
//! token the page is a 401 login form. A screenshot is kept under
//! `target/test-artifacts/console.png`.
//!
//! A second test ends a TCP client's allocation with `relay status --disconnect`: its
//! connection closes at once.
//!
//! Chromium runs in the relay namespace (the admin endpoint is on its loopback).
//! Needs root, `chromium`, `coturn`, `nftables` and `target/debug/relay`.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use relay_tests::{
    Topology, TopologyOptions,
    browser::find_chromium,
    cdp::Browser,
    fixture::{Deployment, Listen, RelayConfig, UCLIENT_TIMEOUT, USER, start_relay, turn_client},
};
use relay_tools::status::AdminClient;

const ADMIN: &str = "127.0.0.1:9641";
const TOKEN: &str = "console-token-1";
const CHANNEL: u16 = 0x4001;
/// What the page gets to show a change (it polls each second).
const PAGE_WAIT: Duration = Duration::from_secs(15);

fn config(topo: &Topology) -> String {
    RelayConfig {
        listen: Listen::both_nics(&topo.addrs, 3478, &["udp", "tcp"]),
        sections: format!(
            "[admin]\naddress = \"{ADMIN}\"\ntoken = \"{TOKEN}\"\n\n[xdp]\n\
             interfaces = [\"{}\", \"{}\"]\nmode = \"native\"\nforwarding = \"auto\"\n",
            topo.relay_external_if, topo.relay_internal_if
        ),
        ..RelayConfig::deployment(&topo.addrs)
    }
    .to_string()
}

/// Where the screenshot goes: `target/test-artifacts/` of this workspace.
fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts").join(name)
}

/// The table's rows as the page shows them: `[[id, user, relayed, client], …]`.
const ROWS: &str = "JSON.stringify([...document.querySelectorAll('#allocs tbody tr[data-id]')]\
     .map(r => [r.dataset.id, r.querySelector('[data-col=user]').textContent, \
     r.querySelector('[data-col=relayed]').textContent, \
     r.querySelector('[data-col=client]').textContent]))";

fn rows(b: &mut Browser) -> Vec<[String; 4]> {
    let v = b.eval(ROWS).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(v.as_str().expect("a string")).expect("rows JSON")
}

#[test]
fn console_shows_a_live_session_filters_and_disconnects() {
    let Some(chromium) = find_chromium() else {
        panic!("Chromium is not installed (`apt-get install chromium`, or `cargo xtask setup`)");
    };
    let started = Instant::now();
    let env = Deployment::start_kernel_path(TopologyOptions::default(), |t| {
        start_relay(&t.relay, &config(t))
    })
    .with_media_peer();
    env.relay
        .wait_for_log("admin API listening", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));

    // The tests' own client: an allocation with a channel to the echo peer, proven.
    let mut mine = turn_client(&env.topo.client, env.server(), "pw");
    let my_relayed = mine.allocate().expect("allocate");
    mine.create_permission(&[env.media_peer()])
        .expect("CreatePermission");
    mine.channel_bind(CHANNEL, env.media_peer())
        .expect("ChannelBind");
    mine.send_channel_data(CHANNEL, b"hello").expect("send");
    mine.recv_data(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{}", env.with_log(format!("no echo: {e}"))));

    // Without the token: a 401 login form.
    let anonymous = AdminClient::new(ADMIN.parse().unwrap(), None);
    let (code, body) = env
        .topo
        .relay
        .run(move || anonymous.get("/"))
        .unwrap()
        .expect("GET /");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("name=\"token\""), "{body}");

    let mut u = env.uclient();
    u.no_rtcp = true;
    // Media for the whole look at the page: 600 messages, one every 20 ms (12 s).
    u.messages = 600;
    u.interval_ms = Some(20);

    let mut b =
        Browser::launch(&env.topo.relay, &chromium, 1440, 900).unwrap_or_else(|e| panic!("{e}"));
    b.navigate(&format!("http://{ADMIN}/")).unwrap();
    assert_eq!(
        b.eval("!!document.querySelector('form.login input[name=token]')")
            .unwrap(),
        true,
        "the page without the token is the login form"
    );

    std::thread::scope(|s| {
        let client_ns = &env.topo.client;
        let uclient = s.spawn(|| u.run(client_ns, UCLIENT_TIMEOUT));

        // The bookmark: sets the cookie and lands on the console.
        b.navigate(&format!("http://{ADMIN}/?token={TOKEN}"))
            .unwrap();
        assert_eq!(
            b.eval("location.pathname + location.search").unwrap(),
            "/",
            "redirected to / without the token in the address"
        );
        b.wait_for("Number(document.body.dataset.polls || 0) >= 2", PAGE_WAIT)
            .unwrap_or_else(|e| panic!("{}", env.with_log(e)));

        // uclient's allocation (it also makes one it never uses) and ours, by user and
        // relayed address; the packet chart shows kernel traffic.
        let mine_shown = |b: &mut Browser| {
            rows(b)
                .into_iter()
                .find(|r| r[1] == USER && r[2] == my_relayed.to_string())
        };
        let deadline = Instant::now() + PAGE_WAIT;
        while rows(&mut b).len() < 3 || mine_shown(&mut b).is_none() {
            assert!(
                Instant::now() < deadline,
                "{}",
                env.with_log(format!("rows on the page: {:?}", rows(&mut b)))
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let all = rows(&mut b);
        assert!(all.iter().all(|r| r[1] == USER), "{all:?}");
        assert!(
            all.iter()
                .all(|r| r[2].starts_with(&env.topo.addrs.public.to_string())),
            "relayed addresses are the public NAT address: {all:?}"
        );
        // uclient's media (about 100 packets/s both ways) through the kernel, over a few
        // samples; its sparkline drawn from successive polls.
        b.wait_for(
            "(() => { const c = document.querySelector('#c-pps'); \
             return JSON.parse(c.dataset.peaks || '{}').kernel > 20 && c.dataset.samples >= 5; })()",
            PAGE_WAIT,
        )
        .unwrap_or_else(|e| panic!("{}", env.with_log(e)));
        b.wait_for(
            "[...document.querySelectorAll('#allocs svg.spark polyline')]\
             .some(p => p.getAttribute('points').split(' ').length >= 3)",
            PAGE_WAIT,
        )
        .unwrap();
        // Shown, and laid out within a laptop's width (no chart pushing it wider).
        assert_eq!(
            b.eval(
                "document.querySelector('#allocs').getBoundingClientRect().height > 0 && \
                 document.querySelector('#c-pps').getBoundingClientRect().height > 0 && \
                 document.documentElement.scrollWidth <= innerWidth"
            )
            .unwrap(),
            true,
            "the table and charts are visible and fit the window"
        );
        let shot = artifact("console.png");
        b.screenshot(&shot).unwrap();
        eprintln!("console screenshot: {}", shot.display());

        // The filter by relayed address: our row alone; cleared, all again.
        let [my_id, ..] = mine_shown(&mut b).expect("shown");
        let set_filter = |b: &mut Browser, text: &str| {
            b.eval(&format!(
                "(() => {{ const f = document.querySelector('#filter'); f.value = {text:?}; \
                 f.dispatchEvent(new Event('input')); return true; }})()"
            ))
            .unwrap();
        };
        set_filter(&mut b, &my_relayed.to_string());
        let filtered = rows(&mut b);
        assert_eq!(filtered.len(), 1, "{filtered:?}");
        assert_eq!(filtered[0][0], my_id);
        set_filter(&mut b, "no-such-user");
        assert!(rows(&mut b).is_empty());
        set_filter(&mut b, "");
        assert!(rows(&mut b).len() >= 3);

        // Disconnect ours (the confirmation answered yes), while uclient goes on.
        b.eval(&format!(
            "(() => {{ window.confirm = () => true; \
             document.querySelector('button.disconnect[data-id=\"{my_id}\"]').click(); \
             return true; }})()"
        ))
        .unwrap();
        b.wait_for(
            &format!("!document.querySelector('#allocs tr[data-id=\"{my_id}\"]')"),
            PAGE_WAIT,
        )
        .unwrap_or_else(|e| panic!("{}", env.with_log(e)));
        assert!(
            b.eval("document.querySelector('#err').textContent")
                .unwrap()
                .as_str()
                .unwrap_or("")
                .starts_with("Disconnected"),
            "the page confirms the disconnect"
        );
        env.relay
            .wait_for_log(
                "allocation disconnected by an operator",
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let e = mine.refresh(600).expect_err("refresh after the disconnect");
        assert_eq!(e.code(), Some(437), "{e}");
        // uclient's allocations stay.
        assert!(rows(&mut b).len() >= 2, "{:?}", rows(&mut b));

        let run = uclient.join().expect("uclient thread");
        let run = run.unwrap_or_else(|e| panic!("turnutils_uclient: {e}"));
        assert!(run.success(), "{}", env.context(&run));
    });
    drop(b);
    let took = started.elapsed();
    eprintln!("console test took {took:?}");
}

#[test]
fn relay_status_disconnect_closes_a_tcp_clients_connection() {
    let env = Deployment::start(TopologyOptions::default(), |t| {
        start_relay(&t.relay, &config(t))
    });
    env.relay
        .wait_for_log("admin API listening", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c = env.tcp_client(3478);
    let relayed = c.allocate().expect("allocate over TCP");
    let admin = AdminClient::new(ADMIN.parse().unwrap(), Some(TOKEN.into()));
    let view = env
        .topo
        .relay
        .run(move || admin.allocations())
        .unwrap()
        .expect("/api/allocations");
    let a = view
        .allocations
        .iter()
        .find(|a| a.relayed.iter().any(|r| r.public == relayed))
        .unwrap_or_else(|| panic!("no allocation for {relayed} in {view:?}"));
    assert_eq!(a.transport, "tcp");

    let out = env
        .topo
        .relay
        .exec(
            relay_tests::relay_binary().to_str().unwrap(),
            &[
                "status",
                "--admin",
                ADMIN,
                "--token",
                TOKEN,
                "--disconnect",
                &a.id,
            ],
        )
        .unwrap_or_else(|e| panic!("relay status --disconnect: {e}"));
    assert!(
        out.contains(&format!("disconnected allocation {}", a.id)) && out.contains("tcp"),
        "{out}"
    );
    // The connection is closed by the relay (EOF), not left to time out.
    let asked = Instant::now();
    let r = c.read_frame();
    assert!(
        r.is_err() && asked.elapsed() < Duration::from_secs(3),
        "the TCP connection is still open {:?} after the disconnect: {r:?}\n{}",
        asked.elapsed(),
        env.relay.logs()
    );
    env.relay
        .wait_for_log("disconnected by an operator", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
}
