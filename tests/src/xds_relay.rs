//! An ADS relay for tests: it stands between a proxy and the control plane, forwards ADS
//! both ways (state of the world or delta, as the proxy speaks), and changes resources on
//! their way down when a test asks.
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
use weft_xds_proto::google::protobuf::Any;

/// What a test does to a resource (its type URL, its encoding) on its way to the proxy.
type TamperFn = dyn Fn(&str, &mut Any) + Send;
type Tamper = Arc<Mutex<Option<Box<TamperFn>>>>;

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

    /// From now on, `f` changes every resource relayed, given its type URL (those already
    /// sent stay as they were).
    pub fn tamper(&self, f: impl Fn(&str, &mut Any) + Send + 'static) {
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
        let mut client = self.client().await?;
        // Requests (ACKs and NACKs included) go up as they are.
        let requests = req.into_inner().map_while(Result::ok);
        let up = client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner();
        Ok(self.relay_down(up, |rsp, f| {
            for any in &mut rsp.resources {
                f(&rsp.type_url, any);
            }
        }))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut client = self.client().await?;
        let requests = req.into_inner().map_while(Result::ok);
        let up = client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner();
        Ok(self.relay_down(up, |rsp, f| {
            for any in rsp.resources.iter_mut().filter_map(|r| r.resource.as_mut()) {
                f(&rsp.type_url, any);
            }
        }))
    }
}

impl Svc {
    async fn client(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, Status> {
        AggregatedDiscoveryServiceClient::connect(self.upstream.clone())
            .await
            .map_err(|e| Status::unavailable(format!("the control plane: {e}")))
    }

    /// Relays the control plane's responses down, each through `each` with the tamper.
    fn relay_down<T: Send + 'static>(
        &self,
        mut up: Streaming<T>,
        each: fn(&mut T, &TamperFn),
    ) -> Response<ReceiverStream<Result<T, Status>>> {
        let (tx, rx) = mpsc::channel(16);
        let tamper = self.tamper.clone();
        tokio::spawn(async move {
            while let Some(Ok(mut rsp)) = up.next().await {
                if let Some(f) = &*tamper.lock().unwrap() {
                    each(&mut rsp, f);
                }
                if tx.send(Ok(rsp)).await.is_err() {
                    return;
                }
            }
        });
        Response::new(ReceiverStream::new(rx))
    }
}
