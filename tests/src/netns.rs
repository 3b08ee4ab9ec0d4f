//! "Pods" for the capture tests: network namespaces this test creates (`ip netns`), joined by
//! veth pairs, deleted when dropped, even when the test fails. Needs root; elsewhere the tests
//! that use it are skipped with a visible reason, and in CI (`CI=true`) they fail.

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether this process may create namespaces (root); says so when it may not.
pub fn root_or_skip() -> bool {
    let root = is_root();
    if !root {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the capture tests need root (network namespaces, iptables), and CI runs them");
        }
        eprintln!("SKIPPED: not root; the capture tests need network namespaces and iptables");
    }
    root
}

/// Runs a command; panics with its output unless it succeeds.
pub fn must(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "weft-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        must(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.must(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `args` run inside the namespace (as root).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// `args` run inside the namespace as `uid` (and gid), without supplementary groups.
    pub fn cmd_as(&self, uid: u32, args: &[&str]) -> Command {
        let mut c = self.cmd(&[
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ]);
        c.args(args);
        c
    }

    pub fn must(&self, args: &[&str]) -> Output {
        must(&mut self.cmd(args))
    }

    /// The nat table as `iptables-save` prints it, without its comment lines.
    pub fn nat_rules(&self) -> String {
        let out = self.must(&["iptables-save", "-t", "nat"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Joins `a` and `b` with a veth pair: `a_ip/24` on `a`'s end (`eth0`), `b_ip/24` on `b`'s.
pub fn link(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) {
    must(Command::new("ip").args([
        "link", "add", "eth0", "netns", &a.name, "type", "veth", "peer", "name", "eth0", "netns",
        &b.name,
    ]));
    for (ns, ip) in [(a, a_ip), (b, b_ip)] {
        ns.must(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.must(&["ip", "link", "set", "eth0", "up"]);
        // Everything else (service VIPs) goes out of eth0, as in a pod.
        ns.must(&["ip", "route", "add", "default", "dev", "eth0"]);
    }
}

/// Gives `ns`'s `eth0` an IPv6 address (`/64`, usable at once: no duplicate detection) and an
/// IPv6 default route, as a dual-stack pod has.
pub fn add_ipv6(ns: &Netns, ip: &str) {
    ns.must(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{ip}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    ns.must(&["ip", "-6", "route", "add", "default", "dev", "eth0"]);
}
