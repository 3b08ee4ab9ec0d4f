//! Request and response series per route and backend, in process: a canary's backends have
//! their own success rates and latencies.

use std::time::Duration;

use super::{Mesh, Upstreams, V1, V2, reply, slow, two_versions};

#[tokio::test(start_paused = true)]
async fn a_canarys_backends_have_their_own_series() {
    let up = Upstreams::default();
    up.serve(V1, |_, _| async { reply(200, "v1") });
    // v2 fails one request in four, and is slower.
    up.serve(V2, |n, _| async move {
        if n % 4 == 0 {
            reply(503, "v2 down")
        } else {
            slow(Duration::from_millis(20), 200).await
        }
    });
    let table = two_versions(
        "      - name: split
        backends: [{subset: v1, weight: 50}, {subset: v2, weight: 50}]
",
    );
    let mesh = Mesh::outbound(&table, up);
    for _ in 0..400 {
        mesh.get("web", "/").await;
    }
    let (n1, n2) = (mesh.upstreams.requests(V1), mesh.upstreams.requests(V2));
    assert_eq!(n1 + n2, 400);
    assert!((150..=250).contains(&n1), "an even split: {n1} / {n2}");
    let series = |family: &str, backend: &str, extra: &str| {
        format!(
            r#"{family}{{backend="web:80/{backend}",direction="outbound",{extra}route="split",target="web:80"}}"#
        )
    };
    assert_eq!(
        mesh.metric(&series("weft_request_total", "v1", "")),
        n1 as f64
    );
    assert_eq!(
        mesh.metric(&series("weft_request_total", "v2", "")),
        n2 as f64
    );
    let responses = |backend: &str, code: u16| {
        let s = series("weft_response_total", backend, r#"grpc_status="","#);
        let with_code = format!(r#"route="split",status_code="{code}","#);
        mesh.metric(&s.replace(r#"route="split","#, &with_code))
    };
    assert_eq!(responses("v1", 200), n1 as f64);
    assert_eq!(responses("v1", 503), 0.0);
    assert_eq!(responses("v2", 503), f64::from(n2 / 4));
    assert_eq!(responses("v2", 200), f64::from(n2 - n2 / 4));
    // Latency apart too: every v2 success took 20 ms, v1 none.
    let under_10ms = |backend: &str| {
        mesh.metric(
            &series("weft_response_latency_seconds_bucket", backend, "")
                .replace(r#""web:80"}"#, r#""web:80",le="0.01"}"#),
        )
    };
    assert_eq!(under_10ms("v1"), n1 as f64);
    assert_eq!(under_10ms("v2"), f64::from(n2 / 4));
}
