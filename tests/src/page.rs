//! The WebRTC page (`tests/assets/webrtc_relay.html`) in headless Chromium: two relay-only
//! RTCPeerConnections in one namespace whose only ICE server is the relay exchange
//! data-channel messages, and the page reports what it saw.

use std::time::Duration;

use crate::{
    Netns,
    browser::{Chromium, PageServer, Report, find_chromium},
    fixture::{PASSWORD, USER},
    relay::RelayProcess,
};

const PAGE: &str = include_str!("../assets/webrtc_relay.html");
/// The page's own timeout (it reports a failure when it expires).
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for any report (browser start-up on top of the page's own).
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A finished page: its report, and the browser (still running) for its logs.
pub struct PageRun {
    pub report: Report,
    pub browser: Chromium,
    _server: PageServer,
}

impl PageRun {
    /// Runs the page in `ns` with `ice_url` (e.g. `turn:203.0.113.50:3478?transport=udp`)
    /// as its only ICE server, as [`USER`], `messages` each way, Chromium started with
    /// `flags` besides its usual ones. Checks the report: the page succeeded, and every
    /// message arrived both ways, in order.
    pub fn data_channel(
        ns: &Netns,
        relay: &RelayProcess,
        ice_url: &str,
        messages: usize,
        flags: &[&str],
    ) -> Self {
        Self::data_channel_paced(ns, relay, ice_url, messages, Duration::ZERO, flags)
    }

    /// Like [`data_channel`](Self::data_channel), one message each way every `interval`:
    /// a call that lasts `messages * interval` once the channels are open.
    pub fn data_channel_paced(
        ns: &Netns,
        relay: &RelayProcess,
        ice_url: &str,
        messages: usize,
        interval: Duration,
        flags: &[&str],
    ) -> Self {
        let call = interval * messages as u32;
        let chromium = find_chromium().expect(
            "Chromium is not installed (`apt-get install chromium`, or `cargo xtask setup`); \
             set CHROMIUM=/path/to/chrome to use another build",
        );
        let server = PageServer::start(ns, PAGE).expect("start page server");
        let url = format!(
            "{}?url={}&username={USER}&credential={PASSWORD}&messages={messages}&timeout_ms={}\
             &interval_ms={}",
            server.url(),
            query_escape(ice_url),
            (PAGE_TIMEOUT + call).as_millis(),
            interval.as_millis()
        );
        let browser = Chromium::launch_with(ns, &chromium, &url, flags).expect("launch Chromium");
        let Some(text) = server.wait_result(RESULT_TIMEOUT + call) else {
            let what = format!(
                "the page reported nothing within {:?}",
                RESULT_TIMEOUT + call
            );
            panic!(
                "{}\n----- Chromium output (all) -----\n{}",
                failure(&what, None, &browser, relay),
                browser.output()
            );
        };
        let run = PageRun {
            report: Report::parse(text),
            browser,
            _server: server,
        };
        eprintln!("page report:\n{}", run.report.text);
        assert_eq!(
            run.report.get("ok"),
            Some("true"),
            "{}",
            run.failure("the page failed", relay)
        );
        for (key, from) in [("received_1to2", "pc1"), ("received_2to1", "pc2")] {
            let want: Vec<String> = (0..messages).map(|i| format!("from-{from}-{i}")).collect();
            let got: Vec<&str> = run
                .report
                .get(key)
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .collect();
            assert_eq!(got, want, "{}", run.failure(key, relay));
        }
        run
    }

    /// For assertion messages: `what`, the page's report, Chromium's ICE/TURN lines and the
    /// relay log.
    pub fn failure(&self, what: &str, relay: &RelayProcess) -> String {
        failure(what, Some(&self.report), &self.browser, relay)
    }
}

fn failure(
    what: &str,
    report: Option<&Report>,
    browser: &Chromium,
    relay: &RelayProcess,
) -> String {
    format!(
        "{what}\n----- page report -----\n{}\n----- Chromium ICE/TURN lines (last 200) -----\n{}\n\
         ----- relay log -----\n{}",
        report.map(|r| r.text.as_str()).unwrap_or("(none)"),
        browser.ice_lines(200),
        relay.logs()
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query value.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_escape_encodes_a_turn_url() {
        assert_eq!(
            super::query_escape("turns:203.0.113.50:443?transport=tcp"),
            "turns%3A203.0.113.50%3A443%3Ftransport%3Dtcp"
        );
    }
}
