//! A routed request made ready to send (deadlines, the body kept for retries and a mirror),
//! and its answer: the upstream's response relayed, a protocol upgrade's tunnel, or the
//! proxy's own error.

use super::*;

impl HttpProxy {
    /// Everything between the route's gate and sending: the upgrade, gRPC's deadline, the
    /// request's timeouts, keeping the body for retries and a mirror, and the cluster's
    /// pending-request limit. (What depends on the endpoint is decided per try.)
    pub(super) fn prepare(
        &self,
        a: Admitted,
        start: Instant,
    ) -> Result<Call, Box<Response<ProxyBody>>> {
        let Admitted {
            mut req,
            mut to,
            upgrade,
        } = a;

        let dest = &to.dest;
        let route = to.routed.as_ref().map(Routed::route);
        let policy = route.map(|r| &r.policy);
        // The route's header changes, before anything (a retry, a mirror) copies the head.
        if let Some(h) = policy.and_then(|p| p.headers.as_deref()) {
            h.request.apply(req.headers_mut());
        }
        // Then the chosen backend's own (a Gateway API backendRef's filters).
        if let (Some(route), Some(r)) = (route, &to.routed)
            && !route.backend_headers.is_empty()
            && let Some(h) = route.backend_headers(r.backend)
        {
            h.request.apply(req.headers_mut());
        }
        if let Some(r) = policy.and_then(|p| p.rewrite.as_deref()) {
            r.apply(&mut req);
        }
        let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // gRPC's own deadline bounds the whole call (cut to the route's maximum, and the
        // upstream told the shorter one); the route timeout bounds the wait for response
        // headers, retries included.
        let mut grpc_budget = to.is_grpc.then(|| grpc::timeout(req.headers())).flatten();
        if let (Some(g), Some(max)) = (grpc_budget, policy.and_then(|p| p.grpc_timeout_max))
            && g > max
        {
            grpc_budget = Some(max);
            req.headers_mut()
                .insert(grpc::TIMEOUT, grpc::encode_timeout(max));
        }
        // A stream idle timeout also bounds the wait for the response's headers.
        let idle = policy.and_then(|p| p.idle_timeout);
        let head_timeout = match (dest.timeout, idle) {
            (Some(t), Some(i)) => Some(t.min(i)),
            (t, i) => t.or(i),
        };
        // A deadline too far away to represent is no deadline.
        let deadline = match (head_timeout, grpc_budget) {
            (Some(t), Some(g)) if g < t => start
                .checked_add(g)
                .map(|at| (at, ProxyError::GrpcDeadline(g))),
            (Some(t), _) => start.checked_add(t).map(|at| (at, ProxyError::Timeout(t))),
            (None, Some(g)) => start
                .checked_add(g)
                .map(|at| (at, ProxyError::GrpcDeadline(g))),
            (None, None) => None,
        };
        // With a deadline, the request body can be cut off when it passes, which resets the
        // upstream stream even if the client is still sending.
        let cancel = deadline.is_some().then(|| Arc::new(Cancel::default()));
        let retry = policy.and_then(|p| p.retry.as_ref()).filter(|_| !upgrade);
        let mirror = policy
            .and_then(|p| p.mirror.as_ref())
            .filter(|m| !upgrade && resilience::chance(m.percent));
        let (parts, body) = req.into_parts();
        let mut direct = RequestBody::direct(body, cancel.clone());
        // The access log counts the body's bytes, when there is one.
        if let Some(e) = to.obs.entry()
            && !http_body::Body::is_end_stream(&direct)
        {
            direct = direct.counted(Some(e.bytes_in()));
        }
        let keep = retry.is_some() || mirror.is_some();
        let (first, replay) = if !keep {
            (RequestBody::from(direct), Replay::None)
        } else if http_body::Body::is_end_stream(&direct) {
            (RequestBody::empty(), Replay::Empty)
        } else {
            let shared = replay::Shared::new(direct, REPLAY_CAP);
            (RequestBody::replay(shared.first()), Replay::Kept(shared))
        };
        let head = keep.then(|| Head::of(&parts));
        let req = Request::from_parts(parts, first);
        if let (Some(m), Some(head), Some(r)) = (mirror, &head, &to.routed) {
            self.mirror(m, head, &replay, dest.protocol, &r.svc.metrics);
        }
        if let Some(r) = &to.routed
            && retry.is_some()
        {
            r.svc.budget.deposit();
        }
        Ok(Call {
            req: Some(req),
            head,
            replay,
            to,
            upgrade,
            on_upgrade,
            deadline,
            cancel,
            grpc_budget,
            idle,
        })
    }

