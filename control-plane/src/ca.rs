//! The mesh CA: a root (or intermediate) key and certificate, and the signing of workload
//! certificates for SPIFFE identities.
//!
//! - The CA's key and certificate are PEM files (`ca.key`, `ca.crt`) in a directory. With
//!   `create`, a missing pair is generated on first start (ECDSA P-256, a self-signed root valid
//!   for ten years) and persisted, the key readable by its owner only; without it, missing files
//!   stop the start with their names.
//! - `ca.crt` may be an intermediate: the signing certificate first, then the certificates
//!   that issued it. Issued chains carry the intermediates; the trust bundle is the self-signed
//!   certificates of `ca.crt` plus an optional `bundle.crt` (more trust anchors: the root of an
//!   intermediate kept offline, or the other root while roots are rotated).
//! - A workload sends a PKCS#10 CSR; the CA checks the CSR's signature, that it asks for
//!   exactly one URI SAN and that this is the identity the caller proved, and issues a
//!   certificate of its own making: that SAN only, not a CA, digital signature, client and server
//!   auth, valid from a minute ago (clock skew) for the requested lifetime, capped by the CA's
//!   maximum and by the CA certificate's own expiry. Nothing else in the CSR is copied.

pub mod limit;
mod secret;
mod service;

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

pub use secret::{from_secret, load_or_create as load_or_create_secret, new_secret};
pub use service::{BootstrapTokens, CaService, TokenReviewer};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA files {key} and {cert} do not exist (create them, or start with --ca-create)")]
    Missing { key: String, cert: String },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("the CSR is not valid: {0}")]
    BadCsr(String),
    #[error("the CSR asks for {asked}, but the caller may only have {allowed}")]
    WrongIdentity { asked: String, allowed: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// What the CA's PEM texts are called in errors: file paths, or a Secret's keys.
#[derive(Debug, Clone)]
pub struct PemNames {
    pub key: String,
    pub cert: String,
    pub bundle: String,
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The intermediates that go with every issued certificate, PEM (empty for a root CA).
    intermediates: Vec<String>,
    /// The trust anchors, PEM.
    bundle: Vec<String>,
    /// When the CA certificate itself expires: no workload certificate outlives it.
    ca_not_after: OffsetDateTime,
    pub trust_domain: String,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

/// An error about one of the CA's texts: a file, or a Secret's key.
pub(crate) fn file_err(path: impl std::fmt::Display, e: impl std::fmt::Display) -> CaError {
    CaError::File {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// A serial number from the operating system's CSPRNG (positive, 16 bytes: 120 random bits,
/// more than the 64 CA/B rules ask): nobody can predict the serial of a certificate before it
/// is issued.
fn serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| CaError::Sign("the system's random number generator failed".into()))?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok(SerialNumber::from_slice(&b))
}

impl Ca {
    /// Loads `dir/ca.key` and `dir/ca.crt`, or with `create` makes and saves them when both
    /// are missing.
    pub fn load_or_create(
        dir: &Path,
        create: bool,
        trust_domain: &str,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<Ca, CaError> {
        let (key_path, cert_path): (PathBuf, PathBuf) = (dir.join("ca.key"), dir.join("ca.crt"));
        if !key_path.exists() && !cert_path.exists() {
            if !create {
                return Err(CaError::Missing {
                    key: key_path.display().to_string(),
                    cert: cert_path.display().to_string(),
                });
            }
            Self::create(dir, &key_path, &cert_path, trust_domain)?;
        }
        let key_pem =
            std::fs::read_to_string(&key_path).map_err(|e| file_err(key_path.display(), e))?;
        let cert_text =
            std::fs::read_to_string(&cert_path).map_err(|e| file_err(cert_path.display(), e))?;
        let extra_path = dir.join("bundle.crt");
        let extra = if extra_path.exists() {
            Some(
                std::fs::read_to_string(&extra_path)
                    .map_err(|e| file_err(extra_path.display(), e))?,
            )
        } else {
            None
        };
        let names = PemNames {
            key: key_path.display().to_string(),
            cert: cert_path.display().to_string(),
            bundle: extra_path.display().to_string(),
        };
        Self::from_pem(
            &key_pem,
            &cert_text,
            extra.as_deref(),
            &names,
            trust_domain,
            default_ttl,
            max_ttl,
        )
    }

    /// The CA from its PEM texts: the key, the certificate chain (signing certificate first)
    /// and optionally more trust anchors. Errors name the texts by `names`.
    pub fn from_pem(
        key_pem: &str,
        cert_text: &str,
        extra: Option<&str>,
        names: &PemNames,
        trust_domain: &str,
        default_ttl: Duration,
        max_ttl: Duration,
    ) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| file_err(&names.key, e))?;
        let chain = certs(cert_text).map_err(|e| file_err(&names.cert, e))?;
        let (signing_der, signing_pem) = &chain[0];
        let (_, signing) = x509_parser::parse_x509_certificate(signing_der)
            .map_err(|e| file_err(&names.cert, e))?;
        if signing.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(file_err(
                &names.key,
                format!(
                    "this key does not belong to the first certificate of {}",
                    names.cert
                ),
            ));
        }
        let ca_not_after = signing.validity().not_after.to_datetime();
        let issuer =
            Issuer::from_ca_cert_pem(signing_pem, key).map_err(|e| file_err(&names.cert, e))?;
        let mut intermediates = Vec::new();
        let mut bundle = Vec::new();
        for (der, pem) in &chain {
            let (_, c) =
                x509_parser::parse_x509_certificate(der).map_err(|e| file_err(&names.cert, e))?;
            if c.subject() == c.issuer() {
                bundle.push(pem.clone());
            } else {
                intermediates.push(pem.clone());
            }
        }
        if let Some(text) = extra {
            for (_, pem) in certs(text).map_err(|e| file_err(&names.bundle, e))? {
                if !bundle.contains(&pem) {
                    bundle.push(pem);
                }
            }
        }
        if bundle.is_empty() {
            return Err(file_err(
                &names.cert,
                format!(
                    "no trust anchor: the chain ends in no self-signed root; put the root in {}",
                    names.bundle
                ),
            ));
        }
        Ok(Ca {
            issuer,
            intermediates,
            bundle,
            ca_not_after,
            trust_domain: trust_domain.to_string(),
            default_ttl,
            max_ttl,
        })
    }

    /// A new self-signed root for `trust_domain` (ECDSA P-256, ten years): key and
    /// certificate, PEM.
    pub fn generate_root(trust_domain: &str) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "weft");
        dn.push(
            DnType::CommonName,
            format!("weft mesh root CA ({trust_domain})"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
        )];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((key.serialize_pem(), cert.pem()))
    }

    fn create(
        dir: &Path,
        key_path: &Path,
        cert_path: &Path,
        trust_domain: &str,
    ) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir.display(), e))?;
        let (key, cert) = Self::generate_root(trust_domain)?;
        write_private(key_path, &key)?;
        std::fs::write(cert_path, cert).map_err(|e| file_err(cert_path.display(), e))?;
        tracing::info!(cert = %cert_path.display(), "created a new mesh root CA");
        Ok(())
    }

    /// An expired CA signs nothing (what it signed would be born expired).
    fn check_not_expired(&self, now: OffsetDateTime) -> Result<(), CaError> {
        if self.ca_not_after <= now + time::Duration::minutes(1) {
            return Err(CaError::Sign(format!(
                "the CA certificate expires at {}: nothing can be signed with it any more (rotate the CA)",
                self.ca_not_after
            )));
        }
        Ok(())
    }

    /// The trust anchors workloads verify peers against, PEM.
    pub fn trust_bundle(&self) -> Vec<String> {
        self.bundle.clone()
    }

    /// Signs `csr_pem` for `identity` (what the caller proved); returns the certificate chain
    /// (leaf, PEM) and when it expires.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &str,
        ttl: Option<Duration>,
    ) -> Result<(Vec<String>, SystemTime), CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str().to_string()),
                _ => None,
            })
            .collect();
        match &uris[..] {
            [one] if one == identity => {}
            [one] => {
                return Err(CaError::WrongIdentity {
                    asked: one.clone(),
                    allowed: identity.to_string(),
                });
            }
            _ => {
                return Err(CaError::BadCsr(format!(
                    "it must ask for exactly one URI SAN (the SPIFFE id), not {}",
                    uris.len()
                )));
            }
        }
        let ttl = ttl
            .filter(|t| !t.is_zero())
            .unwrap_or(self.default_ttl)
            .min(self.max_ttl);
        let now = OffsetDateTime::now_utc();
        self.check_not_expired(now)?;
        let not_after = (now
            + time::Duration::try_from(ttl).map_err(|e| CaError::Sign(e.to_string()))?)
        .min(self.ca_not_after);
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            identity
                .try_into()
                .map_err(|e: rcgen::Error| CaError::BadCsr(e.to_string()))?,
        )];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = not_after;
        params.serial_number = Some(serial()?);
        params.use_authority_key_identifier_extension = true;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| CaError::Sign(e.to_string()))?;
        let expires =
            SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.unix_timestamp().max(0) as u64);
        let mut chain = vec![signed.pem()];
        chain.extend(self.intermediates.iter().cloned());
        Ok((chain, expires))
    }
}

