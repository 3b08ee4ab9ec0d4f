//! Configuration errors and reloads: clear errors at start, last good table kept on reload.

use std::{process::Command, time::Duration};

use http::Request;
use weft_tests::{
    chain::TempDir,
    eventually, http_peer, mesh,
    proxy::{self, Proxy},
};

/// Runs the proxy binary to its exit (it must not start); returns exit code and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(proxy::binary())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn invalid_file_refuses_to_start_with_the_exact_error() {
    let dir = TempDir::new("badcfg");
    let cases = [
        (
            "syntax.yaml",
            "services:\n  - name: echo\n    port: 8080\n    endpoints:\n      - address: 127.0.0.1:notaport\n",
            "services[0].endpoints[0].address: `127.0.0.1:notaport`: `notaport` is not a port at line 5 column 18",
        ),
        (
            "semantic.yaml",
            "services:\n  - name: echo\n    port: 8080\n    routes:\n      - backends: [{subset: canary}]\n",
            "services[0].routes[0].backends[0].subset: unknown subset `canary` (defined: )",
        ),
    ];
    for (name, text, problem) in cases {
        let cfg = dir.write(name, text);
        let (code, stderr) = run_to_exit(
            &["--config", cfg.to_str().unwrap(), "--log-level", "off"],
            &[],
        );
        assert_eq!(code, Some(1));
        assert_eq!(
            stderr,
            format!("weft-proxy: error: {}: {problem}\n", cfg.display())
        );
    }
    let (code, stderr) = run_to_exit(
        &["--config", "/nonexistent/mesh.yaml", "--log-level", "off"],
        &[],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "weft-proxy: error: /nonexistent/mesh.yaml: cannot read: No such file or directory (os error 2)\n"
    );
}

