//! A blocking driver: runs a [`Client`] over any [`Link`] (a UDP socket, a TCP or TLS
//! stream cut into frames) until one request completes. For one-shot tools and tests;
//! no I/O and no clock of its own: the link does the I/O and tells the time.

use std::io;
use std::time::Instant;

use crate::{Client, Completed, Data, Event, Input, MAX_REQUEST, Request, RequestError, RequestId};

/// Where the client's datagrams or frames go and come from, and what time it is.
pub trait Link {
    type Error;
    /// The current time (`Instant::now()` for a real link, a virtual clock in tests).
    fn now(&self) -> Instant;
    /// Sends one whole datagram or frame.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// One datagram or frame into `buf`, waiting until `until`; `Ok(None)` if none came.
    fn recv(&mut self, buf: &mut [u8], until: Instant) -> Result<Option<usize>, Self::Error>;
}

/// Why [`transact`] returned without the request's end.
#[derive(Debug)]
pub enum DriveError<E> {
    /// The request cannot be built.
    Request(RequestError),
    Send(io::Error),
    Recv(E),
}

/// Sends `request` and runs the client until it completes. Application data that
/// arrives meanwhile goes to `on_data`; the ends of other requests are dropped (one
/// request at a time).
pub fn transact<L: Link>(
    client: &mut Client,
    link: &mut L,
    request: Request,
    on_data: &mut dyn FnMut(Data<'_>),
) -> Result<Completed, DriveError<L::Error>> {
    let id = client
        .request(request, link.now())
        .map_err(DriveError::Request)?;
    wait(client, link, id, on_data)
}

/// Runs the client until request `id` completes.
pub fn wait<L: Link>(
    client: &mut Client,
    link: &mut L,
    id: RequestId,
    on_data: &mut dyn FnMut(Data<'_>),
) -> Result<Completed, DriveError<L::Error>> {
    let mut out = vec![0u8; MAX_REQUEST];
    let mut buf = vec![0u8; 65_536];
    loop {
        while let Some(t) = client.poll_transmit(&mut out) {
            if let Err(e) = link.send(&out[..t.len]) {
                client.abandon(link.now());
                return Err(DriveError::Send(e));
            }
        }
        while let Some(Event::Completed(c)) = client.poll_event() {
            if c.id == id {
                return Ok(c);
            }
        }
        // Nothing in flight means the request ended: its event is read above.
        let until = client.poll_timeout().unwrap_or_else(|| link.now());
        match link.recv(&mut buf, until) {
            Ok(Some(n)) => {
                if let Input::Data(d) = client.handle_input(&buf[..n], link.now()) {
                    on_data(d);
                }
            }
            Ok(None) => {}
            Err(e) => {
                client.abandon(link.now());
                return Err(DriveError::Recv(e));
            }
        }
        client.handle_timeout(link.now());
    }
}
