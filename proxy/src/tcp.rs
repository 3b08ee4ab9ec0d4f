//! Opaque TCP: bytes copied both ways until each side has closed, half-close included (a side
//! that finishes sending has its write half shut on the other connection; the other direction
//! keeps flowing).

use std::{net::SocketAddr, sync::Arc};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::{client::Pools, metrics::Direction};

/// Copy buffer per direction.
const BUF: usize = 32 * 1024;

/// Forwards `down` to `addr`: mutual TLS when it carries `identity` (and this proxy has one).
pub async fn forward<I>(
    mut down: I,
    addr: SocketAddr,
    identity: Option<&Arc<str>>,
    pools: &Arc<Pools>,
    direction: Direction,
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
            return;
        }
    };
    match tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF, BUF).await {
        Ok((sent, received)) => {
            tracing::trace!(%addr, sent, received, "opaque connection closed")
        }
        Err(e) => tracing::debug!(%addr, error = %e, "opaque connection ended with an error"),
    }
}
