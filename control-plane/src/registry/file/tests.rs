use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "weft-registry-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const REVIEWS: &str = "apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  port: 9080
  aliases: [reviews]
  endpoints:
    - {address: 10.0.1.4:8080, labels: {version: v1}}
    - {address: 10.0.1.5:8080, weight: 3, labels: {version: v2}, identity: spiffe://cluster.local/ns/shop/sa/reviews}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews, namespace: shop}
spec:
  service: reviews.shop.svc.cluster.local:9080
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
  routes: [{backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]}]
";

const AUTHORITY: &str = "reviews.shop.svc.cluster.local:9080";

#[test]
fn a_directory_of_services_and_policies() {
    let dir = Dir::new();
    dir.write("reviews.yaml", REVIEWS);
    dir.write(
        "ratings.json",
        r#"{"apiVersion": "weft.dev/v1alpha1", "kind": "Service", "metadata": {"name": "ratings"}, "spec": {"host": "ratings.example", "port": 80, "protocol": "http2"}}"#,
    );
    dir.write("README.txt", "not a registry file");
    let mut reg = FileRegistry::new(&dir.0);
    let snap = reg.scan().unwrap();
    assert!(reg.errors.is_empty(), "{:?}", reg.errors);
    let keys: Vec<&str> = snap.services.keys().map(String::as_str).collect();
    assert_eq!(keys, ["ratings.example:80", AUTHORITY]);
    let reviews = &snap.services[AUTHORITY];
    assert_eq!(reviews.key, "shop/reviews");
    assert_eq!(reviews.spec.endpoints[1].weight, 3);
    assert!(reviews.spec.endpoints[0].healthy, "healthy by default");
    assert_eq!(
        snap.services["ratings.example:80"].spec.protocol,
        super::super::Protocol::Http2
    );
    assert_eq!(
        snap.policies["shop/reviews"].spec.routes[0].backends[1].weight,
        10
    );
}

#[test]
fn a_bad_edit_keeps_the_last_good_content_and_names_the_field() {
    let dir = Dir::new();
    let path = dir.write("reviews.yaml", REVIEWS);
    let mut reg = FileRegistry::new(&dir.0);
    let good = reg.scan().unwrap();

    // The policy now names a subset that does not exist.
    let bad = REVIEWS.replace("{subset: v2, weight: 10}", "{subset: v3, weight: 10}");
    dir.write("reviews.yaml", &bad);
    let snap = reg.scan().unwrap();
    assert_eq!(snap, good, "nothing is lost");
    assert_eq!(
        reg.errors,
        [format!(
            "{}: policy shop/reviews: spec.routes[0].backends[1].subset: unknown subset `v3` (defined: v1, v2) (its last good content stays in force)",
            path.display()
        )]
    );

    // A shape error reports the file's own line number.
    dir.write("reviews.yaml", &REVIEWS.replace("port: 9080", "port: many"));
    reg.scan().unwrap();
    assert!(
        reg.errors[0].contains("spec.port: invalid type: string \"many\", expected u16 at line 5"),
        "{:?}",
        reg.errors
    );
    // ...also in the second document.
    dir.write("reviews.yaml", &REVIEWS.replace("routes: [", "routez: ["));
    reg.scan().unwrap();
    assert!(
        reg.errors[0].contains("unknown field `routez`") && reg.errors[0].contains("at line 17"),
        "{:?}",
        reg.errors
    );
    let bad_id = REVIEWS.replace(
        "address: 10.0.1.4:8080,",
        "address: 10.0.1.4:8080, identity: reviews,",
    );
    dir.write("reviews.yaml", &bad_id);
    reg.scan().unwrap();
    assert!(
        reg.errors[0].ends_with("service shop/reviews: spec.endpoints[0].identity: `reviews` is not a SPIFFE id (its last good content stays in force)"),
        "{:?}",
        reg.errors
    );

    // Fixed: the change applies and the error clears.
    dir.write("reviews.yaml", &REVIEWS.replace("weight: 3", "weight: 5"));
    let snap = reg.scan().unwrap();
    assert!(reg.errors.is_empty());
    assert_eq!(snap.services[AUTHORITY].spec.endpoints[1].weight, 5);
}

