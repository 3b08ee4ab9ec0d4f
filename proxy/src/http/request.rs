//! Turning a downstream request into the upstream one: the request line rewritten when the
//! upstream speaks another HTTP version than the client.

use http::{
    HeaderValue, Request, Uri, Version,
    header::{EXPECT, HOST},
    uri::{Authority, PathAndQuery, Scheme},
};

use super::error::ProxyError;
use crate::table::Protocol;

/// Why an HTTP/2 request is malformed in a way h2 does not check itself, if it is: such a
/// request is refused with a stream error and never forwarded, so the two sides of the proxy
/// never read it differently (RFC 9113 §8.2.1, §8.3.1, §8.5).
pub fn malformed_h2<B>(req: &Request<B>) -> Option<&'static str> {
    let authority = req.uri().authority();
    if req.method() == http::Method::CONNECT && authority.is_none() {
        return Some("CONNECT without :authority");
    }
    if let (Some(a), Some(host)) = (authority, req.headers().get(HOST))
        && !host.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())
    {
        return Some("`host` differs from :authority");
    }
    let padded = |v: &HeaderValue| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    };
    if req.headers().values().any(padded) {
        return Some("a field value starts or ends with whitespace");
    }
    None
}

/// Whether the request carries `Host` more than once (ambiguous: refused).
pub fn has_duplicate_host<B>(req: &Request<B>) -> bool {
    req.headers().get_all(HOST).iter().nth(1).is_some()
}

/// The authority a request names: the URI's (HTTP/2, or HTTP/1 absolute-form), else `Host`.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(Authority::as_str)
        .or_else(|| req.headers().get(HOST)?.to_str().ok())
}

/// Prepares `req` (as it arrived, its hop-by-hop fields already removed) for an upstream that
/// speaks `protocol`: the request line and authority in that version's form.
pub fn prepare<B>(
    req: &mut Request<B>,
    protocol: Protocol,
    upgrade: bool,
) -> Result<(), ProxyError> {
    let from = req.version();
    let to = match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 if !upgrade => Version::HTTP_2,
        _ => from,
    };
    match (from == Version::HTTP_2, to == Version::HTTP_2) {
        (true, true) => {
            // `:authority` is what was routed on; a differing `Host` must not reach the upstream.
            if req.uri().authority().is_some() {
                req.headers_mut().remove(HOST);
            }
        }
        (false, true) => {
            // HTTP/1 -> HTTP/2: the authority moves into the URI (`:authority`).
            let authority: Authority = authority(req)
                .ok_or(ProxyError::NoAuthority)?
                .parse()
                .map_err(|_| ProxyError::NoAuthority)?;
            let path = path_and_query(req.uri());
            *req.uri_mut() = Uri::builder()
                .scheme(req.uri().scheme().cloned().unwrap_or(Scheme::HTTP))
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|_| ProxyError::NoAuthority)?;
            req.headers_mut().remove(HOST);
            req.headers_mut().remove(EXPECT);
            *req.version_mut() = Version::HTTP_2;
        }
        (_, false) => {
            // To HTTP/1: origin-form request target, and `Host` set to the authority that was
            // routed on (RFC 9112 §3.2.2), replacing whatever `Host` the client also sent.
            if let Some(a) = req.uri().authority().cloned() {
                let host =
                    HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::NoAuthority)?;
                req.headers_mut().insert(HOST, host);
                *req.uri_mut() = Uri::from(path_and_query(req.uri()));
            }
            if from == Version::HTTP_2 {
                *req.version_mut() = Version::HTTP_11;
            }
        }
    }
    Ok(())
}

/// A GET or HEAD request with a body of unknown length, going out as HTTP/1.1, says it is
/// chunked: hyper would otherwise send such a body as empty (it assumes these methods have
/// none), so the upstream would read a different request than the client sent.
pub fn keep_body<B: http_body::Body>(req: &mut Request<B>) {
    let unknown = !req.body().is_end_stream() && req.body().size_hint().exact().is_none();
    if unknown
        && req.version() != Version::HTTP_2
        && matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        && !req.headers().contains_key(http::header::CONTENT_LENGTH)
    {
        req.headers_mut().insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_to_http2_moves_host_into_the_uri() {
        let mut req = Request::get("/a?b=1")
            .header("host", "echo:8080")
            .header("expect", "100-continue")
            .body(())
            .unwrap();
        prepare(&mut req, Protocol::Http2, false).unwrap();
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri(), "http://echo:8080/a?b=1");
        assert!(req.headers().get("host").is_none());
        assert!(req.headers().get("expect").is_none());
    }

    #[test]
    fn http2_to_http1_uses_origin_form_and_host() {
        let mut req = Request::get("http://echo:8080/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        prepare(&mut req, Protocol::Http1, false).unwrap();
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.headers()["host"], "echo:8080");
    }

    #[test]
    fn absolute_form_http1_becomes_origin_form() {
        let mut req = Request::get("http://echo/p").body(()).unwrap();
        prepare(&mut req, Protocol::Http, false).unwrap();
        assert_eq!(req.uri(), "/p");
        assert_eq!(req.headers()["host"], "echo");
        assert_eq!(authority(&req), Some("echo"));
    }

    #[test]
    fn the_routed_authority_wins_over_a_conflicting_host() {
        let mut req = Request::get("http://a.svc/p")
            .header("host", "b.svc")
            .body(())
            .unwrap();
        assert_eq!(authority(&req), Some("a.svc"));
        prepare(&mut req, Protocol::Http, false).unwrap();
        assert_eq!(req.headers()["host"], "a.svc");

        let mut req = Request::get("http://a.svc/p")
            .version(Version::HTTP_2)
            .header("host", "b.svc")
            .body(())
            .unwrap();
        prepare(&mut req, Protocol::Http, false).unwrap();
        assert!(req.headers().get("host").is_none());
        assert_eq!(req.uri().authority().unwrap(), "a.svc");

        let req = Request::get("/")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert!(has_duplicate_host(&req));
    }

    #[test]
    fn malformed_http2_requests_are_named() {
        let h2 = |b: http::request::Builder| b.version(Version::HTTP_2).body(()).unwrap();
        assert_eq!(malformed_h2(&h2(Request::get("http://a.svc/"))), None);
        assert_eq!(
            malformed_h2(&h2(Request::get("http://a.svc/").header("host", "A.SVC"))),
            None,
            "host names compare without case"
        );
        assert_eq!(
            malformed_h2(&h2(Request::get("http://a.svc/").header("host", "b.svc"))),
            Some("`host` differs from :authority")
        );
        assert_eq!(
            malformed_h2(&h2(Request::connect("/"))),
            Some("CONNECT without :authority")
        );
        for v in [" x", "x\t", "\tx"] {
            assert_eq!(
                malformed_h2(&h2(Request::get("http://a.svc/").header("x-a", v))),
                Some("a field value starts or ends with whitespace"),
                "{v:?}"
            );
        }
        assert_eq!(
            malformed_h2(&h2(Request::get("http://a.svc/").header("x-a", "x y"))),
            None
        );
    }

    #[test]
    fn http1_without_host_cannot_become_http2() {
        let mut req = Request::get("/").body(()).unwrap();
        assert!(matches!(
            prepare(&mut req, Protocol::Http2, false),
            Err(ProxyError::NoAuthority)
        ));
    }
}
