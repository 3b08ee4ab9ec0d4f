//! A small etcd v3 client over etcd's gRPC JSON gateway (`POST /v3/...` with JSON bodies),
//! which every etcd v3 server (3.4 and later) serves on its client port.
//!
//! Why not gRPC: etcd's protos import gogoproto and Google API annotations, and the usual Rust
//! client needs a system `protoc` to build them; the gateway needs nothing but HTTP/1.1 and
//! JSON, and covers what weft uses: ranges, puts with leases, deletes, leases with keep-alive,
//! and watches (a streaming response of one JSON object per line). Keys and values travel
//! base64-encoded; revisions and lease ids as decimal strings.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach etcd at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("etcd at {endpoint} answered {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("etcd sent something unexpected: {0}")]
    Protocol(String),
    /// The revision a watch asked for has been compacted away: reload everything.
    #[error("revision {requested} was compacted (oldest kept: {compact_revision})")]
    Compacted {
        requested: i64,
        compact_revision: i64,
    },
    #[error("the watch ended")]
    WatchEnded,
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    /// The value as text (with U+FFFD where it is not UTF-8: see `binary`).
    pub value: String,
    /// The value is not UTF-8 text: whoever reads it as a document should refuse it (one bad
    /// value must not fail the whole read or watch).
    pub binary: bool,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: String, mod_revision: i64 },
}

/// A client for one etcd cluster: requests go to the first endpoint that answers.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<String>,
    timeout: Duration,
}

/// The end of the key range that holds every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn text(v: &Value) -> Result<String, Error> {
    let s = v.as_str().unwrap_or("");
    let raw = B64
        .decode(s)
        .map_err(|e| Error::Protocol(format!("bad base64 `{s}`: {e}")))?;
    String::from_utf8(raw).map_err(|_| Error::Protocol("a key or value is not UTF-8".into()))
}

fn key_value(kv: &Value) -> Result<KeyValue, Error> {
    let s = kv["value"].as_str().unwrap_or("");
    let raw = B64
        .decode(s)
        .map_err(|e| Error::Protocol(format!("bad base64 `{s}`: {e}")))?;
    let (value, binary) = match String::from_utf8(raw) {
        Ok(v) => (v, false),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
    };
    Ok(KeyValue {
        key: text(&kv["key"])?,
        value,
        binary,
        mod_revision: int(&kv["mod_revision"]),
        lease: int(&kv["lease"]),
    })
}

