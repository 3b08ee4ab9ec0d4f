//! The application's own health probes, asked by the probe server on the kubelet's behalf.
//!
//! The kubelet probes a pod in plaintext from the node. With strict mutual TLS on the inbound
//! side such a probe would be refused, so the injector points the application's HTTP and TCP
//! probes at the sidecar's probe port (`/app-health/<container>/<kind>` on 15020, which is never
//! captured) and hands the originals over in `WEFT_APP_PROBES`. The probe server then checks
//! the application over loopback and answers 200 or 503, as the kubelet would judge it.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One rewritten probe, as the injector writes it (the Kubernetes probe's own field names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProbe {
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    #[serde(default)]
    pub tcp_socket: Option<TcpSocket>,
    /// The kubelet's timeout for this probe (Kubernetes' default is 1 s).
    #[serde(default = "one")]
    pub timeout_seconds: u64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGet {
    pub port: u16,
    #[serde(default = "slash")]
    pub path: String,
    #[serde(default)]
    pub http_headers: Vec<Header>,
}

fn slash() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSocket {
    pub port: u16,
}

/// The probes by the path the kubelet now asks (`/app-health/web/readyz`).
pub type AppProbes = BTreeMap<String, AppProbe>;

/// Reads `WEFT_APP_PROBES`; errors name the probe.
pub fn parse(json: &str) -> Result<AppProbes, String> {
    let probes: AppProbes = serde_json::from_str(json).map_err(|e| e.to_string())?;
    for (path, p) in &probes {
        if !path.starts_with("/app-health/") {
            return Err(format!("`{path}`: probe paths start with /app-health/"));
        }
        if p.http_get.is_some() == p.tcp_socket.is_some() {
            return Err(format!("`{path}`: exactly one of httpGet, tcpSocket"));
        }
        if let Some(h) = &p.http_get
            && (!h.path.starts_with('/') || h.path.contains([' ', '\r', '\n']))
        {
            return Err(format!("`{path}`: `{}` is not a request path", h.path));
        }
        for h in p.http_get.iter().flat_map(|h| &h.http_headers) {
            if h.name.is_empty()
                || !h.name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                || h.value.contains(['\r', '\n'])
            {
                return Err(format!("`{path}`: header `{}` is not valid", h.name));
            }
        }
    }
    Ok(probes)
}

/// Asks the application as the kubelet would: an HTTP GET whose status is 200-399, or a TCP
/// connection that opens, within the probe's timeout. `Err` says what failed.
pub async fn check(probe: &AppProbe) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1));
    match tokio::time::timeout(timeout, ask(probe)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn ask(probe: &AppProbe) -> Result<(), String> {
    if let Some(t) = &probe.tcp_socket {
        return TcpStream::connect(("127.0.0.1", t.port))
            .await
            .map(drop)
            .map_err(|e| format!("connect to 127.0.0.1:{}: {e}", t.port));
    }
    let h = probe
        .http_get
        .as_ref()
        .expect("parse checked: one of the two");
    let mut s = TcpStream::connect(("127.0.0.1", h.port))
        .await
        .map_err(|e| format!("connect to 127.0.0.1:{}: {e}", h.port))?;
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: kube-probe/weft\r\nAccept: */*\r\nConnection: close\r\n",
        h.path, h.port
    );
    for hd in &h.http_headers {
        req += &format!("{}: {}\r\n", hd.name, hd.value);
    }
    req += "\r\n";
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // The status line is all that counts.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "the application's answer is not HTTP".to_string())?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("the application answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_checks_each_probe() {
        let ok = parse(
            r#"{"/app-health/web/readyz": {"httpGet": {"port": 8080, "path": "/healthz",
                "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 3},
               "/app-health/db/livez": {"tcpSocket": {"port": 5432}}}"#,
        )
        .unwrap();
        assert_eq!(ok["/app-health/web/readyz"].timeout_seconds, 3);
        assert_eq!(ok["/app-health/db/livez"].timeout_seconds, 1);
        for (bad, why) in [
            (r#"{"/x": {"tcpSocket": {"port": 1}}}"#, "/app-health/"),
            (r#"{"/app-health/a/b": {}}"#, "exactly one"),
            (
                r#"{"/app-health/a/b": {"httpGet": {"port": 1, "path": "/a b"}}}"#,
                "not a request path",
            ),
            (
                r#"{"/app-health/a/b": {"httpGet": {"port": 1, "httpHeaders": [{"name": "a:b", "value": ""}]}}}"#,
                "not valid",
            ),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
