//! The harness for weft's end-to-end tests: runs the real `weft-proxy` binary and real peers
//! (tonic and hyper servers, a TCP echo, external tools) on `127.0.0.1:0` ports.

pub mod chain;
pub mod grpc;
pub mod http_peer;
pub mod proxy;
pub mod tcp_peer;
pub mod tools;

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
