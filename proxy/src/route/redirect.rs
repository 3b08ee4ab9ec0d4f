//! A route that answers with a redirect (the Gateway API's `RequestRedirect`; xDS's
//! `RedirectAction`): the `Location` is the request's URL with what the route changes —
//! scheme, host, port, path (whole, or its matched prefix) — and the answer's status is the
//! route's (301, 302, 303, 307 or 308).

use http::StatusCode;

use super::PathRewrite;

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<Box<str>>,
    pub host: Option<Box<str>>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: StatusCode,
    pub strip_query: bool,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl Redirect {
    /// The `Location` for a request to `scheme://authority path?query`. The port: the route's;
    /// else, when the route changes the scheme, that scheme's (left out); else the request's.
    /// A scheme's own port is left out.
    pub fn location(
        &self,
        scheme: &str,
        authority: &str,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let (req_host, req_port) = split(authority);
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.host.as_deref().unwrap_or(req_host);
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => req_port,
        }
        .filter(|p| default_port(scheme) != Some(*p));
        let path = match &self.path {
            Some(p) => p.apply(path).unwrap_or_else(|| path.to_string()),
            None => path.to_string(),
        };
        let mut out = format!("{scheme}://{host}");
        if let Some(p) = port {
            out.push_str(&format!(":{p}"));
        }
        out.push_str(&path);
        if let Some(q) = query.filter(|_| !self.strip_query) {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// `host:port` (or `[v6]:port`) as host and port.
fn split(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) => {
            (h, p.parse().ok())
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        path: Option<PathRewrite>,
    ) -> Redirect {
        Redirect {
            scheme: scheme.map(Into::into),
            host: host.map(Into::into),
            port,
            path,
            status: StatusCode::FOUND,
            strip_query: false,
        }
    }

    #[test]
    fn locations_keep_what_the_route_does_not_change() {
        let at = |r: &Redirect| r.location("http", "echo:8080", "/a/b", Some("q=1"));
        assert_eq!(
            at(&r(None, Some("example.org"), None, None)),
            "http://example.org:8080/a/b?q=1"
        );
        assert_eq!(
            at(&r(Some("https"), None, None, None)),
            "https://echo/a/b?q=1",
            "the scheme's port"
        );
        assert_eq!(
            at(&r(None, None, Some(8083), None)),
            "http://echo:8083/a/b?q=1"
        );
        assert_eq!(
            at(&r(Some("https"), None, Some(443), None)),
            "https://echo/a/b?q=1"
        );
        assert_eq!(at(&r(None, None, Some(80), None)), "http://echo/a/b?q=1");
        let full = PathRewrite::Regex {
            re: regex::Regex::new("^.*$").unwrap(),
            with: "/full-path-replacement".into(),
        };
        assert_eq!(
            at(&r(None, None, None, Some(full))),
            "http://echo:8080/full-path-replacement?q=1"
        );
        let prefix = PathRewrite::Prefix {
            matched: "/a".into(),
            with: "/replacement-prefix".into(),
        };
        assert_eq!(
            at(&r(None, None, None, Some(prefix))),
            "http://echo:8080/replacement-prefix/b?q=1"
        );
    }
}
