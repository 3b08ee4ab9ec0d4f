//! Whatever the control plane accepts, the proxy accepts: generated TrafficPolicies through the
//! file registry, xDS translation and the proxy's checks and compile
//! (`weft_tests::properties`). Most generated fields are valid and a few are not (each field
//! about one time in thirteen), so that both accepted and refused policies come up; the fuzz
//! target `policy_differential` does the same on fuzzed text.

use proptest::prelude::*;
use weft_tests::properties::policy_differential;

/// A valid value most of the time, else one of `odd`.
fn mostly<S: Strategy<Value = String> + 'static>(
    valid: S,
    odd: &'static [&'static str],
) -> BoxedStrategy<String> {
    prop_oneof![
        12 => valid,
        1 => prop::sample::select(odd).prop_map(str::to_string),
    ]
    .boxed()
}

fn duration() -> BoxedStrategy<String> {
    mostly(
        "[1-9][0-9]{0,3}(ms|s|m)",
        &["0s", "1ms", "87600h", "100000000h"],
    )
}

fn percent() -> BoxedStrategy<String> {
    mostly(
        (0u32..101).prop_map(|p| p.to_string()),
        &["0.001", "100.5", "-1"],
    )
}

fn count() -> BoxedStrategy<String> {
    mostly(
        (1u32..20).prop_map(|n| n.to_string()),
        &["0", "4294967295", "4294967296"],
    )
}

fn retry(pad: &'static str) -> BoxedStrategy<String> {
    let on = mostly(
        prop::sample::select(vec![
            "\"on\": [connect-failure, 5xx]",
            "\"on\": [retriable-status-codes], statusCodes: [409, 429]",
            "\"on\": [unavailable, cancelled, reset]",
            "\"on\": [gateway-error, refused-stream]",
        ])
        .prop_map(str::to_string),
        &[
            "\"on\": [sometimes]",
            "statusCodes: [409]",
            "\"on\": [retriable-status-codes]",
        ],
    );
    let attempts = mostly(
        (0u32..11).prop_map(|n| n.to_string()),
        &["11", "4294967296"],
    );
    (attempts, duration(), 1u32..10, on, percent())
        .prop_map(move |(attempts, base, times, on, ratio)| {
            // `max` a multiple of `base` (in its unit), as the rule `max >= base` wants.
            let split = base.find(|c: char| !c.is_ascii_digit()).unwrap_or(base.len());
            let (n, unit) = base.split_at(split);
            let max = n.parse::<u64>().map_or(base.clone(), |n| format!("{}{unit}", n * u64::from(times)));
            let ratio = ratio.parse::<f64>().map_or(ratio.clone(), |r| (r / 100.0).to_string());
            format!(
                "{pad}retry: {{attempts: {attempts}, backoff: {{base: {base}, max: {max}}}, perTryTimeout: {base}, {on}, budget: {{ratio: {ratio}, minPerSecond: {attempts}}}}}\n"
            )
        })
        .boxed()
}

/// The optional fields a route and the spec share, as YAML lines indented by `pad`.
fn route_fields(pad: &'static str) -> BoxedStrategy<String> {
    let line = move |name: &'static str, v: BoxedStrategy<String>| {
        prop::option::of(v.prop_map(move |v| format!("{pad}{name}: {v}\n")))
    };
    let fault = (
        percent(),
        duration(),
        percent(),
        mostly(
            prop::sample::select(vec!["httpStatus: 503", "grpcStatus: 14"])
                .prop_map(str::to_string),
            &["httpStatus: 700", "grpcStatus: 0"],
        ),
    )
        .prop_map(|(dp, d, ap, status)| {
            format!("{{delay: {{percent: {dp}, fixed: {d}}}, abort: {{percent: {ap}, {status}}}}}")
        })
        .boxed();
    let rate = (count(), count())
        .prop_map(|(r, b)| format!("{{requestsPerSecond: {r}, burst: {b}}}"))
        .boxed();
    (
        line("timeout", duration()),
        line("idleTimeout", duration()),
        line("grpcTimeoutMax", duration()),
        prop::option::of(retry(pad)),
        line("fault", fault),
        line("rateLimit", rate),
    )
        .prop_map(|(a, b, c, d, e, f)| [a, b, c, d, e, f].into_iter().flatten().collect())
        .boxed()
}

fn route() -> BoxedStrategy<String> {
    let path = mostly(
        prop::sample::select(vec!["{prefix: /api}", "{exact: /}", "{regex: \"/a/.*\"}"])
            .prop_map(str::to_string),
        &["{regex: \"(\"}", "{prefix: nope}"],
    );
    let backends = mostly(
        prop_oneof![
            Just("[{subset: v1}]".to_string()),
            (0u32..100, 1u32..100).prop_map(|(a, b)| {
                format!("[{{subset: v1, weight: {a}}}, {{subset: v2, weight: {b}}}]")
            }),
        ],
        &["[{subset: v3}]", "[{subset: v1, weight: 0}]"],
    );
    let mirror = prop::option::of(
        percent().prop_map(|p| format!("      mirror: {{subset: v2, percent: {p}}}\n")),
    );
    (path, prop::sample::select(vec!["GET", "POST", ""]), backends, mirror, route_fields("      "))
        .prop_map(|(path, method, backends, mirror, fields)| {
            let method = if method.is_empty() { String::new() } else { format!(", method: {method}") };
            format!(
                "    - match: {{path: {path}{method}, headers: [{{name: x-canary, exact: '1'}}]}}\n      backends: {backends}\n{}{fields}",
                mirror.unwrap_or_default()
            )
        })
        .boxed()
}