    /// The response to a call: the upstream's, relayed (with a protocol upgrade's tunnel set
    /// up), or the proxy's own error.
    pub(super) fn respond(
        &self,
        call: Call,
        res: Option<(Result<Response<Received>, ProxyError>, u32)>,
        open: Arc<OpenConn>,
        start: Instant,
    ) -> Response<ProxyBody> {
        let retried = call.retry().is_some();
        let Call {
            mut to,
            on_upgrade,
            deadline,
            cancel,
            grpc_budget,
            idle,
            ..
        } = call;
        let (res, attempts) = match res {
            Some(res) => res,
            None => {
                if let Some(c) = &cancel {
                    c.fire();
                }
                let err = deadline
                    .map(|d| d.1)
                    .expect("only a deadline cuts the tries off");
                (Err(err), 0)
            }
        };
        to.dest.metrics.latency(start.elapsed().as_secs_f64());
        // (Tries cut off by the deadline say nothing: the log counted them as they went.)
        if let Some(e) = to.obs.entry().filter(|_| attempts > 0) {
            e.attempts = attempts;
        }
        if retried && attempts > 0 {
            to.dest.metrics.attempts(attempts);
        }
        let mut rsp = match res {
            Ok(rsp) => rsp,
            Err(e) => {
                tracing::debug!(direction = self.direction.as_str(), addr = %to.dest.addr, error = %e, "request failed");
                return to.fail(e);
            }
        };
        if let Some(r) = &to.routed {
            let route = r.route();
            if !route.backend_headers.is_empty()
                && let Some(h) = route.backend_headers(r.backend)
            {
                h.response.apply(rsp.headers_mut());
            }
            if let Some(h) = route.policy.headers.as_deref() {
                h.response.apply(rsp.headers_mut());
            }
        }
        let Routing {
            obs, version, held, ..
        } = to;
        let switching = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && on_upgrade.is_none() {
            // Switching to a protocol this request did not offer (or may not tunnel).
            return fail(
                ProxyError::UnexpectedUpgrade(to.dest.addr),
                to.is_grpc,
                obs,
                version,
            );
        }
        if let (Some(down), true) = (on_upgrade, switching) {
            let up = hyper::upgrade::on(&mut rsp);
            // The tunnel outlives this connection's HTTP serving: drain waits for it, and the
            // connection stays counted as open while it runs.
            self.drain.spawn(async move {
                let _open = open;
                match tokio::try_join!(down, up) {
                    Ok((down, up)) => {
                        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        // A response that arrived over HTTP/2 has none: h2 refuses a message carrying them.
        if rsp.version() != Version::HTTP_2 {
            headers::strip_hop_by_hop(rsp.headers_mut(), switching);
        }
        *rsp.version_mut() = version;
        let mut obs = obs;
        obs.response_head(rsp.status().as_u16(), rsp.headers());
        // After the headers only gRPC's deadline still runs (the route timeout is over).
        let body_deadline =
            grpc_budget.and_then(|b| Some((tokio::time::sleep_until(start.checked_add(b)?), b)));
        let cancel = if body_deadline.is_some() {
            cancel
        } else {
            None
        };
        rsp.map(|b| {
            ProxyBody::upstream(b, obs, body_deadline, cancel)
                .idle(idle)
                .hold(held)
        })
    }
}

impl Replay {
    /// A later try's body, if the request can still be sent again.
    pub(super) fn next(&self) -> Option<RequestBody> {
        match self {
            Replay::None => None,
            Replay::Empty => Some(RequestBody::empty()),
            Replay::Kept(s) => s.next().map(RequestBody::replay),
        }
    }
}

impl Head {
    pub(super) fn of(parts: &http::request::Parts) -> Self {
        Head {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
        }
    }

    pub(super) fn request(self, body: RequestBody) -> Request<RequestBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }

    /// As Envoy marks a mirrored request: `-shadow` after the host, in the Host header and the
    /// authority.
    pub(super) fn shadow(mut self) -> Self {
        if let Some(v) = self
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()?.parse().ok())
            .and_then(|a| HeaderValue::from_str(shadow(&a).as_str()).ok())
        {
            self.headers.insert(http::header::HOST, v);
        }
        if let Some(a) = self.uri.authority() {
            let mut parts = self.uri.clone().into_parts();
            parts.authority = Some(shadow(a));
            if let Ok(u) = http::Uri::from_parts(parts) {
                self.uri = u;
            }
        }
        self
    }
}

/// `host[:port]` as `host-shadow[:port]`.
fn shadow(a: &http::uri::Authority) -> http::uri::Authority {
    let shadowed = match a.port() {
        Some(p) => format!("{}-shadow:{p}", a.host()),
        None => format!("{}-shadow", a.host()),
    };
    shadowed.parse().unwrap_or_else(|_| a.clone())
}

/// [`fail`], boxed (the error side of a stage that otherwise hands on a request).
pub(super) fn failed(
    e: ProxyError,
    is_grpc: bool,
    obs: Observer,
    version: Version,
) -> Box<Response<ProxyBody>> {
    Box::new(fail(e, is_grpc, obs, version))
}

/// The proxy's own answer to a failed request, counted in metrics.
pub(super) fn fail(
    e: ProxyError,
    is_grpc: bool,
    mut obs: Observer,
    version: Version,
) -> Response<ProxyBody> {
    let mut rsp = e.to_response(is_grpc);
    *rsp.version_mut() = version;
    if let Some(f) = e.flag() {
        obs.flag(f);
    }
    if let Some(log) = obs.entry() {
        log.bytes_out = http_body::Body::size_hint(rsp.body()).exact().unwrap_or(0);
    }
    obs.response_head(rsp.status().as_u16(), rsp.headers());
    rsp
}
