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
