//! The composition root: `run` binds every listener, starts the identity, the control runtime
//! (xDS, DNS re-resolution, admin), the data-plane listeners and the table's sources, then
//! waits for a signal and drains.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    access_log,
    admin::AdminState,
    app_probe, balance, client, config,
    config::{Config, IdentitySource},
    control::Control,
    discovery::Discovery,
    dns,
    drain::Drain,
    identity,
    identity::{Identity, IdentityConfig, IdentityFiles},
    inbound, init, log,
    metrics::{Direction, Metrics},
    register,
    relay::{HttpProxy, Router},
    resolve::{ResolveConfig, Resolved, Resolver},
    server::{InboundTls, Listener, TcpTarget},
    table,
    table::{LoadError, Table, watch::FileWatch},
    tls, trace, transport,
};

/// How long the start waits for the first answers for a table file's endpoint host names.
const STARTUP_RESOLVE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

mod error;

pub use error::StartError;

/// Whether `url` (`[http://]host:port[/...]`) names this host's loopback.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    weft_core::address::is_loopback_authority(authority)
}

/// Starts keeping a workload certificate, if one is configured: from the CA (the first one
/// arrives in the background; `/ready` waits for it) or from files (which must load now).
fn start_identity(
    cfg: &Config,
    control_tls: Option<Arc<rustls::ClientConfig>>,
    drain: &Drain,
    control: &tokio::runtime::Handle,
) -> Result<Option<Arc<Identity>>, StartError> {
    let m = &cfg.mtls;
    let id = Arc::new(Identity::default());
    match m.identity {
        IdentitySource::None => return Ok(None),
        IdentitySource::Ca => {
            let ca = m
                .ca_address
                .clone()
                .or_else(|| cfg.discovery.control_plane.first().cloned())
                .ok_or(StartError::NoCa)?;
            // The token proves an identity: it never crosses the network in the clear.
            if !ca.starts_with("https://") && !is_loopback_url(&ca) {
                return Err(StartError::CaInTheClear(ca));
            }
            let spiffe_id = format!(
                "spiffe://{}/ns/{}/sa/{}",
                m.trust_domain, cfg.discovery.pod_namespace, cfg.discovery.service_account
            );
            tracing::info!(%ca, identity = %spiffe_id, "workload identity from the mesh CA");
            let icfg = IdentityConfig {
                ca,
                tls: control_tls,
                token_file: m.identity_token_file.clone().unwrap_or_default(),
                spiffe_id,
                lifetime: m.cert_lifetime,
                backoff_base: std::time::Duration::from_millis(500),
                backoff_max: std::time::Duration::from_secs(30),
            };
            control.spawn(identity::run(icfg, id.clone(), drain.token()));
        }
        IdentitySource::Files => {
            let files = IdentityFiles {
                cert: m.identity_cert.clone().unwrap_or_default(),
                key: m.identity_key.clone().unwrap_or_default(),
                bundle: m.identity_bundle.clone().unwrap_or_default(),
            };
            files.load(&id)?;
            tracing::info!(identity = ?id.spiffe_id(), "workload identity from files");
            control.spawn(identity::watch_files(
                files,
                id.clone(),
                m.identity_poll_interval,
                drain.token(),
            ));
        }
    }
    Ok(Some(id))
}

/// The DNS proxy's UDP socket and TCP listener, on one port. With port 0 the TCP port is
/// the one UDP got; when that port is taken for TCP, another is tried (a few times).
async fn bind_dns(
    addr: SocketAddr,
) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), StartError> {
    let mut tries = if addr.port() == 0 { 16 } else { 1 };
    loop {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(bind_err("DNS (UDP)", addr))?;
        let got = udp.local_addr()?;
        match tokio::net::TcpListener::bind(got).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries > 1 => tries -= 1,
            Err(e) => return Err(bind_err("DNS (TCP)", got)(e)),
        }
    }
}

fn bind_err(what: &str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.to_string();
    move |source| StartError::Bind { what, addr, source }
}

