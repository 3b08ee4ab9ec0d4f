//! What the node registry keeps, and for how long.

use std::sync::Arc;

use weft_xds_proto::envoy::config::core::v3::Node;

use super::*;

/// What a node says of itself is bounded and cannot point elsewhere: its strings are cut, a
/// port that is not one is ignored, and its metrics address is always on the address its
/// stream comes from.
#[test]
fn what_a_node_says_of_itself_is_bounded() {
    use weft_xds_proto::google::protobuf::{Struct, Value, value::Kind};
    let node = |ns: &str, port: f64| Node {
        id: "n".into(),
        metadata: Some(Struct {
            fields: [
                (
                    "namespace".to_string(),
                    Value {
                        kind: Some(Kind::StringValue(ns.into())),
                    },
                ),
                (
                    "metrics_port".to_string(),
                    Value {
                        kind: Some(Kind::NumberValue(port)),
                    },
                ),
            ]
            .into(),
        }),
        ..Default::default()
    };
    let peer = Some("10.1.2.3".parse().unwrap());
    let about = NodeAbout::new(Some(&node("shop", 15020.0)), peer);
    assert_eq!(about.namespace, "shop");
    assert_eq!(about.metrics, Some("10.1.2.3:15020".parse().unwrap()));
    let long = "x".repeat(100_000);
    let about = NodeAbout::new(Some(&node(&long, 70000.0)), peer);
    assert!(
        about.namespace.len() < MAX_NODE_FIELD + 40,
        "{}",
        about.namespace.len()
    );
    assert_eq!(about.metrics, None, "70000 is not a port");
    assert_eq!(NodeAbout::new(Some(&node("a", 0.5)), peer).metrics, None);
    assert_eq!(
        NodeAbout::new(Some(&node("a", 15020.0)), None).metrics,
        None
    );
}

/// A node that reconnects before its old stream is seen to end stays connected when the old
/// stream ends: only the stream that registered it disconnects it. So a node id another client
/// borrows is not taken off the list by that client leaving either.
#[test]
fn an_old_stream_ending_does_not_disconnect_a_reconnected_node() {
    let nodes = Nodes::new(Arc::default());
    let about = |port| NodeAbout {
        metrics: Some(([10, 0, 0, 1], port).into()),
        ..Default::default()
    };
    let old = nodes.connect("web-7.shop", true, about(15020));
    let new = nodes.connect("web-7.shop", true, about(15021));
    nodes.disconnect("web-7.shop", old);
    assert!(nodes.snapshot()["web-7.shop"].connected);
    assert_eq!(
        nodes.targets(),
        [("web-7.shop".to_string(), about(15021))],
        "the new stream's node is listed"
    );
    nodes.disconnect("web-7.shop", new);
    assert!(!nodes.snapshot()["web-7.shop"].connected);
    assert!(nodes.targets().is_empty());
}