/// A certificate and its key for one of the control plane's own servers.
pub struct ServerCert {
    /// Leaf first, then any intermediates, PEM.
    pub chain_pem: String,
    /// PKCS#8 DER.
    pub key_der: Vec<u8>,
    pub expires: SystemTime,
}

impl Ca {
    /// When the CA certificate expires (`weftctl check` warns ahead of it).
    pub fn not_after(&self) -> std::time::SystemTime {
        self.ca_not_after.into()
    }

    /// Issues the control plane a server certificate for `names` (DNS names or IP addresses)
    /// and `identity` (its SPIFFE id), with a key made here, valid for the default lifetime.
    pub fn issue_server(&self, names: &[String], identity: &str) -> Result<ServerCert, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut sans = Vec::new();
        for n in names {
            sans.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    n.as_str()
                        .try_into()
                        .map_err(|e: rcgen::Error| CaError::Sign(format!("`{n}`: {e}")))?,
                ),
            });
        }
        sans.push(SanType::URI(identity.try_into().map_err(
            |e: rcgen::Error| CaError::Sign(format!("`{identity}`: {e}")),
        )?));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        self.check_not_expired(now)?;
        let not_after = (now
            + time::Duration::try_from(self.default_ttl)
                .map_err(|e| CaError::Sign(e.to_string()))?)
        .min(self.ca_not_after);
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = not_after;
        params.serial_number = Some(serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(ServerCert {
            chain_pem: std::iter::once(cert.pem())
                .chain(self.intermediates.iter().cloned())
                .collect(),
            key_der: key.serialize_der(),
            expires: SystemTime::UNIX_EPOCH
                + Duration::from_secs(not_after.unix_timestamp().max(0) as u64),
        })
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> Result<(), CaError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path.display(), e))?;
    f.write_all(pem.as_bytes())
        .map_err(|e| file_err(path.display(), e))
}

/// The certificates of a PEM text, each as DER and as PEM, in order.
fn certs(pem_text: &str) -> Result<Vec<(Vec<u8>, String)>, String> {
    let mut out = Vec::new();
    for p in pem::parse_many(pem_text).map_err(|e| e.to_string())? {
        if p.tag() != "CERTIFICATE" {
            return Err(format!("a {} where a CERTIFICATE was expected", p.tag()));
        }
        let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        out.push((p.contents().to_vec(), pem::encode_config(&p, lf)));
    }
    if out.is_empty() {
        return Err("no certificate".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
