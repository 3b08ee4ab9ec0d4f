//! The two-proxy chain most tests run through:
//! client -> proxy A (outbound) -> proxy B (inbound) -> server.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::proxy::Proxy;

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "weft-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        // Write then rename, so a reader never sees half a file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Chain {
    pub a: Proxy,
    pub b: Proxy,
    pub dir: TempDir,
    pub config: PathBuf,
}

/// The service names the default chain's table knows.
pub const HTTP_SERVICE: &str = "echo.test:8080";
pub const TCP_SERVICE: &str = "tcp.test:9000";

impl Chain {
    /// A chain to `server`: A's table has `echo.test:8080` (HTTP) and `tcp.test:9000` (TCP,
    /// with an `--outbound-tcp` listener), both pointing at B's inbound listener.
    pub fn start(server: SocketAddr) -> Chain {
        Self::start_with(server, &[], |b| {
            format!(
                "version: chain-1\nservices:\n  - name: echo.test\n    port: 8080\n    endpoints:\n      - address: {b}\n  - name: tcp.test\n    port: 9000\n    protocol: tcp\n    endpoints:\n      - address: {b}\n"
            )
        })
    }

    /// A chain whose A table is `yaml(B's inbound address)`, A started with `a_args` too.
    pub fn start_with(
        server: SocketAddr,
        a_args: &[&str],
        yaml: impl Fn(SocketAddr) -> String,
    ) -> Chain {
        let forward = server.to_string();
        let b = Proxy::start(&["--inbound-forward", &forward]);
        let dir = TempDir::new("chain");
        let config = dir.write("mesh.yaml", &yaml(b.addr("inbound")));
        let cfg = config.to_str().unwrap().to_string();
        let mut args = vec![
            "--config",
            cfg.as_str(),
            "--config-poll-interval",
            "0",
            "--outbound-tcp",
            "127.0.0.1:0=tcp.test:9000",
        ];
        args.extend_from_slice(a_args);
        let a = Proxy::start(&args);
        Chain { a, b, dir, config }
    }

    pub fn outbound(&self) -> SocketAddr {
        self.a.addr("outbound")
    }

    pub fn tcp_listener(&self) -> SocketAddr {
        self.a.addr(&format!("outbound-tcp {TCP_SERVICE}"))
    }
}
