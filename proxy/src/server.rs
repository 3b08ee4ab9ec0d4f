//! One listener's accept loop and the life of each accepted connection:
//! accept -> count -> detect -> (inbound: mutual TLS, authorization) -> HTTP proxy or opaque
//! TCP.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::{TcpListener, TcpStream},
};

mod opaque;

use crate::{
    access_log::Flags,
    config::{DetectConfig, InboundMode, MtlsConfig},
    identity::Mtls,
    inbound::{Delivery, Peer},
    metrics::{AuthzProtocol, Direction, Metrics, OpenConn, TargetMetrics},
    relay::{ConnInfo, HttpProxy},
    table::{Protocol, SharedTable},
    tcp,
    tls::{self, Alpn, Hello},
    transport::{
        self,
        detect::{self, Detected},
        io::{CountedIo, PrefixedIo},
        local::LocalAddrs,
        orig_dst,
    },
};

/// The inbound side's mutual TLS: the identity, and the mode per destination port.
#[derive(Debug)]
pub struct InboundTls {
    pub mtls: Arc<Mtls>,
    pub cfg: MtlsConfig,
}

/// The `target` label of inbound traffic to a destination no service declares.
pub const UNDECLARED_TARGET: &str = "other";

/// A ClientHello larger than this is not a sidecar's.
const MAX_HELLO: usize = 16 * 1024;

/// Where opaque TCP from a listener goes.
#[derive(Debug, Clone)]
pub enum TcpTarget {
    /// A fixed address (inbound: the local application).
    Addr(SocketAddr),
    /// An endpoint of a service in the table (an `--outbound-tcp` listener).
    Service(Arc<str>),
    /// Nowhere: such connections are closed (the plain outbound listener has no destination for
    /// non-HTTP traffic until transparent capture supplies the original one).
    None,
}

#[derive(Debug)]
pub struct Listener {
    pub http: Arc<HttpProxy>,
    pub tcp: TcpTarget,
    pub detect: DetectConfig,
    pub metrics: Arc<Metrics>,
    pub table: SharedTable,
    /// Inbound listeners: mutual TLS termination and its modes (`None`: no identity).
    pub inbound: Option<InboundTls>,
    /// Traffic arrives redirected: an inbound connection that was not is refused.
    pub capture: bool,
    /// Inbound: where captured connections go, and which are refused.
    pub delivery: Arc<Delivery>,
    /// Outbound: the pod's own addresses, the only peers an outbound listener serves.
    pub local: Arc<LocalAddrs>,
    /// Inbound: what a destination no policy guards does with a caller.
    pub default_authz: crate::config::DefaultAuthz,
    /// Connections held at once (`--max-connections`).
    pub max_connections: usize,
}

/// Whether a refusal an attacker can repeat at will is logged now: at most one line a second
/// (the counters count every one).
fn log_refusal_now() -> bool {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.swap(now, Ordering::Relaxed) != now
}

