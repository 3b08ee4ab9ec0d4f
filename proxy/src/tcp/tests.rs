//! Opaque TCP against an in-memory upstream: what a connection's access log line says when it
//! ends cleanly, and when the client goes away while the upstream still sends.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::*;
use crate::{
    access_log::{AccessLog, Format, Sink},
    metrics::Metrics,
    transport::{
        ConnectError,
        connect::{Conn, Connect, Connecting},
    },
};

/// Hands out one in-memory connection, whose far end the test holds.
#[derive(Debug)]
struct One(Mutex<Option<DuplexStream>>);

impl Connect for One {
    fn connect(&self, addr: SocketAddr, _timeout: Duration) -> Connecting<'_> {
        let conn = self.0.lock().unwrap().take();
        Box::pin(async move {
            conn.map(Conn::Memory).ok_or(ConnectError::Io {
                addr,
                source: io::ErrorKind::ConnectionRefused.into(),
            })
        })
    }
}

#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);

impl Write for Written {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Forwards `client`'s far end to an upstream whose far end `upstream` plays, and returns the
/// connection's log line.
async fn line<F, Fut>(client: DuplexStream, upstream: F) -> serde_json::Value
where
    F: FnOnce(DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let written = Written::default();
    let dropped = prometheus::IntCounter::new("d", "d").unwrap();
    let sink = Sink::Writer(Box::new(written.clone()));
    let log = AccessLog::start(Format::Json, sink, false, 16, dropped)
        .unwrap()
        .unwrap();
    let (near, far) = duplex(64 * 1024);
    let cfg = crate::config::Cli::parse_from(["weft-proxy"]).run.upstream;
    let connector: Arc<dyn Connect> = Arc::new(One(Mutex::new(Some(near))));
    let pools = Pools::with_connector(cfg, Metrics::new(), Direction::Outbound, None, connector);
    let played = tokio::spawn(upstream(far));
    let entry = log.connection("outbound", None);
    let addr = "10.0.0.1:5432".parse().unwrap();
    forward(client, addr, None, &pools, Direction::Outbound, Some(entry)).await;
    played.await.unwrap();
    log.flush(Duration::from_secs(5));
    let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("`{text}`: {e}"))
}

#[tokio::test]
async fn a_closed_connection_says_what_it_carried() {
    let (proxy_side, mut client) = duplex(64 * 1024);
    let talk = tokio::spawn(async move {
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi there");
    });
    let v = line(proxy_side, |mut up| async move {
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        up.write_all(b"hi there").await.unwrap();
        up.shutdown().await.unwrap();
    })
    .await;
    talk.await.unwrap();
    assert_eq!(v["protocol"], "TCP");
    assert_eq!(v["bytes_received"], 5, "{v}");
    assert_eq!(v["bytes_sent"], 8, "{v}");
    assert_eq!(v["response_flags"], "-", "{v}");
}

#[tokio::test]
async fn a_connection_the_client_left_still_says_what_it_carried_and_who_left() {
    let (proxy_side, mut client) = duplex(64 * 1024);
    let talk = tokio::spawn(async move {
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi there");
        // Gone, while the upstream has more to say.
        drop(client);
    });
    let v = line(proxy_side, |mut up| async move {
        let mut got = [0u8; 5];
        up.read_exact(&mut got).await.unwrap();
        up.write_all(b"hi there").await.unwrap();
        // The client's end reaches the upstream as the end of what it sends...
        let mut rest = Vec::new();
        up.read_to_end(&mut rest).await.unwrap();
        // ...and what the upstream sends after that cannot be delivered.
        let _ = up.write_all(b"more").await;
        let _ = up.shutdown().await;
    })
    .await;
    talk.await.unwrap();
    assert_eq!(v["bytes_received"], 5, "{v}");
    assert_eq!(v["bytes_sent"], 8, "{v}");
    assert_eq!(v["response_flags"], "DC", "{v}");
}
