//! Opaque TCP, both ways: outbound to the one endpoint the service's default route picks (or
//! where a captured connection was sent), inbound to the application once the caller may
//! connect.

use super::*;

impl Listener {
    /// An outbound connection that is not HTTP: to one endpoint, with the identity it must
    /// prove (an opaque connection to a meshed endpoint is mutual TLS too). The caller's
    /// address is all it can be hashed on; a cluster's `maxConnections` bounds its opaque
    /// connections: one over the limit is closed at once.
    pub(super) async fn forward_outbound_opaque<I>(
        &self,
        io: I,
        peer: SocketAddr,
        orig_dst: Option<SocketAddr>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let direction = self.http.direction;
        // One endpoint, with the identity it must prove (an opaque connection to a
        // meshed endpoint is mutual TLS too).
        // The caller's address is all an opaque connection can be hashed on.
        // A cluster's `maxConnections` bounds its opaque connections: one over the
        // limit is closed at once.
        let mut log = self
            .http
            .log
            .as_ref()
            .map(|l| l.connection(direction.as_str(), Some(peer)));
        let mut why = Flags::NR;
        let mut pick = |s: &Arc<crate::table::Service>| {
            let route = &s.default_route;
            let hash = (route.policy.hash)
                .as_ref()
                .and_then(|h| h.key(&http::HeaderMap::new(), Some(peer)));
            if let Some(l) = &mut log {
                l.service = Some(s.name.clone());
            }
            why = Flags::UH;
            let to = route.target(hash, &s.metrics)?;
            let (cluster, e) = (to.cluster, to.endpoint?);
            let permit = match cluster.permit(crate::resilience::Limit::Connections, &s.metrics) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "closing the connection");
                    why = Flags::UO;
                    return None;
                }
            };
            let in_flight = Some((e.state.start(), permit));
            Some((e.addr, e.identity, Some(cluster.name.clone()), in_flight))
        };
        let table = self.table.load();
        let dest = match (&self.tcp, orig_dst) {
            (TcpTarget::Addr(a), _) => Some((*a, None, None, None)),
            (TcpTarget::Service(name), _) => table.by_authority(name).and_then(pick),
            // Captured: the service whose VIP was dialled, else where it was sent.
            (TcpTarget::None, Some(orig)) => match table.by_vip(orig) {
                Some(svc) => pick(svc),
                None => Some((orig, table.endpoint_identity(orig).cloned(), None, None)),
            },
            (TcpTarget::None, None) => None,
        };
        drop(table);
        match dest {
            // The connection counts as in flight to its endpoint while it is open.
            Some((addr, identity, backend, _in_flight)) => {
                if let Some(l) = &mut log {
                    l.upstream = Some(addr);
                    l.upstream_identity = identity.clone();
                    l.backend = backend;
                }
                let pools = &self.http.pools;
                tcp::forward(io, addr, identity.as_ref(), pools, direction, log).await
            }
            None => {
                tracing::debug!(%peer, "no destination for opaque connection; closing");
                if let Some(mut l) = log {
                    l.flags.set(why);
                    l.finish();
                }
            }
        }
    }

    /// Opaque TCP to the application, if the caller may connect.
    pub(super) async fn forward_opaque<I>(&self, io: I, conn: &ConnInfo)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(peer) = &conn.peer else { return };
        {
            let table = self.table.load();
            // Raw bytes to an HTTP service would skip what HTTP gets per request (the caller's
            // header set and forgeries removed, authorization): only `tcp` services, or
            // destinations the table does not know, take opaque connections.
            if table
                .services_at(peer.local)
                .any(|s| s.protocol != Protocol::Tcp)
            {
                self.metrics
                    .tls
                    .refused
                    .with_label_values(&["opaque_to_http"])
                    .inc();
                tracing::debug!(peer = ?peer.id, dest = %peer.local, "opaque connection to an HTTP service refused");
                return;
            }
            if let Some(v) = peer.authorize(&table) {
                self.metrics.tls.authz(AuthzProtocol::Tcp, v.is_ok());
                if let Err(service) = v {
                    // A caller can open connections as fast as it likes: at most a line a
                    // second (`weft_authz_total` counts every one).
                    if log_refusal_now() {
                        tracing::info!(peer = ?peer.id, %service, "connection denied by authorization policy");
                    }
                    return;
                }
            }
        }
        let addr = match (&conn.app, &self.tcp) {
            (Some((app, _)), _) => *app,
            (None, TcpTarget::Addr(addr)) => *addr,
            (None, _) => return,
        };
        let log = self.http.log.as_ref().map(|l| {
            let mut e = l.connection(Direction::Inbound.as_str(), conn.client);
            e.client_identity = peer.id.clone();
            e.upstream = Some(addr);
            e
        });
        tcp::forward(io, addr, None, &self.http.pools, Direction::Inbound, log).await;
    }
}
