//! `weft-control-plane`: watches service registrations, holds traffic policies, and serves both
//! to the proxies as Envoy v3 xDS.
//!
//! So far: the [`policy`] model that operators write, with its validation, and the
//! [`registry`] model with its file registry.
#![forbid(unsafe_code)]

pub mod ads;
pub mod api;
pub mod config;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod server;
pub mod snapshot;
pub mod translate;
