//! Retransmission on UDP (RFC 8489 §6.2.1), none on streams, and giving up.

use std::time::Duration;

use super::pair::{Pair, server_config, user};
use crate::{Config, Outcome, Request, Retransmit, Transport};

#[test]
fn udp_requests_are_retransmitted_with_a_doubling_rto_then_given_up() {
    let mut p = Pair::new(None);
    p.drop_to_server = usize::MAX;
    let t0 = p.now;
    let done = p.run(Request::Binding);
    assert_eq!(done.outcome, Outcome::Timeout);
    let at: Vec<u64> = p
        .sent
        .iter()
        .map(|(t, _)| (*t - t0).as_millis() as u64)
        .collect();
    // RFC 8489: 0, 500, 1500, 3500, 7500, 15500, 31500; the last waits 16 RTO in all.
    assert_eq!(at, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(done.transmissions, 7);
    assert_eq!(done.rtt, Duration::from_millis(39_500));
    assert!(
        p.sent.windows(2).all(|w| w[0].1 == w[1].1),
        "same bytes each time"
    );
}

#[test]
fn a_lost_request_is_answered_after_its_retransmission() {
    let mut p = Pair::new(Some(user()));
    p.drop_to_server = 1;
    let done = p.run(Request::ALLOCATE);
    assert!(done.outcome.is_success());
    // Lost unsigned Allocate, its retransmission, then the signed one.
    assert_eq!(p.sent.len(), 3);
}

#[test]
fn the_schedule_is_bounded_by_tries_rto_max_and_timeout() {
    let mut config = Config::new(Transport::Udp, None);
    config.retransmit = Retransmit {
        rto: Duration::from_millis(250),
        rto_max: Duration::from_millis(600),
        tries: 4,
        timeout: Duration::from_millis(3000),
    };
    let mut p = Pair::with(config, server_config());
    p.drop_to_server = usize::MAX;
    let t0 = p.now;
    let done = p.run(Request::Binding);
    let at: Vec<u64> = p
        .sent
        .iter()
        .map(|(t, _)| (*t - t0).as_millis() as u64)
        .collect();
    assert_eq!(at, [0, 250, 750, 1350]);
    assert_eq!(
        (done.outcome, done.rtt),
        (Outcome::Timeout, Duration::from_secs(3))
    );
}

#[test]
fn streams_send_once_and_wait_for_the_whole_timeout() {
    let mut p = Pair::with(Config::new(Transport::Tcp, None), server_config());
    p.drop_to_server = usize::MAX;
    let done = p.run(Request::Binding);
    assert_eq!(p.sent.len(), 1);
    assert_eq!(done.outcome, Outcome::Timeout);
    assert_eq!(done.rtt, Duration::from_millis(39_500));
}

#[test]
fn abandoned_requests_end_at_once() {
    let mut p = Pair::new(None);
    let id = p.client.request(Request::Binding, p.now).unwrap();
    p.client.abandon(p.now);
    let done = p.until(id);
    assert_eq!(done.outcome, Outcome::Abandoned);
    assert_eq!(p.client.poll_timeout(), None);
}
