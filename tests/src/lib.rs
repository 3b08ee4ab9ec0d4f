//! The harness for weft's end-to-end tests: runs the real `weft-proxy` binary and real peers
//! (tonic and hyper servers, a TCP echo, etcd, dnsmasq, external tools) on `127.0.0.1:0` ports.

pub mod chain;
pub mod dnsmasq;
pub mod etcd;
pub mod grpc;
pub mod http_peer;
pub mod k8s;
pub mod mesh;
pub mod netns;
pub mod otlp;
pub mod prometheus;
pub mod properties;
pub mod proxy;
pub mod tcp_peer;
pub mod tools;
pub mod xds_relay;

use std::time::Duration;

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until connecting to `addr` is refused (a draining proxy closed its listener).
pub async fn until_refused(addr: std::net::SocketAddr) {
    eventually(
        Duration::from_secs(5),
        "new connections to be refused",
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await
}

/// Waits until `sent` (what a sender has handed on) stops growing: 300 ms without a byte,
/// within 20 s. Returns how far it got.
pub async fn until_it_stops_growing(sent: &std::sync::atomic::AtomicU64, what: &str) -> u64 {
    use std::sync::atomic::Ordering;
    let mut last = u64::MAX;
    eventually(Duration::from_secs(20), what, || {
        let now = sent.load(Ordering::SeqCst);
        let still = now == last && now > 0;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            still.then_some(now)
        }
    })
    .await
}

/// Asserts that the HTTP/1.1 server at `addr` (`what`, for the message) closes a connection
/// whose request headers stop half way, after about 5 s (at least 4, within 15).
pub async fn slow_headers_are_cut_off(addr: std::net::SocketAddr, what: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "{what}: still open after 15 s");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{what}: closed too early ({:?})",
        started.elapsed()
    );
}

/// Asserts that the HTTP/1.1 server at `addr` (`what`, for the message), holding `max`
/// connections that sent nothing yet, serves one more and closes the oldest to make room.
pub async fn the_newest_connection_takes_the_oldests_place(
    addr: std::net::SocketAddr,
    what: &str,
    max: usize,
) {
    use tokio::io::AsyncReadExt;
    let mut held = Vec::new();
    for _ in 0..max {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let answer = raw_exchange(
        addr,
        b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 404"),
        "{what}: the connection beyond {max} was not served: {answer}"
    );
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(3), held[0].read(&mut byte)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "{what}: the oldest connection was not closed for the newer one: {n:?}"
    );
}

/// Writes `request` on a new connection to `addr` and reads until the server closes it.
pub async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut rsp = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut rsp))
        .await
        .expect("the server closes the connection")
        .unwrap();
    rsp
}
