//! Which peers are this pod itself: what the outbound listeners serve, and nobody else.
//!
//! A connection the pod's iptables rules redirected to an outbound listener comes from one of
//! the pod's own addresses (loopback, or the pod IP the application's socket was bound to); a
//! connection from anywhere else is another host's, which must not borrow this pod's identity.

use std::{
    net::{IpAddr, SocketAddr},
    sync::RwLock,
};

/// How many of the pod's own non-loopback addresses are remembered (a pod has a few).
const REMEMBERED: usize = 16;

/// Tells whether an address belongs to this network namespace.
#[derive(Debug, Default)]
pub struct LocalAddrs {
    /// Non-loopback addresses already found to be local; at most [`REMEMBERED`].
    known: RwLock<Vec<IpAddr>>,
}

impl LocalAddrs {
    /// Whether `peer` is one of this namespace's own addresses: loopback, or an address a
    /// socket can be bound to here (the kernel's own answer, so a new pod address needs no
    /// configuration). Addresses found local are remembered; others cost one `bind` each.
    pub fn contains(&self, peer: SocketAddr) -> bool {
        let ip = super::canonical(peer).ip();
        if ip.is_loopback() {
            return true;
        }
        if self.known.read().expect("local addrs").contains(&ip) {
            return true;
        }
        let local = std::net::UdpSocket::bind((ip, 0)).is_ok();
        if local {
            let mut known = self.known.write().expect("local addrs");
            if known.len() < REMEMBERED && !known.contains(&ip) {
                known.push(ip);
            }
        }
        local
    }

    /// Whether `addr` is one of the pod's own addresses other than loopback: the only
    /// original destination a captured inbound connection may have. (A peer on the same link
    /// can send a packet to 127.0.0.1, or to any address, by this pod's MAC: the redirect
    /// takes it all the same.)
    pub fn is_pod_address(&self, addr: SocketAddr) -> bool {
        let ip = super::canonical(addr).ip();
        !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast() && self.contains(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_bindable_addresses_are_local_others_are_not() {
        let local = LocalAddrs::default();
        assert!(local.contains("127.0.0.1:40000".parse().unwrap()));
        assert!(local.contains("127.3.2.1:1".parse().unwrap()));
        assert!(local.contains("[::1]:40000".parse().unwrap()));
        assert!(local.contains("[::ffff:127.0.0.1]:1".parse().unwrap()));
        // TEST-NET-3 is never assigned to a host.
        assert!(!local.contains("203.0.113.9:40000".parse().unwrap()));
        assert!(!local.contains("[2001:db8::9]:40000".parse().unwrap()));
        assert!(
            local.known.read().unwrap().is_empty(),
            "loopback is not stored"
        );
        for not_the_pods in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:80",
            "0.0.0.0:80",
            "203.0.113.9:80",
        ] {
            assert!(
                !local.is_pod_address(not_the_pods.parse().unwrap()),
                "{not_the_pods}"
            );
        }
    }
}
