//! One target's handles (a service, the local application): the request, response and
//! traffic-policy series, each made the first time it is counted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use super::*;

/// The traffic-management metric families (retries, limits, ejections, faults, mirroring).
#[derive(Debug)]
pub(super) struct TrafficFamilies {
    pub(super) retries: IntCounterVec,
    pub(super) budget_exhausted: IntCounterVec,
    pub(super) attempts: HistogramVec,
    pub(super) overflow: IntCounterVec,
    pub(super) pending_timeouts: IntCounterVec,
    pub(super) ejections: IntCounterVec,
    pub(super) ejected: IntGaugeVec,
    pub(super) rate_limited: IntCounterVec,
    pub(super) faults: IntCounterVec,
    pub(super) mirrored: IntCounterVec,
}

/// Buckets of `weft_request_attempts`: tries per request.
/// The `kind` label of the fault series: a delay, an abort.
const FAULT_KINDS: [&str; 2] = ["delay", "abort"];
/// The `result` label of the mirror series: sent, failed.
const MIRROR_RESULTS: [&str; 2] = ["sent", "failed"];

pub(super) const ATTEMPT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 11.0];

/// A target's traffic-management handles, each made on first use (a service that never
/// retries shows no retry series).
#[derive(Default)]
pub(super) struct TrafficHandles {
    retries: [OnceLock<IntCounter>; crate::retry::REASON_COUNT],
    budget_exhausted: OnceLock<IntCounter>,
    attempts: OnceLock<Histogram>,
    overflow: [OnceLock<IntCounter>; crate::resilience::LIMITS.len()],
    pending_timeouts: OnceLock<IntCounter>,
    ejections: OnceLock<IntCounter>,
    ejected: OnceLock<IntGauge>,
    rate_limited: OnceLock<IntCounter>,
    faults: [OnceLock<IntCounter>; 2],
    mirrored: [OnceLock<IntCounter>; 2],
}

/// Per-target handles, created once per target and kept across table swaps.
pub struct TargetMetrics {
    direction: &'static str,
    target: Arc<str>,
    /// The route and backend of the request and response series (empty for a target's own).
    route: Arc<str>,
    backend: Arc<str>,
    requests: IntCounter,
    latency: Histogram,
    responses: IntCounterVec,
    /// Indexed by status code - 100; filled the first time a code is seen.
    http: Box<[OnceLock<IntCounter>]>,
    /// gRPC responses by grpc-status: HTTP 200, then 499 (the client went away first).
    grpc: [[OnceLock<IntCounter>; GRPC_CODES]; 2],
    /// Any other combination (a status code outside 100-599, a gRPC status with another
    /// HTTP status), made once each. Bounded: HTTP status codes have three digits, and a
    /// grpc-status past the 17 defined codes is counted as `other` ([`GRPC_OTHER`]).
    other: Mutex<HashMap<(u16, Option<u32>), IntCounter>>,
    families: Arc<TrafficFamilies>,
    traffic: TrafficHandles,
}

impl std::fmt::Debug for TargetMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetMetrics")
            .field("direction", &self.direction)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A service's handles, made the first time a request or connection uses the service: a table
/// of 10,000 services costs no metric memory, and `/metrics` shows no series, for the services
/// this pod never calls. Created once per target and kept across table swaps (see
/// [`Metrics::target`]).
pub struct LazyTarget {
    cell: OnceLock<Arc<TargetMetrics>>,
    metrics: Arc<Metrics>,
    direction: Direction,
    target: Arc<str>,
    /// A route's backend: its route and backend names.
    backend: Option<Box<(Arc<str>, Arc<str>)>>,
}

impl LazyTarget {
    pub fn new(metrics: &Arc<Metrics>, direction: Direction, target: Arc<str>) -> Self {
        LazyTarget {
            cell: OnceLock::new(),
            metrics: metrics.clone(),
            direction,
            target,
            backend: None,
        }
    }

    /// The handles of one backend of one of the target's routes.
    pub fn backend(
        metrics: &Arc<Metrics>,
        direction: Direction,
        target: Arc<str>,
        route: Arc<str>,
        backend: Arc<str>,
    ) -> Self {
        LazyTarget {
            backend: Some(Box::new((route, backend))),
            ..LazyTarget::new(metrics, direction, target)
        }
    }
}

impl std::ops::Deref for LazyTarget {
    type Target = Arc<TargetMetrics>;

    fn deref(&self) -> &Arc<TargetMetrics> {
        self.cell.get_or_init(|| match &self.backend {
            None => self.metrics.target(self.direction, &self.target),
            Some(b) => self
                .metrics
                .backend(self.direction, &self.target, &b.0, &b.1),
        })
    }
}

impl std::fmt::Debug for LazyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTarget")
            .field("target", &self.target)
            .field("made", &self.cell.get().is_some())
            .finish()
    }
}

