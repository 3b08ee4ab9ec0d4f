use std::time::Duration;

use super::*;

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-canary, namespace: demo, creationTimestamp: "2026-01-02T03:04:05Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 8080}]
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api}
          headers: [{name: x-canary, value: "1"}]
          queryParams: [{type: RegularExpression, name: v, value: "[0-9]+"}]
          method: GET
      backendRefs:
        - {name: web-v1, port: 8080, weight: 90}
        - {name: web-v2, port: 8080, weight: 10}
      timeouts: {request: 1m30s}
"#;

#[test]
fn a_route_is_read_with_the_apis_defaults() {
    let routes = parse("r.yaml", ROUTE).unwrap();
    let r = &routes[0];
    assert_eq!(r.key(), "demo/web-canary");
    let rule = &r.spec.rules[0];
    assert_eq!(rule.backend_refs[1].weight, 10);
    let m = &rule.matches[0];
    assert_eq!(m.headers[0].kind, ValueMatchType::Exact, "the default type");
    assert_eq!(m.query_params[0].kind, ValueMatchType::RegularExpression);
    // A rule without matches, a path without type or value: PathPrefix `/`.
    let bare = ROUTE.replace(
        "    - matches:\n        - path: {type: PathPrefix, value: /api}\n          headers: [{name: x-canary, value: \"1\"}]\n          queryParams: [{type: RegularExpression, name: v, value: \"[0-9]+\"}]\n          method: GET\n      backendRefs:",
        "    - matches: [{path: {}}]\n      backendRefs:",
    );
    let r = &parse("r.yaml", &bare).unwrap()[0];
    let p = r.spec.rules[0].matches[0].path.as_ref().unwrap();
    assert_eq!((p.kind, p.value.as_str()), (PathMatchType::PathPrefix, "/"));
    assert_eq!(
        r.spec.parent_refs[0].service("demo").key,
        "demo/web",
        "a parent's namespace is the route's"
    );
}

#[test]
fn durations_are_the_apis() {
    let d = |s| duration(s);
    assert_eq!(d("10s"), Some(Duration::from_secs(10)));
    assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(d("1h2m3s500ms"), Some(Duration::from_millis(3_723_500)));
    assert_eq!(d("0s"), Some(Duration::ZERO));
    for bad in [
        "",
        "10",
        "s",
        "1.5s",
        "123456s",
        "1h1h1h1h1h",
        "10 s",
        "-1s",
        "1d",
    ] {
        assert_eq!(d(bad), None, "{bad}");
    }
}

/// The error text of `yaml`, which must be refused.
fn refused(yaml: &str) -> String {
    parse("r.yaml", yaml).unwrap_err().to_string()
}

