//! The sidecar injector: a Kubernetes mutating admission webhook (AdmissionReview v1) that adds
//! the capture init container and the proxy to every pod created in a namespace labelled
//! `weft.dev/inject=enabled`.
//!
//! A pod gets, as a JSONPatch:
//! - `weft-init` (`weft-proxy init`, root with NET_ADMIN and NET_RAW only): the iptables rules;
//! - `weft-proxy` (UID 2102, read-only root filesystem, no capabilities): a native sidecar (an
//!   init container with `restartPolicy: Always`, Kubernetes 1.29 and later) whose startup
//!   probe holds the application back until the proxy is ready; or, with native sidecars off,
//!   the first of the pod's containers with a postStart hook (`weft-proxy wait`) that does the
//!   same for a classic sidecar;
//! - a projected service-account token for the CA (audience `weft-ca`), the pod's labels as a
//!   downward-API file, its name, namespace and service account as downward-API variables;
//! - `weft.dev/status: injected`, and Prometheus scrape annotations for port 15020 unless the
//!   pod has its own;
//! - the pod's HTTP and TCP probes pointed at the sidecar's probe port, which asks the
//!   application on the kubelet's behalf (the kubelet's plaintext probes would not pass strict
//!   mTLS).
//!
//! A pod is left alone when it opts out (`weft.dev/inject: "false"`), uses the host's network,
//! is the control plane (label `weft.dev/control-plane`), or was injected already: injecting
//! twice changes nothing. A pod that cannot be read, or an annotation with a bad value, is
//! refused with a message that names what was wrong.

use std::{collections::BTreeMap, net::IpAddr, path::Path};
use weft_core::contract;

use base64::Engine;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use serde::Deserialize;
use serde_json::{Value, json};

pub mod server;
#[cfg(test)]
mod tests;

pub use weft_core::contract::annotation::*;

/// Every annotation the injector reads, for the error that names an unknown `weft.dev/` one.
const ANNOTATIONS: &[&str] = &[
    INJECT,
    STATUS,
    EXCLUDE_INBOUND_PORTS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_OUTBOUND_CIDRS,
    INCLUDE_OUTBOUND_CIDRS,
    PROXY_CPU,
    PROXY_MEMORY,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    LOG_LEVEL,
    MTLS_MODE,
    DEFAULT_AUTHZ,
    ACCESS_LOG,
    TRACE_SAMPLING,
];

pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const INIT_CONTAINER: &str = "weft-init";
pub const PROXY_UID: i64 = 2102;
pub const PROBE_PORT: u16 = 15020;
const TOKEN_DIR: &str = "/var/run/secrets/weft/tokens";
const PODINFO_DIR: &str = "/etc/weft/podinfo";

/// The mesh configuration (the chart's ConfigMap): what every injected pod gets.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// Where sidecars reach the control plane (xDS and the CA), `https://HOST:15012`.
    pub control_plane_address: String,
    /// The trust domain of workload identities.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Native sidecars (Kubernetes 1.29+); off: a classic sidecar container.
    #[serde(default = "yes")]
    pub native_sidecars: bool,
    /// The default inbound mTLS mode: strict, permissive or disable.
    #[serde(default = "default_mtls")]
    pub mtls_mode: String,
    /// What a sidecar does with a caller where no authorization policy guards the destination:
    /// allow or deny (`--default-authz`).
    #[serde(default = "default_authz")]
    pub default_authz: String,
    #[serde(default)]
    pub proxy: ProxySettings,
    #[serde(default)]
    pub capture: CaptureSettings,
    /// The audience of the projected token the CA checks with a TokenReview.
    #[serde(default = "default_audience")]
    pub token_audience: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySettings {
    #[serde(default = "default_image")]
    pub image: String,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The sidecars' access log: `off`, `json` or `apache`.
    #[serde(default = "default_access_log")]
    pub access_log: String,
    /// Distributed tracing: where the sidecars export spans, and the share of new traces
    /// sampled.
    #[serde(default)]
    pub tracing: TracingSettings,
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,
    #[serde(default = "default_init_resources")]
    pub init_resources: ResourceRequirements,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            image: default_image(),
            image_pull_policy: default_pull_policy(),
            log_level: default_log_level(),
            access_log: default_access_log(),
            tracing: TracingSettings::default(),
            resources: default_resources(),
            init_resources: default_init_resources(),
        }
    }
}

