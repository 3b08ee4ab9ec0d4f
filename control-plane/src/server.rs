//! Runs the control plane: registry (file or etcd) -> snapshots -> ADS, plus health, metrics
//! and the API.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http::{Method, Request, StatusCode};
use hyper::{body::Incoming, service::service_fn};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tokio_stream::wrappers::TcpListenerStream;
use weft_xds_proto::ca::v1::certificate_service_server::CertificateServiceServer;

use crate::{
    ads::{AdsServer, AdsService, Nodes},
    api::{Api, PolicyStore, Rsp, text},
    ca::{self, BootstrapTokens, Ca, CaService, TokenReviewer},
    config::{Config, RegistryKind},
    inject,
    metrics::Metrics,
    registry::{Snapshot, etcd::EtcdRegistry, file::FileRegistry, kubernetes},
    snapshot::{self, XdsSnapshot},
    tls::{self, ServingCert},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("registry directory {dir}: {source}")]
    Registry { dir: String, source: std::io::Error },
    #[error("CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("--bootstrap-tokens {0}")]
    Tokens(String),
    #[error("Kubernetes: {0}")]
    Kubernetes(String),
    #[error("injector: {0}")]
    Injector(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

enum Registry {
    File(FileRegistry),
    Etcd(EtcdRegistry),
    /// Already watching, publishing on the channel it was given.
    Kubernetes(watch::Sender<Arc<Snapshot>>, watch::Receiver<Arc<Snapshot>>),
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let metrics = Arc::new(Metrics::default());

    // The registry's current errors, for `weftctl check` (at most 100: the first ones name
    // what to fix).
    let error_texts: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let keep_errors = {
        let texts = error_texts.clone();
        move |errors: &[String]| {
            let mut kept: Vec<String> = errors.iter().take(100).cloned().collect();
            if errors.len() > kept.len() {
                kept.push(format!(
                    "and {} more (the control plane's log lists them all)",
                    errors.len() - kept.len()
                ));
            }
            *texts.lock().expect("errors lock") = kept;
        }
    };
    // The first load happens before serving: proxies never see a registry half read. A
    // directory that cannot be read stops the start; etcd is waited for.
    let (registry, first, errors) = match cfg.registry {
        RegistryKind::File => {
            let dir = cfg.registry_dir.clone().unwrap_or_default();
            let mut r = FileRegistry::new(&dir);
            let first = r.scan().map_err(|source| StartError::Registry {
                dir: dir.display().to_string(),
                source,
            })?;
            let errors = Some(r.errors.clone());
            (Registry::File(r), first, errors)
        }
        RegistryKind::Etcd => {
            let client = weft_core::etcd::Client::new(&cfg.etcd_endpoints);
            let mut r = EtcdRegistry::new(client, &cfg.etcd_prefix);
            let first = r.first_load().await;
            let errors = Some(r.errors.clone());
            (Registry::Etcd(r), first, errors)
        }
        RegistryKind::Kubernetes => {
            let client = kube_client("--registry kubernetes").await?;
            let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
            let errors_gauge = metrics.registry_errors.clone();
            let keep = keep_errors.clone();
            tokio::spawn(kubernetes::run(
                client,
                cfg.trust_domain.clone(),
                tx.clone(),
                move |e: &[String]| {
                    errors_gauge.set(e.len() as i64);
                    keep(e);
                },
            ));
            // Every watch lists once before anything is served.
            rx.changed()
                .await
                .map_err(|_| StartError::Kubernetes("the watches stopped".into()))?;
            let first = (**rx.borrow_and_update()).clone();
            // The watches report their own errors (above): none to seed.
            (Registry::Kubernetes(tx, rx), first, None)
        }
    };
    for e in errors.iter().flatten() {
        tracing::warn!(error = %e, "registry");
    }
    tracing::info!(
        services = first.services.len(),
        policies = first.policies.len(),
        "registry loaded"
    );
    // The first resources are ready before any proxy can connect.
    let mut vips = crate::translate::Vips::default();
    let first_xds = XdsSnapshot::new(&crate::translate::translate_with(&first, &mut vips));
    let (reg_tx, reg_rx) = match &registry {
        Registry::Kubernetes(tx, rx) => (tx.clone(), rx.clone()),
        _ => watch::channel(Arc::new(first)),
    };
    let (xds_tx, xds_rx) = watch::channel(Arc::new(first_xds));

    let xds_l = bind("xDS listener", cfg.xds_addr).await?;
    let api_l = bind("API listener", cfg.api_addr).await?;
    let metrics_l = bind("metrics listener", cfg.metrics_addr).await?;
    for (name, l) in [("xds", &xds_l), ("metrics", &metrics_l), ("api", &api_l)] {
        tracing::info!(listener = name, addr = %l.local_addr()?, "listening");
    }
    let ca = load_ca(&cfg).await?;
    let secure = match &ca {
        Some(ca) => Some(secure_port(&cfg, ca.clone(), &metrics).await?),
        None => {
            tracing::warn!(
                "no --ca-dir or --ca-secret: the control plane is no CA and serves no TLS port (plaintext xDS only)"
            );
            None
        }
    };
    if let Some(path) = &cfg.mesh_config {
        start_injector(&cfg, path, ca.clone(), &metrics).await?;
    }

    let registry_errors = metrics.registry_errors.clone();
    // The first load's errors (file and etcd; the Kubernetes watches, already running, keep
    // theirs themselves and must not be wiped here).
    if let Some(errors) = &errors {
        registry_errors.set(errors.len() as i64);
        keep_errors(errors);
    }
    let on_errors = move |errors: &[String]| {
        registry_errors.set(errors.len() as i64);
        keep_errors(errors);
    };
    let store = match registry {
        Registry::File(r) => {
            tokio::spawn(r.run(cfg.registry_poll_interval, reg_tx, on_errors));
            PolicyStore::Dir(cfg.registry_dir.clone().unwrap_or_default())
        }
        Registry::Etcd(r) => {
            tokio::spawn(r.run(reg_tx, on_errors));
            PolicyStore::Etcd {
                client: weft_core::etcd::Client::new(&cfg.etcd_endpoints),
                prefix: cfg.etcd_prefix.clone(),
            }
        }
        Registry::Kubernetes(..) => {
            drop((reg_tx, on_errors));
            PolicyStore::Kubernetes
        }
    };
    let published = metrics.snapshots.clone();
    let mut counted = xds_rx.clone();
    tokio::spawn(async move {
        while counted.changed().await.is_ok() {
            published.inc();
        }
    });
    tokio::spawn(snapshot::publish(
        reg_rx.clone(),
        xds_tx,
        cfg.push_debounce,
        metrics.registry_events.clone(),
        vips,
    ));

    let api_snapshots = xds_rx.clone();
    let ads = AdsServer::new(xds_rx, metrics.clone());
    let nodes = ads.nodes.clone();
    let ads_service = AdsService::new(ads, cfg.xds_max_message_size);
    if let Some(Secure {
        listener,
        config,
        ca,
    }) = secure
    {
        let incoming = tls::incoming(listener, config, metrics.tls_handshake_failures.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ads_service.clone())
                .add_service(CertificateServiceServer::new(ca))
                .serve_with_incoming(incoming),
        );
    }
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ads_service)
            .serve_with_incoming(TcpListenerStream::new(xds_l)),
    );
    let api = Api {
        store,
        registry: reg_rx.clone(),
        nodes: nodes.clone(),
        snapshots: api_snapshots,
        registry_errors: error_texts,
        ca_not_after: ca.as_ref().map(|c| c.not_after()),
        loopback_only: cfg.api_addr.ip().is_loopback(),
    };
    tokio::spawn(api.serve(api_l));
    tokio::spawn(serve_admin(metrics_l, nodes));
    tracing::info!("weft-control-plane ready");

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received; exiting"),
        _ = sigint.recv() => tracing::info!("SIGINT received; exiting"),
    }
    Ok(())
}

