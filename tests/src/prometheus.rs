//! A real Prometheus server for tests: scraping every sidecar the control plane lists
//! (`/prometheus/targets`, HTTP service discovery) every second, relabelling the namespace and
//! pod, on a loopback port of its own. It is stopped when dropped.

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use crate::{chain::TempDir, eventually};

pub struct Prometheus {
    child: std::process::Child,
    /// Its HTTP API.
    pub api: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `binary` in `dir`, discovering its targets at `sd` (the control plane's metrics
    /// address).
    pub fn start(binary: &std::path::Path, dir: &TempDir, sd: SocketAddr) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: weft\n    http_sd_configs: [{{url: 'http://{sd}/prometheus/targets', refresh_interval: 1s}}]\n    relabel_configs:\n      - {{source_labels: [__meta_weft_namespace], target_label: namespace}}\n      - {{source_labels: [__meta_weft_pod], target_label: pod}}\n"
            ),
        )
        .unwrap();
        let log = dir.0.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            api: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }
    }

    /// `GET path` on its API: the JSON answer, or `None` while it does not answer (yet).
    pub async fn get(&self, path: &str) -> Option<serde_json::Value> {
        let req = http::Request::get(path).header("host", self.api.to_string());
        let rsp = crate::http_peer::request_h1(self.api, req, String::new())
            .await
            .ok()?;
        if rsp.status() != 200 {
            return None;
        }
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice(&body).ok()
    }

    /// The first sample of the instant query `query` (URL-encoded), once there is one.
    pub async fn first_sample(&self, query: &str, within: Duration) -> serde_json::Value {
        let path = format!("/api/v1/query?query={query}");
        eventually(within, "a sample from Prometheus", || async {
            self.get(&path).await?["data"]["result"]
                .as_array()?
                .first()
                .cloned()
        })
        .await
    }

    /// What it logged (for a failure's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
