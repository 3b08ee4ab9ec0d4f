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
//! - TLS 1.3 only. A sidecar always offers ALPN `weft/1`, which marks the connection as mesh
//!   TLS (a PERMISSIVE inbound passes any other TLS through to the application untouched),
//!   before it the protocol that follows: `h2` for HTTP (HTTP/1.1 is carried over HTTP/2
//!   between sidecars), `http/1.1` for upgrades (WebSocket), nothing more for opaque TCP.

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
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Offered by every sidecar client; chosen by the server when nothing else is (opaque TCP).
pub const ALPN_MESH: &[u8] = b"weft/1";

/// What a mesh connection carries, as ALPN tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    H2,
    Http1,
    Opaque,
}

impl Alpn {
    fn offer(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::H2 => vec![ALPN_H2.to_vec(), ALPN_MESH.to_vec()],
            Alpn::Http1 => vec![ALPN_HTTP1.to_vec(), ALPN_MESH.to_vec()],
            Alpn::Opaque => vec![ALPN_MESH.to_vec()],
        }
    }

    /// What the server side negotiated.
    pub fn negotiated(p: Option<&[u8]>) -> Alpn {
        match p {
            Some(ALPN_H2) => Alpn::H2,
            Some(ALPN_HTTP1) => Alpn::Http1,
            _ => Alpn::Opaque,
        }
    }
}

/// A server's certificate does not name the identity expected of it.
#[derive(Debug)]
pub struct IdentityMismatch {
    pub expected: String,
    pub presented: Vec<String>,
}

impl std::fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let presented = if self.presented.is_empty() {
            "missing".to_string()
        } else {
            self.presented.join(", ")
        };
        write!(
            f,
            "the server's identity is {presented}, not the expected {}",
            self.expected
        )
    }
}

impl std::error::Error for IdentityMismatch {}

/// The `result` label of `weft_tls_handshakes_total` for a failed handshake.
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    let Some(e) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return if e.kind() == std::io::ErrorKind::TimedOut {
            "timeout"
        } else {
            "io"
        };
    };
    match e {
        rustls::Error::NoCertificatesPresented => "no_client_cert",
        rustls::Error::InvalidCertificate(C::Other(o))
            if o.0.downcast_ref::<IdentityMismatch>().is_some() =>
        {
            "identity_mismatch"
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => "untrusted",
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::NoApplicationProtocol => "no_alpn",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "error",
    }
}

/// A failed handshake in words: an identity mismatch says which identities, the rest as rustls
/// puts them.
pub fn describe(e: &std::io::Error) -> String {
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) =
        e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
        && let Some(m) = o.0.downcast_ref::<IdentityMismatch>()
    {
        return m.to_string();
    }
    e.to_string()
}

/// What the first bytes of a TLS connection say about who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// A sidecar (it offers `weft/1`).
    Mesh,
    /// Some other TLS client, talking to the application itself.
    Foreign,
    /// The ClientHello is not complete yet.
    Incomplete,
}

/// Reads the ClientHello in `buf` (nothing is answered).
pub fn client_hello(buf: &[u8]) -> Hello {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Hello::Foreign,
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let mesh = accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ALPN_MESH));
            if mesh { Hello::Mesh } else { Hello::Foreign }
        }
        Ok(None) => Hello::Incomplete,
        Err(_) => Hello::Foreign,
    }
}

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
        let certified = CertifiedKey::new(chain, key);
        // A key that is not the certificate's would fail every handshake: refuse it here.
        certified.keys_match()?;
        self.current.store(Some(Arc::new(certified)));
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
            use rustls::CertificateError as C;
            rustls::Error::InvalidCertificate(match e {
                webpki::Error::UnknownIssuer => C::UnknownIssuer,
                webpki::Error::CertExpired { .. } => C::Expired,
                webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
                webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
                e => C::Other(rustls::OtherError(Arc::new(e))),
            })
        })?;
        let ids = spiffe_ids(end_entity);
        if ids.len() == 1 && ids[0] == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(IdentityMismatch {
                    expected: self.expected.clone(),
                    presented: ids,
                }))),
            ))
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
    client_config_for(roots, creds, expected, Alpn::H2)
}

pub(crate) fn client_config_for(
    roots: Arc<RootCertStore>,
    creds: Arc<Credentials>,
    expected: &str,
    alpn: Alpn,
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
    cfg.alpn_protocols = alpn.offer();
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
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_MESH.to_vec()];
    Ok(cfg)
}

/// A client configuration for the control plane's TLS port: the server's chain verified
/// against `roots` and its name against the host dialled, as for any HTTPS server.
pub fn control_plane_config(roots: Arc<RootCertStore>) -> ClientConfig {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg
}

/// Why PEM text gave no certificates.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    In {
        path: std::path::PathBuf,
        source: Box<PemError>,
    },
    #[error("{0}")]
    Syntax(#[from] pem::PemError),
    #[error("a {0} where a CERTIFICATE was expected")]
    NotCertificate(String),
    #[error("no certificate")]
    Empty,
}

/// Reads a PEM file of certificates; errors name the file.
pub fn load_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let text = std::fs::read_to_string(path).map_err(|source| PemError::Read {
        path: path.into(),
        source,
    })?;
    pem_certs(&text).map_err(|e| PemError::In {
        path: path.into(),
        source: Box::new(e),
    })
}

/// The certificates in a PEM text, in order.
pub fn pem_certs(text: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let mut out = Vec::new();
    for block in pem::parse_many(text)? {
        if block.tag() != "CERTIFICATE" {
            return Err(PemError::NotCertificate(block.tag().to_string()));
        }
        out.push(CertificateDer::from(block.into_contents()));
    }
    if out.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
