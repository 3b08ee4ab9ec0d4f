//! The admin server (loopback: /config_dump, /shutdown, /log_level) and the probe server
//! (/live, /ready, /metrics). Both run on the control runtime (`Control` in `lib.rs`), a thread
//! of its own, so that a busy data plane cannot starve them.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{
    Method, Request, Response, StatusCode,
    header::{CONTENT_TYPE, HOST},
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{
    discovery::Shared, drain::Drain, log::LogHandle, metrics::Metrics, table::SharedTable,
};

/// What the admin and probe endpoints read and act on.
#[derive(Debug)]
pub struct AdminState {
    pub table: SharedTable,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub log: Option<Arc<LogHandle>>,
    /// Set once every listener is bound and a table is loaded.
    pub ready: AtomicBool,
    /// The control-plane connection, when there is one.
    pub xds: Option<Arc<Shared>>,
    /// `/ready` waits for the first configuration from the control plane.
    pub ready_requires_config: bool,
    /// The workload identity, when mutual TLS is on.
    pub identity: Option<Arc<crate::identity::Identity>>,
    pub ready_requires_identity: bool,
    pub listeners: Vec<(String, SocketAddr)>,
    /// Endpoint host names and their answers.
    pub resolver: Arc<crate::resolve::Resolver>,
    /// The application's probes, asked at `/app-health/...`.
    pub app_probes: crate::app_probe::AppProbes,
}

type Rsp = Response<Full<Bytes>>;

/// Set on a request's connection to start draining once that connection has closed.
#[derive(Debug, Clone)]
struct DrainOnClose(Arc<AtomicBool>);

fn text(status: StatusCode, body: impl Into<Bytes>) -> Rsp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().unwrap());
    r
}

/// How long a client of the admin or probe server may take to send a request's headers, and
/// the longest a connection may stay open without a request.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Connections each of the two servers holds at once; a new one beyond takes the place of the
/// oldest, which is closed (`weft_core::slots`): the probe port is reachable from the network
/// and never captured, and whoever keeps connections busy there must not lock the kubelet out.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves `listener` with `route` until the process exits.
pub async fn serve<F, Fut>(listener: TcpListener, state: Arc<AdminState>, route: F)
where
    F: Fn(Arc<AdminState>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Rsp> + Send + 'static,
{
    let slots = weft_core::slots::Slots::new(MAX_CONNECTIONS);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = slots.take();
        let state = state.clone();
        tokio::spawn(async move {
            let drain_after = Arc::new(AtomicBool::new(false));
            let (st, flag) = (state.clone(), drain_after.clone());
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let state = st.clone();
                req.extensions_mut().insert(DrainOnClose(flag.clone()));
                async move { Ok::<_, Infallible>(route(state, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = slot.evicted() => {}
            }
            // Only now, with the answer to `/shutdown` written, may the process go away.
            if drain_after.load(Ordering::Acquire) {
                state.drain.start();
            }
        });
    }
}

/// Whether a request to the admin server names it by a loopback host (or names no host): a
/// page another site's script sends to a name that resolves to 127.0.0.1 (DNS rebinding)
/// carries that name, and is refused.
fn addressed_to_loopback<B>(req: &Request<B>) -> bool {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| req.headers().get(HOST).map(|h| h.as_bytes()));
    host.is_none_or(|h| std::str::from_utf8(h).is_ok_and(weft_core::address::is_loopback_authority))
}

/// `/config_dump`'s body: the table in force and the state around it, as JSON.
fn config_dump(state: &AdminState) -> Vec<u8> {
    let table = state.table.load();
    let dump = serde_json::json!({
        "version": &*table.version,
        "generation": table.generation,
        "listeners": state.listeners.iter().map(|(n, a)| (n.clone(), a.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        "table": &table.source,
        "services": table.describe(),
        "xds": state.xds.as_ref().map(|x| x.status()),
        "identity": state.identity.as_ref().map(|id| id.describe()),
        "endpoint_dns": (!table.dns_names().is_empty()).then(|| state.resolver.describe()),
    });
    serde_json::to_vec_pretty(&dump).unwrap_or_default()
}

/// Admin endpoints. This server is on loopback only (checked at start): it can stop the proxy.
pub async fn admin(state: Arc<AdminState>, req: Request<Incoming>) -> Rsp {
    if !addressed_to_loopback(&req) {
        return text(
            StatusCode::FORBIDDEN,
            "the admin server answers requests for localhost, 127.0.0.1 or [::1] only (Host)\n",
        );
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/config_dump") => {
            // Off the control thread: on a large mesh writing the whole table out takes longer
            // than an xDS apply, which would wait for it.
            let state = state.clone();
            let Ok(dump) = tokio::task::spawn_blocking(move || config_dump(&state)).await else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "config dump failed\n");
            };
            let mut r = text(StatusCode::OK, dump);
            r.headers_mut()
                .insert(CONTENT_TYPE, "application/json".parse().unwrap());
            r
        }
        (&Method::POST, "/shutdown") => {
            tracing::info!("shutdown requested through the admin server");
            // Draining starts when this connection closes, after the answer is written
            // (otherwise the process could exit before the caller hears back).
            if let Some(DrainOnClose(flag)) = req.extensions().get::<DrainOnClose>() {
                flag.store(true, Ordering::Release);
            }
            let mut r = text(StatusCode::OK, "draining\n");
            r.headers_mut()
                .insert(http::header::CONNECTION, "close".parse().unwrap());
            r
        }
        (&Method::GET, "/log_level") => match &state.log {
            Some(l) => text(StatusCode::OK, l.level() + "\n"),
            None => text(StatusCode::NOT_FOUND, "logging is not configured\n"),
        },
        (&Method::PUT | &Method::POST, "/log_level") => {
            let Some(log) = state.log.clone() else {
                return text(StatusCode::NOT_FOUND, "logging is not configured\n");
            };
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read body: {e}\n")),
            };
            let filter = String::from_utf8_lossy(&body);
            match log.set_level(&filter) {
                Ok(()) => {
                    tracing::info!(filter = %filter.trim(), "log level changed");
                    text(StatusCode::OK, format!("{}\n", filter.trim()))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, e + "\n"),
            }
        }
        (_, "/config_dump" | "/shutdown" | "/log_level") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: GET /config_dump, POST /shutdown, GET|PUT /log_level\n",
        ),
    }
}

