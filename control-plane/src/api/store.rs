//! Where `weftctl apply` writes what it is given (policies, routes) and `weftctl delete`
//! removes it: the registry the control plane reads (a directory, etcd), each object under a
//! name of weftctl's own.

use std::path::PathBuf;

use crate::policy;

/// Where `weftctl apply` writes policies: the registry the control plane reads.
#[derive(Debug, Clone)]
pub enum PolicyStore {
    /// The file registry's directory: `weftctl-<namespace>-<name>.yaml`.
    Dir(PathBuf),
    /// etcd: `<prefix>config/weftctl-<namespace>-<name>`.
    Etcd {
        client: weft_core::etcd::Client,
        prefix: String,
    },
    /// Kubernetes: policies are `TrafficPolicy` objects, written with kubectl (or GitOps), not
    /// through this API.
    Kubernetes,
}

pub(super) const KUBERNETES_POLICIES: &str =
    "on Kubernetes, policies are TrafficPolicy objects: use `kubectl apply -f`";

impl PolicyStore {
    pub(super) fn location(&self, key: &str) -> String {
        match self {
            PolicyStore::Dir(d) => policy_file(d, key).display().to_string(),
            PolicyStore::Etcd { prefix, .. } => etcd_key(prefix, key),
            PolicyStore::Kubernetes => format!("TrafficPolicy {key}"),
        }
    }

    pub(super) async fn write(&self, key: &str, yaml: String) -> Result<(), String> {
        // The same policy under the name an earlier weftctl gave it would shadow this one.
        self.remove_legacy(key).await?;
        match self {
            PolicyStore::Dir(dir) => {
                let file = policy_file(dir, key);
                // Write beside, then rename: the registry never reads half a file.
                let tmp = dir.join(format!(".{}.tmp", stored_name(key)));
                tokio::fs::write(&tmp, yaml)
                    .await
                    .and(tokio::fs::rename(&tmp, &file).await)
                    .map_err(|e| e.to_string())
            }
            PolicyStore::Etcd { client, prefix } => client
                .put(&etcd_key(prefix, key), &yaml, None)
                .await
                .map_err(|e| e.to_string()),
            PolicyStore::Kubernetes => Err(KUBERNETES_POLICIES.into()),
        }
    }

    /// Removes the policy `key` from where a weftctl before `weftctl-<ns>_<name>` kept it
    /// (`weftctl-<ns>-<name>`, a name two policies could share: it is removed only when it holds
    /// this one). `Ok(true)` when there was one.
    async fn remove_legacy(&self, key: &str) -> Result<bool, String> {
        let legacy = format!("weftctl-{}", key.replace('/', "-"));
        let holds = |text: &str| {
            policy::parse("legacy", text).is_ok_and(|ps| ps.iter().any(|p| p.key() == key))
        };
        match self {
            PolicyStore::Dir(dir) => {
                let file = dir.join(format!("{legacy}.yaml"));
                match tokio::fs::read_to_string(&file).await {
                    Ok(text) if holds(&text) => {
                        tokio::fs::remove_file(&file)
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            PolicyStore::Etcd { client, prefix } => {
                let k = format!("{}/config/{legacy}", prefix.trim_end_matches('/'));
                let (kvs, _) = client.range_prefix(&k).await.map_err(|e| e.to_string())?;
                match kvs.iter().find(|kv| kv.key == k) {
                    Some(kv) if holds(&kv.value) => {
                        client.delete(&k).await.map_err(|e| e.to_string())?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            PolicyStore::Kubernetes => Ok(false),
        }
    }

    /// Removes a policy weftctl wrote; `Ok(false)` if there was none.
    pub(super) async fn remove(&self, key: &str) -> Result<bool, String> {
        let legacy = self.remove_legacy(key).await?;
        let current = match self {
            PolicyStore::Dir(dir) => tokio::fs::remove_file(policy_file(dir, key)).await.is_ok(),
            PolicyStore::Etcd { client, prefix } => {
                let k = etcd_key(prefix, key);
                let (kvs, _) = client.range_prefix(&k).await.map_err(|e| e.to_string())?;
                let there = kvs.iter().any(|kv| kv.key == k);
                if there {
                    client.delete(&k).await.map_err(|e| e.to_string())?;
                }
                there
            }
            PolicyStore::Kubernetes => return Err(KUBERNETES_POLICIES.into()),
        };
        Ok(legacy || current)
    }

    pub(super) fn describe(&self) -> String {
        match self {
            PolicyStore::Dir(d) => d.display().to_string(),
            PolicyStore::Etcd { prefix, .. } => format!("etcd keys under {prefix}config/"),
            PolicyStore::Kubernetes => "the TrafficPolicy objects".into(),
        }
    }
}

fn etcd_key(prefix: &str, key: &str) -> String {
    format!(
        "{}/config/{}",
        prefix.trim_end_matches('/'),
        stored_name(key)
    )
}

/// What `weftctl apply` writes and `weftctl delete` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Policy,
    HttpRoute,
    GrpcRoute,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::HttpRoute => "httproute",
            Kind::GrpcRoute => "grpcroute",
        }
    }

    /// The key an object `namespace/name` is stored under: a policy's is its own; a route's
    /// is `httproute_<namespace>/<name>` (names never hold `_`, so it is no policy's).
    pub(super) fn stored_key(self, key: &str) -> String {
        match self {
            Kind::Policy => key.to_string(),
            Kind::HttpRoute => format!("httproute_{key}"),
            Kind::GrpcRoute => format!("grpcroute_{key}"),
        }
    }
}

/// What weftctl names the policy `namespace/name` in its store: `weftctl-<namespace>_<name>`.
/// Namespaces and names never hold `_` (validated), so no two policies share a name (with `-`
/// for the slash, `a-b/c` and `a/b-c` did).
fn stored_name(key: &str) -> String {
    format!("weftctl-{}", key.replacen('/', "_", 1))
}

/// The file weftctl keeps a policy in.
fn policy_file(dir: &std::path::Path, key: &str) -> PathBuf {
    dir.join(format!("{}.yaml", stored_name(key)))
}
