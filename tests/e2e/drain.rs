//! Graceful drain: in-flight streams finish, new connections are refused, exit status 0.

use std::time::Duration;

use weft_tests::{
    chain::{Chain, HTTP_SERVICE},
    grpc::{self, StreamReq},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_stream_completes_while_the_proxy_drains() {
    let (server, _) = grpc::server().await;
    let mut chain = Chain::start(server);
    let mut c = grpc::client(chain.outbound(), HTTP_SERVICE).await;
    // 30 messages, 100 ms apart: about 3 s of stream.
    let mut s = c
        .server_stream(StreamReq {
            count: 30,
            size: 100,
            interval_ms: 100,
            fail_after: 0,
        })
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();

    chain.a.signal("TERM");
    weft_tests::until_refused(chain.outbound()).await;
    let (_, ready) = chain.a.get("probe", "/ready").await;
    assert_eq!(ready, "draining\n");

    let mut n = 1;
    while let Some(m) = s.message().await.expect("the stream in flight is not cut") {
        assert_eq!(m.count, n);
        n += 1;
    }
    assert_eq!(n, 30);
    let status = chain
        .a
        .wait_exit(Duration::from_secs(20))
        .expect("proxy exits after draining");
    assert!(status.success(), "{status:?}");
    let logs = chain.a.logs.lock().unwrap().join("\n");
    assert!(logs.contains("drained; exiting"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shutdown_drains_too() {
    let (server, _) = grpc::server().await;
    let mut chain = Chain::start(server);
    // A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) sends its name as
    // Host: refused, and the proxy keeps running.
    let admin = chain.b.addr("admin");
    let rebound = http::Request::builder()
        .method("POST")
        .uri("/shutdown")
        .header("host", format!("rebind.example:{}", admin.port()));
    let (status, body) = weft_tests::http_peer::exchange(admin, rebound, String::new()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("localhost, 127.0.0.1 or [::1] only"),
        "{body}"
    );
    assert!(chain.b.wait_exit(Duration::ZERO).is_none(), "still running");
    let (status, body) =
        weft_tests::http_peer::simple_request(chain.b.addr("admin"), "POST", "/shutdown", "").await;
    assert_eq!((status, body.as_str()), (200, "draining\n"));
    let status = chain
        .b
        .wait_exit(Duration::from_secs(20))
        .expect("proxy exits");
    assert!(status.success());
}
