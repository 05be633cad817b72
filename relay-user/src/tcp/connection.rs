//! The bytes of one client connection without its socket (sans-IO): what the socket
//! delivered goes in (ciphertext or plaintext), plaintext of whole frames comes out in
//! `rx` for the state to cut and hand to the core; frames to send go in, bytes for the
//! socket come out of `tx`. TLS detection and the session live here, and so do the
//! flow-control marks the loops act on. No core, no socket, no clock: the state drives
//! it, and the tests drive it with a rustls client and a pair of buffers.

use std::io::Read as _;

use rustls::ServerConnection;

use super::{
    records::seal,
    stream::{HIGH_WATER, LOW_WATER, TxBuf},
};

/// Frames are at most 64 KiB + headers; more than this waiting unprocessed means the
/// client keeps sending while we are not reading (a paused connection overrun).
pub const RX_LIMIT: usize = 256 * 1024;

/// The first byte of a TLS handshake record; STUN starts 0x00/0x01, ChannelData
/// 0x40-0x7F.
const TLS_HANDSHAKE: u8 = 0x16;

pub enum Mode {
    /// A listener with both `tcp` and `tls`: the first byte decides.
    Detect,
    Plain,
    Tls(Box<ServerConnection>),
}

pub struct Wire {
    pub mode: Mode,
    /// Plaintext of frames not yet complete, or not yet processed while paused.
    pub rx: Vec<u8>,
    pub tx: TxBuf,
    /// Above the high-water mark, until drained to the low one.
    pub tx_full: bool,
}

/// What ciphertext handed to [`Wire::decrypt`] came to.
#[derive(Debug, Default)]
pub struct Decrypted {
    /// Why the session failed (an alert for the client is queued): close.
    pub failure: Option<String>,
    /// The client sent close_notify.
    pub peer_closed: bool,
    /// The handshake had not completed (for the log line of a failure).
    pub handshaking: bool,
}

/// What became of a frame handed to [`Wire::queue`].
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// Droppable data while the queue is above the high-water mark.
    Dropped,
    /// The TLS session takes no more (it failed or is closing): close.
    Failed(String),
}

impl Wire {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            rx: Vec::new(),
            tx: TxBuf::default(),
            tx_full: false,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.mode, Mode::Tls(_))
    }

    /// Settles a [`Mode::Detect`] connection on its first byte: a TLS handshake record
    /// (when `tls_allowed`) starts the session `session` makes, anything else is plain.
    /// `Err` if TLS was wanted but no session could be made.
    pub fn detect(
        &mut self,
        first: u8,
        tls_allowed: bool,
        session: impl FnOnce() -> Option<Box<ServerConnection>>,
    ) -> Result<(), &'static str> {
        if !matches!(self.mode, Mode::Detect) {
            return Ok(());
        }
        self.mode = if first == TLS_HANDSHAKE && tls_allowed {
            Mode::Tls(session().ok_or("TLS unavailable")?)
        } else {
            Mode::Plain
        };
        Ok(())
    }

    /// Ciphertext in: plaintext appended to `rx`, handshake records and alerts to `tx`.
    /// A plain connection has nothing to decrypt (the state takes its bytes as they are).
    pub fn decrypt(&mut self, data: &[u8]) -> Decrypted {
        let mut done = Decrypted::default();
        let Mode::Tls(tls) = &mut self.mode else {
            return done;
        };
        let mut input = data;
        while !input.is_empty() {
            if let Err(e) = tls.read_tls(&mut input) {
                done.failure = Some(format!("TLS record layer: {e}"));
                break;
            }
            match tls.process_new_packets() {
                Ok(state) => {
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let start = self.rx.len();
                        self.rx.resize(start + n, 0);
                        if let Err(e) = tls.reader().read_exact(&mut self.rx[start..]) {
                            done.failure = Some(format!("TLS read: {e}"));
                            break;
                        }
                    }
                    if state.peer_has_closed() {
                        done.peer_closed = true;
                        break;
                    }
                }
                Err(e) => {
                    // Best effort: the alert goes out with whatever is queued.
                    let _ = tls.write_tls(self.tx.pending_mut());
                    done.failure = Some(tls_failure(&e));
                    break;
                }
            }
        }
        while tls.wants_write() {
            if tls.write_tls(self.tx.pending_mut()).is_err() {
                break;
            }
        }
        done.handshaking = tls.is_handshaking();
        done
    }

    /// Appends a frame to send (sealed into records on a TLS connection). Peer data
    /// (`droppable`) is dropped while the client is not taking what it has; responses
    /// are always queued (the state stops reading instead).
    pub fn queue(&mut self, bytes: &[u8], droppable: bool) -> Queued {
        if droppable && self.tx_full {
            return Queued::Dropped;
        }
        match &mut self.mode {
            // In pieces: one message may exceed rustls' own buffer (see `records`).
            Mode::Tls(tls) => {
                if let Err(e) = seal(tls, &mut self.tx, bytes) {
                    return Queued::Failed(format!("TLS write: {e}"));
                }
            }
            _ => self.tx.push(bytes),
        }
        if self.tx.len() > HIGH_WATER {
            self.tx_full = true;
        }
        Queued::Yes
    }

    /// `n` bytes of the queue went out. `true` if that took a full queue down to the
    /// low-water mark: whoever waited for room may read again.
    pub fn sent(&mut self, n: usize) -> bool {
        self.tx.advance(n);
        if self.tx_full && self.tx.len() <= LOW_WATER {
            self.tx_full = false;
            return true;
        }
        false
    }

    /// More unprocessed plaintext than a paused connection may hold: [`RX_LIMIT`] plus
    /// `in_flight`, what the loop's socket side may still deliver after it decided to
    /// stop reading (io_uring's multishot receive until its cancel lands). Those bytes
    /// were on their way before the pause: closing for them would punish a client that
    /// TCP flow control is about to slow down.
    pub fn overrun(&self, in_flight: usize) -> bool {
        self.rx.len() > RX_LIMIT + in_flight
    }
}

