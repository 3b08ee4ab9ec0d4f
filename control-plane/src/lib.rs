//! `weft-control-plane`: watches service registrations, holds traffic policies, and serves both
//! to the proxies as Envoy v3 xDS.
//!
//! [`registry`] (file, etcd, Kubernetes) and [`policy`] feed [`snapshot`] through [`translate`];
//! [`ads`] serves the result; [`api`] is what `weftctl` talks to; [`ca`] is the mesh CA.
#![forbid(unsafe_code)]

pub mod ads;
pub mod api;
pub mod ca;
pub mod check;
pub mod config;
pub mod gateway;
pub mod inject;
#[cfg(test)]
mod kube_stand_in;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod serve;
pub mod server;
pub mod snapshot;
pub mod stat;
pub mod tls;
pub mod translate;
