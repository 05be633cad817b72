//! Two workers' states over loopback sockets, without event loops: a ConnectionBind read
//! on the worker that does not own its CONNECTION-ID moves there with its bytes and its
//! admission count; one whose owner has ended is answered where it is.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use relay_proto::stun::{Class, ConnectionId as ConnectionIdAttr, Message, MessageWriter, Method};

use super::Moves;
use crate::{
    config::TcpSettings,
    metrics::EventCounters,
    shard::{Kernel, Waker, apply::Mirror, slab::Key},
    tcp::{
        limits::SharedAdmission,
        state::{State, StreamListener},
    },
};

struct Pair {
    workers: Vec<State>,
    admission: SharedAdmission,
    listener: TcpListener,
    addr: SocketAddr,
    /// The clients' ends, held open.
    clients: Vec<TcpStream>,
}

impl Pair {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let admission = SharedAdmission::new(16, 16);
        let wakers = [
            Arc::new(Waker::new().unwrap()),
            Arc::new(Waker::new().unwrap()),
        ];
        let (config, _) = crate::cores::demo_config().unwrap();
        let now = Instant::now();
        let workers = Moves::for_workers(&wakers)
            .into_iter()
            .map(|moves| {
                let server = crate::cores::server(&config, now).unwrap();
                let mirror = Mirror::new(Kernel::off(), Arc::new(EventCounters::default()));
                let listeners = vec![StreamListener {
                    addr,
                    plain: true,
                    tls: false,
                    sock: listener.try_clone().unwrap(),
                    proxy_from: None,
                }];
                let mut s = State::new(
                    server,
                    mirror,
                    TcpSettings::default(),
                    None,
                    listeners,
                    admission.clone(),
                    now,
                );
                s.set_moves(moves, 2);
                s
            })
            .collect();
        Self {
            workers,
            admission,
            listener,
            addr,
            clients: Vec::new(),
        }
    }

    /// A client connection accepted by worker `w`.
    fn accept_on(&mut self, w: usize) -> Key {
        self.clients.push(TcpStream::connect(self.addr).unwrap());
        let (sock, _) = self.listener.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        self.workers[w].accept(0, sock, Instant::now()).unwrap()
    }
}

fn connection_bind(conn: u32) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let txid = relay_proto::stun::TransactionId([7; 12]);
    let mut w =
        MessageWriter::new(&mut buf, Class::Request, Method::CONNECTION_BIND, txid).unwrap();
    w.attr(&ConnectionIdAttr(conn)).unwrap();
    let len = w.finish();
    buf[..len].to_vec()
}

/// The core answered the ConnectionBind: the connection's queue holds its response.
fn answered(s: &mut State, id: Key) {
    let c = s.conns.get_mut(id).expect("connection held");
    let m = Message::parse(c.wire.tx.peek()).expect("a STUN response queued");
    assert_eq!(m.method(), Method::CONNECTION_BIND);
    assert_ne!(m.class(), Class::Request);
}

/// The one connection of `s` that came from another worker.
fn the_moved(s: &State) -> Key {
    s.conns
        .keys()
        .find(|k| s.conns.get(*k).is_some_and(|c| c.moved))
        .expect("a moved connection")
}

#[test]
fn a_connection_bind_for_the_other_worker_moves_there_with_its_bytes_counted_once() {
    let mut p = Pair::new();
    let now = Instant::now();
    let id = p.accept_on(1);
    assert_eq!(p.admission.held(), 1);
    // An even id is worker 0's (id % 2), read by worker 1: not answered, not consumed.
    p.workers[1].received(id, &connection_bind(0x5678_9abc), now);
    let c = p.workers[1].conns.get(id).unwrap();
    assert_eq!(c.moving, Some(0));
    assert!(!c.wants_read() && c.wire.tx.is_empty());
    assert_eq!(c.wire.rx, connection_bind(0x5678_9abc));
    p.workers[1].move_out(id, now);
    assert!(p.workers[1].conns.is_empty());
    assert_eq!(p.workers[1].stats.moved_out.load(Ordering::Relaxed), 1);
    assert_eq!(p.admission.held(), 1, "the count moves with it");

    p.workers[0].adopt_moved(now);
    assert_eq!(p.workers[0].conns.len(), 1);
    let moved = the_moved(&p.workers[0]);
    let c = p.workers[0].conns.get(moved).unwrap();
    assert!(c.wire.rx.is_empty(), "processed as if just read");
    // Worker 0's core answered (a challenge: the test sends no credentials).
    answered(&mut p.workers[0], moved);
    p.workers[0].release(moved, now);
    assert_eq!(p.admission.held(), 0);
}

#[test]
fn own_ids_and_later_frames_stay_and_a_gone_owner_leaves_the_answer_here() {
    let mut p = Pair::new();
    let now = Instant::now();
    // Its own id (odd on worker 1): answered here.
    let own = p.accept_on(1);
    p.workers[1].received(own, &connection_bind(0x1357), now);
    assert_eq!(p.workers[1].conns.get(own).unwrap().moving, None);
    answered(&mut p.workers[1], own);
    // Not the first frame: answered here (a ConnectionBind belongs on a new connection).
    let used = p.accept_on(1);
    let mut two = connection_bind(0x1357);
    two.extend_from_slice(&connection_bind(0x2468));
    p.workers[1].received(used, &two, now);
    assert_eq!(p.workers[1].conns.get(used).unwrap().moving, None);

    // Worker 0 ended: its inbox is gone, the connection stays and is answered here.
    drop(p.workers.remove(0));
    let stays = p.accept_on(0);
    p.workers[0].received(stays, &connection_bind(0x2468), now);
    p.workers[0].move_out(stays, now);
    let b = &mut p.workers[0];
    assert_eq!(b.conns.len(), 3);
    let k = the_moved(b);
    assert!(b.conns.get(k).unwrap().moving.is_none());
    answered(b, k);
    assert_eq!(p.admission.held(), 3);
}
