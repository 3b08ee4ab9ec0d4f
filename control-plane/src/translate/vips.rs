//! Virtual IPs for mesh services: the one a service registers, else one kept across snapshots,
//! else one allocated from a reserved block. Sidecars answer DNS for mesh names with these.

use std::collections::BTreeMap;

use crate::registry::Snapshot;

/// The VIPs allocated so far, by host: what keeps a service's VIP when others come and go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vips(pub(super) BTreeMap<String, std::net::IpAddr>);

/// The first address of the block VIPs are allocated from (`240.240.0.0/16`: reserved space no
/// network routes, as Istio uses for the same purpose).
const VIP_BLOCK: [u8; 2] = [240, 240];

/// Every host's VIP: the one registered; else the one `previous` allocated it, if still free;
/// else one allocated from `240.240.0.0/16` by a hash of the host (probing past taken
/// addresses, hosts in order). A host keeps its VIP while it exists, whoever comes or goes
/// (a newcomer whose hash falls on a taken address probes on; it never moves the holder), and
/// a control plane starting from the same registry allocates the same. Sidecars answer DNS for
/// mesh names with these. With the block full (65,534 hosts), a host left over gets no VIP
/// (its name does not resolve through the sidecar; its own registered VIP or an alias still
/// routes it), with a warning.
pub(super) fn allocate_vips<'a>(
    snap: &'a Snapshot,
    previous: &Vips,
) -> BTreeMap<&'a str, std::net::IpAddr> {
    allocate_vips_in(snap, previous, 65534)
}

/// [`allocate_vips`] in the first `slots` addresses of the block.
pub(super) fn allocate_vips_in<'a>(
    snap: &'a Snapshot,
    previous: &Vips,
    slots: u32,
) -> BTreeMap<&'a str, std::net::IpAddr> {
    let mut vips = BTreeMap::new();
    for svc in snap.services.values() {
        if let Some(v) = svc.spec.vip {
            vips.entry(svc.host.as_str()).or_insert(v);
        }
    }
    let mut taken: std::collections::HashSet<std::net::IpAddr> = vips.values().copied().collect();
    let hosts: std::collections::BTreeSet<&str> =
        snap.services.values().map(|s| s.host.as_str()).collect();
    for host in &hosts {
        if let Some(ip) = previous.0.get(*host)
            && !vips.contains_key(host)
            && taken.insert(*ip)
        {
            vips.insert(host, *ip);
        }
    }
    let mut left_over = 0;
    for host in hosts {
        if vips.contains_key(host) {
            continue;
        }
        // Once a probe found the block full, every host after it is left over at once.
        if left_over > 0 {
            left_over += 1;
            continue;
        }
        // FNV-1a: stable across builds and platforms.
        let hash = host.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        // Every slot at most once: a full block ends the probe.
        let free = (0..slots)
            .map(|i| (hash % slots + i) % slots + 1)
            .map(|n| std::net::IpAddr::from([VIP_BLOCK[0], VIP_BLOCK[1], (n >> 8) as u8, n as u8]))
            .find(|ip| taken.insert(*ip));
        match free {
            Some(ip) => {
                vips.insert(host, ip);
            }
            None => left_over += 1,
        }
    }
    if left_over > 0 {
        tracing::warn!(
            hosts = left_over,
            "the VIP block 240.240.0.0/16 is full: these hosts get no VIP"
        );
    }
    vips
}
