//! The control plane's push benchmark (`tests/bench/xds`): how long from a registry change
//! (an etcd put) until N connected ADS clients have it, and what a big mesh costs.
//!
//! - Push: the control plane on a real etcd with `--services` services; `--clients` simulated
//!   delta ADS clients (wildcard on all four types, ACKing every response, 100 streams per
//!   HTTP/2 connection); `--changes` endpoint changes, one at a time. For each change: the time
//!   until every client has received the changed endpoints and answered. Reports p50/p99 over
//!   clients and over changes, and the control plane's CPU time and RSS.
//! - Size and apply: `--table-services` services (with 1, then 5 endpoints each) translated
//!   and applied in this process as the proxy's ADS client applies responses (`State` and
//!   `Incremental`): the first table, a lookup by authority, and `--table-changes` endpoint
//!   changes and route changes of one service each (p50/p99); then a real `weft-proxy` on the
//!   control plane with that many services: its first full table and its RSS.
//!
//! Not a test: the figures depend on the machine.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use weft_control_plane::{registry, translate};
use weft_proxy::{
    discovery::{State, Update},
    table::xds::{Changed, Incremental},
};
use weft_tests::{chain::TempDir, etcd::Etcd, mesh, proxy::Proxy};
use weft_xds_proto::{
    discovery::{AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest},
    envoy::config::core::v3::Node,
    type_url,
};

// The proxy's allocator, so the figures measured in this process are the proxy's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// CPU seconds (user + system) and RSS bytes of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the stat line (11 and 12 after the name).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    (cpu, weft_tests::proxy::rss_of(pid))
}

fn registration(port: u16, weight: u32) -> String {
    registration_of(port, 0, weight)
}

/// Endpoint `e` of service `port`.
fn registration_of(port: u16, e: usize, weight: u32) -> String {
    format!(
        "{{\"address\": \"10.{}.{}.{}:15006\", \"port\": 8080, \"weight\": {weight}}}",
        1 + e,
        port / 250,
        port % 250 + 1
    )
}

/// Writes `n` services (`eps` endpoints each) into etcd.
async fn populate(client: &weft_core::etcd::Client, n: usize, eps: usize) {
    let mut tasks = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(8).max(1)) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                for e in 0..eps {
                    client
                        .put(
                            &format!("/weft/endpoints/bench/svc-{i}/pod-{e}"),
                            &registration_of(i as u16, e, 1),
                            None,
                        )
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// One simulated client: the arrival time (ns since `epoch`) of the last endpoint response.
async fn client(
    ch: tonic::transport::Channel,
    id: usize,
    epoch: Instant,
    last_eds: Arc<AtomicU64>,
    ready: mpsc::UnboundedSender<()>,
) {
    let mut ads = AggregatedDiscoveryServiceClient::new(ch).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, t) in type_url::APPLY_ORDER.iter().enumerate() {
        let _ = tx.send(DeltaDiscoveryRequest {
            node: (i == 0).then(|| Node {
                id: format!("bench-{id}"),
                ..Default::default()
            }),
            type_url: t.to_string(),
            ..Default::default()
        });
    }
    let mut stream = ads
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Ok(Some(r)) = stream.message().await {
        if r.type_url == type_url::ENDPOINT {
            last_eds.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
        }
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        });
        seen += 1;
        if seen == 4 {
            let _ = ready.send(());
        }
    }
}

