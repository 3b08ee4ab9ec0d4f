//! Kubernetes tooling without a cluster: `helm` (the binary `tests/run` installs), and the
//! Python venv's `kubernetes-validate` (the Kubernetes 1.33 OpenAPI schemas), `jsonpatch` and
//! `jsonschema`. Missing in CI, a test fails; elsewhere it is skipped with the reason.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    workspace().join("charts/weft")
}

/// `helm`: `$WEFT_HELM`, else the one `tests/run` installs under `target/`, else the PATH.
pub fn helm() -> Option<PathBuf> {
    std::env::var_os("WEFT_HELM")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace().join("target/weft-tools/bin/helm")])
        .find(|c| c.is_file())
        .or_else(|| crate::tools::require("helm"))
}

/// The venv's Python, when it has the Kubernetes tools.
pub fn python() -> Option<PathBuf> {
    crate::tools::venv_python("kubernetes_validate, jsonpatch, jsonschema")
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
