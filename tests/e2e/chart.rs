//! The Helm chart (`charts/weft`), without a cluster: `helm lint` and `helm template` for the
//! default values and a non-default set (`ci/ha-values.yaml`: three replicas, cert-manager,
//! ServiceMonitor and PodMonitor, dashboard, classic sidecars), every rendered object validated
//! against the Kubernetes 1.33 schemas by `kubernetes-validate`, the control plane binary
//! accepting the rendered flags and mesh config, the CRD's schema accepting the documented
//! policies, and the dashboard asking only for documented metrics.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;
use weft_tests::{
    chain::TempDir,
    k8s::{self, documents, run, template, validate},
    proxy::binary_named,
};

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Lints and renders with `args`, validates every object; returns the objects.
fn render_and_validate(helm: &std::path::Path, py: &std::path::Path, args: &[&str]) -> Vec<Value> {
    let (ok, out, err) = run(Command::new(helm)
        .arg("lint")
        .arg(k8s::chart_dir())
        .args(args));
    assert!(ok, "helm lint {args:?}:\n{out}{err}");
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let yaml = template(helm, args);
    let docs = documents(&yaml);
    let dir = TempDir::new("chart");
    let file = dir.write("rendered.yaml", &yaml);
    let (passed, unknown) = validate(py, &file);
    // Every object was checked, or is another project's custom resource (below).
    assert_eq!(
        passed.len() + unknown.len(),
        docs.len(),
        "{passed:?} {unknown:?}"
    );
    for kind in &unknown {
        assert!(
            ["Certificate", "Issuer", "ServiceMonitor", "PodMonitor"].contains(&kind.as_str()),
            "no schema for {kind}"
        );
    }
    docs
}

