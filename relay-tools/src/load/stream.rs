//! One allocation's TCP or TLS connection to the server (RFC 8656 §3.1): requests,
//! ChannelData (padded to 4) and indications back to back on a non-blocking stream,
//! split on the way in with [`frame_len`]. The worker's epoll wakes it edge-triggered;
//! it reads until the socket is empty and writes until the kernel pushes back.
//!
//! Outgoing bytes (TLS records once encrypted) wait in a buffer sized once at connect,
//! so a slow server shows up as `send_errors` instead of unbounded memory.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
};

use relay_proto::stun::frame_len;
use rustls::{ClientConfig, ClientConnection, pki_types::ServerName};
use socket2::{Domain, Protocol, Socket, Type};

/// Bytes received but not yet cut into frames: a few of the largest frames we expect.
const RX_BUF: usize = 16 * 1024;
/// Bytes waiting for the kernel; past this, a frame is refused (counted as a send error).
const TX_BACKLOG: usize = 64 * 1024;

/// Why a stream cannot be used any more.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("the stream lost its framing: {0}")]
    Framing(String),
    #[error("{0} bytes already wait for the kernel (the server reads too slowly)")]
    Backlog(usize),
}

/// How far one read went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The socket is empty for now.
    Drained,
    /// The receive buffer is full: cut frames, then read again.
    Full,
}

pub struct StreamConn {
    sock: TcpStream,
    tls: Option<ClientConnection>,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    tx: Vec<u8>,
}

impl StreamConn {
    /// Starts a non-blocking connect from `local` (port 0: any) to `remote`; bytes sent
    /// before it completes wait in the buffer until the socket turns writable.
    pub fn connect(
        local: SocketAddr,
        remote: SocketAddr,
        tls: Option<(&Arc<ClientConfig>, &ServerName<'static>)>,
    ) -> Result<Self, StreamError> {
        let sock = Socket::new(
            Domain::for_address(remote),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        sock.bind(&local.into())?;
        match sock.connect(&remote.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e.into()),
        }
        let tls = match tls {
            Some((config, name)) => Some(ClientConnection::new(config.clone(), name.clone())?),
            None => None,
        };
        Ok(Self {
            sock: sock.into(),
            tls,
            rx: vec![0; RX_BUF].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(TX_BACKLOG + RX_BUF),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Queues one whole frame and writes what the kernel takes. A frame is never cut:
    /// past the backlog it is refused whole.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), StreamError> {
        if self.tx.len() >= TX_BACKLOG {
            self.flush()?;
            if self.tx.len() >= TX_BACKLOG {
                return Err(StreamError::Backlog(self.tx.len()));
            }
        }
        match &mut self.tls {
            None => self.tx.extend_from_slice(frame),
            Some(tls) => {
                tls.writer().write_all(frame)?;
                while tls.wants_write() {
                    tls.write_tls(&mut self.tx)?;
                }
            }
        }
        self.flush()
    }

    /// Writes queued bytes until the kernel pushes back.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        if let Some(tls) = &mut self.tls {
            // Handshake records, and requests rustls held until the handshake was done.
            while tls.wants_write() {
                tls.write_tls(&mut self.tx)?;
            }
        }
        let mut done = 0;
        while done < self.tx.len() {
            match self.sock.write(&self.tx[done..]) {
                Ok(0) => return Err(StreamError::Closed),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Still connecting: the connect's completion wakes us to try again.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.tx.drain(..done);
        Ok(())
    }

    /// Reads into the receive buffer until the socket is empty or the buffer is full.
    pub fn fill(&mut self) -> Result<Fill, StreamError> {
        if self.rx_start > 0 {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        loop {
            if self.rx_end == self.rx.len() {
                return Ok(Fill::Full);
            }
            match &mut self.tls {
                None => match self.sock.read(&mut self.rx[self.rx_end..]) {
                    Ok(0) => return Err(StreamError::Closed),
                    Ok(n) => self.rx_end += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::Drained),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                },
                Some(tls) => {
                    // Plaintext rustls already decrypted comes first.
                    match tls.reader().read(&mut self.rx[self.rx_end..]) {
                        Ok(0) => return Err(StreamError::Closed),
                        Ok(n) => {
                            self.rx_end += n;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                    match tls.read_tls(&mut self.sock) {
                        Ok(0) => return Err(StreamError::Closed),
                        Ok(_) => {
                            // Handshake answers go out at once.
                            if tls.process_new_packets()?.tls_bytes_to_write() > 0 {
                                self.flush()?;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Fill::Drained);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }

    /// Copies the next whole frame into `out`; None when more bytes are needed.
    pub fn next_frame(&mut self, out: &mut [u8]) -> Result<Option<usize>, StreamError> {
        let buf = &self.rx[self.rx_start..self.rx_end];
        match frame_len(buf) {
            Ok(Some(n)) if n > out.len() || n > self.rx.len() => Err(StreamError::Framing(
                format!("a {n}-byte frame, larger than any the load generator expects"),
            )),
            Ok(Some(n)) if n <= buf.len() => {
                out[..n].copy_from_slice(&buf[..n]);
                self.rx_start += n;
                Ok(Some(n))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(StreamError::Framing(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_proto::stun::write_channel_data;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    /// Frames written by the peer in odd-sized pieces come out whole, padding consumed.
    #[test]
    fn frames_survive_any_split() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut conn = StreamConn::connect(
            "127.0.0.1:0".parse().unwrap(),
            listener.local_addr().unwrap(),
            None,
        )
        .unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut wire = Vec::new();
        for len in [5usize, 8, 101] {
            let mut buf = [0u8; 256];
            let payload = vec![len as u8; len];
            let n = write_channel_data(&mut buf, 0x4000, &payload, true).unwrap();
            wire.extend_from_slice(&buf[..n]);
        }
        for chunk in wire.chunks(7) {
            peer.write_all(chunk).unwrap();
            peer.flush().unwrap();
        }
        let mut got = Vec::new();
        let mut out = [0u8; 512];
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 3 && Instant::now() < deadline {
            conn.fill().unwrap();
            while let Some(n) = conn.next_frame(&mut out).unwrap() {
                got.push(n);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, vec![4 + 8, 4 + 8, 4 + 104]);

        conn.send(b"abcd").unwrap();
        let mut back = [0u8; 4];
        peer.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"abcd");
        drop(peer);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match conn.fill() {
                Err(StreamError::Closed) => break,
                Ok(_) => assert!(Instant::now() < deadline, "no EOF seen"),
                Err(e) => panic!("{e}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
