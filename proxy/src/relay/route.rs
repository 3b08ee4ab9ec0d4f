//! Routing one request: inbound, to the local application once the caller is authorized;
//! outbound, by the table (the service the client dialled or named, the first route that
//! matches, a backend by weight, an endpoint by the cluster's balancer).

use super::*;

/// A request that could not be routed: why, where it is counted, and (when a route matched)
/// the route and the backend the split chose, for its access log line.
type Unrouted = (
    ProxyError,
    Arc<TargetMetrics>,
    Option<(Arc<str>, Option<Arc<str>>)>,
);

impl HttpProxy {
    /// Routes a request (which came at `start`) and counts it; answers it at once when it
    /// cannot be routed or the inbound side refuses it.
    pub(super) fn route(
        &self,
        mut req: Request<Received>,
        conn: &ConnInfo,
        start: Instant,
    ) -> Result<Admitted, Box<Response<ProxyBody>>> {
        let version = req.version();
        let is_grpc = grpc::is_grpc(req.headers());
        // Only allow-listed upgrades are tunnelled; any other offer is removed with the
        // hop-by-hop fields, and the request served as a plain one (the upgrade declined).
        let upgrade = version < Version::HTTP_2
            && headers::wants_upgrade(req.headers())
            && headers::upgrade_allowed(req.headers(), &self.cfg.http_upgrades);
        // Hop-by-hop fields go first, so that `Connection` can never name a header the sidecar
        // sets below (a message received over HTTP/2 has none).
        if version != Version::HTTP_2 {
            headers::strip_hop_by_hop(req.headers_mut(), upgrade);
        }
        // What a sending sidecar said of the application's protocol; then no header weft
        // reserves is left, in any spelling: the caller can neither forge nor remove one.
        let orig_proto = req.headers_mut().remove(&ORIG_PROTO_HEADER);
        headers::strip_reserved(req.headers_mut());
        // The trace continued or started (`traceparent` then names this sidecar's span), and
        // the request id: after the hop-by-hop fields are gone, so that no `Connection` can
        // remove what is set here, and before the entry reads them.
        let traced = self
            .tracer
            .and_then(|t| t.start(req.headers_mut(), self.direction, start));
        if self.request_id {
            trace::ensure_request_id(req.headers_mut());
        }
        // The access log's line and the span's record.
        let mut entry = if self.log.is_some() || traced.is_some() {
            let known = traced.as_ref().map(|t| t.trace_id);
            let dir = self.direction.as_str();
            let mut e = Entry::request(self.log, &req, dir, conn.client, known, start);
            e.client_identity = conn.peer.as_ref().and_then(|p| p.id.clone());
            e.traced = traced.map(|t| Box::new(t) as Box<dyn crate::access_log::OnFinish>);
            Some(e)
        } else {
            None
        };
        if request::has_duplicate_host(&req) {
            let metrics = self.fallback_metrics();
            metrics.request();
            let e = ProxyError::BadRequest("more than one Host header");
            let obs = Observer::new(metrics.clone(), is_grpc).logged(entry);
            return Err(failed(e, is_grpc, obs, version));
        }
        let mut dest = match self.resolve(&req, conn) {
            Ok(d) => d,
            Err((e, metrics, to)) => {
                metrics.request();
                if let (Some(en), ProxyError::NoEndpoints(svc)) = (&mut entry, &e) {
                    en.service = Some(svc.clone());
                    if let Some((route, backend)) = to {
                        en.route = Some(route);
                        en.backend = backend;
                    }
                }
                let obs = Observer::new(metrics, is_grpc).logged(entry);
                return Err(failed(e, is_grpc, obs, version));
            }
        };
        if let Some(e) = &mut entry {
            dest.describe(e);
        }
        if self.direction == Direction::Inbound {
            match self.inbound(&mut req, conn.peer.as_ref(), is_grpc, orig_proto) {
                Ok(p) => dest.protocol = p,
                Err(e) => {
                    dest.metrics.request();
                    let obs = Observer::new(dest.metrics, is_grpc).logged(entry);
                    return Err(failed(e, is_grpc, obs, version));
                }
            }
        }
        dest.metrics.request();
        let obs = Observer::new(dest.metrics.clone(), is_grpc).logged(entry);
        let routed = dest.routed.take();
        Ok(Admitted {
            req,
            to: Routing {
                dest,
                routed,
                obs,
                is_grpc,
                version,
                held: None,
            },
            upgrade,
        })
    }

