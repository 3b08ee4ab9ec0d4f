//! The replay body against a real hyper `Incoming` body (from an in-memory HTTP/1 server).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;

use super::*;
use crate::http::body::RequestBody;

/// The `Incoming` body of a request carrying `chunks`.
async fn incoming(chunks: Vec<&'static [u8]>) -> Incoming {
    let (c, s) = tokio::io::duplex(1 << 20);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(req.into_body());
        }
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(c))
        .await
        .unwrap();
    tokio::spawn(conn);
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c)))),
    );
    tokio::spawn(async move {
        let _ = send
            .send_request(Request::post("/").body(StreamBody::new(frames)).unwrap())
            .await;
    });
    rx.await.unwrap()
}

async fn read(b: RequestBody) -> Result<Vec<u8>, String> {
    b.collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_later_try_sends_the_same_body() {
    let shared = Shared::new(
        RequestBody::direct(incoming(vec![b"hello ", b"world"]).await, None),
        1024,
    );
    let first = read(RequestBody::replay(shared.first())).await.unwrap();
    assert_eq!(first, b"hello world");
    assert!(shared.replayable());
    let second = read(RequestBody::replay(shared.next().unwrap()))
        .await
        .unwrap();
    assert_eq!(second, b"hello world");
    let third = read(RequestBody::replay(shared.next().unwrap()))
        .await
        .unwrap();
    assert_eq!(third, b"hello world");
}

#[tokio::test]
async fn a_try_cut_short_is_continued_by_the_next() {
    let shared = Shared::new(
        RequestBody::direct(incoming(vec![b"one,", b"two,", b"three"]).await, None),
        1024,
    );
    // The first try reads one chunk and is abandoned (a connect failure, a reset...).
    let mut first = RequestBody::replay(shared.first());
    let chunk = first.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&chunk[..], b"one,");
    let second = RequestBody::replay(shared.next().unwrap());
    // The superseded try fails from now on.
    assert!(first.frame().await.unwrap().is_err());
    assert_eq!(read(second).await.unwrap(), b"one,two,three");
}

#[tokio::test]
async fn a_body_over_the_cap_is_not_replayed() {
    let shared = Shared::new(
        RequestBody::direct(incoming(vec![b"0123456789", b"0123456789"]).await, None),
        15,
    );
    let mirror = RequestBody::replay(shared.mirror());
    // The first try still sends it all.
    let first = read(RequestBody::replay(shared.first())).await.unwrap();
    assert_eq!(first.len(), 20);
    assert!(!shared.replayable());
    assert!(shared.next().is_none());
    // A mirror must not get a truncated body as if it were whole.
    assert!(read(mirror).await.is_err());
}

#[tokio::test]
async fn the_mirror_follows_the_first_try() {
    let shared = Shared::new(
        RequestBody::direct(incoming(vec![b"a", b"b", b"c"]).await, None),
        1024,
    );
    let mirror = tokio::spawn(read(RequestBody::replay(shared.mirror())));
    let first = read(RequestBody::replay(shared.first())).await.unwrap();
    assert_eq!(first, b"abc");
    assert_eq!(mirror.await.unwrap().unwrap(), b"abc");
}

#[tokio::test]
async fn many_tiny_frames_are_capped_like_a_large_body() {
    // 65,536 one-byte frames: 64 KiB of bytes, but each kept frame costs more than its byte.
    let shared = Shared::new(
        RequestBody::direct(incoming(vec![b"x"; 65_536]).await, None),
        64 * 1024,
    );
    let first = read(RequestBody::replay(shared.first())).await.unwrap();
    assert_eq!(first.len(), 65_536, "the first try still sends it all");
    assert!(!shared.replayable(), "the copy was dropped at the cap");
    assert!(shared.state.lock().unwrap().chunks.is_empty());
}