/// The sidecars' tracing (`weft-proxy --trace-otlp-endpoint`, `--trace-sampling`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSettings {
    /// The collector's OTLP/gRPC endpoint; tracing is off without one.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Percent of new traces sampled; a pod's `weft.dev/trace-sampling` overrides it.
    #[serde(default = "default_sampling")]
    pub sampling: f64,
    /// Give requests without an `x-request-id` a generated one (with or without a collector).
    #[serde(default = "yes")]
    pub generate_request_id: bool,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            otlp_endpoint: None,
            sampling: default_sampling(),
            generate_request_id: true,
        }
    }
}

fn default_sampling() -> f64 {
    1.0
}

/// A sampling percentage, 0 to 100.
fn sampling(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("`{s}` is not a percentage from 0 to 100")),
    }
}

/// Mesh-wide capture exclusions; a pod's annotations add to them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureSettings {
    #[serde(default)]
    pub exclude_inbound_ports: Vec<u16>,
    #[serde(default)]
    pub exclude_outbound_ports: Vec<u16>,
    #[serde(default)]
    pub exclude_outbound_cidrs: Vec<String>,
    /// Send the pod's DNS through the proxy's DNS server (mesh names answered with VIPs).
    #[serde(default)]
    pub redirect_dns: bool,
}

fn yes() -> bool {
    true
}
fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_mtls() -> String {
    "permissive".into()
}
fn default_authz() -> String {
    "allow".into()
}

fn default_authz_value(s: &str) -> Result<&'static str, String> {
    match s.to_ascii_lowercase().as_str() {
        "allow" => Ok("allow"),
        "deny" => Ok("deny"),
        _ => Err(format!("`{s}` is not allow or deny")),
    }
}
fn default_audience() -> String {
    "weft-ca".into()
}
fn default_image() -> String {
    format!("weft/proxy:{}", env!("CARGO_PKG_VERSION"))
}
fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_access_log() -> String {
    "off".into()
}
fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
    let map = |kv: &[(&str, &str)]| {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), quantity(v)))
                .collect(),
        )
    };
    ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..Default::default()
    }
}
fn quantity(v: &str) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    k8s_openapi::apimachinery::pkg::api::resource::Quantity(v.to_string())
}
fn default_resources() -> ResourceRequirements {
    resources(
        &[("cpu", "100m"), ("memory", "64Mi")],
        &[("memory", "256Mi")],
    )
}
fn default_init_resources() -> ResourceRequirements {
    resources(
        &[("cpu", "10m"), ("memory", "16Mi")],
        &[("cpu", "100m"), ("memory", "64Mi")],
    )
}

