//! HTTP/2 through the chain: trailers, multiplexing, flow control, resets, raw gRPC deadlines.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;
use weft_tests::{chain::Chain, eventually, http_peer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn get(path: &str) -> Request<http_peer::ClientBody> {
    Request::get(format!("http://echo.test:8080{path}"))
        .body(http_peer::body(""))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_and_multiplexing() {
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let tx = http_peer::h2_client(chain.outbound()).await;

    let rsp = tx.clone().send_request(get("/trailers")).await.unwrap();
    let collected = rsp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-trailer"], "yes");
    assert_eq!(collected.to_bytes(), "body");

    // 200 requests at once on one client connection.
    let reqs = (0..200).map(|i| {
        let mut tx = tx.clone();
        async move {
            let req = Request::post("http://echo.test:8080/echo")
                .body(http_peer::body(&format!("req-{i}")))
                .unwrap();
            let rsp = tx.send_request(req).await.unwrap();
            assert_eq!(rsp.headers()["x-seen-version"], "HTTP/2.0");
            rsp.into_body().collect().await.unwrap().to_bytes() == format!("req-{i}")
        }
    });
    let ok = futures_util::future::join_all(reqs).await;
    assert!(ok.iter().all(|b| *b));

    // The proxy's own answer carries the length of its body.
    let req = Request::get("http://nowhere.test/")
        .body(http_peer::body(""))
        .unwrap();
    let rsp = tx.clone().send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 404);
    let length: usize = rsp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert!(length > 0);
    assert_eq!(body.len(), length);
    assert_eq!(
        chain
            .a
            .metric(r#"weft_tcp_accepted_total{direction="outbound"}"#)
            .await,
        1.0
    );
    // Upstream, the 200 concurrent requests were multiplexed too: one HTTP/2 connection from A
    // to B, and one from B to the server.
    assert_eq!(
        chain
            .b
            .metric(r#"weft_tcp_accepted_total{direction="inbound"}"#)
            .await,
        1.0
    );
    assert_eq!(peer.state.connections.load(Ordering::SeqCst), 1);
}

/// Waits until `sent` (what a sender has handed on) stops growing, and checks that flow control
/// held the sender back to under 48 MiB, with both proxies under 64 MiB of RSS.
async fn held_back(sent: &AtomicU64, chain: &Chain, sender: &str, to: &str) {
    let stalled =
        weft_tests::until_it_stops_growing(sent, &format!("{sender} to be held back")).await;
    let (rss_a, rss_b) = (chain.a.rss(), chain.b.rss());
    eprintln!("stalled after {stalled} bytes; RSS A {rss_a} B {rss_b}");
    assert!(stalled < 48 << 20, "{sender} sent {stalled} bytes to {to}");
    assert!(
        rss_a < 64 << 20 && rss_b < 64 << 20,
        "RSS A {rss_a} B {rss_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_held_back_by_flow_control() {
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let mut tx = http_peer::h2_client(chain.outbound()).await;
    let total: u64 = 128 << 20;
    let rsp = tx
        .send_request(get(&format!("/big?bytes={total}")))
        .await
        .unwrap();
    // Read nothing; wait until the server can send no more.
    held_back(
        &peer.state.big_sent,
        &chain,
        "the server",
        "a reader that read nothing",
    )
    .await;
    // Now read it all: nothing was lost.
    let mut body = rsp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_reader_holds_the_uploader_back() {
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let mut tx = http_peer::h2_client(chain.outbound()).await;
    let total: u64 = 128 << 20;
    let taken = Arc::new(AtomicU64::new(0));
    // The upload: 64 KiB chunks, counted as the client's connection takes them.
    let (chunks, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let counted = taken.clone();
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 64 << 10]);
        let mut sent = 0;
        while sent < total {
            if chunks.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
            sent += chunk.len() as u64;
            counted.store(sent, Ordering::SeqCst);
        }
    });
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::post("http://echo.test:8080/sink")
        .body(http_body_util::BodyExt::boxed(body))
        .unwrap();
    let answer = tokio::spawn(tx.send_request(req));
    held_back(
        &taken,
        &chain,
        "the client",
        "an upstream that read nothing",
    )
    .await;
    // Now the upstream reads it all: nothing was lost.
    peer.state.open_sink();
    let rsp = answer.await.unwrap().unwrap();
    assert_eq!(rsp.status(), 200);
    let got = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, total.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_propagate_both_ways() {
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let tx = http_peer::h2_client(chain.outbound()).await;

    // Client cancels: the server's handler is dropped.
    let call = tokio::spawn({
        let mut tx = tx.clone();
        async move { tx.send_request(get("/hang")).await }
    });
    eventually(
        Duration::from_secs(10),
        "the request to reach the server",
        || async { (peer.state.requests.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    call.abort();
    eventually(
        Duration::from_secs(10),
        "the cancel to reach the server",
        || async { (peer.state.cancelled.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;

    // Server resets mid-body: the client sees an error, not a clean end.
    let rsp = tx.clone().send_request(get("/reset")).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "partial");
    peer.state.reset_now();
    let res = body.collect().await;
    assert!(
        res.is_err(),
        "a reset stream must not look complete; got {:?}",
        res.map(|c| c.to_bytes())
    );
    // The connection survives for other streams.
    let rsp = tx.clone().send_request(get("/status/204")).await.unwrap();
    assert_eq!(rsp.status(), 204);

    // Client resets mid-body: the reset goes up the chain and the server's body is dropped,
    // long before its end.
    let total = 1u64 << 30;
    let rsp = tx
        .clone()
        .send_request(get(&format!("/big?bytes={total}")))
        .await
        .unwrap();
    let mut body = rsp.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    drop(body);
    eventually(
        Duration::from_secs(10),
        "the server's body to be dropped",
        || async { (peer.state.big_dropped.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    assert!(peer.state.big_sent.load(Ordering::SeqCst) < total / 8);
    let rsp = tx.clone().send_request(get("/status/204")).await.unwrap();
    assert_eq!(rsp.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_enforced_by_the_proxy() {
    // The peer is a plain hyper server that ignores grpc-timeout, so only the proxy can end these.
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let grpc_req = |path: &str| {
        Request::post(format!("http://echo.test:8080{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "300m")
            .body(http_peer::body(""))
            .unwrap()
    };
    let tx = http_peer::h2_client(chain.outbound()).await;

    // Before response headers: a trailers-only DEADLINE_EXCEEDED.
    let t0 = std::time::Instant::now();
    let rsp = tx.clone().send_request(grpc_req("/hang")).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "application/grpc");
    assert_eq!(rsp.headers()["grpc-status"], "4");
    assert!(t0.elapsed() < Duration::from_secs(3));

    // After headers and a first message: the proxy ends the stream with DEADLINE_EXCEEDED.
    let rsp = tx
        .clone()
        .send_request(grpc_req("/grpc-partial"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let collected = tokio::time::timeout(Duration::from_secs(5), rsp.into_body().collect())
        .await
        .expect("the proxy ends the call at its deadline")
        .unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["grpc-status"], "4");
    assert!(
        trailers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("deadline")
    );
    assert_eq!(collected.to_bytes(), &b"\0\0\0\0\x02hi"[..]);
}

/// Reads HTTP/2 frames from a raw connection until it closes or a frame of type `until`
/// arrives; returns the frame types seen.
async fn frame_types(s: &mut tokio::net::TcpStream, until: Option<u8>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (mut buf, mut types, mut at) = (Vec::new(), Vec::new(), 0);
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while at + 9 <= buf.len() {
                let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
                let ty = buf[at + 3];
                types.push(ty);
                at += 9 + len;
                if until == Some(ty) {
                    return;
                }
            }
        }
    })
    .await
    .expect("the expected frame or the close arrives");
    types
}

const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
const PING: u8 = 6;
const GOAWAY: u8 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_pings_close_the_connection() {
    use tokio::io::AsyncWriteExt;
    let proxy = weft_tests::proxy::Proxy::start(&[
        "--http2-keepalive-interval",
        "200ms",
        "--http2-keepalive-timeout",
        "300ms",
    ]);
    let mut s = tokio::net::TcpStream::connect(proxy.addr("inbound"))
        .await
        .unwrap();
    // A client that opens HTTP/2 and then never answers anything.
    s.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    let types = frame_types(&mut s, None).await;
    assert!(types.contains(&PING), "the proxy sent a PING: {types:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_sends_goaway() {
    use tokio::io::AsyncWriteExt;
    let mut proxy = weft_tests::proxy::Proxy::start(&["--shutdown-grace-period", "1s"]);
    let mut s = tokio::net::TcpStream::connect(proxy.addr("inbound"))
        .await
        .unwrap();
    s.write_all(PREFACE_AND_SETTINGS).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the connection to be served as HTTP/2",
        || async {
            (proxy
                .metric(r#"weft_protocol_detect_total{direction="inbound",protocol="http2"}"#)
                .await
                == 1.0)
                .then_some(())
        },
    )
    .await;
    let (status, _) = http_peer::simple_request(proxy.addr("admin"), "POST", "/shutdown", "").await;
    assert_eq!(status, 200);
    // This client never answers, so the proxy's final close waits for the grace period.
    let types = frame_types(&mut s, Some(GOAWAY)).await;
    assert_eq!(
        types.last(),
        Some(&GOAWAY),
        "the proxy sent GOAWAY: {types:?}"
    );
    assert!(proxy.wait_exit(Duration::from_secs(10)).unwrap().success());
}

/// A downstream request's headers are bounded: over HTTP/2 a header list over 16 KiB
/// (hyper's SETTINGS_MAX_HEADER_LIST_SIZE, which the proxy advertises) is answered 431 and
/// never forwarded; over HTTP/1.1, more than 100 header fields are (hyper's limit; a header
/// section over about 400 KiB is too). Real curl for HTTP/2, raw bytes for HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_over_their_bounds_are_refused_with_431() {
    let Some(curl) = weft_tests::tools::require("curl") else {
        return;
    };
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let target = format!("echo.test:8080:{}", chain.outbound());
    let h2 = |len: usize| {
        let out = std::process::Command::new(&curl)
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10"])
            .args(["--http2-prior-knowledge", "--connect-to", &target])
            .args(["-H", &format!("x-big: {}", "a".repeat(len))])
            .arg("http://echo.test:8080/id")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(h2(12_000), "200");
    let served = peer.state.requests.load(Ordering::SeqCst);
    assert_eq!(h2(20_000), "431");
    assert_eq!(peer.state.requests.load(Ordering::SeqCst), served);

    let h1 = |fields: usize| {
        let mut req = b"GET /id HTTP/1.1\r\nHost: echo.test:8080\r\nConnection: close\r\n".to_vec();
        for i in 0..fields {
            req.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        let outbound = chain.outbound();
        async move { weft_tests::raw_exchange(outbound, &req).await }
    };
    let rsp = h1(90).await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    let served = peer.state.requests.load(Ordering::SeqCst);
    let rsp = h1(150).await;
    assert!(rsp.starts_with("HTTP/1.1 431"), "{rsp}");
    assert_eq!(peer.state.requests.load(Ordering::SeqCst), served);
}

/// A downstream HTTP/2 connection with no open stream for `--http2-idle-timeout` is shut down
/// gracefully (GOAWAY, then closed); one with a stream open is kept: a request sent after the
/// timeout has passed, while another is still open, is served on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_shut_down() {
    let peer = http_peer::server("idle").await;
    let chain = Chain::start_with(peer.addr, &["--http2-idle-timeout", "1s"], |b| {
        format!(
            "services:\n  - name: echo.test\n    port: 8080\n    endpoints: [{{address: '{b}'}}]\n"
        )
    });
    let tcp = tokio::net::TcpStream::connect(chain.outbound())
        .await
        .unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let call = |path: &'static str| {
        let mut tx = tx.clone();
        async move {
            let rsp = tx
                .send_request(get(path))
                .await
                .map_err(|e| e.to_string())?;
            let status = rsp.status().as_u16();
            let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, body.to_bytes()))
        }
    };
    // One call held open for 2.5 s; half a second past the idle timeout, another is served on
    // the same connection.
    let long = tokio::spawn(call("/delay?ms=2500"));
    eventually(Duration::from_secs(5), "the long call to arrive", || {
        let n = peer.state.requests.load(Ordering::SeqCst);
        async move { (n >= 1).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(call("/id").await, Ok((200, Bytes::from("idle"))));
    assert_eq!(long.await.unwrap(), Ok((200, Bytes::from("idle"))));
    // Then nothing is open: the proxy ends the connection.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the idle connection was not shut down gracefully: {ended:?}"
    );
}

/// The rapid-reset attack (CVE-2023-44487): a client that opens streams and resets each one at
/// once, thousands in one burst, gets GOAWAY ENHANCE_YOUR_CALM and its connection closed, the
/// upstream sees a bounded share of them, and the proxy goes on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_gets_the_connection_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const STREAMS: u32 = 5000;
    let peer = http_peer::server("rapid").await;
    let chain = Chain::start(peer.addr);
    let mut s = tokio::net::TcpStream::connect(chain.outbound())
        .await
        .unwrap();
    // GET http://echo.test:8080/ in HPACK: :method GET, :scheme http, :path / (indexed), then
    // :authority as a literal without indexing.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 14];
    block.extend_from_slice(b"echo.test:8080");
    let mut burst = PREFACE_AND_SETTINGS.to_vec();
    for i in 0..STREAMS {
        let id = (2 * i + 1).to_be_bytes();
        // HEADERS, END_STREAM | END_HEADERS.
        burst.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x05]);
        burst.extend_from_slice(&id);
        burst.extend_from_slice(&block);
        // RST_STREAM, CANCEL.
        burst.extend_from_slice(&[0, 0, 4, 3, 0]);
        burst.extend_from_slice(&id);
        burst.extend_from_slice(&8u32.to_be_bytes());
    }
    // The proxy may close the connection before it has read everything.
    let _ = s.write_all(&burst).await;
    // Frames until GOAWAY; its error code.
    let (mut buf, mut at, mut chunk) = (Vec::new(), 0, [0u8; 16384]);
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while at + 9 <= buf.len() {
                let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
                if buf[at + 3] == GOAWAY && at + 9 + len <= buf.len() {
                    let p = &buf[at + 9..at + 9 + len];
                    return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                if at + 9 + len > buf.len() {
                    break;
                }
                at += 9 + len;
            }
        }
    })
    .await
    .expect("an answer to the flood within 10 s");
    assert_eq!(code, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM");
    let reached = peer.state.requests.load(Ordering::SeqCst);
    assert!(
        reached < STREAMS as usize / 2,
        "{reached} of {STREAMS} reset streams reached the upstream"
    );
    // Others are served.
    let mut tx = http_peer::h2_client(chain.outbound()).await;
    let rsp = tx.send_request(get("/id")).await.unwrap();
    assert_eq!(rsp.status(), 200);
}
