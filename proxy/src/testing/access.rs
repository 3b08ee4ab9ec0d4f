//! The access log, in process and in paused time: the line a request routed through the proxy
//! gets, the response flags of each way a request can fail, a client that goes away, and the
//! log off.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use super::{Mesh, Upstreams, V1, V2, grpc_reply, reply, slow, two_versions};
use crate::access_log::Format;
use std::time::Duration;

/// `web:80` with subsets v1 ([`V1`]) and v2 ([`V2`]): route `api` (`/api` prefix) goes to v2,
/// the rest to v1.
fn canary() -> String {
    two_versions(
        "      - name: api
        match: {path: {prefix: /api}}
        backends: [{subset: v2}]
      - name: rest
        backends: [{subset: v1}]
",
    )
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("`{line}` is not JSON: {e}"))
}

#[tokio::test(start_paused = true)]
async fn a_routed_request_is_one_json_line_naming_its_route_backend_and_endpoint() {
    let up = Upstreams::default();
    up.serve(V2, |_, _| async { reply(201, "created!") });
    let mut mesh = Mesh::outbound(&canary(), up);
    let lines = mesh.access_log(Format::Json, 16);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let req = Request::post("/api/items?token=secret")
        .header("host", "web")
        .header("user-agent", "curl/8.0")
        .header("x-request-id", "req-1")
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let rsp = mesh.send(req).await;
    assert_eq!(rsp.status(), 201);
    let lines = mesh.log_lines(&lines);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = json(&lines[0]);
    let start = l["start_time"].as_str().unwrap();
    assert!(
        start.len() == 24 && start.ends_with('Z') && start.as_bytes()[19] == b'.',
        "RFC 3339 to the millisecond, UTC: {start}"
    );
    let want: [(&str, Value); 17] = [
        ("direction", "outbound".into()),
        ("protocol", "HTTP/1.1".into()),
        ("method", "POST".into()),
        ("authority", "web".into()),
        // The query is left out unless --access-log-query.
        ("path", "/api/items".into()),
        ("response_code", 201.into()),
        ("response_flags", "-".into()),
        ("bytes_received", 5.into()),
        ("bytes_sent", 8.into()),
        ("service", "web:80".into()),
        ("route_name", "api".into()),
        ("upstream_cluster", "web:80/v2".into()),
        ("upstream_host", V2.into()),
        ("attempts", 1.into()),
        ("request_id", "req-1".into()),
        ("trace_id", trace.into()),
        ("user_agent", "curl/8.0".into()),
    ];
    for (k, v) in want {
        assert_eq!(l[k], v, "{k} in {l}");
    }
    for absent in ["grpc_status", "client_identity", "referer"] {
        assert!(l.get(absent).is_none(), "{absent} in {l}");
    }
    assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(l["upstream_service_time_ms"].is_number(), "{l}");
}

