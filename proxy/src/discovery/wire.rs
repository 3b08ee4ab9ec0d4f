//! What goes over the ADS stream besides resources: responses read as updates, a NACK's
//! status, this proxy's node, and the reconnect backoff.

use std::{collections::BTreeMap, time::Duration};

use futures_util::FutureExt;

use weft_xds_proto::{
    discovery::{DeltaDiscoveryResponse, DiscoveryResponse},
    envoy::config::core::v3::{Node, node::UserAgentVersionType},
    google::{
        protobuf::{Struct, Value, value::Kind},
        rpc,
    },
};

use super::{INVALID_ARGUMENT, KINDS, Update, stream::Responses};
use crate::config::DiscoveryConfig;

/// A delta response as an update, with its nonce.
pub(super) fn delta_update(r: DeltaDiscoveryResponse) -> (Update, String) {
    let update = Update {
        type_url: r.type_url,
        version: r.system_version_info,
        full: false,
        resources: r
            .resources
            .into_iter()
            .map(|r| (Some(r.name), r.version, r.resource))
            .collect(),
        removed: r.removed_resources,
    };
    (update, r.nonce)
}

/// A state-of-the-world response as an update, with its nonce.
pub(super) fn sotw_update(r: DiscoveryResponse) -> (Update, String) {
    let update = Update {
        type_url: r.type_url,
        version: r.version_info,
        full: true,
        resources: r
            .resources
            .into_iter()
            .map(|a| (None, String::new(), Some(a)))
            .collect(),
        removed: Vec::new(),
    };
    (update, r.nonce)
}

/// Waits for one message, then takes every message already waiting. Returns them with the
/// reason the stream ended, if it did.
pub(super) async fn batch<T: prost::Message + Default>(
    stream: &mut Responses<T>,
) -> (Vec<T>, Option<String>) {
    let ended = |r: Result<Option<T>, String>| match r {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err("the control plane closed the stream".to_string()),
        Err(e) => Err(e),
    };
    let mut out = Vec::new();
    match ended(stream.message().await) {
        Ok(m) => out.push(m),
        Err(e) => return (out, Some(e)),
    }
    // At most a few rounds of each type: a control plane that never stops talking still gets
    // its answers.
    while out.len() < KINDS.len() * 4 {
        match stream.message().now_or_never() {
            None => break,
            Some(r) => match ended(r) {
                Ok(m) => out.push(m),
                Err(e) => return (out, Some(e)),
            },
        }
    }
    (out, None)
}

pub(super) fn nack_status(message: String) -> rpc::Status {
    rpc::Status {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

/// The delay before reconnect attempt `failures` (0 for the first): uniformly random up to
/// `base * 2^failures`, capped at `max` (full jitter).
pub(super) fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    weft_core::backoff::full_jitter(base, max, failures, fastrand::f64())
}

/// The node this proxy reports: id, and its pod, namespace, service account and labels in the
/// metadata, and where its metrics are (`probe`'s port) when the control plane can list that
/// right, on the address the stream comes from: when the probe server listens on every
/// address, or on loopback (with the control plane on this host).
pub(super) fn node(cfg: &DiscoveryConfig, probe: std::net::SocketAddr) -> Node {
    let metrics_port =
        (probe.ip().is_unspecified() || probe.ip().is_loopback()).then(|| probe.port());
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let labels = Struct {
        fields: cfg
            .node_labels
            .iter()
            .map(|(k, v)| (k.clone(), string(v)))
            .collect(),
    };
    let mut fields = BTreeMap::new();
    if let Some(p) = &cfg.pod_name {
        fields.insert("pod".to_string(), string(p));
    }
    fields.insert("namespace".to_string(), string(&cfg.pod_namespace));
    if let Some(port) = metrics_port {
        fields.insert(
            weft_core::contract::xds::NODE_METRICS_PORT.to_string(),
            Value {
                kind: Some(Kind::NumberValue(f64::from(port))),
            },
        );
    }
    fields.insert("service_account".to_string(), string(&cfg.service_account));
    fields.insert(
        "labels".to_string(),
        Value {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    Node {
        id: cfg.node_id(),
        cluster: cfg.pod_namespace.clone(),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        user_agent_name: "weft-proxy".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Default::default()
    }
}
