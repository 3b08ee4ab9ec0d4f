use std::time::Duration;

use super::*;

const FULL: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: reviews
  namespace: shop
  uid: 6f1c-ignored            # Kubernetes adds fields like these
  resourceVersion: "42"
spec:
  service: reviews.shop.svc.cluster.local:9080
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
  routes:
    - name: testers
      match:
        path: {prefix: /api}
        method: GET
        headers:
          - {name: x-canary, exact: "1"}
          - {name: x-debug}
      backends: [{subset: v2}]
      timeout: 2s
    - name: split
      match: {path: {regex: "/users/[0-9]+"}}
      backends:
        - {subset: v1, weight: 90}
        - {subset: v2, weight: 10}
      retry:
        attempts: 3
        backoff: {base: 500ms, max: 5s}
        perTryTimeout: 1s
        on: [connect-failure, retriable-status-codes, unavailable]
        statusCodes: [503]
  timeout: 10s
  retry: {attempts: 2, budget: {ratio: 0.2, minPerSecond: 10}}
  loadBalancer: {policy: ring-hash, hash: {header: x-user}}
  circuitBreaker: {maxConnections: 100, maxRequests: 1000}
  outlierDetection:
    consecutive5xx: 5
    failureRate: {thresholdPercent: 50, minimumRequests: 10, window: 10s}
    baseEjectionTime: 1s
    maxEjectionPercent: 50
  fault:
    delay: {percent: 1.5, fixed: 100ms}
    abort: {percent: 0.1, grpcStatus: 14}
  rateLimit: {requestsPerSecond: 100, burst: 200}
  authorization:
    default: deny
    allow:
      - identity: spiffe://cluster.local/ns/shop/sa/frontend
      - namespace: monitoring
"#;

#[test]
fn a_full_policy_parses_validates_and_round_trips() {
    let policies = parse("reviews.yaml", FULL).unwrap();
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(p.key(), "shop/reviews");
    assert_eq!(p.spec.routes[1].backends[1].weight, 10);
    assert_eq!(
        p.spec.routes[0].backends[0].weight, 1,
        "weight defaults to 1"
    );
    let retry = p.spec.routes[1].retry.as_ref().unwrap();
    assert_eq!(
        retry.backoff.as_ref().unwrap().base,
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        p.spec.load_balancer.as_ref().unwrap().policy,
        LbPolicy::RingHash
    );
    assert_eq!(
        p.spec.outlier_detection.as_ref().unwrap().consecutive_5xx,
        Some(5)
    );
    assert_eq!(
        p.spec.authorization.as_ref().unwrap().default,
        AuthzDefault::Deny
    );
    // What weftctl would print back reads in as the same policy.
    let yaml = serde_yaml_ng::to_string(p).unwrap();
    assert_eq!(&parse("again.yaml", &yaml).unwrap()[0], p);
    let json = serde_json::to_string(p).unwrap();
    assert_eq!(
        &parse("again.json", &json).unwrap()[0],
        p,
        "JSON is accepted too"
    );
}

#[test]
fn several_documents_in_one_text() {
    let two = format!(
        "{FULL}---\n{}\n---\n",
        FULL.replace("name: reviews", "name: reviews-2")
    );
    let keys: Vec<String> = parse("two.yaml", &two)
        .unwrap()
        .iter()
        .map(TrafficPolicy::key)
        .collect();
    assert_eq!(keys, ["shop/reviews", "shop/reviews-2"]);
}

fn minimal(spec: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: p}}\nspec:\n{spec}"
    )
}

