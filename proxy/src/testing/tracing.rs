//! Tracing, in process: a sampled request's span and the `traceparent` the upstream gets, a
//! caller's decision kept, new traces sampled at the configured rate, B3 input, the request id.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::Full;
use opentelemetry_proto::tonic::{
    common::v1::any_value::Value,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};

use super::{Mesh, Upstreams, V1, reply};

/// `web:80`, one endpoint, route `api`; the headers of each request the endpoint got.
fn mesh() -> (Mesh, Arc<Mutex<Vec<HeaderMap>>>) {
    let up = Upstreams::default();
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let s = seen.clone();
    up.serve(V1, move |_, req| {
        s.lock().unwrap().push(req.headers().clone());
        let status = if req.uri().path() == "/fail" {
            503
        } else {
            200
        };
        async move { reply(status, "ok") }
    });
    let table = format!(
        "services:
  - name: web
    port: 80
    endpoints: [{{address: {V1}}}]
    routes: [{{name: api}}]
"
    );
    (Mesh::outbound(&table, up), seen)
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(path).header("host", "web");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::default()).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn text<'a>(s: &'a Span, key: &str) -> &'a str {
    match attr(s, key) {
        Some(Value::StringValue(v)) => v,
        // A list of one string (`http.request.header.*`).
        Some(Value::ArrayValue(list)) if list.values.len() == 1 => {
            match list.values[0].value.as_ref() {
                Some(Value::StringValue(v)) => v,
                other => panic!("{key}: {other:?} in {s:?}"),
            }
        }
        other => panic!("{key}: {other:?} in {s:?}"),
    }
}

fn int(s: &Span, key: &str) -> i64 {
    match attr(s, key) {
        Some(Value::IntValue(v)) => *v,
        other => panic!("{key}: {other:?} in {s:?}"),
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

#[tokio::test(start_paused = true)]
async fn a_sampled_request_is_a_client_span_whose_id_the_upstream_gets_as_its_parent() {
    let (mut mesh, seen) = mesh();
    let mut spans = mesh.trace(0.0);
    let tp = format!("00-{TRACE}-{CALLER}-01");
    let req = get(
        "/items?q=1",
        &[
            ("traceparent", &tp),
            ("tracestate", "vendor=x"),
            ("x-request-id", "req-7"),
        ],
    );
    assert_eq!(mesh.send(req).await.status(), 200);
    let span = spans.next().await.expect("a span");
    assert_eq!(hex(&span.trace_id), TRACE);
    assert_eq!(hex(&span.parent_span_id), CALLER);
    assert_eq!(span.kind, SpanKind::Client as i32);
    assert_eq!(span.name, "GET");
    assert_eq!(span.trace_state, "vendor=x");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    let got = seen.lock().unwrap()[0].clone();
    assert_eq!(
        got["traceparent"],
        format!("00-{TRACE}-{}-01", hex(&span.span_id)),
        "the upstream's parent is the sidecar's span"
    );
    assert_eq!(got["tracestate"], "vendor=x");
    assert_eq!(got["x-request-id"], "req-7");
    assert_eq!(text(&span, "http.request.method"), "GET");
    assert_eq!(text(&span, "url.path"), "/items");
    assert_eq!(text(&span, "server.address"), "web");
    assert_eq!(int(&span, "http.response.status_code"), 200);
    assert_eq!(text(&span, "network.protocol.version"), "1.1");
    assert_eq!(text(&span, "network.peer.address"), "10.0.0.1");
    assert_eq!(text(&span, "weft.route"), "api");
    assert_eq!(text(&span, "weft.backend"), "web:80");
    assert_eq!(int(&span, "weft.attempts"), 1);
    assert_eq!(text(&span, "http.request.header.x-request-id"), "req-7");
    // No status is an unset one: the request did not fail.
    assert!(
        span.status
            .as_ref()
            .is_none_or(|s| s.code == StatusCode::Unset as i32)
    );
    assert_eq!(int(&span, "network.peer.port"), 80);
}

#[tokio::test(start_paused = true)]
async fn an_unsampled_caller_is_not_traced_and_its_headers_pass_untouched() {
    let (mut mesh, seen) = mesh();
    let mut spans = mesh.trace(100.0);
    let tp = format!("00-{TRACE}-{CALLER}-00");
    assert_eq!(
        mesh.send(get("/", &[("traceparent", &tp)])).await.status(),
        200
    );
    assert_eq!(seen.lock().unwrap()[0]["traceparent"], *tp);
    assert!(spans.next().await.is_none(), "no span");
}

#[tokio::test(start_paused = true)]
async fn new_traces_are_sampled_at_the_configured_rate() {
    let (mut mesh, seen) = mesh();
    let mut spans = mesh.trace(0.0);
    mesh.send(get("/", &[])).await;
    assert!(spans.next().await.is_none(), "0 %: no span");
    assert!(!seen.lock().unwrap()[0].contains_key("traceparent"));
    let (mut mesh, seen) = self::mesh();
    let mut spans = mesh.trace(100.0);
    assert_eq!(mesh.send(get("/fail", &[])).await.status(), 503);
    let span = spans.next().await.expect("100 %: a span");
    assert!(span.parent_span_id.is_empty(), "a root span");
    let got = &seen.lock().unwrap()[0];
    assert_eq!(
        got["traceparent"],
        format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id))
    );
    // A client span fails with a 4xx or 5xx.
    let status = span.status.clone().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(text(&span, "error.type"), "503");
    // The request id was generated (a UUID), and the span carries it.
    let id = got["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(text(&span, "http.request.header.x-request-id"), id);
}

#[tokio::test(start_paused = true)]
async fn a_b3_caller_is_continued_in_both_formats() {
    let (mut mesh, seen) = mesh();
    let mut spans = mesh.trace(0.0);
    let req = get(
        "/",
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", CALLER),
            ("x-b3-sampled", "1"),
        ],
    );
    mesh.send(req).await;
    let span = spans.next().await.expect("a span");
    assert_eq!(hex(&span.trace_id), "0000000000000000a3ce929d0e0e4736");
    assert_eq!(hex(&span.parent_span_id), CALLER);
    let got = &seen.lock().unwrap()[0];
    let me = hex(&span.span_id);
    assert_eq!(got["x-b3-spanid"], *me);
    assert_eq!(got["x-b3-parentspanid"], CALLER);
    assert_eq!(got["x-b3-traceid"], "a3ce929d0e0e4736");
    assert_eq!(
        got["traceparent"],
        format!("00-0000000000000000a3ce929d0e0e4736-{me}-01")
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_header_cannot_remove_what_the_sidecar_sets() {
    let (mut mesh, seen) = mesh();
    let mut spans = mesh.trace(100.0);
    let tp = format!("00-{TRACE}-{CALLER}-01");
    let req = get(
        "/",
        &[
            ("connection", "keep-alive, traceparent, x-request-id"),
            ("traceparent", &tp),
            ("x-request-id", "mine"),
        ],
    );
    assert_eq!(mesh.send(req).await.status(), 200);
    let span = spans.next().await.expect("a span");
    let got = &seen.lock().unwrap()[0];
    // The caller's fields were hop-by-hop: gone before the sidecar read them; what it set went
    // upstream.
    assert!(span.parent_span_id.is_empty(), "a new trace");
    assert_eq!(
        got["traceparent"],
        format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id))
    );
    let id = got["x-request-id"].to_str().unwrap();
    assert_ne!(id, "mine");
    assert_eq!(text(&span, "http.request.header.x-request-id"), id);
}
