//! External tools some tests drive (curl, h2load, promtool). In CI (`CI=true`) a missing tool
//! fails the test; elsewhere the test is skipped with a visible reason.

use std::path::PathBuf;

/// The tool's path, or `None` (after saying so) when it is missing outside CI.
pub fn require(tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("`{tool}` is required in CI but is not installed (tests/run installs it)")
        }
        None => {
            eprintln!("SKIPPED: `{tool}` is not installed; run tests/run to install it");
            None
        }
    }
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
