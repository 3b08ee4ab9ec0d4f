//! A real etcd server (Debian `etcd-server`) on loopback ports, its data in a temporary
//! directory; killed when dropped.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{chain::TempDir, tools};

pub struct Etcd {
    child: Child,
    /// The client address (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    peer: SocketAddr,
    dir: TempDir,
    bin: PathBuf,
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Etcd {
    /// Starts etcd, or returns `None` when it is not installed (outside CI).
    pub fn start() -> Option<Etcd> {
        let bin = tools::require("etcd")?;
        let dir = TempDir::new("etcd");
        let (addr, peer) = (free_port(), free_port());
        let child = spawn(&bin, &dir, addr, peer);
        let e = Etcd {
            child,
            addr,
            peer,
            dir,
            bin,
        };
        e.wait_healthy();
        Some(e)
    }

    /// Kills etcd (SIGKILL) and starts it again on the same ports and data.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.bin, &self.dir, self.addr, self.peer);
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://{}/health", self.addr);
        loop {
            let ok = Command::new("curl")
                .args(["-sf", "--max-time", "1", &url])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy at {url}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn spawn(bin: &PathBuf, dir: &TempDir, addr: SocketAddr, peer: SocketAddr) -> Child {
    let client = format!("http://{addr}");
    let peer = format!("http://{peer}");
    Command::new(bin)
        .args([
            "--name",
            "weft-test",
            "--data-dir",
            dir.0.join("data").to_str().unwrap(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("weft-test={peer}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcd")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