fn spec() -> BoxedStrategy<String> {
    let lb = (
        prop::sample::select(vec![
            "p2c-ewma",
            "round-robin",
            "least-request",
            "ring-hash",
            "random",
        ]),
        percent(),
        prop::sample::select(vec![
            "{header: x-user}",
            "{cookie: session}",
            "{sourceIp: true}",
            "",
        ]),
    )
        .prop_map(|(p, t, h)| {
            let hash = if h.is_empty() {
                String::new()
            } else {
                format!(", hash: {h}")
            };
            format!("  loadBalancer: {{policy: {p}, panicThreshold: {t}{hash}}}\n")
        });
    let breaker = (count(), count(), count(), count()).prop_map(|(a, b, c, d)| {
        format!("  circuitBreaker: {{maxConnections: {a}, maxPendingRequests: {b}, maxRequests: {c}, maxRetries: {d}}}\n")
    });
    let outlier = (count(), count(), percent(), count(), duration(), duration(), percent())
        .prop_map(|(c5, cg, tp, min, w, b, mp)| {
            format!(
                "  outlierDetection: {{consecutive5xx: {c5}, consecutiveGatewayErrors: {cg}, failureRate: {{thresholdPercent: {tp}, minimumRequests: {min}, window: {w}}}, interval: {w}, baseEjectionTime: {b}, maxEjectionTime: {b}, maxEjectionPercent: {mp}}}\n"
            )
        });
    (
        prop::collection::vec(route(), 0..3),
        route_fields("  "),
        prop::option::of(lb),
        prop::option::of(breaker),
        prop::option::of(outlier),
    )
        .prop_map(|(routes, fields, lb, breaker, outlier)| {
            let subsets = "  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n";
            let routes = if routes.is_empty() { String::new() } else { format!("  routes:\n{}", routes.concat()) };
            format!(
                "{subsets}{routes}{fields}{}{}{}",
                lb.unwrap_or_default(),
                breaker.unwrap_or_default(),
                outlier.unwrap_or_default()
            )
        })
        .boxed()
}

/// Run by hand rather than with `proptest!`, to count the policies the control plane accepted:
/// a generator whose every case is refused would check nothing.
#[test]
fn what_the_control_plane_accepts_the_proxy_accepts() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&spec(), |spec| {
            if policy_differential(&spec) {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    let accepted = accepted.into_inner();
    assert!(
        accepted >= 8,
        "only {accepted} of 128 generated policies were accepted"
    );
}

/// An AdmissionReview for a pod, with annotations weft reads set to plausible and odd values.
fn admission_review() -> BoxedStrategy<Vec<u8>> {
    let key = prop::sample::select(vec![
        "weft.dev/inject",
        "weft.dev/injected",
        "weft.dev/exclude-inbound-ports",
        "weft.dev/exclude-outbound-ports",
        "weft.dev/exclude-outbound-cidrs",
        "weft.dev/include-outbound-cidrs",
        "weft.dev/log-level",
        "weft.dev/mtls-mode",
        "weft.dev/default-authz",
        "weft.dev/proxy-cpu",
        "weft.dev/proxy-memory",
        "weft.dev/other",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "true",
            "false",
            "8080,9090",
            "70000",
            "10.0.0.0/8",
            "10.0.0.0/33",
            "debug",
            "strict",
            "permissive",
            "deny",
            "100m",
            "64Mi",
            "",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,12}",
    ];
    let annotations = prop::collection::btree_map(key, value, 0..5);
    let ports = prop::collection::vec(prop_oneof![Just(8080u32), Just(15001), 0u32..70000], 0..3);
    (
        annotations,
        ports,
        prop::sample::select(vec!["Pod", "Deployment"]),
        prop::sample::select(vec!["CREATE", "UPDATE"]),
        any::<bool>(),
    )
        .prop_map(|(annotations, ports, kind, operation, native)| {
            let ports: Vec<_> = ports
                .iter()
                .map(|p| serde_json::json!({"containerPort": p}))
                .collect();
            let mut pod = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "demo", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "app:1", "ports": ports}]},
            });
            if native {
                pod["spec"]["initContainers"] =
                    serde_json::json!([{"name": "setup", "image": "busybox"}]);
            }
            serde_json::to_vec(&serde_json::json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "0b0e2b3c-1111-2222-3333-444455556666",
                    "kind": {"group": "", "version": "v1", "kind": kind},
                    "operation": operation,
                    "namespace": "demo",
                    "object": pod,
                },
            }))
            .expect("JSON values serialize")
        })
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_injector_answers_every_review_in_shape(body in prop_oneof![
        8 => admission_review(),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]) {
        weft_tests::properties::admission_review(&body);
    }
}