#[test]
fn a_file_that_never_was_good_contributes_nothing() {
    let dir = Dir::new();
    dir.write(
        "a.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: Deployment\n",
    );
    let mut reg = FileRegistry::new(&dir.0);
    assert_eq!(reg.scan().unwrap(), Snapshot::default());
    assert!(
        reg.errors[0].ends_with(
            "a.yaml: kind: `Deployment` is none of `Service`, `TrafficPolicy`, `HTTPRoute`, `GRPCRoute` (nothing from it is in force)"
        ),
        "{:?}",
        reg.errors
    );
}

#[test]
fn duplicates_and_removed_files() {
    let dir = Dir::new();
    dir.write("a.yaml", REVIEWS);
    let b = dir.write("b.yaml", REVIEWS);
    let mut reg = FileRegistry::new(&dir.0);
    let snap = reg.scan().unwrap();
    assert_eq!(snap.services.len(), 1);
    assert_eq!(reg.errors.len(), 2, "{:?}", reg.errors);
    assert!(
        reg.errors[0].contains("is already registered by"),
        "{:?}",
        reg.errors
    );
    std::fs::remove_file(b).unwrap();
    reg.scan().unwrap();
    assert!(reg.errors.is_empty());
    std::fs::remove_file(dir.0.join("a.yaml")).unwrap();
    assert_eq!(
        reg.scan().unwrap(),
        Snapshot::default(),
        "a removed file deregisters"
    );
}

#[tokio::test]
async fn the_watch_publishes_the_latest_snapshot() {
    let dir = Dir::new();
    dir.write("reviews.yaml", REVIEWS);
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let task = tokio::spawn(FileRegistry::new(&dir.0).run(Duration::from_millis(20), tx, |_| {}));
    rx.changed().await.unwrap();
    assert_eq!(rx.borrow_and_update().services.len(), 1);

    // Edits between two scans coalesce into the snapshot they lead to.
    dir.write("reviews.yaml", &REVIEWS.replace("weight: 3", "weight: 4"));
    dir.write("reviews.yaml", &REVIEWS.replace("weight: 3", "weight: 7"));
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            rx.changed().await.unwrap();
            let snap = rx.borrow_and_update().clone();
            if snap.services[AUTHORITY].spec.endpoints[1].weight == 7 {
                return;
            }
        }
    })
    .await
    .expect("the last edit is published");
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the watch ends when nobody listens")
        .unwrap();
}

/// A file that can no longer be read as text keeps its last good content in force (it used
/// to count as deleted: its services and authorization policies vanished, failing open).
#[test]
fn a_file_that_cannot_be_read_keeps_its_last_good_content() {
    let dir = Dir::new();
    let path = dir.write("reviews.yaml", REVIEWS);
    let mut reg = FileRegistry::new(&dir.0);
    let snap = reg.scan().unwrap();
    assert!(snap.services.contains_key(AUTHORITY));
    std::fs::write(&path, [0xff, 0xfe, b'a']).unwrap();
    let snap = reg.scan().unwrap();
    assert!(
        snap.services.contains_key(AUTHORITY),
        "the service vanished"
    );
    assert!(
        snap.policies.contains_key("shop/reviews"),
        "the policy vanished"
    );
    assert_eq!(reg.errors.len(), 1, "{:?}", reg.errors);
    assert!(
        reg.errors[0].contains("reviews.yaml") && reg.errors[0].contains("not UTF-8"),
        "{:?}",
        reg.errors
    );
    // Readable again: read again (even with the same text as before).
    dir.write("reviews.yaml", REVIEWS);
    reg.scan().unwrap();
    assert!(reg.errors.is_empty(), "{:?}", reg.errors);
    // Gone for real: gone.
    std::fs::remove_file(&path).unwrap();
    assert!(!reg.scan().unwrap().services.contains_key(AUTHORITY));
}
