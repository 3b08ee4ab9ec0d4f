//! Kubernetes tooling without a cluster: `helm` (the binary `tests/run` installs), and the
//! Python venv's `kubernetes-validate` (the Kubernetes 1.33 OpenAPI schemas), `jsonpatch` and
//! `jsonschema`. Missing in CI, a test fails; elsewhere it is skipped with the reason.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn missing(what: &str) -> Option<PathBuf> {
    if in_ci() {
        panic!("{what} is required in CI (tests/run installs it)");
    }
    eprintln!("SKIPPED: {what} is missing; run tests/run to install it");
    None
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    workspace().join("charts/weft")
}

/// `helm`: `$WEFT_HELM`, else the one `tests/run` installs under `target/`, else the PATH.
pub fn helm() -> Option<PathBuf> {
    let candidates = std::env::var_os("WEFT_HELM")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace().join("target/weft-tools/bin/helm")]);
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("helm"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| missing("helm"))
}

/// The venv's Python, when it has the Kubernetes tools.
pub fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("WEFT_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/weft-venv"));
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import kubernetes_validate, jsonpatch, jsonschema"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(py)
    } else {
        missing(&format!(
            "{} with kubernetes-validate, jsonpatch and jsonschema",
            py.display()
        ))
    }
}

/// Runs a command; returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart with `args`; panics with helm's words on failure.
pub fn template(helm: &Path, args: &[&str]) -> String {
    let (ok, out, err) = run(Command::new(helm)
        .args(["template", "weft"])
        .arg(chart_dir())
        .args(["--namespace", "weft-system"])
        .args(args));
    assert!(ok, "helm template {args:?}: {err}");
    out
}

/// Validates every object in `file` against the Kubernetes 1.33 schemas, strictly (unknown
/// fields are errors). Returns the kinds that passed; panics on any failure. Kinds with no
/// schema there (other projects' CRDs) are returned in the second list.
pub fn validate(py: &Path, file: &Path) -> (Vec<String>, Vec<String>) {
    let (ok, out, err) = run(Command::new(py)
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.33.0"])
        .arg(file));
    let text = format!("{out}{err}");
    assert!(ok, "kubernetes-validate {}:\n{text}", file.display());
    let mut passed = Vec::new();
    let mut unknown = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split(" passed for resource ").nth(1) {
            passed.push(rest.split('/').next().unwrap_or_default().to_string());
        } else if let Some(rest) = line.split("Couldn't find schema for kind ").nth(1) {
            unknown.push(rest.split(' ').next().unwrap_or_default().to_string());
        } else if !line.trim().is_empty() {
            panic!("kubernetes-validate {}: {line}", file.display());
        }
    }
    (passed, unknown)
}

/// The documents of a multi-document YAML text, as JSON values (empty documents dropped).
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(yaml)
        .filter_map(|d| Option::<serde_json::Value>::deserialize(d).unwrap())
        .collect()
}
