//! `weft-proxy`: the weft service-mesh sidecar. `app` is its composition root: it binds the
//! listeners, wires the parts together, runs them and drains them.
//!
//! The modules follow a connection: [`server`] accepts it and runs [`transport::detect`]; HTTP
//! goes through [`relay`] (routed by the [`table`] with [`route`], guarded by [`resilience`],
//! retried by [`retry`], sent through [`client`]), anything else through [`tcp`]. The table
//! comes from a file ([`table::watch`]) or from the control plane ([`discovery`], the ADS
//! client). [`admin`] serves the admin and probe endpoints, [`metrics`] the Prometheus
//! registry, [`access_log`] and [`trace`] the access log and distributed tracing, [`drain`]
//! graceful shutdown. `docs/architecture.md` follows one request through
//! them, file by file.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
mod app;
pub mod app_probe;
pub mod authz;
pub mod balance;
pub mod config;
mod control;
pub mod discovery;
pub mod dns;
pub mod drain;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub use weft_core::log;
pub mod client;
pub mod clusters;
pub mod metrics;
pub mod per_thread;
#[cfg(any(test, feature = "properties"))]
pub mod properties;
pub mod register;
pub mod relay;
pub mod resilience;
pub mod resolve;
pub mod retry;
pub mod route;
pub mod server;
pub mod table;
pub mod tcp;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod trace;
pub mod trace_context;
pub mod transport;

pub use app::{StartError, run};