impl Listener {
    /// Accepts until draining begins; then the listening socket is closed, so new connections
    /// are refused while accepted ones finish.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let drain = self.http.drain.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_connections.max(1)));
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = drain.signaled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        self.metrics.conns(self.http.direction).refused.inc();
                        drop(stream);
                        continue;
                    };
                    let this = self.clone();
                    drain.spawn(async move { this.serve(stream, peer, slot).await });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
    }

    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let direction = self.http.direction;
        let conns = self.metrics.conns(direction).clone();
        conns.accepted.inc();
        // Held by the connection and by any tunnel it upgrades into; the gauge drops when the
        // last of them ends.
        let open = Arc::new(OpenConn::holding(conns.clone(), Some(slot)));
        transport::set_stream_options(&stream);
        let orig_dst = orig_dst::original_dst(&stream);
        if !self.admits(direction, peer, orig_dst) {
            return;
        }
        let mut io = CountedIo::new(stream, conns);
        // A connection for a `tcp` service (by listener, or by the VIP it was sent to) is
        // opaque: no detection, so a server-first protocol does not wait for it.
        let skip_detect = match (&self.tcp, orig_dst) {
            (TcpTarget::Service(name), _) => self
                .table
                .load()
                .by_authority(name)
                .is_some_and(|s| s.protocol == Protocol::Tcp),
            (TcpTarget::None, Some(orig)) => self
                .table
                .load()
                .by_vip(orig)
                .is_some_and(|s| s.protocol == Protocol::Tcp),
            _ => false,
        };
        let (detected, prefix) = if skip_detect {
            (
                Detected::Opaque(detect::OpaqueReason::NotHttp),
                Default::default(),
            )
        } else {
            match detect::detect(&mut io, &self.detect).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection failed during detection");
                    return;
                }
            }
        };
        self.metrics.conns(direction).detected(detected.label());
        tracing::trace!(%peer, ?detected, "protocol detected");
        if direction == Direction::Inbound {
            return self
                .serve_inbound(io, prefix, detected, peer, orig_dst, open)
                .await;
        }
        let io = PrefixedIo::new(prefix, io);
        let conn = Arc::new(ConnInfo {
            orig_dst,
            client: Some(peer),
            ..Default::default()
        });
        match detected {
            Detected::Http1 => self.http.clone().serve(io, false, open, conn).await,
            Detected::Http2 => self.http.clone().serve(io, true, open, conn).await,
            Detected::Tls | Detected::Opaque(_) => {
                self.forward_outbound_opaque(io, peer, orig_dst).await
            }
        }
    }

    /// Who may use this listener at all, before a byte is read: an outbound listener serves
    /// only its own pod; no captured inbound connection reaches one of the sidecar's own ports.
    fn admits(&self, direction: Direction, peer: SocketAddr, orig_dst: Option<SocketAddr>) -> bool {
        match (direction, orig_dst) {
            (Direction::Outbound, _) if !self.local.contains(peer) => {
                self.metrics.tls.outbound_refused.inc();
                if log_refusal_now() {
                    tracing::warn!(%peer, "connection to an outbound listener from outside the pod refused");
                }
                false
            }
            (Direction::Inbound, Some(orig)) if self.delivery.is_own(orig.port()) => {
                self.metrics
                    .tls
                    .refused
                    .with_label_values(&["proxy_port"])
                    .inc();
                if log_refusal_now() {
                    tracing::warn!(%peer, dest = %orig, "connection to one of the sidecar's own ports refused");
                }
                false
            }
            // Redirected, but not sent to the pod: to loopback or another host, through this
            // pod's link. Delivered, it would reach loopback-only applications, or make the
            // sidecar a relay.
            (Direction::Inbound, Some(orig)) if !self.local.is_pod_address(orig) => {
                self.metrics
                    .tls
                    .refused
                    .with_label_values(&["not_local"])
                    .inc();
                if log_refusal_now() {
                    tracing::warn!(%peer, dest = %orig, "redirected connection to an address that is not the pod's refused");
                }
                false
            }
            _ => true,
        }
    }

    /// The inbound side: mesh TLS is terminated (STRICT and PERMISSIVE), plaintext refused
    /// (STRICT) or served as it came (PERMISSIVE, DISABLE); then authorization, then the
    /// application.
    async fn serve_inbound(
        &self,
        mut io: CountedIo<TcpStream>,
        mut prefix: BytesMut,
        detected: Detected,
        remote: SocketAddr,
        orig_dst: Option<SocketAddr>,
        open: Arc<OpenConn>,
    ) {
        // The destination: where the client sent it (captured), else this listener.
        let local = match (orig_dst, io.get_ref().local_addr()) {
            (Some(orig), _) => orig,
            (None, Ok(local)) if !self.capture => local,
            (None, Ok(local)) => {
                // Captured pods reach the application only through redirection: a connection
                // addressed to the proxy's own port is not for the application.
                self.metrics
                    .tls
                    .refused
                    .with_label_values(&["not_redirected"])
                    .inc();
                tracing::debug!(%remote, %local, "inbound connection to the proxy itself refused");
                return;
            }
            (None, Err(_)) => return,
        };
        // Captured: the application, where the client sent it. A destination the table
        // declares (an endpoint of a service) has series of its own; any other (a port scan
        // reaches 65,535) counts under `other`, so the network cannot grow the metrics.
        let app = orig_dst.map(|o| {
            let addr = self.delivery.app(o);
            let declared = self.table.load().services_at(o).next().is_some();
            let target: Arc<str> = if declared {
                addr.to_string().into()
            } else {
                Arc::from(UNDECLARED_TARGET)
            };
            (addr, self.metrics.target(Direction::Inbound, &target))
        });
        let mode = self
            .inbound
            .as_ref()
            .map_or(InboundMode::Disable, |t| t.cfg.mode_for(local.port()));
        let refuse = |reason: &str| {
            self.metrics.tls.refused.with_label_values(&[reason]).inc();
            tracing::debug!(%remote, %local, reason, "inbound connection refused (STRICT)");
        };
        let hello = if detected == Detected::Tls && mode != InboundMode::Disable {
            read_hello(&mut io, &mut prefix, self.detect.detect_timeout).await
        } else {
            Hello::Foreign
        };
        match (mode, detected, hello) {
            (InboundMode::Disable, ..) => {}
            (_, Detected::Tls, Hello::Mesh) => {
                let tls = self.inbound.as_ref().expect("a mode other than disable");
                return self
                    .terminate(
                        &tls.mtls,
                        PrefixedIo::new(prefix, io),
                        (local, app),
                        remote,
                        open,
                    )
                    .await;
            }
            (InboundMode::Strict, Detected::Tls, _) => return refuse("foreign_tls"),
            (InboundMode::Strict, ..) => return refuse("plaintext"),
            (InboundMode::Permissive, ..) => {}
        }
        let conn = Arc::new(ConnInfo {
            peer: Some(Peer::new(
                None,
                local,
                &self.metrics,
                self.trust_domain(),
                self.default_authz,
            )),
            client: Some(remote),
            orig_dst,
            app,
        });
        let io = PrefixedIo::new(prefix, io);
        match detected {
            Detected::Http1 => self.http.clone().serve(io, false, open, conn).await,
            Detected::Http2 => self.http.clone().serve(io, true, open, conn).await,
            Detected::Tls | Detected::Opaque(_) => self.forward_opaque(io, &conn).await,
        }
    }

    /// This proxy's trust domain (namespace rules match only callers of it).
    fn trust_domain(&self) -> &str {
        self.inbound
            .as_ref()
            .map_or("", |t| t.cfg.trust_domain.as_str())
    }

    /// Mutual TLS with a sidecar, then what its ALPN says follows.
    async fn terminate<I>(
        &self,
        mtls: &Mtls,
        io: I,
        (local, app): (SocketAddr, Option<(SocketAddr, Arc<TargetMetrics>)>),
        remote: SocketAddr,
        open: Arc<OpenConn>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls = &self.metrics.tls;
        let Some(cfg) = mtls.server() else {
            tls.handshake(Direction::Inbound, "no_certificate");
            tracing::debug!(%remote, "mesh TLS refused: this proxy holds no certificate yet");
            return;
        };
        let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(io);
        let stream = match tokio::time::timeout(self.detect.detect_timeout, accept).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tls.handshake(Direction::Inbound, tls::failure_reason(&e));
                tracing::debug!(%remote, error = %e, "inbound mesh TLS handshake failed");
                return;
            }
            Err(_) => {
                tls.handshake(Direction::Inbound, "timeout");
                return;
            }
        };
        tls.handshake(Direction::Inbound, "ok");
        let conn = stream.get_ref().1;
        let id = tls::peer_identity(conn.peer_certificates());
        let alpn = Alpn::negotiated(conn.alpn_protocol());
        tracing::trace!(%remote, peer = ?id, ?alpn, "inbound mesh TLS");
        let conn = Arc::new(ConnInfo {
            peer: Some(Peer::new(
                id,
                local,
                &self.metrics,
                self.trust_domain(),
                self.default_authz,
            )),
            client: Some(remote),
            orig_dst: None,
            app,
        });
        match alpn {
            Alpn::H2 => self.http.clone().serve(stream, true, open, conn).await,
            Alpn::Http1 => self.http.clone().serve(stream, false, open, conn).await,
            Alpn::Opaque => self.forward_opaque(stream, &conn).await,
        }
    }
}

/// Reads until `buf` holds a whole ClientHello (or it cannot be one of a sidecar's).
async fn read_hello<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Hello {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tls::client_hello(buf) {
            Hello::Incomplete if buf.len() < MAX_HELLO => {}
            Hello::Incomplete => return Hello::Foreign,
            h => return h,
        }
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Hello::Foreign,
        }
    }
}
