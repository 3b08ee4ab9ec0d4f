//! The sidecar's DNS proxy (`--dns-addr`; `weft-proxy init --redirect-dns` sends the pod's
//! queries to it): names of mesh services in the routing table are answered with their VIPs,
//! so a service known only to the registry (a file, etcd) resolves in the pod; every other
//! query is relayed unchanged to the upstream resolver (`--dns-upstream`, else the first
//! `nameserver` of `/etc/resolv.conf`). UDP and TCP.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A, rdata::AAAA},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

use crate::table::SharedTable;

/// TTL of the answers for mesh names: short, so a changed VIP is picked up soon.
const TTL: u32 = 30;
/// How long an upstream has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries relayed upstream at once (each holds a socket and a 64 KiB buffer until the answer
/// or the timeout); beyond, a query gets SERVFAIL at once.
pub const MAX_RELAYS_IN_FLIGHT: usize = 256;
/// TCP connections held at once; beyond, a new one is closed.
pub const MAX_TCP_CONNECTIONS: usize = 64;

#[derive(Debug)]
pub struct DnsProxy {
    pub table: SharedTable,
    pub upstream: Option<SocketAddr>,
    /// Permits for relays in flight ([`MAX_RELAYS_IN_FLIGHT`]).
    pub relays: tokio::sync::Semaphore,
}

/// The first `nameserver` of a resolv.conf text, on port 53.
pub fn upstream_from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse().ok())
            .flatten()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

impl DnsProxy {
    /// The answer for a query about a mesh name, or `None` when it is not one (to be relayed).
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let req = Message::from_vec(query).ok()?;
        let q = req.queries().first()?;
        let name = q.name().to_ascii();
        let host = name.trim_end_matches('.').to_ascii_lowercase();
        let vip = self.table.load().vip_for_host(&host)?;
        let mut rsp = Message::new();
        rsp.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_op_code(req.op_code())
            .set_authoritative(true)
            .set_recursion_desired(req.recursion_desired())
            .set_recursion_available(true)
            .set_response_code(ResponseCode::NoError)
            .add_query(q.clone());
        // A or AAAA as the VIP's family; any other type: the name exists, with no such data.
        let rdata = match (q.query_type(), vip) {
            (RecordType::A, std::net::IpAddr::V4(v4)) => Some(RData::A(A(v4))),
            (RecordType::AAAA, std::net::IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
            _ => None,
        };
        if let Some(rdata) = rdata {
            rsp.add_answer(Record::from_rdata(q.name().clone(), TTL, rdata));
        }
        rsp.to_vec().ok()
    }

    /// Relays a query to the upstream over UDP; `None` if there is none or it does not answer.
    async fn relay_udp(&self, query: &[u8]) -> Option<Vec<u8>> {
        let upstream = self.upstream?;
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let sock = UdpSocket::bind(bind).await.ok()?;
        // Connected: only the upstream's answer is taken, and a refusal (ICMP) ends the wait.
        sock.connect(upstream).await.ok()?;
        sock.send(query).await.ok()?;
        let mut buf = vec![0u8; 65535];
        let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Relays a query to the upstream over TCP.
    async fn relay_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        let upstream = self.upstream?;
        let fut = async {
            let mut s = TcpStream::connect(upstream).await.ok()?;
            s.write_all(&(query.len() as u16).to_be_bytes())
                .await
                .ok()?;
            s.write_all(query).await.ok()?;
            read_framed(&mut s).await
        };
        tokio::time::timeout(UPSTREAM_TIMEOUT, fut).await.ok()?
    }

    /// SERVFAIL for a query nobody answered.
    fn servfail(query: &[u8]) -> Option<Vec<u8>> {
        let req = Message::from_vec(query).ok()?;
        let mut rsp = Message::error_msg(req.id(), req.op_code(), ResponseCode::ServFail);
        rsp.add_queries(req.queries().iter().cloned());
        rsp.to_vec().ok()
    }