impl MeshConfig {
    /// Reads and checks the mesh configuration file (YAML or JSON).
    pub fn load(path: &Path) -> Result<MeshConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<MeshConfig, String> {
        let cfg: MeshConfig = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if !self.control_plane_address.starts_with("https://") {
            return Err(format!(
                "controlPlaneAddress: `{}` must be https:// (sidecars get their certificates over it)",
                self.control_plane_address
            ));
        }
        mtls_mode(&self.mtls_mode).map_err(|e| format!("mtlsMode: {e}"))?;
        default_authz_value(&self.default_authz).map_err(|e| format!("defaultAuthz: {e}"))?;
        log_level(&self.proxy.log_level).map_err(|e| format!("proxy.logLevel: {e}"))?;
        access_log(&self.proxy.access_log).map_err(|e| format!("proxy.accessLog: {e}"))?;
        let t = &self.proxy.tracing;
        if let Some(url) = &t.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "proxy.tracing.otlpEndpoint: `{url}` is neither http:// nor https://"
            ));
        }
        sampling(&t.sampling.to_string()).map_err(|e| format!("proxy.tracing.sampling: {e}"))?;
        if !matches!(
            self.proxy.image_pull_policy.as_str(),
            "Always" | "IfNotPresent" | "Never"
        ) {
            return Err(format!(
                "proxy.imagePullPolicy: `{}` is not Always, IfNotPresent or Never",
                self.proxy.image_pull_policy
            ));
        }
        for (field, r) in [
            ("proxy.resources", &self.proxy.resources),
            ("proxy.initResources", &self.proxy.init_resources),
        ] {
            for (k, q) in r.requests.iter().chain(&r.limits).flatten() {
                check_quantity(&q.0).map_err(|e| format!("{field}.{k}: {e}"))?;
            }
        }
        for c in &self.capture.exclude_outbound_cidrs {
            cidr(c).map_err(|e| format!("capture.excludeOutboundCidrs: {e}"))?;
        }
        if let Some(p) = self
            .capture
            .exclude_inbound_ports
            .iter()
            .chain(&self.capture.exclude_outbound_ports)
            .find(|p| **p == 0)
        {
            return Err(format!("capture: port {p} is not a port"));
        }
        Ok(())
    }
}

/// The access log formats `weft-proxy --access-log` takes.
fn access_log(s: &str) -> Result<&'static str, String> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Ok("off"),
        "json" => Ok("json"),
        "apache" => Ok("apache"),
        _ => Err(format!("`{s}` is not off, json or apache")),
    }
}

fn mtls_mode(s: &str) -> Result<&'static str, String> {
    match s.to_ascii_lowercase().as_str() {
        "strict" => Ok("strict"),
        "permissive" => Ok("permissive"),
        "disable" => Ok("disable"),
        _ => Err(format!("`{s}` is not strict, permissive or disable")),
    }
}

/// A `tracing` filter: levels, or `target=level` directives, comma-separated.
fn log_level(s: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];
    let ok = !s.is_empty()
        && s.split(',').all(|d| {
            let (target, level) = d.rsplit_once('=').unwrap_or(("", d));
            LEVELS.contains(&level.to_ascii_lowercase().as_str())
                && target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a log filter (levels trace, debug, info, warn, error, off; or target=level, comma-separated)"
        ))
    }
}

/// A Kubernetes resource quantity: a number with an optional suffix (`100m`, `64Mi`, `1.5`,
/// `2e3`).
fn check_quantity(s: &str) -> Result<(), String> {
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    let (number, exp_ok) = match digits.split_once(['e', 'E']) {
        Some((n, e)) => (n, e.trim_start_matches(['+', '-']).parse::<u32>().is_ok()),
        None => (digits, true),
    };
    let number_ok = !number.is_empty()
        && number.chars().filter(|c| *c == '.').count() <= 1
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.chars().any(|c| c.is_ascii_digit());
    if number_ok && exp_ok && SUFFIXES.contains(&suffix) {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a resource quantity (e.g. 100m, 0.5, 64Mi, 1Gi)"
        ))
    }
}

fn cidr(s: &str) -> Result<(), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not a CIDR (ADDRESS/LENGTH)"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{s}`: `{addr}` is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(l) if l <= max => Ok(()),
        _ => Err(format!("`{s}`: `{len}` is not a prefix length (0-{max})")),
    }
}

fn ports(s: &str) -> Result<Vec<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{p}` is not a port"))
        })
        .collect()
}

fn cidrs(s: &str) -> Result<Vec<String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| cidr(c).map(|()| c.to_string()))
        .collect()
}

/// What a review decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Allowed with this JSONPatch; the warnings go back to whoever created the pod.
    Inject {
        patch: Vec<Value>,
        warnings: Vec<String>,
    },
    /// Allowed unchanged, for this reason.
    Skip(String),
    /// Refused, with the reason shown to whoever created the pod.
    Deny(String),
}

impl Decision {
    /// The `result` label of `weft_cp_injections_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Decision::Inject { .. } => INJECTED,
            Decision::Skip(_) => "skipped",
            Decision::Deny(_) => "denied",
        }
    }
}

