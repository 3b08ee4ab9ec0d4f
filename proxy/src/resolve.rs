//! Endpoints configured by host name (`db.example.com:5432` in the table file, a STRICT_DNS
//! cluster over xDS): resolved with hickory-resolver and re-resolved when the answer's TTL runs
//! out.
//!
//! Every address a name resolves to becomes an endpoint of its own, with the weight, labels and
//! identity the name was given (Envoy's STRICT_DNS). The table compiles against the answers in
//! hand ([`Resolved`]); when an answer changes, whoever publishes tables (the file watch, the
//! xDS client) is told and compiles again. Until a name's first answer it has no endpoints.
//!
//! - A name the DNS says has no addresses (NXDOMAIN, or no A/AAAA records) loses its endpoints.
//! - A lookup that fails (no answer within `--endpoint-dns-timeout`, SERVFAIL, ...) keeps the
//!   addresses last seen and is retried after 1 s, doubling up to 30 s: a DNS outage does not
//!   empty a cluster.
//! - Names no table uses any more are forgotten.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolverConfig},
    name_server::TokioConnectionProvider,
    proto::xfer::Protocol,
};
use serde::Serialize;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The first retry after a failed lookup; doubled per failure up to [`FAILURE_BACKOFF_MAX`].
const FAILURE_BACKOFF_BASE: Duration = Duration::from_secs(1);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The answers a table is compiled against: host name -> its addresses, sorted.
#[derive(Debug, Default, Clone)]
pub struct Resolved {
    hosts: HashMap<Box<str>, Arc<[IpAddr]>>,
}

impl Resolved {
    /// No answers: every host name compiles to no endpoints.
    pub fn none() -> Self {
        Self::default()
    }

    /// Fixed answers (tests, benchmarks).
    pub fn from_map(hosts: impl IntoIterator<Item = (String, Vec<IpAddr>)>) -> Self {
        Resolved {
            hosts: hosts
                .into_iter()
                .map(|(h, mut a)| {
                    a.sort_unstable();
                    (h.into(), a.into())
                })
                .collect(),
        }
    }

    /// The addresses of `host` (lower case, no trailing dot); empty until it is resolved.
    pub fn get(&self, host: &str) -> &[IpAddr] {
        self.hosts.get(host).map_or(&[], |a| a)
    }

    /// The host names whose addresses differ from `old`'s: what a new answer changed.
    pub fn changed_from<'a>(&'a self, old: &'a Resolved) -> impl Iterator<Item = &'a str> {
        let changed_or_new = (self.hosts.iter())
            .filter(|(h, a)| old.hosts.get(*h) != Some(*a))
            .map(|(h, _)| &**h);
        let gone = (old.hosts.keys())
            .filter(|h| !self.hosts.contains_key(*h))
            .map(|h| &**h);
        changed_or_new.chain(gone)
    }
}

#[derive(Debug, Clone)]
pub struct ResolveConfig {
    /// One DNS server to ask instead of /etc/resolv.conf's (whose search list still applies).
    pub server: Option<SocketAddr>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How long one lookup may take, retries to every server included.
    pub timeout: Duration,
}

