use base64::Engine;

use super::*;

const TD: &str = "cluster.local";

fn ca(dir: &Path) -> Ca {
    Ca::load_or_create(
        dir,
        true,
        TD,
        Duration::from_secs(24 * 3600),
        Duration::from_secs(7 * 24 * 3600),
    )
    .unwrap()
}

/// Why the CA in `dir` does not load (without creating one).
fn load_error(dir: &Path) -> String {
    Ca::load_or_create(
        dir,
        false,
        TD,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .unwrap_err()
    .to_string()
}

fn csr(sans: &[&str]) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| SanType::URI((*s).try_into().unwrap()))
        .collect();
    // A CSR may ask for more; the CA must not copy it.
    params
        .subject_alt_names
        .push(SanType::DnsName("evil.example".try_into().unwrap()));
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, pem)
}

fn der(pem: &str) -> Vec<u8> {
    certs(pem).unwrap().remove(0).0
}

/// Verifies `chain` (leaf first, PEM) against `roots` as rustls would.
fn verify(chain: &[String], roots: &[String]) -> Result<(), webpki::Error> {
    let roots: Vec<_> = roots
        .iter()
        .map(|r| rustls_pki_types::CertificateDer::from(der(r)))
        .collect();
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let ders: Vec<_> = chain
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(der(c)))
        .collect();
    let leaf = webpki::EndEntityCert::try_from(&ders[0]).unwrap();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &ders[1..],
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(drop)
}

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "weft-ca-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let _ = std::fs::remove_dir_all(&p);
    p
}

#[test]
fn creates_persists_and_reloads_the_root() {
    let dir = tmp("root");
    let err = load_error(&dir);
    assert!(
        err.to_string().contains("ca.key and") && err.to_string().contains("--ca-create"),
        "{err}"
    );
    let first = ca(&dir);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is private");
    let again = ca(&dir);
    assert_eq!(
        first.trust_bundle(),
        again.trust_bundle(),
        "the persisted root is reused"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn signs_only_the_proven_identity_and_nothing_else_from_the_csr() {
    let dir = tmp("sign");
    let ca = ca(&dir);
    let id = spiffe_id(TD, "shop", "reviews");
    let (_, pem) = csr(&[&id]);
    let (chain, expires) = ca.sign(&pem, &id, Some(Duration::from_secs(600))).unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_secs(600) && left > Duration::from_secs(590),
        "{left:?}"
    );

    let leaf = der(&chain[0]);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| format!("{g:?}"))
        .collect();
    assert_eq!(
        sans,
        [format!("URI({id:?})")],
        "the CSR's DNS name is not copied"
    );
    assert!(!cert.is_ca());

    // The certificate chains to the trust bundle (webpki, as rustls will check it).
    verify(&chain, &ca.trust_bundle()).unwrap();

    // Another identity than the caller's, or none, or two: refused.
    let (_, other) = csr(&[&spiffe_id(TD, "shop", "payments")]);
    let err = ca.sign(&other, &id, None).unwrap_err();
    assert!(matches!(err, CaError::WrongIdentity { .. }), "{err}");
    assert!(err.to_string().contains("sa/payments") && err.to_string().contains("sa/reviews"));
    let (_, two) = csr(&[&id, &spiffe_id(TD, "shop", "x")]);
    assert!(
        ca.sign(&two, &id, None)
            .unwrap_err()
            .to_string()
            .contains("exactly one URI SAN")
    );
    assert!(matches!(
        ca.sign("not a csr", &id, None),
        Err(CaError::BadCsr(_))
    ));

    // Lifetimes: the default when none is asked, capped at the maximum.
    let (_, pem) = csr(&[&id]);
    let (_, exp) = ca.sign(&pem, &id, None).unwrap();
    let left = exp.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(24 * 3600 - 10) && left <= Duration::from_secs(24 * 3600));
    let (_, exp) = ca
        .sign(&pem, &id, Some(Duration::from_secs(365 * 24 * 3600)))
        .unwrap();
    assert!(exp.duration_since(SystemTime::now()).unwrap() <= Duration::from_secs(7 * 24 * 3600));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bootstrap_token_files_name_their_bad_lines() {
    let t = BootstrapTokens::parse(
        "tokens",
        "# team shop\n0123456789abcdef0123 shop reviews\n\n",
        TD,
    )
    .unwrap();
    assert_eq!(
        t.identity("0123456789abcdef0123"),
        Some("spiffe://cluster.local/ns/shop/sa/reviews")
    );
    assert_eq!(t.identity("0123456789abcdef0124"), None);
    let err = BootstrapTokens::parse("tokens", "a b\n", TD).unwrap_err();
    assert_eq!(err, "tokens:1: expected `TOKEN NAMESPACE SERVICE_ACCOUNT`");
    let err = BootstrapTokens::parse("tokens", "x\nshort ns sa\n", TD).unwrap_err();
    assert!(err.starts_with("tokens:1:"), "{err}");
    let err = BootstrapTokens::parse(
        "tokens",
        "0123456789abcdef0123 a b\n0123456789abcdef0123 c d\n",
        TD,
    )
    .unwrap_err();
    assert_eq!(err, "tokens:2: this token is listed twice");
}