/// The per-pod settings: the mesh's, with the pod's annotations applied.
#[derive(Debug, Default)]
struct PodSettings {
    exclude_inbound_ports: Vec<u16>,
    exclude_outbound_ports: Vec<u16>,
    exclude_outbound_cidrs: Vec<String>,
    include_outbound_cidrs: Vec<String>,
    resources: ResourceRequirements,
    log_level: String,
    mtls_mode: &'static str,
    default_authz: &'static str,
    access_log: &'static str,
    trace_sampling: f64,
}

/// The injector: the mesh configuration and the trust bundle sidecars verify the control plane
/// with.
#[derive(Debug, Clone)]
pub struct Injector {
    pub mesh: MeshConfig,
    pub trust_bundle: String,
}

impl Injector {
    /// Answers one AdmissionReview (the request body); an error is a body that is no
    /// AdmissionReview at all (the HTTP answer is then 400).
    pub fn review(&self, body: &[u8]) -> Result<(Value, Decision), String> {
        let review: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let (api, kind) = (&review["apiVersion"], &review["kind"]);
        if api != "admission.k8s.io/v1" || kind != "AdmissionReview" {
            return Err(format!(
                "expected an admission.k8s.io/v1 AdmissionReview, got apiVersion {api}, kind {kind}"
            ));
        }
        let request = &review["request"];
        let uid = request["uid"]
            .as_str()
            .ok_or("the AdmissionReview has no request.uid")?;
        let decision = self.decide(request);
        let mut response = json!({ "uid": uid, "allowed": true });
        match &decision {
            Decision::Inject { patch, warnings } => {
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(
                    base64::engine::general_purpose::STANDARD
                        .encode(serde_json::to_vec(patch).expect("JSON values serialize"))
                );
                if !warnings.is_empty() {
                    response["warnings"] = json!(warnings);
                }
            }
            Decision::Skip(_) => {}
            Decision::Deny(why) => {
                response["allowed"] = json!(false);
                response["status"] = json!({
                    "code": 400,
                    "reason": "BadRequest",
                    "message": format!("weft sidecar injector: {why}"),
                });
            }
        }
        let answer = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        });
        Ok((answer, decision))
    }

    /// Decides for one admission request.
    pub fn decide(&self, request: &Value) -> Decision {
        let kind = &request["kind"];
        if kind["kind"] != "Pod" || kind["group"].as_str().is_some_and(|g| !g.is_empty()) {
            return Decision::Skip(format!("not a Pod but {kind}"));
        }
        if request["operation"] != "CREATE" {
            return Decision::Skip(format!(
                "operation {}: only new pods are injected",
                request["operation"]
            ));
        }
        let pod: Pod = match serde_json::from_value(request["object"].clone()) {
            Ok(p) => p,
            Err(e) => return Decision::Deny(format!("cannot read the pod: {e}")),
        };
        self.decide_pod(&pod)
    }

    fn decide_pod(&self, pod: &Pod) -> Decision {
        let empty = BTreeMap::new();
        let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let Some(spec) = &pod.spec else {
            return Decision::Deny("cannot read the pod: it has no spec".into());
        };
        match annotations.get(INJECT).map(|v| v.to_ascii_lowercase()) {
            None => {}
            Some(v) if v == "enabled" || v == "true" => {}
            Some(v) if v == "disabled" || v == "false" => {
                return Decision::Skip(format!("{INJECT}: {v}"));
            }
            Some(v) => {
                return Decision::Deny(format!(
                    "annotation {INJECT}: `{v}` is not enabled, disabled, true or false"
                ));
            }
        }
        if spec.host_network == Some(true) {
            return Decision::Skip(
                "hostNetwork pod: its traffic is the node's and cannot be captured".into(),
            );
        }
        if labels.contains_key(CONTROL_PLANE_LABEL) {
            return Decision::Skip("the control plane is not injected".into());
        }
        let named = |c: &Container| c.name == PROXY_CONTAINER || c.name == INIT_CONTAINER;
        if annotations.contains_key(STATUS)
            || spec.containers.iter().any(named)
            || spec.init_containers.iter().flatten().any(named)
        {
            return Decision::Skip("already injected".into());
        }
        let settings = match self.settings(annotations) {
            Ok(s) => s,
            Err(e) => return Decision::Deny(e),
        };
        let (patch, warnings) = self.patch(pod, settings);
        Decision::Inject { patch, warnings }
    }

    fn settings(&self, annotations: &BTreeMap<String, String>) -> Result<PodSettings, String> {
        let capture = &self.mesh.capture;
        let mut s = PodSettings {
            exclude_inbound_ports: capture.exclude_inbound_ports.clone(),
            exclude_outbound_ports: capture.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: capture.exclude_outbound_cidrs.clone(),
            include_outbound_cidrs: Vec::new(),
            resources: self.mesh.proxy.resources.clone(),
            log_level: self.mesh.proxy.log_level.clone(),
            mtls_mode: mtls_mode(&self.mesh.mtls_mode).unwrap_or("permissive"),
            default_authz: default_authz_value(&self.mesh.default_authz).unwrap_or("allow"),
            access_log: access_log(&self.mesh.proxy.access_log).unwrap_or("off"),
            trace_sampling: self.mesh.proxy.tracing.sampling,
        };
        for (key, value) in annotations {
            if !key.starts_with("weft.dev/") {
                continue;
            }
            let bad = |e: String| format!("annotation {key}: {e}");
            match key.as_str() {
                EXCLUDE_INBOUND_PORTS => s.exclude_inbound_ports.extend(ports(value).map_err(bad)?),
                EXCLUDE_OUTBOUND_PORTS => {
                    s.exclude_outbound_ports.extend(ports(value).map_err(bad)?)
                }
                EXCLUDE_OUTBOUND_CIDRS => {
                    s.exclude_outbound_cidrs.extend(cidrs(value).map_err(bad)?)
                }
                INCLUDE_OUTBOUND_CIDRS => s.include_outbound_cidrs = cidrs(value).map_err(bad)?,
                PROXY_CPU | PROXY_MEMORY | PROXY_CPU_LIMIT | PROXY_MEMORY_LIMIT => {
                    check_quantity(value).map_err(bad)?;
                    let (map, resource) = match key.as_str() {
                        PROXY_CPU => (&mut s.resources.requests, "cpu"),
                        PROXY_MEMORY => (&mut s.resources.requests, "memory"),
                        PROXY_CPU_LIMIT => (&mut s.resources.limits, "cpu"),
                        _ => (&mut s.resources.limits, "memory"),
                    };
                    map.get_or_insert_default()
                        .insert(resource.to_string(), quantity(value));
                }
                LOG_LEVEL => {
                    log_level(value).map_err(bad)?;
                    s.log_level = value.clone();
                }
                MTLS_MODE => s.mtls_mode = mtls_mode(value).map_err(bad)?,
                DEFAULT_AUTHZ => s.default_authz = default_authz_value(value).map_err(bad)?,
                ACCESS_LOG => s.access_log = access_log(value).map_err(bad)?,
                TRACE_SAMPLING => s.trace_sampling = sampling(value).map_err(bad)?,
                k if ANNOTATIONS.contains(&k) => {}
                _ => {
                    return Err(format!(
                        "unknown annotation {key} (weft reads {})",
                        ANNOTATIONS.join(", ")
                    ));
                }
            }
        }
        s.exclude_inbound_ports.sort_unstable();
        s.exclude_inbound_ports.dedup();
        s.exclude_outbound_ports.sort_unstable();
        s.exclude_outbound_ports.dedup();
        s.exclude_outbound_cidrs.dedup();
        Ok(s)
    }

    /// The JSONPatch that injects `pod`.
    fn patch(&self, pod: &Pod, s: PodSettings) -> (Vec<Value>, Vec<String>) {
        let spec = pod.spec.as_ref().expect("checked by decide_pod");
        let native = self.mesh.native_sidecars;
        let mut warnings = Vec::new();
        let mut proxy_env = vec![
            env(contract::CONTROL_PLANE, &self.mesh.control_plane_address),
            env(contract::TRUST_BUNDLE_PEM, &self.trust_bundle),
            env(contract::TRUST_DOMAIN, &self.mesh.trust_domain),
            env(contract::IDENTITY, "ca"),
            env(
                contract::IDENTITY_TOKEN_FILE,
                &format!("{TOKEN_DIR}/weft-token"),
            ),
            field_env(contract::POD_NAME, "metadata.name"),
            field_env(contract::POD_NAMESPACE, "metadata.namespace"),
            field_env(contract::SERVICE_ACCOUNT, "spec.serviceAccountName"),
            env(contract::NODE_LABELS_FILE, &format!("{PODINFO_DIR}/labels")),
            env(contract::CAPTURE, "true"),
            env(contract::INBOUND_MTLS, s.mtls_mode),
            env(contract::DEFAULT_AUTHZ, s.default_authz),
            env(contract::LOG, &s.log_level),
        ];
        if s.access_log != "off" {
            proxy_env.push(env(contract::ACCESS_LOG, s.access_log));
        }
        if !self.mesh.proxy.tracing.generate_request_id {
            proxy_env.push(env(contract::GENERATE_REQUEST_ID, "false"));
        }
        if let Some(url) = &self.mesh.proxy.tracing.otlp_endpoint {
            proxy_env.push(env(contract::TRACE_OTLP_ENDPOINT, url));
            proxy_env.push(env(contract::TRACE_SAMPLING, &s.trace_sampling.to_string()));
        }
        let probes = rewrite_probes(&spec.containers);
        if !probes.app.is_empty() {
            let json = serde_json::to_string(&probes.app).expect("JSON values serialize");
            proxy_env.push(env(contract::APP_PROBES, &json));
        }
        if s.mtls_mode == "strict" && !probes.kept_ports.is_empty() {
            // Probes the sidecar cannot ask for the kubelet (gRPC, HTTPS, another host) come
            // in plaintext from the node: on a strict port they would be refused and the pod
            // never become ready. Those ports stay permissive, and the pod's creator is told.
            let list: Vec<String> = probes
                .kept_ports
                .iter()
                .map(|p| format!("{p}=permissive"))
                .collect();
            proxy_env.push(env(contract::INBOUND_MTLS_PORTS, &list.join(",")));
            warnings.push(format!(
                "weft: mTLS is strict, but port(s) {} take the kubelet's plaintext gRPC/HTTPS probes and stay permissive; exclude a dedicated probe port (weft.dev/exclude-inbound-ports) to keep everything strict",
                join_ports(&probes.kept_ports, ", ")
            ));
        }
        if self.mesh.capture.redirect_dns {
            proxy_env.push(env(contract::DNS_ADDR, "127.0.0.1:15053"));
        }
        let probe = |path: &str, period: u32, failures: u32| {
            json!({
                "httpGet": { "path": path, "port": PROBE_PORT },
                "periodSeconds": period,
                "failureThreshold": failures,
            })
        };
        let mut proxy = json!({
            "name": PROXY_CONTAINER,
            "image": self.mesh.proxy.image,
            "imagePullPolicy": self.mesh.proxy.image_pull_policy,
            "env": proxy_env,
            "ports": [{ "name": "weft-metrics", "containerPort": PROBE_PORT, "protocol": "TCP" }],
            "readinessProbe": probe("/ready", 5, 3),
            "livenessProbe": probe("/live", 10, 6),
            "resources": s.resources,
            "securityContext": {
                "runAsUser": PROXY_UID,
                "runAsGroup": PROXY_UID,
                "runAsNonRoot": true,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "capabilities": { "drop": ["ALL"] },
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "volumeMounts": [
                { "name": "weft-token", "mountPath": TOKEN_DIR, "readOnly": true },
                { "name": "weft-podinfo", "mountPath": PODINFO_DIR, "readOnly": true },
            ],
        });
        if native {
            proxy["restartPolicy"] = json!("Always");
            // The kubelet starts the next container once the startup probe passes.
            proxy["startupProbe"] = probe("/ready", 1, 120);
        } else {
            // The kubelet starts the next container once postStart returns.
            proxy["lifecycle"] = json!({
                "postStart": { "exec": { "command": ["weft-proxy", "wait", "--timeout", "120s"] } }
            });
        }

        let mut init_env = vec![env(contract::PROXY_UID, &PROXY_UID.to_string())];
        for (name, value) in [
            (
                contract::EXCLUDE_INBOUND_PORTS,
                join_ports(&s.exclude_inbound_ports, ","),
            ),
            (
                contract::EXCLUDE_OUTBOUND_PORTS,
                join_ports(&s.exclude_outbound_ports, ","),
            ),
            (
                contract::EXCLUDE_OUTBOUND_CIDRS,
                s.exclude_outbound_cidrs.join(","),
            ),
            (
                contract::INCLUDE_OUTBOUND_CIDRS,
                s.include_outbound_cidrs.join(","),
            ),
        ] {
            if !value.is_empty() {
                init_env.push(env(name, &value));
            }
        }
        if self.mesh.capture.redirect_dns {
            init_env.push(env(contract::REDIRECT_DNS, "true"));
        }
        let init = json!({
            "name": INIT_CONTAINER,
            "image": self.mesh.proxy.image,
            "imagePullPolicy": self.mesh.proxy.image_pull_policy,
            "args": ["init"],
            "env": init_env,
            "resources": self.mesh.proxy.init_resources,
            "securityContext": {
                // iptables needs root in the pod's network namespace, and a writable /run for
                // its lock; nothing else.
                "runAsUser": 0,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "readOnlyRootFilesystem": false,
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] },
            },
        });

        // The probes first: their container indexes are the pod's, before a classic sidecar
        // is put in front.
        let mut ops = probes.ops;
        // Init containers run in order: the rules first, then (native) the proxy, then the
        // pod's own. A classic sidecar is not running yet during init, so there the rules go
        // last, after the pod's own init containers have done their network work uncaptured.
        let (first, sidecar) = if native {
            (vec![init, proxy], None)
        } else {
            (vec![init], Some(proxy))
        };
        if spec.init_containers.is_none() {
            ops.push(add("/spec/initContainers", json!(first)));
        } else if native {
            ops.extend(
                first
                    .into_iter()
                    .rev()
                    .map(|c| add("/spec/initContainers/0", c)),
            );
        } else {
            ops.extend(first.into_iter().map(|c| add("/spec/initContainers/-", c)));
        }
        if let Some(proxy) = sidecar {
            ops.push(add("/spec/containers/0", proxy));
        }
        let volumes = [
            json!({
                "name": "weft-token",
                "projected": { "sources": [{ "serviceAccountToken": {
                    "audience": self.mesh.token_audience,
                    "expirationSeconds": 3600,
                    "path": "weft-token",
                }}]},
            }),
            json!({
                "name": "weft-podinfo",
                "downwardAPI": { "items": [
                    { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
                ]},
            }),
        ];
        if spec.volumes.is_none() {
            ops.push(add("/spec/volumes", json!(volumes)));
        } else {
            ops.extend(volumes.into_iter().map(|v| add("/spec/volumes/-", v)));
        }

        let annotations = pod.metadata.annotations.as_ref();
        let mut new_annotations = vec![(STATUS, INJECTED)];
        if !annotations.is_some_and(|a| a.keys().any(|k| k.starts_with("prometheus.io/"))) {
            new_annotations.extend([
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "15020"),
                ("prometheus.io/path", "/metrics"),
            ]);
        }
        map_entries(
            &mut ops,
            "/metadata/annotations",
            annotations.is_some(),
            &new_annotations,
        );
        map_entries(
            &mut ops,
            "/metadata/labels",
            pod.metadata.labels.is_some(),
            &[(INJECTED_LABEL, "true")],
        );
        (ops, warnings)
    }
}

