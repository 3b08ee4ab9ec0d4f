//! Gateway API routes for the mesh (GAMMA), through the whole loop: `HTTPRoute` documents in
//! the file registry -> `weft-control-plane` -> ADS -> a client sidecar -> real servers. The
//! semantics of the mesh conformance tests (MeshTrafficSplit, MeshHTTPRouteMatching,
//! MeshHTTPRouteQueryParamMatching, MeshHTTPRouteWeight), re-expressed with weft's peers: the
//! Services `web` (both versions), `web-v1` and `web-v2`, all on port 8080, in namespace `demo`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::Request;
use weft_tests::{
    chain::TempDir,
    eventually,
    http_peer::{self, Peer},
    mesh,
    proxy::Proxy,
};

const WEB: &str = "web.demo.svc.cluster.local:8080";

struct Mesh {
    dir: TempDir,
    cp: Proxy,
    client: Proxy,
    peers: [Peer; 2],
}

impl Mesh {
    async fn start() -> Mesh {
        let peers = [
            http_peer::server("web-v1").await,
            http_peer::server("web-v2").await,
        ];
        let dir = TempDir::new("gateway");
        let versions = (peers[0].addr, peers[1].addr);
        mesh::write_versions(&dir, "web", 8080, "http", versions);
        let cp = mesh::control_plane(&dir, &[]);
        let client = Proxy::start(&[
            "--control-plane",
            &cp.addr("xds").to_string(),
            "--node-id",
            "client-0",
        ]);
        let m = Mesh {
            dir,
            cp,
            client,
            peers,
        };
        // Ready: the service is routed (to both versions, with no route attached).
        eventually(Duration::from_secs(10), "web to be routed", || async {
            (m.get("/id", &[]).await.0 == 200).then_some(())
        })
        .await;
        m
    }

    fn outbound(&self) -> SocketAddr {
        self.client.addr("outbound")
    }

    /// GET `path` on web with `headers`: the status, the peer that answered (none when the
    /// proxy answered itself) and the proxy's error header.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        self.send("GET", path, headers).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        let (status, h) = self.head(method, path, headers).await;
        (
            status,
            text(&h, "x-served-by"),
            text(&h, "weft-proxy-error"),
        )
    }

    /// `method path` on web with `headers`, over a connection of its own: the answer's status
    /// and headers.
    async fn head(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, http::HeaderMap) {
        ask(
            self.outbound(),
            method,
            &format!("http://{WEB}{path}"),
            headers,
        )
        .await
    }

    /// Whether the client sidecar's web service has a route named `route`.
    async fn has_route(&self, route: &str) -> bool {
        self.route_dump(route).await.is_some()
    }

    /// The client sidecar's `/config_dump` of web's route `route`, once it has one.
    async fn route_dump(&self, route: &str) -> Option<serde_json::Value> {
        let dump = self.client.config_dump().await;
        dump["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"] == WEB)
            .flat_map(|s| s["routes"].as_array().into_iter().flatten())
            .find(|r| r["name"] == route)
            .cloned()
    }

    /// Writes the HTTPRoute `name` (`route(name, rules)`) as `<name>.yaml` and waits until the
    /// sidecar has its rule `last` (`rule-<i>` or the rule's name).
    async fn apply_route(&self, name: &str, rules: &str, last: &str) {
        let want = format!("demo/{name}/{last}");
        let what = format!("the route {want}");
        let file = format!("{name}.yaml");
        self.apply(&file, &route(name, rules), &what, || self.has_route(&want))
            .await;
    }

    /// Writes `yaml` as `name` and waits until `check` holds.
    async fn apply<F, Fut>(&self, name: &str, yaml: &str, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.dir.write(name, yaml);
        eventually(Duration::from_secs(10), what, || async {
            check().await.then_some(())
        })
        .await;
    }
}

/// `method uri` with `headers` through the sidecar whose outbound listener is `outbound`, over
/// a connection of its own: the answer's status and headers.
async fn ask(
    outbound: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap) {
    let mut tx = http_peer::h2_client(outbound).await;
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = tx
        .send_request(req.body(http_peer::body("")).unwrap())
        .await
        .unwrap();
    (rsp.status().as_u16(), rsp.headers().clone())
}

/// Header `n` of `h` as text; empty when there is none.
fn text(h: &http::HeaderMap, n: &str) -> String {
    h.get(n)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// An HTTPRoute in `demo` attached to web's port 8080, with `rules` (YAML, indented for
/// `rules:`).
fn route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web, port: 8080}}]\n  rules:\n{rules}"
    )
}

fn to(service: &str) -> String {
    format!("      backendRefs: [{{name: {service}, port: 8080}}]\n")
}

