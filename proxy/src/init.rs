//! `weft-proxy init`: programs the pod's network namespace (the nat table) so that its TCP
//! traffic goes through the sidecar, as an init container does before the application starts.
//!
//! The rules live in chains of their own (`WEFT_*`), reached by one jump from `PREROUTING` and
//! one (two with DNS) from `OUTPUT`:
//!
//! - inbound: TCP arriving for the pod is redirected to the inbound port, except excluded ports
//!   (the probe port always) or, with an include list, only the listed ports;
//! - outbound: TCP the pod sends is redirected to the outbound port, except what the proxy
//!   itself sends (its UID), anything on the loopback interface, excluded ports and CIDRs, and
//!   (with an include list) CIDRs not listed;
//! - DNS (optional): UDP and TCP to port 53 from anyone but the proxy go to the DNS proxy.
//!
//! Applying removes any earlier set first, so running it twice leaves one set; `--cleanup`
//! removes them; `--dry-run` prints the exact `iptables-restore` input. IPv4 always, IPv6 too
//! when the pod has a global IPv6 address (or `--ipv6 on`).

use std::{
    io::Write,
    net::IpAddr,
    process::{Command, Stdio},
};

use clap::Args;

/// The probe and metrics port: never redirected, so kubelet's probes reach the proxy itself.
pub const PROBE_PORT: u16 = 15020;

/// Which iptables backend to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The one that already holds rules in this namespace; nft when neither does.
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6 {
    /// When the pod has a global IPv6 address.
    Auto,
    On,
    Off,
}

/// `weft-proxy init` settings.
#[derive(Debug, Clone, Args)]
pub struct InitConfig {
    /// The UID the proxy runs as: its own traffic is never redirected.
    #[arg(long, env = weft_core::contract::PROXY_UID, default_value_t = 2102)]
    pub proxy_uid: u32,

    /// Where inbound TCP is redirected (the proxy's inbound listener).
    #[arg(long, env = "WEFT_INBOUND_PORT", default_value_t = 15006)]
    pub inbound_port: u16,

    /// Where outbound TCP is redirected (the proxy's outbound listener).
    #[arg(long, env = "WEFT_OUTBOUND_PORT", default_value_t = 15001)]
    pub outbound_port: u16,

    /// Inbound ports to redirect: `*` for all but the excluded ones, or a comma-separated list.
    #[arg(long, env = "WEFT_INBOUND_PORTS", default_value = "*")]
    pub inbound_ports: String,

    /// Inbound ports never redirected (the probe port 15020 always is not).
    #[arg(long, env = weft_core::contract::EXCLUDE_INBOUND_PORTS, value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<u16>,

    /// Outbound destination ports never redirected.
    #[arg(long, env = weft_core::contract::EXCLUDE_OUTBOUND_PORTS, value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<u16>,

    /// Outbound destination CIDRs never redirected (`10.0.0.0/8`, `fd00::/8`).
    #[arg(long, env = weft_core::contract::EXCLUDE_OUTBOUND_CIDRS, value_delimiter = ',', value_parser = parse_cidr)]
    pub exclude_outbound_cidrs: Vec<Cidr>,

    /// Only these outbound destination CIDRs are redirected [default: all].
    #[arg(long, env = weft_core::contract::INCLUDE_OUTBOUND_CIDRS, value_delimiter = ',', value_parser = parse_cidr)]
    pub include_outbound_cidrs: Vec<Cidr>,

    /// Redirect the pod's DNS (UDP and TCP port 53) to the proxy's DNS port.
    #[arg(long, env = weft_core::contract::REDIRECT_DNS)]
    pub redirect_dns: bool,

    /// The proxy's DNS port.
    #[arg(long, env = "WEFT_DNS_PORT", default_value_t = 15053)]
    pub dns_port: u16,

    /// iptables backend.
    #[arg(long, env = "WEFT_IPTABLES", value_enum, default_value = "auto")]
    pub iptables: Backend,

    /// IPv6 rules (ip6tables).
    #[arg(long, env = "WEFT_INIT_IPV6", value_enum, default_value = "auto")]
    pub ipv6: Ipv6,

    /// Print the rules (iptables-restore input) and change nothing.
    #[arg(long, env = "WEFT_INIT_DRY_RUN")]
    pub dry_run: bool,