impl Metrics {
    /// Forgets the series of the outbound services `gone` says the table no longer has, once
    /// nothing holds their handles (no table's route, no request in flight): a sidecar in a
    /// mesh whose services come and go keeps the series of the services it calls, not of every
    /// one it ever called. Inbound series and those of `unknown` and `passthrough` stay.
    /// Returns how many handles it forgot.
    pub fn prune(&self, gone: impl Fn(&str) -> bool) -> usize {
        let mut targets = self.targets.lock().expect("metrics lock");
        let mut forgotten = Vec::new();
        targets.retain(|(direction, target, _, _), m| {
            let forget =
                *direction == Direction::Outbound && Arc::strong_count(m) == 1 && gone(target);
            if forget {
                forgotten.push(m.clone());
            }
            !forget
        });
        if forgotten.is_empty() {
            return 0;
        }
        let left: std::collections::HashSet<&str> = (targets.keys())
            .filter(|k| k.0 == Direction::Outbound)
            .map(|k| &*k.1)
            .collect();
        for m in &forgotten {
            m.forget(&self.requests, &self.latency);
            if !left.contains(&*m.target) {
                m.forget_traffic();
            }
        }
        forgotten.len()
    }

    /// The handles for one target, created on first use and shared afterwards.
    pub fn target(&self, direction: Direction, target: &Arc<str>) -> Arc<TargetMetrics> {
        let none: Arc<str> = Arc::from("");
        self.backend(direction, target, &none, &none)
    }

    /// The handles for one backend of one of a target's routes: its request and response
    /// series carry the route and the backend; the traffic-policy series are the target's.
    pub fn backend(
        &self,
        direction: Direction,
        target: &Arc<str>,
        route: &Arc<str>,
        backend: &Arc<str>,
    ) -> Arc<TargetMetrics> {
        let mut targets = self.targets.lock().expect("metrics lock");
        let key = (direction, target.clone(), route.clone(), backend.clone());
        targets
            .entry(key)
            .or_insert_with(|| {
                let l = [direction.as_str(), &**target, &**route, &**backend];
                Arc::new(TargetMetrics {
                    direction: direction.as_str(),
                    target: target.clone(),
                    route: route.clone(),
                    backend: backend.clone(),
                    requests: self.requests.with_label_values(&l),
                    latency: self.latency.with_label_values(&l),
                    responses: self.responses.clone(),
                    http: (100..600).map(|_| OnceLock::new()).collect(),
                    grpc: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
                    other: Mutex::new(HashMap::new()),
                    families: self.traffic.clone(),
                    traffic: TrafficHandles::default(),
                })
            })
            .clone()
    }
}

impl TargetMetrics {
    fn labels(&self) -> [&str; 2] {
        [self.direction, &self.target]
    }

