//! STUN/TURN wire codec (RFC 8489, RFC 8656, RFC 6062, ICE attributes of RFC 8445).
//!
//! smoltcp `wire` style: `parse` validates a buffer once and returns a borrowed view whose
//! accessors cannot panic; writers fill caller-owned buffers and report `BufferTooSmall`.
//! No allocation anywhere, so hostile input costs at most one pass over the bytes.

pub mod attr;
mod channel_data;
mod error;
mod framing;
mod header;
mod integrity;
mod message;
mod writer;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

pub use attr::*;
pub use channel_data::{
    CHANNEL_DATA_HEADER_LEN, CHANNEL_MAX, CHANNEL_MIN, ChannelData, write_channel_data,
};
pub use error::{
    AttrError, BufferTooSmall, ChannelDataError, FramingError, IntegrityError, ParseError,
};
pub use framing::{PacketKind, classify, frame_len};
pub use header::{
    Class, HEADER_LEN, MAGIC_COOKIE, Method, TransactionId, decode_type, encode_type,
};
pub use integrity::IntegrityKind;
pub use message::{Message, RawAttrs, UnknownAttrs};
pub use writer::MessageWriter;
