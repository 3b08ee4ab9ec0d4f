use super::*;

#[test]
fn responses_are_counted_by_code() {
    let m = Metrics::new();
    let t = m.target(Direction::Outbound, &Arc::from("echo:80"));
    assert!(Arc::ptr_eq(
        &t,
        &m.target(Direction::Outbound, &Arc::from("echo:80"))
    ));
    t.request();
    t.response(200, None);
    t.response(200, None);
    t.response(200, Some(14));
    t.response(503, None);
    t.response(499, Some(1));
    t.response(499, Some(1));
    t.response(502, Some(14));
    t.response(700, None);
    // Undefined gRPC codes share one series.
    t.response(200, Some(17));
    t.response(200, Some(4_000_000_000));
    t.response(503, Some(99));
    m.tls.authz(AuthzProtocol::Grpc, false);
    let text = m.render();
    assert!(
        text.contains(
            r#"weft_request_total{backend="",direction="outbound",route="",target="echo:80"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"weft_response_total{backend="",direction="outbound",grpc_status="",route="",status_code="200",target="echo:80"} 2"#), "{text}");
    assert!(
        text.contains(r#"grpc_status="14",route="",status_code="200",target="echo:80"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="",status_code="503",target="echo:80"} 1"#),
        "{text}"
    );
    for line in [
        r#"grpc_status="1",route="",status_code="499",target="echo:80"} 2"#,
        r#"grpc_status="14",route="",status_code="502",target="echo:80"} 1"#,
        r#"grpc_status="",route="",status_code="700",target="echo:80"} 1"#,
        r#"grpc_status="other",route="",status_code="200",target="echo:80"} 2"#,
        r#"grpc_status="other",route="",status_code="503",target="echo:80"} 1"#,
        r#"weft_authz_total{protocol="grpc",result="deny"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn the_table_in_force_is_described_by_its_version_generation_and_size() {
    let m = Metrics::new();
    m.table_loaded("v1", 1, 10_000);
    m.table_loaded("v2", 2, 9_999);
    let text = m.render();
    for line in [
        "weft_table_services 9999",
        "weft_table_generation 2",
        r#"weft_table_info{version="v2"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    assert!(!text.contains(r#"version="v1""#), "only the table in force");
}

#[test]
fn a_routes_backends_count_apart_and_share_the_targets_traffic_series() {
    let m = Metrics::new();
    let (svc, route): (Arc<str>, Arc<str>) = (Arc::from("web:80"), Arc::from("api"));
    let v1 = m.backend(Direction::Outbound, &svc, &route, &Arc::from("web:80/v1"));
    let v2 = m.backend(Direction::Outbound, &svc, &route, &Arc::from("web:80/v2"));
    assert!(!Arc::ptr_eq(&v1, &v2));
    assert!(Arc::ptr_eq(
        &v2,
        &m.backend(Direction::Outbound, &svc, &route, &Arc::from("web:80/v2"))
    ));
    v1.request();
    v1.response(200, None);
    v2.request();
    v2.response(503, None);
    v1.retry(crate::retry::Reason::Http5xx);
    v2.retry(crate::retry::Reason::Http5xx);
    let text = m.render();
    for line in [
        r#"weft_response_total{backend="web:80/v1",direction="outbound",grpc_status="",route="api",status_code="200",target="web:80"} 1"#,
        r#"weft_response_total{backend="web:80/v2",direction="outbound",grpc_status="",route="api",status_code="503",target="web:80"} 1"#,
        r#"weft_request_total{backend="web:80/v2",direction="outbound",route="api",target="web:80"} 1"#,
        r#"weft_response_latency_seconds_count{backend="web:80/v1",direction="outbound",route="api",target="web:80"} 0"#,
        // Traffic-policy series stay per target.
        r#"weft_retries_total{direction="outbound",reason="5xx",target="web:80"} 2"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
}

#[test]
fn series_of_a_service_gone_from_the_table_are_forgotten_once_nothing_holds_them() {
    let m = Metrics::new();
    let (old, web, route): (Arc<str>, Arc<str>, Arc<str>) =
        ("old.test:80".into(), "web.test:80".into(), "default".into());
    let count = |t: &TargetMetrics| {
        t.request();
        t.response(200, None);
        t.response(503, None);
        t.response(200, Some(14));
        t.response(499, Some(1));
        t.response(700, Some(99));
        t.retry(crate::retry::Reason::Http5xx);
        t.overflow(crate::resilience::Limit::Pending);
        t.ejection();
        t.returned();
        t.attempts(2);
    };
    let held = m.backend(Direction::Outbound, &old, &route, &old);
    count(&held);
    count(&m.target(Direction::Outbound, &old));
    count(&m.backend(Direction::Outbound, &web, &route, &web));
    count(&m.target(Direction::Inbound, &old));
    let gone = |s: &str| s == "old.test:80";
    let lines = |text: &str, target: &str| {
        let label = format!("target=\"{target}\"");
        (text.lines())
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let before = lines(&m.render(), "old.test:80");
    assert!(
        before.iter().any(|l| l.starts_with("weft_retries_total")),
        "{before:?}"
    );

    // A handle still held (a table's route, a request in flight) keeps its series, and the
    // service's series the route and backend handles share.
    assert_eq!(m.prune(gone), 1, "the service-level handle nobody holds");
    let text = m.render();
    assert!(
        text.contains(r#"weft_request_total{backend="old.test:80",direction="outbound",route="default",target="old.test:80"} 1"#),
        "{text}"
    );
    assert!(
        lines(&text, "old.test:80")
            .iter()
            .any(|l| l.starts_with("weft_retries_total"))
    );

    drop(held);
    assert_eq!(m.prune(gone), 1);
    let text = m.render();
    let left = lines(&text, "old.test:80");
    assert!(!left.is_empty());
    assert!(
        left.iter().all(|l| l.contains(r#"direction="inbound""#)),
        "only the inbound series stay: {left:#?}"
    );
    // A service the table still has keeps its series, held or not.
    assert!(lines(&text, "web.test:80").len() > 10, "{text}");
    // Counted again, it starts again.
    let again = m.backend(Direction::Outbound, &old, &route, &old);
    again.request();
    assert!(
        m.render().contains(r#"weft_request_total{backend="old.test:80",direction="outbound",route="default",target="old.test:80"} 1"#)
    );
    // An endpoint still ejected keeps its gauge (its return would count below 0).
    let ejecting: Arc<str> = "ejecting.test:80".into();
    m.backend(Direction::Outbound, &ejecting, &route, &ejecting)
        .ejection();
    assert_eq!(m.prune(|s| s == "ejecting.test:80"), 1);
    let text = m.render();
    let left = lines(&text, "ejecting.test:80");
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(
        left[0].starts_with("weft_outlier_ejected_endpoints{") && left[0].ends_with(" 1"),
        "{left:#?}"
    );
}
