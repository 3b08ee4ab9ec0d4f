//! Sending: the route's gate (rate limits, faults, the cluster's request limit), the request
//! put in the endpoint's form, tries and retries through the pools, and mirroring.

use super::*;

impl HttpProxy {
    /// The route's gate, before anything is sent: the service's and the route's rate limits,
    /// injected faults, and the cluster's limit of concurrent requests (whose permit the
    /// response holds until it ends).
    pub(super) async fn admit(
        &self,
        r: &Routed,
        metrics: &TargetMetrics,
        obs: &mut Observer,
    ) -> Result<Option<resilience::Permit>, ProxyError> {
        let route = r.route();
        let limited =
            |b: &Option<Arc<resilience::TokenBucket>>| b.as_ref().is_some_and(|b| !b.take());
        if limited(&r.svc.rate_limit) || limited(&route.policy.rate_limit) {
            metrics.rate_limited();
            return Err(ProxyError::RateLimited(r.svc.name.clone()));
        }
        if let Some(f) = &route.policy.fault {
            if let Some((percent, delay)) = f.delay
                && resilience::chance(percent)
            {
                metrics.fault(false);
                obs.flag(Flags::DI);
                tokio::time::sleep(delay).await;
            }
            if let Some((percent, abort)) = f.abort
                && resilience::chance(percent)
            {
                metrics.fault(true);
                return Err(ProxyError::Fault(abort));
            }
        }
        Ok(r.cluster.permit(Limit::Requests, metrics)?)
    }

    /// Readies one try's request for the endpoint it goes to (the first try, a retry and a
    /// mirror alike; `req` is as it arrived, its hop-by-hop fields gone): to a meshed endpoint
    /// HTTP/2 over mutual TLS, saying so when the application speaks HTTP/1, for the far
    /// sidecar to restore; to any other, the service's protocol, and nothing meant for a
    /// sidecar.
    pub(super) fn for_endpoint<B: http_body::Body>(
        &self,
        req: &mut Request<B>,
        identity: Option<&Arc<str>>,
        protocol: Protocol,
        upgrade: bool,
    ) -> Result<(), ProxyError> {
        let mut protocol = protocol;
        if !upgrade && self.pools.meshed(identity) {
            let app_http2 = match protocol {
                Protocol::Http1 => false,
                Protocol::Http2 => true,
                _ => req.version() == Version::HTTP_2,
            };
            if !app_http2 {
                req.headers_mut().insert(
                    ORIG_PROTO_HEADER.clone(),
                    HeaderValue::from_static("HTTP/1.1"),
                );
            }
            protocol = Protocol::Http2;
        }
        request::prepare(req, protocol, upgrade)?;
        request::keep_body(req);
        Ok(())
    }