/// Runs the sidecar until it is told to stop (SIGTERM, SIGINT or `POST /shutdown`), then drains.
pub async fn run(mut cfg: Config, log: Option<Arc<log::LogHandle>>) -> Result<(), StartError> {
    cfg.listen_for_ipv6(init::has_global_ipv6());
    if !cfg.admin_addr.ip().is_loopback() {
        return Err(StartError::AdminNotLoopback(cfg.admin_addr));
    }
    let app_probes = match &cfg.app_probes {
        Some(json) => app_probe::parse(json)?,
        None => Default::default(),
    };
    if let Some(path) = &cfg.discovery.node_labels_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::Labels(format!("{}: {e}", path.display())))?;
        let labels = config::parse_labels_file(&text)
            .map_err(|e| StartError::Labels(format!("{}: {e}", path.display())))?;
        cfg.discovery.node_labels.extend(labels);
    }
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    // SIGHUP's default action ends the process: take it over before anything else.
    let mut sighup = signal(SignalKind::hangup())?;
    let mut control = Control::start()?;
    let metrics = Metrics::new();
    balance::configure(cfg.lb_ewma_decay, cfg.lb_default_rtt);
    let resolver = Resolver::new(
        ResolveConfig {
            server: cfg.dns_upstream,
            min_ttl: cfg.endpoint_dns_min_ttl,
            max_ttl: cfg.endpoint_dns_max_ttl.max(cfg.endpoint_dns_min_ttl),
            timeout: cfg.endpoint_dns_timeout,
        },
        metrics.clone(),
    );

    // The table: from the file when one is given (a bad file stops the start), else empty.
    let (table, text) = match &cfg.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
                file: path.display().to_string(),
                source,
            })?;
            let mut table =
                table::load_text(path, &text, 1, &metrics, &Resolved::none(), &Table::empty())?;
            // Endpoints given by host name get their addresses before the proxy serves
            // (bounded: a slow DNS does not hold the start; they follow when it answers).
            if resolver
                .prime(&table.dns_names(), STARTUP_RESOLVE_LIMIT)
                .await
            {
                table = table.recompile(1, &metrics, &resolver.resolved()).map_err(
                    |(field, message)| LoadError::Invalid {
                        file: path.display().to_string(),
                        field,
                        message,
                    },
                )?;
            }
            (table, text)
        }
        None => (Table::empty(), String::new()),
    };
    metrics.table_loaded(&table.version, table.generation, table.service_count());
    tracing::info!(version = %table.version, services = table.service_count(), "routing table loaded");
    let table = Arc::new(ArcSwap::from_pointee(table));
    let drain = Drain::new();

    // The mesh trust bundle verifies an https:// control plane (xDS and the CA).
    let bundle = match (&cfg.mtls.trust_bundle, &cfg.mtls.trust_bundle_pem) {
        (Some(path), _) => Some(
            tls::load_certs(path).map_err(|source| StartError::TrustBundle {
                flag: "--trust-bundle",
                source,
            }),
        ),
        (None, Some(text)) => {
            Some(
                tls::pem_certs(text).map_err(|source| StartError::TrustBundle {
                    flag: "--trust-bundle-pem",
                    source,
                }),
            )
        }
        (None, None) => None,
    };
    let control_tls = match bundle {
        Some(certs) => {
            let roots = tls::roots(&certs?).map_err(StartError::TrustRoots)?;
            Some(Arc::new(tls::control_plane_config(roots)))
        }
        None => None,
    };
    let https = cfg
        .discovery
        .control_plane
        .iter()
        .chain(&cfg.mtls.ca_address)
        .find(|u| u.starts_with("https://"));
    if let (Some(url), None) = (https, &control_tls) {
        return Err(StartError::NoTrustBundle(url.clone()));
    }
    let identity = start_identity(&cfg, control_tls.clone(), &drain, &control.handle)?;
    let mtls = identity
        .as_ref()
        .map(|id| Arc::new(identity::Mtls::new(id.clone())));
    // Bind everything before serving anything, so a port conflict stops the start cleanly.
    let outbound =
        transport::bind(cfg.outbound_addr).map_err(bind_err("outbound", cfg.outbound_addr))?;
    let outbound_v6 = match cfg.outbound_addr_v6 {
        Some(addr) => Some(transport::bind(addr).map_err(bind_err("outbound (IPv6)", addr))?),
        None => None,
    };
    let inbound =
        transport::bind(cfg.inbound_addr).map_err(bind_err("inbound", cfg.inbound_addr))?;
    let mut extra = Vec::new();
    for m in &cfg.outbound_tcp {
        let l = transport::bind(m.listen)
            .map_err(bind_err(&format!("outbound-tcp {}", m.service), m.listen))?;
        extra.push((m.service.clone(), l));
    }
    let dns = match cfg.dns_addr {
        Some(addr) => Some(bind_dns(addr).await?),
        None => None,
    };
    let admin_l =
        std::net::TcpListener::bind(cfg.admin_addr).map_err(bind_err("admin", cfg.admin_addr))?;
    let probe_l =
        std::net::TcpListener::bind(cfg.probe_addr).map_err(bind_err("probe", cfg.probe_addr))?;

    let mut listeners = vec![
        ("outbound".to_string(), outbound.local_addr()?),
        ("inbound".to_string(), inbound.local_addr()?),
        ("admin".to_string(), admin_l.local_addr()?),
        ("probe".to_string(), probe_l.local_addr()?),
    ];
    if let Some(l) = &outbound_v6 {
        listeners.push(("outbound-v6".to_string(), l.local_addr()?));
    }
    for (svc, l) in &extra {
        listeners.push((format!("outbound-tcp {svc}"), l.local_addr()?));
    }
    if let Some((udp, _)) = &dns {
        listeners.push(("dns".to_string(), udp.local_addr()?));
    }
    for (name, addr) in &listeners {
        tracing::info!(listener = %name, %addr, "listening");
    }
    // One list of the sidecar's own ports, from what it actually bound.
    let delivery = Arc::new(inbound::Delivery::new(
        listeners.iter().map(|(_, a)| *a),
        &cfg.inbound_loopback_ports,
    ));
    let local = Arc::new(transport::local::LocalAddrs::default());

    control.handle.spawn(resolver.clone().run(
        {
            let table = table.clone();
            move || table.load().dns_names()
        },
        drain.token(),
    ));
    let discovery = Discovery::new(
        cfg.discovery.clone(),
        probe_l.local_addr()?,
        control_tls,
        table.clone(),
        metrics.clone(),
        resolver.clone(),
    );
    let state = Arc::new(AdminState {
        table: table.clone(),
        metrics: metrics.clone(),
        drain: drain.clone(),
        log,
        ready: Default::default(),
        xds: discovery.as_ref().map(|d| d.shared.clone()),
        ready_requires_config: cfg.discovery.ready_requires_config,
        identity: identity.clone(),
        ready_requires_identity: cfg.mtls.ready_requires_identity,
        listeners,
        resolver: resolver.clone(),
        app_probes,
    });
    control.serve_admin(state.clone(), admin_l, probe_l)?;

    let dropped = metrics.observe.access_log_dropped.clone();
    let access_log = access_log::AccessLog::from_config(&cfg.access_log, dropped)
        .map_err(|(path, source)| StartError::AccessLog { path, source })?;
    let tracer = trace::start(
        &cfg.trace,
        &cfg.discovery,
        &metrics.observe,
        &control.handle,
    )
    .map_err(StartError::Trace)?;
    let request_id = cfg.trace.generate_request_id;
    let make_http = |direction: Direction, router: Router| {
        Arc::new(HttpProxy {
            direction,
            router,
            pools: client::Pools::with_mtls(
                cfg.upstream.clone(),
                metrics.clone(),
                direction,
                mtls.clone(),
            ),
            cfg: cfg.upstream.clone(),
            drain: drain.clone(),
            log: access_log,
            tracer,
            request_id,
        })
    };
    let unknown = metrics.target(Direction::Outbound, &Arc::from("unknown"));
    let passthrough = metrics.target(Direction::Outbound, &Arc::from("passthrough"));
    let outbound_http = make_http(
        Direction::Outbound,
        Router::Outbound {
            table: table.clone(),
            fixed: None,
            unknown: unknown.clone(),
            passthrough: passthrough.clone(),
        },
    );
    let listener = |http: Arc<HttpProxy>, tcp, inbound| {
        Arc::new(Listener {
            http,
            tcp,
            detect: cfg.detect.clone(),
            metrics: metrics.clone(),
            table: table.clone(),
            inbound,
            capture: cfg.capture,
            delivery: delivery.clone(),
            local: local.clone(),
            default_authz: cfg.mtls.default_authz,
            max_connections: cfg.max_connections,
        })
    };
    tokio::spawn(listener(outbound_http.clone(), TcpTarget::None, None).run(outbound));
    if let Some(l) = outbound_v6 {
        tokio::spawn(listener(outbound_http.clone(), TcpTarget::None, None).run(l));
    }
    for (svc, l) in extra {
        let svc: Arc<str> = svc.into();
        let http = Arc::new(HttpProxy {
            direction: Direction::Outbound,
            router: Router::Outbound {
                table: table.clone(),
                fixed: Some(svc.clone()),
                unknown: unknown.clone(),
                passthrough: passthrough.clone(),
            },
            pools: outbound_http.pools.clone(),
            cfg: cfg.upstream.clone(),
            drain: drain.clone(),
            log: access_log,
            tracer,
            request_id,
        });
        tokio::spawn(listener(http, TcpTarget::Service(svc), None).run(l));
    }
    let forward = cfg.inbound_forward;
    let inbound_http = make_http(
        Direction::Inbound,
        Router::Inbound {
            forward,
            metrics: metrics.target(Direction::Inbound, &Arc::from(forward.to_string())),
            table: table.clone(),
        },
    );
    let inbound_tls = mtls.clone().map(|mtls| InboundTls {
        mtls,
        cfg: cfg.mtls.clone(),
    });
    tokio::spawn(listener(inbound_http, TcpTarget::Addr(forward), inbound_tls).run(inbound));

    if let Some(d) = discovery {
        control.handle.spawn(d.run(drain.token()));
    }
    if let Some((udp, tcp)) = dns {
        let upstream = cfg.dns_upstream.or_else(|| {
            std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|t| dns::upstream_from_resolv_conf(&t))
        });
        if upstream.is_none() {
            tracing::warn!(
                "DNS proxy: no upstream (--dns-upstream, /etc/resolv.conf): only mesh names resolve"
            );
        }
        let proxy = Arc::new(dns::DnsProxy {
            table: table.clone(),
            upstream,
            relays: tokio::sync::Semaphore::new(dns::MAX_RELAYS_IN_FLIGHT),
        });
        tokio::spawn(proxy.clone().serve_udp(udp));
        tokio::spawn(proxy.serve_tcp(tcp));
    }
    let registration = register::Registration::new(
        &cfg.register,
        &cfg.discovery.pod_namespace,
        &cfg.discovery.node_id(),
        &cfg.discovery.node_labels,
    )
    .map(|r| tokio::spawn(r.run(drain.token())));
    if let Some(path) = cfg.config.clone() {
        let watch = FileWatch {
            path,
            table: table.clone(),
            metrics: metrics.clone(),
            poll_interval: cfg.config_poll_interval,
            last_text: text,
            resolver,
        };
        tokio::spawn(watch.run(sighup, drain.token()));
    } else {
        tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                tracing::info!("SIGHUP received, but no table file is configured (--config)");
            }
        });
    }

    state.ready.store(true, Ordering::Release);
    tracing::info!("weft-proxy ready");

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received"),
        _ = sigint.recv() => tracing::info!("SIGINT received"),
        _ = drain.signaled() => {}
    }
    drain.start();
    if let Some(r) = registration {
        // Deregistering first: the control plane stops sending traffic here while the
        // requests in flight finish.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), r).await;
    }
    tracing::info!(grace = ?cfg.shutdown_grace_period, "draining: no new connections; waiting for in-flight requests");
    let left = drain.wait(cfg.shutdown_grace_period).await;
    if left == 0 {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            connections = left,
            "grace period over; closing remaining connections"
        );
    }
    if let Some(l) = &access_log {
        l.flush(std::time::Duration::from_secs(2));
    }
    if let Some(t) = tracer {
        t.flush(std::time::Duration::from_secs(2)).await;
    }
    Ok(())
}
