use super::*;
use crate::client::{RequestBody, testing};
use clap::Parser;

/// Outbound pools with the default upstream settings.
fn pools() -> Arc<Pools> {
    let cfg = crate::config::Cli::parse_from(["weft-proxy"]).run.upstream;
    let metrics = crate::metrics::Metrics::new();
    Pools::new(cfg, metrics, crate::metrics::Direction::Outbound)
}

fn test_target(pools: &Pools) -> Arc<crate::metrics::TargetMetrics> {
    let name: Arc<str> = "echo:80".into();
    pools
        .metrics()
        .target(crate::metrics::Direction::Outbound, &name)
}

/// No cluster limit: waits bounded only by the pending timeout.
fn waiter(target: &crate::metrics::TargetMetrics) -> Waiter<'_> {
    Waiter {
        metrics: target,
        cluster: None,
    }
}

/// An HTTP/2 GET with no body.
fn get() -> Request<RequestBody> {
    Request::get("http://echo:80/")
        .version(http::Version::HTTP_2)
        .body(RequestBody::empty())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn shared_connection_expires_when_unused() {
    let pool = Pool::default();
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let (tx, _server) = testing::h2().await;
    let slot = pool.slot(addr, None);
    *slot.conn.lock().unwrap() = Some(tx);
    slot.last_used_ms
        .store(pool.clock.now_ms(), Ordering::Relaxed);
    assert!(pool.slot(addr, None).live().is_some());
    assert!(
        Arc::ptr_eq(&slot, &pool.slot(addr, None)),
        "one slot per endpoint"
    );

    tokio::time::advance(Duration::from_secs(30)).await;
    pool.sweep(Duration::from_secs(90));
    assert!(pool.slots.read().unwrap().contains_key(&(addr, None)));
    tokio::time::advance(Duration::from_secs(61)).await;
    pool.sweep(Duration::from_secs(90));
    assert!(
        !pool.slots.read().unwrap().contains_key(&(addr, None)),
        "unused for 91 s"
    );
}

#[tokio::test]
async fn waiting_requests_share_a_failed_connect() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pools = pools();
    let target = test_target(&pools);
    let attempts = (0..5).map(|_| pools.h2.checkout(&pools, addr, None, waiter(&target)));
    let results = futures_util::future::join_all(attempts).await;
    let errors: Vec<String> = results
        .into_iter()
        .map(|r| r.expect_err("nothing listens there").to_string())
        .collect();
    assert_eq!(
        errors.iter().filter(|e| e.contains("shared with")).count(),
        4,
        "{errors:?}"
    );
    let text = pools.metrics().render();
    assert!(
        text.contains(
            r#"weft_upstream_connect_errors_total{direction="outbound",reason="refused"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_closed_connection_is_not_live() {
    let pool = Pool::default();
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let (tx, server) = testing::h2().await;
    let slot = pool.slot(addr, None);
    *slot.conn.lock().unwrap() = Some(tx);
    assert!(slot.live().is_some());
    server.abort();
    let _ = server.await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(slot.live().is_none());
}

/// An HTTP/2 server on `127.0.0.1:0` that reads the client's first frames and then answers
/// with SETTINGS and `frame`, and closes.
async fn answering_with(frame: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        // The preface, then frames up to the request's HEADERS (type 1).
        let (mut buf, mut chunk, mut at) = (Vec::new(), [0u8; 4096], 24);
        'headers: loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before sending its request");
            buf.extend_from_slice(&chunk[..n]);
            while at + 9 <= buf.len() {
                if buf[at + 3] == 1 {
                    break 'headers;
                }
                at += 9 + u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            }
        }
        s.write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        s.write_all(frame).await.unwrap();
        let _ = s.read(&mut chunk).await;
    });
    addr
}

async fn refused_as(frame: &'static [u8]) -> Option<crate::retry::Reason> {
    let addr = answering_with(frame).await;
    let pools = pools();
    let req = get();
    let e = pools
        .h2
        .send(&pools, addr, None, req, waiter(&test_target(&pools)))
        .await
        .expect_err("the server answers nothing");
    let on = weft_core::policy::RetryPolicy {
        on: vec!["refused-stream".into()],
        ..Default::default()
    };
    let retry = crate::retry::Retry::compile(&on).unwrap();
    retry.failure(e.unanswered()?)
}

