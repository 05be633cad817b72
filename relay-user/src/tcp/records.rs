//! Plaintext into TLS records on a connection's own send queue.
//!
//! rustls keeps at most 64 KiB of records it has not handed out (its buffer limit): past
//! it, its writer takes no more plaintext and returns 0. A TURN message can be larger (a
//! Data indication carrying a 65,507-byte datagram is 65,544 bytes), so one `write_all`
//! would fail and used to close the connection, ending the client's allocation. Here the
//! plaintext goes in piece by piece and each piece's records move to the connection's
//! queue at once: rustls' buffer never fills, and what waits is bounded by the queue's
//! own flow control ([`HIGH_WATER`](super::stream::HIGH_WATER): peer data is dropped,
//! not queued, while the client does not read).

use std::io::{self, Write as _};

use rustls::ServerConnection;

use super::stream::TxBuf;

/// Encrypts all of `plaintext` into records appended to `tx`. An error is the session's
/// (it is closing, or failed), never a full buffer.
pub fn seal(tls: &mut ServerConnection, tx: &mut TxBuf, mut plaintext: &[u8]) -> io::Result<()> {
    loop {
        while tls.wants_write() {
            tls.write_tls(tx.pending_mut())?;
        }
        if plaintext.is_empty() {
            return Ok(());
        }
        // Its buffer is empty here: it takes up to its limit.
        match tls.writer().write(plaintext)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the TLS session takes no more data",
                ));
            }
            n => plaintext = &plaintext[n..],
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::{ClientConnection, pki_types::ServerName};

    use super::*;
    use crate::tcp::test_tls::{configs, handshake};

    /// A server and a client session with the handshake done.
    fn pair() -> (ServerConnection, ClientConnection) {
        let (server, client) = configs();
        let mut s = ServerConnection::new(server).unwrap();
        let name = ServerName::try_from("relay.test").unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        handshake(&mut s, &mut c);
        (s, c)
    }

    /// Everything in `tx`, decrypted by `c`.
    fn open(c: &mut ClientConnection, tx: &mut TxBuf) -> Vec<u8> {
        let mut plain = Vec::new();
        loop {
            let wire = tx.peek().to_vec();
            if wire.is_empty() {
                return plain;
            }
            tx.advance(wire.len());
            let mut rd = &wire[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                let st = c.process_new_packets().unwrap();
                let mut got = vec![0; st.plaintext_bytes_to_read()];
                io::Read::read_exact(&mut c.reader(), &mut got).unwrap();
                plain.extend_from_slice(&got);
            }
        }
    }

    #[test]
    fn messages_over_rustls_buffer_limit_go_out_whole() {
        let (mut s, mut c) = pair();
        let mut tx = TxBuf::default();
        // The old way fails on such a message: rustls' 64 KiB limit.
        let big: Vec<u8> = (0..65_544u32).map(|i| (i % 251) as u8).collect();
        let mut probe = s.writer();
        assert!(
            probe.write_all(&big).is_err(),
            "rustls still limits its buffer"
        );
        while s.wants_write() {
            s.write_tls(tx.pending_mut()).unwrap();
        }
        let sent_before = open(&mut c, &mut tx).len();
        // Back to back, several times the limit in all, without draining the queue.
        for _ in 0..4 {
            seal(&mut s, &mut tx, &big).unwrap();
        }
        let got = open(&mut c, &mut tx);
        assert_eq!(got.len(), 4 * big.len());
        for part in got.chunks(big.len()) {
            assert_eq!(part, &big[..]);
        }
        assert!(sent_before < big.len());
    }
}