    /// Sends the request, and again while the route's retry policy, the body's replay buffer,
    /// the budget, the cluster's retry limit and the deadline allow. Returns the last try's
    /// result and how many tries were made.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_with_retries(
        &self,
        dest: &Dest,
        routed: Option<&Routed>,
        is_grpc: bool,
        retry: Option<&retry::Retry>,
        first: Request<RequestBody>,
        head: Option<Head>,
        replay: &Replay,
        upgrade: bool,
        deadline: Option<Instant>,
        mut log: Option<&mut Entry>,
    ) -> (Result<Response<Received>, ProxyError>, u32) {
        let mut ep = (dest.addr, dest.identity.clone(), dest.state.clone());
        let mut req = first;
        let mut tries = 1;
        let mut _retry_permit = None;
        loop {
            // A request that cannot be put in this endpoint's form (an HTTP/1 request without
            // a host, for HTTP/2) fails as it is: nothing was sent, the endpoint is not to blame.
            if let Err(e) = self.for_endpoint(&mut req, ep.1.as_ref(), dest.protocol, upgrade) {
                return (Err(e), tries);
            }
            let in_flight = ep.2.as_ref().map(|s| s.start());
            let sent_at = log.as_deref_mut().map(|e| {
                e.attempts = tries;
                Instant::now()
            });
            let per_try = retry.and_then(|r| r.per_try_timeout);
            let res = {
                let wait = Waiter {
                    metrics: &dest.metrics,
                    cluster: routed.map(|r| &*r.cluster),
                };
                let sent = self.pools.send(ep.0, ep.1.as_ref(), req, upgrade, wait);
                // A timeout too long to represent is none.
                Within::new(sent, per_try.and_then(|t| Instant::now().checked_add(t)))
                    .await
                    .unwrap_or_else(|| Err(ProxyError::PerTryTimeout(per_try.unwrap_or_default())))
            };
            if let (Some(e), Some(at)) = (log.as_deref_mut(), sent_at) {
                e.upstream = Some(ep.0);
                e.upstream_identity = ep.1.clone();
                e.upstream_time = res.is_ok().then(|| at.elapsed());
            }
            let outcome = match &res {
                Ok(rsp) if is_grpc => {
                    Outcome::of_grpc(rsp.status().as_u16(), grpc::status(rsp.headers()))
                }
                Ok(rsp) => Outcome::of_status(rsp.status().as_u16()),
                Err(_) => Outcome::GatewayError,
            };
            // A gateway error teaches the balancer the endpoint is slow, however fast it came.
            if let Some(f) = in_flight {
                match outcome {
                    Outcome::GatewayError => f.failed(),
                    _ => f.responded(),
                }
            }
            // A request that found no room at the endpoint was never sent: outlier detection
            // learns nothing of the endpoint from it (the balancer does: it was slow to take it).
            let unsent = matches!(
                &res,
                Err(ProxyError::PendingTimeout { .. } | ProxyError::Overflow(_))
            );
            if let (Some(r), Some(state), false) = (routed, &ep.2, unsent) {
                r.cluster.observe(state, outcome, &dest.metrics);
            }
            let (Some(policy), Some(r), Some(head)) = (retry, routed, &head) else {
                return (res, tries);
            };
            let reason = match &res {
                Ok(rsp) => policy.response(rsp.status(), rsp.headers()),
                Err(e) => e.unanswered().and_then(|why| policy.failure(why)),
            };
            let Some(reason) = reason else {
                return (res, tries);
            };
            if tries > policy.retries {
                retries_exhausted(log);
                return (res, tries);
            }
            let wait = match res
                .as_ref()
                .ok()
                .and_then(|rsp| retry::pushback(rsp.headers()))
            {
                // The upstream's wait, never below the route's least wait.
                Some(Some(d)) if d <= retry::MAX_PUSHBACK => d.max(policy.floor),
                // The upstream asked not to be tried again (or not for a long while).
                Some(_) => return (res, tries),
                None => policy.backoff(tries - 1, fastrand::f64()),
            };
            let wake = Instant::now().checked_add(wait);
            if deadline.is_some_and(|at| wake.is_none_or(|w| w >= at)) {
                return (res, tries);
            }
            let Some(body) = replay.next() else {
                return (res, tries);
            };
            if !r.svc.budget.withdraw() {
                dest.metrics.budget_exhausted();
                retries_exhausted(log);
                return (res, tries);
            }
            match r.cluster.permit(Limit::Retries, &dest.metrics) {
                Ok(p) => _retry_permit = p,
                Err(_) => {
                    retries_exhausted(log);
                    return (res, tries);
                }
            }
            dest.metrics.retry(reason);
            tracing::debug!(addr = %ep.0, reason = reason.as_str(), try_no = tries, "retrying");
            // Dropping a response we will not relay resets its stream.
            drop(res);
            tokio::time::sleep(wait).await;
            if let Some(e) = r.cluster.pick_other(r.hash, ep.0, &dest.metrics) {
                ep = (e.addr, e.identity, Some(e.state));
            }
            req = head.clone().request(body);
            tries += 1;
        }
    }

    /// Sends a copy of the request to the mirror's cluster, in the background; its response is
    /// read and dropped.
    pub(super) fn mirror(
        &self,
        m: &crate::table::Mirror,
        head: &Head,
        replay: &Replay,
        protocol: Protocol,
        metrics: &Arc<TargetMetrics>,
    ) {
        if matches!(replay, Replay::None) {
            return;
        }
        let Ok(permit) = MIRRORS.try_acquire() else {
            metrics.mirrored(false);
            return;
        };
        let body = match replay {
            Replay::Kept(s) => RequestBody::replay(s.mirror()),
            Replay::Empty => RequestBody::empty(),
            Replay::None => return,
        };
        let Some(ep) = m.cluster.pick(None, metrics) else {
            metrics.mirrored(false);
            return;
        };
        let (addr, identity, cluster) = (ep.addr, ep.identity, m.cluster.clone());
        let mut req = head.clone().shadow().request(body);
        if self
            .for_endpoint(&mut req, identity.as_ref(), protocol, false)
            .is_err()
        {
            metrics.mirrored(false);
            return;
        }
        let pools = self.pools.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let sent = async {
                let wait = Waiter {
                    metrics: &metrics,
                    cluster: Some(&cluster),
                };
                let rsp = pools
                    .send(addr, identity.as_ref(), req, false, wait)
                    .await
                    .ok()?;
                http_body_util::BodyExt::collect(rsp.into_body()).await.ok()
            };
            let answered = matches!(
                tokio::time::timeout(MIRROR_TIMEOUT, sent).await,
                Ok(Some(_))
            );
            metrics.mirrored(answered);
        });
    }
}

/// A retry the policy wanted and could not have (no try left, or the budget or the cluster's
/// retry limit refused it): the line says the retries are exhausted, as Envoy's URX does.
fn retries_exhausted(log: Option<&mut Entry>) {
    if let Some(e) = log {
        e.flags.set(Flags::URX);
    }
}
