//! A stand-in for the Kubernetes API server in unit tests (none can run here): a loopback HTTP
//! server whose answers `handler` writes in the API server's shape, recording every request.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use serde_json::Value;

/// A request the stand-in received: method, path and JSON body (`Null` when empty).
pub type Seen = (http::Method, String, Value);

/// The answer of a `Status` failure, as the API server writes it.
pub fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

/// Serves `handler` on `127.0.0.1:0`; returns a client for it and the requests seen.
pub async fn serve<H>(handler: H) -> (kube::Client, Arc<Mutex<Vec<Seen>>>)
where
    H: Fn(&http::Method, &str, &Value) -> (u16, Value) + Send + Sync + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (handler, log) = (Arc::new(handler), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (handler, log) = (handler.clone(), log.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move {
                            let (method, path) =
                                (req.method().clone(), req.uri().path().to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let (code, answer) = handler(&method, &path, &body);
                            log.lock().unwrap().push((method, path, body));
                            let mut r = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(answer.to_string()),
                            ));
                            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    (client, seen)
}
