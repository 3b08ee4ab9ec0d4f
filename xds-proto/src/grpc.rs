//! gRPC's length-prefixed messages, as both ends of weft's ADS stream write them (each end
//! frames its messages itself, so that neither keeps a buffer per stream).

use bytes::{BufMut, Bytes};

/// A message's header: the compressed flag (1 byte) and the length (4 bytes, big-endian).
pub const HEADER: usize = 5;

/// The message of `len` bytes that `encode` writes, framed (not compressed) into a buffer of
/// exactly its size; `None` when `len` does not fit gRPC's 4-byte length.
pub fn frame(len: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Option<Bytes> {
    let len32 = u32::try_from(len).ok()?;
    let mut buf = Vec::with_capacity(HEADER + len);
    buf.put_u8(0);
    buf.put_u32(len32);
    encode(&mut buf);
    debug_assert_eq!(
        buf.len(),
        HEADER + len,
        "the message is as long as announced"
    );
    Some(Bytes::from(buf))
}
