//! A `weft-proxy` process started by a test, and stopped (by its PID) when dropped.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The `weft-proxy` binary: `$WEFT_PROXY_BIN`, else next to this executable (a binary in
/// `target/<profile>/`) or one folder up (a test in `target/<profile>/deps/`).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_PROXY_BIN") {
        return p.into();
    }
    binary_named("weft-proxy")
}

/// One of the workspace's binaries, found next to this executable or one folder up.
pub fn binary_named(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable folder");
    let candidates = [dir.join(name), dir.parent().unwrap_or(dir).join(name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} is missing: build it first (`cargo build --workspace --bins`; tests/run does)",
                candidates[1].display()
            )
        })
}

/// Adds `args` to `cmd`, preceded by each default `(flag, value)` that `args` does not name.
pub fn args_over_defaults(cmd: &mut Command, defaults: &[(&str, &str)], args: &[&str]) {
    for (flag, value) in defaults {
        if !args.contains(flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(args);
}

pub struct Proxy {
    child: Child,
    /// Listener name (`outbound`, `inbound`, `admin`, `probe`, `outbound-tcp <svc>`) -> address.
    pub addrs: HashMap<String, SocketAddr>,
    /// Every log line (JSON) the proxy wrote so far.
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Starts a proxy with every listener on `127.0.0.1:0` (unless `args` names it) plus
    /// `args`, and waits until it says it is ready.
    pub fn start(args: &[&str]) -> Proxy {
        let mut cmd = Command::new(binary());
        let defaults = [
            ("--log-format", "json"),
            ("--log-level", "info"),
            ("--outbound-addr", "127.0.0.1:0"),
            ("--inbound-addr", "127.0.0.1:0"),
            ("--admin-addr", "127.0.0.1:0"),
            ("--probe-addr", "127.0.0.1:0"),
        ];
        args_over_defaults(&mut cmd, &defaults, args);
        Self::spawn(cmd).unwrap_or_else(|(status, logs)| {
            panic!(
                "weft-proxy did not start ({status:?}):\n{}",
                logs.join("\n")
            )
        })
    }

    /// Spawns `cmd`; returns the exit status and output if the proxy exits instead of becoming
    /// ready.
    pub fn spawn(cmd: Command) -> Result<Proxy, (Option<ExitStatus>, Vec<String>)> {
        Self::spawn_until(cmd, "weft-proxy ready")
    }

    /// Spawns `cmd` (any weft binary logging JSON) and waits for the log line `ready`.
    pub fn spawn_until(
        mut cmd: Command,
        ready: &str,
    ) -> Result<Proxy, (Option<ExitStatus>, Vec<String>)> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn weft-proxy");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut addrs = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    let f = &v["fields"];
                    match f["message"].as_str() {
                        Some("listening") => {
                            let name = f["listener"].as_str().unwrap().to_string();
                            addrs.insert(name, f["addr"].as_str().unwrap().parse().unwrap());
                        }
                        Some(m) if m == ready => break,
                        _ => {}
                    }
                }
                Err(_) => {
                    let status = child.wait_timeout(Duration::from_secs(5));
                    if status.is_none() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    return Err((status, logs.lock().unwrap().clone()));
                }
            }
        }
        Ok(Proxy { child, addrs, logs })
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs[listener]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// GET on the admin or probe server; returns status and body.
    pub async fn get(&self, listener: &str, path: &str) -> (u16, String) {
        crate::http_peer::simple_request(self.addr(listener), "GET", path, "").await
    }

    /// The Prometheus text of a proxy (probe port) or control plane (metrics port).
    pub async fn metrics(&self) -> String {
        let listener = if self.addrs.contains_key("probe") {
            "probe"
        } else {
            "metrics"
        };
        let (status, body) = self.get(listener, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics of pid {}: {body}", self.pid());
        body
    }

    /// The value of one sample in the proxy's metrics (`name{labels}` exactly as exposed).
    /// Fails the test when the series is missing, naming it and the series of that name
    /// that are there: a misspelt label must not read as 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        if let Some(v) = sample(&text, series) {
            return v;
        }
        let name = series.split('{').next().unwrap_or(series);
        let present: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name))
            .collect();
        panic!(
            "series `{series}` is not in the metrics of pid {}; series named `{name}`: {present:#?}",
            self.pid()
        )
    }

    /// The value of one sample, or `None` while the series does not exist yet (a labelled
    /// counter appears with its first event): for polls and for "never happened" checks.
    pub async fn try_metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics().await, series)
    }

    pub async fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self.get("admin", "/config_dump").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Resident set size in bytes, from /proc.
    pub fn rss(&self) -> u64 {
        rss_of(self.pid())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_timeout(timeout)
    }
}

/// The value of `series` (`name{labels}` as exposed) in a Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

trait WaitTimeout {
    fn wait_timeout(&mut self, d: Duration) -> Option<ExitStatus>;
}

impl WaitTimeout for Child {
    fn wait_timeout(&mut self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        loop {
            if let Ok(Some(s)) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
