//! The bounds every plain HTTP server of the control plane keeps (the health and metrics port,
//! the policy API, the injector's webhook): a client has a few seconds to send a request's
//! headers, and a connection that sends none for as long is closed; and each server holds at
//! most 256 connections, a new one beyond taking the place of the oldest (`weft_core::slots`),
//! so the kubelet's probes always get in.

use std::{sync::Arc, time::Duration};

use hyper::{body::Incoming, server::conn::http1, service::HttpService};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use weft_core::slots::Slot;

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
pub fn slots() -> Arc<weft_core::slots::Slots> {
    weft_core::slots::Slots::new(MAX_CONNECTIONS)
}

/// Serves one HTTP/1.1 connection with `svc`, within `header_read_timeout`, until it ends or a
/// newer connection takes its `slot`.
pub async fn connection<I, S>(io: I, svc: S, header_read_timeout: Duration, slot: Slot)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming>,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = slot.evicted() => {}
    }
}
