//! ADS on the wire, with each resource encoded once. The snapshot keeps every resource encoded
//! (as the `Any` a state-of-the-world response carries, and as the `Resource` a delta response
//! carries, [`crate::snapshot::Versioned`]); a response is those bytes written after their
//! field keys, next to its few strings. No stream decodes, clones or re-encodes a resource: the
//! bytes are shared, reference-counted, by every stream that sends them, and written once into
//! the response's gRPC frame, which is allocated at its size and freed once sent.
//!
//! The service is written by hand over tonic's pieces: the generated
//! `AggregatedDiscoveryServiceServer` encodes the prost response types, which would need each
//! resource decoded into them per stream, and tonic's encoder keeps a buffer per stream. The
//! requests are decoded by tonic's `Streaming` with prost, bounded in size, as usual. The
//! encoding is checked against prost's own in `ads/tests.rs`.

use std::{
    convert::Infallible,
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{BufMut, Bytes};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint},
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{
    Status, Streaming,
    codec::{DecodeBuf, Decoder},
    server::NamedService,
};

use super::AdsServer;

/// A state-of-the-world `DiscoveryResponse`: each resource an encoded `Any`.
#[derive(Debug, Default)]
pub struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Bytes>,
    pub type_url: String,
    pub nonce: String,
}

/// A `DeltaDiscoveryResponse`: each resource an encoded `Resource`.
#[derive(Debug, Default)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub resources: Vec<Bytes>,
    pub type_url: String,
    pub removed_resources: Vec<String>,
    pub nonce: String,
}

/// A message written from parts already encoded.
pub trait Encode: Send + 'static {
    fn encode(&self, buf: &mut impl BufMut);
    /// The length `encode` writes.
    fn encoded_len(&self) -> usize;
}

/// A length-delimited field: an embedded message from its encoding, or a string.
fn message(tag: u32, encoded: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(encoded.len() as u64, buf);
    buf.put_slice(encoded);
}

/// A string field, left out when empty (proto3).
fn string(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        message(tag, s.as_bytes(), buf);
    }
}

/// The length [`message`] writes (every field number here fits one byte of key).
fn message_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// The length a repeated length-delimited field writes, every element included.
fn messages_len<T: AsRef<[u8]>>(items: &[T]) -> usize {
    items.iter().map(|i| message_len(i.as_ref().len())).sum()
}

/// The length [`string`] writes.
fn string_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        message_len(s.len())
    }
}

impl Encode for SotwResponse {
    fn encode(&self, buf: &mut impl BufMut) {
        // Field numbers of envoy.service.discovery.v3.DiscoveryResponse.
        string(1, &self.version_info, buf);
        for r in &self.resources {
            message(2, r, buf);
        }
        string(4, &self.type_url, buf);
        string(5, &self.nonce, buf);
    }

    fn encoded_len(&self) -> usize {
        string_len(&self.version_info)
            + messages_len(&self.resources)
            + string_len(&self.type_url)
            + string_len(&self.nonce)
    }
}

impl Encode for DeltaResponse {
    fn encode(&self, buf: &mut impl BufMut) {
        // Field numbers of envoy.service.discovery.v3.DeltaDiscoveryResponse.
        string(1, &self.system_version_info, buf);
        for r in &self.resources {
            message(2, r, buf);
        }
        string(4, &self.type_url, buf);
        string(5, &self.nonce, buf);
        // A repeated field's elements are all written, an empty name too.
        for n in &self.removed_resources {
            message(6, n.as_bytes(), buf);
        }
    }

    fn encoded_len(&self) -> usize {
        string_len(&self.system_version_info)
            + messages_len(&self.resources)
            + string_len(&self.type_url)
            + string_len(&self.nonce)
            + messages_len(&self.removed_resources)
    }
}

/// A gRPC message frame: the flag byte (not compressed), the length, the message. Allocated
/// at its exact size and freed once sent: a stream keeps no buffer between its responses.
/// tonic's own encoder would keep one per stream, as large as the largest response the stream
/// ever sent (the Listeners of a large mesh), for the stream's life.
pub(super) fn frame(msg: &impl Encode) -> Result<Bytes, Status> {
    let len = msg.encoded_len();
    weft_xds_proto::grpc::frame(len, |buf| msg.encode(buf))
        .ok_or_else(|| Status::resource_exhausted(format!("a {len}-byte response")))
}

/// A response body: one frame per message, then the status in trailers.
struct Frames<T> {
    source: Responses<T>,
    done: bool,
}

impl<T: Encode> http_body::Body for Frames<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let end = match ready!(Pin::new(&mut this.source).poll_next(cx)) {
            Some(Ok(msg)) => match frame(&msg) {
                Ok(data) => return Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
                Err(status) => status,
            },
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        this.done = true;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(match end.add_header(&mut trailers) {
            Ok(()) => Ok(http_body::Frame::trailers(trailers)),
            Err(status) => Err(status),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Decodes requests `D` with prost.
struct Dec<D>(PhantomData<fn() -> D>);

impl<D: Message + Default> Decoder for Dec<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// A stream's requests, decoded with prost, bounded in size.
fn requests<D, B>(body: B, max: usize) -> Streaming<D>
where
    D: Message + Default + Send + 'static,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    Streaming::new_request(Dec(PhantomData), body, None, Some(max))
}

/// The response to a stream: gRPC's headers, then `source`'s messages.
fn respond<T: Encode>(source: Responses<T>) -> http::Response<tonic::body::Body> {
    let mut rsp = http::Response::new(tonic::body::Body::new(Frames {
        source,
        done: false,
    }));
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    rsp
}

/// The ADS service (both variants) over [`AdsServer`], for tonic's router.
#[derive(Debug, Clone)]
pub struct AdsService {
    server: AdsServer,
    max_decoding: usize,
}

impl AdsService {
    /// Requests larger than `max_decoding` bytes are refused.
    pub fn new(server: AdsServer, max_decoding: usize) -> Self {
        AdsService {
            server,
            max_decoding,
        }
    }
}

const PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/";

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type Responses<T> = ReceiverStream<Result<T, Status>>;

impl<B> tonic::codegen::Service<http::Request<B>> for AdsService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        let max = self.max_decoding;
        // No compression is offered: a client that compresses is told so before its first
        // message, as gRPC has it.
        if let Some(e) = req.headers().get("grpc-encoding")
            && e.as_bytes() != b"identity"
        {
            let status = Status::unimplemented(format!(
                "grpc-encoding {}: only identity is accepted",
                String::from_utf8_lossy(e.as_bytes())
            ));
            let mut rsp = status.into_http();
            rsp.headers_mut().insert(
                "grpc-accept-encoding",
                http::HeaderValue::from_static("identity"),
            );
            return Box::pin(std::future::ready(Ok(rsp)));
        }
        // Where a node's metrics are: its metrics port on the address its stream comes from.
        let peer = (req.extensions())
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|c| c.remote_addr())
            .map(|a| a.ip().to_canonical());
        let rsp = match req.uri().path().strip_prefix(PATH) {
            Some("StreamAggregatedResources") => {
                respond(server.sotw(requests(req.into_body(), max), peer))
            }
            Some("DeltaAggregatedResources") => {
                respond(server.delta(requests(req.into_body(), max), peer))
            }
            _ => Status::unimplemented("").into_http(),
        };
        Box::pin(std::future::ready(Ok(rsp)))
    }
}

#[cfg(test)]
mod tests;
