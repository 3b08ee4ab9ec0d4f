//! Protocol detection: reads the first bytes of an accepted connection and decides how to serve
//! it. The bytes read are kept and replayed to whatever serves the connection.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::DetectConfig;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Past this many bytes without a verdict, the connection is opaque (an HTTP/1 request line
/// longer than this would be refused by most servers anyway).
pub(crate) const MAX_DETECT_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// A TLS ClientHello; forwarded as opaque TCP.
    Tls,
    /// Anything else, including a client that sent nothing (server speaks first).
    Opaque(OpaqueReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueReason {
    /// The bytes are not HTTP or TLS.
    NotHttp,
    /// The client sent nothing within the server-first timeout.
    ServerFirst,
    /// The client sent something inconclusive and then nothing more within the detect timeout.
    Timeout,
    /// The client closed its side before a verdict.
    Eof,
}

impl Detected {
    /// The `protocol` label of `weft_protocol_detect_total`.
    pub fn label(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls => "tls",
            Detected::Opaque(_) => "opaque",
        }
    }
}

/// What the bytes so far say, if anything yet.
pub(crate) fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // TLS record: handshake (22), version 3.x.
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Opaque(OpaqueReason::NotHttp)),
        };
    }
    let mut no_headers = [];
    let mut req = httparse::Request::new(&mut no_headers);
    match req.parse(buf) {
        // The request line parsed and headers follow (we asked for none): HTTP/1.
        Err(httparse::Error::TooManyHeaders) | Ok(httparse::Status::Complete(_)) => {
            Some(Detected::Http1)
        }
        Ok(httparse::Status::Partial) if req.version.is_some() => Some(Detected::Http1),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_DETECT_BYTES => {
            Some(Detected::Opaque(OpaqueReason::NotHttp))
        }
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Detected::Opaque(OpaqueReason::NotHttp)),
    }
}

/// Reads from `io` until the protocol is known. Returns the verdict and every byte read.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    cfg: &DetectConfig,
) -> std::io::Result<(Detected, BytesMut)> {
    let mut buf = BytesMut::with_capacity(1024);
    let started = tokio::time::Instant::now();
    let deadline = started + cfg.detect_timeout;
    loop {
        let wait = if buf.is_empty() {
            (started + cfg.server_first_timeout).min(deadline)
        } else {
            deadline
        };
        let read = tokio::time::timeout_at(wait, io.read_buf(&mut buf)).await;
        match read {
            Err(_elapsed) if buf.is_empty() => {
                return Ok((Detected::Opaque(OpaqueReason::ServerFirst), buf));
            }
            Err(_elapsed) => return Ok((Detected::Opaque(OpaqueReason::Timeout), buf)),
            Ok(Ok(0)) => return Ok((Detected::Opaque(OpaqueReason::Eof), buf)),
            Ok(Ok(_)) => {
                if let Some(d) = classify(&buf) {
                    return Ok((d, buf));
                }
                if buf.capacity() == buf.len() {
                    buf.reserve(buf.len());
                }
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn cfg() -> DetectConfig {
        DetectConfig {
            detect_timeout: Duration::from_secs(10),
            server_first_timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn classifies_prefixes() {
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(Detected::Http1)
        );
        assert_eq!(classify(b"POST /x HTTP/1.0\r\n\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GET /lon"), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Detected::Tls));
        assert_eq!(
            classify(b"SSH-2.0-OpenSSH\r\n"),
            Some(Detected::Opaque(OpaqueReason::NotHttp))
        );
        assert_eq!(
            classify(b"\x00\x01binary"),
            Some(Detected::Opaque(OpaqueReason::NotHttp))
        );
        assert_eq!(
            classify(b"GET / FTP/1.1\r\n"),
            Some(Detected::Opaque(OpaqueReason::NotHttp))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_server_first_after_the_short_timeout() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let t0 = tokio::time::Instant::now();
        let (d, buf) = detect(&mut server, &cfg()).await.unwrap();
        assert_eq!(d, Detected::Opaque(OpaqueReason::ServerFirst));
        assert!(buf.is_empty());
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
        client.write_all(b"x").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn slow_partial_request_line_waits_for_the_detect_timeout() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET /slo").await.unwrap();
        let t0 = tokio::time::Instant::now();
        let (d, buf) = detect(&mut server, &cfg()).await.unwrap();
        assert_eq!(d, Detected::Opaque(OpaqueReason::Timeout));
        assert_eq!(&buf[..], b"GET /slo");
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn request_line_split_across_reads_is_http1() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            client.write_all(b"GET /a").await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            client.write_all(b" HTTP/1.1\r\n").await.unwrap();
            client
        });
        let (d, buf) = detect(&mut server, &cfg()).await.unwrap();
        assert_eq!(d, Detected::Http1);
        assert_eq!(&buf[..], b"GET /a HTTP/1.1\r\n");
        drop(task.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn eof_before_a_verdict_is_opaque() {
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let (d, _) = detect(&mut server, &cfg()).await.unwrap();
        assert_eq!(d, Detected::Opaque(OpaqueReason::Eof));
    }
}