#[test]
fn every_invalid_field_is_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "group: \"\", kind: Service, name: web",
            "kind: Gateway, name: web",
            "spec.parentRefs: a mesh route names the Service it is for",
        ),
        (
            "name: web, port: 8080}]",
            "name: web, port: 8080, namespace: Shop}]",
            "spec.parentRefs[0].namespace: `Shop` is not a name",
        ),
        (
            "name: web, port: 8080}]",
            "name: web, port: 8080, sectionName: http}]",
            "spec.parentRefs[0].sectionName: not supported",
        ),
        (
            "value: /api}",
            "value: api}",
            "spec.rules[0].matches[0].path.value: `api` must start with `/`",
        ),
        (
            "value: /api}",
            "value: /a//b}",
            "spec.rules[0].matches[0].path.value: `/a//b` must not contain",
        ),
        (
            "type: PathPrefix, value: /api}",
            "type: RegularExpression, value: \"(\"}",
            "spec.rules[0].matches[0].path.value: invalid regex",
        ),
        (
            "{name: x-canary, value: \"1\"}",
            "{name: \"x canary\", value: \"1\"}",
            "spec.rules[0].matches[0].headers[0].name: `x canary` is not a header or parameter name",
        ),
        (
            "method: GET",
            "method: FETCH",
            "spec.rules[0].matches[0].method: `FETCH`: one of GET",
        ),
        (
            "{name: web-v2, port: 8080, weight: 10}",
            "{name: web-v2, weight: 10}",
            "spec.rules[0].backendRefs[1].port: a Service backend needs its port",
        ),
        (
            "weight: 10}",
            "weight: 1000001}",
            "spec.rules[0].backendRefs[1].weight: 1000001: at most 1000000",
        ),
        (
            "{request: 1m30s}",
            "{request: 90}",
            "spec.rules[0].timeouts.request: `90` is not a duration",
        ),
        (
            "{request: 1m30s}",
            "{request: 1s, backendRequest: 2s}",
            "spec.rules[0].timeouts.backendRequest: `2s`: at most `timeouts.request` (1s)",
        ),
        (
            "      timeouts:",
            "      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]\n      timeouts:",
            "spec.rules[0].backendRefs: a rule with `RequestRedirect` answers itself: no backendRefs",
        ),
        (
            "      timeouts:",
            "      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 300, scheme: ftp, port: 0}}]\n      timeouts:",
            "spec.rules[0].filters[0].requestRedirect.scheme: `ftp`: http or https; spec.rules[0].filters[0].requestRedirect.port: must be between 1 and 65535; spec.rules[0].filters[0].requestRedirect.statusCode: 300: one of 301, 302, 303, 307, 308",
        ),
        (
            "      timeouts:",
            "      retry: {codes: [500, 302, 500], attempts: 0, backoff: 0s}\n      timeouts:",
            "spec.rules[0].retry.codes[1]: 302: a status from 400 to 599; spec.rules[0].retry.codes[2]: 500 is listed twice; spec.rules[0].retry.attempts: at least 1",
        ),
        (
            "      timeouts:",
            "      retry: {attempts: 11, backoff: soon}\n      timeouts:",
            "spec.rules[0].retry.backoff: `soon` is not a duration such as `100ms` or `1s`; spec.rules[0].retry.attempts: 11 retries is more than the limit of 10",
        ),
        (
            "      timeouts:",
            "      filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]\n      retry: {attempts: 2}\n      timeouts:",
            "spec.rules[0].retry: a rule that redirects sends nothing to a backend to retry",
        ),
        (
            "      timeouts:",
            "      filters: [{type: CORS, cors: {allowOrigins: [\"*\"]}}]\n      timeouts:",
            "spec.rules[0].filters[0].type: `CORS`: not supported yet",
        ),
        (
            "      timeouts:",
            "      filters: [{type: RequestHeaderModifier}]\n      timeouts:",
            "spec.rules[0].filters[0].requestHeaderModifier: required with type `RequestHeaderModifier`",
        ),
        (
            "      timeouts:",
            "      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: Host, value: x}]}, responseHeaderModifier: {}}]\n      timeouts:",
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].name: `Host` may not be changed by a route",
        ),
        (
            "      timeouts:",
            "      filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-a, value: \"1\"}], remove: [X-A]}}]\n      timeouts:",
            "spec.rules[0].filters[0].responseHeaderModifier.remove[0]: `X-A`: one action per header name",
        ),
        (
            "      timeouts:",
            "      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: \"\"}]}}]\n      timeouts:",
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].value: 1 to 4096 characters",
        ),
        (
            "      timeouts:",
            "      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-v3}, percent: 10, fraction: {numerator: 1}}}]\n      timeouts:",
            "spec.rules[0].filters[0].requestMirror.backendRef.port: a Service mirror needs its port; spec.rules[0].filters[0].requestMirror: set `percent` or `fraction`, not both",
        ),
        (
            "      timeouts:",
            "      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-v3, port: 80}, fraction: {numerator: 3, denominator: 2}}}]\n      timeouts:",
            "spec.rules[0].filters[0].requestMirror.fraction: the denominator at least 1, the numerator at most the denominator",
        ),
        (
            "      timeouts:",
            "      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}}}, {type: RequestMirror, requestMirror: {backendRef: {name: b, port: 80}}}]\n      timeouts:",
            "spec.rules[0].filters: more than one `RequestMirror` is not supported yet",
        ),
        (
            "      timeouts:",
            "      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replacePrefixMatch: /v2}}}]\n      timeouts:",
            "spec.rules[0].filters[0].urlRewrite.path: only `replaceFullPath` goes with type `ReplaceFullPath`; spec.rules[0].filters[0].urlRewrite.path.replaceFullPath: required with type `ReplaceFullPath`",
        ),
        (
            "      timeouts:",
            "      filters: [{type: URLRewrite, urlRewrite: {hostname: \"*.example\"}}]\n      timeouts:",
            "spec.rules[0].filters[0].urlRewrite.hostname: `*.example` is not a precise host name",
        ),
        (
            "{name: web-v2, port: 8080, weight: 10}",
            "{name: web-v2, port: 8080, weight: 10, filters: [{type: URLRewrite, urlRewrite: {hostname: a}}]}",
            "spec.rules[0].backendRefs[1].filters[0].type: `URLRewrite` on a backendRef is not supported yet",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1",
            "apiVersion: gateway.networking.k8s.io/v2",
            "apiVersion: `gateway.networking.k8s.io/v2`: expected",
        ),
    ];
    for (from, to, want) in cases {
        assert!(ROUTE.contains(from), "{from}");
        let e = refused(&ROUTE.replacen(from, to, 1));
        assert!(e.contains(want), "{to}:\n  got  {e}\n  want {want}");
        assert!(e.starts_with("r.yaml: HTTPRoute demo/web-canary: "), "{e}");
    }
    // ReplacePrefixMatch replaces what one PathPrefix matched.
    let two = ROUTE
        .replace(
            "          method: GET\n",
            "          method: GET\n        - path: {type: Exact, value: /x}\n",
        )
        .replace(
            "      timeouts:",
            "      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]\n      timeouts:",
        );
    let e = refused(&two);
    assert!(
        e.contains("spec.rules[0].matches: `ReplacePrefixMatch` needs exactly one match, with a PathPrefix path"),
        "{e}"
    );
    // Fields the standard channel does not have (or weft does not know) are errors too.
    let e = refused(&ROUTE.replace(
        "      timeouts:",
        "      sessionPersistence: {type: Cookie}\n      timeouts:",
    ));
    assert!(e.contains("unknown field `sessionPersistence`"), "{e}");
}

