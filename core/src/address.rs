//! Where an endpoint is reached: an IP address and port, or a host name and port that the proxy
//! resolves (and re-resolves when the answer's TTL runs out).
//!
//! Written the same way in the proxy's table file, the control plane's registries and etcd
//! registrations: `10.0.0.7:8080`, `[fd00::7]:8080` or `db.example.com:5432`.

use std::{fmt, net::SocketAddr, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointAddress {
    Ip(SocketAddr),
    /// A host name (lower case, no trailing dot) and a port.
    Host {
        host: Box<str>,
        port: u16,
    },
}

impl EndpointAddress {
    pub fn port(&self) -> u16 {
        match self {
            EndpointAddress::Ip(a) => a.port(),
            EndpointAddress::Host { port, .. } => *port,
        }
    }

    /// The IP address and port, when the address is not a host name.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            EndpointAddress::Ip(a) => Some(*a),
            EndpointAddress::Host { .. } => None,
        }
    }

    /// A host name and port, or an IP address and port, from their two parts (as xDS and
    /// Kubernetes carry them).
    pub fn from_parts(host: &str, port: u16) -> Result<Self, String> {
        if port == 0 {
            return Err(format!("`{host}`: port 0 is not a port"));
        }
        if let Ok(ip) = host.parse() {
            return Ok(EndpointAddress::Ip(SocketAddr::new(ip, port)));
        }
        Ok(EndpointAddress::Host {
            host: host_name(host)?.into(),
            port,
        })
    }
}

impl From<SocketAddr> for EndpointAddress {
    fn from(a: SocketAddr) -> Self {
        EndpointAddress::Ip(a)
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Ip(a) => a.fmt(f),
            EndpointAddress::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl FromStr for EndpointAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(EndpointAddress::Ip(a));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "`{s}` has no port (write IP:PORT, [IPv6]:PORT or HOST:PORT)"
            ));
        };
        if host.starts_with('[') || host.contains(':') {
            return Err(format!(
                "`{s}` is not an IPv6 address and port ([IPv6]:PORT)"
            ));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("`{s}`: `{port}` is not a port"))?;
        EndpointAddress::from_parts(host, port)
    }
}

/// Whether an authority (`host`, `host:port`, `[v6]`, `[v6]:port`, as a `Host` header or a URL
/// carries it) names this host's loopback: `localhost`, an address in `127.0.0.0/8`, or `::1`.
pub fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, "")) => v6,
            Some((v6, port)) if port.strip_prefix(':').is_some_and(is_port) => v6,
            _ => return false,
        },
        None => match authority.split_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return false,
            None => authority,
        },
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A host name as DNS knows it, lower-cased and without a trailing dot; the error names what is
/// wrong. A name whose last label is all digits is refused: it is a mistyped IP address
/// (`10.0.0.256`), not a name (no top-level domain is numeric).
pub fn host_name(host: &str) -> Result<String, String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    let bad = |why: &str| {
        Err(format!(
            "`{host}` is not an IP address or a host name: {why}"
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated label has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only letters, digits, `-` and `_` are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not begin or end with `-`");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("its last label is a number (a mistyped IP address?)");
    }
    Ok(name.to_ascii_lowercase())
}

impl Serialize for EndpointAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EndpointAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Parsed inside the visitor, so a format's error names the field and line.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = EndpointAddress;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("IP:PORT, [IPv6]:PORT or HOST:PORT")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<EndpointAddress, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_authorities() {
        for a in [
            "localhost",
            "LOCALHOST:15000",
            "127.0.0.1",
            "127.9.9.9:1",
            "[::1]",
            "[::1]:15000",
        ] {
            assert!(is_loopback_authority(a), "{a}");
        }
        for a in [
            "evil.example",
            "evil.example:15000",
            "localhost.evil.example",
            "10.0.0.7:15000",
            "[fd00::1]:15000",
            "::1",
            "[::1]x",
            "localhost:abc",
            "127.0.0.1:15000@evil",
            "",
        ] {
            assert!(!is_loopback_authority(a), "{a}");
        }
    }

    #[test]
    fn parses_ips_and_host_names() {
        let ok = [
            ("10.0.0.7:8080", "10.0.0.7:8080"),
            ("[fd00::7]:80", "[fd00::7]:80"),
            ("DB.Example.com:5432", "db.example.com:5432"),
            ("db.example.com.:5432", "db.example.com:5432"),
            ("localhost:1", "localhost:1"),
            ("_svc.my-host:9", "_svc.my-host:9"),
        ];
        for (input, shown) in ok {
            let a: EndpointAddress = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(a.to_string(), shown, "{input}");
        }
        assert!(matches!(
            "db:5432".parse::<EndpointAddress>(),
            Ok(EndpointAddress::Host { port: 5432, .. })
        ));
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases = [
            ("db.example.com", "has no port"),
            ("db:http", "`http` is not a port"),
            ("db:0", "port 0"),
            ("db:70000", "`70000` is not a port"),
            ("10.0.0.256:80", "last label is a number"),
            ("fd00::7:80", "not an IPv6 address and port"),
            ("[fd00::zz]:80", "not an IPv6 address and port"),
            ("a..b:80", "1 to 63 characters"),
            ("-a.b:80", "may not begin or end"),
            ("a b:80", "only letters"),
            (":80", "it is empty"),
        ];
        for (input, want) in cases {
            let e = input.parse::<EndpointAddress>().unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn serde_round_trips_as_a_string() {
        let a: EndpointAddress = serde_json::from_str("\"api.example.org:443\"").unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            "\"api.example.org:443\""
        );
        let e = serde_json::from_str::<EndpointAddress>("\"nowhere\"").unwrap_err();
        assert!(e.to_string().contains("has no port"), "{e}");
    }
}
