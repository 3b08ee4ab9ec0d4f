//! Header handling a proxy owes every message: hop-by-hop fields (RFC 9110 §7.6.1) are removed,
//! except what an `Upgrade` handshake needs end to end. Messages received over HTTP/2 carry none
//! (h2 refuses connection-specific fields and any `te` but `trailers`, RFC 9113 §8.2.2), so
//! only HTTP/1 messages are stripped.
//!
//! And the names weft reserves (`x-weft-*`): no request carries one past the sidecar in any
//! spelling a server could read as one of them.

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE},
};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `name` is one weft reserves (`x-weft-*`), read as CGI, Rack and Puma-style servers
/// read names: case aside (names arrive lower-cased) and `_` the same as `-`, so that
/// `x_weft-peer_identity` is `x-weft-peer-identity` to them.
pub fn is_reserved(name: &HeaderName) -> bool {
    match name.as_str().as_bytes() {
        [b'x', s1, b'w', b'e', b'f', b't', s2, ..] => is_dash(*s1) && is_dash(*s2),
        _ => false,
    }
}

fn is_dash(b: u8) -> bool {
    b == b'-' || b == b'_'
}

/// Removes every header weft reserves, in every spelling. Allocates only when there is one.
pub fn strip_reserved(headers: &mut HeaderMap) {
    if !headers.keys().any(is_reserved) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| is_reserved(n)).cloned().collect();
    for n in names {
        headers.remove(n);
    }
}

/// Whether a request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade: x`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether every protocol an `Upgrade` offers (`name[/version]`, any case) is in `allowed`
/// (lower case).
pub fn upgrade_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let mut offers = headers
        .get_all(UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\0").split(','))
        .map(|p| p.trim().split('/').next().unwrap_or(""))
        .peekable();
    offers.peek().is_some() && offers.all(|p| allowed.iter().any(|a| a.eq_ignore_ascii_case(p)))
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes hop-by-hop fields. With `upgrade`, `Connection: upgrade` and `Upgrade` are kept.
/// `TE: trailers` is kept (HTTP/2 and gRPC need it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Read before `Connection` is, which could name it.
    let chunked = headers.contains_key(TRANSFER_ENCODING);
    match headers.get_all(CONNECTION).iter().count() {
        0 => {}
        // The usual case (`Connection: keep-alive`): no allocation.
        1 => {
            if let Some(v) = headers.remove(CONNECTION) {
                remove_listed(headers, &v, upgrade);
            }
        }
        _ => {
            let listed: Vec<HeaderValue> = match headers.entry(CONNECTION) {
                http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
                http::header::Entry::Vacant(_) => Vec::new(),
            };
            for v in &listed {
                remove_listed(headers, v, upgrade);
            }
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    // The framing the message arrived with was hop-by-hop; a `Content-Length` beside a
    // `Transfer-Encoding` is stale (RFC 9112 §6.3: the sender removes it before forwarding),
    // and kept it would frame the body anew, cut short.
    if chunked {
        headers.remove(TRANSFER_ENCODING);
        headers.remove(CONTENT_LENGTH);
    }
    if !upgrade {
        headers.remove(UPGRADE);
    }
    // HTTP/2 allows `te` only as exactly `trailers` (RFC 9113 §8.2.2): any other spelling of it
    // is normalised, anything else removed.
    if let Some(te) = headers.get(TE)
        && te.as_bytes() != b"trailers"
    {
        if te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(TE);
        }
    }
}

/// Removes the fields a `Connection` value lists, except `TE` (handled on its own), the fields
/// that frame or address the message (`Host`, `Content-Length`, `Transfer-Encoding`: removed
/// by name they would change what the request means, not how it travels) and, for an upgrade,
/// `Upgrade`.
fn remove_listed(headers: &mut HeaderMap, connection: &HeaderValue, upgrade: bool) {
    const KEPT: [&str; 4] = ["te", "host", "content-length", "transfer-encoding"];
    let Ok(v) = connection.to_str() else { return };
    for token in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let keep = KEPT.iter().any(|k| token.eq_ignore_ascii_case(k))
            || (upgrade && token.eq_ignore_ascii_case("upgrade"));
        if !keep {
            // `&str` names are looked up without allocating.
            headers.remove(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_listed_fields() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn every_connection_header_counts() {
        let mut h = map(&[
            ("connection", "x-a"),
            ("connection", "X-B, Bad Name"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("te", "trailers"),
            ("connection", "te"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["te"],
            "TE: trailers stays even when Connection lists it"
        );
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_handshake() {
        let mut h = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn reserved_names_are_removed_in_every_spelling() {
        let mut h = map(&[
            ("x-weft-peer-identity", "a"),
            ("x_weft_peer_identity", "b"),
            ("x-weft-peer_identity", "c"),
            ("x_weft-peer-identity", "d"),
            ("X-Weft_Peer-Identity", "e"),
            ("x-weft-orig-proto", "HTTP/1.1"),
            ("x_weft_anything_new", "f"),
            ("x-weftx", "kept: not x-weft-*"),
            ("x-wefty-thing", "kept"),
            ("weft-proxy-error", "kept"),
            ("x-kept", "yes"),
        ]);
        strip_reserved(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["weft-proxy-error", "x-kept", "x-weftx", "x-wefty-thing"]
        );
    }

    #[test]
    fn a_content_length_beside_transfer_encoding_goes_with_it() {
        let mut h = map(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[("content-length", "5")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["content-length"], "5", "alone, it frames the body");
        // `Connection` naming the framing or the address changes neither.
        let mut h = map(&[
            ("connection", "transfer-encoding, content-length, host"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("host", "a.svc"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["host"],
            "the stale length went with the chunked framing"
        );
    }

    #[test]
    fn only_allowed_upgrades() {
        let allowed = ["websocket".to_string()];
        let offer = |v: &str| map(&[("connection", "upgrade"), ("upgrade", v)]);
        assert!(upgrade_allowed(&offer("websocket"), &allowed));
        assert!(upgrade_allowed(&offer("WebSocket/13"), &allowed));
        assert!(!upgrade_allowed(&offer("h2c"), &allowed));
        assert!(
            !upgrade_allowed(&offer("websocket, h2c"), &allowed),
            "every offer"
        );
        assert!(!upgrade_allowed(&map(&[]), &allowed));
    }

    #[test]
    fn te_is_exactly_trailers_or_gone() {
        let mut h = map(&[("te", "Trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(
            h["te"], "trailers",
            "HTTP/2 accepts only the lower-case token"
        );
        let mut h = map(&[("te", "gzip, trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("te").is_none());
    }
}
