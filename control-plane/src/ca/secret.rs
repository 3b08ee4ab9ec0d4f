//! The CA's key and certificate kept in a Kubernetes Secret (`--ca-secret`), so that every
//! control-plane replica signs with the same CA and a restarted pod keeps it.
//!
//! The Secret holds `ca.key`, `ca.crt` and optionally `bundle.crt`, the same texts as the
//! `--ca-dir` files. On start the control plane reads it; with `--ca-create` and no Secret it
//! makes a root and creates the Secret. When replicas race, the first create wins and the others
//! read what it wrote (the API server answers their create with 409 Conflict), so there is never
//! more than one CA. An operator can create the Secret beforehand with a CA of their own
//! (`kubectl create secret generic weft-ca --from-file=ca.crt --from-file=ca.key`), or point
//! `--ca-secret` at a `kubernetes.io/tls` Secret cert-manager writes for a CA Certificate
//! (`isCA: true`): `tls.key` and `tls.crt` are then the CA, and its `ca.crt` (the issuer)
//! joins the trust bundle.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, api::PostParams};

use super::{Ca, CaError, PemNames, file_err};

/// The keys of the Secret, as the CA files are named.
const KEY: &str = "ca.key";
const CERT: &str = "ca.crt";
const BUNDLE: &str = "bundle.crt";

/// The CA from the Secret's data; errors name the Secret and the key.
pub fn from_secret(
    secret: &Secret,
    trust_domain: &str,
    default_ttl: Duration,
    max_ttl: Duration,
) -> Result<Ca, CaError> {
    let ns = secret.metadata.namespace.as_deref().unwrap_or_default();
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let where_ = |key: &str| format!("Secret {ns}/{name} key {key}");
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let text = |key: &str| -> Result<Option<String>, CaError> {
        data.get(key)
            .map(|b| {
                String::from_utf8(b.0.clone())
                    .map_err(|_| file_err(where_(key), "not UTF-8 PEM text"))
            })
            .transpose()
    };
    let missing = || CaError::Missing {
        key: where_(KEY),
        cert: where_(CERT),
    };
    // weft's own keys, or cert-manager's for a CA Certificate.
    let (k, c, b) = if !data.contains_key(KEY) && data.contains_key("tls.key") {
        ("tls.key", "tls.crt", CERT)
    } else {
        (KEY, CERT, BUNDLE)
    };
    let key = text(k)?.ok_or_else(missing)?;
    let cert = text(c)?.ok_or_else(missing)?;
    let extra = text(b)?;
    let names = PemNames {
        key: where_(k),
        cert: where_(c),
        bundle: where_(b),
    };
    Ca::from_pem(
        &key,
        &cert,
        extra.as_deref(),
        &names,
        trust_domain,
        default_ttl,
        max_ttl,
    )
}

/// A Secret carrying a new root for `trust_domain`.
pub fn new_secret(namespace: &str, name: &str, trust_domain: &str) -> Result<Secret, CaError> {
    let (key, cert) = Ca::generate_root(trust_domain)?;
    Ok(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "weft-control-plane".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (KEY.to_string(), ByteString(key.into_bytes())),
            (CERT.to_string(), ByteString(cert.into_bytes())),
        ])),
        ..Default::default()
    })
}

/// Reads the CA's Secret, creating it first with `create` when it does not exist.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
    create: bool,
    trust_domain: &str,
    default_ttl: Duration,
    max_ttl: Duration,
) -> Result<Ca, CaError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let api_err = |e: kube::Error| file_err(format!("Secret {namespace}/{name}"), e);
    let secret = match api.get_opt(name).await.map_err(api_err)? {
        Some(s) => s,
        None if !create => {
            return Err(CaError::Missing {
                key: format!("Secret {namespace}/{name} key {KEY}"),
                cert: format!("Secret {namespace}/{name} key {CERT}"),
            });
        }
        None => match api
            .create(
                &PostParams::default(),
                &new_secret(namespace, name, trust_domain)?,
            )
            .await
        {
            Ok(s) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), "created a new mesh root CA");
                s
            }
            // Another replica created it first: use theirs.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                api.get(name).await.map_err(api_err)?
            }
            Err(e) => return Err(api_err(e)),
        },
    };
    from_secret(&secret, trust_domain, default_ttl, max_ttl)
}
