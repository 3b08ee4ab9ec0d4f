//! This workload's identity: a private key made in this process (ECDSA P-256) that never leaves
//! it, a certificate for `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` from the
//! mesh CA, and the trust bundle that came with it.
//!
//! The certificate is renewed at 70 % of its lifetime with a new key. A failed renewal is
//! retried with exponential backoff and full jitter while the certificate in hand stays in use;
//! the new one is swapped in atomically ([`Credentials`]), so established connections are not
//! touched.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;
use weft_xds_proto::ca::v1::{
    CreateCertificateRequest, certificate_service_client::CertificateServiceClient,
};

use crate::transport::tls::Credentials;

/// Where certificates come from and for which identity.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The CA's gRPC address (`http://host:port`).
    pub ca: String,
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
}

fn pem_certs(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for p in pems {
        for block in pem::parse_many(p).map_err(|e| e.to_string())? {
            if block.tag() != "CERTIFICATE" {
                return Err(format!(
                    "a {} where a CERTIFICATE was expected",
                    block.tag()
                ));
            }
            out.push(CertificateDer::from(block.contents().to_vec()));
        }
    }
    if out.is_empty() {
        return Err("no certificate".into());
    }
    Ok(out)
}

fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let secs = c.validity().not_after.timestamp().max(0) as u64;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Asks the CA for a certificate for a new key; stores both. Returns the certificate's expiry.
pub async fn fetch(cfg: &IdentityConfig, id: &Identity) -> Result<SystemTime, String> {
    let token = tokio::fs::read_to_string(&cfg.token_file)
        .await
        .map_err(|e| format!("bootstrap token {}: {e}", cfg.token_file.display()))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.subject_alt_names =
        vec![SanType::URI(cfg.spiffe_id.as_str().try_into().map_err(
            |e: rcgen::Error| format!("`{}`: {e}", cfg.spiffe_id),
        )?)];
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| e.to_string())?;
    let mut client = CertificateServiceClient::connect(cfg.ca.clone())
        .await
        .map_err(|e| format!("cannot reach the CA at {}: {e}", cfg.ca))?;
    let mut req = tonic::Request::new(CreateCertificateRequest {
        csr,
        validity_seconds: cfg.lifetime.as_secs() as i64,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| "the bootstrap token is not a valid header value".to_string())?,
    );
    req.set_timeout(Duration::from_secs(10));
    let rsp = client
        .create_certificate(req)
        .await
        .map_err(|s| format!("the CA refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let chain = pem_certs(&rsp.cert_chain)?;
    let bundle = pem_certs(&rsp.trust_bundle)?;
    let expires = not_after(&chain[0])?;
    id.credentials
        .store(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| e.to_string())?;
    id.bundle.store(Arc::new(bundle));
    let secs = expires
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    id.expires.store(secs, Ordering::Release);
    Ok(expires)
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
                left.mul_f64(0.7)
            }
            Err(e) => {
                id.failures.fetch_add(1, Ordering::Relaxed);
                let ceiling = cfg
                    .backoff_base
                    .saturating_mul(1u32 << failures.min(16))
                    .min(cfg.backoff_max);
                failures += 1;
                let mut wait = ceiling.mul_f64(fastrand::f64());
                if let Some(left) = id
                    .expires()
                    .and_then(|e| e.duration_since(SystemTime::now()).ok())
                {
                    wait = wait.min(left / 2);
                }
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
