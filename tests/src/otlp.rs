//! An OTLP/gRPC trace receiver (`TraceService/Export`, from the official
//! `opentelemetry-proto` definitions) on `127.0.0.1:0`: it keeps every span it is sent with its
//! resource's `service.name`, for tests to read the trees the sidecars and applications made.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio::sync::oneshot;

/// A span as received, and the `service.name` of the resource that sent it.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// A string or integer attribute, as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        let v = self
            .span
            .attributes
            .iter()
            .find(|a| a.key == key)?
            .value
            .as_ref()?
            .value
            .as_ref()?;
        match v {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            Value::BoolValue(b) => Some(b.to_string()),
            // A list of one string (`http.request.header.*`), as that string.
            Value::ArrayValue(list) if list.values.len() == 1 => match &list.values[0].value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                other => Some(format!("{other:?}")),
            },
            other => Some(format!("{other:?}")),
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Store(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    kept.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver; it stops when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    store: Store,
    _stop: oneshot::Sender<()>,
}

impl Collector {
    pub async fn start() -> Collector {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let store = Store::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = TraceServiceServer::new(store.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(l),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Collector {
            addr,
            store,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.store.0.lock().unwrap().clone()
    }

    /// How many spans were received since the last call, forgetting them.
    pub fn take_count(&self) -> usize {
        std::mem::take(&mut *self.store.0.lock().unwrap()).len()
    }
}
