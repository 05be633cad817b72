//! The console's login, page, history and disconnect over a real admin endpoint on fake
//! shards.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use relay_admin_api::{AllocationsView, HistoryView};
use relay_proto::server::{FiveTuple, Transport};
use relay_tools::status::{AdminClient, StatusError};

use super::super::tests::serve_with;
use crate::{
    control::{Control, QUERY_TIMEOUT},
    shard::apply::tests::allocate_as,
};

const TOKEN: &str = "s3cret";

/// One HTTP/1.1 request with extra `headers`, the connection closed after it:
/// (status, head, body).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[String]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (code, head.to_owned(), body.to_owned())
}

/// An allocation for alice from 127.0.0.1:`port` (UDP), made on shard `shard`.
fn allocate(control: &Control, shard: usize, port: u16) {
    let client = FiveTuple {
        client: SocketAddr::from(([127, 0, 0, 1], port)),
        listener: "127.0.0.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    control.shards()[shard]
        .query(QUERY_TIMEOUT, move |s| {
            allocate_as(s, ("alice", "example.org", "pw"), client, Instant::now())
        })
        .expect("shard answered");
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

#[test]
fn the_console_wants_the_token_and_a_cookie_opens_the_page_and_the_api() {
    let (rt, _control, admin, _shards) = serve_with(Some(TOKEN), |_| {});
    let addr = admin.local_addr;

    let (code, _, body) = http(addr, "GET", "/", &[]);
    assert_eq!(code, 401);
    assert!(
        body.contains("<form") && body.contains("name=\"token\""),
        "{body}"
    );
    let (code, _, body) = http(addr, "GET", "/?token=guess", &[]);
    assert_eq!(code, 401);
    assert!(body.contains("not the token"), "{body}");

    let (code, head, _) = http(addr, "GET", "/?token=s3cret", &[]);
    assert_eq!(code, 303, "{head}");
    assert_eq!(header(&head, "location"), Some("/"));
    let set = header(&head, "set-cookie").expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(TOKEN),
        "the cookie must not be the token: {set}"
    );
    let cookie = format!("Cookie: {}", set.split(';').next().unwrap());

    let (code, _, page) = http(addr, "GET", "/", std::slice::from_ref(&cookie));
    assert_eq!(code, 200);
    assert!(page.contains("id=\"allocs\"") && page.contains("no allocations"));
    assert!(
        page.contains("<script>") && !page.contains("{{"),
        "placeholders left"
    );
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "nothing from elsewhere"
    );
    for path in [
        "/api/allocations",
        "/api/status",
        "/api/history",
        "/metrics",
    ] {
        assert_eq!(
            http(addr, "GET", path, std::slice::from_ref(&cookie)).0,
            200,
            "{path}"
        );
        assert_eq!(http(addr, "GET", path, &[]).0, 401, "{path}");
    }
    // A forged or stale cookie is refused; the bearer header still works alone.
    let forged = "Cookie: relay_admin_session=00".to_owned();
    assert_eq!(http(addr, "GET", "/", std::slice::from_ref(&forged)).0, 401);
    assert_eq!(
        http(addr, "GET", "/api/status", &[forged]).0,
        401,
        "forged cookie"
    );
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(http(addr, "GET", "/", &[bearer]).0, 200);
    assert_eq!(http(addr, "GET", "/healthz", &[]).0, 200);
    rt.block_on(admin.shutdown());
}

#[test]
fn the_page_renders_allocations_without_scripts_and_escapes_user_text() {
    let (rt, control, admin, _shards) = serve_with(None, |_| {});
    allocate(&control, 0, 40000);
    let (code, _, page) = http(admin.local_addr, "GET", "/", &[]);
    assert_eq!(code, 200);
    assert!(page.contains("<td data-col=\"user\">alice</td>"), "{page}");
    assert!(page.contains("udp 127.0.0.1:40000"), "{page}");
    assert!(page.contains("id=\"h-allocs\">1 / "), "{page}");
    assert_eq!(
        super::escape("<b a='1'>&\""),
        "&lt;b a=&#39;1&#39;&gt;&amp;&quot;"
    );
    rt.block_on(admin.shutdown());
}

#[test]
fn delete_ends_an_allocation_on_its_shard_and_relay_status_disconnect_calls_it() {
    let (rt, control, admin, _shards) = serve_with(Some(TOKEN), |_| {});
    let c = AdminClient::new(admin.local_addr, Some(TOKEN.into()));
    // One allocation on each shard: ids name their shard.
    for (shard, port) in [(0, 40000), (1, 40001)] {
        allocate(&control, shard, port);
    }
    let view: AllocationsView = c.allocations().unwrap();
    assert_eq!(view.count, 2);
    let on_second = view
        .allocations
        .iter()
        .find(|a| a.shard == "fake-1")
        .unwrap()
        .id
        .clone();

    // Without the token: refused, nothing ended.
    let anonymous = AdminClient::new(admin.local_addr, None);
    let e = anonymous.disconnect(&on_second).unwrap_err();
    assert!(matches!(e, StatusError::Http { code: 401, .. }), "{e}");

    let d = c.disconnect(&on_second).unwrap();
    assert_eq!(
        (d.id.as_str(), d.user.as_str()),
        (on_second.as_str(), "alice")
    );
    assert_eq!(d.client, SocketAddr::from(([127, 0, 0, 1], 40001)));
    let left = c.allocations().unwrap();
    assert_eq!(left.count, 1);
    assert_ne!(left.allocations[0].id, on_second);
    // The relay port went back to the pool.
    assert_eq!(c.status().unwrap().relay.ports_in_use_v4, Some(1));

    let e = c.disconnect(&on_second).unwrap_err();
    assert!(matches!(e, StatusError::Http { code: 404, .. }), "{e}");
    assert!(matches!(
        c.disconnect("../metrics").unwrap_err(),
        StatusError::BadId(_)
    ));
    assert_eq!(
        c.send(hyper::Method::DELETE, "/api/allocations/xyz")
            .unwrap()
            .0,
        400
    );
    rt.block_on(admin.shutdown());
}

#[test]
fn history_samples_each_second() {
    let (rt, control, admin, _shards) = serve_with(None, |_| {});
    allocate(&control, 0, 40000);
    let c = AdminClient::new(admin.local_addr, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        let h: HistoryView = c.get_json("/api/history").unwrap();
        if h.samples.len() >= 2 || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(history.samples.len() >= 2, "{history:?}");
    assert_eq!(history.interval_s, 1);
    let last = history.samples.last().unwrap();
    assert_eq!(last.allocations, 1);
    assert_eq!(last.kernel.packets_per_s, 0.0);
    rt.block_on(admin.shutdown());
}

#[test]
fn placeholders_are_filled_from_the_template_only() {
    let out = super::fill(
        "<p>{{A}}</p>{{B}}{{UNKNOWN}}{{",
        &[("A", "{{B}}"), ("B", "b")],
    );
    assert_eq!(out, "<p>{{B}}</p>b{{UNKNOWN}}{{");
}