/// What the TLS port serves with.
struct Secure {
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    ca: CaService,
}

/// Binds one of the control plane's listeners; the error names which.
async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Loads (or creates) the CA from --ca-dir or --ca-secret, if either is given.
async fn load_ca(cfg: &Config) -> Result<Option<Arc<Ca>>, StartError> {
    let ca = match (&cfg.ca_dir, &cfg.ca_secret) {
        (Some(dir), _) => Ca::load_or_create(
            dir,
            cfg.ca_create,
            &cfg.trust_domain,
            cfg.cert_ttl,
            cfg.cert_max_ttl,
        )?,
        (None, Some(name)) => {
            ca::load_or_create_secret(
                kube_client("--ca-secret").await?,
                &cfg.namespace,
                name,
                cfg.ca_create,
                &cfg.trust_domain,
                cfg.cert_ttl,
                cfg.cert_max_ttl,
            )
            .await?
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(Arc::new(ca)))
}

async fn kube_client(what: &str) -> Result<kube::Client, StartError> {
    kube::Client::try_default().await.map_err(|e| {
        StartError::Kubernetes(format!(
            "{what} needs cluster credentials (in-cluster service account or KUBECONFIG): {e}"
        ))
    })
}

/// Serves the sidecar injector on --webhook-addr, with a certificate from --webhook-cert-dir or
/// from the mesh CA (and then keeps the webhook configuration's caBundle set).
async fn start_injector(
    cfg: &Config,
    mesh_config: &std::path::Path,
    ca: Option<Arc<Ca>>,
    metrics: &Metrics,
) -> Result<(), StartError> {
    let mesh = inject::MeshConfig::load(mesh_config).map_err(StartError::Injector)?;
    let Some(ca) = ca else {
        return Err(StartError::Injector(
            "the injector needs the mesh CA (--ca-dir or --ca-secret): sidecars get its trust bundle".into(),
        ));
    };
    if mesh.trust_domain != cfg.trust_domain {
        return Err(StartError::Injector(format!(
            "{}: trustDomain `{}` differs from --trust-domain `{}`",
            mesh_config.display(),
            mesh.trust_domain,
            cfg.trust_domain
        )));
    }
    let bundle = ca.trust_bundle().concat();
    let resolver: Arc<dyn rustls::server::ResolvesServerCert> = match &cfg.webhook_cert_dir {
        Some(dir) => {
            let cert = tls::FileCert::load(dir)?;
            tokio::spawn(cert.clone().watch(std::time::Duration::from_secs(10)));
            cert
        }
        None => {
            let identity = ca::spiffe_id(&cfg.trust_domain, &cfg.namespace, "weft-control-plane");
            let (cert, expires) = ServingCert::issue(&ca, &cfg.tls_san, &identity)?;
            tokio::spawn(
                cert.clone()
                    .renew(ca, cfg.tls_san.clone(), identity, expires),
            );
            if let Some(name) = &cfg.webhook_config_name {
                tokio::spawn(inject::server::keep_ca_bundle(
                    kube_client("--webhook-config-name").await?,
                    name.clone(),
                    bundle.clone().into_bytes(),
                    std::time::Duration::from_secs(30),
                ));
            }
            cert
        }
    };
    let listener = bind("injector webhook listener", cfg.webhook_addr).await?;
    tracing::info!(listener = "webhook", addr = %listener.local_addr()?, image = %mesh.proxy.image, native_sidecars = mesh.native_sidecars, "listening");
    let injector = Arc::new(inject::Injector {
        mesh,
        trust_bundle: bundle,
    });
    tokio::spawn(inject::server::serve(
        listener,
        Arc::new(tls::server_config_with(resolver, b"http/1.1")),
        injector,
        metrics.injections.clone(),
        metrics.tls_handshake_failures.clone(),
    ));
    Ok(())
}

/// Issues the TLS port its certificate from the CA and binds it.
async fn secure_port(cfg: &Config, ca: Arc<Ca>, metrics: &Metrics) -> Result<Secure, StartError> {
    let tokens = match &cfg.bootstrap_tokens {
        Some(path) => BootstrapTokens::load(path, &cfg.trust_domain).map_err(StartError::Tokens)?,
        None => BootstrapTokens::default(),
    };
    let reviewer = if cfg.token_review {
        let client = kube_client("--token-review").await?;
        Some(TokenReviewer {
            client,
            audiences: vec![cfg.token_audience.clone()],
            trust_domain: cfg.trust_domain.clone(),
        })
    } else {
        None
    };
    let identity = ca::spiffe_id(&cfg.trust_domain, "weft-system", "weft-control-plane");
    let (cert, expires) = ServingCert::issue(&ca, &cfg.tls_san, &identity)?;
    tokio::spawn(
        cert.clone()
            .renew(ca.clone(), cfg.tls_san.clone(), identity, expires),
    );
    let listener = bind("TLS (xDS + CA) listener", cfg.tls_addr).await?;
    tracing::info!(listener = "xds-tls", addr = %listener.local_addr()?, names = ?cfg.tls_san, "listening");
    Ok(Secure {
        listener,
        config: Arc::new(tls::server_config(cert)),
        ca: CaService {
            ca,
            tokens: Arc::new(tokens),
            reviewer,
            review_limit: Arc::new(crate::ca::limit::PerCaller::new(cfg.token_review_rate)),
            requests: metrics.ca_requests.clone(),
        },
    })
}

/// Health and metrics, on a port the network reaches (the kubelet's probes, Prometheus): nothing
/// here says what the mesh holds (the registry and each proxy's state are on the API port).
async fn serve_admin(l: TcpListener, nodes: Arc<Nodes>) {
    let slots = crate::serve::slots();
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let slot = slots.take();
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let rsp = admin(&req, &nodes);
                async move { Ok::<_, Infallible>(rsp) }
            });
            crate::serve::connection(s, svc, crate::serve::HEADER_READ_TIMEOUT, slot).await;
        });
    }
}

