//! A worker's TCP and TLS connections: opening one when its allocation's turn in the ramp
//! comes, pumping it when epoll wakes it (write what waits, cut whole frames from what was
//! read), and what losing it means for the allocation. Apart from `worker.rs` because UDP
//! allocations never come here: it is the stream transports' side of the loop.

use std::{io, net::SocketAddr, time::Instant};

use super::super::{
    control::{Conn, State},
    frame::{Arrival, on_packet},
    stream::{Fill, StreamConn, StreamError},
    turn::Failure,
};
use super::Worker;

impl Worker {
    /// Opens allocation `i`'s TCP or TLS connection; a failure leaves it without one
    /// (a `socket` failure), reported once.
    pub(super) fn connect(&mut self, i: usize) {
        let local = SocketAddr::new(self.plan.local, 0);
        let tls = self.plan.tls.as_ref().map(|(c, n)| (c, n));
        let result = StreamConn::connect(local, self.plan.target, tls).and_then(|s| {
            self.epoll.add_stream(s.fd(), i as u64)?;
            Ok(s)
        });
        match result {
            Ok(s) => self.allocs[i].conn = Some(Conn::Stream(Box::new(s))),
            Err(e) if !self.connect_error_shown => {
                self.connect_error_shown = true;
                eprintln!(
                    "relay load: cannot open a {} connection from {local} to {}: {e}",
                    self.plan.transport, self.plan.target
                );
            }
            Err(_) => {}
        }
    }

    /// A stream woke up: write what waits, then read and handle every whole frame.
    pub(super) fn on_stream(&mut self, i: usize, window_end: Option<Instant>) {
        let arrival = Arrival::new(&self.control.shared, self.plan.mode, window_end);
        let result = 'io: loop {
            let Some(Conn::Stream(s)) = self.allocs[i].conn.as_mut() else {
                return;
            };
            if let Err(e) = s.flush() {
                break 'io Err(e);
            }
            let fill = match s.fill() {
                Ok(f) => f,
                Err(e) => break 'io Err(e),
            };
            loop {
                let Some(Conn::Stream(s)) = self.allocs[i].conn.as_mut() else {
                    return;
                };
                match s.next_frame(&mut self.scratch) {
                    Ok(Some(n)) => on_packet(
                        &mut self.control,
                        &mut self.allocs[i],
                        i,
                        &mut self.traffic,
                        &mut self.second,
                        &self.scratch[..n],
                        arrival,
                    ),
                    Ok(None) => break,
                    Err(e) => break 'io Err(e),
                }
            }
            if fill == Fill::Drained {
                break Ok(());
            }
        };
        if let Err(e) = result {
            self.stream_lost(i, &e);
        }
    }

    /// A stream failed: its allocation is gone with it (RFC 8656 §3.1).
    fn stream_lost(&mut self, i: usize, e: &StreamError) {
        let now = Instant::now();
        let a = &mut self.allocs[i];
        // Closing the socket also takes it out of the epoll set.
        a.conn = None;
        a.session.abandon(now);
        match a.state {
            State::Setup => {
                let why = match e {
                    StreamError::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        Failure::Unreachable
                    }
                    StreamError::Tls(_) => Failure::Tls,
                    _ => Failure::Closed,
                };
                if !self.connect_error_shown {
                    // The counts say how many; the first reason says why.
                    self.connect_error_shown = true;
                    eprintln!(
                        "relay load: allocation {}: {} connection to {}: {e}",
                        a.index, self.plan.transport, self.plan.target
                    );
                }
                self.control.fail(a, why, now);
            }
            State::Ready => {
                // Its probes from now on count as send errors.
                a.state = State::Failed;
                self.traffic.last_send_error = Some(format!(
                    "{} connection of allocation {}: {e}",
                    self.plan.transport, a.index
                ));
            }
            State::Idle | State::Failed | State::Deleted => {}
        }
    }
}
