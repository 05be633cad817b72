//! A load thread's packets: the frame prefilled in every send buffer, and what an
//! arriving datagram or frame is (a response for the session, or an echoed probe).

use std::time::Instant;

use relay_proto::stun::{
    ChannelData, Class, Data, Message, Method, PacketKind, TransactionId, classify,
    write_channel_data,
};

use super::{
    control::{Alloc, Control},
    payload::Probe,
    plan::{Plan, Shared},
    stats::{SecondSample, TrafficStats},
    sys::Mmsg,
    turn::DataMode,
};
use crate::probe::Transport;

/// The frame every send buffer holds; a packet rewrites only the probe in it.
pub(super) struct Frame {
    pub(super) len: usize,
    pub(super) probe_at: usize,
}

/// When and how an arrival counts.
#[derive(Clone, Copy)]
pub(super) struct Arrival {
    now: Instant,
    now_ns: u64,
    mode: DataMode,
    /// Probes count (traffic window or drain), not setup or teardown.
    counting: bool,
    in_window: bool,
}

impl Arrival {
    pub(super) fn new(shared: &Shared, mode: DataMode, window_end: Option<Instant>) -> Self {
        let now = Instant::now();
        Self {
            now,
            now_ns: shared.ns(now),
            mode,
            counting: window_end.is_some(),
            in_window: window_end.is_some_and(|end| now < end),
        }
    }
}

/// One datagram or frame from the server (or the peer, in direct mode): a response
/// for the session, or an echoed probe to account.
pub(super) fn on_packet(
    control: &mut Control,
    a: &mut Alloc,
    i: usize,
    traffic: &mut TrafficStats,
    second: &mut SecondSample,
    d: &[u8],
    at: Arrival,
) {
    let payload = match (at.mode, classify(d)) {
        (DataMode::Direct, _) => Some(d),
        (DataMode::Channel, PacketKind::ChannelData) => {
            ChannelData::parse(d).ok().map(|c| c.payload())
        }
        (_, PacketKind::Stun) => {
            let Ok(msg) = Message::parse(d) else {
                traffic.foreign += u64::from(at.counting);
                return;
            };
            if msg.class() == Class::Indication && msg.method() == Method::DATA {
                match msg.attr::<Data>() {
                    Some(Ok(Data(p))) => Some(p),
                    _ => None,
                }
            } else {
                if control.ctx.is_some() {
                    let next = a.session.on_response(d, at.now);
                    control.drive(a, i, next, at.now);
                }
                return;
            }
        }
        _ => None,
    };
    if !at.counting {
        return;
    }
    match payload.and_then(Probe::read) {
        Some(p) if p.alloc == a.index => {
            let rtt = at.now_ns.saturating_sub(p.sent_ns);
            traffic.received += 1;
            let _ = traffic.rtt.record(rtt.max(1));
            if at.in_window {
                traffic.received_in_window += 1;
                second.received += 1;
                let _ = second.rtt.record(rtt.max(1));
            }
        }
        _ => traffic.foreign += 1,
    }
}

/// Whole milliseconds from `now` to `at`, rounded up (epoll's unit); 0 when past.
pub(super) fn ms_until(now: Instant, at: Instant) -> i32 {
    let d = at.saturating_duration_since(now);
    if d.is_zero() {
        0
    } else {
        d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
    }
}

