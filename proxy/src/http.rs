//! HTTP as the proxy handles it, on both sides of a connection: bodies that relay, count and
//! hold what a response needs ([`body`]), the proxy's own errors and how they are answered
//! ([`error`]), header rules ([`headers`], `request`), bodies kept for another try
//! ([`replay`]), and HTTP/2's flow control, keepalive and idle timeout ([`http2`]). The
//! request engine that uses them is [`crate::relay`].

pub mod body;
pub mod error;
pub mod headers;
pub mod http2;
pub mod replay;
pub(crate) mod request;

/// HTTP/2 flow-control windows: what one stream / one connection may have in flight before the
/// reader consumes it. They bound what the proxy buffers for a slow reader.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONN_WINDOW: u32 = 4 << 20;
pub const MAX_FRAME: u32 = 64 * 1024;
