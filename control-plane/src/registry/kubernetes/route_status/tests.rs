//! The status weft writes on recorded routes, through a stand-in for the API server (none can
//! run here) that records every request.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::kube_stand_in;
use crate::registry::kubernetes::{Objects, Translator, tests::recorded};

/// The recorded objects' first round, as the registry makes it.
fn round() -> Round {
    let objs = recorded();
    let mut t = Translator::new("cluster.local");
    let snapshot = Arc::new(t.snapshot(&objs));
    Round {
        http_routes: objs.http_routes,
        grpc_routes: objs.grpc_routes,
        snapshot,
        refused: t.refused,
    }
}

/// The status patches the writer sends for `round`, by request path.
async fn patches(round: Round) -> Vec<(String, Value)> {
    let (client, seen) = kube_stand_in::serve(|_, _, body| (200, body.clone())).await;
    let (tx, rx) = watch::channel(Round::default());
    let task = tokio::spawn(run(client, rx));
    tx.send(round).unwrap();
    // The writer is done with a round when it waits for the next: closing the channel ends it.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the writer ends with its channel")
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(m, _, _)| m == http::Method::PATCH),
        "{seen:?}"
    );
    seen.into_iter().map(|(_, p, b)| (p, b)).collect()
}

const BASE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces";

#[tokio::test]
async fn weft_writes_its_own_parents_entries_and_keeps_other_controllers() {
    let written = patches(round()).await;
    let paths: Vec<&str> = written.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("{BASE}/bookinfo/httproutes/ratings-api/status"),
            format!("{BASE}/bookinfo/httproutes/ratings-older/status"),
            format!("{BASE}/shop/httproutes/ratings-for-shop/status"),
            format!("{BASE}/bookinfo/grpcroutes/ratings-grpc/status"),
        ],
        "every route with a Service parent; not the Gateway-only route (another controller's)"
    );
    let api = &written[0].1;
    assert_eq!(api["metadata"]["resourceVersion"], "50410");
    let parents = api["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{parents:#?}");
    // The edge controller's entry, as it was.
    assert_eq!(parents[0]["controllerName"], "example.net/edge-controller");
    assert_eq!(
        parents[0]["conditions"][0]["lastTransitionTime"],
        "2026-11-03T08:00:02Z"
    );
    // weft's, for the Service parent only: Accepted stays True (its time is kept), at the
    // route's generation; ResolvedRefs is new (ratings-v2 is no registered Service).
    let ours = &parents[1];
    assert_eq!(ours["controllerName"], CONTROLLER_NAME);
    assert_eq!(
        ours["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "name": "ratings", "port": 8081})
    );
    let conds = ours["conditions"].as_array().unwrap();
    let pick = |c: &Value| {
        (
            c["type"].as_str().unwrap().to_string(),
            c["status"].as_str().unwrap().to_string(),
            c["reason"].as_str().unwrap().to_string(),
            c["observedGeneration"].as_i64().unwrap(),
        )
    };
    assert_eq!(
        conds.iter().map(pick).collect::<Vec<_>>(),
        [
            ("Accepted".into(), "True".into(), "Accepted".into(), 2),
            (
                "ResolvedRefs".into(),
                "False".into(),
                "BackendNotFound".into(),
                2
            ),
        ]
    );
    assert_eq!(conds[0]["lastTransitionTime"], "2026-11-03T08:00:01Z");
    let new_time = conds[1]["lastTransitionTime"].as_str().unwrap();
    assert!(
        new_time.len() == 20 && new_time.ends_with('Z') && new_time.as_bytes()[10] == b'T',
        "RFC 3339 in whole seconds: {new_time}"
    );
    assert!(new_time > "2026-11-03T08:00:01Z", "{new_time}");

    // The consumer route is accepted on its Service in another namespace.
    let shop = &written[2].1["status"]["parents"][0];
    assert_eq!(shop["parentRef"]["namespace"], "bookinfo");
    assert_eq!(shop["conditions"][0]["status"], "True");
}

#[tokio::test]
async fn a_status_already_written_is_not_written_again() {
    // The routes as the API server holds them after the writes: their watch events.
    let mut r = round();
    let written = patches(r.clone()).await;
    for (objs, plural) in [
        (&mut r.http_routes, "httproutes"),
        (&mut r.grpc_routes, "grpcroutes"),
    ] {
        for o in objs.iter_mut() {
            let (ns, name) = (
                o.metadata.namespace.clone().unwrap(),
                o.metadata.name.clone().unwrap(),
            );
            let path = format!("{BASE}/{ns}/{plural}/{name}/status");
            if let Some((_, body)) = written.iter().find(|(p, _)| *p == path) {
                let mut obj = (**o).clone();
                obj.data["status"] = body["status"].clone();
                *o = Arc::new(obj);
            }
        }
    }
    assert_eq!(patches(r.clone()).await, Vec::<(String, Value)>::new());

    // A new generation of one route: its entries are written again, at that generation, with
    // their times kept (no condition changed).
    let mut obj = (*r.http_routes[1]).clone();
    obj.metadata.generation = Some(2);
    r.http_routes[1] = Arc::new(obj);
    let again = patches(r).await;
    assert_eq!(again.len(), 1, "{again:?}");
    let conds = &again[0].1["status"]["parents"][0]["conditions"];
    assert_eq!(conds[0]["observedGeneration"], 2);
    let before = &written[1].1["status"]["parents"][0]["conditions"];
    assert_eq!(
        conds[0]["lastTransitionTime"],
        before[0]["lastTransitionTime"]
    );
}

