//! A sans-IO TURN client: the client side of `relay-proto`'s server, in the same shape.
//!
//! One [`Client`] per 5-tuple (one allocation). Commands ([`Client::request`]) queue
//! requests; the caller drains [`Client::poll_transmit`] into its own buffers, feeds what
//! arrives to [`Client::handle_input`] (which hands application data back borrowed from
//! the input), calls [`Client::handle_timeout`] at [`Client::poll_timeout`], and reads
//! results from [`Client::poll_event`]. The client answers 401 and 438 challenges itself,
//! retransmits on UDP (RFC 8489 §6.2.1; never on TCP/TLS) and, if asked, refreshes the
//! allocation before it expires. [`blocking`] drives it over any [`blocking::Link`].

mod auth;
pub mod blocking;
mod client;
mod credentials;
mod event;
mod request;
mod transaction;
mod txid;

#[cfg(test)]
mod tests;

pub use auth::algorithm_name;
pub use client::{Client, Config, Data, Input, Transmit};
pub use credentials::Credentials;
pub use event::{Completed, ErrorResponse, Event, Integrity, Outcome, Success};
pub use request::{MAX_REQUEST, Request, RequestError, RequestId, Transport, send_indication};
pub use transaction::Retransmit;
