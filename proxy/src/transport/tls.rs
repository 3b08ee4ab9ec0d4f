//! Mutual TLS between sidecars (rustls, ring): the credentials this proxy presents, swapped in
//! place on rotation, and the checks on a peer.
//!
//! - Both sides present the workload certificate from [`Credentials`]; a new one is stored with
//!   one atomic swap, so established connections keep theirs and new handshakes use it.
//! - A client verifies the server's chain against the mesh trust bundle and then that its URI
//!   SAN is the SPIFFE id the control plane expects for that endpoint; any other identity fails
//!   the handshake, before a byte of the request is sent. There is no DNS name to check: mesh
//!   certificates carry only the SPIFFE id.
//! - A server requires a client certificate chaining to the bundle; the peer's SPIFFE id is then
//!   read from it for authorization, metrics and the application header.
//! - TLS 1.3 only, ALPN `h2` (sidecar-to-sidecar traffic is always HTTP/2 or opaque).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};

/// ALPN between sidecars.
pub const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This workload's certificate and key, as rustls presents them; empty until the first
/// certificate arrives.
#[derive(Debug, Default)]
pub struct Credentials {
    current: ArcSwapOption<CertifiedKey>,
}

impl Credentials {
    /// Swaps in a new certificate chain (leaf first) and its key (PKCS#8 DER).
    pub fn store(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        let key = provider().key_provider.load_private_key(key)?;
        self.current
            .store(Some(Arc::new(CertifiedKey::new(chain, key))));
        Ok(())
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

/// The SPIFFE ids (URI SANs starting `spiffe://`) of a certificate.
pub fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, c)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                Some(u.to_string())
            }
            _ => None,
        })
        .collect()
}

/// The identity a connected peer proved: the SPIFFE id of its leaf certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    let mut ids = spiffe_ids(leaf);
    (ids.len() == 1).then(|| ids.remove(0))
}

/// Verifies a server's chain against the bundle, then that it is `expected`.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("bad server certificate: {e}")))?;
        cert.verify_for_usage(
            self.algs.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        let ids = spiffe_ids(end_entity);
        if ids.len() == 1 && ids[0] == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's identity is {}, not the expected {}",
                if ids.is_empty() {
                    "missing".to_string()
                } else {
                    ids.join(", ")
                },
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The trust bundle: the CA certificates peers must chain to.
pub fn roots(bundle: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for c in bundle {
        roots.add(c.clone())?;
    }
    Ok(Arc::new(roots))
}

/// A client configuration that presents `creds` and accepts only a server proving `expected`.
pub fn client_config(
    roots: Arc<RootCertStore>,
    creds: Arc<Credentials>,
    expected: &str,
) -> Result<ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        roots,
        expected: expected.to_string(),
        algs: provider.signature_verification_algorithms,
    };
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(creds);
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// A server configuration that presents `creds` and requires a client certificate from the
/// mesh.
pub fn server_config(
    roots: Arc<RootCertStore>,
    creds: Arc<Credentials>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(creds);
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests;