    async fn resolve(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        if let Some(a) = self.answer(query) {
            return Some(a);
        }
        let Ok(_relay) = self.relays.try_acquire() else {
            return Self::servfail(query);
        };
        let relayed = if tcp {
            self.relay_tcp(query).await
        } else {
            self.relay_udp(query).await
        };
        relayed.or_else(|| Self::servfail(query))
    }

    pub async fn serve_udp(self: Arc<Self>, sock: UdpSocket) {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let query = buf[..n].to_vec();
            let (this, sock) = (self.clone(), sock.clone());
            tokio::spawn(async move {
                if let Some(rsp) = this.resolve(&query, false).await {
                    let _ = sock.send_to(&rsp, from).await;
                }
            });
        }
    }

    pub async fn serve_tcp(self: Arc<Self>, l: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(s);
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                while let Some(query) =
                    tokio::time::timeout(Duration::from_secs(30), read_framed(&mut s))
                        .await
                        .ok()
                        .flatten()
                {
                    let Some(rsp) = this.resolve(&query, true).await else {
                        return;
                    };
                    let len = (rsp.len() as u16).to_be_bytes();
                    if s.write_all(&len).await.is_err() || s.write_all(&rsp).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
}

/// One length-prefixed DNS message from a TCP stream.
async fn read_framed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.ok()?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).await.ok()?;
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use hickory_proto::{op::Query, rr::Name};

    fn proxy(yaml: &str) -> DnsProxy {
        let metrics = crate::metrics::Metrics::new();
        let table = crate::table::load_text(
            std::path::Path::new("t.yaml"),
            yaml,
            1,
            &metrics,
            &crate::resolve::Resolved::none(),
            &crate::table::Table::empty(),
        )
        .unwrap();
        DnsProxy {
            table: Arc::new(ArcSwap::from_pointee(table)),
            upstream: None,
            relays: tokio::sync::Semaphore::new(MAX_RELAYS_IN_FLIGHT),
        }
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    const TABLE: &str = "services:\n  - {name: web.demo, port: 8080, aliases: [web], vip: 10.96.0.10, endpoints: [{address: 10.0.0.1:8080}]}\n  - {name: web.demo, port: 9090, vip: 10.96.0.10, endpoints: [{address: 10.0.0.1:9090}]}\n  - {name: novip.demo, port: 80, endpoints: [{address: 10.0.0.2:80}]}\n";

    #[test]
    fn mesh_names_get_their_vip_and_others_are_left_to_the_upstream() {
        let p = proxy(TABLE);
        for name in ["web.demo.", "WEB.demo", "web."] {
            let rsp = Message::from_vec(&p.answer(&query(name, RecordType::A)).unwrap()).unwrap();
            assert_eq!(rsp.id(), 4242);
            assert_eq!(rsp.response_code(), ResponseCode::NoError);
            let ips: Vec<_> = rsp.answers().iter().map(|r| r.data().clone()).collect();
            assert_eq!(ips, [RData::A(A("10.96.0.10".parse().unwrap()))], "{name}");
        }
        // The name exists; it has no IPv6 address.
        let rsp =
            Message::from_vec(&p.answer(&query("web.demo.", RecordType::AAAA)).unwrap()).unwrap();
        assert_eq!(rsp.response_code(), ResponseCode::NoError);
        assert!(rsp.answers().is_empty());
        // Not mesh names (or no VIP to answer with): relayed.
        assert!(p.answer(&query("example.org.", RecordType::A)).is_none());
        assert!(p.answer(&query("novip.demo.", RecordType::A)).is_none());
        assert!(p.answer(b"garbage").is_none());
        let fail = DnsProxy::servfail(&query("example.org.", RecordType::A)).unwrap();
        assert_eq!(
            Message::from_vec(&fail).unwrap().response_code(),
            ResponseCode::ServFail
        );
    }

    #[test]
    fn the_upstream_is_the_first_nameserver() {
        assert_eq!(
            upstream_from_resolv_conf(
                "search demo.svc\n# x\nnameserver 10.255.255.53\nnameserver 1.1.1.1\n"
            ),
            Some("10.255.255.53:53".parse().unwrap())
        );
        assert_eq!(upstream_from_resolv_conf("options ndots:5\n"), None);
    }
}
