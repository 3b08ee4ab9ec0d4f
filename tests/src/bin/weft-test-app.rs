//! A test application to run inside a network namespace (a "pod"), where the in-process test
//! peers cannot go: the HTTP, gRPC and TCP echo servers of the harness on given addresses, or a
//! gRPC client that makes the four call shapes.
//!
//!   weft-test-app serve NAME HTTP_ADDR GRPC_ADDR TCP_ADDR
//!   weft-test-app grpc-call ADDR
//!   weft-test-app otlp-sink
//!
//! `serve` logs one JSON line per gRPC call to stderr (`grpc call`, with the method and the
//! `x-weft-peer-identity` it carried), and `ready` once listening, as the harness reads them.
//! `grpc-call` prints one line per call shape and exits non-zero on the first failure.
//! `otlp-sink` is an OTLP/gRPC trace receiver on 127.0.0.1 (for the tracing benchmark): it
//! prints its URL, then the count of spans received so far every second (keeping none),
//! until it is stopped.

use std::{net::SocketAddr, time::Duration};

use weft_tests::{grpc, http_peer, tcp_peer};

fn log(message: &str, extra: serde_json::Value) {
    let mut fields = serde_json::json!({ "message": message });
    if let (Some(f), serde_json::Value::Object(e)) = (fields.as_object_mut(), extra) {
        f.extend(e);
    }
    eprintln!("{}", serde_json::json!({ "fields": fields }));
}

async fn serve(name: &str, http: SocketAddr, grpc_addr: SocketAddr, tcp: SocketAddr) {
    let _web = http_peer::server_on(name, http).await;
    let (_, state) = grpc::server_on(grpc_addr).await;
    tcp_peer::echo_server_on(tcp, false).await;
    log("ready", serde_json::json!({}));
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let peers = state.peers.lock().unwrap().clone();
        for (method, peer) in &peers[seen..] {
            log(
                "grpc call",
                serde_json::json!({ "method": method, "peer": peer }),
            );
        }
        seen = peers.len();
    }
}

async fn grpc_call(addr: SocketAddr) -> Result<(), String> {
    let mut c = grpc::client(addr, &addr.to_string()).await;
    let r = grpc::four_shapes(&mut c).await?;
    println!("unary {}", r.unary);
    println!("server_stream {}", r.server_stream);
    println!("client_stream {}", r.client_stream.0);
    println!("bidi {}", r.bidi.join(","));
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = |s: &str| -> SocketAddr { s.parse().expect("an ip:port") };
    match args.iter().map(String::as_str).collect::<Vec<_>>()[1..] {
        ["serve", name, http, grpc_addr, tcp] => {
            serve(name, addr(http), addr(grpc_addr), addr(tcp)).await
        }
        ["grpc-call", target] => {
            if let Err(e) = grpc_call(addr(target)).await {
                eprintln!("weft-test-app: {e}");
                std::process::exit(1);
            }
        }
        ["otlp-sink"] => {
            let c = weft_tests::otlp::Collector::start().await;
            println!("{}", c.url());
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                total += c.take_count();
                eprintln!("spans {total}");
            }
        }
        _ => {
            eprintln!(
                "usage: weft-test-app serve NAME HTTP GRPC TCP | weft-test-app grpc-call ADDR | weft-test-app otlp-sink"
            );
            std::process::exit(2);
        }
    }
}
