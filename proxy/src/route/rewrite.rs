//! A route's URL rewrite (the Gateway API's `URLRewrite`; xDS's `prefix_rewrite`,
//! `regex_rewrite` and `host_rewrite_literal`): the request's path and authority changed
//! before it is sent. Compiled once per configuration; a rewritten path is the one new string
//! a request gets.

use http::{HeaderValue, Request, Uri, header::HOST, uri::Authority, uri::PathAndQuery};
use regex::Regex;

#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// The route's matched prefix (without a trailing `/`; empty for `/`) replaced by `with`,
    /// on a segment boundary as the Gateway API's `ReplacePrefixMatch`: `/foo/bar` with
    /// `/foo` -> `/xyz` is `/xyz/bar`, with `/foo` -> `/` or `` is `/bar`.
    Prefix { matched: Box<str>, with: Box<str> },
    /// Every match of `re` in the path replaced by `with` (in the regex crate's syntax).
    Regex { re: Regex, with: Box<str> },
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    /// The new authority, and as a `Host` value.
    pub host: Option<(Authority, HeaderValue)>,
}

impl PathRewrite {
    /// `path` rewritten; `None` when it does not apply (the prefix is not there).
    pub fn apply(&self, path: &str) -> Option<String> {
        match self {
            PathRewrite::Prefix { matched, with } => {
                let rest = path.strip_prefix(&**matched)?;
                let with = match (with.strip_suffix('/'), rest.starts_with('/')) {
                    (Some(w), true) => w,
                    _ => with,
                };
                let mut out = String::with_capacity(with.len() + rest.len() + 1);
                out.push_str(with);
                out.push_str(rest);
                if !out.starts_with('/') {
                    out.insert(0, '/');
                }
                Some(out)
            }
            PathRewrite::Regex { re, with } => Some(re.replace_all(path, &**with).into_owned()),
        }
    }
}

impl Rewrite {
    pub fn apply<B>(&self, req: &mut Request<B>) {
        let new_path = self.path.as_ref().and_then(|p| {
            let path = p.apply(req.uri().path())?;
            let pq = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            PathAndQuery::try_from(pq).ok()
        });
        let authority = self
            .host
            .as_ref()
            .filter(|_| req.uri().authority().is_some())
            .map(|(a, _)| a.clone());
        if new_path.is_some() || authority.is_some() {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            if let Some(pq) = new_path {
                parts.path_and_query = Some(pq);
            }
            if let Some(a) = authority {
                parts.authority = Some(a);
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        if let Some((_, host)) = &self.host
            && req.headers().contains_key(HOST)
        {
            req.headers_mut().insert(HOST, host.clone());
        }
    }
}

/// Envoy's substitution syntax (`\1` for a group) in the regex crate's (`${1}`, `$$` for `$`).
pub fn substitution(envoy: &str) -> String {
    let mut out = String::with_capacity(envoy.len());
    let mut chars = envoy.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push('}');
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(matched: &str, with: &str) -> PathRewrite {
        PathRewrite::Prefix {
            matched: matched.into(),
            with: with.into(),
        }
    }

    #[test]
    fn prefixes_are_replaced_as_the_gateway_api_shows() {
        for (matched, with, path, want) in [
            ("/foo", "/xyz", "/foo/bar", "/xyz/bar"),
            ("/foo", "/xyz/", "/foo/bar", "/xyz/bar"),
            ("/foo", "", "/foo/bar", "/bar"),
            ("/foo", "/", "/foo/bar", "/bar"),
            ("/foo", "/", "/foo", "/"),
            ("/foo", "", "/foo", "/"),
            ("/prefix/one", "/one", "/prefix/one/two", "/one/two"),
            ("", "/xyz", "/foo", "/xyz/foo"),
        ] {
            assert_eq!(
                prefix(matched, with).apply(path).as_deref(),
                Some(want),
                "{matched} -> {with}: {path}"
            );
        }
        assert_eq!(prefix("/foo", "/x").apply("/bar"), None);
    }

    #[test]
    fn a_regex_rewrite_takes_envoys_substitutions() {
        let re = PathRewrite::Regex {
            re: Regex::new("^/service/([^/]+)(/.*)$").unwrap(),
            with: substitution(r"\2/instance/\1$").into(),
        };
        assert_eq!(
            re.apply("/service/foo/v1/api").as_deref(),
            Some("/v1/api/instance/foo$")
        );
        let full = PathRewrite::Regex {
            re: Regex::new("^.*$").unwrap(),
            with: substitution("/one").into(),
        };
        assert_eq!(full.apply("/full/one").as_deref(), Some("/one"));
    }

    #[test]
    fn the_path_query_and_authority_are_rewritten() {
        let r = Rewrite {
            path: Some(prefix("/a", "/b")),
            host: Some((
                "new.example:80".parse().unwrap(),
                HeaderValue::from_static("new.example:80"),
            )),
        };
        let mut req = Request::get("http://old.example/a/x?q=1").body(()).unwrap();
        r.apply(&mut req);
        assert_eq!(req.uri(), "http://new.example:80/b/x?q=1");
        let mut h1 = Request::get("/a").header("host", "old").body(()).unwrap();
        r.apply(&mut h1);
        assert_eq!(
            (h1.uri().to_string().as_str(), &h1.headers()["host"]),
            ("/b", &HeaderValue::from_static("new.example:80"))
        );
    }
}