/// Writes the constant part of every packet (framing and filler) into each send buffer.
pub(super) fn prefill(tx: &mut Mmsg, plan: &Plan) -> Frame {
    // Filler a capture shows as ours; the probe overwrites the first bytes.
    let mut payload = vec![0u8; plan.size];
    for (k, b) in payload.iter_mut().enumerate() {
        *b = b"relay-load "[k % 11];
    }
    let mut frame = Frame {
        len: 0,
        probe_at: 0,
    };
    for k in 0..tx.capacity() {
        let buf = tx.buf_mut(k);
        frame = match plan.mode {
            DataMode::Direct => {
                buf[..plan.size].copy_from_slice(&payload);
                Frame {
                    len: plan.size,
                    probe_at: 0,
                }
            }
            DataMode::Channel => {
                // Streams carry ChannelData padded to 4 (RFC 8656 §12.5).
                let pad = plan.transport != Transport::Udp;
                let len = write_channel_data(&mut buf[..], plan.channel, &payload, pad)
                    .expect("payload fits a send buffer");
                Frame { len, probe_at: 4 }
            }
            DataMode::Send => {
                // A fixed transaction id: indications are not transactions, and a constant
                // XOR-PEER-ADDRESS lets every packet reuse the frame.
                let txid = TransactionId(*b"relay-load-1");
                let len = relay_client::send_indication(&mut buf[..], txid, plan.peer, &payload)
                    .expect("payload fits a send buffer");
                // DATA is last: its value starts where its padded value ends, minus padding.
                let padded = (plan.size + 3) & !3;
                Frame {
                    len,
                    probe_at: len - padded,
                }
            }
        };
    }
    frame
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{payload::PROBE_LEN, turn::Retransmit};
    use super::*;
    use crate::load::payload::MAGIC;
    use relay_proto::stun::XorPeerAddress;

    fn plan(mode: DataMode, size: usize) -> Plan {
        Plan {
            first_index: 0,
            count: 1,
            local: "127.0.0.1".parse().unwrap(),
            target: "127.0.0.1:3478".parse().unwrap(),
            peer: "192.0.2.10:7000".parse().unwrap(),
            mode,
            transport: Transport::Udp,
            tls: None,
            channel: 0x4001,
            credentials: None,
            retransmit: Retransmit {
                rto: Duration::from_millis(100),
                rto_max: Duration::MAX,
                tries: 2,
                timeout: Duration::from_secs(1),
            },
            ramp: None,
            window: 8,
            rate: None,
            size,
            burst: 2,
            drain: Duration::ZERO,
            delete: false,
            list: false,
            follow_redirects: false,
        }
    }

    #[test]
    fn frames_carry_the_probe_where_receivers_look() {
        for (mode, size) in [
            (DataMode::Direct, 24),
            (DataMode::Channel, 101),
            (DataMode::Send, 101),
            (DataMode::Send, 160),
        ] {
            let p = plan(mode, size);
            let mut tx = Mmsg::new(2);
            let f = prefill(&mut tx, &p);
            let probe = Probe {
                alloc: 3,
                seq: 9,
                sent_ns: 77,
            };
            probe.write(&mut tx.buf_mut(1)[f.probe_at..f.probe_at + PROBE_LEN]);
            let pkt = &tx.buf_mut(1)[..f.len];
            let payload = match mode {
                DataMode::Direct => pkt,
                DataMode::Channel => {
                    let c = ChannelData::parse(pkt).unwrap();
                    assert_eq!(c.channel(), 0x4001);
                    c.payload()
                }
                DataMode::Send => {
                    let m = Message::parse(pkt).unwrap();
                    assert_eq!((m.class(), m.method()), (Class::Indication, Method::SEND));
                    assert!(
                        matches!(m.attr::<XorPeerAddress>(), Some(Ok(XorPeerAddress(a))) if a == p.peer)
                    );
                    match m.attr::<Data>() {
                        Some(Ok(Data(d))) => d,
                        other => panic!("{other:?}"),
                    }
                }
            };
            assert_eq!(payload.len(), size, "{mode:?}");
            assert_eq!(Probe::read(payload), Some(probe), "{mode:?}");
            assert_eq!(&payload[..4], &MAGIC);
        }
    }

    #[test]
    fn ms_until_rounds_up() {
        let now = Instant::now();
        assert_eq!(ms_until(now, now), 0);
        assert_eq!(ms_until(now + Duration::from_millis(1), now), 0);
        assert_eq!(ms_until(now, now + Duration::from_micros(10)), 1);
        assert_eq!(ms_until(now, now + Duration::from_micros(1500)), 2);
    }
}
