//! The ADS stream on the wire, read without a buffer of the stream's own: each response is
//! read into a buffer of exactly its size, decoded, and freed. tonic's `Streaming` keeps one
//! buffer for the stream's life, as large as the largest response it ever read (a type's
//! every resource: 10 MiB of Listeners at 10,000 services), which a sidecar would carry for
//! nothing between updates. Requests are small and framed as they are sent.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use futures_util::future::poll_fn;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::{StreamExt, wrappers::UnboundedReceiverStream};
use tonic::{Status, body::Body, codegen::Service, transport::Channel};
use weft_xds_proto::grpc::HEADER;

/// The ADS methods' paths.
pub(super) const DELTA: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
pub(super) const SOTW: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// A message as a gRPC frame (not compressed); `None` over gRPC's 4-byte length.
fn frame(m: &impl Message) -> Option<Bytes> {
    weft_xds_proto::grpc::frame(m.encoded_len(), |buf| m.encode_raw(buf))
}

/// Opens the stream `path` on `channel`, sending what `requests` yields; responses larger than
/// `max` bytes end it. The error says why the control plane did not take the stream.
pub(super) async fn open<Q, R>(
    mut channel: Channel,
    path: &'static str,
    requests: UnboundedReceiver<Q>,
    max: usize,
) -> Result<Responses<R>, String>
where
    Q: Message + 'static,
    R: Message + Default,
{
    let body = UnboundedReceiverStream::new(requests).map(move |q| {
        let over = || {
            Status::resource_exhausted(format!(
                "an xDS request of {} bytes, over --xds-max-message-size ({max})",
                q.encoded_len()
            ))
        };
        if q.encoded_len() > max {
            return Err(over());
        }
        frame(&q).map(http_body::Frame::data).ok_or_else(over)
    });
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Body::new(StreamBody::new(body)))
        .expect("a request of constant parts");
    let refused = |e: &dyn std::fmt::Display| format!("ADS stream refused: {e}");
    poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| refused(&e))?;
    let rsp = channel.call(req).await.map_err(|e| refused(&e))?;
    if rsp.status() != http::StatusCode::OK {
        return Err(refused(&format!("HTTP status {}", rsp.status())));
    }
    // A refusal comes as headers only, with its status among them.
    if let Some(s) = Status::from_header_map(rsp.headers())
        && s.code() != tonic::Code::Ok
    {
        return Err(refused(&format!("{} ({:?})", s.message(), s.code())));
    }
    Ok(Responses::new(rsp.into_body(), max))
}

/// The responses of a stream, one message at a time.
pub(super) struct Responses<R> {
    body: Body,
    max: usize,
    /// What is left of the data frame last read.
    chunk: Bytes,
    /// The header of the next message, as far as it has arrived.
    head: Vec<u8>,
    /// The message being read, allocated at its size, and that size.
    message: Option<(Vec<u8>, usize)>,
    _type: PhantomData<fn() -> R>,
}

impl<R: Message + Default> Responses<R> {
    pub(super) fn new(body: Body, max: usize) -> Self {
        Responses {
            body,
            max,
            chunk: Bytes::new(),
            head: Vec::with_capacity(HEADER),
            message: None,
            _type: PhantomData,
        }
    }

    /// The next response; `None` when the control plane ended the stream in good order; the
    /// error says what went wrong.
    pub(super) async fn message(&mut self) -> Result<Option<R>, String> {
        loop {
            if let Some((buf, len)) = &self.message
                && buf.len() == *len
            {
                let (buf, _) = self.message.take().expect("a whole message");
                return R::decode(&buf[..]).map(Some).map_err(|e| {
                    format!("ADS stream failed: a response that does not decode: {e}")
                });
            }
            if self.chunk.is_empty() {
                match self.body.frame().await {
                    None => return self.end(None),
                    Some(Err(s)) => {
                        return Err(format!(
                            "ADS stream failed: {} ({:?})",
                            s.message(),
                            s.code()
                        ));
                    }
                    Some(Ok(f)) => match f.into_data() {
                        Ok(data) => self.chunk = data,
                        Err(f) => return self.end(f.into_trailers().ok()),
                    },
                }
                continue;
            }
            match &mut self.message {
                Some((buf, len)) => {
                    let n = (*len - buf.len()).min(self.chunk.len());
                    buf.put_slice(&self.chunk[..n]);
                    self.chunk.advance(n);
                }
                None => {
                    let n = (HEADER - self.head.len()).min(self.chunk.len());
                    self.head.put_slice(&self.chunk[..n]);
                    self.chunk.advance(n);
                    if self.head.len() == HEADER {
                        self.header()?;
                        self.head.clear();
                    }
                }
            }
        }
    }

    /// Takes the header just read: the message it announces, if acceptable, gets its buffer,
    /// allocated at its size.
    fn header(&mut self) -> Result<(), String> {
        if self.head[0] != 0 {
            return Err(
                "ADS stream failed: a compressed response, which weft does not ask for".into(),
            );
        }
        let len = u32::from_be_bytes(self.head[1..].try_into().expect("four bytes")) as usize;
        if len > self.max {
            return Err(format!(
                "ADS stream failed: a response of {len} bytes, over --xds-max-message-size ({})",
                self.max
            ));
        }
        self.message = Some((Vec::with_capacity(len), len));
        Ok(())
    }

    /// The stream's end: in good order when its trailers say so and no message is cut short.
    fn end(&mut self, trailers: Option<http::HeaderMap>) -> Result<Option<R>, String> {
        if self.message.is_some() || !self.head.is_empty() {
            return Err("ADS stream failed: it ended inside a response".into());
        }
        match trailers.as_ref().and_then(Status::from_header_map) {
            Some(s) if s.code() != tonic::Code::Ok => Err(format!(
                "ADS stream failed: {} ({:?})",
                s.message(),
                s.code()
            )),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
