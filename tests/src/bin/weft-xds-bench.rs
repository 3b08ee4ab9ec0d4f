//! The control plane's push benchmark (`tests/bench/xds`): how long from a registry change
//! (an etcd put) until N connected ADS clients have it, and what a big mesh costs.
//!
//! - Push: the control plane on a real etcd with `--services` services; `--clients` simulated
//!   delta ADS clients (wildcard on all four types, ACKing every response, 100 streams per
//!   HTTP/2 connection); `--changes` endpoint changes, one at a time. For each change: the time
//!   until every client has received the changed endpoints and answered. Reports p50/p99 over
//!   clients and over changes, and the control plane's CPU time and RSS.
//! - Size: `--table-services` services translated and compiled in this process (the proxy's
//!   table compile = the swap cost) and looked up by authority; then a real `weft-proxy` on the
//!   control plane with that many services, for its RSS.
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
use weft_tests::{chain::TempDir, etcd::Etcd, mesh, proxy::Proxy};
use weft_xds_proto::{
    discovery::{AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest},
    envoy::config::core::v3::Node,
    type_url,
};

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
    format!(
        "{{\"address\": \"10.1.{}.{}:15006\", \"port\": 8080, \"weight\": {weight}}}",
        port / 250,
        port % 250 + 1
    )
}

/// Writes `n` services (one endpoint each) into etcd.
async fn populate(client: &weft_core::etcd::Client, n: usize) {
    let mut tasks = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(n.div_ceil(8).max(1)) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                client
                    .put(
                        &format!("/weft/endpoints/bench/svc-{i}/pod-0"),
                        &registration(i as u16, 1),
                        None,
                    )
                    .await
                    .unwrap();
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
    populate(&kv, services).await;
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
    for i in 0..services {
        let _ = kv
            .delete(&format!("/weft/endpoints/bench/svc-{i}/pod-0"))
            .await;
    }
}

/// The proxy side of a big mesh: compile and lookup in-process, then a real proxy's RSS.
async fn table_bench(etcd: &Etcd, n: usize) {
    // Build the registry snapshot the control plane would have, translate it, and compile it
    // as the proxy does.
    let mut snap = registry::Snapshot::default();
    for i in 0..n {
        let host = format!("svc-{i}.bench.svc.cluster.local");
        let svc = registry::Service {
            key: format!("bench/svc-{i}"),
            host: host.clone(),
            spec: serde_json::from_value(serde_json::json!({
                "port": 8080,
                "aliases": [format!("svc-{i}")],
                "endpoints": [{"address": format!("10.1.{}.{}:15006", i / 250, i % 250 + 1)}],
            }))
            .unwrap(),
        };
        snap.services.insert(svc.authority(), svc);
    }
    let t = Instant::now();
    let res = translate::translate(&snap);
    let translate_ms = t.elapsed().as_secs_f64() * 1e3;
    let resources = weft_proxy::table::xds::Resources {
        listeners: res
            .listeners
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect(),
        routes: res
            .routes
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect(),
        clusters: res
            .clusters
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect(),
        endpoints: res
            .endpoints
            .into_iter()
            .map(|e| (e.cluster_name.clone(), e))
            .collect(),
    };
    let metrics = weft_proxy::metrics::Metrics::new();
    let empty = weft_proxy::table::Table::empty();
    let mut compile_ms = Vec::new();
    let mut table = None;
    for _ in 0..5 {
        let t = Instant::now();
        let c = weft_proxy::table::xds::compile(
            &resources,
            Arc::from("v"),
            1,
            &metrics,
            &empty,
            &weft_proxy::resolve::Resolved::none(),
        );
        compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
        table = Some(c.table);
    }
    compile_ms.sort_by(f64::total_cmp);
    let table = table.unwrap();
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
    println!(
        "table services={n}: translate {translate_ms:.0} ms; proxy compile (the swap's cost) median {:.0} ms; lookup by authority {lookup_ns:.0} ns",
        compile_ms[2]
    );

    // A real proxy on the control plane with that many services.
    let kv = weft_core::etcd::Client::new(&[etcd.addr.to_string()]);
    populate(&kv, n).await;
    let dir = TempDir::new("xds-bench-table");
    let ep = etcd.addr.to_string();
    let cp = mesh::control_plane(&dir, &["--registry", "etcd", "--etcd-endpoints", &ep]);
    let t = Instant::now();
    let proxy = Proxy::start(&["--control-plane", &cp.addr("xds").to_string()]);
    let (mut services, deadline) = (0, Instant::now() + Duration::from_secs(120));
    while services < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        services = proxy.config_dump().await["services"]
            .as_array()
            .map_or(0, |a| a.len());
    }
    let first = t.elapsed().as_secs_f64();
    println!(
        "proxy services={services}: first full table after {first:.2} s; proxy RSS {:.1} MiB; control plane RSS {:.1} MiB",
        proxy.rss() as f64 / (1 << 20) as f64,
        usage(cp.pid()).1 as f64 / (1 << 20) as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(etcd) = Etcd::start() else {
        eprintln!("etcd is not installed (Debian etcd-server)");
        std::process::exit(1);
    };
    let services = arg("--services", 100);
    let changes = arg("--changes", 20);
    for clients in [arg("--clients", 100), arg("--clients2", 1000)] {
        push_bench(&etcd, clients, services, changes).await;
    }
    table_bench(&etcd, arg("--table-services", 10_000)).await;
}
