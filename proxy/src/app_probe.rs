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

/// Why `WEFT_APP_PROBES` was refused: it is not the JSON the injector writes, or a probe in
/// it (named) is not one the proxy may send.
#[derive(Debug, thiserror::Error)]
pub enum ProbesError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("`{path}`: {problem}")]
    Probe { path: String, problem: ProbeProblem },
}

/// What is wrong with one probe.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeProblem {
    #[error("probe paths start with /app-health/")]
    Path,
    #[error("exactly one of httpGet, tcpSocket")]
    Kind,
    #[error("`{0}` is not a request path")]
    RequestPath(String),
    #[error("header `{0}` is not valid")]
    Header(String),
}

/// Reads `WEFT_APP_PROBES`; errors name the probe.
pub fn parse(json: &str) -> Result<AppProbes, ProbesError> {
    let probes: AppProbes = serde_json::from_str(json)?;
    for (path, p) in &probes {
        let refuse = |problem| ProbesError::Probe {
            path: path.clone(),
            problem,
        };
        if !path.starts_with("/app-health/") {
            return Err(refuse(ProbeProblem::Path));
        }
        if p.http_get.is_some() == p.tcp_socket.is_some() {
            return Err(refuse(ProbeProblem::Kind));
        }
        if let Some(h) = &p.http_get
            && (!h.path.starts_with('/') || h.path.contains([' ', '\r', '\n']))
        {
            return Err(refuse(ProbeProblem::RequestPath(h.path.clone())));
        }
        for h in p.http_get.iter().flat_map(|h| &h.http_headers) {
            if h.name.is_empty()
                || !h.name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                || h.value.contains(['\r', '\n'])
            {
                return Err(refuse(ProbeProblem::Header(h.name.clone())));
            }
        }
    }
    Ok(probes)
}

/// Why the application failed a probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect to 127.0.0.1:{port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the application's answer is not HTTP")]
    NotHttp,
    #[error("the application answered {0}")]
    Status(u16),
}

/// Asks the application as the kubelet would: an HTTP GET whose status is 200-399, or a TCP
/// connection that opens, within the probe's timeout. `Err` says what failed.
pub async fn check(probe: &AppProbe) -> Result<(), ProbeFailure> {
    let timeout = Duration::from_secs(probe.timeout_seconds.max(1));
    match tokio::time::timeout(timeout, ask(probe)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeFailure::Timeout(timeout)),
    }
}

async fn ask(probe: &AppProbe) -> Result<(), ProbeFailure> {
    let connect = |port| move |source| ProbeFailure::Connect { port, source };
    if let Some(t) = &probe.tcp_socket {
        return TcpStream::connect(("127.0.0.1", t.port))
            .await
            .map(drop)
            .map_err(connect(t.port));
    }
    let h = probe
        .http_get
        .as_ref()
        .expect("parse checked: one of the two");
    let mut s = TcpStream::connect(("127.0.0.1", h.port))
        .await
        .map_err(connect(h.port))?;
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: kube-probe/weft\r\nAccept: */*\r\nConnection: close\r\n",
        h.path, h.port
    );
    for hd in &h.http_headers {
        req += &format!("{}: {}\r\n", hd.name, hd.value);
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).await?;
    // The status line is all that counts.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = s.read(&mut buf).await?;
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
        .ok_or(ProbeFailure::NotHttp)?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(ProbeFailure::Status(status))
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
        for (bad, want, why) in [
            (
                r#"{"/x": {"tcpSocket": {"port": 1}}}"#,
                ProbeProblem::Path,
                "/app-health/",
            ),
            (
                r#"{"/app-health/a/b": {}}"#,
                ProbeProblem::Kind,
                "exactly one",
            ),
            (
                r#"{"/app-health/a/b": {"httpGet": {"port": 1, "path": "/a b"}}}"#,
                ProbeProblem::RequestPath("/a b".into()),
                "not a request path",
            ),
            (
                r#"{"/app-health/a/b": {"httpGet": {"port": 1, "httpHeaders": [{"name": "a:b", "value": ""}]}}}"#,
                ProbeProblem::Header("a:b".into()),
                "not valid",
            ),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
            match err {
                ProbesError::Probe { problem, .. } => assert_eq!(problem, want, "{bad}"),
                other => panic!("{bad}: {other}"),
            }
        }
        assert!(matches!(parse("{"), Err(ProbesError::Json(_))));
    }
}
