//! One caller must not stall the others: a client that opens streams and never reads their
//! responses, and requests that find an endpoint's connections all in use, against the real
//! proxy. Each waits on events (bytes stop flowing, a request arrives), never on a fixed sleep.

use std::{convert::Infallible, net::SocketAddr, sync::atomic::Ordering, time::Duration};

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_tests::{chain::TempDir, eventually, http_peer, proxy::Proxy};

/// A proxy whose table has `svc` on port 80 with the one endpoint `at`.
fn proxy_to(dir: &TempDir, svc: &str, at: SocketAddr, flags: &[&str]) -> Proxy {
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:\n  - name: {svc}\n    port: 80\n    endpoints: [{{address: '{at}'}}]\n"
        ),
    );
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(flags);
    Proxy::start(&args)
}

/// One GET over a new HTTP/2 connection to `addr`: its status and body, or why it failed to
/// complete within 5 s.
async fn get_h2(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let mut tx = http_peer::h2_client(addr).await;
    let req = Request::get(format!("http://{host}{path}"))
        .body(http_peer::body(""))
        .unwrap();
    let call = async {
        let rsp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status().as_u16();
        let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| Err("no complete answer within 5 s".into()))
}

/// Eight streams of 16 MiB responses that a client never reads fill every buffer on their way
/// (the client's windows, the proxy's send buffers, the upstream streams' windows); a second
/// client's request to the same endpoint, which shares the proxy's one HTTP/2 connection to
/// it, is still answered in full. (With the upstream connection's receive window smaller than
/// the streams' windows together, the unread streams used it all up and the second response's
/// body could not arrive.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_stall_other_callers() {
    let peer = http_peer::server("big").await;
    let dir = TempDir::new("never-reads");
    let proxy = proxy_to(&dir, "big.test", peer.addr, &[]);
    let addr = proxy.addr("outbound");

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut slow, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut unread = Vec::new();
    for _ in 0..8 {
        let req = Request::get("http://big.test/big?bytes=16777216")
            .body(http_peer::body(""))
            .unwrap();
        unread.push(slow.send_request(req).await.unwrap());
    }
    let held =
        weft_tests::until_it_stops_growing(&peer.state.big_sent, "the server to be held back")
            .await;
    eprintln!("the upstream was held back after {held} bytes");
    assert!(held < 128 << 20, "the unread responses were not held back");

    let answer = get_h2(addr, "big.test", "/id").await;
    assert_eq!(answer, Ok((200, "big".to_string())), "the second caller");
    drop(unread);
}

/// A `service_fn` that never answers.
async fn never(_: Request<hyper::body::Incoming>) -> Result<http::Response<String>, Infallible> {
    std::future::pending().await
}

/// The paths an [`unanswering_h2`] server was sent, in order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// An HTTP/2 server on `127.0.0.1:0` that allows `streams` concurrent streams and answers
/// none; records the paths it got.
async fn unanswering_h2(streams: u32, got: Seen) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let got = got.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                got.lock().unwrap().push(req.uri().path().to_string());
                never(req)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(streams)
                    .serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    addr
}

/// Requests beyond what an endpoint can take at once wait at most `--pending-timeout` for room,
/// then fail with 503 (counted), both when HTTP/1.1 connections to it are all in use and when
/// its HTTP/2 connection is at the server's `SETTINGS_MAX_CONCURRENT_STREAMS`. (They used to
/// wait for as long as the requests ahead of them ran: here, for ever.) A request failed so is
/// never sent, even once a stream frees (it used to wait in h2's own queue, which sent it when
/// a stream freed, and then reset it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_full_endpoint_only_as_long_as_the_pending_timeout() {
    // HTTP/1.1: two connections per endpoint, both held by requests the server never answers.
    let hang = http_peer::server("hang").await;
    let dir = TempDir::new("pending-h1");
    let proxy = proxy_to(
        &dir,
        "hang.test",
        hang.addr,
        &[
            "--http1-max-connections-per-endpoint",
            "2",
            "--pending-timeout",
            "300ms",
        ],
    );
    let addr = proxy.addr("outbound");
    let send = move |path: &'static str| {
        http_peer::exchange(
            addr,
            Request::get(path).header("host", "hang.test"),
            String::new(),
        )
    };
    let held: Vec<_> = (0..2).map(|_| tokio::spawn(send("/hang"))).collect();
    eventually(
        Duration::from_secs(5),
        "both held requests to arrive",
        || {
            let n = hang.state.requests.load(Ordering::SeqCst);
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    let third = tokio::time::timeout(Duration::from_secs(5), send("/id")).await;
    let (status, body) = third.expect("the third request waited for ever");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("pending"), "{body}");
    assert_eq!(
        proxy
            .metric(r#"weft_pending_timeouts_total{direction="outbound",target="hang.test:80"}"#)
            .await,
        1.0
    );
    held.iter().for_each(|h| h.abort());

    // HTTP/2: a server that allows two streams and answers none.
    let got = Seen::default();
    let h2 = unanswering_h2(2, got.clone()).await;
    let seen = || got.lock().unwrap().clone();
    let dir = TempDir::new("pending-h2");
    let proxy = proxy_to(&dir, "streams.test", h2, &["--pending-timeout", "300ms"]);
    let addr = proxy.addr("outbound");
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::spawn(get_h2(addr, "streams.test", "/held")));
    }
    eventually(Duration::from_secs(5), "both held streams to open", || {
        let n = seen().len();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let (status, body) = get_h2(addr, "streams.test", "/third")
        .await
        .expect("the third request completes");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("pending"), "{body}");
    assert_eq!(
        seen(),
        ["/held", "/held"],
        "the third never reached the server"
    );
    assert_eq!(
        proxy
            .metric(r#"weft_pending_timeouts_total{direction="outbound",target="streams.test:80"}"#)
            .await,
        1.0
    );
    // One held call goes away (its stream is reset), and a fourth is sent: the fourth takes
    // the freed stream, and the third, failed already, is not sent.
    held[0].abort();
    let fourth = tokio::spawn(get_h2(addr, "streams.test", "/fourth"));
    eventually(
        Duration::from_secs(5),
        "a third request at the server",
        || {
            let n = seen().len();
            async move { (n >= 3).then_some(()) }
        },
    )
    .await;
    assert_eq!(seen(), ["/held", "/held", "/fourth"]);
    fourth.abort();
    held.iter().for_each(|h| h.abort());
}
