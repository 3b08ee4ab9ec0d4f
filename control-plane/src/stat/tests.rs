use std::time::Duration;

use serde_json::json;

use super::*;

fn stat(service: Option<&str>, by: By) -> Stat {
    Stat {
        service: service.map(str::to_string),
        by,
        window: Duration::from_secs(60),
    }
}

#[test]
fn queries_select_the_service_and_group_by_what_was_asked() {
    let q = stat(Some("web.shop.svc.cluster.local:8080"), By::Backend).queries();
    let sel = r#"direction="outbound",target=~"web\\.shop\\.svc\\.cluster\\.local:8080",route!="""#;
    assert_eq!(
        q[0].as_deref(),
        Some(&*format!(
            "sum by (target, route, backend) (rate(weft_response_total{{{sel}}}[60s]))"
        ))
    );
    let success = q[1].as_deref().unwrap();
    assert!(
        success.contains(r#"status_code!~"5..",grpc_status=~"|0""#),
        "{success}"
    );
    assert!(success.contains(" or 0 * "), "{success}");
    assert!(q[4].as_deref().unwrap().starts_with(
        "histogram_quantile(0.99, sum by (target, route, backend, le) (rate(weft_response_latency_seconds_bucket{"
    ));
    // A host alone: each of its ports.
    let q = stat(Some("web"), By::Service).queries();
    assert!(
        q[0].as_deref().unwrap().contains(r#"target=~"web:[0-9]+""#),
        "{q:?}"
    );
    // By caller: requests per second only.
    let q = stat(None, By::Caller).queries();
    assert!(
        q[0].as_deref()
            .unwrap()
            .contains("weft_inbound_peer_requests_total")
    );
    assert!(q[1..].iter().all(Option::is_none));
}

fn answer(rows: &[(&[(&str, &str)], &str)]) -> Option<serde_json::Value> {
    let result: Vec<serde_json::Value> = rows
        .iter()
        .map(|(labels, v)| {
            let metric: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            json!({"metric": metric, "value": [1_700_000_000.0, v]})
        })
        .collect();
    Some(json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
}

#[test]
fn answers_are_joined_into_one_row_per_group() {
    let s = stat(Some("web:80"), By::Backend);
    let v1: &[(&str, &str)] = &[
        ("target", "web:80"),
        ("route", "split"),
        ("backend", "web:80/v1"),
    ];
    let v2: &[(&str, &str)] = &[
        ("target", "web:80"),
        ("route", "split"),
        ("backend", "web:80/v2"),
    ];
    let answers = [
        answer(&[(v1, "10"), (v2, "2.5")]),
        answer(&[(v1, "1"), (v2, "0.75")]),
        answer(&[(v1, "0.001"), (v2, "0.02")]),
        answer(&[(v1, "0.004"), (v2, "NaN")]),
        answer(&[(v1, "0.0049")]),
    ];
    let t = table(&s, &answers).unwrap();
    let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines,
        [
            vec![
                "SERVICE",
                "ROUTE",
                "BACKEND",
                "RPS",
                "SUCCESS",
                "LATENCY_P50",
                "LATENCY_P95",
                "LATENCY_P99"
            ],
            vec![
                "web:80",
                "split",
                "web:80/v1",
                "10.00",
                "100.00%",
                "1.0ms",
                "4.0ms",
                "4.9ms"
            ],
            vec![
                "web:80",
                "split",
                "web:80/v2",
                "2.50",
                "75.00%",
                "20.0ms",
                "-",
                "-"
            ],
        ]
    );
    let refused = json!({"status": "error", "error": "parse error"});
    let err = table(&s, &[Some(refused), None, None, None, None]).unwrap_err();
    assert_eq!(err, "Prometheus refused the RPS query: parse error");
}

#[test]
fn query_components_are_url_encoded() {
    assert_eq!(
        url_encode(r#"a{b="c"} / 1"#),
        "a%7Bb%3D%22c%22%7D%20%2F%201"
    );
}

#[test]
fn a_service_with_by_caller_is_refused_rather_than_ignored() {
    let minute = Duration::from_secs(60);
    let e = Stat::new(Some("web:80".into()), By::Caller, minute).unwrap_err();
    assert!(e.contains("--by caller") && e.contains("web:80"), "{e}");
    assert!(Stat::new(None, By::Caller, minute).is_ok());
    assert!(Stat::new(Some("web:80".into()), By::Backend, minute).is_ok());
    assert!(Stat::new(None, By::Service, Duration::ZERO).is_err());
}
