//! HTTP/2 on the `h2` crate, both sides of the proxy: the downstream connection ([`server`]),
//! the bodies of streams in either direction ([`body`]) and keepalive PINGs ([`keepalive`]).
//! Upstream connections and their pool are in `pool/h2.rs`.
//!
//! hyper's HTTP/2 server spawns a task per stream and hands responses to it; its client passes
//! each request through a channel to the connection's task and spawns a task per response.
//! The benchmark showed that machinery as a large part of the proxy's CPU, so both sides use
//! `h2` directly: a downstream connection's streams run inside the connection's own task, and
//! an upstream stream is opened by the task of the request that needs it.

pub mod body;
pub mod keepalive;
pub mod server;

pub use self::body::{RecvBody, Sender};

/// The most header bytes accepted in a request or a response (as HPACK counts them).
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