#[test]
fn shape_errors_name_the_line() {
    let err = parse("p.yaml", &minimal("  service: a:80\n  timeout: soon\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("p.yaml: spec.timeout: `soon`: expected a duration such as 250ms, 10s or 2m at line 6 column 12"),
        "{err}"
    );
    let err = parse(
        "p.yaml",
        &minimal("  service: a:80\n  retries: {attempts: 2}\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("spec: unknown field `retries`"), "{err}");
    let err = parse(
        "p.yaml",
        &minimal("  service: a:80\n  loadBalancer: {policy: fastest}\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown variant `fastest`"), "{err}");
}

/// The errors validation reports for a policy with this `spec`.
fn errors(spec: &str) -> Vec<String> {
    match parse("p.yaml", &minimal(spec)) {
        Err(PolicyError::Invalid { errors, policy, .. }) => {
            assert_eq!(policy, "default/p");
            errors.iter().map(ToString::to_string).collect()
        }
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn every_invalid_field_is_named() {
    let cases: &[(&str, &[&str])] = &[
        (
            "  service: Reviews\n",
            &["spec.service: `Reviews` is not `host:port` (a lower-case host name and a port)"],
        ),
        (
            "  service: a:80\n  subsets: [{name: v1, labels: {}}, {name: v1, labels: {}}]\n  routes: [{backends: [{subset: v3}]}]\n",
            &[
                "spec.subsets[1].name: subset `v1` is defined twice",
                "spec.routes[0].backends[0].subset: unknown subset `v3` (defined: v1)",
            ],
        ),
        (
            "  service: a:80\n  routes: [{backends: [{weight: 0}]}, {match: {path: {exact: /a, prefix: /b}}}]\n",
            &[
                "spec.routes[0].backends: every backend has weight 0: nothing could be routed",
                "spec.routes[1].match.path: set only one of `exact`, `prefix`, `regex` (found exact, prefix)",
            ],
        ),
        (
            "  service: a:80\n  routes: [{match: {path: {regex: '('}, method: 'G T', headers: [{name: 'bad name'}]}}]\n",
            &[
                "spec.routes[0].match.path.regex: invalid regex",
                "spec.routes[0].match.method: `G T` is not an HTTP method",
                "spec.routes[0].match.headers[0].name: `bad name` is not a header name",
            ],
        ),
        (
            "  service: a:80\n  retry: {attempts: 50, backoff: {base: 1s, max: 100ms}, on: [5xx, sometimes], statusCodes: [503]}\n",
            &[
                "spec.retry.attempts: 50 retries is more than the limit of 10",
                "spec.retry.backoff.max: 100ms is less than base 1s",
                "spec.retry.on[1]: unknown retry condition `sometimes`",
                "spec.retry.statusCodes: status codes are only used with the `retriable-status-codes` condition",
            ],
        ),
        (
            "  service: a:80\n  retry: {on: [retriable-status-codes], budget: {ratio: 20}}\n",
            &[
                "spec.retry.statusCodes: `retriable-status-codes` needs at least one status code",
                "spec.retry.budget.ratio: 20 is not a ratio between 0 and 1 (0.2 means 20%)",
            ],
        ),
        (
            "  service: a:80\n  loadBalancer: {policy: ring-hash}\n",
            &[
                "spec.loadBalancer.hash: `ring-hash` needs a hash key (`header`, `cookie` or `sourceIp`)",
            ],
        ),
        (
            "  service: a:80\n  loadBalancer: {policy: round-robin, hash: {header: x, cookie: y}}\n",
            &[
                "spec.loadBalancer.hash: set only one of `header`, `cookie`, `sourceIp` (found header, cookie)",
            ],
        ),
        (
            "  service: a:80\n  circuitBreaker: {maxRequests: 0}\n  outlierDetection: {maxEjectionPercent: 150, failureRate: {thresholdPercent: 0}}\n",
            &[
                "spec.circuitBreaker.maxRequests: must be at least 1",
                "spec.outlierDetection.maxEjectionPercent: 150 is not a percentage between 0 and 100",
                "spec.outlierDetection.failureRate.thresholdPercent: must be at least 1",
            ],
        ),
        (
            "  service: a:80\n  fault: {delay: {percent: 200}, abort: {percent: 5, httpStatus: 503, grpcStatus: 14}}\n",
            &[
                "spec.fault.delay.percent: 200 is not a percentage between 0 and 100",
                "spec.fault.delay.fixed: a delay needs its length",
                "spec.fault.abort: set exactly one of `httpStatus` and `grpcStatus`",
            ],
        ),
        (
            "  service: a:80\n  rateLimit: {requestsPerSecond: 0}\n  authorization: {allow: [{identity: frontend}, {}]}\n",
            &[
                "spec.rateLimit.requestsPerSecond: must be at least 1",
                "spec.authorization.allow[0].identity: `frontend` is not a SPIFFE id",
                "spec.authorization.allow[1]: set exactly one of `identity`, `namespace`, `authenticated: true`",
            ],
        ),
    ];
    for (spec, want) in cases {
        let got = errors(spec);
        assert_eq!(got.len(), want.len(), "spec:\n{spec}\ngot: {got:#?}");
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(g.starts_with(w), "spec:\n{spec}\ngot:  {g}\nwant: {w}");
        }
    }
}

#[test]
fn the_error_text_names_source_policy_and_fields() {
    let text = minimal("  service: a:80\n  routes: [{backends: [{subset: v9}]}]\n")
        .replace("kind: TrafficPolicy", "kind: Policy");
    let err = parse("etcd:/weft/policies/default/p", &text)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "etcd:/weft/policies/default/p: policy default/p: kind: `Policy`: expected `TrafficPolicy`; spec.routes[0].backends[0].subset: unknown subset `v9` (defined: )"
    );
}
