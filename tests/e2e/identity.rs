//! Workload identities from the mesh CA: the proxy's identity client (`weft_proxy::identity`)
//! against the control plane's real CA service over gRPC, with certificates of a few seconds so
//! that they rotate during the test, and mutual TLS between two such identities while they do.
//! (The proxy binary does not serve mTLS yet: this tests the pieces it will use.)

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use weft_control_plane::ca::{BootstrapTokens, Ca, CaService, spiffe_id};
use weft_proxy::{
    identity::{self, Identity, IdentityConfig},
    tls,
};
use weft_tests::{chain::TempDir, eventually};
use weft_xds_proto::ca::v1::certificate_service_server::CertificateServiceServer;

const TOKENS: &str =
    "frontend-token-0123456789 shop frontend\nreviews-token-01234567890 shop reviews\n";

/// Serves the CA on `addr` until `stop`.
async fn serve_ca(svc: CaService, addr: SocketAddr, stop: CancellationToken) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CertificateServiceServer::new(svc))
            .serve_with_incoming_shutdown(TcpListenerStream::new(l), stop.cancelled_owned()),
    );
}

fn config(dir: &TempDir, addr: SocketAddr, sa: &str, lifetime: u64) -> IdentityConfig {
    let token = dir.write(
        &format!("{sa}.token"),
        TOKENS
            .lines()
            .find(|l| l.contains(sa))
            .unwrap()
            .split(' ')
            .next()
            .unwrap(),
    );
    IdentityConfig {
        ca: format!("http://{addr}"),
        tls: None,
        token_file: token,
        spiffe_id: spiffe_id("cluster.local", "shop", sa),
        lifetime: Duration::from_secs(lifetime),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
    }
}

/// One mTLS exchange: `client` (expecting `server_id`) to `server`; returns the identity the
/// server saw.
async fn handshake(
    client: &Identity,
    server: &Identity,
    server_id: &str,
) -> Result<String, String> {
    let roots = tls::roots(&server.bundle.load()).map_err(|e| e.to_string())?;
    let cc = tls::client_config(roots.clone(), client.credentials.clone(), server_id)
        .map_err(|e| e.to_string())?;
    let sc = tls::server_config(roots, server.credentials.clone()).map_err(|e| e.to_string())?;
    let (c, s) = tokio::io::duplex(16 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let srv = tokio::spawn(async move {
        let mut t = acceptor.accept(s).await.map_err(|e| e.to_string())?;
        let who = tls::peer_identity(t.get_ref().1.peer_certificates()).unwrap_or_default();
        let mut b = [0u8; 4];
        t.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        t.write_all(&b).await.map_err(|e| e.to_string())?;
        t.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(who)
    });
    let mut t = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect("mesh".try_into().unwrap(), c)
        .await
        .map_err(|e| e.to_string())?;
    t.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut back = Vec::new();
    t.read_to_end(&mut back).await.map_err(|e| e.to_string())?;
    if back != b"ping" {
        return Err(format!("echoed {back:?}"));
    }
    srv.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_and_survive_a_ca_outage() {
    let dir = TempDir::new("identity");
    let ca = Arc::new(
        Ca::load_or_create(
            &dir.0.join("ca"),
            true,
            "cluster.local",
            Duration::from_secs(3),
            Duration::from_secs(60),
        )
        .unwrap(),
    );
    let svc = CaService {
        ca,
        tokens: Arc::new(BootstrapTokens::parse("tokens", TOKENS, "cluster.local").unwrap()),
        reviewer: None,
        review_limit: Arc::new(weft_control_plane::ca::limit::PerCaller::new(5)),
        requests: weft_control_plane::metrics::Metrics::default().ca_requests,
    };
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ca_stop = CancellationToken::new();
    serve_ca(svc.clone(), addr, ca_stop.clone()).await;

    let stop = CancellationToken::new();
    let (frontend, reviews) = (Arc::new(Identity::default()), Arc::new(Identity::default()));
    tokio::spawn(identity::run(
        config(&dir, addr, "frontend", 3),
        frontend.clone(),
        stop.clone(),
    ));
    tokio::spawn(identity::run(
        config(&dir, addr, "reviews", 4),
        reviews.clone(),
        stop.clone(),
    ));
    eventually(Duration::from_secs(10), "both certificates", || async {
        (frontend.valid() && reviews.valid()).then_some(())
    })
    .await;
    assert!(
        !frontend.credentials.current().unwrap().cert.is_empty(),
        "the key never left the process: only the certificate came back"
    );

    // Continuous mTLS exchanges while the certificates rotate (3 s and 4 s lifetimes).
    let reviews_id = spiffe_id("cluster.local", "shop", "reviews");
    let (mut ok, mut seen) = (0usize, HashSet::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while frontend.renewals.load(Ordering::Relaxed) < 4 && tokio::time::Instant::now() < deadline {
        let who = handshake(&frontend, &reviews, &reviews_id).await;
        assert_eq!(
            who.as_deref(),
            Ok(spiffe_id("cluster.local", "shop", "frontend").as_str()),
            "after {ok} good exchanges"
        );
        ok += 1;
        seen.insert(frontend.credentials.current().unwrap().cert[0].clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let renewals = frontend.renewals.load(Ordering::Relaxed);
    eprintln!(
        "{ok} mTLS exchanges, 0 failed, across {renewals} certificates ({} seen in use)",
        seen.len()
    );
    assert!(
        renewals >= 4,
        "the 3 s certificate rotated: {renewals} obtained"
    );
    assert!(seen.len() >= 3, "exchanges used several certificates");

    // The CA goes away: renewals fail, the certificate in hand stays valid and in use.
    ca_stop.cancel();
    let failed = reviews.failures.load(Ordering::Relaxed);
    eventually(Duration::from_secs(10), "renewals failing", || async {
        (reviews.failures.load(Ordering::Relaxed) >= failed + 2).then_some(())
    })
    .await;
    assert!(
        reviews.valid(),
        "the certificate in hand is still valid while the CA is away"
    );
    // (Handshakes keep working on it while it is valid.)
    handshake(&frontend, &reviews, &reviews_id).await.ok();

    // The CA comes back on the same address: renewal recovers.
    let renewed = reviews.renewals.load(Ordering::Relaxed);
    serve_ca(svc, addr, CancellationToken::new()).await;
    eventually(
        Duration::from_secs(10),
        "renewal after the CA returns",
        || async { (reviews.renewals.load(Ordering::Relaxed) > renewed).then_some(()) },
    )
    .await;
    assert!(reviews.valid());
    assert_eq!(
        handshake(&frontend, &reviews, &reviews_id)
            .await
            .map(|_| ()),
        Ok(())
    );
    stop.cancel();
}
