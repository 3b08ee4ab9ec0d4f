//! What a route changes, from xDS: its headers, its URL (rewrite), or its answer (redirect). Headers:
//! `request_headers_to_add` / `_remove` and the response's.
//! An option's `append_action` says set (`OVERWRITE_IF_EXISTS_OR_ADD`) or add
//! (`APPEND_IF_EXISTS_OR_ADD`, the default; the deprecated `append: false` means set); the
//! other two actions are refused, as are names a route may not change (pseudo-headers, `host`,
//! the connection's own headers) and values that are not header values.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode, uri::Authority};
use weft_core::policy::check::unchangeable_header;
use weft_xds_proto::envoy::config::{
    core::v3::{HeaderValueOption, header_value_option::HeaderAppendAction},
    route::v3::{
        RedirectAction, Route as XdsRoute, RouteAction,
        redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
        route_action::HostRewriteSpecifier,
        weighted_cluster::ClusterWeight,
    },
};

use super::refused::{Refused, invalid, unsupported};

use crate::route::{
    HeaderMutation, PathRewrite, Redirect, Rewrite, RouteMatch, StringMatch, substitution,
};
use crate::table::RouteHeaders;

fn name(n: &str) -> Result<HeaderName, Refused> {
    let lower = n.to_ascii_lowercase();
    if unchangeable_header(&lower) {
        return Err(unsupported(format!(
            "header `{n}` may not be changed by a route"
        )));
    }
    HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| invalid(format!("`{n}` is not a header name")))
}

// `append` is deprecated, and still what older control planes send.
#[allow(deprecated)]
fn mutation(add: &[HeaderValueOption], remove: &[String]) -> Result<HeaderMutation, Refused> {
    let (mut set, mut append) = (Vec::new(), Vec::new());
    for o in add {
        let Some(h) = &o.header else {
            return Err(invalid("a header option without a header"));
        };
        let n = name(&h.key)?;
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            &h.raw_value[..]
        };
        let v = HeaderValue::from_bytes(raw)
            .map_err(|_| invalid(format!("header `{}`: not a header value", h.key)))?;
        let overwrite = match (o.append.as_ref().map(|b| b.value), o.append_action) {
            (Some(append), _) => !append,
            (None, a) if a == HeaderAppendAction::AppendIfExistsOrAdd as i32 => false,
            (None, a) if a == HeaderAppendAction::OverwriteIfExistsOrAdd as i32 => true,
            (None, a) => {
                return Err(unsupported(format!(
                    "header `{}`: append action {a} (only append and overwrite are supported)",
                    h.key
                )));
            }
        };
        if overwrite {
            set.push((n, v));
        } else {
            append.push((n, v));
        }
    }
    let remove = remove
        .iter()
        .map(|n| name(n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HeaderMutation {
        remove: remove.into(),
        set: set.into(),
        add: append.into(),
    })
}

/// The route's header changes; `None` when it makes none.
pub fn route_headers(r: &XdsRoute) -> Result<Option<Arc<RouteHeaders>>, Refused> {
    let h = RouteHeaders {
        request: mutation(&r.request_headers_to_add, &r.request_headers_to_remove)
            .map_err(|e| e.at("request headers"))?,
        response: mutation(&r.response_headers_to_add, &r.response_headers_to_remove)
            .map_err(|e| e.at("response headers"))?,
    };
    Ok((!h.request.is_empty() || !h.response.is_empty()).then(|| Arc::new(h)))
}

/// A weighted cluster's own header changes (its `request_headers_to_add` / `_remove` and the
/// response's); `None` when it makes none.
pub fn weight_headers(c: &ClusterWeight) -> Result<Option<Arc<RouteHeaders>>, Refused> {
    let h = RouteHeaders {
        request: mutation(&c.request_headers_to_add, &c.request_headers_to_remove)
            .map_err(|e| e.at("request headers"))?,
        response: mutation(&c.response_headers_to_add, &c.response_headers_to_remove)
            .map_err(|e| e.at("response headers"))?,
    };
    Ok((!h.request.is_empty() || !h.response.is_empty()).then(|| Arc::new(h)))
}

/// The route's URL rewrite: `prefix_rewrite` (replacing the route's prefix match on a segment
/// boundary, as the Gateway API's `ReplacePrefixMatch`), `regex_rewrite`, and
/// `host_rewrite_literal`; `None` when it has none.
pub fn rewrite(action: &RouteAction, m: &RouteMatch) -> Result<Option<Arc<Rewrite>>, Refused> {
    let path = match (&action.prefix_rewrite, &action.regex_rewrite) {
        (p, Some(_)) if !p.is_empty() => {
            return Err(invalid("both prefix_rewrite and regex_rewrite"));
        }
        (p, None) if !p.is_empty() => {
            let matched = match &m.path {
                None => "",
                Some(StringMatch::Prefix(s) | StringMatch::Segments(s)) => s.trim_end_matches('/'),
                Some(_) => return Err(unsupported("prefix_rewrite needs a prefix path match")),
            };
            Some(PathRewrite::Prefix {
                matched: matched.into(),
                with: p.as_str().into(),
            })
        }
        (_, Some(r)) => {
            let pattern = r.pattern.as_ref().map_or("", |p| p.regex.as_str());
            let re = weft_core::matching::bounded_regex(pattern)
                .map_err(|e| Refused::from(e).at("regex_rewrite"))?;
            Some(PathRewrite::Regex {
                re,
                with: substitution(&r.substitution).into(),
            })
        }
        _ => None,
    };
    let host = match &action.host_rewrite_specifier {
        None => None,
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            let bad = || invalid(format!("host_rewrite_literal `{h}` is not an authority"));
            let a: Authority = h.parse().map_err(|_| bad())?;
            let v = HeaderValue::from_str(h).map_err(|_| bad())?;
            Some((a, v))
        }
        Some(other) => {
            return Err(unsupported(format!("unsupported host rewrite {other:?}")));
        }
    };
    Ok((path.is_some() || host.is_some()).then(|| Arc::new(Rewrite { path, host })))
}

