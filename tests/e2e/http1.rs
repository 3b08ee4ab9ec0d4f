//! HTTP/1.1 through the chain with a hyper client and a raw socket.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tests::{
    chain::{Chain, TempDir},
    http_peer,
    proxy::Proxy,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_chunked_bodies_and_hop_by_hop_headers() {
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let tcp = tokio::net::TcpStream::connect(chain.outbound())
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // Request `i`'s chunked body of `n` chunks (one body type for every request on `tx`).
    let chunked = |i: usize, n: usize| {
        StreamBody::new(futures_util::stream::iter((0..n).map(move |c| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(format!("r{i}c{c};"))))
        })))
    };
    for i in 0..3 {
        // A chunked upload (no content-length), echoed back.
        let req = Request::post("/echo")
            .header("host", "echo.test:8080")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "must not pass")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-end-to-end", "kept")
            .header("te", "gzip")
            .body(chunked(i, 4))
            .unwrap();
        tx.ready().await.unwrap();
        let rsp = tx.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        let seen = rsp.headers()["x-seen-headers"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(seen.contains("x-end-to-end"), "{seen}");
        for hop in [
            "x-hop",
            "keep-alive",
            "proxy-connection",
            "connection",
            "te",
        ] {
            assert!(!seen.split(',').any(|h| h == hop), "{hop} passed: {seen}");
        }
        assert_eq!(rsp.headers()["x-seen-host"], "echo.test:8080");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("r{i}c0;r{i}c1;r{i}c2;r{i}c3;"));
    }
    // The response's hop-by-hop headers stop at each hop too.
    let req = Request::get("/hop-headers")
        .header("host", "echo.test:8080")
        .body(chunked(0, 0))
        .unwrap();
    tx.ready().await.unwrap();
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["x-end-to-end-rsp"], "kept");
    for hop in ["x-hop-rsp", "keep-alive", "proxy-connection", "connection"] {
        assert!(
            !rsp.headers().contains_key(hop),
            "{hop} passed: {:?}",
            rsp.headers()
        );
    }
    assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "hop");
    // All four requests rode one client connection to A, and one upstream connection from B.
    assert_eq!(
        peer.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        chain
            .a
            .metric(r#"weft_tcp_accepted_total{direction="outbound"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_passes_and_proxy_errors_are_marked() {
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let rsp = http_peer::request_h1(
        chain.outbound(),
        Request::get("/status/503").header("host", "echo.test:8080"),
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(rsp.status(), 503);
    assert!(rsp.headers().get("weft-proxy-error").is_none());

    let rsp = http_peer::request_h1(
        chain.outbound(),
        Request::get("/").header("host", "nowhere.test"),
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(rsp.status(), 404);
    assert_eq!(
        rsp.headers()["weft-proxy-error"],
        "no service for authority `nowhere.test`"
    );
}

/// An endpoint that never answers the connection attempt (its accept queue is full, so the
/// kernel drops the SYN): the request fails after `--connect-timeout` with a 503 that says so,
/// and the timeout is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_connect_times_out() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    let full = loop {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(s) => held.push(s.unwrap()),
            Err(_) => break true,
        }
        if held.len() > 16 {
            break false;
        }
    };
    assert!(full, "the accept queue never filled");
    let dir = TempDir::new("connect-timeout");
    let table = dir.write(
        "table.yaml",
        &format!(
            "services:\n  - name: silent.test\n    port: 80\n    endpoints:\n      - address: {addr}\n"
        ),
    );
    let proxy = Proxy::start(&[
        "--config",
        table.to_str().unwrap(),
        "--connect-timeout",
        "300ms",
    ]);
    let rsp = tokio::time::timeout(
        Duration::from_secs(10),
        http_peer::request_h1(
            proxy.addr("outbound"),
            Request::get("/").header("host", "silent.test"),
            String::new(),
        ),
    )
    .await
    .expect("an answer within 10 s")
    .unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(
        rsp.headers()["weft-proxy-error"],
        format!("connect to {addr}: timed out after 300ms").as_str()
    );
    assert_eq!(
        proxy
            .metric(r#"weft_upstream_connect_errors_total{direction="outbound",reason="timeout"}"#)
            .await,
        1.0
    );
}

/// Opens an upgraded tunnel through the chain and checks it echoes.
async fn open_tunnel(chain: &Chain) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(chain.outbound())
        .await
        .unwrap();
    s.write_all(b"GET /upgrade HTTP/1.1\r\nHost: echo.test:8080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    echo(&mut s, "ping").await;
    s
}

async fn echo(s: &mut tokio::net::TcpStream, msg: &str) {
    s.write_all(msg.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, msg.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_passes_through() {
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    let mut s = open_tunnel(&chain).await;
    echo(&mut s, "a longer message after the handshake").await;
    let open = r#"weft_tcp_open_connections{direction="outbound"}"#;
    assert_eq!(
        chain.a.metric(open).await,
        1.0,
        "the tunnel counts as an open connection"
    );
}

/// A real WebSocket client and server (tungstenite) through the chain: the handshake
/// (`Sec-WebSocket-Key`/`-Accept`, checked by both ends), text and binary messages, ping and
/// pong, and the closing handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_the_chain() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        // Echoes data messages; tungstenite answers pings and closes by itself.
        while let Some(Ok(m)) = ws.next().await {
            if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                break;
            }
        }
    });
    let chain = Chain::start(server);
    let tcp = tokio::net::TcpStream::connect(chain.outbound())
        .await
        .unwrap();
    let (mut ws, rsp) = tokio_tungstenite::client_async("ws://echo.test:8080/chat", tcp)
        .await
        .unwrap();
    assert_eq!(rsp.status(), 101);
    let big = Bytes::from(vec![0xa5u8; 256 * 1024]);
    for m in [
        Message::text("hello through two sidecars"),
        Message::binary(big.clone()),
        Message::text("ünïcode ✓"),
    ] {
        ws.send(m.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the echo within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(back, m);
    }
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Pong(Bytes::from_static(b"are you there")));
    ws.close(None).await.unwrap();
    // The server's close frame comes back, then the stream ends.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(_))) => continue,
            None | Some(Err(_)) => break,
            Some(Ok(m)) => panic!("unexpected after close: {m:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_tunnel_survives_drain() {
    let peer = http_peer::server("s1").await;
    let mut chain = Chain::start(peer.addr);
    let mut s = open_tunnel(&chain).await;
    chain.a.signal("TERM");
    weft_tests::until_refused(chain.outbound()).await;
    // Draining, but the tunnel in flight still works...
    echo(&mut s, "still there during the drain").await;
    assert!(
        chain.a.wait_exit(Duration::from_millis(200)).is_none(),
        "the proxy waits for the tunnel"
    );
    // ...and once it closes, the proxy finishes draining and exits cleanly.
    drop(s);
    let status = chain
        .a
        .wait_exit(Duration::from_secs(20))
        .expect("proxy exits after the tunnel");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_limited_and_reused() {
    let peer = http_peer::server("s1").await;
    let dir = weft_tests::chain::TempDir::new("h1limit");
    let cfg = dir.write(
        "mesh.yaml",
        &format!(
            "services:\n  - name: slow.test\n    port: 80\n    endpoints:\n      - address: {}\n",
            peer.addr
        ),
    );
    let proxy = weft_tests::proxy::Proxy::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--http1-max-connections-per-endpoint",
        "2",
    ]);
    // 12 clients at once, each on its own connection, each request taking 100 ms upstream.
    let calls = (0..12).map(|_| {
        http_peer::request_h1(
            proxy.addr("outbound"),
            Request::get("/delay?ms=100").header("host", "slow.test"),
            String::new(),
        )
    });
    let rsps = futures_util::future::join_all(calls).await;
    assert!(
        rsps.iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status() == 200))
    );
    // They queued for two upstream connections, which were reused.
    assert_eq!(
        peer.state
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        12
    );
    assert_eq!(
        peer.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_the_authority_that_was_routed() {
    let peer = http_peer::server("s1").await;
    let chain = Chain::start(peer.addr);
    // Absolute-form target naming one service, Host naming another.
    let rsp = weft_tests::raw_exchange(
        chain.outbound(),
        b"GET http://echo.test:8080/echo HTTP/1.1\r\nHost: evil.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(rsp.starts_with("http/1.1 200"), "{rsp}");
    assert!(rsp.contains("x-seen-host: echo.test:8080\r\n"), "{rsp}");

    // Two Host headers: ambiguous, refused.
    let rsp = weft_tests::raw_exchange(
        chain.outbound(),
        b"GET /echo HTTP/1.1\r\nHost: echo.test:8080\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert_eq!(
        peer.state
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// A server that answers every request on each connection with `response`, after reading the
/// request's head; returns its address.
async fn canned_upstream(response: &'static str) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                        _ => return,
                    }
                }
                let _ = s.write_all(response.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// An upstream HTTP/1.1 response framed by `Transfer-Encoding: chunked` that also carries a
/// (stale) `Content-Length` reaches HTTP/1.1 and HTTP/2 clients whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_content_length_beside_chunked_framing_does_not_cut_the_body() {
    let upstream = canned_upstream(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\nConnection: close\r\n\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
    )
    .await;
    // The upstream speaks HTTP/1.1 whatever the client does.
    let dir = TempDir::new("te-cl");
    let table = dir.write(
        "table.yaml",
        &format!(
            "services:\n  - name: app\n    port: 80\n    protocol: http1\n    endpoints: [{{address: {upstream}}}]\n"
        ),
    );
    let proxy = Proxy::start(&["--config", table.to_str().unwrap()]);
    let rsp = http_peer::request_h1(
        proxy.addr("outbound"),
        Request::get("/").header("host", "app:80"),
        String::new(),
    )
    .await
    .unwrap();
    assert!(rsp.headers().get("content-length").is_none(), "{rsp:?}");
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"abcdefghijklmnopqrstuvwxyz");

    let mut h2 = http_peer::h2_client(proxy.addr("outbound")).await;
    let rsp = h2
        .send_request(
            Request::get("http://app:80/")
                .body(http_peer::body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"abcdefghijklmnopqrstuvwxyz");
}

/// GET requests with a body of unknown length keep it on the way to an HTTP/1.1 upstream (from
/// an HTTP/1.1 client's chunked body, and from an HTTP/2 client's DATA frames).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_of_unknown_length_is_relayed_whole() {
    let peer = http_peer::server("s1").await;
    let dir = TempDir::new("get-body");
    let table = dir.write(
        "table.yaml",
        &format!(
            "services:\n  - name: app\n    port: 80\n    protocol: http1\n    endpoints: [{{address: {}}}]\n",
            peer.addr
        ),
    );
    let proxy = Proxy::start(&["--config", table.to_str().unwrap()]);
    let inbound = proxy.addr("outbound");
    let mut tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    tcp.write_all(
        b"GET /echo HTTP/1.1\r\nHost: app:80\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out).to_string();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("hello") && out.contains(" world"),
        "the body was dropped:\n{out}"
    );

    let frames =
        futures_util::stream::iter(["from ", "h2"].map(|s| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(s.as_bytes())))
        }));
    let req = Request::get("http://app:80/echo")
        .body(StreamBody::new(frames))
        .unwrap();
    let (mut tx, conn) = {
        let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
        hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await
        .unwrap()
    };
    tokio::spawn(conn);
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.headers()["x-seen-version"], "HTTP/1.1");
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"from h2");
}

/// Only allow-listed upgrades are tunnelled: `h2c` is declined (the offer removed, the request
/// served as plain HTTP/1.1); an upstream switching protocols unasked gets a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_upgrades_are_tunnelled() {
    let peer = http_peer::server("s1").await;
    let proxy = Proxy::start(&["--inbound-forward", &peer.addr.to_string()]);
    let rsp = http_peer::request_h1(
        proxy.addr("inbound"),
        Request::get("/echo")
            .header("host", "app")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(rsp.status(), 200, "{rsp:?}");
    let seen = rsp.headers()["x-seen-headers"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        !seen.contains("upgrade") && !seen.contains("http2-settings"),
        "the h2c offer reached the upstream: {seen}"
    );

    let switching = canned_upstream(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(&["--inbound-forward", &switching.to_string()]);
    let rsp = http_peer::request_h1(
        proxy.addr("inbound"),
        Request::get("/").header("host", "app"),
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(rsp.status(), 502, "{rsp:?}");
}