/// What an operator can act on, from a rustls error.
fn tls_failure(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, Error as E};
    match e {
        E::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown) => format!(
            "client refused our certificate ({e}): check the chain is complete and names this host"
        ),
        E::PeerIncompatible(_) => {
            format!("client offers no TLS version or cipher suite we accept ({e})")
        }
        E::InvalidMessage(_) => format!("not TLS, or a corrupted record ({e})"),
        _ => format!("TLS: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use rustls::{ClientConnection, pki_types::ServerName};

    use super::*;
    use crate::tcp::test_tls::configs;

    /// What the client has to send, as the socket would deliver it.
    fn client_bytes(c: &mut ClientConnection) -> Vec<u8> {
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Everything in the wire's queue, "sent" and handed to the client; its plaintext.
    fn to_client(w: &mut Wire, c: &mut ClientConnection) -> Vec<u8> {
        let mut plain = Vec::new();
        loop {
            let bytes = w.tx.peek().to_vec();
            if bytes.is_empty() {
                return plain;
            }
            w.sent(bytes.len());
            let mut rd = &bytes[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
                let st = c.process_new_packets().unwrap();
                let mut got = vec![0; st.plaintext_bytes_to_read()];
                c.reader().read_exact(&mut got).unwrap();
                plain.extend_from_slice(&got);
            }
        }
    }

    /// A Detect wire that a rustls client talked into TLS, handshake done.
    fn tls_pair() -> (Wire, ClientConnection) {
        let (server, client) = configs();
        let name = ServerName::try_from("relay.test").unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        let mut w = Wire::new(Mode::Detect);
        let hello = client_bytes(&mut c);
        w.detect(hello[0], true, || {
            Some(Box::new(ServerConnection::new(server).unwrap()))
        })
        .unwrap();
        assert!(w.is_tls());
        let mut input = hello;
        while c.is_handshaking() {
            let d = w.decrypt(&input);
            assert!(d.failure.is_none(), "{d:?}");
            to_client(&mut w, &mut c);
            input = client_bytes(&mut c);
        }
        let d = w.decrypt(&input);
        assert!(!d.handshaking && d.failure.is_none(), "{d:?}");
        (w, c)
    }

    #[test]
    fn detect_takes_stun_and_channel_data_as_plain_and_0x16_as_tls_only_where_allowed() {
        for first in [0x00, 0x01, 0x40, 0x7f] {
            let mut w = Wire::new(Mode::Detect);
            w.detect(first, true, || panic!("no session for {first:#x}"))
                .unwrap();
            assert!(matches!(w.mode, Mode::Plain));
        }
        let mut w = Wire::new(Mode::Detect);
        w.detect(0x16, false, || panic!("TLS not allowed")).unwrap();
        assert!(matches!(w.mode, Mode::Plain));
        let mut w = Wire::new(Mode::Detect);
        assert_eq!(w.detect(0x16, true, || None), Err("TLS unavailable"));
    }

    #[test]
    fn tls_frames_come_out_as_plaintext_and_replies_go_back_sealed() {
        let (mut w, mut c) = tls_pair();
        // Two frames in one record, the second split over two reads.
        c.writer().write_all(b"first-frame|second-").unwrap();
        let a = client_bytes(&mut c);
        c.writer().write_all(b"frame").unwrap();
        let b = client_bytes(&mut c);
        assert!(w.decrypt(&a).failure.is_none());
        assert!(w.decrypt(&b).failure.is_none());
        assert_eq!(w.rx, b"first-frame|second-frame");
        assert_eq!(w.queue(b"a reply", false), Queued::Yes);
        assert_eq!(to_client(&mut w, &mut c), b"a reply");
    }

    #[test]
    fn tls_garbage_fails_with_a_reason_an_operator_can_read() {
        let (server, _) = configs();
        let mut w = Wire::new(Mode::Detect);
        w.detect(0x16, true, || {
            Some(Box::new(ServerConnection::new(server).unwrap()))
        })
        .unwrap();
        let d = w.decrypt(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let why = d.failure.expect("garbage must fail");
        assert!(why.starts_with("not TLS, or a corrupted record"), "{why}");
        assert!(d.handshaking);
    }

    #[test]
    fn close_notify_is_reported() {
        let (mut w, mut c) = tls_pair();
        c.send_close_notify();
        let d = w.decrypt(&client_bytes(&mut c));
        assert!(d.peer_closed && d.failure.is_none(), "{d:?}");
    }

    #[test]
    fn peer_data_is_dropped_above_high_water_replies_never_and_reading_resumes_at_low() {
        let mut w = Wire::new(Mode::Plain);
        let chunk = vec![7u8; 64 * 1024];
        while !w.tx_full {
            assert_eq!(w.queue(&chunk, true), Queued::Yes);
        }
        assert!(w.tx.len() > HIGH_WATER);
        assert_eq!(w.queue(&chunk, true), Queued::Dropped);
        let before = w.tx.len();
        assert_eq!(w.queue(b"response", false), Queued::Yes);
        assert_eq!(w.tx.len(), before + 8);
        // Drained, but not yet to the low-water mark: still full.
        let mut resumed = false;
        while !resumed {
            assert!(w.tx_full);
            let n = w.tx.peek().len().min(32 * 1024);
            resumed = w.sent(n);
        }
        assert!(w.tx.len() <= LOW_WATER && !w.tx_full);
        assert_eq!(w.queue(&chunk, true), Queued::Yes);
        assert!(!w.sent(1), "resuming is reported once");
    }

    #[test]
    fn overrun_is_past_the_rx_limit() {
        let mut w = Wire::new(Mode::Plain);
        w.rx.resize(RX_LIMIT, 0);
        assert!(!w.overrun(0));
        w.rx.push(0);
        assert!(w.overrun(0));
    }

    #[test]
    fn bytes_in_flight_at_the_pause_are_not_an_overrun_but_still_bounded() {
        const IN_FLIGHT: usize = 1024 * 1024;
        let mut w = Wire::new(Mode::Plain);
        w.rx.resize(RX_LIMIT + IN_FLIGHT, 0);
        assert!(
            w.overrun(0),
            "without a receive in flight this is an overrun"
        );
        assert!(!w.overrun(IN_FLIGHT));
        w.rx.push(0);
        assert!(
            w.overrun(IN_FLIGHT),
            "past the limit and what was in flight"
        );
    }
}
