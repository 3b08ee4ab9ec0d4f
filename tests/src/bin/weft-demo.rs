//! The local mesh demo: three sidecars and sample apps on loopback, a static routing table,
//! HTTP/1.1, HTTP/2 and gRPC traffic, a canary split and a hot reload, and what went where.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use http::Request;
use http_body_util::BodyExt;
use weft_tests::{
    chain::TempDir,
    eventually,
    grpc::{self, Msg, StreamReq},
    http_peer,
    proxy::Proxy,
};

const WEB: &str = "web.demo:8080";
const ECHO: &str = "echo.demo:50051";

fn table(
    version: &str,
    web_v1: SocketAddr,
    web_v2: SocketAddr,
    echo: SocketAddr,
    w1: u32,
    w2: u32,
) -> String {
    format!(
        r#"version: {version}
services:
  - name: web.demo
    port: 8080
    aliases: [web]
    endpoints:
      - {{address: {web_v1}, labels: {{version: v1}}}}
      - {{address: {web_v2}, labels: {{version: v2}}}}
    subsets:
      - {{name: v1, labels: {{version: v1}}}}
      - {{name: v2, labels: {{version: v2}}}}
    routes:
      - name: canary-by-header
        match: {{headers: [{{name: x-canary, exact: "1"}}]}}
        backends: [{{subset: v2}}]
      - name: split
        backends: [{{subset: v1, weight: {w1}}}, {{subset: v2, weight: {w2}}}]
  - name: echo.demo
    port: 50051
    protocol: http2
    endpoints:
      - {{address: {echo}}}
"#
    )
}

async fn served_by(
    outbound: SocketAddr,
    n: usize,
    h2: bool,
    canary: bool,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut h2tx = if h2 {
        Some(http_peer::h2_client(outbound).await)
    } else {
        None
    };
    for _ in 0..n {
        let rsp = match h2tx.as_mut() {
            Some(tx) => {
                let mut req = Request::get(format!("http://{WEB}/echo"));
                if canary {
                    req = req.header("x-canary", "1");
                }
                tx.send_request(req.body(http_peer::body("")).unwrap())
                    .await
                    .unwrap()
            }
            None => {
                let mut req = Request::get("/echo").header("host", WEB);
                if canary {
                    req = req.header("x-canary", "1");
                }
                http_peer::request_h1(outbound, req, String::new())
                    .await
                    .unwrap()
            }
        };
        let who = rsp.headers()["x-served-by"].to_str().unwrap().to_string();
        let _ = rsp.into_body().collect().await;
        *out.entry(who).or_default() += 1;
    }
    out
}

fn show(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("  ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("weft local demo: sidecars and sample apps on loopback\n");
    let web_v1 = http_peer::server("web-v1").await;
    let web_v2 = http_peer::server("web-v2").await;
    let (echo_app, _) = grpc::server().await;
    let b = Proxy::start(&["--inbound-forward", &web_v1.addr.to_string()]);
    let c = Proxy::start(&["--inbound-forward", &echo_app.to_string()]);
    let dir = TempDir::new("demo");
    let cfg = dir.write(
        "mesh.yaml",
        &table(
            "v1",
            b.addr("inbound"),
            web_v2.addr,
            c.addr("inbound"),
            90,
            10,
        ),
    );
    let a = Proxy::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--config-poll-interval",
        "0",
    ]);
    let out = a.addr("outbound");
    println!(
        "  client sidecar A  outbound {out}  (table {})",
        cfg.display()
    );
    println!(
        "  web sidecar B     inbound {} -> app web-v1 {}",
        b.addr("inbound"),
        web_v1.addr
    );
    println!(
        "  echo sidecar C    inbound {} -> gRPC app {}",
        c.addr("inbound"),
        echo_app
    );
    println!("  web-v2 canary app {} (not meshed)\n", web_v2.addr);

    println!("1. HTTP/1.1 to {WEB}, canary split 90/10, 200 requests");
    println!("   {}", show(&served_by(out, 200, false, false).await));
    println!("2. HTTP/2 to {WEB} with `x-canary: 1`, 20 requests (header route)");
    println!("   {}", show(&served_by(out, 20, true, true).await));

    println!("3. gRPC to {ECHO} through A and C, all four call shapes");
    let mut g = grpc::client(out, ECHO).await;
    let m = |t: &str| Msg {
        payload: vec![1; 16],
        text: t.into(),
        count: 0,
    };
    let r = g.unary(m("hello")).await.unwrap().into_inner();
    println!("   unary          -> {:?}", r.text);
    let mut s = g
        .server_stream(StreamReq {
            count: 10,
            size: 32,
            interval_ms: 10,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while s.message().await.unwrap().is_some() {
        n += 1;
    }
    println!("   server stream  -> {n} messages");
    let r = g
        .client_stream(futures_util::stream::iter((0..5).map(move |_| m(""))))
        .await
        .unwrap()
        .into_inner();
    println!(
        "   client stream  -> server got {} messages, {} bytes",
        r.count, r.text
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut bidi = g
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut echoed = Vec::new();
    for i in 0..5 {
        tx.send(m(&format!("ping-{i}"))).await.unwrap();
        echoed.push(bidi.message().await.unwrap().unwrap().text);
    }
    drop(tx);
    while bidi.message().await.unwrap().is_some() {}
    println!("   bidi           -> {}", echoed.join(", "));
    let err = g.unary(m("fail")).await.unwrap_err();
    println!("   error status   -> {:?}: {}", err.code(), err.message());

    println!("4. Hot reload: weights 0/100, SIGHUP");
    dir.write(
        "mesh.yaml",
        &table(
            "v2",
            b.addr("inbound"),
            web_v2.addr,
            c.addr("inbound"),
            0,
            100,
        ),
    );
    a.signal("HUP");
    eventually(Duration::from_secs(10), "table v2", || async {
        (a.config_dump().await["version"] == "v2").then_some(())
    })
    .await;
    println!(
        "   table version now v2; 50 requests: {}",
        show(&served_by(out, 50, false, false).await)
    );

    println!(
        "\n5. What sidecar A counted (GET /metrics on its probe port {}):",
        a.addr("probe")
    );
    for line in a.metrics().await.lines() {
        if line.starts_with("weft_response_total") || line.starts_with("weft_table_generation") {
            println!("   {line}");
        }
    }
    for (name, mut p) in [("A", a), ("B", b), ("C", c)] {
        p.signal("TERM");
        let status = p.wait_exit(Duration::from_secs(30));
        let code = status.and_then(|s| s.code());
        println!(
            "{}sidecar {name} drained, exit status {code:?}",
            if name == "A" { "\n" } else { "" }
        );
    }
}
