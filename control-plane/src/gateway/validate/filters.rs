//! A rule's and a backendRef's filters: the types weft supports and their settings, checked
//! as the CRD's schema and CEL rules check them.

use super::*;

/// A filter: a type weft supports, the settings field of that type set, and no other's.
pub(super) fn filter(at: &str, f: &HttpRouteFilter, c: &mut Check) {
    // Each type and the field that holds its settings.
    let fields = [
        (
            REQUEST_HEADER_MODIFIER,
            "requestHeaderModifier",
            f.request_header_modifier.is_some(),
        ),
        (
            RESPONSE_HEADER_MODIFIER,
            "responseHeaderModifier",
            f.response_header_modifier.is_some(),
        ),
        (REQUEST_MIRROR, "requestMirror", f.request_mirror.is_some()),
        (URL_REWRITE, "urlRewrite", f.url_rewrite.is_some()),
        (
            REQUEST_REDIRECT,
            "requestRedirect",
            f.request_redirect.is_some(),
        ),
    ];
    let Some(&(kind, field, given)) = fields.iter().find(|(k, _, _)| *k == f.kind) else {
        c.fail(
            format!("{at}.type"),
            format!("`{}`: not supported yet (supported: {REQUEST_HEADER_MODIFIER}, {RESPONSE_HEADER_MODIFIER}, {REQUEST_MIRROR}, {URL_REWRITE}, {REQUEST_REDIRECT})", f.kind),
        );
        return;
    };
    let others = fields
        .iter()
        .filter(|(k, _, on)| *on && *k != kind)
        .map(|(_, n, _)| *n);
    for other in f.other.keys().map(String::as_str).chain(others) {
        c.fail(
            format!("{at}.{other}"),
            format!("only `{field}` goes with type `{kind}`"),
        );
    }
    if !given {
        c.fail(
            format!("{at}.{field}"),
            format!("required with type `{kind}`"),
        );
        return;
    }
    let at = format!("{at}.{field}");
    match kind {
        REQUEST_HEADER_MODIFIER => f
            .request_header_modifier
            .iter()
            .for_each(|m| modifier(&at, m, c)),
        RESPONSE_HEADER_MODIFIER => f
            .response_header_modifier
            .iter()
            .for_each(|m| modifier(&at, m, c)),
        REQUEST_MIRROR => f.request_mirror.iter().for_each(|m| mirror(&at, m, c)),
        URL_REWRITE => f.url_rewrite.iter().for_each(|u| url_rewrite(&at, u, c)),
        _ => f.request_redirect.iter().for_each(|d| redirect(&at, d, c)),
    }
}

fn redirect(at: &str, d: &RequestRedirect, c: &mut Check) {
    if let Some(s) = &d.scheme
        && s != "http"
        && s != "https"
    {
        c.fail(format!("{at}.scheme"), format!("`{s}`: http or https"));
    }
    hostname(&format!("{at}.hostname"), &d.hostname, c);
    if d.port == Some(0) {
        c.fail(format!("{at}.port"), "must be between 1 and 65535");
    }
    if let Some(code) = d.status_code
        && ![301, 302, 303, 307, 308].contains(&code)
    {
        c.fail(
            format!("{at}.statusCode"),
            format!("{code}: one of 301, 302, 303, 307, 308"),
        );
    }
    if let Some(p) = &d.path {
        path_modifier(&format!("{at}.path"), p, c);
    }
}

fn hostname(at: &str, h: &Option<String>, c: &mut Check) {
    if let Some(h) = h
        && (!is_name(h) || h.starts_with('.') || h.ends_with('.'))
    {
        c.fail(at, format!("`{h}` is not a precise host name"));
    }
}

fn url_rewrite(at: &str, u: &UrlRewrite, c: &mut Check) {
    hostname(&format!("{at}.hostname"), &u.hostname, c);
    let Some(p) = &u.path else {
        if u.hostname.is_none() {
            c.fail(at, "set `hostname`, `path` or both");
        }
        return;
    };
    path_modifier(&format!("{at}.path"), p, c);
}

