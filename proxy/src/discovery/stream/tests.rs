use bytes::{BufMut, Bytes};
use http_body_util::StreamBody;
use prost::Message;
use tonic::{Status, body::Body};
use weft_xds_proto::discovery::DiscoveryResponse;

use super::Responses;

type Frame = Result<http_body::Frame<Bytes>, Status>;

/// A message as the control plane frames it.
fn frame(m: &impl Message) -> Bytes {
    super::frame(m).expect("a small message")
}

fn response(nonce: &str, size: usize) -> DiscoveryResponse {
    DiscoveryResponse {
        nonce: nonce.into(),
        version_info: "v".repeat(size),
        ..Default::default()
    }
}

fn trailers(code: tonic::Code, message: &str) -> Frame {
    let mut t = http::HeaderMap::new();
    Status::new(code, message).add_header(&mut t).unwrap();
    Ok(http_body::Frame::trailers(t))
}

fn data(b: &[u8]) -> Frame {
    Ok(http_body::Frame::data(Bytes::copy_from_slice(b)))
}

fn responses(frames: Vec<Frame>, max: usize) -> Responses<DiscoveryResponse> {
    Responses::new(
        Body::new(StreamBody::new(futures_util::stream::iter(frames))),
        max,
    )
}

/// Every message comes out whole however the frames cut the bytes: inside a header, inside a
/// message, several messages in one frame, an empty message.
#[tokio::test]
async fn messages_are_read_whole_across_any_cut() {
    let sent = [response("1", 10), response("2", 0), response("3", 40_000)];
    let mut wire = Vec::new();
    for m in &sent {
        wire.extend_from_slice(&frame(m));
    }
    wire.extend_from_slice(&frame(&DiscoveryResponse::default()));
    for cut in [1, 2, 3, 4, 5, 6, 7, 16, 17, 1000, 16_384, wire.len()] {
        let mut frames: Vec<Frame> = wire.chunks(cut).map(data).collect();
        frames.push(trailers(tonic::Code::Ok, ""));
        let mut rx = responses(frames, 1 << 20);
        for m in &sent {
            assert_eq!(
                rx.message().await,
                Ok(Some(m.clone())),
                "cut every {cut} bytes"
            );
        }
        assert_eq!(rx.message().await, Ok(Some(DiscoveryResponse::default())));
        assert_eq!(
            rx.message().await,
            Ok(None),
            "cut every {cut} bytes: the end"
        );
    }
}

/// A response over the bound ends the stream, naming the flag; one at the bound is read.
#[tokio::test]
async fn a_response_over_the_bound_ends_the_stream() {
    let m = response("1", 1000);
    let len = m.encoded_len();
    let mut at = responses(vec![data(&frame(&m))], len);
    assert_eq!(at.message().await, Ok(Some(m.clone())));
    // The header alone is enough to refuse it: nothing of the body is awaited or allocated.
    let mut over = responses(vec![data(&frame(&m)[..5])], len - 1);
    let e = over.message().await.unwrap_err();
    assert!(
        e.contains(&format!("{len} bytes")) && e.contains("--xds-max-message-size"),
        "{e}"
    );
}

/// A compressed message (weft asks for none), a stream cut inside a message, an error status
/// in the trailers, a reset: each ends the stream with an error that says which.
#[tokio::test]
async fn a_broken_stream_says_how() {
    let whole = frame(&response("1", 10));
    let mut compressed = whole.to_vec();
    compressed[0] = 1;
    let e = responses(vec![data(&compressed)], 1 << 20).message().await;
    assert!(e.unwrap_err().contains("compressed"));

    let e = responses(vec![data(&whole[..8])], 1 << 20).message().await;
    assert!(e.unwrap_err().contains("inside a response"));
    let e = responses(vec![data(&whole[..3])], 1 << 20).message().await;
    assert!(e.unwrap_err().contains("inside a response"));

    let frames = vec![
        data(&whole),
        trailers(tonic::Code::Unavailable, "going away"),
    ];
    let mut rx = responses(frames, 1 << 20);
    assert!(rx.message().await.unwrap().is_some());
    let e = rx.message().await.unwrap_err();
    assert!(e.contains("going away") && e.contains("Unavailable"), "{e}");

    let e = responses(vec![Err(Status::cancelled("reset"))], 1 << 20)
        .message()
        .await;
    assert!(e.unwrap_err().contains("reset"));

    let mut garbage = vec![0u8];
    garbage.put_u32(2);
    garbage.extend_from_slice(&[0xff, 0xff]);
    let e = responses(vec![data(&garbage)], 1 << 20).message().await;
    assert!(e.unwrap_err().contains("does not decode"));
}

/// Whole messages then an end without trailers: a clean end, as tonic reads a 200.
#[tokio::test]
async fn an_end_without_trailers_after_whole_messages_is_clean() {
    let m = response("1", 10);
    let mut rx = responses(vec![data(&frame(&m))], 1 << 20);
    assert_eq!(rx.message().await, Ok(Some(m)));
    assert_eq!(rx.message().await, Ok(None));
}

/// A read dropped halfway through a message (its future cancelled, as `select!` does) loses
/// nothing: the next read returns the whole message. In paused time: the wait that is cut off
/// costs nothing real.
#[tokio::test(start_paused = true)]
async fn a_read_cancelled_midway_loses_nothing() {
    let m = response("1", 5000);
    let wire = frame(&m);
    let (tx, body) = tokio::sync::mpsc::channel::<Frame>(4);
    let mut rx = Responses::<DiscoveryResponse>::new(
        Body::new(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(body),
        )),
        1 << 20,
    );
    tx.send(data(&wire[..3])).await.unwrap();
    tx.send(data(&wire[3..2000])).await.unwrap();
    let waited = tokio::time::timeout(std::time::Duration::from_millis(20), rx.message()).await;
    assert!(waited.is_err(), "the message is not all there yet");
    tx.send(data(&wire[2000..])).await.unwrap();
    assert_eq!(rx.message().await, Ok(Some(m)));
}