#[tokio::test]
async fn a_refused_route_is_reported_not_accepted_with_its_errors() {
    let mut r = round();
    let mut obj = (*r.http_routes[1]).clone();
    obj.data["spec"]["rules"][0]["matches"][0]["path"]["value"] = "api".into();
    r.http_routes[1] = Arc::new(obj);
    let objs = Objects {
        http_routes: r.http_routes.clone(),
        ..recorded()
    };
    let mut t = Translator::new("cluster.local");
    r.snapshot = Arc::new(t.snapshot(&objs));
    r.refused = t.refused;
    let registered = Registered::new(&r.snapshot);
    let ours = ours(gateway::HTTP_ROUTE, &r.http_routes[1], &r, &registered).unwrap();
    assert_eq!(ours.len(), 1);
    let c = &ours[0].conditions;
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].kind, c[0].status, c[0].reason),
        ("Accepted", "False", "UnsupportedValue")
    );
    // What is wrong, and nothing of what this replica happens to hold.
    assert_eq!(
        c[0].message,
        "spec.rules[0].matches[0].path.value: `api` must start with `/`"
    );
}

/// A writer kept across rounds, as `run` keeps it, against the stand-in.
async fn writer() -> (Writer, Arc<std::sync::Mutex<Vec<kube_stand_in::Seen>>>) {
    let (client, seen) = kube_stand_in::serve(|_, _, body| (200, body.clone())).await;
    let w = Writer {
        client,
        written: HashMap::new(),
        forbidden: [false; 2],
    };
    (w, seen)
}

/// `r` with route `i` (an HTTPRoute) changed by `f`.
fn with_route(mut r: Round, i: usize, f: impl FnOnce(&mut DynamicObject)) -> Round {
    let mut obj = (*r.http_routes[i]).clone();
    f(&mut obj);
    r.http_routes[i] = Arc::new(obj);
    r
}

/// How many of the requests `seen` patched `route`'s status.
fn patched(seen: &std::sync::Mutex<Vec<kube_stand_in::Seen>>, route: &str) -> Vec<Value> {
    let suffix = format!("/{route}/status");
    (seen.lock().unwrap().iter())
        .filter(|(_, p, _)| p.ends_with(&suffix))
        .map(|(_, _, b)| b.clone())
        .collect()
}

#[tokio::test]
async fn a_status_someone_else_rewrote_is_not_fought_over() {
    let (mut w, seen) = writer().await;
    let r = round();
    assert!(!w.round(&r).await, "no write failed");
    assert_eq!(seen.lock().unwrap().len(), 4);
    // Another writer (a replica of another version) put its own words in ratings-older's
    // entry: at the same generation, this one does not write back.
    let other = with_route(r.clone(), 1, |o| {
        o.data["status"] = json!({"parents": [{
            "parentRef": {"group": "", "kind": "Service", "name": "ratings"},
            "controllerName": CONTROLLER_NAME,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                "message": "other words", "observedGeneration": 1,
                "lastTransitionTime": "2026-11-01T12:30:01Z"}],
        }]});
    });
    w.round(&other).await;
    w.round(&other).await;
    assert_eq!(
        patched(&seen, "httproutes/ratings-older").len(),
        1,
        "nothing written back"
    );
    // A new generation is written, once.
    let newer = with_route(other, 1, |o| o.metadata.generation = Some(2));
    w.round(&newer).await;
    w.round(&newer).await;
    assert_eq!(patched(&seen, "httproutes/ratings-older").len(), 2);
}

#[tokio::test]
async fn a_route_that_is_no_longer_wefts_loses_wefts_entries() {
    let (mut w, seen) = writer().await;
    // ratings-api now names only the Gateway; its status still has weft's old entry.
    let r = with_route(round(), 0, |o| {
        let refs = o.data["spec"]["parentRefs"].as_array_mut().unwrap();
        refs.retain(|p| p["kind"] == "Gateway");
    });
    w.round(&r).await;
    let written = patched(&seen, "httproutes/ratings-api");
    assert_eq!(written.len(), 1);
    let parents = written[0]["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 1, "{parents:#?}");
    assert_eq!(parents[0]["controllerName"], "example.net/edge-controller");
}

#[tokio::test]
async fn wefts_entries_fit_in_the_room_other_controllers_leave() {
    let others = |n: usize| -> Value {
        let entries: Vec<Value> = (0..n)
            .map(|i| {
                json!({"parentRef": {"name": format!("gw-{i}")},
                    "controllerName": "example.net/c", "conditions": []})
            })
            .collect();
        json!({ "parents": entries })
    };
    // Other controllers hold 31 of the API's 32 entries: weft's one entry fits.
    let (mut w, seen) = writer().await;
    w.round(&with_route(round(), 0, |o| o.data["status"] = others(31)))
        .await;
    let written = patched(&seen, "httproutes/ratings-api");
    assert_eq!(
        written[0]["status"]["parents"].as_array().unwrap().len(),
        32
    );
    // They hold all 32: no room, nothing to write, round after round.
    let (mut w, seen) = writer().await;
    let full = with_route(round(), 0, |o| o.data["status"] = others(32));
    w.round(&full).await;
    w.round(&full).await;
    assert_eq!(patched(&seen, "httproutes/ratings-api").len(), 0);
}

#[tokio::test]
async fn a_route_made_again_under_its_name_gets_its_status_again() {
    let (mut w, seen) = writer().await;
    let r = round();
    w.round(&r).await;
    assert_eq!(patched(&seen, "httproutes/ratings-older").len(), 1);
    // Deleted and made again as it was (`kubectl replace --force`): another object, at
    // generation 1 again, with no status.
    let again = with_route(r, 1, |o| o.metadata.uid = Some("another-uid".into()));
    w.round(&again).await;
    assert_eq!(patched(&seen, "httproutes/ratings-older").len(), 2);
}
