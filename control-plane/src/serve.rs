//! The bounds every plain HTTP server of the control plane keeps (the health and metrics port,
//! the policy API, the injector's webhook): a client has a few seconds to send a request's
//! headers, and a connection that sends none for as long is closed; and each server holds a
//! bounded number of connections, closing new ones beyond it at once.

use std::{sync::Arc, time::Duration};

use hyper::{body::Incoming, server::conn::http1, service::HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// How long a client may take to send a request's headers (and so how long an idle
/// keep-alive connection is kept).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for the injector's webhook: its one client, the API server, keeps idle connections
/// for up to 90 s and does not retry a POST written as the server closes one, so the webhook
/// keeps them longer than that (its connections come only after a TLS handshake).
pub const WEBHOOK_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections one server holds at once.
pub const MAX_CONNECTIONS: usize = 256;

/// One server's connection slots.
#[derive(Debug, Clone)]
pub struct Slots(Arc<Semaphore>);

impl Default for Slots {
    fn default() -> Self {
        Slots(Arc::new(Semaphore::new(MAX_CONNECTIONS)))
    }
}

impl Slots {
    /// A slot for a new connection, held until it is dropped; `None` at the limit (close the
    /// connection).
    pub fn take(&self, server: &'static str) -> Option<OwnedSemaphorePermit> {
        let slot = self.0.clone().try_acquire_owned().ok();
        if slot.is_none() {
            tracing::debug!(
                server,
                "connection limit reached; a new connection is closed"
            );
        }
        slot
    }
}

/// Serves one HTTP/1.1 connection with `svc`, within `header_read_timeout`.
pub async fn connection<I, S>(io: I, svc: S, header_read_timeout: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming>,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}
