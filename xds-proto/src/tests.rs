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