/// What `/config_dump` shows of one name.
#[derive(Debug, Clone, Serialize)]
struct NameStatus {
    addresses: Vec<IpAddr>,
    /// When the last answer (or failure) came, in seconds since the Unix epoch.
    resolved_at: Option<u64>,
    /// Seconds until the next lookup.
    next_lookup_in: f64,
    consecutive_failures: u32,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Entry {
    due: Instant,
    failures: u32,
    last_error: Option<String>,
    resolved_at: Option<SystemTime>,
}

impl Entry {
    /// A name not looked up yet: due at once.
    fn new(now: Instant) -> Self {
        Entry {
            due: now,
            failures: 0,
            last_error: None,
            resolved_at: None,
        }
    }
}

/// Resolves the host names the table in force uses and keeps their answers fresh.
pub struct Resolver {
    dns: Result<TokioResolver, String>,
    cfg: ResolveConfig,
    current: ArcSwap<Resolved>,
    entries: Mutex<HashMap<Box<str>, Entry>>,
    wake: Notify,
    changed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The hickory resolver: /etc/resolv.conf's servers, search list and options, or `server`
/// with that search list. Answers are cached no shorter than `min_ttl` and no longer than
/// `max_ttl`.
fn build(cfg: &ResolveConfig) -> Result<TokioResolver, String> {
    let system = hickory_resolver::system_conf::read_system_conf();
    let (config, mut opts) = match (cfg.server, system) {
        (None, Ok(system)) => system,
        (None, Err(e)) => {
            return Err(format!(
                "cannot read the system's DNS configuration ({e}); give --dns-upstream"
            ));
        }
        (Some(server), system) => {
            let (sys, opts) = system.unwrap_or_default();
            let mut config =
                ResolverConfig::from_parts(sys.domain().cloned(), sys.search().to_vec(), vec![]);
            config.add_name_server(NameServerConfig::new(server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(server, Protocol::Tcp));
            (config, opts)
        }
    };
    opts.positive_min_ttl = Some(cfg.min_ttl);
    opts.positive_max_ttl = Some(cfg.max_ttl);
    opts.negative_min_ttl = Some(cfg.min_ttl);
    opts.negative_max_ttl = Some(cfg.max_ttl);
    let mut b = TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
    *b.options_mut() = opts;
    Ok(b.build())
}

impl Resolver {
    pub fn new(cfg: ResolveConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let dns = build(&cfg);
        Arc::new(Resolver {
            dns,
            cfg,
            current: ArcSwap::from_pointee(Resolved::none()),
            entries: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            changed: watch::Sender::new(0),
            metrics,
        })
    }

    /// The answers in hand, to compile a table against.
    pub fn resolved(&self) -> Arc<Resolved> {
        self.current.load_full()
    }

    /// Told whenever an answer changes: time to compile the table again.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A new table is in force: look up the names it brought.
    pub fn table_changed(&self) {
        self.wake.notify_one();
    }

    /// Looks up, once, every name `table` uses that has no answer yet, for at most `limit`:
    /// a table loaded at start-up is compiled again with its names resolved before the proxy
    /// serves. Returns whether an answer arrived.
    pub async fn prime(&self, names: &[Box<str>], limit: Duration) -> bool {
        let due: Vec<Box<str>> = {
            let current = self.current.load();
            names
                .iter()
                .filter(|n| current.get(n).is_empty())
                .cloned()
                .collect()
        };
        if due.is_empty() {
            return false;
        }
        let wanted = names.iter().map(|n| &**n).collect();
        tokio::time::timeout(limit, self.refresh(&wanted, due))
            .await
            .unwrap_or(false)
    }

    /// Keeps the names the table in force uses (`wanted` lists them) resolved until `stop`.
    pub async fn run(
        self: Arc<Self>,
        wanted: impl Fn() -> Vec<Box<str>> + Send + 'static,
        stop: CancellationToken,
    ) {
        loop {
            let wanted: Vec<Box<str>> = wanted();
            let keep: HashSet<&str> = wanted.iter().map(|n| &**n).collect();
            let now = Instant::now();
            let due: Vec<Box<str>> = {
                let mut entries = self.entries.lock().expect("resolver lock");
                entries.retain(|name, _| keep.contains(&**name));
                for name in &wanted {
                    entries
                        .entry(name.clone())
                        .or_insert_with(|| Entry::new(now));
                }
                entries
                    .iter()
                    .filter(|(_, e)| e.due <= now)
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            if !due.is_empty() {
                self.refresh(&keep, due).await;
                continue;
            }
            let next = self
                .entries
                .lock()
                .expect("resolver lock")
                .values()
                .map(|e| e.due)
                .min();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
        }
    }

    /// Looks up `due` (concurrently), records the answers and, when the addresses of any of
    /// `wanted` changed, publishes them. Returns whether they changed.
    async fn refresh(&self, wanted: &HashSet<&str>, due: Vec<Box<str>>) -> bool {
        let answers =
            futures_util::future::join_all(due.iter().map(|name| self.lookup(name))).await;
        let mut next = Resolved::clone(&self.current.load());
        next.hosts.retain(|name, _| wanted.contains(&**name));
        let mut changed = false;
        {
            let mut entries = self.entries.lock().expect("resolver lock");
            let now = Instant::now();
            for (name, answer) in due.iter().zip(answers) {
                let entry = entries
                    .entry(name.clone())
                    .or_insert_with(|| Entry::new(now));
                entry.resolved_at = Some(SystemTime::now());
                let addrs = match answer {
                    Answer::Addresses(addrs, valid_until) => {
                        self.metrics.endpoint_dns("ok");
                        entry.failures = 0;
                        entry.last_error = None;
                        entry.due =
                            valid_until.clamp(now + self.cfg.min_ttl, now + self.cfg.max_ttl);
                        addrs
                    }
                    Answer::NoRecords(why) => {
                        self.metrics.endpoint_dns("no_records");
                        tracing::warn!(name = %name, error = %why, "endpoint host name has no addresses");
                        entry.failures = 0;
                        entry.last_error = Some(why);
                        entry.due = now + self.cfg.min_ttl.max(FAILURE_BACKOFF_BASE);
                        Vec::new()
                    }
                    Answer::Failed(why) => {
                        self.metrics.endpoint_dns("error");
                        tracing::warn!(name = %name, error = %why, "endpoint host name lookup failed; keeping its last addresses");
                        entry.failures = entry.failures.saturating_add(1);
                        entry.last_error = Some(why);
                        entry.due = now + backoff(entry.failures);
                        continue;
                    }
                };
                if next.get(name) != addrs.as_slice() {
                    tracing::info!(name = %name, addresses = ?addrs, "endpoint host name resolved");
                    changed = true;
                    if addrs.is_empty() {
                        next.hosts.remove(name);
                    } else {
                        next.hosts.insert(name.clone(), addrs.into());
                    }
                }
            }
        }
        self.current.store(Arc::new(next));
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        changed
    }

    async fn lookup(&self, name: &str) -> Answer {
        let dns = match &self.dns {
            Ok(dns) => dns,
            Err(e) => return Answer::Failed(e.clone()),
        };
        let answer = match tokio::time::timeout(self.cfg.timeout, dns.lookup_ip(name)).await {
            Ok(a) => a,
            Err(_) => {
                return Answer::Failed(format!(
                    "no answer for `{name}` within {:?}",
                    self.cfg.timeout
                ));
            }
        };
        match answer {
            Ok(answer) => {
                let mut addrs: Vec<IpAddr> = answer.iter().collect();
                addrs.sort_unstable();
                addrs.dedup();
                let valid_until = Instant::from_std(answer.valid_until());
                if addrs.is_empty() {
                    Answer::NoRecords(format!("no A or AAAA records for `{name}`"))
                } else {
                    Answer::Addresses(addrs, valid_until)
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                Answer::NoRecords(e.to_string())
            }
            Err(e) => Answer::Failed(e.to_string()),
        }
    }

    /// Every name with its addresses and lookup state, for `/config_dump`.
    pub fn describe(&self) -> serde_json::Value {
        let current = self.current.load();
        let now = Instant::now();
        let entries = self.entries.lock().expect("resolver lock");
        let mut names: Vec<(&Box<str>, NameStatus)> = entries
            .iter()
            .map(|(name, e)| {
                let status = NameStatus {
                    addresses: current.get(name).to_vec(),
                    resolved_at: e
                        .resolved_at
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs()),
                    next_lookup_in: e.due.saturating_duration_since(now).as_secs_f64(),
                    consecutive_failures: e.failures,
                    last_error: e.last_error.clone(),
                };
                (name, status)
            })
            .collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        serde_json::json!({
            "resolver": match &self.dns {
                Ok(_) => match self.cfg.server {
                    Some(s) => s.to_string(),
                    None => "/etc/resolv.conf".to_string(),
                },
                Err(e) => format!("unavailable: {e}"),
            },
            "names": names.into_iter().map(|(n, s)| (n.to_string(), serde_json::to_value(s).unwrap_or_default())).collect::<serde_json::Map<_, _>>(),
        })
    }
}

enum Answer {
    Addresses(Vec<IpAddr>, Instant),
    NoRecords(String),
    Failed(String),
}

/// The wait before retrying a lookup that failed `failures` times in a row.
fn backoff(failures: u32) -> Duration {
    weft_core::backoff::ceiling(
        FAILURE_BACKOFF_BASE,
        FAILURE_BACKOFF_MAX,
        failures.saturating_sub(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(u32::MAX), FAILURE_BACKOFF_MAX);
    }

    #[test]
    fn resolved_answers_are_sorted_and_unknown_names_are_empty() {
        let r = Resolved::from_map([(
            "db.example.com".to_string(),
            vec!["10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()],
        )]);
        assert_eq!(
            r.get("db.example.com"),
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert!(r.get("other.example.com").is_empty());
    }
}
