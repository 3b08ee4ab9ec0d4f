use super::*;
use crate::ca::v1::{
    CreateCertificateRequest, CreateCertificateResponse,
    certificate_service_client::CertificateServiceClient,
    certificate_service_server::{CertificateService, CertificateServiceServer},
};

#[test]
fn type_urls_are_the_envoy_messages_own() {
    use envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    };
    use prost::Name;
    assert_eq!(type_url::LISTENER, Listener::type_url());
    assert_eq!(type_url::ROUTE, RouteConfiguration::type_url());
    assert_eq!(type_url::CLUSTER, Cluster::type_url());
    assert_eq!(type_url::ENDPOINT, ClusterLoadAssignment::type_url());
    // Packing into `Any` and unpacking again, as ADS carries resources.
    let cluster = Cluster {
        name: "echo.test:8080".into(),
        ..Default::default()
    };
    let any = google::protobuf::Any {
        type_url: type_url::CLUSTER.into(),
        value: prost::Message::encode_to_vec(&cluster),
    };
    let back: Cluster = prost::Message::decode(&*any.value).unwrap();
    assert_eq!(back.name, "echo.test:8080");
}

struct EchoCa;

#[tonic::async_trait]
impl CertificateService for EchoCa {
    async fn create_certificate(
        &self,
        req: tonic::Request<CreateCertificateRequest>,
    ) -> Result<tonic::Response<CreateCertificateResponse>, tonic::Status> {
        let r = req.into_inner();
        if r.csr.is_empty() {
            return Err(tonic::Status::invalid_argument("csr: empty"));
        }
        Ok(tonic::Response::new(CreateCertificateResponse {
            cert_chain: vec![format!("signed({}, {}s)", r.csr, r.validity_seconds)],
            trust_bundle: vec!["root".into()],
        }))
    }
}

#[tokio::test]
async fn ca_service_round_trip_over_grpc() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CertificateServiceServer::new(EchoCa))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let mut c = CertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let rsp = c
        .create_certificate(CreateCertificateRequest {
            csr: "CSR".into(),
            validity_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rsp.cert_chain, ["signed(CSR, 3600s)"]);
    assert_eq!(rsp.trust_bundle, ["root"]);
    let err = c
        .create_certificate(CreateCertificateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "csr: empty");
}

/// Settings written into metadata read back as they were: nested objects, lists, strings,
/// and whole numbers, which protobuf holds as doubles, as integers again. No metadata reads as
/// the defaults; a field of the wrong type is refused by name.
#[test]
fn typed_metadata_round_trips_and_names_a_bad_field() {
    use std::collections::BTreeMap;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Settings {
        #[serde(default)]
        count: u32,
        #[serde(default)]
        ratio: f64,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        on: bool,
    }
    let s = Settings {
        count: 7,
        ratio: 0.25,
        labels: BTreeMap::from([("version".into(), "v2".into())]),
        names: vec!["a".into(), "b".into()],
        on: true,
    };
    let m = metadata::write("ns", &s);
    assert_eq!(metadata::read::<Settings>("ns", Some(&m)), Ok(s));
    assert_eq!(
        metadata::read::<Settings>("other", Some(&m)),
        Ok(Settings::default())
    );
    assert_eq!(
        metadata::read::<Settings>("ns", None),
        Ok(Settings::default())
    );

    let mut bad = m.clone();
    bad.filter_metadata.get_mut("ns").unwrap().fields.insert(
        "count".into(),
        google::protobuf::Value {
            kind: Some(google::protobuf::value::Kind::NumberValue(2.5)),
        },
    );
    let e = metadata::read::<Settings>("ns", Some(&bad)).unwrap_err();
    assert!(e.starts_with("metadata `ns.count`: "), "{e}");
    // A field set to null is absent: its default.
    bad.filter_metadata.get_mut("ns").unwrap().fields.insert(
        "count".into(),
        google::protobuf::Value {
            kind: Some(google::protobuf::value::Kind::NullValue(0)),
        },
    );
    let read = metadata::read::<Settings>("ns", Some(&bad)).unwrap();
    assert_eq!((read.count, read.ratio), (0, 0.25));
}