#[test]
fn bad_flags_fail_with_a_clear_error() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        (
            &["--outbound-addr", "nowhere"],
            &[],
            "invalid value 'nowhere' for '--outbound-addr <OUTBOUND_ADDR>'",
        ),
        (
            &["--detect-timeout", "soon"],
            &[],
            "`soon`: expected a duration",
        ),
        (
            &[],
            &[("WEFT_OUTBOUND_TCP", "db:5432")],
            "expected LISTEN_ADDR=SERVICE",
        ),
    ];
    for (args, env, want) in cases {
        let (code, stderr) = run_to_exit(args, env);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_last_good_table() {
    let peer = http_peer::server("s1").await;
    let dir = TempDir::new("reload");
    let good = format!(
        "version: good\nservices:\n  - name: echo.test\n    port: 8080\n    endpoints:\n      - address: {}\n",
        peer.addr
    );
    let cfg = dir.write("mesh.yaml", &good);
    // Poll for changes every 100 ms: no SIGHUP in this test.
    let proxy = Proxy::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--config-poll-interval",
        "100ms",
    ]);
    let get = || async {
        http_peer::request_h1(
            proxy.addr("outbound"),
            Request::get("/id").header("host", "echo.test:8080"),
            String::new(),
        )
        .await
        .unwrap()
        .status()
    };
    assert_eq!(get().await, 200);

    dir.write(
        "mesh.yaml",
        "version: broken\nservices:\n  - name: echo.test\n    port: http\n",
    );
    eventually(
        Duration::from_secs(10),
        "the failed reload to be counted",
        || async {
            (proxy
                .metric(r#"weft_table_reloads_total{result="error"}"#)
                .await
                == 1.0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(proxy.config_dump().await["version"], "good");
    assert_eq!(get().await, 200, "the last good table still routes");
    assert_eq!(
        proxy.metric(r#"weft_table_info{version="good"}"#).await,
        1.0
    );
    let logs = proxy.logs.lock().unwrap().join("\n");
    assert!(
        logs.contains(
            "services[0].port: invalid type: string \\\"http\\\", expected u16 at line 4 column 11"
        ),
        "{logs}"
    );

    // Fixed: picked up on change, without a signal.
    dir.write(
        "mesh.yaml",
        &good.replace("version: good", "version: fixed"),
    );
    eventually(Duration::from_secs(10), "the fixed table", || async {
        (proxy.config_dump().await["version"] == "fixed").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gone_from_the_table_loses_its_series_at_a_later_reload() {
    let peer = http_peer::server("s1").await;
    let dir = TempDir::new("prune");
    let service = |name: &str| {
        format!(
            "  - name: {name}\n    port: 8080\n    endpoints:\n      - address: {}\n",
            peer.addr
        )
    };
    let both = format!(
        "version: v1\nservices:\n{}{}",
        service("echo.test"),
        service("gone.test")
    );
    let cfg = dir.write("mesh.yaml", &both);
    let proxy = Proxy::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--config-poll-interval",
        "100ms",
    ]);
    for host in ["echo.test:8080", "gone.test:8080"] {
        let rsp = http_peer::request_h1(
            proxy.addr("outbound"),
            Request::get("/id").header("host", host),
            String::new(),
        )
        .await
        .unwrap();
        assert_eq!(rsp.status(), 200);
    }
    let outbound = |text: &str, target: &str| {
        let label = format!("target=\"{target}\"");
        (text.lines())
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .filter(|l| l.contains(r#"direction="outbound""#))
            .count()
    };
    assert!(outbound(&proxy.metrics().await, "gone.test:8080") > 0);
    // Removed, then any later reload (once nothing holds the old table's handles) forgets it.
    for version in ["v2", "v3"] {
        let text = format!("version: {version}\nservices:\n{}", service("echo.test"));
        dir.write("mesh.yaml", &text);
        eventually(Duration::from_secs(10), "the reload", || async {
            (proxy.config_dump().await["version"] == version).then_some(())
        })
        .await;
    }
    let text = proxy.metrics().await;
    assert_eq!(outbound(&text, "gone.test:8080"), 0, "{text}");
    assert!(outbound(&text, "echo.test:8080") > 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let proxy = Proxy::start(&[]);
    let admin = proxy.addr("admin");
    // SIGHUP without a table file: logged, not fatal.
    proxy.signal("HUP");
    eventually(
        Duration::from_secs(10),
        "the SIGHUP to be logged",
        || async {
            let logs = proxy.logs.lock().unwrap().join("\n");
            logs.contains("no table file is configured").then_some(())
        },
    )
    .await;
    assert_eq!(proxy.get("probe", "/live").await, (200, "live\n".into()));
    assert_eq!(proxy.get("probe", "/ready").await, (200, "ready\n".into()));
    assert_eq!(
        proxy.get("admin", "/log_level").await,
        (200, "info\n".into())
    );
    let (s, b) = http_peer::simple_request(admin, "PUT", "/log_level", "weft_proxy=debug").await;
    assert_eq!((s, b.as_str()), (200, "weft_proxy=debug\n"));
    assert_eq!(
        proxy.get("admin", "/log_level").await.1,
        "weft_proxy=debug\n"
    );
    let (s, b) = http_peer::simple_request(admin, "PUT", "/log_level", "weft_proxy=loud").await;
    assert_eq!(s, 400, "{b}");
    assert!(b.starts_with("invalid log filter `weft_proxy=loud`"), "{b}");
    let dump = proxy.config_dump().await;
    assert_eq!(dump["version"], "empty");
    assert_eq!(
        dump["listeners"]["outbound"],
        proxy.addr("outbound").to_string()
    );
    assert_eq!(
        http_peer::simple_request(admin, "GET", "/shutdown", "")
            .await
            .0,
        405
    );
}

/// The log filter and format come from `WEFT_LOG` and `WEFT_LOG_FORMAT` when no flag is given:
/// the lines are JSON, debug lines of other crates are filtered out, and `/log_level` reports
/// the filter.
#[tokio::test]
async fn log_filter_and_format_from_the_environment() {
    let mut cmd = Command::new(proxy::binary());
    cmd.env("WEFT_LOG", "warn,weft_proxy=debug")
        .env("WEFT_LOG_FORMAT", "json")
        .args([
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ])
        .args(["--admin-addr", "127.0.0.1:0", "--probe-addr", "127.0.0.1:0"]);
    // The harness reads JSON lines and waits for weft_proxy's "ready": only that works here.
    let proxy = Proxy::spawn(cmd).unwrap_or_else(|(s, logs)| panic!("{s:?}: {logs:?}"));
    assert_eq!(
        proxy.get("admin", "/log_level").await,
        (200, "warn,weft_proxy=debug\n".into())
    );
    let logs = proxy.logs.lock().unwrap().clone();
    let levels: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log lines"))
        .collect();
    assert!(
        levels.iter().all(|v| v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("weft_proxy"))
            || v["level"] == "WARN"
            || v["level"] == "ERROR"),
        "{logs:?}"
    );
}

/// With a control plane, `/ready` answers 503 and says why until the first configuration has
/// arrived, then 200; `/live` answers 200 throughout.
#[tokio::test]
async fn ready_only_once_the_first_configuration_is_in() {
    // A port held bound but not listening (connections to it are refused) until the control
    // plane takes it, so that no other test can take it meanwhile.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.set_reuseaddr(true).unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let xds = reserved.local_addr().unwrap();
    let proxy = Proxy::start(&[
        "--control-plane",
        &xds.to_string(),
        "--xds-backoff-base",
        "50ms",
        "--xds-backoff-max",
        "200ms",
    ]);
    assert_eq!(proxy.get("probe", "/live").await, (200, "live\n".into()));
    let waiting = (
        503,
        "waiting for the first configuration from the control plane\n".to_string(),
    );
    assert_eq!(proxy.get("probe", "/ready").await, waiting);
    // Still waiting once the proxy has tried the control plane again.
    eventually(
        Duration::from_secs(10),
        "a second attempt at the control plane",
        || async {
            let logs = proxy.logs.lock().unwrap();
            let failed = logs
                .iter()
                .filter(|l| l.contains("xDS stream ended"))
                .count();
            (failed >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(proxy.get("probe", "/ready").await, waiting);
    let dir = TempDir::new("ready-cp");
    drop(reserved);
    let _cp = mesh::control_plane(&dir, &["--xds-addr", &xds.to_string()]);
    eventually(
        Duration::from_secs(10),
        "the proxy to be ready once the control plane answers",
        || async { (proxy.get("probe", "/ready").await == (200, "ready\n".into())).then_some(()) },
    )
    .await;
    assert_eq!(proxy.get("probe", "/live").await, (200, "live\n".into()));
}

#[test]
fn mutual_tls_settings_that_cannot_work_stop_the_start_and_say_why() {
    let dir = TempDir::new("mtls-config");
    let missing = dir.0.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let cases: [(&[&str], String); 4] = [
        (
            &[
                "--identity",
                "ca",
                "--identity-token-file",
                missing,
                "--control-plane",
                "http://10.1.2.3:15010",
            ],
            "the CA at `http://10.1.2.3:15010` is not https://: the identity token would cross the network in the clear".into(),
        ),
        (
            &["--control-plane", "https://127.0.0.1:1"],
            "`https://127.0.0.1:1` is TLS: give the mesh trust bundle to verify it (--trust-bundle)"
                .into(),
        ),
        (
            &["--trust-bundle", missing],
            format!("--trust-bundle: {missing}: No such file"),
        ),
        (
            &[
                "--identity",
                "files",
                "--identity-cert",
                missing,
                "--identity-key",
                missing,
                "--identity-bundle",
                missing,
            ],
            format!("identity: {missing}: No such file"),
        ),
    ];
    for (args, want) in cases {
        let (code, stderr) = run_to_exit(args, &[]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(&want), "{want} not in {stderr}");
    }
}

#[test]
fn an_admin_server_off_loopback_stops_the_start() {
    let (code, stderr) = run_to_exit(&["--admin-addr", "0.0.0.0:0"], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--admin-addr 0.0.0.0:0: the admin server can stop the proxy"),
        "{stderr}"
    );
}