fn path_modifier(at: &str, p: &PathModifier, c: &mut Check) {
    let (value, field) = match p.kind.as_str() {
        "ReplaceFullPath" => (&p.replace_full_path, "replaceFullPath"),
        "ReplacePrefixMatch" => (&p.replace_prefix_match, "replacePrefixMatch"),
        other => {
            c.fail(
                format!("{at}.type"),
                format!("`{other}`: one of ReplaceFullPath, ReplacePrefixMatch"),
            );
            return;
        }
    };
    let other = match field {
        "replaceFullPath" => p.replace_prefix_match.is_some(),
        _ => p.replace_full_path.is_some(),
    };
    if other {
        c.fail(
            at.to_string(),
            format!("only `{field}` goes with type `{}`", p.kind),
        );
    }
    match value {
        None => c.fail(
            format!("{at}.{field}"),
            format!("required with type `{}`", p.kind),
        ),
        Some(v) if v.len() > MAX_PATH => {
            c.fail(
                format!("{at}.{field}"),
                format!("at most {MAX_PATH} characters"),
            );
        }
        // An empty prefix replacement is allowed (`/foo/bar` -> `/bar`).
        Some(v) if v.is_empty() && field == "replacePrefixMatch" => {}
        Some(v) => {
            if let Some(why) = path_problem(v) {
                c.fail(format!("{at}.{field}"), format!("`{v}` {why}"));
            }
        }
    }
}

fn mirror(at: &str, m: &RequestMirror, c: &mut Check) {
    let b = &m.backend_ref;
    if b.group.as_deref().is_some_and(|g| !g.is_empty())
        || b.kind.as_deref().is_some_and(|k| k != "Service")
    {
        c.fail(
            format!("{at}.backendRef"),
            "a mirror is a Service (`group: \"\"`, `kind: Service`)",
        );
    }
    if !is_name(&b.name) {
        c.fail(
            format!("{at}.backendRef.name"),
            format!("`{}` is not a name", b.name),
        );
    }
    if b.port.is_none_or(|p| p == 0) {
        c.fail(
            format!("{at}.backendRef.port"),
            "a Service mirror needs its port",
        );
    }
    if m.percent.is_some() && m.fraction.is_some() {
        c.fail(at, "set `percent` or `fraction`, not both");
    }
    if m.percent.is_some_and(|p| p > 100) {
        c.fail(format!("{at}.percent"), "0 to 100");
    }
    if let Some(f) = &m.fraction
        && (f.denominator == 0 || f.numerator > f.denominator)
    {
        c.fail(
            format!("{at}.fraction"),
            "the denominator at least 1, the numerator at most the denominator",
        );
    }
}

fn modifier(at: &str, m: &HeaderModifier, c: &mut Check) {
    let mut names: Vec<String> = Vec::new();
    let mut name = |field: String, n: &str, c: &mut Check| {
        let lower = n.to_ascii_lowercase();
        if !is_token(n) || n.len() > MAX_HEADER_NAME {
            c.fail(field, format!("`{n}` is not a header name"));
        } else if weft_core::policy::check::unchangeable_header(&lower) {
            c.fail(field, format!("`{n}` may not be changed by a route"));
        } else if names.contains(&lower) {
            c.fail(field, format!("`{n}`: one action per header name"));
        } else {
            names.push(lower);
        }
    };
    for (list, items) in [("set", &m.set), ("add", &m.add)] {
        c.at_most(&format!("{at}.{list}"), items.len(), MAX_NAME_MATCHES);
        for (i, h) in items.iter().enumerate() {
            name(format!("{at}.{list}[{i}].name"), &h.name, c);
            let printable = h
                .value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80);
            if h.value.is_empty() || h.value.len() > MAX_HEADER_VALUE || !printable {
                c.fail(
                    format!("{at}.{list}[{i}].value"),
                    format!("1 to {MAX_HEADER_VALUE} characters, no control character"),
                );
            }
        }
    }
    c.at_most(&format!("{at}.remove"), m.remove.len(), MAX_NAME_MATCHES);
    for (i, n) in m.remove.iter().enumerate() {
        name(format!("{at}.remove[{i}]"), n, c);
    }
}