#[tokio::test]
async fn the_grpc_service_issues_only_to_a_proven_identity() {
    use tokio_stream::wrappers::TcpListenerStream;
    use weft_xds_proto::ca::v1::{
        CreateCertificateRequest, certificate_service_client::CertificateServiceClient,
        certificate_service_server::CertificateServiceServer,
    };

    let dir = tmp("svc");
    let ca = std::sync::Arc::new(ca(&dir));
    let tokens = BootstrapTokens::parse("t", "0123456789abcdef0123 shop reviews\n", TD).unwrap();
    let requests = crate::metrics::Metrics::default().ca_requests;
    let svc = CaService {
        ca: ca.clone(),
        tokens: std::sync::Arc::new(tokens),
        reviewer: None,
        review_limit: std::sync::Arc::new(super::limit::PerCaller::new(5)),
        requests: requests.clone(),
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CertificateServiceServer::new(svc))
            .serve_with_incoming(TcpListenerStream::new(l)),
    );
    let mut client = CertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let ask = |who: &str, token: Option<&str>| {
        let (_, pem) = csr(&[&spiffe_id(TD, "shop", who)]);
        let mut req = tonic::Request::new(CreateCertificateRequest {
            csr: pem,
            validity_seconds: 3600,
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    let ok = client
        .create_certificate(ask("reviews", Some("0123456789abcdef0123")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.cert_chain.len(), 1);
    assert_eq!(ok.trust_bundle, ca.trust_bundle());

    let err = client
        .create_certificate(ask("reviews", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client
        .create_certificate(ask("reviews", Some("ffffffffffffffffffff")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = client
        .create_certificate(ask("payments", Some("0123456789abcdef0123")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("sa/payments"), "{}", err.message());
    let counted = |r: &str| requests.with_label_values(&[r]).get();
    assert_eq!(
        (
            counted("issued"),
            counted("unauthenticated"),
            counted("denied")
        ),
        (1, 2, 1)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A CA certificate (and its key) signed by `issuer`, or self-signed.
fn ca_cert(name: &str, issuer: Option<&Issuer<'_, KeyPair>>) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = match issuer {
        Some(i) => p.signed_by(&key, i).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    (key, cert.pem())
}

#[test]
fn an_intermediate_signs_with_its_chain_and_extra_roots_join_the_bundle() {
    let dir = tmp("intermediate");
    std::fs::create_dir_all(&dir).unwrap();
    let (root_key, root_pem) = ca_cert("offline root", None);
    let root = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let (int_key, int_pem) = ca_cert("weft intermediate", Some(&root));
    std::fs::write(dir.join("ca.key"), int_key.serialize_pem()).unwrap();
    // The intermediate alone: no trust anchor yet.
    std::fs::write(dir.join("ca.crt"), &int_pem).unwrap();
    let err = load_error(&dir);
    assert!(err.to_string().contains("no trust anchor"), "{err}");
    // With its root after it.
    std::fs::write(dir.join("ca.crt"), format!("{int_pem}{root_pem}")).unwrap();
    let ca = ca(&dir);
    assert_eq!(ca.trust_bundle(), std::slice::from_ref(&root_pem));
    let id = spiffe_id(TD, "shop", "reviews");
    let (chain, _) = ca.sign(&csr(&[&id]).1, &id, None).unwrap();
    assert_eq!(chain.len(), 2, "the leaf and the intermediate");
    verify(&chain, &ca.trust_bundle()).unwrap();
    assert!(
        verify(&chain[..1], &ca.trust_bundle()).is_err(),
        "not without the intermediate"
    );

    // Rotation: another root in bundle.crt is trusted too.
    let (_, next_root) = ca_cert("next root", None);
    std::fs::write(dir.join("bundle.crt"), &next_root).unwrap();
    assert_eq!(self::ca(&dir).trust_bundle(), [root_pem, next_root]);

    // A key that is not the certificate's is refused by name.
    let (other_key, _) = ca_cert("other", None);
    std::fs::write(dir.join("ca.key"), other_key.serialize_pem()).unwrap();
    let err = load_error(&dir);
    assert!(err.to_string().contains("does not belong"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stand-in for the Kubernetes API server's TokenReview endpoint (no API server runs here).
/// Its answers are written in the API server's shape (authentication.k8s.io/v1, 201 Created):
/// `sa-token` is the projected token of `shop/reviews`, `user-token` a person's, anything
/// else is not authenticated. It also checks that the CA asks for the right audience.
async fn token_review_server() -> (
    kube::Client,
    std::sync::Arc<std::sync::Mutex<Vec<crate::kube_stand_in::Seen>>>,
) {
    crate::kube_stand_in::serve(|method, path, review| {
        assert_eq!(method, http::Method::POST);
        assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(review["spec"]["audiences"], serde_json::json!(["weft-ca"]));
        let status = match review["spec"]["token"].as_str().unwrap() {
            "sa-token" => serde_json::json!({
                "authenticated": true,
                "user": {
                    "username": "system:serviceaccount:shop:reviews",
                    "uid": "5f1c2c8e-3a7e-4d8e-9b1e-2f0d7c9a4b11",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/pod-name": ["reviews-v1-7d9f8c6b5-x2x7q"]}
                },
                "audiences": ["weft-ca"]
            }),
            "other-audience-token" => serde_json::json!({
                "authenticated": true,
                "user": {"username": "system:serviceaccount:shop:reviews"},
            }),
            "user-token" => serde_json::json!({
                "authenticated": true,
                "user": {"username": "alice@example.com", "groups": ["system:authenticated"]},
                "audiences": ["weft-ca"]
            }),
            _ => serde_json::json!({
                "user": {},
                "error": "[invalid bearer token, token lookup failed]"
            }),
        };
        let rsp = serde_json::json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": review["spec"],
            "status": status,
        });
        (201, rsp)
    })
    .await
}

/// The CA of `dir` with TokenReviews through `client`, five a second per caller.
fn reviewing_service(client: kube::Client, dir: &std::path::Path) -> CaService {
    CaService {
        ca: std::sync::Arc::new(ca(dir)),
        tokens: std::sync::Arc::new(BootstrapTokens::default()),
        reviewer: Some(TokenReviewer {
            client,
            audiences: vec!["weft-ca".into()],
            trust_domain: TD.into(),
        }),
        review_limit: std::sync::Arc::new(super::limit::PerCaller::new(5)),
        requests: crate::metrics::Metrics::default().ca_requests,
    }
}

#[tokio::test]
async fn kubernetes_service_account_tokens_prove_their_account_through_token_review() {
    use weft_xds_proto::ca::v1::{
        CreateCertificateRequest, certificate_service_server::CertificateService,
    };
    let (client, _) = token_review_server().await;
    let dir = tmp("review");
    let svc = reviewing_service(client, &dir);
    let ask = |sa: &str, token: &str| {
        let mut req = tonic::Request::new(CreateCertificateRequest {
            csr: csr(&[&spiffe_id(TD, "shop", sa)]).1,
            validity_seconds: 600,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    let ok = svc
        .create_certificate(ask("reviews", "sa-token"))
        .await
        .unwrap()
        .into_inner();
    let leaf = der(&ok.cert_chain[0]);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert!(format!("{:?}", cert.subject_alternative_name()).contains("sa/reviews"));
    // Each refusal: its code, and what its message names.
    for (sa, token, code, names) in [
        ("payments", "sa-token", tonic::Code::PermissionDenied, None),
        (
            "reviews",
            "user-token",
            tonic::Code::PermissionDenied,
            Some("alice@example.com"),
        ),
        (
            "reviews",
            "other-audience-token",
            tonic::Code::Unauthenticated,
            Some("not for audience"),
        ),
        (
            "reviews",
            "forged",
            tonic::Code::Unauthenticated,
            Some("invalid bearer token"),
        ),
    ] {
        let err = svc.create_certificate(ask(sa, token)).await.unwrap_err();
        assert_eq!(err.code(), code, "{token}: {err:?}");
        if let Some(names) = names {
            assert!(err.message().contains(names), "{token}: {err:?}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One caller sending token after token gets its burst of TokenReviews, then
/// RESOURCE_EXHAUSTED without the API server being asked; another caller is still served.
#[tokio::test]
async fn token_reviews_are_limited_per_caller_address() {
    use weft_xds_proto::ca::v1::{
        CreateCertificateRequest, certificate_service_server::CertificateService,
    };
    let (client, seen) = token_review_server().await;
    let dir = tmp("review-limit");
    let svc = reviewing_service(client, &dir);
    let ask = |from: &str, token: &str| {
        let mut req = tonic::Request::new(CreateCertificateRequest {
            csr: csr(&[&spiffe_id(TD, "shop", "reviews")]).1,
            validity_seconds: 600,
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(from.parse().unwrap()),
            });
        req
    };
    let mut codes = Vec::new();
    for i in 0..30 {
        let err = svc
            .create_certificate(ask("10.0.0.66:40000", &format!("guess-{i}")))
            .await
            .unwrap_err();
        codes.push(err.code());
    }
    let reviewed = codes
        .iter()
        .filter(|c| **c == tonic::Code::Unauthenticated)
        .count();
    assert_eq!(reviewed, 10, "a burst of twice the rate: {codes:?}");
    assert_eq!(
        seen.lock().unwrap().len(),
        10,
        "the API server was asked 10 times"
    );
    assert!(
        codes[10..]
            .iter()
            .all(|c| *c == tonic::Code::ResourceExhausted)
    );
    // Another pod, with a real token, is served (unless the two addresses share one of the
    // 1,024 slots, which is what the first address tells).
    let other = svc
        .create_certificate(ask("10.0.0.7:40000", "sa-token"))
        .await;
    let same_slot = other
        .as_ref()
        .is_err_and(|e| e.code() == tonic::Code::ResourceExhausted);
    assert!(other.is_ok() || same_slot, "{other:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Serial numbers come from the system's CSPRNG, not from a generator whose seed decides them
/// (fastrand, seeded alike, repeats itself).
#[test]
fn serial_numbers_do_not_follow_a_seeded_generator() {
    fastrand::seed(7);
    let a = super::serial().unwrap();
    fastrand::seed(7);
    let b = super::serial().unwrap();
    assert_ne!(a, b);
    let bytes = a.to_bytes();
    assert_eq!(bytes.len(), 16);
    assert!(
        bytes[0] & 0x80 == 0 && bytes[0] != 0,
        "positive, full length"
    );
}

#[test]
fn a_ca_kept_in_a_secret_round_trips_and_names_what_is_missing() {
    let day = Duration::from_secs(24 * 3600);
    let secret = new_secret("weft-system", "weft-ca", TD).unwrap();
    // Through JSON, as the API server stores and returns it (data base64).
    let json = serde_json::to_value(&secret).unwrap();
    assert!(json["data"]["ca.key"].as_str().is_some());
    let back: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json).unwrap();
    let ca = from_secret(&back, TD, day, day * 7).unwrap();
    let id = spiffe_id(TD, "shop", "web");
    let (_key, pem) = csr(&[&id]);
    let (chain, _) = ca.sign(&pem, &id, None).unwrap();
    verify(&chain, &ca.trust_bundle()).unwrap();

    let mut no_key = back.clone();
    no_key.data.as_mut().unwrap().remove("ca.key");
    let err = from_secret(&no_key, TD, day, day).unwrap_err().to_string();
    assert!(
        err.contains("Secret weft-system/weft-ca key ca.key"),
        "{err}"
    );

    let mut bad = back;
    bad.data
        .as_mut()
        .unwrap()
        .insert("ca.crt".into(), k8s_openapi::ByteString(b"junk".to_vec()));
    let err = from_secret(&bad, TD, day, day).unwrap_err().to_string();
    assert!(
        err.contains("Secret weft-system/weft-ca key ca.crt"),
        "{err}"
    );
}

#[test]
fn a_cert_manager_ca_secret_is_read_by_its_tls_keys() {
    let day = Duration::from_secs(24 * 3600);
    let (key, cert) = Ca::generate_root(TD).unwrap();
    // As cert-manager writes a self-signed CA Certificate's Secret.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "mesh-ca", "namespace": "weft-system",
                     "annotations": {"cert-manager.io/certificate-name": "mesh-ca"}},
        "data": {
            "tls.key": base64::engine::general_purpose::STANDARD.encode(&key),
            "tls.crt": base64::engine::general_purpose::STANDARD.encode(&cert),
            "ca.crt": base64::engine::general_purpose::STANDARD.encode(&cert),
        }
    }))
    .unwrap();
    let ca = from_secret(&secret, TD, day, day).unwrap();
    assert_eq!(ca.trust_bundle().len(), 1, "the same root once");
    let id = spiffe_id(TD, "shop", "web");
    let (_key, pem) = csr(&[&id]);
    let (chain, _) = ca.sign(&pem, &id, None).unwrap();
    verify(&chain, &ca.trust_bundle()).unwrap();
}

const SECRET_PATH: &str = "/api/v1/namespaces/weft-system/secrets/weft-ca";

#[tokio::test]
async fn replicas_racing_to_create_the_ca_secret_end_up_with_one_ca() {
    use crate::kube_stand_in::{serve, status};
    let day = Duration::from_secs(24 * 3600);
    // Another replica's CA, created while this one was starting: the first GET finds nothing,
    // the create answers 409, and the GET after it finds theirs.
    let theirs = serde_json::to_value(new_secret("weft-system", "weft-ca", TD).unwrap()).unwrap();
    let their_cert = theirs["data"]["ca.crt"].clone();
    let gets = std::sync::atomic::AtomicUsize::new(0);
    let (client, seen) = serve(move |method, path, _| match (method.as_str(), path) {
        ("GET", SECRET_PATH) if gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 => {
            status(404, "NotFound", "secrets \"weft-ca\" not found")
        }
        ("GET", SECRET_PATH) => (200, theirs.clone()),
        ("POST", "/api/v1/namespaces/weft-system/secrets") => {
            status(409, "AlreadyExists", "secrets \"weft-ca\" already exists")
        }
        _ => status(404, "NotFound", "no such path"),
    })
    .await;
    let ca = load_or_create_secret(client, "weft-system", "weft-ca", true, TD, day, day)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let calls: Vec<String> = seen.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(
        calls,
        [
            format!("GET {SECRET_PATH}"),
            "POST /api/v1/namespaces/weft-system/secrets".to_string(),
            format!("GET {SECRET_PATH}"),
        ]
    );
    // What this replica tried to create: a new root, as an Opaque Secret.
    let created = &seen[1].2;
    assert_eq!(created["metadata"]["name"], "weft-ca");
    assert_eq!(created["type"], "Opaque");
    assert_ne!(created["data"]["ca.crt"], their_cert);
    // ...but it signs with theirs.
    let their_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(their_cert.as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ca.trust_bundle(), vec![their_pem]);
}

#[tokio::test]
async fn a_missing_ca_secret_is_created_or_named() {
    use crate::kube_stand_in::{serve, status};
    let day = Duration::from_secs(24 * 3600);
    // The API server answers a create with the object it stored.
    let (client, seen) = serve(|method, path, body| match (method.as_str(), path) {
        ("GET", SECRET_PATH) => status(404, "NotFound", "secrets \"weft-ca\" not found"),
        ("POST", "/api/v1/namespaces/weft-system/secrets") => (201, body.clone()),
        _ => status(404, "NotFound", "no such path"),
    })
    .await;
    let ca = load_or_create_secret(client.clone(), "weft-system", "weft-ca", true, TD, day, day)
        .await
        .unwrap();
    let created = seen.lock().unwrap()[1].2.clone();
    let pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(created["data"]["ca.crt"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ca.trust_bundle(), vec![pem]);

    let err = load_or_create_secret(client, "weft-system", "weft-ca", false, TD, day, day)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Secret weft-system/weft-ca key ca.key"),
        "{err}"
    );
}
