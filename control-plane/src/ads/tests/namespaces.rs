//! A node's namespace chooses which consumer routes it is served, state of the world and
//! delta alike.

use super::*;

/// The snapshot of `a.test` and `b.test`, where nodes in `shop` get a variant of `a.test`'s
/// route configuration (a consumer route) whose one route is named `for-shop`.
fn with_consumer_variant() -> Arc<XdsSnapshot> {
    let mut res = translate::translate(&registry(&["a.test", "b.test"], 1));
    let mut rc = res.routes[0].clone();
    assert_eq!(rc.name, "a.test:80");
    rc.virtual_hosts[0].routes[0].name = "for-shop".into();
    res.consumer_routes.insert("shop".into(), vec![rc]);
    Arc::new(XdsSnapshot::new(&res))
}

fn node_in(id: &str, namespace: &str) -> Option<Node> {
    use weft_xds_proto::google::protobuf::{Struct, Value, value::Kind};
    let ns = Value {
        kind: Some(Kind::StringValue(namespace.into())),
    };
    Some(Node {
        id: id.into(),
        metadata: Some(Struct {
            fields: [("namespace".to_string(), ns)].into(),
        }),
        ..Default::default()
    })
}

/// The first route's name in each route configuration of a response, by its name.
fn first_routes(resources: impl Iterator<Item = Vec<u8>>) -> Vec<(String, String)> {
    use weft_xds_proto::envoy::config::route::v3::RouteConfiguration;
    resources
        .map(|b| RouteConfiguration::decode(&*b).unwrap())
        .map(|rc| (rc.name, rc.virtual_hosts[0].routes[0].name.clone()))
        .collect()
}

#[tokio::test]
async fn a_nodes_namespace_chooses_its_consumer_routes() {
    use weft_xds_proto::type_url::ROUTE;
    let mut h = start(with_consumer_variant()).await;
    let sotw = |id: &'static str, ns: &'static str| {
        let mut client = h.client.clone();
        async move {
            let (tx, rx) = mpsc::channel(8);
            let mut rsp = (client.stream_aggregated_resources(ReceiverStream::new(rx)))
                .await
                .unwrap()
                .into_inner();
            tx.send(DiscoveryRequest {
                node: node_in(id, ns),
                type_url: ROUTE.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            let first = next(&mut rsp).await;
            (tx, rsp, first)
        }
    };
    let (_shop_tx, mut shop, in_shop) = sotw("in-shop", "shop").await;
    let (_other_tx, mut other, elsewhere) = sotw("elsewhere", "web").await;
    let routes = |r: &DiscoveryResponse| first_routes(r.resources.iter().map(|a| a.value.clone()));
    let base = [("b.test:80".to_string(), "default".to_string())];
    assert_eq!(
        routes(&in_shop),
        [("a.test:80".into(), "for-shop".into()), base[0].clone()]
    );
    assert_eq!(
        routes(&elsewhere),
        [("a.test:80".into(), "default".into()), base[0].clone()]
    );
    assert_ne!(in_shop.version_info, elsewhere.version_info);

    // The consumer route goes away: only the nodes in `shop` see a change (a new version with
    // the producer's configuration); the others' version stays, and they are sent nothing.
    h.snaps.send(xds(&["a.test", "b.test"], 1)).unwrap();
    let now = next(&mut shop).await;
    assert_eq!(routes(&now), routes(&elsewhere));
    assert_eq!(now.version_info, elsewhere.version_info);
    let quiet = tokio::time::timeout(Duration::from_millis(300), other.message()).await;
    assert!(quiet.is_err(), "nothing changed for them: {quiet:?}");

    // Delta: a node in `shop` gets the variant; when it goes, the producer's is sent again.
    h.snaps.send(with_consumer_variant()).unwrap();
    let (tx, rx) = mpsc::channel(8);
    let mut rsp = (h.client.delta_aggregated_resources(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    tx.send(DeltaDiscoveryRequest {
        node: node_in("delta-in-shop", "shop"),
        type_url: ROUTE.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let delta_routes = |r: &weft_xds_proto::discovery::DeltaDiscoveryResponse| {
        first_routes(
            r.resources
                .iter()
                .map(|r| r.resource.clone().unwrap().value),
        )
    };
    let first = next(&mut rsp).await;
    assert_eq!(delta_routes(&first), routes(&in_shop));
    h.snaps.send(xds(&["a.test", "b.test"], 1)).unwrap();
    let upd = next(&mut rsp).await;
    assert_eq!(
        delta_routes(&upd),
        [("a.test:80".to_string(), "default".to_string())],
        "only the route configuration that changed for it"
    );
    assert!(upd.removed_resources.is_empty());
}