fn join_ports(ports: &[u16], sep: &str) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

fn env(name: &str, value: &str) -> Value {
    json!({ "name": name, "value": value })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } })
}

fn add(path: &str, value: Value) -> Value {
    json!({ "op": "add", "path": path, "value": value })
}

/// Adds `entries` to the string map at `path`, creating it when the pod has none.
fn map_entries(ops: &mut Vec<Value>, path: &str, exists: bool, entries: &[(&str, &str)]) {
    if exists {
        for (k, v) in entries {
            // JSON Pointer: `~` is `~0`, `/` is `~1`.
            let key = k.replace('~', "~0").replace('/', "~1");
            ops.push(add(&format!("{path}/{key}"), json!(v)));
        }
    } else {
        let map: serde_json::Map<String, Value> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        ops.push(add(path, Value::Object(map)));
    }
}

/// What pointing the pod's probes at the sidecar gives.
#[derive(Debug, Default)]
struct Probes {
    /// The JSONPatch operations that replace the probes (container indexes as in the pod).
    ops: Vec<Value>,
    /// The originals, by the path the kubelet now asks: the proxy's `WEFT_APP_PROBES`.
    app: BTreeMap<String, Value>,
    /// The ports of the probes that stay as they were (gRPC, HTTPS, another host, a port name
    /// the container does not declare), sorted.
    kept_ports: Vec<u16>,
}

