//! The ADS server against tonic's generated xDS client over real loopback gRPC.

use std::{collections::BTreeMap, time::Duration};

use prost::Message;
use tokio_stream::wrappers::TcpListenerStream;
use weft_xds_proto::{
    discovery::{AggregatedDiscoveryServiceClient, DiscoveryResponse},
    envoy::config::{core::v3::Node, endpoint::v3::ClusterLoadAssignment},
    google::rpc,
    type_url::{CLUSTER, ENDPOINT},
};

use super::*;
use crate::{registry::Snapshot, translate};

fn registry(hosts: &[&str], weight: u32) -> Snapshot {
    crate::registry::test_snapshot(hosts, weight)
}

pub(super) fn xds(hosts: &[&str], weight: u32) -> Arc<XdsSnapshot> {
    Arc::new(XdsSnapshot::new(&translate::translate(&registry(
        hosts, weight,
    ))))
}

struct Harness {
    snaps: watch::Sender<Arc<XdsSnapshot>>,
    nodes: Arc<Nodes>,
    client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
}

async fn start(initial: Arc<XdsSnapshot>) -> Harness {
    let (snaps, rx) = watch::channel(initial);
    let server = AdsServer::new(rx, Arc::default());
    let nodes = server.nodes.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdsService::new(server, 4 << 20))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Harness {
        snaps,
        nodes,
        client,
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

async fn next<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a response in time")
        .unwrap()
        .expect("the stream is open")
}

