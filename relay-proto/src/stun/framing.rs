//! Demultiplexing (RFC 8656 §12, RFC 7983) and TCP framing (RFC 8656 §12.5).

use super::channel_data::CHANNEL_DATA_HEADER_LEN;
use super::error::FramingError;
use super::header::{HEADER_LEN, MAGIC_COOKIE, be16, be32, field};

/// What a datagram (or the next frame of a stream) is, judged by its first byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PacketKind {
    Stun,
    ChannelData,
    Other,
}

/// STUN has the top two bits 00; ChannelData uses channels 0x4000-0x7FFF (first byte
/// 0x40-0x7F, see [`CHANNEL_MAX`](super::CHANNEL_MAX)).
#[inline]
pub fn classify(buf: &[u8]) -> PacketKind {
    match buf.first() {
        Some(0x00..=0x3F) => PacketKind::Stun,
        Some(0x40..=0x7F) => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

/// Length of the next whole frame at the start of a TCP stream buffer: a STUN message, or a
/// ChannelData message including its padding to 4. `Ok(None)`: more bytes are needed.
/// `Err`: the stream is desynchronised and the connection should be closed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match classify(buf) {
        PacketKind::Stun => {
            if buf.len() < field::LENGTH.end {
                return Ok(None);
            }
            let len = be16(buf, field::LENGTH.start);
            if !len.is_multiple_of(4) {
                return Err(FramingError::UnalignedLength(len));
            }
            // Check the cookie as soon as it is there: garbage is caught before we wait for
            // up to 64 KiB that will never make sense.
            if buf.len() >= field::COOKIE.end {
                let cookie = be32(buf, field::COOKIE.start);
                if cookie != MAGIC_COOKIE {
                    return Err(FramingError::BadMagicCookie(cookie));
                }
            }
            Ok(whole(buf, HEADER_LEN + usize::from(len)))
        }
        PacketKind::ChannelData => {
            if buf.len() < CHANNEL_DATA_HEADER_LEN {
                return Ok(None);
            }
            let len = usize::from(be16(buf, 2));
            Ok(whole(buf, (CHANNEL_DATA_HEADER_LEN + len + 3) & !3))
        }
        PacketKind::Other => Err(FramingError::UnknownFirstByte(first)),
    }
}

fn whole(buf: &[u8], need: usize) -> Option<usize> {
    (buf.len() >= need).then_some(need)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_first_byte() {
        assert_eq!(classify(&[]), PacketKind::Other);
        assert_eq!(classify(&[0x00]), PacketKind::Stun);
        assert_eq!(classify(&[0x3f]), PacketKind::Stun);
        assert_eq!(classify(&[0x40]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x4f]), PacketKind::ChannelData);
        // RFC 5766 channels up to 0x7FFF (see CHANNEL_MAX).
        assert_eq!(classify(&[0x50]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x7f]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x80]), PacketKind::Other); // RTP
        assert_eq!(classify(&[0x16]), PacketKind::Stun); // (DTLS shares 20..63; caller's job)
    }

    #[test]
    fn stun_frames() {
        let mut m = [0u8; 28];
        m[2..4].copy_from_slice(&8u16.to_be_bytes());
        m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert_eq!(frame_len(&m[..0]), Ok(None));
        assert_eq!(frame_len(&m[..3]), Ok(None));
        assert_eq!(frame_len(&m[..27]), Ok(None));
        assert_eq!(frame_len(&m), Ok(Some(28)));
        let mut more = m.to_vec();
        more.extend_from_slice(&[0x40, 0, 0, 0]);
        assert_eq!(frame_len(&more), Ok(Some(28)));
        m[3] = 9;
        assert_eq!(frame_len(&m), Err(FramingError::UnalignedLength(9)));
        m[3] = 8;
        m[4] = 0;
        assert_eq!(
            frame_len(&m[..8]),
            Err(FramingError::BadMagicCookie(0x0012_a442))
        );
    }

    #[test]
    fn channel_data_frames_include_padding() {
        let f = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(frame_len(&f[..3]), Ok(None));
        assert_eq!(frame_len(&f[..11]), Ok(None));
        assert_eq!(frame_len(&f), Ok(Some(12)));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00, 0x00]), Ok(Some(4)));
        assert_eq!(
            frame_len(&[0xff]),
            Err(FramingError::UnknownFirstByte(0xff))
        );
        assert_eq!(
            frame_len(&[0x80, 0, 0, 0]),
            Err(FramingError::UnknownFirstByte(0x80))
        );
    }
}
