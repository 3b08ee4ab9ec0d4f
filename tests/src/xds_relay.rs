//! An ADS relay for tests: it stands between a proxy and the control plane, forwards
//! state-of-the-world ADS both ways, and changes responses on their way down when a test asks.
//! It plays a control plane of another version, whose resources a proxy may reject: weft's own
//! control plane validates with the proxy's checks, so it never sends one.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;
use tokio_stream::{
    StreamExt,
    wrappers::{ReceiverStream, TcpListenerStream},
};
use tonic::{Request, Response, Status, Streaming};
use weft_xds_proto::discovery::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceClient, AggregatedDiscoveryServiceServer,
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

/// What a test does to each response on its way to the proxy.
type Tamper = Arc<Mutex<Option<Box<dyn Fn(&mut DiscoveryResponse) + Send>>>>;

pub struct Relay {
    /// Where proxies connect (plaintext gRPC).
    pub addr: SocketAddr,
    tamper: Tamper,
    server: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to the control plane's plaintext xDS port `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tamper = Tamper::default();
        let svc = Svc {
            upstream: format!("http://{upstream}"),
            tamper: tamper.clone(),
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Relay {
            addr,
            tamper,
            server,
        }
    }

    /// From now on, `f` changes every response relayed (those already sent stay as they were).
    pub fn tamper(&self, f: impl Fn(&mut DiscoveryResponse) + Send + 'static) {
        *self.tamper.lock().unwrap() = Some(Box::new(f));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Svc {
    upstream: String,
    tamper: Tamper,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(self.upstream.clone())
            .await
            .map_err(|e| Status::unavailable(format!("the control plane: {e}")))?;
        // Requests (ACKs and NACKs included) go up as they are.
        let requests = req.into_inner().map_while(Result::ok);
        let mut up = client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner();
        let (tx, rx) = mpsc::channel(16);
        let tamper = self.tamper.clone();
        tokio::spawn(async move {
            while let Some(Ok(mut rsp)) = up.next().await {
                if let Some(f) = &*tamper.lock().unwrap() {
                    f(&mut rsp);
                }
                if tx.send(Ok(rsp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "the test relay speaks state-of-the-world ADS only",
        ))
    }
}
