//! The injector's HTTPS endpoint (port 15017, `POST /inject`) and the upkeep of its
//! MutatingWebhookConfiguration's `caBundle`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use k8s_openapi::{ByteString, api::admissionregistration::v1::MutatingWebhookConfiguration};
use kube::{Api, api::PostParams};
use tokio::net::TcpListener;

use super::{Decision, Injector};
use crate::api::{Rsp, text};

/// The largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 8 << 20;

/// Serves AdmissionReviews on the TLS listener until the process ends. `results` counts each
/// review by its outcome (injected, skipped, denied, invalid).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    injector: Arc<Injector>,
    results: prometheus::IntCounterVec,
    handshake_failures: prometheus::IntCounter,
) {
    let mut conns = crate::tls::incoming(listener, tls, handshake_failures);
    let slots = crate::serve::slots();
    while let Some(conn) = conns.next().await {
        let Ok(conn) = conn else { continue };
        let slot = slots.take();
        let (injector, results) = (injector.clone(), results.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (injector, results) = (injector.clone(), results.clone());
                async move { Ok::<_, Infallible>(handle(req, &injector, &results).await) }
            });
            crate::serve::connection(conn, svc, crate::serve::WEBHOOK_HEADER_READ_TIMEOUT, slot)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    injector: &Injector,
    results: &prometheus::IntCounterVec,
) -> Rsp {
    const TEXT: &str = "text/plain; charset=utf-8";
    if (req.method(), req.uri().path()) != (&Method::POST, "/inject") {
        return text(
            StatusCode::NOT_FOUND,
            TEXT,
            "the sidecar injector answers POST /inject (an AdmissionReview)\n",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            results.with_label_values(&["invalid"]).inc();
            return text(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("cannot read the body: {e}\n"),
            );
        }
    };
    match injector.review(&body) {
        Ok((answer, decision)) => {
            results.with_label_values(&[decision.result()]).inc();
            match &decision {
                Decision::Skip(why) => tracing::debug!(reason = %why, "pod not injected"),
                Decision::Deny(why) => tracing::warn!(reason = %why, "pod refused"),
                Decision::Inject { .. } => tracing::debug!("pod injected"),
            }
            http::Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(
                    serde_json::to_vec(&answer).expect("JSON values serialize"),
                )))
                .expect("a valid response")
        }
        Err(e) => {
            results.with_label_values(&["invalid"]).inc();
            tracing::warn!(error = %e, "not an AdmissionReview");
            text(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n"))
        }
    }
}

/// `config` with every webhook's `clientConfig.caBundle` set to `bundle`; `None` when nothing
/// needs to change.
pub fn with_ca_bundle(
    mut config: MutatingWebhookConfiguration,
    bundle: &[u8],
) -> Option<MutatingWebhookConfiguration> {
    let mut changed = false;
    for w in config.webhooks.iter_mut().flatten() {
        if w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle) {
            w.client_config.ca_bundle = Some(ByteString(bundle.to_vec()));
            changed = true;
        }
    }
    changed.then_some(config)
}

/// Keeps the `caBundle` of the MutatingWebhookConfiguration `name` equal to `bundle` (the CA
/// that signed the webhook's certificate): checked every `interval`, so the configuration may
/// be created after the control plane starts, and a `helm upgrade` that resets it is put right.
/// Replicas writing the same bundle at once conflict harmlessly and check again.
pub async fn keep_ca_bundle(
    client: kube::Client,
    name: String,
    bundle: Vec<u8>,
    interval: Duration,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    loop {
        match api.get_opt(&name).await {
            Ok(Some(config)) => {
                if let Some(updated) = with_ca_bundle(config, &bundle) {
                    match api.replace(&name, &PostParams::default(), &updated).await {
                        Ok(_) => tracing::info!(webhook = %name, "caBundle set"),
                        Err(e) => {
                            tracing::warn!(webhook = %name, error = %e, "caBundle update failed; will retry")
                        }
                    }
                }
            }
            Ok(None) => {
                tracing::debug!(webhook = %name, "MutatingWebhookConfiguration not there yet")
            }
            Err(e) => {
                tracing::warn!(webhook = %name, error = %e, "cannot read the MutatingWebhookConfiguration")
            }
        }
        tokio::time::sleep(interval).await;
    }
}