#[tokio::test]
async fn streams_the_upstream_did_not_process_can_be_retried() {
    use crate::retry::Reason::RefusedStream;
    // RST_STREAM(REFUSED_STREAM) on stream 1.
    let refused = b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x07";
    assert_eq!(refused_as(refused).await, Some(RefusedStream));
    // GOAWAY(last stream 0, NO_ERROR): stream 1 was never processed.
    let go_away = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    assert_eq!(refused_as(go_away).await, Some(RefusedStream));
    // RST_STREAM(INTERNAL_ERROR): maybe processed; not a refusal.
    let reset = b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x02";
    assert_eq!(refused_as(reset).await, None);
}

#[tokio::test]
async fn a_response_cut_short_by_a_reset_is_an_error() {
    use http_body_util::BodyExt;
    // HEADERS `:status: 200` (no END_STREAM), DATA "hi", then RST_STREAM(NO_ERROR).
    let frames = b"\x00\x00\x01\x01\x04\x00\x00\x00\x01\x88\
        \x00\x00\x02\x00\x00\x00\x00\x00\x01hi\
        \x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x00";
    let addr = answering_with(frames).await;
    let pools = pools();
    let req = get();
    let target = test_target(&pools);
    let rsp = pools
        .h2
        .send(&pools, addr, None, req, waiter(&target))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "hi");
    let end = body.frame().await.expect("not a clean end");
    assert!(end.is_err(), "{end:?}");
}

#[tokio::test]
async fn dropping_an_unfinished_response_resets_a_request_still_uploading() {
    // An upstream that answers at once, then waits on the request body.
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (upload_end, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(s).await.unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        tokio::spawn(async move {
            let _stream = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            let mut body = req.into_body();
            // The body's end: Some(reason) if it was reset, None if it ended cleanly.
            let mut end = None;
            while let Some(r) = body.data().await {
                if let Err(e) = r {
                    end = e.reason();
                    break;
                }
            }
            let _ = upload_end.send(end);
        });
        while conn.accept().await.is_some() {}
    });
    let pool = Pool::default();
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    *pool.slot(addr, None).conn.lock().unwrap() = Some(conn::start(c, addr, None).await.unwrap());
    let pools = pools();
    // A client upload that has sent one chunk and goes on (the sender stays open).
    let (chunks, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, BoxError>>(1);
    chunks
        .send(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"x"))))
        .await
        .unwrap();
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::post("http://echo:80/upload")
        .version(http::Version::HTTP_2)
        .body(body)
        .unwrap();
    let target = test_target(&pools);
    let rsp = pool
        .send(&pools, addr, None, req, waiter(&target))
        .await
        .unwrap();
    drop(rsp);
    let reason = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the upstream stream is reset, not left open")
        .unwrap();
    assert_eq!(reason, Some(h2::Reason::CANCEL));
    drop(chunks);
}

#[tokio::test]
async fn a_connection_told_to_go_away_is_not_handed_out_again() {
    let (c, s) = tokio::io::duplex(64 * 1024);
    // An upstream that holds its first request unanswered (so the connection stays up),
    // answers the second, and then shuts down gracefully (GOAWAY).
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(s).await.unwrap();
        let _held = conn.accept().await.unwrap().unwrap();
        let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
        respond
            .send_response(http::Response::new(()), true)
            .unwrap();
        conn.graceful_shutdown();
        while conn.accept().await.is_some() {}
    });
    let pool = Pool::default();
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let slot = pool.slot(addr, None);
    let mut up = conn::start(c, addr, None).await.unwrap();
    let held = Request::get("http://echo:80/held").body(()).unwrap();
    let _held = up.sender().send_request(held, true).unwrap();
    *slot.conn.lock().unwrap() = Some(up);
    let pools = pools();
    let req = get();
    let target = test_target(&pools);
    let rsp = pool
        .send(&pools, addr, None, req, waiter(&target))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while slot.live().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection is still handed out after GOAWAY"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
