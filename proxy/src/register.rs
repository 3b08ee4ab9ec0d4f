//! Self-registration in etcd (`--register`), for workloads outside Kubernetes: the proxy
//! writes its own endpoint under the control plane's etcd prefix, with a lease it keeps alive,
//! and deletes it when draining starts. A proxy that dies without deregistering disappears
//! when its lease runs out (`--register-ttl`).
//!
//! Key: `<prefix>endpoints/<namespace>/<service>/<node id>`; value: JSON
//! `{"address", "port", "protocol", "labels"}`, the schema the control plane's etcd registry
//! reads.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use weft_core::etcd::Client;

use crate::config::RegisterConfig;

/// A registration to keep alive.
pub struct Registration {
    client: Client,
    key: String,
    value: String,
    ttl: Duration,
}

impl Registration {
    /// `None` without `--register`.
    pub fn new(
        cfg: &RegisterConfig,
        namespace: &str,
        node_id: &str,
        labels: &[(String, String)],
    ) -> Option<Self> {
        let target = cfg.register.as_ref()?;
        let address = cfg.register_address?;
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let value = serde_json::json!({
            "address": address.to_string(),
            "port": target.port,
            "protocol": cfg.register_protocol,
            "labels": labels,
        });
        Some(Registration {
            client: Client::new(&cfg.etcd_endpoints),
            key: format!(
                "{}/endpoints/{namespace}/{}/{node_id}",
                cfg.etcd_prefix.trim_end_matches('/'),
                target.service
            ),
            value: value.to_string(),
            ttl: cfg.register_ttl.max(Duration::from_secs(2)),
        })
    }

    /// Registers, keeps the lease alive until `stop`, then deregisters.
    pub async fn run(self, stop: CancellationToken) {
        let ttl_secs = self.ttl.as_secs() as i64;
        let renew = self.ttl / 3;
        let mut lease = None;
        let mut retry = Duration::from_millis(250);
        loop {
            // (Re)register when there is no live lease.
            if lease.is_none() {
                match self.register(ttl_secs).await {
                    Ok(id) => {
                        tracing::info!(key = %self.key, lease = id, ttl = ?self.ttl, "registered in etcd");
                        lease = Some(id);
                        retry = Duration::from_millis(250);
                    }
                    Err(e) => {
                        tracing::warn!(key = %self.key, error = %e, retry_in = ?retry, "cannot register in etcd");
                    }
                }
            }
            let wait = if lease.is_some() { renew } else { retry };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            if lease.is_none() {
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
            if let Some(id) = lease {
                match self.client.keep_alive(id).await {
                    Ok(ttl) if ttl > 0 => {}
                    Ok(_) => {
                        tracing::warn!(key = %self.key, lease = id, "the etcd lease expired; registering again");
                        lease = None;
                    }
                    Err(e) => {
                        // Keep the lease: it may still be alive once etcd answers again.
                        tracing::warn!(key = %self.key, error = %e, "etcd lease keep-alive failed");
                    }
                }
            }
        }
        if let Some(id) = lease {
            let gone = self
                .client
                .delete(&self.key)
                .await
                .and(self.client.revoke(id).await);
            match gone {
                Ok(()) => tracing::info!(key = %self.key, "deregistered from etcd"),
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "deregistering failed; the lease will expire")
                }
            }
        }
    }

    async fn register(&self, ttl: i64) -> Result<i64, weft_core::etcd::Error> {
        let id = self.client.grant(ttl).await?;
        self.client.put(&self.key, &self.value, Some(id)).await?;
        Ok(id)
    }
}
