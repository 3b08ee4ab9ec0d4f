//! Opaque TCP through the chain: echo with half-close, a server that speaks first, and an
//! application's own TLS passed through.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tests::{chain::Chain, tcp_peer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_half_close() {
    let server = tcp_peer::echo_server(false).await;
    let chain = Chain::start(server);
    let s = tokio::net::TcpStream::connect(chain.tcp_listener())
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    // Binary that is no protocol B could mistake for HTTP.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            // Half-close: we are done sending but still reading.
            w.shutdown().await.unwrap();
            w
        })
    };
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .expect("echo finishes and the server's close reaches us")
        .unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data);
    drop(writer.await.unwrap());
    assert!(
        chain
            .b
            .metric(r#"weft_protocol_detect_total{direction="inbound",protocol="opaque"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first() {
    let server = tcp_peer::echo_server(true).await;
    let chain = Chain::start(server);
    let mut s = tokio::net::TcpStream::connect(chain.tcp_listener())
        .await
        .unwrap();
    let mut banner = vec![0u8; tcp_peer::BANNER.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut banner))
        .await
        .expect("the banner arrives though the client sent nothing")
        .unwrap();
    assert_eq!(banner, tcp_peer::BANNER);
    s.write_all(b"HELO weft\r\n").await.unwrap();
    let mut echo = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"HELO weft\r\n");
}

/// An application's own TLS (a ClientHello first) passes through untouched: B's inbound side
/// detects TLS and, with no mesh identity of its own, forwards the bytes as they are; the
/// handshake, certificate check and data are end to end between a rustls client and server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_tls_passes_through_as_opaque() {
    use std::sync::Arc;
    use tokio_rustls::rustls::{self, pki_types};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let app = rcgen::generate_simple_self_signed(vec!["app.test".into()]).unwrap();
    let cert = app.cert.der().clone();
    let key = pki_types::PrivateKeyDer::try_from(app.signing_key.serialize_der()).unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut line = [0u8; 5];
        tls.read_exact(&mut line).await.unwrap();
        tls.write_all(b"secret reply to ").await.unwrap();
        tls.write_all(&line).await.unwrap();
        tls.shutdown().await.unwrap();
    });

    let chain = Chain::start(server);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(chain.tcp_listener())
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
        .connect(pki_types::ServerName::try_from("app.test").unwrap(), tcp)
        .await
        .expect("the TLS handshake through the chain");
    tls.write_all(b"hello").await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut back))
        .await
        .expect("the reply and the server's close within 10 s")
        .unwrap();
    assert_eq!(back, b"secret reply to hello");
    assert_eq!(
        chain
            .b
            .metric(r#"weft_protocol_detect_total{direction="inbound",protocol="tls"}"#)
            .await,
        1.0
    );
}