    /// Remove weft's rules and chains instead of installing them.
    #[arg(long, env = "WEFT_INIT_CLEANUP")]
    pub cleanup: bool,
}

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{s}`: not an address block such as 10.0.0.0/8"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?
    };
    Ok(Cidr { addr, len })
}

/// IPv4 or IPv6 rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn has(self, c: &Cidr) -> bool {
        c.addr.is_ipv4() == (self == Family::V4)
    }
}

/// weft's chains, in the order they are created.
const CHAINS: [&str; 5] = [
    "WEFT_INBOUND",
    "WEFT_IN_REDIRECT",
    "WEFT_OUTPUT",
    "WEFT_REDIRECT",
    "WEFT_DNS",
];

/// Every jump from the built-in chains into weft's, `(chain, rule)`; the last only with DNS.
const JUMPS: [(&str, &str); 3] = [
    ("PREROUTING", "-p tcp -j WEFT_INBOUND"),
    ("OUTPUT", "-p tcp -j WEFT_OUTPUT"),
    ("OUTPUT", "-p udp --dport 53 -j WEFT_DNS"),
];

/// The jumps `cfg` installs.
fn jumps(cfg: &InitConfig) -> &'static [(&'static str, &'static str)] {
    if cfg.redirect_dns {
        &JUMPS
    } else {
        &JUMPS[..2]
    }
}

/// Why `weft-proxy init` could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A flag whose value makes no rule.
    #[error("{0}")]
    Flag(String),
    /// A command this needs is not installed.
    #[error("`{0}` is not installed (Debian: apt-get install iptables)")]
    Missing(String),
    /// A command could not be run or fed its input.
    #[error("cannot run `{cmd}`: {source}")]
    Run { cmd: String, source: std::io::Error },
    /// A command ran and failed: what it said, and a hint when it lacked the privileges.
    #[error("`{cmd}` failed: {stderr}{hint}")]
    Failed {
        cmd: String,
        stderr: String,
        hint: &'static str,
    },
}

/// The `iptables-restore --noflush` input that installs weft's rules for `family`.
pub fn rules(cfg: &InitConfig, family: Family) -> Result<String, InitError> {
    let mut r = vec!["*nat".to_string()];
    for c in CHAINS {
        r.push(format!(":{c} - [0:0]"));
    }
    let uid = cfg.proxy_uid;
    r.push(format!(
        "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        cfg.inbound_port
    ));
    r.push(format!(
        "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        cfg.outbound_port
    ));

    // Inbound.
    let mut excluded = vec![PROBE_PORT];
    for p in &cfg.exclude_inbound_ports {
        if !excluded.contains(p) {
            excluded.push(*p);
        }
    }
    for p in &excluded {
        r.push(format!("-A WEFT_INBOUND -p tcp --dport {p} -j RETURN"));
    }
    match cfg.inbound_ports.trim() {
        "*" => r.push("-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT".into()),
        "" => {}
        list => {
            for p in list.split(',') {
                let p: u16 = p.trim().parse().ok().filter(|p| *p != 0).ok_or_else(|| {
                    InitError::Flag(format!("--inbound-ports: `{p}` is not a port (or use `*`)"))
                })?;
                r.push(format!(
                    "-A WEFT_INBOUND -p tcp --dport {p} -j WEFT_IN_REDIRECT"
                ));
            }
        }
    }

    // Outbound: the proxy's own traffic and loopback first, so nothing below can loop.
    r.push(format!(
        "-A WEFT_OUTPUT -m owner --uid-owner {uid} -j RETURN"
    ));
    r.push("-A WEFT_OUTPUT -o lo -j RETURN".into());
    r.push(format!("-A WEFT_OUTPUT -d {} -j RETURN", family.loopback()));
    if cfg.redirect_dns {
        r.push(format!(
            "-A WEFT_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports {}",
            cfg.dns_port
        ));
    }
    for p in &cfg.exclude_outbound_ports {
        r.push(format!("-A WEFT_OUTPUT -p tcp --dport {p} -j RETURN"));
    }
    for c in cfg.exclude_outbound_cidrs.iter().filter(|c| family.has(c)) {
        r.push(format!("-A WEFT_OUTPUT -d {c} -j RETURN"));
    }
    if cfg.include_outbound_cidrs.is_empty() {
        r.push("-A WEFT_OUTPUT -p tcp -j WEFT_REDIRECT".into());
    } else {
        for c in cfg.include_outbound_cidrs.iter().filter(|c| family.has(c)) {
            r.push(format!("-A WEFT_OUTPUT -p tcp -d {c} -j WEFT_REDIRECT"));
        }
    }

    // DNS over UDP.
    if cfg.redirect_dns {
        r.push(format!("-A WEFT_DNS -m owner --uid-owner {uid} -j RETURN"));
        r.push(format!(
            "-A WEFT_DNS -p udp -j REDIRECT --to-ports {}",
            cfg.dns_port
        ));
    }
    for (chain, rule) in jumps(cfg) {
        r.push(format!("-A {chain} {rule}"));
    }
    r.push("COMMIT".into());
    Ok(r.join("\n") + "\n")
}

/// The commands of one backend and family.
#[derive(Debug, Clone)]
struct Tables {
    /// `iptables`, `ip6tables-legacy`, ...
    cmd: String,
    restore: String,
}

impl Tables {
    fn new(backend: Backend, family: Family) -> Tables {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let suffix = match backend {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Auto => "",
        };
        Tables {
            cmd: format!("{base}{suffix}"),
            restore: format!("{base}{suffix}-restore"),
        }
    }

    fn run(&self, args: &[&str]) -> Result<std::process::Output, InitError> {
        Command::new(&self.cmd)
            .args(args)
            .output()
            .map_err(|e| missing(&self.cmd, e))
    }

    /// Removes weft's jumps and chains; what is not there is skipped.
    fn cleanup(&self) -> Result<(), InitError> {
        // Whatever `init` ran with before: every jump weft may have installed.
        for (chain, rule) in JUMPS {
            let rule: Vec<&str> = rule.split(' ').collect();
            loop {
                let mut args = vec!["-w", "-t", "nat", "-D", chain];
                args.extend(&rule);
                if !self.run(&args)?.status.success() {
                    break;
                }
            }
        }
        for c in CHAINS {
            let exists = self
                .run(&["-w", "-t", "nat", "-n", "-L", c])?
                .status
                .success();
            if exists {
                check(&self.cmd, self.run(&["-w", "-t", "nat", "-F", c])?)?;
                check(&self.cmd, self.run(&["-w", "-t", "nat", "-X", c])?)?;
            }
        }
        Ok(())
    }

    fn install(&self, rules: &str) -> Result<(), InitError> {
        let mut child = Command::new(&self.restore)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| missing(&self.restore, e))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(rules.as_bytes())
            .map_err(|e| ran(&self.restore, e))?;
        let out = child
            .wait_with_output()
            .map_err(|e| ran(&self.restore, e))?;
        check(&self.restore, out)
    }
}

fn missing(cmd: &str, e: std::io::Error) -> InitError {
    if e.kind() == std::io::ErrorKind::NotFound {
        InitError::Missing(cmd.to_string())
    } else {
        ran(cmd, e)
    }
}

fn ran(cmd: &str, source: std::io::Error) -> InitError {
    InitError::Run {
        cmd: cmd.to_string(),
        source,
    }
}

fn check(cmd: &str, out: std::process::Output) -> Result<(), InitError> {
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let hint = if err.contains("Permission denied") || err.contains("Operation not permitted") {
        " (this needs CAP_NET_ADMIN and CAP_NET_RAW in the pod's network namespace)"
    } else {
        ""
    };
    Err(InitError::Failed {
        cmd: cmd.to_string(),
        stderr: err,
        hint,
    })
}

/// The backend holding rules in this namespace; nft when neither does (or cannot tell).
fn detect_backend() -> Backend {
    let count = |cmd: &str| {
        Command::new(cmd)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .count()
            })
            .unwrap_or(0)
    };
    if count("iptables-legacy-save") > count("iptables-nft-save") {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// Whether this namespace has a global IPv6 address (`/proc/net/if_inet6`, scope 00).
pub fn has_global_ipv6() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6")
        .map(|t| t.lines().any(|l| l.split_whitespace().nth(3) == Some("00")))
        .unwrap_or(false)
}

/// Runs `weft-proxy init`: prints, installs or removes the rules. Returns what it did.
pub fn run(cfg: &InitConfig) -> Result<String, InitError> {
    let mut families = vec![Family::V4];
    let v6 = match cfg.ipv6 {
        Ipv6::On => true,
        Ipv6::Off => false,
        Ipv6::Auto => has_global_ipv6(),
    };
    if v6 {
        families.push(Family::V6);
    }
    if cfg.dry_run {
        let mut out = String::new();
        for f in families {
            let name = if f == Family::V4 {
                "iptables"
            } else {
                "ip6tables"
            };
            out += &format!("# {name}-restore --noflush\n{}", rules(cfg, f)?);
        }
        return Ok(out);
    }
    let backend = match cfg.iptables {
        Backend::Auto => detect_backend(),
        b => b,
    };
    let mut done = Vec::new();
    for f in families {
        let t = Tables::new(backend, f);
        t.cleanup()?;
        if cfg.cleanup {
            done.push(format!("{}: weft's rules removed", t.cmd));
        } else {
            t.install(&rules(cfg, f)?)?;
            done.push(format!("{}: weft's rules installed", t.cmd));
        }
    }
    Ok(done.join("\n") + "\n")
}

#[cfg(test)]
mod tests;