const GRPC: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9090}]
  rules:
    - matches:
        - method: {service: pkg.Echo, method: Unary}
        - method: {service: pkg.Echo}
        - method: {method: Unary}
        - method: {type: RegularExpression, service: "pkg\\..*", method: "Get.*"}
        - headers: [{name: x-canary, value: "1"}]
      backendRefs: [{name: echo-v1, port: 9090}]
"#;

#[test]
fn a_grpc_route_is_the_http_route_of_its_paths() {
    let r = &parse_grpc("g.yaml", GRPC).unwrap()[0];
    let http = r.as_http();
    let paths: Vec<(PathMatchType, String)> = http.spec.rules[0]
        .matches
        .iter()
        .map(|m| {
            m.path
                .as_ref()
                .map_or((PathMatchType::PathPrefix, "/".into()), |p| {
                    (p.kind, p.value.clone())
                })
        })
        .collect();
    assert_eq!(
        paths,
        [
            (PathMatchType::Exact, "/pkg.Echo/Unary".to_string()),
            (PathMatchType::PathPrefix, "/pkg.Echo".into()),
            (PathMatchType::RegularExpression, "/[^/]+/Unary".into()),
            (
                PathMatchType::RegularExpression,
                "/(?:pkg\\..*)/(?:Get.*)".into()
            ),
            (PathMatchType::PathPrefix, "/".into()),
        ]
    );
    assert_eq!(http.spec.rules[0].matches[4].headers[0].name, "x-canary");
    for (from, to, want) in [
        (
            "{service: pkg.Echo, method: Unary}",
            "{service: \"pkg/Echo\", method: Unary}",
            "spec.rules[0].matches[0].method.service: `pkg/Echo` is not a gRPC service name",
        ),
        (
            "{service: pkg.Echo}",
            "{type: Exact}",
            "spec.rules[0].matches[1].method: set `service`, `method` or both",
        ),
        (
            "{method: Unary}",
            "{type: RegularExpression, method: \"(\"}",
            "spec.rules[0].matches[2].method.method: invalid regex",
        ),
        (
            "      backendRefs:",
            "      filters: [{type: URLRewrite, urlRewrite: {hostname: a}}]\n      backendRefs:",
            "spec.rules[0].filters[0].type: `URLRewrite` is not a GRPCRoute filter",
        ),
    ] {
        assert!(GRPC.contains(from), "{from}");
        let e = parse_grpc("g.yaml", &GRPC.replacen(from, to, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{to}:\n  got  {e}\n  want {want}");
        assert!(e.starts_with("g.yaml: GRPCRoute demo/echo: "), "{e}");
    }
}
