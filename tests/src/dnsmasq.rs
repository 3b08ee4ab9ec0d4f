//! A real DNS server (Debian `dnsmasq-base`) on a loopback port, answering only from a hosts
//! file the test writes (TTL 1 s; other names in its domain get NXDOMAIN); killed when dropped.

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{chain::TempDir, tools};

pub struct Dnsmasq {
    child: Child,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    hosts: PathBuf,
    /// Its hosts file and log; kept until dnsmasq is dropped.
    _dir: Option<TempDir>,
}

impl Dnsmasq {
    /// Starts dnsmasq authoritative for `domain`, answering from `hosts` (hosts-file lines), or
    /// returns `None` when it is not installed (outside CI).
    pub fn start(domain: &str, hosts: &str) -> Option<Dnsmasq> {
        let bin = tools::require("dnsmasq")?;
        let dir = TempDir::new("dnsmasq");
        let hosts_file = dir.write("hosts", hosts);
        // The port is free when chosen but may be taken before dnsmasq binds it (by another
        // test): then dnsmasq exits, and it is tried again on another.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_udp_and_tcp_port();
            let log = dir.0.join("dnsmasq.log");
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--local-ttl=1",
                "--cache-size=0",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--pid-file=",
                "--log-facility=-",
            ])
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .arg(format!("--local=/{domain}/"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
            // As root it would switch to `nobody`, who cannot read the test's directory.
            if crate::netns::is_root() {
                cmd.arg("--user=root");
            }
            let child = cmd.spawn().expect("start dnsmasq");
            let mut d = Dnsmasq {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                hosts: hosts_file.clone(),
                _dir: None,
            };
            if d.wait_answering(domain) {
                d._dir = Some(dir);
                return Some(d);
            }
            d.stop();
            last = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("dnsmasq did not start: {last}");
    }

    /// Replaces the hosts file and makes dnsmasq read it again (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "SIGHUP dnsmasq");
    }

    /// Stops it: queries go unanswered (the port is closed).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it answers within 10 s (false at once if it exited).
    fn wait_answering(&mut self, domain: &str) -> bool {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // A query for `probe.<domain>` (type A); any answer means it is up.
        let mut q = vec![0x77, 0x01, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in format!("probe.{domain}").split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            let _ = sock.send_to(&q, self.addr);
            if matches!(sock.recv(&mut buf), Ok(n) if n >= 12 && buf[..2] == [0x77, 0x01]) {
                return true;
            }
        }
        false
    }
}

/// A loopback port free for both UDP and TCP (dnsmasq binds both).
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
