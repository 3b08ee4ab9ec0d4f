//! This workload's identity: a private key made in this process (ECDSA P-256) that never leaves
//! it, a certificate for `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` from the
//! mesh CA, and the trust bundle that came with it.
//!
//! The certificate is renewed at 70 % of its lifetime with a new key. A failed renewal is
//! retried with exponential backoff and full jitter while the certificate in hand stays in use;
//! the new one is swapped in atomically ([`Credentials`]), so established connections are not
//! touched.
//!
//! Alternatively ([`watch_files`]) the certificate, key and bundle are files that something else
//! writes (cert-manager, SPIRE's helper); they are read again when they change, and a set that
//! does not load keeps the one in force.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};
use tokio_util::sync::CancellationToken;
use weft_xds_proto::ca::v1::{
    CreateCertificateRequest, certificate_service_client::CertificateServiceClient,
};

mod mtls;

pub use mtls::Mtls;

use crate::{
    tls::{self, Credentials},
    transport,
};

/// Why a certificate could not be had or put in force. Each says where the problem is (the
/// CA, a file, the certificate); the certificate in force, if any, stays.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The bootstrap token could not be read.
    #[error("bootstrap token {}: {source}", path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    /// No connection to the CA.
    #[error("cannot reach the CA: {0}")]
    Unreachable(String),
    /// The CA answered with an error.
    #[error("the CA refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    /// One of `--identity files`' files is unreadable or unusable.
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    /// What the CA sent, or what this proxy made, cannot be used: the reason.
    #[error("{0}")]
    Unusable(String),
    /// The CA's certificates are not PEM certificates.
    #[error("{0}")]
    Pem(#[from] tls::PemError),
}

/// Where certificates come from and for which identity.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The CA's gRPC address (`https://host:port`, or `http://` for local development).
    pub ca: String,
    /// How an `https` CA is verified.
    pub tls: Option<Arc<ClientConfig>>,
    /// The bootstrap token, read again before every request (so a rotated token is picked up).
    pub token_file: PathBuf,
    pub spiffe_id: String,
    /// The lifetime asked for; the CA may shorten it.
    pub lifetime: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// The identity in force, shared with the TLS configs and the admin server.
#[derive(Debug, Default)]
pub struct Identity {
    pub credentials: Arc<Credentials>,
    pub bundle: ArcSwap<Vec<CertificateDer<'static>>>,
    /// The bundle as rustls verifies against it; a new value whenever the bundle changes.
    roots: ArcSwapOption<RootCertStore>,
    /// The SPIFFE id of the certificate in hand.
    id: ArcSwapOption<String>,
    /// Unix seconds; 0 before the first certificate.
    expires: AtomicU64,
    pub renewals: AtomicU64,
    pub failures: AtomicU64,
}

impl Identity {
    /// When the certificate in hand expires, if there is one.
    pub fn expires(&self) -> Option<SystemTime> {
        match self.expires.load(Ordering::Acquire) {
            0 => None,
            s => Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
        }
    }

    /// A certificate is held and has not expired.
    pub fn valid(&self) -> bool {
        self.expires().is_some_and(|e| e > SystemTime::now())
    }

