//! Opaque TCP through the chain: echo with half-close, and a server that speaks first.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tests::{chain::Chain, tcp_peer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_half_close() {
    let server = tcp_peer::echo_server(false).await;
    let chain = Chain::start(server);
    let s = tokio::net::TcpStream::connect(chain.tcp_listener())
        .await
        .unwrap();
    let (mut r, mut w) = s.into_split();
    // Binary that is no protocol B could mistake for HTTP.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            // Half-close: we are done sending but still reading.
            w.shutdown().await.unwrap();
            w
        })
    };
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .expect("echo finishes and the server's close reaches us")
        .unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data);
    drop(writer.await.unwrap());
    assert!(
        chain
            .b
            .metric(r#"weft_protocol_detect_total{direction="inbound",protocol="opaque"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first() {
    let server = tcp_peer::echo_server(true).await;
    let chain = Chain::start(server);
    let mut s = tokio::net::TcpStream::connect(chain.tcp_listener())
        .await
        .unwrap();
    let mut banner = vec![0u8; tcp_peer::BANNER.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut banner))
        .await
        .expect("the banner arrives though the client sent nothing")
        .unwrap();
    assert_eq!(banner, tcp_peer::BANNER);
    s.write_all(b"HELO weft\r\n").await.unwrap();
    let mut echo = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"HELO weft\r\n");
}