    /// The target's labels and one more.
    fn labels_and<'a>(&'a self, extra: &'a str) -> [&'a str; 3] {
        [self.direction, &self.target, extra]
    }

    pub fn retry(&self, reason: crate::retry::Reason) {
        self.traffic.retries[reason as usize]
            .get_or_init(|| {
                self.families
                    .retries
                    .with_label_values(&self.labels_and(reason.as_str()))
            })
            .inc();
    }

    pub fn budget_exhausted(&self) {
        self.traffic
            .budget_exhausted
            .get_or_init(|| {
                self.families
                    .budget_exhausted
                    .with_label_values(&self.labels())
            })
            .inc();
    }

    pub fn attempts(&self, n: u32) {
        self.traffic
            .attempts
            .get_or_init(|| self.families.attempts.with_label_values(&self.labels()))
            .observe(f64::from(n));
    }

    pub fn pending_timeout(&self) {
        self.traffic
            .pending_timeouts
            .get_or_init(|| {
                self.families
                    .pending_timeouts
                    .with_label_values(&self.labels())
            })
            .inc();
    }

    pub fn overflow(&self, limit: crate::resilience::Limit) {
        self.traffic.overflow[limit as usize]
            .get_or_init(|| {
                self.families
                    .overflow
                    .with_label_values(&self.labels_and(limit.as_str()))
            })
            .inc();
    }

    fn ejected_gauge(&self) -> &IntGauge {
        self.traffic
            .ejected
            .get_or_init(|| self.families.ejected.with_label_values(&self.labels()))
    }

    /// An endpoint was ejected.
    pub fn ejection(&self) {
        self.traffic
            .ejections
            .get_or_init(|| self.families.ejections.with_label_values(&self.labels()))
            .inc();
        self.ejected_gauge().inc();
    }

    /// An ejected endpoint is back in service.
    pub fn returned(&self) {
        self.ejected_gauge().dec();
    }

    pub fn rate_limited(&self) {
        self.traffic
            .rate_limited
            .get_or_init(|| self.families.rate_limited.with_label_values(&self.labels()))
            .inc();
    }

    /// `abort` false: a delay.
    pub fn fault(&self, abort: bool) {
        let i = usize::from(abort);
        self.traffic.faults[i]
            .get_or_init(|| {
                self.families
                    .faults
                    .with_label_values(&self.labels_and(FAULT_KINDS[i]))
            })
            .inc();
    }

    pub fn mirrored(&self, answered: bool) {
        let i = usize::from(!answered);
        self.traffic.mirrored[i]
            .get_or_init(|| {
                self.families
                    .mirrored
                    .with_label_values(&self.labels_and(MIRROR_RESULTS[i]))
            })
            .inc();
    }

    pub fn request(&self) {
        self.requests.inc();
    }

    pub fn latency(&self, secs: f64) {
        self.latency.observe(secs);
    }

    /// Counts a finished response. `grpc` is the grpc-status of a gRPC response, if any.
    /// Label values are formatted once per target and combination, never per response.
    pub fn response(&self, status: u16, grpc: Option<u32>) {
        // The upstream chooses the number: one label value for every undefined code.
        let grpc = grpc.map(|g| {
            if (g as usize) < GRPC_CODES {
                g
            } else {
                GRPC_OTHER
            }
        });
        let row = match status {
            200 => Some(0),
            499 => Some(1),
            _ => None,
        };
        let slot = match (grpc, row) {
            (Some(g), Some(row)) => self.grpc[row].get(g as usize),
            (Some(_), None) => None,
            (None, _) => self.http.get(usize::from(status).wrapping_sub(100)),
        };
        match slot {
            Some(slot) => slot.get_or_init(|| self.counter(status, grpc)).inc(),
            None => self
                .other
                .lock()
                .expect("metrics lock")
                .entry((status, grpc))
                .or_insert_with(|| self.counter(status, grpc))
                .inc(),
        }
    }

    fn counter(&self, status: u16, grpc: Option<u32>) -> IntCounter {
        let (status, grpc) = response_labels(status, grpc);
        self.responses.with_label_values(&[
            self.direction,
            &*self.target,
            &*self.route,
            &*self.backend,
            &status,
            &grpc,
        ])
    }

    /// Removes its request and response series from their families.
    fn forget(&self, requests: &IntCounterVec, latency: &HistogramVec) {
        let l = [self.direction, &*self.target, &*self.route, &*self.backend];
        let _ = requests.remove_label_values(&l);
        let _ = latency.remove_label_values(&l);
        let mut made: Vec<(u16, Option<u32>)> = Vec::new();
        for (i, slot) in self.http.iter().enumerate() {
            if slot.get().is_some() {
                made.push((100 + i as u16, None));
            }
        }
        for (row, status) in [(0, 200), (1, 499)] {
            for (g, slot) in self.grpc[row].iter().enumerate() {
                if slot.get().is_some() {
                    made.push((status, Some(g as u32)));
                }
            }
        }
        made.extend(self.other.lock().expect("metrics lock").keys().copied());
        for (status, grpc) in made {
            let (status, grpc) = response_labels(status, grpc);
            let _ = self
                .responses
                .remove_label_values(&[l[0], l[1], l[2], l[3], &status, &grpc]);
        }
    }

    /// Removes the target's traffic-policy series, every label value each family can have
    /// (the route and backend handles of one target share them).
    fn forget_traffic(&self) {
        let f = &self.families;
        let l = self.labels();
        for family in [
            &f.budget_exhausted,
            &f.pending_timeouts,
            &f.ejections,
            &f.rate_limited,
        ] {
            let _ = family.remove_label_values(&l);
        }
        let _ = f.attempts.remove_label_values(&l);
        // An endpoint still ejected keeps the gauge: its cluster may serve the service again
        // (a Listener back with an unchanged Cluster), and its return would count below 0.
        if f.ejected
            .get_metric_with_label_values(&l)
            .is_ok_and(|g| g.get() == 0)
        {
            let _ = f.ejected.remove_label_values(&l);
        }
        let extra = [
            (
                &f.retries,
                crate::retry::Reason::labels().collect::<Vec<_>>(),
            ),
            (&f.overflow, crate::resilience::LIMITS.to_vec()),
            (&f.faults, FAULT_KINDS.to_vec()),
            (&f.mirrored, MIRROR_RESULTS.to_vec()),
        ];
        for (family, values) in extra {
            for v in values {
                let _ = family.remove_label_values(&self.labels_and(v));
            }
        }
    }
}

/// The `status_code` and `grpc_status` label values of a response series.
fn response_labels(status: u16, grpc: Option<u32>) -> (String, String) {
    let grpc = match grpc {
        Some(GRPC_OTHER) => "other".to_string(),
        Some(g) => g.to_string(),
        None => String::new(),
    };
    (status.to_string(), grpc)
}