    /// What `/config_dump` shows: the identity, expiry, renewals, and the bundle's subjects.
    pub fn describe(&self) -> serde_json::Value {
        let expires = self
            .expires()
            .and_then(|e| e.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let bundle: Vec<String> = self
            .bundle
            .load()
            .iter()
            .filter_map(|c| {
                let (_, c) = x509_parser::parse_x509_certificate(c).ok()?;
                Some(c.subject().to_string())
            })
            .collect();
        serde_json::json!({
            "spiffe_id": self.spiffe_id().as_deref(),
            "valid": self.valid(),
            "expires_unix": expires,
            "renewals": self.renewals.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "trust_bundle": bundle,
        })
    }

    /// The trust bundle to verify peers against, once there is one.
    pub fn roots(&self) -> Option<Arc<RootCertStore>> {
        self.roots.load_full()
    }

    /// The SPIFFE id of the certificate in hand.
    pub fn spiffe_id(&self) -> Option<Arc<String>> {
        self.id.load_full()
    }

    /// Puts a certificate chain (leaf first), its key and the trust bundle in force; returns
    /// when the certificate expires. Nothing changes if any part is unusable.
    pub fn store(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Result<SystemTime, String> {
        let leaf = chain.first().ok_or("the certificate chain is empty")?;
        let (valid_from, expires) = validity(leaf)?;
        let now = SystemTime::now();
        if expires <= now {
            return Err("the certificate has expired".into());
        }
        // A little clock skew is tolerated; a certificate from the future is not used.
        if valid_from > now + Duration::from_secs(300) {
            return Err("the certificate is not valid yet".into());
        }
        let id = tls::peer_identity(Some(&chain[..1]))
            .ok_or("the certificate does not carry exactly one SPIFFE id (URI SAN)")?;
        let roots = tls::roots(&bundle).map_err(|e| format!("trust bundle: {e}"))?;
        let same_bundle = **self.bundle.load() == bundle;
        self.credentials
            .store(chain, key)
            .map_err(|e| format!("private key: {e}"))?;
        if !same_bundle || self.roots.load().is_none() {
            self.roots.store(Some(roots));
            self.bundle.store(Arc::new(bundle));
        }
        self.id.store(Some(Arc::new(id)));
        let secs = expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.expires.store(secs, Ordering::Release);
        Ok(expires)
    }
}

fn pem_certs(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, tls::PemError> {
    let mut out = Vec::new();
    for p in pems {
        out.extend(tls::pem_certs(p)?);
    }
    Ok(out)
}

/// When a certificate becomes valid and when it expires.
fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((
        at(c.validity().not_before.timestamp()),
        at(c.validity().not_after.timestamp()),
    ))
}

/// Asks the CA for a certificate for a new key; stores both. Returns the certificate's expiry.
pub async fn fetch(cfg: &IdentityConfig, id: &Identity) -> Result<SystemTime, IdentityError> {
    let token = tokio::fs::read_to_string(&cfg.token_file)
        .await
        .map_err(|source| IdentityError::Token {
            path: cfg.token_file.clone(),
            source,
        })?;
    let unusable = |e: String| IdentityError::Unusable(e);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| unusable(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names =
        vec![SanType::URI(cfg.spiffe_id.as_str().try_into().map_err(
            |e: rcgen::Error| unusable(format!("`{}`: {e}", cfg.spiffe_id)),
        )?)];
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| unusable(e.to_string()))?;
    let channel = transport::grpc_channel(&cfg.ca, cfg.tls.clone())
        .await
        .map_err(IdentityError::Unreachable)?;
    let mut client = CertificateServiceClient::new(channel);
    let mut req = tonic::Request::new(CreateCertificateRequest {
        csr,
        validity_seconds: cfg.lifetime.as_secs() as i64,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| unusable("the bootstrap token is not a valid header value".into()))?,
    );
    req.set_timeout(Duration::from_secs(10));
    let rsp = client
        .create_certificate(req)
        .await
        .map_err(|s| IdentityError::Refused {
            code: s.code(),
            message: s.message().to_string(),
        })?
        .into_inner();
    let chain = pem_certs(&rsp.cert_chain)?;
    let bundle = pem_certs(&rsp.trust_bundle)?;
    id.store(
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        bundle,
    )
    .map_err(unusable)
}

/// The files of `--identity files`.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

impl IdentityFiles {
    fn read(&self) -> Result<(String, String, String), IdentityError> {
        let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| file(p, e));
        Ok((read(&self.cert)?, read(&self.key)?, read(&self.bundle)?))
    }

    /// Loads the three files into `id`; errors name the file.
    pub fn load(&self, id: &Identity) -> Result<SystemTime, IdentityError> {
        let (cert, key, bundle) = self.read()?;
        self.load_texts(id, &cert, &key, &bundle)
    }

    fn load_texts(
        &self,
        id: &Identity,
        cert: &str,
        key: &str,
        bundle: &str,
    ) -> Result<SystemTime, IdentityError> {
        let chain = tls::pem_certs(cert).map_err(|e| file(&self.cert, e))?;
        let bundle = tls::pem_certs(bundle).map_err(|e| file(&self.bundle, e))?;
        let key = private_key(key).map_err(|e| file(&self.key, e))?;
        id.store(chain, key, bundle)
            .map_err(|e| file(&self.cert, e))
    }
}

/// An error of one of `--identity files`' files.
fn file(path: &std::path::Path, e: impl std::fmt::Display) -> IdentityError {
    IdentityError::File {
        file: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A PEM private key: PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
fn private_key(text: &str) -> Result<PrivateKeyDer<'static>, String> {
    for block in pem::parse_many(text).map_err(|e| e.to_string())? {
        match block.tag() {
            "PRIVATE KEY" => {
                return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    block.into_contents(),
                )));
            }
            "EC PRIVATE KEY" => {
                return Ok(PrivateKeyDer::Sec1(block.into_contents().into()));
            }
            "RSA PRIVATE KEY" => {
                return Ok(PrivateKeyDer::Pkcs1(block.into_contents().into()));
            }
            _ => {}
        }
    }
    Err("no PRIVATE KEY block".into())
}

