//! gRPC through the chain: all four call shapes, large messages, many concurrent streams,
//! cancellation, deadlines and error statuses.

use std::{sync::atomic::Ordering, time::Duration};

use tonic::Code;
use weft_tests::{
    chain::{Chain, HTTP_SERVICE},
    eventually,
    grpc::{self, Msg, StreamReq},
};

fn msg(text: &str, size: usize) -> Msg {
    Msg {
        payload: vec![7u8; size],
        text: text.into(),
        count: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_call_shapes() {
    let (server, _) = grpc::server().await;
    let chain = Chain::start(server);
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;

    let r = c.unary(msg("hello", 10)).await.unwrap().into_inner();
    assert_eq!(r.text, "hello");

    let mut s = c
        .server_stream(StreamReq {
            count: 50,
            size: 1000,
            interval_ms: 0,
            fail_after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.unwrap() {
        assert_eq!(m.count, n);
        n += 1;
    }
    assert_eq!(n, 50);

    let input = futures_util::stream::iter((0..30).map(|_| msg("", 100)));
    let r = c.client_stream(input).await.unwrap().into_inner();
    assert_eq!((r.count, r.text.as_str()), (30, "3000"));

    // Lock-step bidi: each message must come back before the next is sent, which only works if
    // the proxies relay every message as it arrives.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut out = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..20 {
        tx.send(msg(&format!("m{i}"), 10)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), out.message())
            .await
            .expect("bidi message relayed as it arrived")
            .unwrap()
            .unwrap();
        assert_eq!(echoed.text, format!("m{i}"));
    }
    drop(tx);
    assert!(out.message().await.unwrap().is_none());

    // Metrics on both hops counted the calls by grpc-status.
    let a = chain
        .a
        .metric(r#"weft_response_total{backend="echo.test:8080",direction="outbound",grpc_status="0",route="default",status_code="200",target="echo.test:8080"}"#)
        .await;
    assert_eq!(a, 4.0);
    let b = format!(
        r#"weft_response_total{{backend="",direction="inbound",grpc_status="0",route="",status_code="200",target="{server}"}}"#
    );
    assert_eq!(chain.b.metric(&b).await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_messages_both_ways() {
    let (server, _) = grpc::server().await;
    let chain = Chain::start(server);
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    let big = 4 * 1024 * 1024;
    let r = c.unary(msg("big", big)).await.unwrap().into_inner();
    assert_eq!(r.payload.len(), big);
    assert!(r.payload.iter().all(|b| *b == 7));
    let mut s = c
        .server_stream(StreamReq {
            count: 3,
            size: big as u32,
            interval_ms: 0,
            fail_after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut total = 0;
    while let Some(m) = s.message().await.unwrap() {
        total += m.payload.len();
    }
    assert_eq!(total, 3 * big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_streams() {
    let (server, state) = grpc::server().await;
    let chain = Chain::start(server);
    let c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    // 1,000 server streams held open at once: each receives its first message, then all wait
    // on a barrier before reading the rest, so they are truly concurrent.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let mut c = c.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = c
                .server_stream(StreamReq {
                    count: 3,
                    size: 64,
                    interval_ms: 0,
                    fail_after: 0,
                })
                .await
                .unwrap()
                .into_inner();
            let first = s.message().await.unwrap().unwrap();
            assert_eq!(first.count, 0);
            barrier.wait().await;
            let mut n = 1;
            while let Some(_m) = s.message().await.unwrap() {
                n += 1;
            }
            n
        }));
    }
    let all = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("1,000 concurrent streams finish");
    assert!(all.iter().all(|r| *r.as_ref().unwrap() == 3));
    assert_eq!(state.completed_streams.load(Ordering::SeqCst), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancel_reaches_the_server() {
    let (server, state) = grpc::server().await;
    let chain = Chain::start(server);
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    // A unary call that never answers, abandoned by the client.
    let call = tokio::spawn({
        let mut c = c.clone();
        async move { c.unary(msg("hang", 1)).await }
    });
    eventually(
        Duration::from_secs(10),
        "the hanging call to start",
        || async { (state.started.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    call.abort();
    eventually(
        Duration::from_secs(10),
        "the server to see the cancel",
        || async { (state.cancelled.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    // Both sidecars counted the abandoned call: 499 (client closed request), CANCELLED.
    let hops = [
        (&chain.a, "outbound", HTTP_SERVICE.to_string(), "default"),
        (&chain.b, "inbound", server.to_string(), ""),
    ];
    for (proxy, direction, target, route) in hops {
        // Outbound, the service's default route and its one backend (all its endpoints).
        let backend = if route.is_empty() {
            ""
        } else {
            target.as_str()
        };
        let series = format!(
            r#"weft_response_total{{backend="{backend}",direction="{direction}",grpc_status="1",route="{route}",status_code="499",target="{target}"}}"#
        );
        eventually(Duration::from_secs(10), &series, || async {
            (proxy.try_metric(&series).await == Some(1.0)).then_some(())
        })
        .await;
    }

    // A server stream dropped mid-way.
    let mut s = c
        .server_stream(StreamReq {
            count: 1000,
            size: 10,
            interval_ms: 20,
            fail_after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    drop(s);
    eventually(
        Duration::from_secs(10),
        "the stream's cancel to reach the server",
        || async { (state.cancelled.load(Ordering::SeqCst) == 2).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_expiry() {
    let (server, state) = grpc::server().await;
    let chain = Chain::start(server);
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    // The client's deadline: the call ends on time and the server sees it cancelled.
    let mut req = tonic::Request::new(msg("sleep:5000", 1));
    req.set_timeout(Duration::from_millis(300));
    let t0 = std::time::Instant::now();
    let err = c.unary(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    eventually(
        Duration::from_secs(10),
        "the server to see the expired call cancelled",
        || async { (state.cancelled.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_fails_grpc_calls_with_deadline_exceeded() {
    let (server, state) = grpc::server().await;
    let chain = Chain::start_with(server, &[], |b| {
        format!(
            "services:\n  - name: echo.test\n    port: 8080\n    routes:\n      - timeout: 300ms\n    endpoints:\n      - address: {b}\n"
        )
    });
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    // The client allows 20 s; the route allows 300 ms, and the proxy enforces it.
    let mut req = tonic::Request::new(msg("sleep:5000", 1));
    req.set_timeout(Duration::from_secs(20));
    let err = c.unary(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(err.message(), "request timed out after 300ms");
    eventually(
        Duration::from_secs(10),
        "the server to see the call cancelled",
        || async { (state.cancelled.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    // The table's one route, unnamed: `route-0`.
    let series = r#"weft_response_total{backend="echo.test:8080",direction="outbound",grpc_status="4",route="route-0",status_code="200",target="echo.test:8080"}"#;
    eventually(Duration::from_secs(5), series, || async {
        (chain.a.try_metric(series).await == Some(1.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_and_trailers_pass_unchanged() {
    let (server, _) = grpc::server().await;
    let chain = Chain::start(server);
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    let err = c.unary(msg("fail", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "quota spent: ünïcode ✓ 100%");
    assert_eq!(err.metadata().get("x-weft-test").unwrap(), "trailer-value");
    let series = r#"weft_response_total{backend="echo.test:8080",direction="outbound",grpc_status="8",route="default",status_code="200",target="echo.test:8080"}"#;
    assert_eq!(chain.a.metric(series).await, 1.0);
}

/// A status that ends a stream after messages travels in the trailers (not a trailers-only
/// response): code, message and custom metadata arrive unchanged after the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_in_trailers_after_messages_passes_unchanged() {
    let (server, _) = grpc::server().await;
    let chain = Chain::start(server);
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    let mut s = c
        .server_stream(StreamReq {
            count: 10,
            size: 100,
            interval_ms: 0,
            fail_after: 3,
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        assert_eq!(s.message().await.unwrap().unwrap().count, i);
    }
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(err.message(), "stopped after 3 messages ✓");
    assert_eq!(err.metadata().get("x-weft-test").unwrap(), "after-data");
    let series = r#"weft_response_total{backend="echo.test:8080",direction="outbound",grpc_status="10",route="default",status_code="200",target="echo.test:8080"}"#;
    eventually(Duration::from_secs(5), "the status counted", || async {
        (chain.a.try_metric(series).await == Some(1.0)).then_some(())
    })
    .await;
}

/// A client-streaming call's messages reach the server one by one as the client sends them:
/// each is seen by the server before the client sends the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stream_messages_arrive_as_they_are_sent() {
    let (server, state) = grpc::server().await;
    let chain = Chain::start(server);
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let call = tokio::spawn(async move {
        c.client_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(tonic::Response::into_inner)
    });
    for i in 1..=10 {
        tx.send(msg("", 100)).await.unwrap();
        eventually(
            Duration::from_secs(5),
            "the server to have the message before the next is sent",
            || async { (state.client_stream_messages.load(Ordering::SeqCst) == i).then_some(()) },
        )
        .await;
    }
    drop(tx);
    let r = call.await.unwrap().unwrap();
    assert_eq!((r.count, r.text.as_str()), (10, "1000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_errors_are_grpc_shaped() {
    // A's table points at an endpoint where nothing listens.
    let (server, _) = grpc::server().await;
    // Bound and never listening, held to the end so no other test's server takes the port.
    let dead_socket = tokio::net::TcpSocket::new_v4().unwrap();
    dead_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = dead_socket.local_addr().unwrap();
    let chain = Chain::start_with(server, &[], |_| {
        format!(
            "services:\n  - name: echo.test\n    port: 8080\n    endpoints:\n      - address: {dead}\n  - name: empty.test\n    port: 8080\n"
        )
    });
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    let err = c.unary(msg("x", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(&format!("connect to {dead}")),
        "{}",
        err.message()
    );

    let mut c = grpc::client(chain.outbound(), "empty.test:8080").await;
    let err = c.unary(msg("x", 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "service empty.test:8080 has no endpoints");

    let mut c = grpc::client(chain.outbound(), "nowhere.test:1").await;
    let err = c.unary(msg("x", 1)).await.unwrap_err();
    // The proxy's own gRPC status and message, not one tonic would infer from an HTTP 404.
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "no service for authority `nowhere.test:1`");
}

/// A gRPC message frame: uncompressed flag, length, protobuf bytes.
fn grpc_frame(msg: &Msg) -> bytes::Bytes {
    use prost::Message;
    let body = msg.encode_to_vec();
    let mut f = vec![0u8];
    f.extend_from_slice(&(body.len() as u32).to_be_bytes());
    f.extend_from_slice(&body);
    f.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_cuts_off_a_bidi_call_that_is_still_sending() {
    use http_body_util::BodyExt;
    let (server, state) = grpc::server().await;
    let chain = Chain::start(server);
    // A raw HTTP/2 client (hyper), so that only the proxies enforce grpc-timeout.
    let mut tx = weft_tests::http_peer::h2_client(chain.outbound()).await;
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(4);
    let body =
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body_rx));
    let req = http::Request::post(format!("http://{HTTP_SERVICE}/weft.test.Echo/Bidi"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "500m")
        .body(body.map_err(|e| match e {}).boxed())
        .unwrap();
    body_tx
        .send(Ok(hyper::body::Frame::data(grpc_frame(&msg("first", 3)))))
        .await
        .unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let mut rsp_body = rsp.into_body();
    let first = rsp_body.frame().await.unwrap().unwrap();
    assert!(first.is_data(), "the first message is echoed");
    // Keep the request open (body_tx alive) past the deadline: the proxy ends the call...
    let mut trailers = None;
    while let Some(f) = tokio::time::timeout(Duration::from_secs(10), rsp_body.frame())
        .await
        .expect("the call ends at its deadline")
    {
        if let Ok(t) = f.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    assert_eq!(trailers.expect("trailers")["grpc-status"], "4");
    // ...and the server's handler, still reading a request stream the client never ended,
    // sees it end: the proxies reset the upstream stream (CANCEL, which the server side reads
    // as the end of the request stream).
    eventually(
        Duration::from_secs(10),
        "the server's request stream to end",
        || async { (state.bidi_inputs_ended.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    // The client never ended its request stream: its sender is still here.
    drop(body_tx);
}
