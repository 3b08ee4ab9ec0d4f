//! HTTP/2 on the `h2` crate: the bodies of streams ([`body`]) and keepalive PINGs
//! ([`keepalive`]) for the upstream connections and their pool (`client/h2.rs`); and the idle
//! timeout of downstream connections ([`idle`]).

pub mod body;
pub mod idle;
pub mod keepalive;

pub use self::body::{RecvBody, Sender};
