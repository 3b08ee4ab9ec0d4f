//! A downstream HTTP/2 connection, served on `h2` directly. One task drives the connection
//! and every stream on it: a stream's handler (routing, the upstream request, relaying the
//! response) is a future polled by the connection's task, not a task of its own, so a request
//! costs no spawn and its response goes out without waking another task.
//!
//! What hyper's server did for a stream is done here: a client's RST_STREAM drops the handler
//! or the response body (which resets the upstream stream); a response whose body size is
//! known gets `content-length`; a handler that panics fails its own stream (it is reset), not
//! the connection's other streams.

use std::{
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    pin::pin,
    sync::Arc,
    task::Poll,
};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use h2::{RecvStream, server::SendResponse};
use http::{HeaderValue, Request, Response, header::CONTENT_LENGTH};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    MAX_HEADER_LIST, RecvBody, Sender,
    keepalive::{Reads, keep_alive},
};
use crate::{
    http::{
        CONN_WINDOW, ConnInfo, HttpProxy, MAX_FRAME, STREAM_WINDOW,
        body::{BoxError, Received},
    },
    metrics::OpenConn,
};

/// What a stream may hold of its response body not yet sent (flow control permitting).
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams the client reset before they were accepted, and streams the proxy reset for a
/// protocol error, that a connection may cause before it is closed (the rapid-reset attack).
const MAX_RESETS: usize = 1024;

/// Serves HTTP/2 on `io` until the connection closes, fails, misses a keepalive PING, or
/// draining has closed it gracefully (GOAWAY, then the streams in flight finish).
pub async fn serve<I>(
    proxy: Arc<HttpProxy>,
    io: I,
    open: Arc<OpenConn>,
    info: Arc<ConnInfo>,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, reads) = Reads::new(io);
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(proxy.cfg.http2_max_concurrent_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_RESETS)
        .max_local_error_reset_streams(Some(MAX_RESETS))
        .handshake::<_, Bytes>(io);
    let mut drain = pin!(proxy.drain.signaled());
    let mut conn = tokio::select! {
        c = handshake => c?,
        _ = drain.as_mut() => return Ok(()),
    };
    let (every, within) = (
        proxy.cfg.http2_keepalive_interval,
        proxy.cfg.http2_keepalive_timeout,
    );
    let ping = conn.ping_pong().filter(|_| !every.is_zero());
    let mut keepalive = pin!(ping.map(|p| keep_alive(p, every, within, &reads)));
    let mut streams = FuturesUnordered::new();
    let mut draining = false;
    poll_fn(|cx| {
        if !draining && drain.as_mut().poll(cx).is_ready() {
            draining = true;
            conn.graceful_shutdown();
        }
        if let Some(k) = keepalive.as_mut().as_pin_mut()
            && let Poll::Ready(why) = k.poll(cx)
        {
            return Poll::Ready(Err(why.into()));
        }
        loop {
            // Read what has arrived, write what is queued, take new streams.
            let mut accepted = false;
            loop {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        let handler = stream(proxy.clone(), req, respond, &open, &info);
                        streams.push(AssertUnwindSafe(handler).catch_unwind());
                        accepted = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    // Closed (after GOAWAY, once no stream is left).
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            // Every stream that can go on does.
            while let Poll::Ready(Some(done)) = streams.poll_next_unpin(cx) {
                if done.is_err() {
                    tracing::error!("an HTTP/2 stream's handler panicked; the stream was reset");
                }
            }
            // Again, to send what the streams queued; new streams are run at once.
            if !accepted {
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        let handler = stream(proxy.clone(), req, respond, &open, &info);
                        streams.push(AssertUnwindSafe(handler).catch_unwind());
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
    })
    .await
}

/// One stream: the request handled, its response sent, its body relayed.
async fn stream(
    proxy: Arc<HttpProxy>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    open: &Arc<OpenConn>,
    info: &Arc<ConnInfo>,
) {
    let (parts, recv) = req.into_parts();
    let body = Received::Http2(RecvBody::new(recv, &parts.headers, None));
    // Boxed: the handler's state machine is about 2.4 KiB, and the stream's future is moved
    // several times on its way into the connection's set of streams; the box is made once.
    let mut handled =
        Box::pin(proxy.handle(Request::from_parts(parts, body), open.clone(), info.clone()));
    let rsp = poll_fn(|cx| {
        if let Poll::Ready(rsp) = handled.as_mut().poll(cx) {
            return Poll::Ready(Some(rsp));
        }
        // The client reset the stream: dropping the handler cancels the upstream request.
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(rsp) = rsp else { return };
    let (mut head, body) = rsp.into_parts();
    let eos = body.is_end_stream();
    if !eos
        && let Some(len) = body.size_hint().exact()
        && !head.headers.contains_key(CONTENT_LENGTH)
    {
        head.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    let tx = match respond.send_response(Response::from_parts(head, ()), eos) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(error = %e, "response head not sent");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return;
        }
    };
    if !eos {
        let mut body = pin!(body);
        let mut sender = Sender::new(tx);
        poll_fn(|cx| sender.poll_send(body.as_mut(), None, cx)).await;
    }
}
