//! Distributed tracing end to end: a Python client and server instrumented with the
//! OpenTelemetry SDK call each other through two sidecars over mutual TLS; the applications and
//! the sidecars export to one OTLP/gRPC receiver (built from the official definitions), and
//! each request is one trace: client → sidecar A (client span) → sidecar B (server span) →
//! server. An unsampled caller makes no span anywhere; a collector that is down costs spans,
//! never requests.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use http::Request;
use weft_tests::{
    chain::TempDir,
    eventually, http_peer,
    otlp::{Collector, Received},
    proxy::Proxy,
    tools,
};

use crate::mtls::{id, service, sidecar, start_cp, token};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/otel_app.py")
}

/// The Python server, killed when dropped.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the instrumented server for `n` requests; its port.
fn app_server(py: &Path, otlp: &str, n: usize) -> (App, u16) {
    let mut child = Command::new(py)
        .args([script().to_str().unwrap(), "server", otlp, &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the server's port");
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a port: {line:?}"));
    (App(child), port)
}

/// Runs the instrumented client: `n` requests for web through `proxy`; the trace ids it printed.
async fn app_client(py: &Path, otlp: &str, proxy: &Proxy, n: usize, sampler: &str) -> Vec<String> {
    let (py, otlp) = (py.to_path_buf(), otlp.to_string());
    let outbound = proxy.addr("outbound").to_string();
    let sampler = sampler.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .env("OTEL_TRACES_SAMPLER", sampler)
            .args([
                script().to_str().unwrap(),
                "client",
                &otlp,
                &outbound,
                "web:8080",
                &n.to_string(),
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(&*format!("ok {n}")), "{stdout}");
    lines.map(str::to_string).collect()
}

/// The control plane (CA, xDS over TLS) and two sidecars: `frontend` (the client's) and `web`
/// (in front of the server on `app_port`), both exporting spans to `otlp`.
struct TracedMesh {
    dir: TempDir,
    _registry: TempDir,
    _cp: Proxy,
    frontend: Proxy,
    web: Proxy,
}

async fn traced_mesh(otlp: &str, app_port: u16, sampling: &str) -> TracedMesh {
    let dir = TempDir::new("tracing");
    let tokens: String = [("demo", "frontend"), ("demo", "web")]
        .iter()
        .map(|(ns, sa)| format!("{} {ns} {sa}\n", token(sa)))
        .collect();
    dir.write("tokens", &tokens);
    let registry = TempDir::new("tracing-registry");
    let cp = start_cp(&dir, &registry, "1h", "127.0.0.1:0");
    let bundle = dir.0.join("ca").join("ca.crt");
    let app = format!("127.0.0.1:{app_port}");
    let trace = ["--trace-otlp-endpoint", otlp, "--trace-sampling", sampling];
    let mut web_args = vec!["--inbound-forward", &app, "--inbound-mtls", "strict"];
    web_args.extend(trace);
    let web = sidecar(&dir, &cp, &bundle, "demo", "web", &web_args);
    let frontend = sidecar(&dir, &cp, &bundle, "demo", "frontend", &trace);
    registry.write(
        "web.yaml",
        &service(
            "web",
            8080,
            "http",
            web.addr("inbound"),
            &id("demo", "web"),
            true,
        ),
    );
    for p in [&web, &frontend] {
        eventually(Duration::from_secs(20), "sidecars ready", || async {
            (p.get("probe", "/ready").await.0 == 200).then_some(())
        })
        .await;
    }
    eventually(
        Duration::from_secs(10),
        "web in frontend's table",
        || async {
            let dump = frontend.config_dump().await;
            (dump["services"].as_array().map_or(0, Vec::len) == 1).then_some(())
        },
    )
    .await;
    TracedMesh {
        dir,
        _registry: registry,
        _cp: cp,
        frontend,
        web,
    }
}

/// The spans of `trace`, once there are `n`.
async fn trace_spans(c: &Collector, trace: &str, n: usize) -> Vec<Received> {
    eventually(Duration::from_secs(15), "the trace's spans", || async {
        let spans: Vec<Received> = c
            .spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace)
            .collect();
        (spans.len() >= n).then_some(spans)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_client_through_both_sidecars_to_the_server() {
    let Some(py) = tools::venv_python("opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc")
    else {
        return;
    };
    let collector = Collector::start().await;
    let otlp = collector.url();
    let (traced, unsampled) = (3, 3);
    // One more traced request at the end: a sentinel.
    let (_server, port) = app_server(&py, &otlp, traced + unsampled + 1);
    // The sidecars sample every new trace: the unsampled caller below is not traced because
    // its decision is kept, not because of the rate.
    let m = traced_mesh(&otlp, port, "100").await;

    let ids = app_client(&py, &otlp, &m.frontend, traced, "parentbased_always_on").await;
    assert_eq!(ids.len(), traced);
    let (frontend_id, web_id) = (id("demo", "frontend"), id("demo", "web"));
    for trace in &ids {
        let spans = trace_spans(&collector, trace, 4).await;
        assert_eq!(spans.len(), 4, "{spans:#?}");
        let find = |service: &str, kind: i32| {
            spans
                .iter()
                .find(|s| s.service == service && s.span.kind == kind)
                .unwrap_or_else(|| panic!("a {service} span of kind {kind}: {spans:#?}"))
        };
        let (client, server) = (3, 2);
        let app_client = find("otel-client", client);
        let a = find("weft-proxy", client);
        let b = find("weft-proxy", server);
        let app_server = find("otel-server", server);
        assert_eq!(app_client.parent_id(), "", "the client's span is the root");
        assert_eq!(a.parent_id(), app_client.span_id(), "sidecar A's parent");
        assert_eq!(b.parent_id(), a.span_id(), "sidecar B's parent");
        assert_eq!(app_server.parent_id(), b.span_id(), "the server's parent");
        assert_eq!(a.attr("weft.direction").as_deref(), Some("outbound"));
        assert_eq!(b.attr("weft.direction").as_deref(), Some("inbound"));
        // Each sidecar names the identity its peer proved.
        assert_eq!(a.attr("weft.peer.identity"), Some(web_id.clone()));
        assert_eq!(b.attr("weft.peer.identity"), Some(frontend_id.clone()));
        for s in [a, b] {
            assert_eq!(s.attr("http.request.method").as_deref(), Some("GET"));
            assert_eq!(s.attr("url.path").as_deref(), Some("/hello"));
            assert_eq!(s.attr("http.response.status_code").as_deref(), Some("200"));
            assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
        }
        assert_eq!(a.attr("weft.attempts").as_deref(), Some("1"));
        assert_eq!(a.attr("server.address").as_deref(), Some("web"));
        // Both sidecars' spans carry the request id the first one generated.
        let rid = a
            .attr("http.request.header.x-request-id")
            .expect("a request id");
        assert_eq!(b.attr("http.request.header.x-request-id"), Some(rid));
    }
    // Both sidecars wrote the trace id in their access logs too.
    let log = std::fs::read_to_string(crate::mtls::access_log(&m.dir, "web")).unwrap();
    assert!(log.contains(&ids[0]), "{log}");

    // An unsampled caller: no span from anyone, though the sidecars sample every new trace.
    let before = collector.spans().len();
    app_client(&py, &otlp, &m.frontend, unsampled, "always_off").await;
    // Then one sampled request: each sidecar exports its spans in the order they were made
    // (and the applications export theirs before they answer or exit), so once the sentinel's
    // four spans are in, any span of the unsampled requests would be too.
    let sentinel = app_client(&py, &otlp, &m.frontend, 1, "parentbased_always_on").await;
    trace_spans(&collector, &sentinel[0], 4).await;
    assert_eq!(
        collector.spans().len(),
        before + 4,
        "no span for unsampled requests"
    );
    // Counted once the collector's answer is in (just after it has the spans).
    let want = (traced + 1) as f64;
    eventually(Duration::from_secs(10), "the exports counted", || async {
        let exported = m.web.metric("weft_trace_spans_exported_total").await;
        (exported == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_spans_not_requests() {
    // A port nothing listens on.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let otlp = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let server = http_peer::server("web").await;
    let m = traced_mesh(&otlp, server.addr.port(), "100").await;
    let n = 200;
    for i in 0..n {
        let req = Request::get("/id").header("host", "web:8080");
        let rsp = http_peer::request_h1(m.frontend.addr("outbound"), req, String::new())
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(rsp.status(), 200, "request {i}");
    }
    // Each sidecar made a span per request; the exporter gave up on them and counted them.
    for p in [&m.frontend, &m.web] {
        let series = r#"weft_trace_spans_dropped_total{reason="export_failed"}"#;
        eventually(
            Duration::from_secs(30),
            "spans counted as dropped",
            || async { (p.metric(series).await >= n as f64).then_some(()) },
        )
        .await;
        assert_eq!(p.metric("weft_trace_spans_exported_total").await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_stops_sends_the_spans_it_holds_first() {
    let collector = Collector::start().await;
    let server = http_peer::server("web").await;
    let mut m = traced_mesh(&collector.url(), server.addr.port(), "100").await;
    let req = Request::get("/id").header("host", "web:8080");
    let rsp = http_peer::request_h1(m.frontend.addr("outbound"), req, String::new()).await;
    assert_eq!(rsp.unwrap().status(), 200);
    // At once: the span is still in the exporter's batch (which waits up to a second).
    m.frontend.signal("TERM");
    assert!(
        m.frontend.wait_exit(Duration::from_secs(10)).is_some(),
        "the sidecar exits"
    );
    let client_spans = collector
        .spans()
        .into_iter()
        .filter(|s| s.span.kind == 3 && s.service == "weft-proxy")
        .count();
    assert_eq!(client_spans, 1, "the stopping sidecar's span was sent");
}
