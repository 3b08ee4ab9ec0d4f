//! The original destination of a connection the pod's iptables rules redirected to this proxy
//! (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, read through socket2, which holds the one
//! `getsockopt` call; no unsafe code here).

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Where the client sent this connection, if that is not where it arrived (it was redirected).
/// `None` for a connection made to the proxy's own address, or when conntrack knows nothing of
/// it.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = socket2::SockRef::from(stream);
    // An IPv4 connection on a dual-stack socket (`[::ffff:a.b.c.d]`) was redirected by
    // iptables, not ip6tables: its original destination is an IPv4 one.
    let orig = match local {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => sock.original_dst_v6(),
        _ => sock.original_dst_v4(),
    }
    .ok()?
    .as_socket()?;
    (orig != super::canonical(local)).then_some(orig)
}