/// Points every HTTP and TCP probe of the pod's containers at the sidecar's probe port
/// (`/app-health/<container>/<livez|readyz|startupz>` on 15020, never captured), so that the
/// kubelet's plaintext probes work whatever the inbound mTLS mode; the proxy asks the
/// application over loopback on its behalf.
fn rewrite_probes(containers: &[Container]) -> Probes {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut out = Probes::default();
    for (i, c) in containers.iter().enumerate() {
        let resolve = |port: &IntOrString| match port {
            IntOrString::Int(p) => u16::try_from(*p).ok().filter(|p| *p != 0),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        };
        for (field, kind, probe) in [
            ("livenessProbe", "livez", &c.liveness_probe),
            ("readinessProbe", "readyz", &c.readiness_probe),
            ("startupProbe", "startupz", &c.startup_probe),
        ] {
            let Some(probe) = probe else { continue };
            let timeout = probe.timeout_seconds.unwrap_or(1);
            let original = if let Some(h) = &probe.http_get {
                let plain = h
                    .scheme
                    .as_deref()
                    .is_none_or(|s| s.eq_ignore_ascii_case("http"));
                match (resolve(&h.port), plain && h.host.is_none()) {
                    (Some(port), true) => Some(json!({
                        "httpGet": {
                            "port": port,
                            "path": h.path.as_deref().unwrap_or("/"),
                            "httpHeaders": h.http_headers.iter().flatten()
                                .map(|hd| json!({"name": hd.name, "value": hd.value}))
                                .collect::<Vec<_>>(),
                        },
                        "timeoutSeconds": timeout,
                    })),
                    (port, _) => {
                        out.kept_ports.extend(port);
                        None
                    }
                }
            } else if let Some(t) = &probe.tcp_socket {
                match (resolve(&t.port), t.host.is_none()) {
                    (Some(port), true) => Some(json!({
                        "tcpSocket": { "port": port },
                        "timeoutSeconds": timeout,
                    })),
                    (port, _) => {
                        out.kept_ports.extend(port);
                        None
                    }
                }
            } else {
                out.kept_ports
                    .extend(probe.grpc.as_ref().and_then(|g| u16::try_from(g.port).ok()));
                None
            };
            let Some(original) = original else { continue };
            let path = format!("/app-health/{}/{kind}", c.name);
            let mut rewritten = serde_json::to_value(probe).expect("a probe serializes");
            let obj = rewritten.as_object_mut().expect("a probe is an object");
            obj.remove("tcpSocket");
            obj.insert(
                "httpGet".into(),
                json!({ "path": path, "port": PROBE_PORT, "scheme": "HTTP" }),
            );
            out.ops
                .push(add(&format!("/spec/containers/{i}/{field}"), rewritten));
            out.app.insert(path, original);
        }
    }
    out.kept_ports.sort_unstable();
    out.kept_ports.dedup();
    out
}