fn admin(req: &Request<Incoming>, nodes: &Nodes) -> Rsp {
    const TEXT: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live" | "/ready") => text(StatusCode::OK, TEXT, "ok\n"),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            nodes.metrics.render(),
        ),
        (&Method::GET, "/prometheus/targets") => text(
            StatusCode::OK,
            "application/json",
            prometheus_targets(nodes),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            TEXT,
            "endpoints: /live, /ready, /metrics, /prometheus/targets (the registry and proxy status are on the API port: /api/v1/registry, /api/v1/proxy-status)\n",
        ),
    }
}

/// Prometheus' HTTP service discovery (`http_sd_configs`): every connected proxy that said
/// where its metrics are, one target group each. What a node says of itself is its own claim,
/// so it comes as `__meta_` labels only (`__meta_weft_node_id`, `__meta_weft_namespace`,
/// `__meta_weft_pod`), for the operator's relabelling to take or leave: nothing a client
/// sends becomes a series label by itself. So a mesh outside Kubernetes (file or etcd
/// registry) is scraped too.
fn prometheus_targets(nodes: &Nodes) -> Vec<u8> {
    let groups: Vec<serde_json::Value> = (nodes.targets().into_iter())
        .filter_map(|(id, about)| {
            let addr = about.metrics?;
            Some(serde_json::json!({
                "targets": [addr.to_string()],
                "labels": {
                    "__meta_weft_node_id": id,
                    "__meta_weft_namespace": about.namespace,
                    "__meta_weft_pod": about.pod,
                },
            }))
        })
        .collect();
    serde_json::to_vec(&groups).expect("JSON values serialize")
}
