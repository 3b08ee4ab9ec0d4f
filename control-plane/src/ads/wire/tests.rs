//! The hand-written ADS service's encoding and refusals.

use std::sync::Arc;

use prost::Message;
use tokio::sync::watch;
use weft_xds_proto::discovery::DiscoveryResponse;

use super::super::{AdsServer, tests::xds};
use super::*;

/// The hand-written responses are what prost would write for the same messages, byte for byte.
#[test]
fn responses_are_encoded_as_prost_encodes_them() {
    use weft_xds_proto::{
        discovery::{DeltaDiscoveryResponse, Resource},
        google::protobuf::Any,
    };

    let snap = xds(&["a.test", "b.test"], 3);
    for (url, set) in &snap.types {
        let sotw = SotwResponse {
            version_info: set.version.clone(),
            resources: set.resources.values().map(|v| v.sotw.clone()).collect(),
            type_url: url.to_string(),
            nonce: "7".into(),
        };
        let want = DiscoveryResponse {
            version_info: set.version.clone(),
            resources: set
                .resources
                .values()
                .map(|v| Any::decode(&v.sotw[..]).unwrap())
                .collect(),
            type_url: url.to_string(),
            nonce: "7".into(),
            ..Default::default()
        };
        assert!(!want.resources.is_empty());
        let mut got = Vec::new();
        sotw.encode(&mut got);
        assert_eq!(got, want.encode_to_vec(), "{url}: state of the world");
        assert_eq!(
            sotw.encoded_len(),
            got.len(),
            "{url}: state of the world's length"
        );
        let framed = frame(&sotw).unwrap();
        assert_eq!(framed[0], 0, "not compressed");
        assert_eq!(
            framed[1..5],
            (got.len() as u32).to_be_bytes(),
            "the frame's length"
        );
        assert_eq!(framed[5..], got[..]);

        let delta = DeltaResponse {
            system_version_info: set.version.clone(),
            resources: set.resources.values().map(|v| v.delta.clone()).collect(),
            type_url: url.to_string(),
            removed_resources: vec!["gone.test:80".into(), String::new(), "also-gone".into()],
            nonce: "8".into(),
        };
        let want = DeltaDiscoveryResponse {
            system_version_info: set.version.clone(),
            resources: set
                .resources
                .iter()
                .map(|(name, v)| Resource {
                    name: name.to_string(),
                    version: v.version.to_string(),
                    resource: Some(Any::decode(&v.sotw[..]).unwrap()),
                    ..Default::default()
                })
                .collect(),
            type_url: url.to_string(),
            removed_resources: vec!["gone.test:80".into(), String::new(), "also-gone".into()],
            nonce: "8".into(),
            ..Default::default()
        };
        let mut got = Vec::new();
        delta.encode(&mut got);
        assert_eq!(got, want.encode_to_vec(), "{url}: delta");
        assert_eq!(delta.encoded_len(), got.len(), "{url}: delta's length");
    }
    // Empty fields are left out, as proto3 has them.
    let mut got = Vec::new();
    SotwResponse::default().encode(&mut got);
    assert!(got.is_empty());
    assert_eq!(SotwResponse::default().encoded_len(), 0);
}

/// No compression is offered: a client that compresses its requests is refused before its
/// first message, with UNIMPLEMENTED, as gRPC has it; `identity` is no compression.
#[tokio::test]
async fn a_client_that_compresses_is_refused_up_front() {
    let (_snaps, rx) = watch::channel(xds(&["a.test"], 1));
    let mut svc = AdsService::new(AdsServer::new(rx, Arc::default()), 4 << 20);
    let call = |encoding: &str| {
        http::Request::post(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        )
        .header("content-type", "application/grpc")
        .header("grpc-encoding", encoding)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap()
    };
    let rsp = tonic::codegen::Service::call(&mut svc, call("gzip"))
        .await
        .unwrap();
    assert_eq!(rsp.headers()["grpc-status"], "12", "{:?}", rsp.headers());
    assert_eq!(rsp.headers()["grpc-accept-encoding"], "identity");
    let rsp = tonic::codegen::Service::call(&mut svc, call("identity"))
        .await
        .unwrap();
    assert!(
        rsp.headers().get("grpc-status").is_none(),
        "{:?}",
        rsp.headers()
    );
}