async fn eventually_status(nodes: &Nodes, f: impl Fn(&BTreeMap<String, NodeStatus>) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f(&nodes.snapshot()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "status: {:#?}",
            nodes.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn names(rsp: &DiscoveryResponse) -> Vec<String> {
    rsp.resources
        .iter()
        .map(|a| match a.type_url.as_str() {
            ENDPOINT => {
                ClusterLoadAssignment::decode(&*a.value)
                    .unwrap()
                    .cluster_name
            }
            _ => {
                weft_xds_proto::envoy::config::cluster::v3::Cluster::decode(&*a.value)
                    .unwrap()
                    .name
            }
        })
        .collect()
}

#[tokio::test]
async fn sotw_subscribe_ack_update_nack() {
    let mut h = start(xds(&["a.test", "b.test"], 1)).await;
    let (tx, rx) = mpsc::channel(8);
    let mut rsp = h
        .client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(DiscoveryRequest {
        node: node("proxy-a"),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let cds = next(&mut rsp).await;
    assert_eq!(
        names(&cds),
        ["a.test:80", "b.test:80"],
        "wildcard: every cluster"
    );
    // ACK.
    tx.send(DiscoveryRequest {
        version_info: cds.version_info.clone(),
        type_url: CLUSTER.into(),
        response_nonce: cds.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    eventually_status(&h.nodes, |n| {
        n["proxy-a"].types[CLUSTER].acked_version.as_deref() == Some(&cds.version_info)
    })
    .await;

    // EDS for one name only.
    tx.send(DiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names: vec!["b.test:80".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let eds = next(&mut rsp).await;
    assert_eq!(names(&eds), ["b.test:80"]);

    // A new service: pushed without asking, on both subscribed types.
    h.snaps
        .send(xds(&["a.test", "b.test", "c.test"], 1))
        .unwrap();
    let mut got = BTreeMap::new();
    for _ in 0..2 {
        let r = next(&mut rsp).await;
        got.insert(r.type_url.clone(), r);
    }
    let cds2 = &got[CLUSTER];
    assert_ne!(cds2.version_info, cds.version_info);
    assert_eq!(names(cds2), ["a.test:80", "b.test:80", "c.test:80"]);
    assert_eq!(names(&got[ENDPOINT]), ["b.test:80"]);

    // NACK: recorded with the client's reason; the previous ACK stands.
    tx.send(DiscoveryRequest {
        version_info: cds.version_info.clone(),
        type_url: CLUSTER.into(),
        response_nonce: cds2.nonce.clone(),
        error_detail: Some(rpc::Status {
            code: 3,
            message: "cluster c.test:80: unsupported".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    eventually_status(&h.nodes, |n| {
        let t = &n["proxy-a"].types[CLUSTER];
        t.last_nack
            == Some((
                cds2.version_info.clone(),
                "cluster c.test:80: unsupported".into(),
            ))
            && t.acked_version.as_deref() == Some(&cds.version_info)
    })
    .await;
    let m = h.nodes.metrics.render();
    assert!(
        m.contains(&format!("weft_cp_nacks_total{{type_url=\"{CLUSTER}\"}} 1")),
        "{m}"
    );
    assert!(m.contains("weft_cp_connected_proxies 1"), "{m}");
    for t in [CLUSTER, ENDPOINT] {
        assert!(
            m.contains(&format!("weft_cp_pushes_total{{type_url=\"{t}\"}} 2")),
            "{m}"
        );
    }
    drop(tx);
    eventually_status(&h.nodes, |n| !n["proxy-a"].connected).await;
    assert!(
        h.nodes
            .metrics
            .render()
            .contains("weft_cp_connected_proxies 0")
    );
}

#[tokio::test]
async fn delta_sends_only_what_changed() {
    let mut h = start(xds(&["a.test", "b.test"], 1)).await;
    let (tx, rx) = mpsc::channel(8);
    let mut rsp = h
        .client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(DeltaDiscoveryRequest {
        node: node("proxy-d"),
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec!["a.test:80".into(), "b.test:80".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let first = next(&mut rsp).await;
    let got: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(got, ["a.test:80", "b.test:80"]);
    tx.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    eventually_status(&h.nodes, |n| {
        let s = &n["proxy-d"];
        s.delta && s.types[ENDPOINT].acked_version.as_deref() == Some(&first.system_version_info)
    })
    .await;

    // a's endpoint changes, b's does not.
    let mut reg = registry(&["a.test", "b.test"], 1);
    reg.services.get_mut("a.test:80").unwrap().spec.endpoints[0].weight = 7;
    h.snaps
        .send(Arc::new(XdsSnapshot::new(&translate::translate(&reg))))
        .unwrap();
    let upd = next(&mut rsp).await;
    let got: Vec<&str> = upd.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(got, ["a.test:80"], "only the changed resource");
    assert!(upd.removed_resources.is_empty());

    // b goes away: its removal is announced.
    h.snaps.send(xds(&["a.test"], 7)).unwrap();
    let gone = next(&mut rsp).await;
    assert!(gone.resources.is_empty());
    assert_eq!(gone.removed_resources, ["b.test:80"]);

    // Unsubscribed names are no longer sent. The stream handles requests in order, so once
    // the CDS subscription sent after the unsubscribe is answered, the unsubscribe is in force.
    tx.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_unsubscribe: vec!["a.test:80".into()],
        response_nonce: gone.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let cds = next(&mut rsp).await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(
        cds.resources.len(),
        1,
        "a wildcard subscription gets every cluster"
    );
    // a's endpoint changes and a cluster appears: only the cluster is sent.
    h.snaps.send(xds(&["a.test", "c.test"], 9)).unwrap();
    let upd = next(&mut rsp).await;
    assert_eq!(
        upd.type_url, CLUSTER,
        "nothing is sent for the unsubscribed endpoint"
    );
    let got: Vec<&str> = upd.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(got, ["c.test:80"]);
}

#[tokio::test]
async fn a_stuck_client_does_not_delay_others() {
    let mut h = start(xds(&["a.test"], 1)).await;
    // A client that subscribes and then never reads.
    let (stuck_tx, stuck_rx) = mpsc::channel(8);
    let _stuck = h
        .client
        .stream_aggregated_resources(ReceiverStream::new(stuck_rx))
        .await
        .unwrap();
    stuck_tx
        .send(DiscoveryRequest {
            node: node("stuck"),
            type_url: ENDPOINT.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut healthy = h.client.clone();
    let (tx, rx) = mpsc::channel(8);
    let mut rsp = healthy
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(DiscoveryRequest {
        node: node("healthy"),
        type_url: ENDPOINT.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    next(&mut rsp).await;
    // Many pushes with large enough resources to fill the stuck stream's buffers.
    let hosts: Vec<String> = (0..200).map(|i| format!("s{i}.test")).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    for w in 2..=60 {
        h.snaps.send(xds(&hosts, w)).unwrap();
        tokio::task::yield_now().await;
    }
    let want = xds(&hosts, 60).get(ENDPOINT).unwrap().version.clone();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if rsp.message().await.unwrap().unwrap().version_info == want {
                return;
            }
        }
    })
    .await
    .expect("the healthy client reaches the latest version");
}

/// What a client chooses (its node id, the type URLs it asks for, its NACK texts, the names it
/// subscribes to) cannot grow the server's state or its metrics without bound.
#[tokio::test]
async fn what_clients_choose_cannot_grow_the_server() {
    let mut h = start(xds(&["a"], 1)).await;
    let (tx, rx) = mpsc::channel(64);
    let mut s = h
        .client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // 40 type URLs nobody serves: each answered (empty), counted under one label, not kept.
    for i in 0..40 {
        tx.send(DiscoveryRequest {
            node: node("greedy"),
            type_url: format!("type.googleapis.com/made.Up{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(next(&mut s).await.resources.is_empty());
    }
    let text = h.nodes.metrics.render();
    let series = text
        .lines()
        .filter(|l| l.starts_with("weft_cp_pushes_total{"))
        .count();
    assert_eq!(series, 1, "{text}");
    assert!(
        text.contains(r#"weft_cp_pushes_total{type_url="other"} 40"#),
        "{text}"
    );
    assert!(h.nodes.snapshot()["greedy"].types.is_empty());

    // A NACK text of a megabyte is kept to its first MAX_NACK_TEXT bytes.
    tx.send(DiscoveryRequest {
        node: node("greedy"),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let rsp = next(&mut s).await;
    tx.send(DiscoveryRequest {
        node: node("greedy"),
        type_url: CLUSTER.into(),
        response_nonce: rsp.nonce.clone(),
        version_info: String::new(),
        error_detail: Some(rpc::Status {
            code: 3,
            message: "x".repeat(1 << 20),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    eventually_status(&h.nodes, |n| {
        n["greedy"]
            .types
            .get(CLUSTER)
            .is_some_and(|t| t.last_nack.is_some())
    })
    .await;
    let nack = h.nodes.snapshot()["greedy"].types[CLUSTER]
        .last_nack
        .clone()
        .unwrap();
    assert!(
        nack.1.len() <= MAX_NACK_TEXT + 64,
        "{} bytes kept",
        nack.1.len()
    );
    drop(tx);

    // Nodes come and go with ids of their choosing: the disconnected ones are forgotten
    // beyond MAX_GONE_NODES, oldest first.
    for i in 0..(MAX_GONE_NODES + 20) {
        let stream = h
            .nodes
            .connect(&format!("passing-{i}"), false, Default::default());
        h.nodes.disconnect(&format!("passing-{i}"), stream);
    }
    let status = h.nodes.snapshot();
    assert!(
        status.len() <= MAX_GONE_NODES + 1,
        "{} nodes kept",
        status.len()
    );
    assert!(!status.contains_key("passing-0"), "the oldest went first");
    assert!(status.contains_key(&format!("passing-{}", MAX_GONE_NODES + 19)));
}

/// What a node's namespace chooses: consumer routes' variants.
mod namespaces;
