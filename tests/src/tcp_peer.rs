//! TCP peers: an echo server that honours half-close, and a server-speaks-first one.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// The first line a server-first peer sends.
pub const BANNER: &[u8] = b"220 weft-test ready\r\n";

/// Echoes every byte back; when the client shuts down its write half, the server finishes
/// echoing and shuts down its own. With `banner`, it speaks first.
pub async fn echo_server(banner: bool) -> SocketAddr {
    echo_server_on("127.0.0.1:0".parse().unwrap(), banner).await
}

/// The echo server on `addr`.
pub async fn echo_server_on(addr: SocketAddr, banner: bool) -> SocketAddr {
    let l = TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if banner && s.write_all(BANNER).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}