#[test]
fn default_values_render_valid_objects_for_a_secure_control_plane() {
    let (Some(helm), Some(py)) = (k8s::helm(), k8s::python()) else {
        return;
    };
    let docs = render_and_validate(&helm, &py, &[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "CustomResourceDefinition",
            "Deployment",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
        .map(String::from)
        .into()
    );

    let deploy = find(&docs, "Deployment", "weft-control-plane");
    assert_eq!(deploy["spec"]["replicas"], 1);
    let pod = &deploy["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["weft.dev/control-plane"], "true");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        "15014"
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(
        c["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!(["sleep", "5"])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live");
    assert!(c["resources"]["requests"]["cpu"].is_string());

    let svc = find(&docs, "Service", "weft-control-plane");
    let ports: Vec<(String, u64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("grpc-xds", 15012),
            ("https-webhook", 15017),
            ("http-metrics", 15014)
        ]
        .map(|(n, p)| (n.to_string(), p))
    );

    // RBAC: the registry's watches, TokenReviews, the CA's Secret, the webhook's caBundle.
    let rules = &find(&docs, "ClusterRole", "weft-control-plane-weft-system")["rules"];
    let allows = |group: &str, resource: &str, verb: &str| {
        rules.as_array().unwrap().iter().any(|r| {
            r["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == group)
                && r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
                && r["verbs"].as_array().unwrap().iter().any(|v| v == verb)
        })
    };
    for (g, r) in [
        ("", "services"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
        ("weft.dev", "trafficpolicies"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("gateway.networking.k8s.io", "grpcroutes"),
    ] {
        assert!(allows(g, r, "watch") && allows(g, r, "list"), "{g}/{r}");
    }
    // Routes' status, and only their status: the routes themselves are read-only.
    for r in ["httproutes", "grpcroutes"] {
        let g = "gateway.networking.k8s.io";
        assert!(allows(g, &format!("{r}/status"), "patch"), "{r}/status");
        for verb in ["patch", "update", "create", "delete"] {
            assert!(!allows(g, r, verb), "{r}: {verb}");
        }
    }
    assert!(allows("authentication.k8s.io", "tokenreviews", "create"));
    assert!(allows(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "update"
    ));
    assert!(
        !allows("", "secrets", "get"),
        "no cluster-wide Secret access"
    );
    let role = find(&docs, "Role", "weft-control-plane");
    assert_eq!(
        role["rules"][0]["resourceNames"],
        serde_json::json!(["weft-ca"])
    );

    let hook = &find(
        &docs,
        "MutatingWebhookConfiguration",
        "weft-sidecar-injector-weft-system",
    )["webhooks"][0];
    assert_eq!(
        hook["namespaceSelector"]["matchLabels"]["weft.dev/inject"],
        "enabled"
    );
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["clientConfig"]["service"]["port"], 15017);
    assert_eq!(hook["clientConfig"]["service"]["path"], "/inject");
    assert_eq!(
        hook["objectSelector"]["matchExpressions"][0]["key"],
        "weft.dev/control-plane"
    );

    // Native sidecars on a current cluster; classic below 1.29.
    let mesh = find(&docs, "ConfigMap", "weft-mesh-config")["data"]["mesh.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(mesh.contains("nativeSidecars: true"), "{mesh}");
    let old = documents(&template(&helm, &["--kube-version", "1.28.0"]));
    let old_mesh = find(&old, "ConfigMap", "weft-mesh-config")["data"]["mesh.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(old_mesh.contains("nativeSidecars: false"), "{old_mesh}");

    the_control_plane_accepts_the_rendered_flags_and_mesh_config(deploy, &mesh);
}

/// The rendered arguments parse (an unknown flag or bad value would be clap's usage error) and
/// the rendered mesh config loads: the binary gets as far as asking for cluster credentials.
fn the_control_plane_accepts_the_rendered_flags_and_mesh_config(deploy: &Value, mesh: &str) {
    let dir = TempDir::new("chart-flags");
    let mesh_file = dir.write("mesh.yaml", mesh);
    let args: Vec<String> = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.strip_prefix("--mesh-config=") {
                Some(_) => format!("--mesh-config={}", mesh_file.display()),
                None => a.to_string(),
            }
        })
        .collect();
    let (ok, out, err) = run(Command::new(binary_named("weft-control-plane"))
        .args(&args)
        .env("KUBECONFIG", dir.0.join("no-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST"));
    assert!(!ok);
    let text = format!("{out}{err}");
    assert!(
        text.contains("needs cluster credentials") && !text.contains("Usage:"),
        "{text}"
    );
    // The mesh config the chart renders is one the injector accepts.
    let injector_check = weft_control_plane::inject::MeshConfig::parse(mesh);
    assert!(injector_check.is_ok(), "{injector_check:?}");
}

#[test]
fn ha_values_render_cert_manager_monitoring_and_classic_sidecars() {
    let (Some(helm), Some(py)) = (k8s::helm(), k8s::python()) else {
        return;
    };
    let values = k8s::chart_dir().join("ci/ha-values.yaml");
    let values = values.to_str().unwrap();
    let docs = render_and_validate(&helm, &py, &["-f", values]);
    let deploy = find(&docs, "Deployment", "weft-control-plane");
    assert_eq!(deploy["spec"]["replicas"], 3);
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        spec["topologySpreadConstraints"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(spec["imagePullSecrets"][0]["name"], "registry-creds");
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "weft/control-plane:0.1.0-rc.1");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--webhook-cert-dir=/etc/weft/webhook-tls"),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--webhook-config-name")),
        "{args:?}"
    );
    assert_eq!(
        find(&docs, "PodDisruptionBudget", "weft-control-plane")["spec"]["maxUnavailable"],
        1
    );

    // cert-manager: a Certificate for the Service's names, its CA injected into the webhook.
    let cert = find(&docs, "Certificate", "weft-webhook");
    assert_eq!(cert["spec"]["secretName"], "weft-webhook-tls");
    assert_eq!(
        cert["spec"]["dnsNames"][0],
        "weft-control-plane.weft-system.svc"
    );
    // Signed by a CA of its own, so the injected caBundle outlives the leaf's renewals.
    assert_eq!(cert["spec"]["issuerRef"]["name"], "weft-webhook-ca");
    let ca_issuer = find(&docs, "Issuer", "weft-webhook-ca");
    assert_eq!(ca_issuer["spec"]["ca"]["secretName"], "weft-webhook-ca");
    let ca_cert = find(&docs, "Certificate", "weft-webhook-ca");
    assert_eq!(ca_cert["spec"]["isCA"], true);
    assert_eq!(
        ca_cert["spec"]["issuerRef"]["name"],
        "weft-webhook-selfsigned"
    );
    assert!(find(&docs, "Issuer", "weft-webhook-selfsigned")["spec"]["selfSigned"].is_object());
    let webhook = find(
        &docs,
        "MutatingWebhookConfiguration",
        "weft-sidecar-injector-weft-system",
    );
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "weft-system/weft-webhook"
    );
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Ignore");
    let excluded = &webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"];
    assert!(excluded.as_array().unwrap().iter().any(|v| v == "legacy"));
    // No permission to change the webhook configuration when cert-manager owns its CA.
    let rules = find(&docs, "ClusterRole", "weft-control-plane-weft-system")["rules"].to_string();
    assert!(!rules.contains("mutatingwebhookconfigurations"), "{rules}");

    // Prometheus Operator objects (no schema in Kubernetes itself: checked field by field).
    let sm = find(&docs, "ServiceMonitor", "weft-control-plane");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    let svc = find(&docs, "Service", "weft-control-plane");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    let pm = find(&docs, "PodMonitor", "weft-sidecars");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["weft.dev/injected"],
        "true"
    );
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "weft-metrics");
    let dash = find(&docs, "ConfigMap", "weft-grafana-dashboard");
    assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(dash["data"]["weft.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "weft-mesh");

    let mesh = find(&docs, "ConfigMap", "weft-mesh-config")["data"]["mesh.yaml"]
        .as_str()
        .unwrap();
    let cfg = weft_control_plane::inject::MeshConfig::parse(mesh).unwrap();
    assert!(!cfg.native_sidecars);
    assert_eq!(cfg.mtls_mode, "strict");
    assert_eq!(cfg.proxy.image, "weft/proxy:0.1.0-rc.1");
    assert_eq!(cfg.capture.exclude_inbound_ports, [9090]);
}

#[test]
fn install_notes_say_how_to_enable_injection_and_verify() {
    let Some(helm) = k8s::helm() else { return };
    for args in [&[][..], &["-f", "ci/ha-values.yaml"][..]] {
        let (ok, out, err) = run(Command::new(&helm)
            .args(["install", "weft"])
            .arg(k8s::chart_dir())
            .args(["--namespace", "weft-system", "--dry-run=client"])
            .current_dir(k8s::chart_dir())
            .args(args));
        assert!(ok, "{err}");
        let notes = out.split("NOTES:").nth(1).expect("NOTES");
        for want in [
            "kubectl label namespace <ns> weft.dev/inject=enabled",
            "weftctl --control-plane 127.0.0.1:15015 proxy-status",
            "weft-control-plane.weft-system",
        ] {
            assert!(notes.contains(want), "{want} not in\n{notes}");
        }
        assert!(!notes.contains("<no value>"), "{notes}");
    }
}

#[test]
fn bad_values_are_refused_by_the_schema_with_the_field_named() {
    let Some(helm) = k8s::helm() else { return };
    for (set, field) in [
        ("injector.failurePolicy=Sometimes", "failurePolicy"),
        ("controlPlane.replicas=0", "replicas"),
        ("proxy.mtlsMode=loose", "mtlsMode"),
        ("controlPlane.replicaCount=2", "replicaCount"),
    ] {
        let (ok, _, err) = run(Command::new(&helm)
            .args(["template", "weft"])
            .arg(k8s::chart_dir())
            .args(["--set", set]));
        assert!(!ok, "{set} was accepted");
        assert!(err.contains(field), "{set}: {err}");
    }
}

#[test]
fn the_crd_schema_accepts_every_documented_policy() {
    let (Some(helm), Some(py)) = (k8s::helm(), k8s::python()) else {
        return;
    };
    let docs = documents(&template(&helm, &[]));
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "trafficpolicies.weft.dev",
    );
    // Every TrafficPolicy in the operator docs and the README.
    let root = k8s::chart_dir().join("../..");
    let mut policies = Vec::new();
    for doc in [
        "docs/traffic-policy.md",
        "docs/traffic-management.md",
        "README.md",
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for block in text.split("```yaml").skip(1) {
            let block = block.split("```").next().unwrap();
            for part in block.split("\n---") {
                if !part.contains("kind: TrafficPolicy") {
                    continue;
                }
                // The control plane accepts it; the CRD must too, read as kubectl reads it.
                if let Err(e) = weft_control_plane::policy::parse(doc, part) {
                    panic!("a documented policy is invalid: {e}");
                }
                policies.push(serde_json::json!([doc, part]));
            }
        }
    }
    assert!(
        policies.len() >= 3,
        "only {} documented policies found",
        policies.len()
    );
    let dir = TempDir::new("crd");
    let crd_file = dir.write("crd.json", &crd.to_string());
    let list = dir.write("policies.json", &Value::Array(policies).to_string());
    let (ok, out, err) = run(Command::new(&py)
        .arg(k8s::chart_dir().join("../../tests/k8s/validate_crd.py"))
        .arg(&crd_file)
        .arg(&list));
    assert!(ok, "{out}{err}");
}

#[test]
fn the_dashboard_asks_only_for_documented_metrics() {
    let text = std::fs::read_to_string(k8s::chart_dir().join("dashboards/weft.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let metrics_doc =
        std::fs::read_to_string(k8s::chart_dir().join("../../docs/metrics.md")).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let mut names = BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("weft_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            names.insert(name);
        }
    }
    for name in &names {
        let base = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            metrics_doc.contains(&format!("`{base}`")),
            "the dashboard queries {name}, which docs/metrics.md does not list"
        );
    }
    assert!(names.len() >= 15, "{names:?}");
}