async fn push_bench(etcd: &Etcd, clients: usize, services: usize, changes: usize) {
    let kv = weft_core::etcd::Client::new(&[etcd.addr.to_string()]);
    populate(&kv, services, 1).await;
    let dir = TempDir::new("xds-bench");
    let ep = etcd.addr.to_string();
    let cp = mesh::control_plane(&dir, &["--registry", "etcd", "--etcd-endpoints", &ep]);
    let url = format!("http://{}", cp.addr("xds"));
    let epoch = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut stamps = Vec::new();
    let mut channel = None;
    for id in 0..clients {
        if id % 100 == 0 {
            channel = Some(
                tonic::transport::Endpoint::from_shared(url.clone())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        let stamp = Arc::new(AtomicU64::new(0));
        stamps.push(stamp.clone());
        tokio::spawn(client(
            channel.clone().unwrap(),
            id,
            epoch,
            stamp,
            ready_tx.clone(),
        ));
    }
    for _ in 0..clients {
        ready_rx.recv().await.unwrap();
    }
    let (cpu0, _) = usage(cp.pid());
    let mut per_client = Vec::new();
    let mut all_acked = Vec::new();
    for c in 0..changes {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before: Vec<u64> = stamps.iter().map(|s| s.load(Ordering::Acquire)).collect();
        let t0 = epoch.elapsed().as_nanos() as u64;
        kv.put(
            "/weft/endpoints/bench/svc-0/pod-0",
            &registration(0, 2 + c as u32),
            None,
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let done = stamps
                .iter()
                .zip(&before)
                .filter(|(s, b)| s.load(Ordering::Acquire) > **b)
                .count();
            if done == clients {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "change {c}: only {done}/{clients} clients got it in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let lat: Vec<f64> = stamps
            .iter()
            .map(|s| (s.load(Ordering::Acquire) - t0) as f64 / 1e6)
            .collect();
        all_acked.push(lat.iter().cloned().fold(0.0, f64::max));
        per_client.extend(lat);
    }
    let (cpu1, rss) = usage(cp.pid());
    per_client.sort_by(f64::total_cmp);
    all_acked.sort_by(f64::total_cmp);
    println!(
        "push  clients={clients:<5} services={services:<6} changes={changes}: per client p50 {:.1} ms p99 {:.1} ms; all clients p50 {:.1} ms p99 {:.1} ms; control plane CPU {:.2} s over the changes, RSS {:.1} MiB",
        pct(&per_client, 0.5),
        pct(&per_client, 0.99),
        pct(&all_acked, 0.5),
        pct(&all_acked, 0.99),
        cpu1 - cpu0,
        rss as f64 / (1 << 20) as f64
    );
    // Clear the services for the next run.
    clear(&kv, services, 1).await;
}

async fn clear(kv: &weft_core::etcd::Client, n: usize, eps: usize) {
    for i in 0..n {
        for e in 0..eps {
            let _ = kv
                .delete(&format!("/weft/endpoints/bench/svc-{i}/pod-{e}"))
                .await;
        }
    }
}

/// A response carrying `items`, as the proxy's client hands it to `State::apply`.
fn update<M: prost::Message + prost::Name>(type_url: &str, items: &[M], full: bool) -> Update {
    Update {
        type_url: type_url.to_string(),
        version: "v".into(),
        full,
        resources: items
            .iter()
            .map(|m| {
                let any = weft_xds_proto::google::protobuf::Any {
                    type_url: type_url.to_string(),
                    value: m.encode_to_vec(),
                };
                (None, "1".to_string(), Some(any))
            })
            .collect(),
        removed: Vec::new(),
    }
}

/// The registry snapshot of `n` services with `eps` endpoints each, as the control plane
/// would hold it.
fn snapshot(n: usize, eps: usize) -> registry::Snapshot {
    let mut snap = registry::Snapshot::default();
    for i in 0..n {
        let host = format!("svc-{i}.bench.svc.cluster.local");
        let endpoints: Vec<_> = (0..eps)
            .map(|e| serde_json::json!({"address": format!("10.{}.{}.{}:15006", 1 + e, i / 250, i % 250 + 1)}))
            .collect();
        let svc = registry::Service {
            key: format!("bench/svc-{i}"),
            host: host.clone(),
            spec: serde_json::from_value(serde_json::json!({
                "port": 8080,
                "aliases": [format!("svc-{i}")],
                "endpoints": endpoints,
            }))
            .unwrap(),
        };
        snap.services.insert(svc.authority(), svc);
    }
    snap
}

/// p50 and p99 of `samples` (ms).
fn p50_p99(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (pct(&samples, 0.5), pct(&samples, 0.99))
}

/// The proxy side of a big mesh, in this process: the first table, then `changes` endpoint
/// changes and route changes, each applied as the proxy's ADS client applies a response
/// (decoded, checked, the services it touches compiled, the table swapped).
fn apply_bench(n: usize, eps: usize, changes: usize) {
    let t = Instant::now();
    let res = translate::translate(&snapshot(n, eps));
    let translate_ms = t.elapsed().as_secs_f64() * 1e3;
    let metrics = weft_proxy::metrics::Metrics::new();
    let dns = weft_proxy::resolve::Resolved::none();
    let mut state = State::default();
    let mut inc = Incremental::default();
    let mut table = weft_proxy::table::Table::empty();
    let mut generation = 0;
    let mut apply = |state: &mut State,
                     inc: &mut Incremental,
                     table: &mut weft_proxy::table::Table,
                     kind: usize,
                     u: Update| {
        let outcome = state.apply(kind, u);
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        let mut changed = Changed::default();
        for name in outcome.names {
            changed.mark(kind, name);
        }
        generation += 1;
        let c = inc.update(
            state.resources(),
            &changed,
            Arc::from("v"),
            generation,
            &metrics,
            table,
            &dns,
        );
        *table = c.table;
    };
    let t = Instant::now();
    apply(
        &mut state,
        &mut inc,
        &mut table,
        0,
        update(type_url::CLUSTER, &res.clusters, true),
    );
    apply(
        &mut state,
        &mut inc,
        &mut table,
        1,
        update(type_url::ENDPOINT, &res.endpoints, true),
    );
    apply(
        &mut state,
        &mut inc,
        &mut table,
        2,
        update(type_url::LISTENER, &res.listeners, true),
    );
    apply(
        &mut state,
        &mut inc,
        &mut table,
        3,
        update(type_url::ROUTE, &res.routes, true),
    );
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(table.service_count(), n);
    if std::env::var_os("WEFT_BENCH_MEMORY").is_some() {
        let rss = || weft_tests::proxy::rss_of(std::process::id()) as f64 / (1 << 20) as f64;
        let settle = || std::thread::sleep(Duration::from_millis(500));
        settle();
        let all = rss();
        drop(std::mem::take(&mut state));
        settle();
        let without_state = rss();
        drop(std::mem::replace(
            &mut table,
            weft_proxy::table::Table::empty(),
        ));
        drop(std::mem::take(&mut inc));
        settle();
        let without_both = rss();
        println!(
            "memory services={n} endpoints/service={eps}: RSS {all:.1} MiB; without the resources held {without_state:.1} MiB; without the table too {without_both:.1} MiB"
        );
        return;
    }
    let names: Vec<String> = (0..n)
        .map(|i| format!("svc-{i}.bench.svc.cluster.local:8080"))
        .collect();
    let lookups = 1_000_000;
    let t = Instant::now();
    let mut found = 0;
    for k in 0..lookups {
        found += table.by_authority(&names[k % n]).is_some() as usize;
    }
    let lookup_ns = t.elapsed().as_nanos() as f64 / lookups as f64;
    assert_eq!(found, lookups);

    // Endpoint changes: one service's load assignment gains an endpoint, then loses it.
    let mut endpoint_ms = Vec::with_capacity(changes);
    for c in 0..changes {
        let k = (c * 7919) % n;
        let mut cla = res.endpoints[k].clone();
        if c % 2 == 0 {
            let mut extra = cla.endpoints[0].lb_endpoints[0].clone();
            if let Some(
                weft_xds_proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(
                    ep,
                ),
            ) = &mut extra.host_identifier
                && let Some(
                    weft_xds_proto::envoy::config::core::v3::address::Address::SocketAddress(sa),
                ) = ep.address.as_mut().and_then(|a| a.address.as_mut())
            {
                sa.address = format!("10.99.{}.{}", k / 250, k % 250 + 1);
            }
            cla.endpoints[0].lb_endpoints.push(extra);
        }
        let gen_before = inc.compiles;
        let t = Instant::now();
        apply(
            &mut state,
            &mut inc,
            &mut table,
            1,
            update(type_url::ENDPOINT, &[cla], false),
        );
        endpoint_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(
            inc.compiles, gen_before,
            "an endpoint change compiled a route"
        );
    }
    // Route changes: one service's route becomes a weighted split with a new weight.
    let mut route_ms = Vec::with_capacity(changes);
    for c in 0..changes {
        let k = (c * 7919) % n;
        let mut rc = res.routes[k].clone();
        for r in rc
            .virtual_hosts
            .iter_mut()
            .flat_map(|v| v.routes.iter_mut())
        {
            use weft_xds_proto::envoy::config::route::v3::{
                WeightedCluster, route::Action, route_action::ClusterSpecifier,
                weighted_cluster::ClusterWeight,
            };
            if let Some(Action::Route(a)) = &mut r.action
                && let Some(ClusterSpecifier::Cluster(name)) = a.cluster_specifier.clone()
            {
                a.cluster_specifier = Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters: vec![ClusterWeight {
                        name,
                        weight: Some(weft_xds_proto::google::protobuf::UInt32Value {
                            value: 1 + c as u32,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }));
            }
        }
        let t = Instant::now();
        apply(
            &mut state,
            &mut inc,
            &mut table,
            3,
            update(type_url::ROUTE, &[rc], false),
        );
        route_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (e50, e99) = p50_p99(endpoint_ms);
    let (r50, r99) = p50_p99(route_ms);
    println!(
        "apply services={n} endpoints/service={eps}: translate {translate_ms:.0} ms; first table {first_ms:.0} ms; lookup by authority {lookup_ns:.0} ns; one endpoint changed p50 {e50:.3} ms p99 {e99:.3} ms; one route changed p50 {r50:.3} ms p99 {r99:.3} ms ({changes} changes each; {} listener compiles in all)",
        inc.compiles
    );
}

/// A real proxy on the control plane with `n` services of `eps` endpoints each: the time to
/// its first full table, and its RSS.
async fn proxy_bench(etcd: &Etcd, n: usize, eps: usize) {
    let kv = weft_core::etcd::Client::new(&[etcd.addr.to_string()]);
    populate(&kv, n, eps).await;
    let dir = TempDir::new("xds-bench-table");
    let ep = etcd.addr.to_string();
    let cp = mesh::control_plane(&dir, &["--registry", "etcd", "--etcd-endpoints", &ep]);
    let t = Instant::now();
    let proxy = Proxy::start(&["--control-plane", &cp.addr("xds").to_string()]);
    // Polled through a gauge: `/config_dump` would write the whole table out as JSON on the
    // proxy's control thread every time, which is slower than the apply it measures and leaves
    // its own peak in the proxy's RSS.
    let (mut services, deadline) = (0, Instant::now() + Duration::from_secs(120));
    while services < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        services = proxy.try_metric("weft_table_services").await.unwrap_or(0.0) as usize;
    }
    let first = t.elapsed().as_secs_f64();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let at_first = mib(proxy.rss());
    // What it holds once the start's transient buffers are given back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = mib(proxy.rss());
    // The table, checked once, after the figures.
    let dumped = proxy.config_dump().await["services"]
        .as_array()
        .map_or(0, |a| a.len());
    assert_eq!(dumped, n, "the gauge and the table agree");
    println!(
        "proxy services={services} endpoints/service={eps}: first full table after {first:.2} s; proxy RSS {at_first:.1} MiB then, {settled:.1} MiB 3 s later; control plane RSS {:.1} MiB",
        mib(usage(cp.pid()).1)
    );
    clear(&kv, n, eps).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(etcd) = Etcd::start() else {
        eprintln!("etcd is not installed (Debian etcd-server)");
        std::process::exit(1);
    };
    // `--parts push,apply,proxy` (all by default) runs some of the benchmarks.
    let args: Vec<String> = std::env::args().collect();
    let parts = args
        .iter()
        .position(|a| a == "--parts")
        .and_then(|i| args.get(i + 1))
        .map_or("push,apply,proxy", |p| p.as_str());
    let part = |p: &str| parts.split(',').any(|x| x == p);
    let services = arg("--services", 100);
    let changes = arg("--changes", 20);
    if part("push") {
        for clients in [arg("--clients", 100), arg("--clients2", 1000)] {
            push_bench(&etcd, clients, services, changes).await;
        }
    }
    let (n, changes) = (
        arg("--table-services", 10_000),
        arg("--table-changes", 1_000),
    );
    for eps in [1, 5] {
        if part("apply") {
            apply_bench(n, eps, changes);
        }
        if part("proxy") {
            proxy_bench(&etcd, n, eps).await;
        }
    }
}