/// A redirect route's answer. Its path: `path_redirect` (the whole path), `prefix_rewrite` (the
/// matched prefix, on a segment boundary as for a rewrite) or `regex_rewrite`.
pub fn redirect(rd: &RedirectAction, m: &RouteMatch) -> Result<Arc<Redirect>, Refused> {
    let status = match RedirectResponseCode::try_from(rd.response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
        Ok(RedirectResponseCode::Found) => StatusCode::FOUND,
        Ok(RedirectResponseCode::SeeOther) => StatusCode::SEE_OTHER,
        Ok(RedirectResponseCode::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
        Ok(RedirectResponseCode::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
        Err(_) => {
            return Err(invalid(format!(
                "redirect response code {}",
                rd.response_code
            )));
        }
    };
    let scheme = match &rd.scheme_rewrite_specifier {
        None => None,
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".into()),
        Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if s == "http" || s == "https" => {
            Some(s.as_str().into())
        }
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => {
            return Err(unsupported(format!("redirect scheme `{s}`")));
        }
    };
    let path = match &rd.path_rewrite_specifier {
        None => None,
        Some(PathRewriteSpecifier::PathRedirect(p)) => Some(PathRewrite::Regex {
            re: weft_core::matching::bounded_regex("^.*$").map_err(Refused::from)?,
            with: substitution(p).into(),
        }),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => {
            let action = RouteAction {
                prefix_rewrite: p.clone(),
                ..Default::default()
            };
            rewrite(&action, m)?.and_then(|r| r.path.clone())
        }
        Some(PathRewriteSpecifier::RegexRewrite(r)) => {
            let action = RouteAction {
                regex_rewrite: Some(r.clone()),
                ..Default::default()
            };
            rewrite(&action, m)?.and_then(|r| r.path.clone())
        }
    };
    let host = (!rd.host_redirect.is_empty()).then(|| Box::from(rd.host_redirect.as_str()));
    if host
        .as_deref()
        .is_some_and(|h: &str| h.parse::<Authority>().is_err() || h.contains(['/', '?', '#']))
    {
        return Err(invalid(format!("host_redirect `{}`", rd.host_redirect)));
    }
    let port = match rd.port_redirect {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| invalid(format!("port_redirect {p}")))?),
    };
    Ok(Arc::new(Redirect {
        scheme,
        host,
        port,
        path,
        status,
        strip_query: rd.strip_query,
    }))
}

#[cfg(test)]
mod tests {
    use weft_xds_proto::envoy::config::core::v3::HeaderValue as XdsHeader;

    use super::*;

    fn option(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(XdsHeader {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        }
    }

    #[test]
    fn options_become_set_add_and_remove_and_what_a_route_may_not_change_is_refused() {
        let r = XdsRoute {
            request_headers_to_add: vec![
                option("X-Set", "s", HeaderAppendAction::OverwriteIfExistsOrAdd),
                option("x-add", "a", HeaderAppendAction::AppendIfExistsOrAdd),
            ],
            response_headers_to_remove: vec!["X-Gone".into()],
            ..Default::default()
        };
        let h = route_headers(&r).unwrap().unwrap();
        assert_eq!(h.request.set[0].0.as_str(), "x-set");
        assert_eq!(h.request.set[0].1, "s");
        assert_eq!(h.request.add[0].0.as_str(), "x-add");
        assert_eq!(h.response.remove[0].as_str(), "x-gone");
        assert!(h.response.set.is_empty() && h.request.remove.is_empty());
        assert_eq!(route_headers(&XdsRoute::default()).unwrap(), None);
        for (bad, want) in [
            (
                option("host", "x", HeaderAppendAction::OverwriteIfExistsOrAdd),
                "header `host` may not be changed by a route",
            ),
            (
                option(":path", "/x", HeaderAppendAction::OverwriteIfExistsOrAdd),
                "header `:path` may not be changed by a route",
            ),
            (
                option("x-a", "1", HeaderAppendAction::AddIfAbsent),
                "append action 1",
            ),
            (
                option("x-a", "bad\nvalue", HeaderAppendAction::AppendIfExistsOrAdd),
                "not a header value",
            ),
        ] {
            let r = XdsRoute {
                request_headers_to_add: vec![bad],
                ..Default::default()
            };
            let e = route_headers(&r).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(e.contains("request headers"), "{e}");
        }
    }
}
