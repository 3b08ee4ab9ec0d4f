//! ADS on the wire, with each resource encoded once. The snapshot keeps every resource encoded
//! (as the `Any` a state-of-the-world response carries, and as the `Resource` a delta response
//! carries, [`crate::snapshot::Versioned`]); a response is those bytes written after their
//! field keys, next to its few strings. No stream decodes, clones or re-encodes a resource: the
//! bytes are shared, reference-counted, by every stream that sends them, and written once into
//! the stream's gRPC frame.
//!
//! The service is tonic's, by hand: the generated `AggregatedDiscoveryServiceServer` encodes
//! the prost response types, which would need each resource decoded into them per stream. The
//! requests are decoded with prost as usual. The encoding is checked against prost's own in
//! `ads/tests.rs`.

use std::{convert::Infallible, marker::PhantomData, pin::Pin};

use bytes::{BufMut, Bytes};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::{Grpc, NamedService, StreamingService},
};
use weft_xds_proto::discovery::{DeltaDiscoveryRequest, DiscoveryRequest};

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
}

/// Encodes `E` from its parts; decodes requests `D` with prost.
pub struct AdsCodec<E, D>(PhantomData<fn() -> (E, D)>);

impl<E, D> Default for AdsCodec<E, D> {
    fn default() -> Self {
        AdsCodec(PhantomData)
    }
}

pub struct Enc<E>(PhantomData<fn() -> E>);
pub struct Dec<D>(PhantomData<fn() -> D>);

impl<E: Encode, D: Message + Default + Send + 'static> Codec for AdsCodec<E, D> {
    type Encode = E;
    type Decode = D;
    type Encoder = Enc<E>;
    type Decoder = Dec<D>;

    fn encoder(&mut self) -> Enc<E> {
        Enc(PhantomData)
    }

    fn decoder(&mut self) -> Dec<D> {
        Dec(PhantomData)
    }
}

impl<E: Encode> Encoder for Enc<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf);
        Ok(())
    }
}

impl<D: Message + Default> Decoder for Dec<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
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

struct Sotw(AdsServer);
struct Delta(AdsServer);

impl StreamingService<DiscoveryRequest> for Sotw {
    type Response = SotwResponse;
    type ResponseStream = Responses<SotwResponse>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: tonic::Request<tonic::Streaming<DiscoveryRequest>>) -> Self::Future {
        let rsp = self.0.sotw(req.into_inner());
        Box::pin(async move { Ok(tonic::Response::new(rsp)) })
    }
}

impl StreamingService<DeltaDiscoveryRequest> for Delta {
    type Response = DeltaResponse;
    type ResponseStream = Responses<DeltaResponse>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(
        &mut self,
        req: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Self::Future {
        let rsp = self.0.delta(req.into_inner());
        Box::pin(async move { Ok(tonic::Response::new(rsp)) })
    }
}

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
        match req.uri().path().strip_prefix(PATH) {
            Some("StreamAggregatedResources") => Box::pin(async move {
                let codec = AdsCodec::<SotwResponse, DiscoveryRequest>::default();
                let mut grpc = Grpc::new(codec).apply_max_message_size_config(Some(max), None);
                Ok(grpc.streaming(Sotw(server), req).await)
            }),
            Some("DeltaAggregatedResources") => Box::pin(async move {
                let codec = AdsCodec::<DeltaResponse, DeltaDiscoveryRequest>::default();
                let mut grpc = Grpc::new(codec).apply_max_message_size_config(Some(max), None);
                Ok(grpc.streaming(Delta(server), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}
