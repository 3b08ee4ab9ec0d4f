//! HTTP/2 on the `h2` crate: the bodies of streams ([`body`]) and keepalive PINGs
//! ([`keepalive`]) for the upstream connections and their pool (`pool/h2.rs`).

pub mod body;
pub mod keepalive;

pub use self::body::{RecvBody, Sender};

/// The most response header bytes accepted (as HPACK counts them).
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
