//! The client against the real `relay_proto::server::Server`, on a virtual clock and
//! without sockets (quinn's `Pair`): each test says what a user of the client sees.

mod blocking;
mod pair;
mod schedule;
mod session;