/// A request (method, path, headers) and the peer that must answer it.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_paths_by_segment_headers_queries_and_methods_in_precedence_order() {
    let m = &Mesh::start().await;
    // MeshHTTPRouteMatching, with an exact path (MeshTrafficSplit) and, in a second route,
    // query parameters and a method: precedence runs across both routes.
    let matching = route(
        "matching",
        &format!(
            "    - matches: [{{path: {{type: PathPrefix, value: /}}}}, {{headers: [{{name: version, value: one}}]}}]\n{}    - matches: [{{path: {{type: PathPrefix, value: /v2}}}}, {{headers: [{{name: version, value: two}}]}}]\n{}    - matches: [{{path: {{type: Exact, value: /v1}}}}]\n{}",
            to("web-v1"),
            to("web-v2"),
            to("web-v1"),
        ),
    );
    let more = route(
        "more",
        &format!(
            "    - matches: [{{path: {{type: Exact, value: /q}}, queryParams: [{{name: animal, value: dolphin}}]}}]\n{}    - matches: [{{path: {{type: Exact, value: /q}}}}]\n{}    - matches: [{{path: {{type: Exact, value: /m}}, method: POST}}]\n{}    - matches: [{{path: {{type: RegularExpression, value: \"/re/[0-9]+\"}}}}]\n{}",
            to("web-v2"),
            to("web-v1"),
            to("web-v2"),
            to("web-v2"),
        ),
    );
    m.dir.write("more.yaml", &more);
    m.apply(
        "matching.yaml",
        &matching,
        "the routes to be in force",
        || async {
            m.has_route("demo/matching/rule-2").await && m.has_route("demo/more/rule-3").await
        },
    )
    .await;
    let cases: &[Case] = &[
        ("GET", "/", &[], "web-v1"),
        ("GET", "/example", &[], "web-v1"),
        ("GET", "/", &[("version", "one")], "web-v1"),
        // Whole segments: `/v2` does not take `/v2example`.
        ("GET", "/v2example", &[], "web-v1"),
        ("GET", "/foo/v2/example", &[], "web-v1"),
        ("GET", "/v2", &[], "web-v2"),
        ("GET", "/v2/", &[], "web-v2"),
        ("GET", "/v2/example", &[], "web-v2"),
        ("GET", "/", &[("version", "two")], "web-v2"),
        // The exact path beats the prefix `/`.
        ("GET", "/v1", &[("version", "two")], "web-v1"),
        // More query matches first; a parameter among others still matches.
        ("GET", "/q?animal=dolphin", &[], "web-v2"),
        ("GET", "/q?color=yellow&animal=dolphin", &[], "web-v2"),
        ("GET", "/q?animal=whale", &[], "web-v1"),
        ("GET", "/q", &[], "web-v1"),
        // A match with a method comes before one without.
        ("POST", "/m", &[], "web-v2"),
        ("GET", "/m", &[], "web-v1"),
        ("GET", "/re/42", &[], "web-v2"),
        ("GET", "/re/x", &[], "web-v1"),
    ];
    for (method, path, headers, want) in cases {
        let (status, by, err) = m.send(method, path, headers).await;
        assert_eq!(
            (by.as_str(), err.as_str()),
            (*want, ""),
            "{method} {path} {headers:?}: status {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_replaces_the_default_so_unmatched_requests_get_404_and_missing_backends_500() {
    let m = &Mesh::start().await;
    assert_eq!(
        m.get("/elsewhere", &[]).await.2,
        "",
        "no route yet: web takes all"
    );
    let only = route(
        "only",
        &format!(
            "    - matches: [{{path: {{type: Exact, value: /only}}}}]\n{}    - matches: [{{path: {{type: PathPrefix, value: /half}}}}]\n      backendRefs: [{{name: web-v1, port: 8080}}, {{name: web-v3, port: 8080}}]\n",
            to("web-v1")
        ),
    );
    m.apply("only.yaml", &only, "the route to be in force", || async {
        !m.get("/elsewhere", &[]).await.2.is_empty()
    })
    .await;
    let (status, by, err) = m.get("/elsewhere", &[]).await;
    assert_eq!((status, by.as_str()), (404, ""), "answered by the proxy");
    assert!(err.contains("no route"), "{err}");
    assert_eq!(m.get("/only", &[]).await.1, "web-v1");
    // web-v3 is not registered: half of /half gets 500, the other half web-v1.
    let (mut served, mut failed) = (0, 0);
    for _ in 0..400 {
        match m.get("/half/x", &[]).await {
            (_, by, _) if by == "web-v1" => served += 1,
            (500, _, err) => {
                assert!(err.contains("web-v3"), "{err}");
                failed += 1;
            }
            other => panic!("/half: {other:?}"),
        }
    }
    assert!(
        (140..=260).contains(&failed),
        "{failed} of 400 answered 500 (expected about half), {served} served"
    );
    // Once web-v3 is registered, its share goes to it.
    let peer = http_peer::server("web-v3").await;
    m.apply(
        "web-v3.yaml",
        &mesh::service("web-v3", 8080, "http", &[(peer.addr, "v3")]),
        "web-v3 to be resolved",
        || async {
            let mut seen = false;
            for _ in 0..20 {
                seen |= m.get("/half/x", &[]).await.1 == "web-v3";
            }
            seen
        },
    )
    .await;
    for _ in 0..50 {
        assert_ne!(m.get("/half/x", &[]).await.0, 500);
    }
    // Without the route, web takes every path again.
    std::fs::remove_file(m.dir.0.join("only.yaml")).unwrap();
    eventually(Duration::from_secs(10), "the route to be gone", || async {
        (m.get("/elsewhere", &[]).await.2.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_within_two_points_over_ten_thousand_requests() {
    let m = &Mesh::start().await;
    let split = "    - backendRefs:\n        - {name: web-v1, port: 8080, weight: 70}\n        - {name: web-v2, port: 8080, weight: 30}\n";
    m.apply_route("split", split, "rule-0").await;
    let (n, clients) = (10_000, 8);
    let v2 = Arc::new(AtomicUsize::new(0));
    let outbound = m.outbound();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let v2 = v2.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = http_peer::h2_client(outbound).await;
            for _ in 0..n / clients {
                let req = Request::get(format!("http://{WEB}/id"))
                    .body(http_peer::body(""))
                    .unwrap();
                let rsp = tx.send_request(req).await.unwrap();
                assert_eq!(rsp.status(), 200);
                if rsp
                    .headers()
                    .get("x-served-by")
                    .is_some_and(|v| v == "web-v2")
                {
                    v2.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let share = v2.load(Ordering::Relaxed) as f64 * 100.0 / n as f64;
    assert!(
        (28.0..=32.0).contains(&share),
        "web-v2 took {share:.2} % of {n} requests, expected 30 ± 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftctl_validates_applies_lists_with_conditions_and_deletes_http_routes() {
    let m = &Mesh::start().await;
    // Files to apply, outside the registry's directory.
    let input = TempDir::new("gateway-apply");
    let bad = route(
        "bad",
        "    - backendRefs: [{name: web-v1}]\n      filters: [{type: ExtensionRef, extensionRef: {group: x.dev, kind: Auth, name: a}}]\n",
    );
    let f = input.write("bad.yaml", &bad);
    let (code, _, err) = mesh::weftctl(&m.cp, &["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    for want in [
        "HTTPRoute demo/bad",
        "spec.rules[0].backendRefs[0].port: a Service backend needs its port",
        "spec.rules[0].filters[0].type: `ExtensionRef`: not supported yet",
    ] {
        assert!(err.contains(want), "{err}\nwants {want}");
    }
    let good = route(
        "canary",
        "    - backendRefs: [{name: web-v1, port: 8080, weight: 9}, {name: web-v7, port: 8080}]\n",
    );
    let f = input.write("canary.yaml", &good);
    let (code, out, err) = mesh::weftctl(&m.cp, &["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), "httproute demo/canary applied"),
        "{err}"
    );
    eventually(
        Duration::from_secs(10),
        "the route to be listed",
        || async {
            let (_, out, _) = mesh::weftctl(&m.cp, &["get", "httproutes"]);
            out.contains("demo/canary").then_some(out)
        },
    )
    .await;
    let (_, out, _) = mesh::weftctl(&m.cp, &["get", "httproutes"]);
    let row = out.lines().find(|l| l.starts_with("demo/canary")).unwrap();
    assert!(row.contains("web:8080"), "{out}");
    assert!(row.contains(" True "), "{out}");
    assert!(
        row.ends_with(
            "False (BackendNotFound: not registered: demo/web-v7:8080 (a backend's share of the requests is answered 500; a mirror copies nothing))"
        ),
        "{out}"
    );
    let (code, out, err) = mesh::weftctl(&m.cp, &["delete", "httproute", "demo/canary"]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), "httproute demo/canary deleted"),
        "{err}"
    );
    eventually(Duration::from_secs(10), "the route to be gone", || async {
        let (_, out, _) = mesh::weftctl(&m.cp, &["get", "httproutes"]);
        (!out.contains("demo/canary")).then_some(())
    })
    .await;
    let (code, _, err) = mesh::weftctl(&m.cp, &["delete", "httproute", "demo/canary"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no httproute demo/canary"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_set_add_and_remove_request_and_response_headers() {
    let m = &Mesh::start().await;
    // MeshHTTPRouteRequestHeaderModifier's cases (selected by a header: the peer echoes on
    // `/echo` only), and a response modifier (as MeshPorts uses one).
    let case = |name: &str, filters: &str| {
        format!(
            "    - matches: [{{path: {{type: Exact, value: /echo}}, headers: [{{name: x-test-case, value: {name}}}]}}]\n      filters: [{filters}]\n{}",
            to("web-v1")
        )
    };
    let rules = [
        case(
            "set",
            "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}",
        ),
        case(
            "add",
            "{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}}",
        ),
        case(
            "remove",
            "{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Header-Remove]}}",
        ),
        case(
            "response",
            "{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}], add: [{name: x-added, value: a}], remove: [x-seen-method]}}",
        ),
    ]
    .concat();
    let echo = |case: &'static str, mut headers: Vec<(&'static str, &'static str)>| {
        headers.push(("x-test-case", case));
        async move {
            let (status, h) = m.head("GET", "/echo", &headers).await;
            assert_eq!(status, 200, "{case}");
            h
        }
    };
    m.apply(
        "headers.yaml",
        &route("headers", &rules),
        "the modifiers",
        || async {
            echo("set", vec![])
                .await
                .get("x-seen-x-header-set")
                .is_some()
        },
    )
    .await;
    let h = echo("set", vec![("x-header-set", "some-other-value")]).await;
    assert_eq!(h["x-seen-x-header-set"], "set-overwrites-values");
    let h = echo(
        "add",
        vec![
            ("X-Header-Add", "some-other-value"),
            ("x-header-keep", "kept"),
        ],
    )
    .await;
    assert_eq!(
        h["x-seen-x-header-add"],
        "some-other-value,add-appends-values"
    );
    assert_eq!(h["x-seen-x-header-keep"], "kept");
    let h = echo("add", vec![]).await;
    assert_eq!(h["x-seen-x-header-add"], "add-appends-values");
    let h = echo(
        "remove",
        vec![("x-header-remove", "gone"), ("x-header-other", "stays")],
    )
    .await;
    assert!(h.get("x-seen-x-header-remove").is_none(), "{h:?}");
    assert_eq!(h["x-seen-x-header-other"], "stays");
    // The response's headers, changed before the client sees them; other rules' untouched.
    let h = echo("response", vec![]).await;
    assert_eq!(h["x-header-set"], "v1");
    assert_eq!(h["x-added"], "a");
    assert!(h.get("x-seen-method").is_none(), "{h:?}");
    let h = echo("set", vec![]).await;
    assert!(h.get("x-header-set").is_none() && h.get("x-seen-method").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_mirror_copies_requests_to_another_service() {
    let m = &Mesh::start().await;
    let mirrored = |percent: u32| {
        route(
            "mirror",
            &format!(
                "    - filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: web-v2, port: 8080}}, percent: {percent}}}}}]\n{}",
                to("web-v1")
            ),
        )
    };
    let copies = || m.peers[1].state.requests.load(Ordering::SeqCst);
    // In force once the sidecar's route copies that share of requests.
    let at = |percent: f64| async move {
        m.route_dump("demo/mirror/rule-0")
            .await
            .is_some_and(|r| r["policy"]["mirror"]["percent"] == percent)
    };
    m.apply("mirror.yaml", &mirrored(100), "the mirror", || at(100.0))
        .await;
    let before = copies();
    for _ in 0..20 {
        assert_eq!(
            m.get("/id", &[]).await.1,
            "web-v1",
            "the answer is the route's"
        );
    }
    eventually(Duration::from_secs(5), "20 copies at web-v2", || async {
        (copies() >= before + 20).then_some(())
    })
    .await;
    // 0 %: none.
    m.apply("mirror.yaml", &mirrored(0), "the mirror at 0 %", || at(0.0))
        .await;
    // Every copy of the 20 above has arrived; at 0 % none is made (the draw comes before any
    // copy is sent), so none can arrive later.
    let before = copies();
    for _ in 0..20 {
        m.get("/id", &[]).await;
    }
    assert_eq!(copies(), before, "no copy at 0 %");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrites_replace_prefixes_full_paths_and_the_host() {
    let m = &Mesh::start().await;
    // MeshHTTPRouteRewritePath's rules, and a host name rewrite.
    let rule = |path: &str, rewrite: &str| {
        format!(
            "    - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n      filters: [{{type: URLRewrite, urlRewrite: {rewrite}}}]\n{}",
            to("web-v1")
        )
    };
    let rules = [
        rule(
            "/prefix/one",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}",
        ),
        rule(
            "/strip-prefix",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}",
        ),
        rule(
            "/full/one",
            "{path: {type: ReplaceFullPath, replaceFullPath: /one}}",
        ),
        rule(
            "/host",
            "{hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /echo}}",
        ),
    ]
    .concat();
    let seen = |path: &'static str| async move {
        let (_, h) = m.head("GET", path, &[]).await;
        (
            text(&h, "x-seen-path"),
            text(&h, "x-seen-query"),
            text(&h, "x-seen-host"),
        )
    };
    m.apply(
        "rewrite.yaml",
        &route("rewrite", &rules),
        "the rewrites",
        || async { seen("/prefix/one/two").await.0 == "/one/two" },
    )
    .await;
    for (sent, want, query) in [
        ("/prefix/one/two?x=1", "/one/two", "x=1"),
        ("/prefix/one", "/one", ""),
        ("/strip-prefix/three", "/three", ""),
        ("/strip-prefix", "/", ""),
        ("/full/one/two", "/one", ""),
        ("/full/one", "/one", ""),
    ] {
        let (path, q, _) = seen(sent).await;
        assert_eq!((path.as_str(), q.as_str()), (want, query), "{sent}");
    }
    let (_, _, host) = seen("/host").await;
    assert_eq!(host, "example.org");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_answer_with_the_status_and_location_the_rule_says() {
    let m = &Mesh::start().await;
    // The mesh redirect conformance tests' rules (host, status, path, port, scheme).
    let rule = |path: &str, redirect: &str| {
        format!(
            "    - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n      filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n"
        )
    };
    let rules = [
        rule("/hostname-redirect", "{hostname: example.org}"),
        rule("/host-and-status", "{hostname: example.org, statusCode: 301}"),
        rule(
            "/original-prefix",
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}",
        ),
        rule(
            "/full",
            "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}, statusCode: 303}",
        ),
        rule("/port", "{port: 8083, statusCode: 307}"),
        rule("/scheme", "{scheme: https, statusCode: 308}"),
    ]
    .concat();
    let get = |path: &'static str| async move {
        let (status, h) = m.head("GET", path, &[]).await;
        (status, text(&h, "location"))
    };
    m.apply(
        "redirect.yaml",
        &route("redirect", &rules),
        "the redirects",
        || async { get("/hostname-redirect").await.0 == 302 },
    )
    .await;
    for (path, status, location) in [
        (
            "/hostname-redirect/x?q=1",
            302,
            "http://example.org:8080/hostname-redirect/x?q=1",
        ),
        (
            "/host-and-status",
            301,
            "http://example.org:8080/host-and-status",
        ),
        (
            "/original-prefix/lemon",
            302,
            "http://web.demo.svc.cluster.local:8080/replacement-prefix/lemon",
        ),
        (
            "/full/x",
            303,
            "http://web.demo.svc.cluster.local:8080/full-path-replacement",
        ),
        ("/port", 307, "http://web.demo.svc.cluster.local:8083/port"),
        ("/scheme", 308, "https://web.demo.svc.cluster.local/scheme"),
    ] {
        assert_eq!(get(path).await, (status, location.to_string()), "{path}");
    }
    assert_eq!(get("/elsewhere").await.0, 404, "no rule matches");
}

/// A GRPCRoute on `echo` (both versions; gRPC servers behind no sidecar), with Services
/// `echo-v1` and `echo-v2`, through a client sidecar: MeshGRPCRouteWeight (with a weight-0
/// backend that names no Service), method matching, header matching and a mirror, with a
/// tonic client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_match_methods_and_headers_mirror_and_split_by_weight() {
    use weft_tests::grpc::{self, Msg, StreamReq};
    let (a1, s1) = grpc::server().await;
    let (a2, s2) = grpc::server().await;
    let dir = TempDir::new("gateway-grpc");
    mesh::write_versions(&dir, "echo", 9090, "http2", (a1, a2));
    let cp = mesh::control_plane(&dir, &[]);
    let client = Proxy::start(&[
        "--control-plane",
        &cp.addr("xds").to_string(),
        "--node-id",
        "client-0",
    ]);
    dir.write(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: echo, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 9090}]\n  rules:\n    - matches: [{method: {service: weft.test.Echo, method: ServerStream}}]\n      backendRefs: [{name: echo-v2, port: 9090}]\n    - matches: [{headers: [{name: x-canary, value: \"1\"}]}]\n      backendRefs: [{name: echo-v2, port: 9090}]\n    - matches: [{headers: [{name: x-mirror, value: \"1\"}]}]\n      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 9090}}}]\n      backendRefs: [{name: echo-v1, port: 9090}]\n    - backendRefs:\n        - {name: echo-v1, port: 9090, weight: 70}\n        - {name: echo-v2, port: 9090, weight: 30}\n        - {name: echo-v3, port: 9090, weight: 0}\n",
    );
    const ECHO: &str = "echo.demo.svc.cluster.local:9090";
    eventually(Duration::from_secs(10), "the GRPCRoute", || async {
        let dump = client.config_dump().await;
        let routes = dump["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == ECHO)?["routes"]
            .as_array()?
            .len();
        // Four rules, and the proxy's own default listed after them.
        (routes == 5).then_some(())
    })
    .await;
    let out = client.addr("outbound");
    let started = |s: &grpc::ServerState| s.started.load(Ordering::SeqCst);
    let msg = || Msg {
        text: "hi".into(),
        ..Default::default()
    };
    // A method match: every server stream goes to v2.
    let mut c = grpc::client(out, ECHO).await;
    let before = (started(&s1), started(&s2));
    for _ in 0..10 {
        let stream = StreamReq {
            count: 1,
            size: 1,
            interval_ms: 0,
            fail_after: 0,
        };
        let mut s = c.server_stream(stream).await.unwrap().into_inner();
        while s.message().await.unwrap().is_some() {}
    }
    assert_eq!((started(&s1), started(&s2)), (before.0, before.1 + 10));
    // A header match.
    let before = (started(&s1), started(&s2));
    for _ in 0..10 {
        let mut req = tonic::Request::new(msg());
        req.metadata_mut().insert("x-canary", "1".parse().unwrap());
        c.unary(req).await.unwrap();
    }
    assert_eq!((started(&s1), started(&s2)), (before.0, before.1 + 10));
    // A mirror: every call answered by v1, and a copy of each sent to v2.
    let before = (started(&s1), started(&s2));
    for _ in 0..10 {
        let mut req = tonic::Request::new(msg());
        req.metadata_mut().insert("x-mirror", "1".parse().unwrap());
        c.unary(req).await.unwrap();
    }
    assert_eq!(started(&s1), before.0 + 10);
    eventually(Duration::from_secs(5), "10 copies at echo-v2", || async {
        (started(&s2) == before.1 + 10).then_some(())
    })
    .await;
    // The split, over 10,000 unary calls on 8 channels; the weight-0 backend (no such Service)
    // gets nothing and breaks nothing.
    let (n, clients) = (10_000, 8);
    let before = (started(&s1), started(&s2));
    grpc::unary_calls(out, ECHO, clients, n / clients).await;
    let (d1, d2) = (started(&s1) - before.0, started(&s2) - before.1);
    assert_eq!(d1 + d2, n, "every call answered by v1 or v2");
    let share = d2 as f64 * 100.0 / n as f64;
    assert!(
        (28.0..=32.0).contains(&share),
        "echo-v2 took {share:.2} % of {n} calls, expected 30 ± 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_backend_request_timeouts_end_slow_calls_with_504() {
    let m = &Mesh::start().await;
    // GEP-1742: `request` bounds the whole call, `backendRequest` each try to a backend.
    let rules = format!(
        "    - matches: [{{path: {{type: PathPrefix, value: /delay}}, headers: [{{name: x-t, value: request}}]}}]\n      timeouts: {{request: 200ms}}\n{}    - matches: [{{path: {{type: PathPrefix, value: /delay}}}}]\n      timeouts: {{request: 5s, backendRequest: 200ms}}\n{}",
        to("web-v1"),
        to("web-v1")
    );
    m.apply_route("timeouts", &rules, "rule-1").await;
    for header in ["request", "backend"] {
        let h = [("x-t", header)];
        let (status, by, _) = m.get("/delay?ms=10", &h).await;
        assert_eq!(
            (status, by.as_str()),
            (200, ""),
            "{header}: a fast call passes"
        );
        // Ended by the proxy's timeout (its error says which), not by the backend's answer.
        let (status, _, err) = m.get("/delay?ms=2000", &h).await;
        assert_eq!(status, 504, "{header}: {err}");
        let want = match header {
            "request" => "request timed out",
            _ => "per-try timeout",
        };
        assert!(err.contains(want), "{header}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_own_filters_apply_when_the_split_chooses_it() {
    let m = &Mesh::start().await;
    // MeshHTTPRouteBackendRequestHeaderModifier: the filters sit on the backendRefs.
    let backend = |name: &str, value: &str| {
        format!(
            "        - name: {name}\n          port: 8080\n          filters:\n            - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-Header-Set, value: {value}}}]}}}}\n            - {{type: ResponseHeaderModifier, responseHeaderModifier: {{add: [{{name: x-backend, value: {value}}}]}}}}\n"
        )
    };
    let rules = format!(
        "    - backendRefs:\n{}{}",
        backend("web-v1", "one"),
        backend("web-v2", "two")
    );
    m.apply_route("backends", &rules, "rule-0").await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let (_, h) = m
            .head("GET", "/echo", &[("x-header-set", "from-the-client")])
            .await;
        let h = |n: &str| h[n].to_str().unwrap().to_string();
        let (by, set, added) = (h("x-served-by"), h("x-seen-x-header-set"), h("x-backend"));
        let want = if by == "web-v1" { "one" } else { "two" };
        assert_eq!(
            (set.as_str(), added.as_str()),
            (want, want),
            "served by {by}"
        );
        *seen.entry(by).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both backends chosen: {seen:?}");
}

/// MeshConsumerRoute, MeshPorts and MeshFrontend: a route in another namespace than its
/// Service's applies only to callers in the route's namespace, and replaces the producer's
/// routes for them; a parentRef's port scopes a route to that port; a request addressed to an
/// endpoint itself is not the Service's, and no route applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_routes_apply_to_their_namespace_and_ports_scope_routes() {
    let m = &Mesh::start().await;
    let (v1, v2) = ((m.peers[0].addr, "v1"), (m.peers[1].addr, "v2"));
    m.dir.write(
        "web-9090.yaml",
        &mesh::service("web", 9090, "http", &[v1, v2]),
    );
    // A caller in namespace `shop`.
    let shop = Proxy::start(&[
        "--control-plane",
        &m.cp.addr("xds").to_string(),
        "--node-id",
        "shop-client-0",
        "--pod-namespace",
        "shop",
    ]);
    let producer = route(
        "producer",
        &format!(
            "    - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-route, value: producer}}]}}}}]\n{}",
            to("web-v1")
        ),
    );
    let consumer = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web-for-shop, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, namespace: demo}]\n  rules:\n    - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: consumer}]}}]\n      backendRefs: [{name: web-v2, namespace: demo, port: 8080}]\n";
    m.dir.write("producer.yaml", &producer);
    m.dir.write("consumer.yaml", consumer);
    // (who asks, authority): the route that must apply (none: no x-route) and who answers.
    let web = |port: u16| format!("web.demo.svc.cluster.local:{port}");
    let pod = m.peers[0].addr.to_string();
    let cases = [
        (m.outbound(), web(8080), "producer", Some("web-v1")),
        // The producer route names port 8080: 9090 keeps its default route (both versions).
        (m.outbound(), web(9090), "", None),
        // The consumer route names no port: both of web's ports, for `shop` only.
        (shop.addr("outbound"), web(8080), "consumer", Some("web-v2")),
        (shop.addr("outbound"), web(9090), "consumer", Some("web-v2")),
        // An endpoint's own address is not the Service: no route of web's applies. Through
        // the outbound listener, without capture, no service has that name: 404. (Captured,
        // a request to an address outside the service table goes where it was sent:
        // `capture.rs`.)
        (m.outbound(), pod.clone(), "", None),
        (shop.addr("outbound"), pod, "", None),
    ];
    let seen = |outbound: SocketAddr, authority: String| async move {
        let (status, h) = ask(outbound, "GET", &format!("http://{authority}/id"), &[]).await;
        (status, text(&h, "x-route"), text(&h, "x-served-by"))
    };
    // In force once every case holds; then each holds for 20 requests.
    eventually(Duration::from_secs(10), "the routes in force", || async {
        for (outbound, authority, want, _) in &cases {
            if seen(*outbound, authority.clone()).await.1 != *want {
                return None;
            }
        }
        Some(())
    })
    .await;
    for (outbound, authority, want, by) in &cases {
        for _ in 0..20 {
            let (status, route, served) = seen(*outbound, authority.clone()).await;
            let ok = if authority.starts_with("web") {
                200
            } else {
                404
            };
            assert_eq!(
                (status, route.as_str()),
                (ok, *want),
                "{authority} from {outbound}"
            );
            if let Some(by) = by {
                assert_eq!(served, *by, "{authority} from {outbound}");
            }
        }
    }
    // Both listed with their conditions, the consumer route's parent with its namespace.
    let (_, out, _) = mesh::weftctl(&m.cp, &["get", "routes"]);
    let row = |start: &str| {
        let r = out.lines().find(|l| l.starts_with(start));
        r.unwrap_or_else(|| panic!("{start}: {out}")).to_string()
    };
    assert!(out.starts_with("ROUTE "), "{out}");
    let consumer = row("HTTPRoute shop/web-for-shop ");
    assert!(
        consumer.contains(" demo/web ") && consumer.contains(" True "),
        "{out}"
    );
    assert!(
        row("HTTPRoute demo/producer ").contains(" web:8080 "),
        "{out}"
    );
    // The consumer route removed: `shop` follows the producer's route again.
    std::fs::remove_file(m.dir.0.join("consumer.yaml")).unwrap();
    eventually(
        Duration::from_secs(10),
        "shop to follow the producer",
        || async { (seen(shop.addr("outbound"), web(8080)).await.1 == "producer").then_some(()) },
    )
    .await;
}

/// Every HTTPRoute and GRPCRoute in `docs/gateway-api.md` is one weft accepts and one the
/// Gateway API's v1 schemas accept (as `@kubernetes-models/gateway-api` compiles them from the
/// API's types). Broken copies of them, which the schemas must refuse, show the check is live.
#[test]
fn documented_routes_are_valid_for_weft_and_the_gateway_api_schemas() {
    let Some((node, modules)) = weft_tests::tools::gateway_api_schemas() else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("docs/gateway-api.md")).unwrap();
    let mut routes = Vec::new();
    for block in text.split("```yaml").skip(1) {
        let block = block.split("```").next().unwrap();
        for part in block.split("\n---") {
            let source = "docs/gateway-api.md";
            let weft = if part.contains("kind: HTTPRoute") {
                weft_control_plane::gateway::parse(source, part).map(drop)
            } else if part.contains("kind: GRPCRoute") {
                weft_control_plane::gateway::parse_grpc(source, part).map(drop)
            } else {
                continue;
            };
            if let Err(e) = weft {
                panic!("a documented route is invalid for weft: {e}");
            }
            let object: serde_json::Value = serde_yaml_ng::from_str(part).unwrap();
            routes.push(serde_json::json!({"source": source, "expect": "valid", "object": object}));
        }
    }
    let kinds = |k: &str| routes.iter().filter(|r| r["object"]["kind"] == k).count();
    assert!(
        kinds("HTTPRoute") >= 3 && kinds("GRPCRoute") >= 1,
        "documented routes: {routes:#?}"
    );
    let broken = |i: usize, pointer: &str, value: serde_json::Value| {
        let mut r = routes[i].clone();
        *r["object"].pointer_mut(pointer).unwrap() = value;
        r["expect"] = "invalid".into();
        r["source"] = format!("broken: {pointer}").into();
        r
    };
    let grpc = routes
        .iter()
        .position(|r| r["object"]["kind"] == "GRPCRoute")
        .unwrap();
    let broken = [
        broken(
            0,
            "/spec/rules/0/matches/0/headers/0",
            serde_json::json!({"type": "Glob", "name": "x-canary", "value": "1"}),
        ),
        broken(0, "/spec/rules/1/backendRefs/0/port", 70_000.into()),
        broken(
            grpc,
            "/spec/rules/0/matches/0/method",
            serde_json::json!({"type": "Prefix", "service": "weft.test.Echo"}),
        ),
    ];
    routes.extend(broken);
    let dir = TempDir::new("gateway-schemas");
    let list = dir.write("routes.json", &serde_json::Value::Array(routes).to_string());
    let out = std::process::Command::new(node)
        .arg(root.join("tests/k8s/validate_gateway_api.mjs"))
        .arg(&modules)
        .arg(&list)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.ends_with(" valid, 3 invalid\n"), "{said}");
    // Each refused for the field broken.
    for field in [
        "spec/rules/0/matches/0/headers/0/type",
        "spec/rules/1/backendRefs/0/port",
        "spec/rules/0/matches/0/method/type",
    ] {
        assert!(
            said.lines()
                .any(|l| l.contains(": refused: ") && l.contains(field)),
            "{field}: {said}"
        );
    }
}

/// GEP-1731: a rule's `retry` retries the statuses it lists (and no other), as many times as
/// `attempts` says, never sooner than `backoff` after a try; the retry budget stays on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_retry_retries_its_codes_up_to_its_attempts_after_its_backoff() {
    let m = &Mesh::start().await;
    let rules = format!(
        "    - matches: [{{path: {{type: PathPrefix, value: /id}}, headers: [{{name: x-r, value: codes}}]}}]\n      retry: {{codes: [500], attempts: 3, backoff: 100ms}}\n{}    - matches: [{{path: {{type: PathPrefix, value: /id}}}}]\n      retry: {{codes: [503], attempts: 2}}\n{}",
        to("web-v1"),
        to("web-v1")
    );
    m.apply_route("retries", &rules, "rule-1").await;
    // The backoff crossed as a minimum (weft's route metadata), beside the standard fields.
    let dump = m.route_dump("demo/retries/rule-0").await.unwrap();
    let retry = dump["policy"]["retry"].as_str().unwrap();
    assert!(
        retry.contains("retries: 3") && retry.contains("floor: 100ms"),
        "{retry}"
    );
    let peer = &m.peers[0].state;
    let tries = || peer.requests.load(Ordering::SeqCst);
    peer.status.store(500, Ordering::SeqCst);
    let (before, started) = (tries(), std::time::Instant::now());
    let (status, _, _) = m.get("/id", &[("x-r", "codes")]).await;
    assert_eq!(status, 500, "every try failed: the last answer");
    assert_eq!(tries() - before, 4, "the try and 3 retries");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "three waits of at least 100 ms each: {took:?}"
    );
    // 500 is not a status the other rule retries.
    let before = tries();
    assert_eq!(m.get("/id", &[]).await.0, 500);
    assert_eq!(tries() - before, 1, "no retry");
    // Every second request answered 503: that rule's retries hide them.
    peer.status.store(0, Ordering::SeqCst);
    peer.fail_every.store(2, Ordering::SeqCst);
    let before = tries();
    for _ in 0..10 {
        assert_eq!(m.get("/id", &[]).await.0, 200);
    }
    assert!(tries() - before > 10, "some were retried");
}
