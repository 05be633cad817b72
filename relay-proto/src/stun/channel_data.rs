//! ChannelData messages (RFC 8656 §12.4): channel(16) length(16) payload, the 4-byte-overhead
//! alternative to Send/Data indications. Zero-copy view plus a writer.

use super::error::{BufferTooSmall, ChannelDataError};
use super::header::be16;

pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Channel numbers a client may bind. RFC 8656 §12 narrowed the range to 0x4000..=0x4FFF,
/// but RFC 5766 clients still in the field (coturn's own turnutils among them) pick from
/// 0x4000..=0x7FFF, and refusing them breaks calls, so the old range is accepted.
pub const CHANNEL_MIN: u16 = 0x4000;
pub const CHANNEL_MAX: u16 = 0x7FFF;

mod field {
    pub const CHANNEL: usize = 0;
    pub const LENGTH: usize = 2;
}

/// A validated ChannelData message; the payload borrows the input.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChannelData<'a> {
    channel: u16,
    payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// `buf` is one UDP datagram or one TCP frame from `frame_len`: the payload must fit, and
    /// at most 3 bytes of padding may follow it.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, ChannelDataError> {
        let Some(rest) = buf.get(CHANNEL_DATA_HEADER_LEN..) else {
            return Err(ChannelDataError::TooShort(buf.len()));
        };
        let channel = be16(buf, field::CHANNEL);
        if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
            return Err(ChannelDataError::BadChannel(channel));
        }
        let declared = usize::from(be16(buf, field::LENGTH));
        let Some(payload) = rest.get(..declared) else {
            return Err(ChannelDataError::Truncated {
                declared,
                available: rest.len(),
            });
        };
        let trailing = rest.len() - declared;
        if trailing > 3 {
            return Err(ChannelDataError::TrailingBytes(trailing));
        }
        Ok(ChannelData { channel, payload })
    }

    #[inline]
    pub fn channel(&self) -> u16 {
        self.channel
    }

    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// Writes header + payload (+ zero padding to 4 when `pad`, as TCP requires) into `out`.
/// The channel number is written as given; payloads over 65535 bytes cannot be framed and
/// report `BufferTooSmall`.
pub fn write_channel_data(
    out: &mut [u8],
    channel: u16,
    payload: &[u8],
    pad: bool,
) -> Result<usize, BufferTooSmall> {
    let len = u16::try_from(payload.len()).map_err(|_| BufferTooSmall)?;
    let end = CHANNEL_DATA_HEADER_LEN + payload.len();
    let total = if pad { (end + 3) & !3 } else { end };
    let frame = out.get_mut(..total).ok_or(BufferTooSmall)?;
    let (head, body) = frame.split_at_mut(CHANNEL_DATA_HEADER_LEN);
    head[..2].copy_from_slice(&channel.to_be_bytes());
    head[2..].copy_from_slice(&len.to_be_bytes());
    let (data, padding) = body.split_at_mut(payload.len());
    data.copy_from_slice(payload);
    padding.fill(0);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_fixture() {
        let b = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c'];
        let cd = ChannelData::parse(&b).unwrap();
        assert_eq!((cd.channel(), cd.payload()), (0x4001, &b"abc"[..]));
        // Same with TCP padding.
        let b = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
        assert_eq!(ChannelData::parse(&b).unwrap().payload(), b"abc");
        let empty = [0x4f, 0xff, 0, 0];
        assert_eq!(ChannelData::parse(&empty).unwrap().payload(), b"");
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00]),
            Err(ChannelDataError::TooShort(3))
        );
        assert_eq!(
            ChannelData::parse(&[0x3f, 0xff, 0, 0]),
            Err(ChannelDataError::BadChannel(0x3fff))
        );
        assert_eq!(
            ChannelData::parse(&[0x80, 0x00, 0, 0]),
            Err(ChannelDataError::BadChannel(0x8000))
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0, 5, 1, 2, 3, 4]),
            Err(ChannelDataError::Truncated {
                declared: 5,
                available: 4
            })
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0, 0, 0, 0, 0, 0]),
            Err(ChannelDataError::TrailingBytes(4))
        );
    }

    #[test]
    fn write() {
        let mut out = [0xffu8; 12];
        assert_eq!(write_channel_data(&mut out, 0x4002, b"hello", false), Ok(9));
        assert_eq!(&out[..9], b"\x40\x02\x00\x05hello");
        assert_eq!(write_channel_data(&mut out, 0x4002, b"hello", true), Ok(12));
        assert_eq!(&out, b"\x40\x02\x00\x05hello\0\0\0");
        assert_eq!(
            write_channel_data(&mut out[..11], 0x4002, b"hello", true),
            Err(BufferTooSmall)
        );
        assert_eq!(
            write_channel_data(&mut out[..8], 0x4002, b"hello", false),
            Err(BufferTooSmall)
        );
        let big = vec![0u8; 65_536];
        let mut out = vec![0u8; 70_000];
        assert_eq!(
            write_channel_data(&mut out, 0x4000, &big, false),
            Err(BufferTooSmall)
        );
    }
}