impl Client {
    /// `endpoints`: `host:port` or `http://host:port`, tried in order.
    pub fn new(endpoints: &[String]) -> Client {
        Client {
            endpoints: endpoints
                .iter()
                .map(|e| {
                    e.trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_string()
                })
                .collect(),
            timeout: Duration::from_secs(5),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Sends `body` to `path` on the first endpoint that answers; returns the response.
    async fn send(&self, path: &str, body: &Value) -> Result<hyper::Response<Incoming>, Error> {
        let mut last = None;
        for ep in &self.endpoints {
            match self.send_to(ep, path, body).await {
                Ok(r) => return Ok(r),
                Err(e @ Error::Unreachable { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(Error::Unreachable {
            endpoint: "(none)".into(),
            reason: "no etcd endpoint configured".into(),
        }))
    }

    async fn send_to(
        &self,
        ep: &str,
        path: &str,
        body: &Value,
    ) -> Result<hyper::Response<Incoming>, Error> {
        let unreachable = |reason: String| Error::Unreachable {
            endpoint: ep.to_string(),
            reason,
        };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(ep)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let req = hyper::Request::post(path)
                .header("host", ep)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .map_err(|e| Error::Protocol(e.to_string()))?;
            let rsp = tx
                .send_request(req)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            Ok::<_, Error>(rsp)
        };
        let rsp = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))??;
        if rsp.status().is_success() {
            return Ok(rsp);
        }
        let status = rsp.status().as_u16();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(Error::Status {
            endpoint: ep.to_string(),
            status,
            body,
        })
    }

    /// A request with a JSON answer.
    async fn call(&self, path: &str, body: Value) -> Result<Value, Error> {
        let rsp = self.send(path, &body).await?;
        let bytes = tokio::time::timeout(self.timeout, rsp.into_body().collect())
            .await
            .map_err(|_| Error::Protocol("the answer did not arrive in time".into()))?
            .map_err(|e| Error::Protocol(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Every key under `prefix`, and the store's revision they were read at.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), Error> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix))}),
            )
            .await?;
        let kvs = v["kvs"]
            .as_array()
            .map(|a| a.iter().map(key_value).collect::<Result<Vec<_>, _>>())
            .transpose()?
            .unwrap_or_default();
        Ok((kvs, int(&v["header"]["revision"])))
    }

    /// Writes `key`; with a lease, the key goes when the lease does.
    pub async fn put(&self, key: &str, value: &str, lease: Option<i64>) -> Result<(), Error> {
        let mut body = json!({"key": B64.encode(key), "value": B64.encode(value)});
        if let Some(l) = lease {
            body["lease"] = Value::String(l.to_string());
        }
        self.call("/v3/kv/put", body).await.map(drop)
    }

    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.call("/v3/kv/deleterange", json!({"key": B64.encode(key)}))
            .await
            .map(drop)
    }

    /// A new lease of `ttl` seconds; returns its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, Error> {
        let v = self.call("/v3/lease/grant", json!({"TTL": ttl})).await?;
        match int(&v["ID"]) {
            0 => Err(Error::Protocol(format!("no lease id in {v}"))),
            id => Ok(id),
        }
    }

    /// Renews a lease once; returns its TTL now, 0 if it has expired (or never existed).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, Error> {
        let rsp = self
            .send("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))
            .await?;
        // The gateway streams keep-alive answers; the first line is this one's.
        let mut lines = Lines::new(rsp.into_body());
        let line = tokio::time::timeout(self.timeout, lines.next())
            .await
            .map_err(|_| Error::Protocol("no keep-alive answer in time".into()))??;
        Ok(int(&line["result"]["TTL"]))
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), Error> {
        self.call("/v3/lease/revoke", json!({"ID": lease.to_string()}))
            .await
            .map(drop)
    }

    /// Watches every key under `prefix` from `start_revision` on.
    pub async fn watch_prefix(&self, prefix: &str, start_revision: i64) -> Result<Watch, Error> {
        let body = json!({"create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let rsp = self.send("/v3/watch", &body).await?;
        let mut w = Watch {
            lines: Lines::new(rsp.into_body()),
            requested: start_revision,
        };
        // The first message confirms the watch (or says the revision is gone).
        let first = w.lines.next().await?;
        w.check(&first)?;
        Ok(w)
    }
}

/// A watch: batches of events, each with the revision it brings the store to.
pub struct Watch {
    lines: Lines,
    requested: i64,
}

impl Watch {
    fn check(&self, msg: &Value) -> Result<(), Error> {
        if let Some(e) = msg.get("error") {
            return Err(Error::Protocol(format!("watch failed: {e}")));
        }
        let r = &msg["result"];
        let compact = int(&r["compact_revision"]);
        if compact > 0 {
            return Err(Error::Compacted {
                requested: self.requested,
                compact_revision: compact,
            });
        }
        if r["canceled"] == true {
            return Err(Error::Protocol(format!(
                "the watch was cancelled: {}",
                r["cancel_reason"]
            )));
        }
        Ok(())
    }

    /// The next batch of events and the store revision after it.
    pub async fn next(&mut self) -> Result<(Vec<Event>, i64), Error> {
        loop {
            let msg = self.lines.next().await?;
            self.check(&msg)?;
            let r = &msg["result"];
            let Some(events) = r["events"].as_array() else {
                continue; // progress notification
            };
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                let kv = &e["kv"];
                out.push(if e["type"] == "DELETE" {
                    Event::Delete {
                        key: text(&kv["key"])?,
                        mod_revision: int(&kv["mod_revision"]),
                    }
                } else {
                    Event::Put(key_value(kv)?)
                });
            }
            return Ok((out, int(&r["header"]["revision"])));
        }
    }
}

/// One JSON object per line of a streaming response.
struct Lines {
    body: Incoming,
    buf: BytesMut,
}

impl Lines {
    fn new(body: Incoming) -> Self {
        Lines {
            body,
            buf: BytesMut::new(),
        }
    }

    async fn next(&mut self) -> Result<Value, Error> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(i + 1);
                let line = &line[..i];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line).map_err(|e| Error::Protocol(e.to_string()));
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(mut d) = f.into_data() {
                        while d.has_remaining() {
                            let chunk = d.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            d.advance(n);
                        }
                    }
                }
                Some(Err(e)) => return Err(Error::Protocol(e.to_string())),
                None if self.buf.iter().any(|b| !b.is_ascii_whitespace()) => {
                    let rest = self.buf.split();
                    return serde_json::from_slice(&rest)
                        .map_err(|e| Error::Protocol(e.to_string()));
                }
                None => return Err(Error::WatchEnded),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/weft/"), b"/weft0");
        assert_eq!(prefix_end("a~"), b"a\x7f");
        assert_eq!(prefix_end(""), [0]);
    }
}
