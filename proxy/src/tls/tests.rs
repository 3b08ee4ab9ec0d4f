//! Handshakes between real rustls peers over an in-memory pipe, with certificates from a test
//! CA made here.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn test_ca() -> TestCa {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("test CA {}", fastrand::u64(..)),
    );
    let cert = p.self_signed(&key).unwrap();
    TestCa {
        der: cert.der().clone(),
        issuer: Issuer::new(p, key),
    }
}

/// A workload certificate for `id`, valid from `from` to `until` seconds from now.
fn leaf(ca: &TestCa, id: &str, from: i64, until: i64) -> Arc<Credentials> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::seconds(from);
    p.not_after = now + time::Duration::seconds(until);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    let creds = Arc::new(Credentials::default());
    creds
        .store(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    creds
}

const A: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const B: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

/// Connects a client (`creds`, expecting `expected`) to a server (`server_creds`) and sends
/// a line; returns what the server saw (the peer identity, or the handshake error) and what
/// the client saw.
async fn exchange(
    trust: &TestCa,
    client_creds: Arc<Credentials>,
    expected: &str,
    server_creds: Arc<Credentials>,
) -> (Result<Option<String>, String>, Result<Vec<u8>, String>) {
    let roots = roots(std::slice::from_ref(&trust.der)).unwrap();
    let client = TlsConnector::from(Arc::new(
        client_config(roots.clone(), client_creds, expected).unwrap(),
    ));
    let server = TlsAcceptor::from(Arc::new(server_config(roots, server_creds).unwrap()));
    let (c, s) = tokio::io::duplex(64 * 1024);
    let srv = tokio::spawn(async move {
        let mut tls = server.accept(s).await.map_err(|e| e.to_string())?;
        let id = peer_identity(tls.get_ref().1.peer_certificates());
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"world").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(id)
    });
    let cli = async {
        let mut tls = client
            .connect(ServerName::try_from("mesh").unwrap(), c)
            .await
            .map_err(|e| format!("{} ({})", describe(&e), failure_reason(&e)))?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(out)
    }
    .await;
    let srv = tokio::time::timeout(std::time::Duration::from_secs(5), srv)
        .await
        .map(|r| r.unwrap())
        .unwrap_or_else(|_| Err("server timed out".into()));
    (srv, cli)
}

#[tokio::test]
async fn mutual_tls_proves_both_identities() {
    let ca = test_ca();
    let (srv, cli) = exchange(&ca, leaf(&ca, A, -60, 3600), B, leaf(&ca, B, -60, 3600)).await;
    assert_eq!(
        srv.unwrap().as_deref(),
        Some(A),
        "the server learns the client's id"
    );
    assert_eq!(cli.unwrap(), b"world");
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused_before_any_data() {
    let ca = test_ca();
    let other = "spiffe://cluster.local/ns/shop/sa/payments";
    let (srv, cli) = exchange(&ca, leaf(&ca, A, -60, 3600), B, leaf(&ca, other, -60, 3600)).await;
    let err = cli.unwrap_err();
    assert!(
        err.contains(&format!(
            "the server's identity is {other}, not the expected {B} (identity_mismatch)"
        )),
        "{err}"
    );
    assert!(srv.is_err(), "the server never got the request: {srv:?}");
}

#[tokio::test]
async fn certificates_from_another_ca_or_expired_or_missing_are_refused() {
    let ca = test_ca();
    let stranger = test_ca();
    // A server certificate from another CA: the client refuses it.
    let (_, cli) = exchange(
        &ca,
        leaf(&ca, A, -60, 3600),
        B,
        leaf(&stranger, B, -60, 3600),
    )
    .await;
    let err = cli.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") && err.ends_with("(untrusted)"),
        "{err}"
    );
    // A client certificate from another CA: the server refuses it.
    let (srv, _) = exchange(
        &ca,
        leaf(&stranger, A, -60, 3600),
        B,
        leaf(&ca, B, -60, 3600),
    )
    .await;
    let err = srv.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // An expired server certificate.
    let (_, cli) = exchange(&ca, leaf(&ca, A, -60, 3600), B, leaf(&ca, B, -7200, -3600)).await;
    let err = cli.unwrap_err();
    assert!(
        err.contains("Expired") && err.ends_with("(expired)"),
        "{err}"
    );
    // No client certificate at all.
    let (srv, _) = exchange(
        &ca,
        Arc::new(Credentials::default()),
        B,
        leaf(&ca, B, -60, 3600),
    )
    .await;
    let err = srv.unwrap_err();
    assert!(err.contains("peer sent no certificates"), "{err}");
}

#[tokio::test]
async fn a_rotated_certificate_is_used_by_new_handshakes() {
    let ca = test_ca();
    let server = leaf(&ca, B, -60, 3600);
    let first = server.current().unwrap().cert[0].clone();
    // Rotate: a new key and certificate for the same identity, stored in place.
    let next = leaf(&ca, B, -60, 7200).current().unwrap();
    server.current.store(Some(next.clone()));
    assert_ne!(server.current().unwrap().cert[0], first);
    let (srv, cli) = exchange(&ca, leaf(&ca, A, -60, 3600), B, server).await;
    assert_eq!(srv.unwrap().as_deref(), Some(A));
    assert_eq!(cli.unwrap(), b"world");
}

/// The first flight of a client offering `alpn`.
fn hello_bytes(alpn: Alpn) -> Vec<u8> {
    let ca = test_ca();
    let roots = roots(std::slice::from_ref(&ca.der)).unwrap();
    let cfg = client_config_for(roots, leaf(&ca, A, -60, 3600), B, alpn).unwrap();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("mesh").unwrap())
            .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn a_sidecar_is_told_from_other_tls_clients_by_its_client_hello() {
    for alpn in [Alpn::H2, Alpn::Http1, Alpn::Opaque] {
        let hello = hello_bytes(alpn);
        assert_eq!(client_hello(&hello), Hello::Mesh, "{alpn:?}");
        assert_eq!(client_hello(&hello[..hello.len() / 2]), Hello::Incomplete);
    }
    let ca = test_ca();
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(std::slice::from_ref(&ca.der)).unwrap())
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("app.example").unwrap())
            .unwrap();
    let mut browser = Vec::new();
    conn.write_tls(&mut browser).unwrap();
    assert_eq!(client_hello(&browser), Hello::Foreign);
    assert_eq!(client_hello(b"\x16\x03\x01\x00\x05hello"), Hello::Foreign);
}
