//! The blocking driver over a link to the server on a virtual clock.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use relay_proto::server::ClientOutput;

use super::pair::{Pair, user};
use crate::blocking::{self, Link};
use crate::{Outcome, Request};

/// The pair's server as a link; time moves only while the driver waits.
struct ServerLink<'p> {
    pair: &'p mut Pair,
    replies: VecDeque<Vec<u8>>,
    /// Datagrams to lose on the way to the server.
    lose: usize,
    sent: usize,
}

impl Link for ServerLink<'_> {
    type Error = io::Error;

    fn now(&self) -> Instant {
        self.pair.now
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sent += 1;
        if self.lose > 0 {
            self.lose -= 1;
            return Ok(());
        }
        let mut out = vec![0u8; 2048];
        let p = &mut *self.pair;
        if let ClientOutput::Reply { len } = p.server.handle_client(p.now, p.from, bytes, &mut out)
        {
            self.replies.push_back(out[..len].to_vec());
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], until: Instant) -> io::Result<Option<usize>> {
        match self.replies.pop_front() {
            Some(r) => {
                buf[..r.len()].copy_from_slice(&r);
                Ok(Some(r.len()))
            }
            None => {
                self.pair.now = self.pair.now.max(until);
                Ok(None)
            }
        }
    }
}

#[test]
fn transact_runs_the_challenge_and_retransmissions_to_the_end() {
    let mut pair = Pair::new(Some(user()));
    let mut client = std::mem::replace(&mut pair.client, Pair::new(None).client);
    let t0 = pair.now;
    let mut link = ServerLink {
        pair: &mut pair,
        replies: VecDeque::new(),
        lose: 2,
        sent: 0,
    };
    let done = blocking::transact(&mut client, &mut link, Request::ALLOCATE, &mut |_| {})
        .expect("no link error");
    assert!(done.outcome.is_success(), "{:?}", done.outcome);
    // Two lost, the third answered with 401, then the signed one: 500 + 1000 ms waited.
    assert_eq!(link.sent, 4);
    assert_eq!(link.pair.now - t0, Duration::from_millis(1500));

    link.lose = usize::MAX;
    let done = blocking::transact(&mut client, &mut link, Request::DELETE, &mut |_| {})
        .expect("no link error");
    assert_eq!(done.outcome, Outcome::Timeout);
}