/// Probe and metrics endpoints.
pub async fn probes(state: Arc<AdminState>, req: Request<Incoming>) -> Rsp {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => {
            let waiting =
                state.ready_requires_config && state.xds.as_ref().is_some_and(|x| !x.complete());
            if state.drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if waiting {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for the first configuration from the control plane\n",
                )
            } else if state.ready_requires_identity
                && state.identity.as_ref().is_some_and(|id| !id.valid())
            {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "mutual TLS is on and no valid workload certificate is held\n",
                )
            } else if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            if let Some(id) = &state.identity {
                state.metrics.tls.identity(
                    id.expires(),
                    id.renewals.load(Ordering::Relaxed),
                    id.failures.load(Ordering::Relaxed),
                );
            }
            let mut r = text(StatusCode::OK, state.metrics.render());
            r.headers_mut().insert(
                CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8".parse().unwrap(),
            );
            r
        }
        (&Method::GET, path) if path.starts_with("/app-health/") => {
            match state.app_probes.get(path) {
                Some(probe) => match crate::app_probe::check(probe).await {
                    Ok(()) => text(StatusCode::OK, "ok\n"),
                    Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                },
                None => text(StatusCode::NOT_FOUND, "no such application probe\n"),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: /live, /ready, /metrics, /app-health/...\n",
        ),
    }
}

/// The sidecar did not say it was ready in time: what it last answered, or why it could not
/// be asked.
#[derive(Debug, thiserror::Error)]
#[error("{addr} was not ready after {timeout:?}: {last}")]
pub struct NotReady {
    pub addr: std::net::SocketAddr,
    pub timeout: std::time::Duration,
    pub last: String,
}

/// `weft-proxy wait`: asks the probe server's `/ready` until it answers 200 or `cfg.timeout`
/// passes. Blocking and runtime-free: it runs in a postStart hook beside the sidecar.
pub fn wait_ready(cfg: &crate::config::WaitConfig) -> Result<(), NotReady> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + cfg.timeout;
    let step = cfg.interval.max(std::time::Duration::from_millis(10));
    let mut last;
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&cfg.probe_addr, step * 5)?;
            s.set_read_timeout(Some(step * 5))?;
            write!(
                s,
                "GET /ready HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                cfg.probe_addr
            )?;
            let mut rsp = String::new();
            s.take(4096).read_to_string(&mut rsp)?;
            Ok(rsp)
        })();
        match attempt {
            Ok(rsp) if rsp.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok(rsp) => {
                last = rsp
                    .split_once("\r\n\r\n")
                    .map_or(rsp.as_str(), |(_, body)| body)
                    .trim()
                    .to_string();
            }
            Err(e) => last = e.to_string(),
        }
        if std::time::Instant::now() + step > deadline {
            return Err(NotReady {
                addr: cfg.probe_addr,
                timeout: cfg.timeout,
                last,
            });
        }
        std::thread::sleep(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_loopback_hosts_reach_the_admin_endpoints() {
        assert!(addressed_to_loopback(&get(
            "/config_dump",
            Some("127.0.0.1:15000")
        )));
        assert!(addressed_to_loopback(&get(
            "/config_dump",
            Some("localhost:15000")
        )));
        assert!(addressed_to_loopback(&get(
            "/config_dump",
            Some("[::1]:15000")
        )));
        assert!(
            addressed_to_loopback(&get("/config_dump", None)),
            "HTTP/1.0"
        );
        // DNS rebinding: a name that resolves to 127.0.0.1 is still not a loopback name.
        assert!(!addressed_to_loopback(&get(
            "/shutdown",
            Some("rebind.example:15000")
        )));
        assert!(!addressed_to_loopback(&get(
            "/shutdown",
            Some("10.0.0.7:15000")
        )));
        // An absolute-form target names the host too, whatever Host says.
        assert!(!addressed_to_loopback(&get(
            "http://rebind.example:15000/shutdown",
            Some("127.0.0.1:15000")
        )));
    }
}