/// Loads the files whenever their content changes, until `stop`. A set that does not load is
/// logged and counted, and the identity in force stays.
pub async fn watch_files(
    files: IdentityFiles,
    id: Arc<Identity>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut last = files.read().ok();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = match files.read() {
            Ok(t) => t,
            Err(e) => {
                id.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "identity files unreadable; keeping the certificate in force");
                continue;
            }
        };
        if last.as_ref() == Some(&now) {
            continue;
        }
        match files.load_texts(&id, &now.0, &now.1, &now.2) {
            Ok(expires) => {
                id.renewals.fetch_add(1, Ordering::Relaxed);
                tracing::info!(expires = ?expires, identity = ?id.spiffe_id(), "identity files reloaded");
            }
            Err(e) => {
                // A writer may be between files: the next change is tried again.
                id.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "identity files do not load; keeping the certificate in force");
            }
        }
        last = Some(now);
    }
}

/// Keeps a valid certificate until `stop`: fetches one, renews at 70 % of its lifetime, retries
/// failures with backoff (never waiting past the expiry of the one in hand).
pub async fn run(cfg: IdentityConfig, id: Arc<Identity>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let wait = match fetch(&cfg, &id).await {
            Ok(expires) => {
                failures = 0;
                id.renewals.fetch_add(1, Ordering::Relaxed);
                let left = expires
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::info!(identity = %cfg.spiffe_id, valid_for = ?left, "certificate obtained");
                // Never sooner than a second: a CA granting almost nothing is not asked in a
                // tight loop.
                left.mul_f64(0.7).max(Duration::from_secs(1))
            }
            Err(e) => {
                id.failures.fetch_add(1, Ordering::Relaxed);
                let mut wait = weft_core::backoff::full_jitter(
                    cfg.backoff_base,
                    cfg.backoff_max,
                    failures,
                    fastrand::f64(),
                );
                failures += 1;
                if let Some(left) = id
                    .expires()
                    .and_then(|e| e.duration_since(SystemTime::now()).ok())
                {
                    wait = wait.min(left / 2);
                }
                let wait = wait.max(Duration::from_millis(100));
                tracing::warn!(identity = %cfg.spiffe_id, error = %e, retry_in = ?wait, still_valid = id.valid(), "certificate renewal failed");
                wait
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa, Issuer};

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

    /// A leaf for `ID` valid from `from` to `until` seconds from now, its key, and its CA.
    fn issued(
        from: i64,
        until: i64,
    ) -> (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        Vec<CertificateDer<'static>>,
    ) {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::seconds(from);
        p.not_after = now + time::Duration::seconds(until);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            vec![ca_cert.der().clone()],
        )
    }

    #[test]
    fn only_a_certificate_valid_now_is_put_in_force() {
        let id = Identity::default();
        let (c, k, b) = issued(-60, 3600);
        let expires = id.store(c, k, b).unwrap();
        assert!(id.valid());
        assert_eq!(id.spiffe_id().as_deref().map(String::as_str), Some(ID));

        let (c, k, b) = issued(-7200, -3600);
        assert_eq!(
            id.store(c, k, b).unwrap_err(),
            "the certificate has expired"
        );
        let (c, k, b) = issued(3600, 7200);
        assert_eq!(
            id.store(c, k, b).unwrap_err(),
            "the certificate is not valid yet"
        );
        assert_eq!(id.expires(), Some(expires), "the valid one stays in force");
        // A key that is not the certificate's.
        let (c, _, b) = issued(-60, 3600);
        let (_, other, _) = issued(-60, 3600);
        assert!(
            id.store(c, other, b)
                .unwrap_err()
                .starts_with("private key")
        );
        assert_eq!(id.expires(), Some(expires));
    }
}
