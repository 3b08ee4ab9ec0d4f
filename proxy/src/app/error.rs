//! Why the proxy could not start: each error names the flag or file at fault.

use std::net::SocketAddr;

use crate::{app_probe, identity, table::LoadError, tls, trace};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Table(#[from] LoadError),
    #[error("{what} listener {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("identity: {0}")]
    Identity(#[from] identity::IdentityError),
    #[error("identity: --identity ca needs the CA's address (--ca-address or --control-plane)")]
    NoCa,
    #[error(
        "identity: the CA at `{0}` is not https://: the identity token would cross the network in the clear (use the control plane's TLS port, or --ca-address https://...)"
    )]
    CaInTheClear(String),
    #[error("identity: {flag}: {source}")]
    TrustBundle {
        flag: &'static str,
        source: tls::PemError,
    },
    #[error("identity: the trust bundle: {0}")]
    TrustRoots(rustls::Error),
    #[error("identity: `{0}` is TLS: give the mesh trust bundle to verify it (--trust-bundle)")]
    NoTrustBundle(String),
    #[error("--node-labels-file {0}")]
    Labels(String),
    #[error("--app-probes: {0}")]
    AppProbes(#[from] app_probe::ProbesError),
    #[error(
        "--admin-addr {0}: the admin server can stop the proxy and shows its whole configuration; it listens on a loopback address only (127.0.0.1 or [::1])"
    )]
    AdminNotLoopback(SocketAddr),
    #[error("--access-log-path {}: {source}", path.display())]
    AccessLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Trace(#[from] trace::TraceError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
