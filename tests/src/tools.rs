//! External tools some tests drive (curl, h2load, promtool). In CI (`CI=true`) a missing tool
//! fails the test; elsewhere the test is skipped with a visible reason.

use std::path::PathBuf;

/// `found`, or `None` after saying that `what` is missing; in CI a missing tool is a failure.
fn found_or_skip(found: Option<PathBuf>, what: &str) -> Option<PathBuf> {
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{what} is required in CI but is missing (tests/run installs it)");
        }
        eprintln!("SKIPPED: {what} is missing; run tests/run to install it");
    }
    found
}

/// The tool's path, or `None` (after saying so) when it is missing outside CI.
pub fn require(tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    found_or_skip(found, &format!("`{tool}`"))
}

/// `httpwg` (the RFC 9113 conformance suite, crate `httpwg-cli`), as `tests/run` installs it
/// under `target/weft-tools/cargo/bin`, else from the PATH.
pub fn httpwg() -> Option<PathBuf> {
    let installed =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/weft-tools/cargo/bin/httpwg");
    if installed.is_file() {
        return Some(installed);
    }
    require("httpwg")
}

/// Node.js and the `node_modules` folder where `tests/run` installs the Gateway API's schemas
/// (`@kubernetes-models/gateway-api`, under `target/weft-node`).
pub fn gateway_api_schemas() -> Option<(PathBuf, PathBuf)> {
    let modules =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/weft-node/node_modules");
    let installed = modules
        .join("@kubernetes-models/gateway-api/package.json")
        .is_file();
    let node = require("node")?;
    found_or_skip(
        installed.then_some(modules),
        "@kubernetes-models/gateway-api under target/weft-node",
    )
    .map(|m| (node, m))
}

/// The Python of the venv `tests/run` creates (`$WEFT_TEST_VENV`, else `target/weft-venv`),
/// when it can import every one of `modules` (comma-separated, as `import` takes them).
pub fn venv_python(modules: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("WEFT_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/weft-venv"));
    let py = venv.join("bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    found_or_skip(
        ok.then_some(py),
        &format!("a Python venv at {} with {modules}", venv.display()),
    )
}

/// Asserts that `promtool check metrics` has nothing to say about `metrics` (skipped, visibly,
/// when promtool is missing outside CI).
pub fn assert_promtool_clean(metrics: &str) {
    use std::io::Write;
    let Some(promtool) = require("promtool") else {
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}