#[tokio::test(start_paused = true)]
async fn each_way_a_request_fails_has_its_response_flag() {
    let up = Upstreams::default();
    up.serve(V1, |_, _| async { reply(503, "down") });
    up.serve(V2, |_, _| slow(Duration::from_secs(5), 200));
    let gone = "10.0.0.9:80";
    let table = format!(
        "services:
  - {{name: flaky, port: 80, endpoints: [{{address: {V1}}}], retry: {{attempts: 2, on: [5xx]}}}}
  - {{name: slow, port: 80, endpoints: [{{address: {V2}}}], routes: [{{timeout: 1s}}]}}
  - {{name: empty, port: 80}}
  - {{name: gone, port: 80, endpoints: [{{address: {gone}}}]}}
  - name: faulty
    port: 80
    endpoints: [{{address: {V1}}}]
    fault: {{abort: {{percent: 100, httpStatus: 418}}}}
  - name: limited
    port: 80
    endpoints: [{{address: {V1}}}]
    rateLimit: {{requestsPerSecond: 1, burst: 1}}
"
    );
    let mut mesh = Mesh::outbound(&table, up);
    let lines = mesh.access_log(Format::Json, 64);
    let cases = [
        ("flaky", 503, "URX", 3),
        ("slow", 504, "UT", 1),
        ("empty", 503, "UH", 0),
        ("gone", 503, "UF", 1),
        ("faulty", 418, "FI", 0),
        ("nowhere", 404, "NR", 0),
    ];
    for (host, status, ..) in cases {
        assert_eq!(mesh.get(host, "/").await.status(), status, "{host}");
    }
    mesh.get("limited", "/").await;
    assert_eq!(mesh.get("limited", "/").await.status(), 429);
    let lines = mesh.log_lines(&lines);
    assert_eq!(lines.len(), cases.len() + 2, "{lines:#?}");
    for ((host, status, flag, attempts), line) in cases.iter().zip(&lines) {
        let l = json(line);
        assert_eq!(l["authority"], *host, "{l}");
        assert_eq!(l["response_code"], *status, "{l}");
        assert_eq!(l["response_flags"], *flag, "{host}: {l}");
        assert_eq!(l["attempts"], *attempts, "{host}: {l}");
    }
    // No endpoint: the line still names the route and the backend the split chose.
    let empty = json(&lines[2]);
    assert_eq!(empty["route_name"], "default", "{empty}");
    assert_eq!(empty["upstream_cluster"], "empty:80", "{empty}");
    assert_eq!(json(&lines[cases.len()])["response_flags"], "-");
    assert_eq!(json(&lines[cases.len() + 1])["response_flags"], "RL");
    // The connect to `gone` was meant to fail.
    mesh.upstreams.lock().unexpected.clear();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_goes_away_is_logged_as_downstream_closed() {
    let up = Upstreams::default();
    up.serve(V1, |_, _| slow(Duration::from_secs(60), 200));
    let mut mesh = Mesh::outbound(&canary(), up);
    let lines = mesh.access_log(Format::Json, 16);
    let mesh = std::sync::Arc::new(mesh);
    let m = mesh.clone();
    let call = tokio::spawn(async move { m.get("web", "/slow").await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mesh.upstreams.requests(V1), 1, "the request is upstream");
    call.abort();
    // The proxy sees the connection close and drops the request.
    let mut got = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        got = mesh.log_lines(&lines);
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1, "{got:?}");
    let l = json(&got[0]);
    assert_eq!(l["response_code"], 499, "{l}");
    assert_eq!(l["response_flags"], "DC", "{l}");
    assert_eq!(l["route_name"], "rest", "{l}");
}

#[tokio::test(start_paused = true)]
async fn a_response_without_a_body_is_not_downstream_closed() {
    let up = Upstreams::default();
    up.serve(V1, |_, req| async move {
        if req.headers().contains_key("te") {
            grpc_reply(5)
        } else {
            reply(204, "")
        }
    });
    up.serve(V2, |_, _| async { reply(200, "twelve bytes") });
    let mut mesh = Mesh::outbound(&canary(), up);
    let lines = mesh.access_log(Format::Json, 16);
    assert_eq!(mesh.get("web", "/").await.status(), 204);
    let head = Request::head("/api")
        .header("host", "web")
        .body(Full::default())
        .unwrap();
    assert_eq!(mesh.send(head).await.status(), 200);
    let h2 = Request::get("http://web/")
        .version(http::Version::HTTP_2)
        .body(Full::default())
        .unwrap();
    assert_eq!(mesh.send(h2).await.status(), 204);
    // A trailers-only gRPC response.
    let call = mesh.grpc("web", "/pkg.Svc/Get").await;
    assert_eq!(call.headers()["grpc-status"], "5");
    let lines = mesh.log_lines(&lines);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let want = [("GET", 204), ("HEAD", 200), ("GET", 204), ("POST", 200)];
    for (line, (method, status)) in lines.iter().zip(want) {
        let l = json(line);
        assert_eq!(l["method"], method, "{l}");
        assert_eq!(l["response_code"], status, "{l}");
        assert_eq!(l["response_flags"], "-", "the response ended: {l}");
    }
}

#[tokio::test(start_paused = true)]
async fn retries_stopped_by_the_budget_are_retries_exhausted() {
    let up = Upstreams::default();
    up.serve(V1, |_, _| async { reply(503, "down") });
    let table = format!(
        "services:
  - name: flaky
    port: 80
    endpoints: [{{address: {V1}}}]
    retry: {{attempts: 5, on: [5xx], budget: {{ratio: 0.0, minPerSecond: 0}}}}
"
    );
    let mut mesh = Mesh::outbound(&table, up);
    let lines = mesh.access_log(Format::Json, 16);
    assert_eq!(mesh.get("flaky", "/").await.status(), 503);
    let lines = mesh.log_lines(&lines);
    let l = json(&lines[0]);
    assert_eq!(l["attempts"], 1, "{l}");
    assert_eq!(
        l["response_flags"], "URX",
        "a retry was wanted and not allowed: {l}"
    );
}

#[tokio::test(start_paused = true)]
async fn apache_lines_are_the_combined_format_then_weft_fields() {
    let up = Upstreams::default();
    up.serve(V1, |_, _| async { reply(200, "ok") });
    let mut mesh = Mesh::outbound(&canary(), up);
    let lines = mesh.access_log(Format::Apache, 16);
    let req = Request::get("/say \"hi\"".replace(' ', "%20").replace('"', "%22"))
        .header("host", "web")
        .header("user-agent", "a \"quoted\" agent")
        .body(Full::default())
        .unwrap();
    assert_eq!(mesh.send(req).await.status(), 200);
    let lines = mesh.log_lines(&lines);
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    // No client address in process (no socket): `-`; no caller identity outbound: `-`.
    let (head, rest) = l.split_once(" [").unwrap();
    assert_eq!(head, "- - -");
    let (_, rest) = rest.split_once("] ").unwrap();
    assert_eq!(
        rest.split(" direction=").next().unwrap(),
        r#""GET /say%20%22hi%22 HTTP/1.1" 200 2 "-" "a \"quoted\" agent""#
    );
    for kv in [
        "direction=outbound",
        "authority=web",
        "flags=-",
        "service=web:80",
        "route=rest",
        "backend=web:80/v1",
        &format!("upstream={V1}"),
        "attempts=1",
    ] {
        assert!(rest.split(' ').any(|f| f == kv), "{kv} in {l}");
    }
}

#[tokio::test(start_paused = true)]
async fn with_the_log_off_nothing_is_written() {
    let up = Upstreams::default();
    up.serve(V1, |_, _| async { reply(200, "ok") });
    let mut mesh = Mesh::outbound(&canary(), up);
    let lines = mesh.access_log(Format::Off, 16);
    assert!(mesh.proxy.log.is_none());
    assert_eq!(mesh.get("web", "/").await.status(), 200);
    assert!(mesh.log_lines(&lines).is_empty());
}
