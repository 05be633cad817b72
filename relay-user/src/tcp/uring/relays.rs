//! The relay sockets of the io_uring loop's TCP/TLS clients: the peers' datagrams
//! (a multishot `recvmsg` per socket into provided buffers of their own), the wait for
//! room when a send was refused, the cancels when an allocation ends, and the multishot
//! accept of an RFC 6062 TCP allocation's listener. The datagrams to peers leave from the
//! shared send pool ([`crate::uring::sends`]), submitted by the loop's `sync`.

use std::{
    os::fd::{AsRawFd, RawFd},
    time::Instant,
};

use io_uring::{cqueue, opcode, types};

use super::{IGNORE, RELAY_ACCEPT, RELAY_BUFFER_GROUP, RELAY_IN, RELAY_OUT, UringLoop, source};
use crate::{
    shard::{relays::Change, slab::Key},
    tcp::state::{RelayChange, token},
};

impl UringLoop {
    /// A relay socket's multishot receive completed: one datagram from a peer, or the
    /// end of the receive (out of buffers, an ICMP error, a cancel), re-armed at once
    /// while the socket lives.
    pub(super) fn datagram(&mut self, key: Key, res: i32, flags: u32, now: Instant) {
        let bufs = self
            .relay_bufs
            .as_mut()
            .expect("buffers live while the loop runs");
        if let Some(bid) = cqueue::buffer_select(flags) {
            if res >= 0
                && let Ok(out) = types::RecvMsgOut::parse(bufs.get(bid, res as usize), &self.msg)
                && !out.is_payload_truncated()
                && let Some(from) = source(out.name_data())
            {
                self.state.peer_datagram(key, from, out.payload_data(), now);
            }
            // Only a datagram over DATAGRAM_MAX is truncated: dropped, as by `recvfrom`.
            bufs.recycle(bid);
        }
        if !cqueue::more(flags)
            && !self.stopping
            && let Some(r) = self.state.relays.get(key)
        {
            let fd = r.sock.as_raw_fd();
            self.arm_relay(key, fd);
        }
    }

    pub(super) fn arm_relay_accept(&mut self, k: Key) {
        let Some(l) = self.state.relay_listeners.get(k) else {
            return;
        };
        let e = opcode::AcceptMulti::new(types::Fd(l.sock.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(k.token(RELAY_ACCEPT));
        self.push(e);
    }

    pub(super) fn arm_relay(&mut self, k: Key, fd: RawFd) {
        let e = opcode::RecvMsgMulti::new(types::Fd(fd), &*self.msg, RELAY_BUFFER_GROUP)
            .build()
            .user_data(k.token(RELAY_IN));
        self.push(e);
    }

    pub(super) fn relay_socket(&mut self, change: Change) {
        match change {
            Change::Opened(k) => {
                if let Some((_, fd)) = self.state.relays.addr_fd(k) {
                    self.arm_relay(k, fd);
                }
            }
            Change::Closed(k, sock) => {
                // The receive and the poll hold their own references to the socket until
                // cancelled; a datagram completing meanwhile finds no relay (its buffer
                // goes back).
                let e = opcode::AsyncCancel::new(k.token(RELAY_IN))
                    .build()
                    .user_data(token(IGNORE, 0));
                self.push(e);
                let e = opcode::PollRemove::new(k.token(RELAY_OUT))
                    .build()
                    .user_data(token(IGNORE, 0));
                self.push(e);
                // Its datagrams not yet on the ring go with it.
                if let Some(sends) = self.state.peer_sends.as_mut() {
                    sends.closing([sock.as_raw_fd()]);
                }
                drop(sock);
            }
        }
    }

    pub(super) fn relay_change(&mut self, change: RelayChange) {
        match change {
            RelayChange::WantWritable(k) => {
                if let Some(r) = self.state.relays.get_mut(k)
                    && !r.edge.watching_out
                {
                    r.edge.watching_out = true;
                    let fd = r.sock.as_raw_fd();
                    let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
                        .build()
                        .user_data(k.token(RELAY_OUT));
                    self.push(e);
                }
            }
            RelayChange::ListenerOpened(k) => self.arm_relay_accept(k),
            RelayChange::ListenerClosed(k, sock) => {
                // The multishot accept holds the socket open until cancelled; shutting it
                // down stops listening at once, whatever the cancel's timing.
                let e = opcode::AsyncCancel::new(k.token(RELAY_ACCEPT))
                    .build()
                    .user_data(token(IGNORE, 0));
                self.push(e);
                // SAFETY: shutdown(2) on our own listening socket.
                unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
                drop(sock);
            }
        }
    }
}
