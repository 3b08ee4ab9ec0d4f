//! Opaque TCP: bytes copied both ways until each side has closed, half-close included (a side
//! that finishes sending has its write half shut on the other connection; the other direction
//! keeps flowing).

use std::{net::SocketAddr, sync::Arc};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    access_log::{Entry, Flags},
    client::Pools,
    metrics::Direction,
};

/// Copy buffer per direction.
const BUF: usize = 32 * 1024;

/// Forwards `down` to `addr`: mutual TLS when it carries `identity` (and this proxy has one).
/// With the access log on, `log` is the connection's line, written when it ends.
pub async fn forward<I>(
    mut down: I,
    addr: SocketAddr,
    identity: Option<&Arc<str>>,
    pools: &Arc<Pools>,
    direction: Direction,
    mut log: Option<Box<Entry>>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = match pools
        .connect_upstream(addr, identity, crate::tls::Alpn::Opaque)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(direction = direction.as_str(), error = %e, "opaque connection failed");
            if let Some(mut l) = log {
                l.flags.set(Flags::UF);
                l.finish();
            }
            return;
        }
    };
    let upstream_start = log.as_ref().map(|l| l.started.elapsed());
    match tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF, BUF).await {
        Ok((sent, received)) => {
            tracing::trace!(%addr, sent, received, "opaque connection closed");
            if let Some(l) = &mut log {
                l.bytes_from_client = sent;
                l.bytes_out = received;
            }
        }
        Err(e) => tracing::debug!(%addr, error = %e, "opaque connection ended with an error"),
    }
    if let Some(mut l) = log {
        // For a connection: the time its upstream connection took to open.
        l.upstream_time = upstream_start;
        l.finish();
    }
}