    pub(super) fn resolve(
        &self,
        req: &Request<Received>,
        conn: &ConnInfo,
    ) -> Result<Dest, Unrouted> {
        match &self.router {
            Router::Inbound {
                forward, metrics, ..
            } => {
                let (addr, metrics) = conn
                    .app
                    .clone()
                    .unwrap_or_else(|| (*forward, metrics.clone()));
                Ok(Dest {
                    addr,
                    identity: None,
                    protocol: Protocol::Http,
                    timeout: None,
                    metrics,
                    state: None,
                    routed: None,
                })
            }
            Router::Outbound {
                table,
                fixed,
                unknown,
                passthrough,
            } => {
                let table = table.load();
                // Captured traffic: the service whose VIP the client dialled, else by authority.
                let by_vip = conn.orig_dst.and_then(|o| table.by_vip(o));
                let svc = match (fixed, by_vip) {
                    (Some(name), _) => table.by_authority(name),
                    (None, Some(svc)) => Some(svc),
                    (None, None) => match (request::authority(req), conn.orig_dst) {
                        (Some(authority), _) => table.by_authority(authority),
                        (None, Some(_)) => None,
                        (None, None) => {
                            return Err((ProxyError::NoAuthority, unknown.clone(), None));
                        }
                    },
                };
                // A captured request for a destination outside the mesh goes where it was sent.
                if let (None, Some(orig)) = (svc, conn.orig_dst) {
                    return Ok(Dest {
                        addr: orig,
                        identity: table.endpoint_identity(orig).cloned(),
                        protocol: Protocol::Http,
                        timeout: None,
                        metrics: passthrough.clone(),
                        state: None,
                        routed: None,
                    });
                }
                let Some(svc) = svc else {
                    let name = fixed
                        .as_deref()
                        .or_else(|| request::authority(req))
                        .unwrap_or("");
                    return Err((ProxyError::NoRoute(name.to_string()), unknown.clone(), None));
                };
                let (method, path, headers) = (req.method(), req.uri().path(), req.headers());
                let query = req.uri().query();
                let index = svc
                    .routes
                    .iter()
                    .position(|r| r.matches.matches(method, path, query, headers));
                let index = match index {
                    Some(i) => i,
                    None if svc.strict => {
                        let e = ProxyError::NoMatch(svc.name.clone());
                        return Err((e, svc.metrics.clone(), None));
                    }
                    None => usize::MAX,
                };
                let route = svc.route(index);
                if let Some(r) = &route.policy.redirect {
                    let scheme = req.uri().scheme_str().unwrap_or("http");
                    let authority = request::authority(req).unwrap_or("");
                    let to = r.location(scheme, authority, path, query);
                    let e = match HeaderValue::try_from(to) {
                        Ok(location) => ProxyError::Redirect {
                            status: r.status,
                            location,
                        },
                        Err(_) => {
                            ProxyError::BadRequest("the redirect's location is not a header value")
                        }
                    };
                    return Err((e, svc.metrics.clone(), Some((route.name.clone(), None))));
                }
                let hash = (route.policy.hash)
                    .as_ref()
                    .and_then(|h| h.key(headers, conn.client));
                // Counted under the route and the backend the split chose.
                let Some(to) = route.target(hash, &svc.metrics) else {
                    let e = ProxyError::NoEndpoints(svc.name.clone());
                    return Err((e, svc.metrics.clone(), Some((route.name.clone(), None))));
                };
                let Some(ep) = to.endpoint else {
                    let e = match to.cluster.absent {
                        Some(status) => ProxyError::BackendNotFound {
                            cluster: to.cluster.name.clone(),
                            status,
                        },
                        None => ProxyError::NoEndpoints(svc.name.clone()),
                    };
                    let at = Some((route.name.clone(), Some(to.cluster.name.clone())));
                    return Err((e, (*to.metrics).clone(), at));
                };
                Ok(Dest {
                    addr: ep.addr,
                    identity: ep.identity,
                    protocol: svc.protocol,
                    timeout: route.policy.timeout,
                    metrics: (*to.metrics).clone(),
                    state: Some(ep.state),
                    routed: Some(Routed {
                        svc: svc.clone(),
                        route: index,
                        cluster: to.cluster.clone(),
                        backend: to.index,
                        hash,
                    }),
                })
            }
        }
    }

    /// The inbound side's part of a request (whose reserved headers are gone already): the
    /// caller's identity header, authorization, and the HTTP version the application gets back
    /// when an HTTP/1 request crossed the mesh over HTTP/2 (`orig`, which only a caller that
    /// proved an identity can say). Returns that version's protocol.
    pub(super) fn inbound<B>(
        &self,
        req: &mut Request<B>,
        peer: Option<&Peer>,
        is_grpc: bool,
        orig: Option<HeaderValue>,
    ) -> Result<Protocol, ProxyError> {
        let headers = req.headers_mut();
        let Router::Inbound { table, .. } = &self.router else {
            return Ok(Protocol::Http);
        };
        let orig = orig.filter(|_| peer.is_some_and(|p| p.id.is_some()));
        if let Some(peer) = peer {
            peer.requests.inc();
            if let Some(v) = &peer.header {
                headers.insert(PEER_IDENTITY_HEADER.clone(), v.clone());
            }
            if let Some(verdict) = peer.authorize(&table.load()) {
                self.pools.metrics().tls.authz(
                    if is_grpc {
                        AuthzProtocol::Grpc
                    } else {
                        AuthzProtocol::Http
                    },
                    verdict.is_ok(),
                );
                if let Err(service) = verdict {
                    return Err(ProxyError::Forbidden {
                        peer: peer
                            .id
                            .as_deref()
                            .unwrap_or("a plaintext caller")
                            .to_string(),
                        service,
                    });
                }
            }
        }
        Ok(match orig {
            Some(v) if v.as_bytes().starts_with(b"HTTP/1") => Protocol::Http1,
            _ => Protocol::Http,
        })
    }

    /// Where requests that fail before routing are counted.
    pub(super) fn fallback_metrics(&self) -> &Arc<TargetMetrics> {
        match &self.router {
            Router::Outbound { unknown, .. } => unknown,
            Router::Inbound { metrics, .. } => metrics,
        }
    }
}
