use super::data_plane::parse_port_mode;
use super::*;

#[test]
fn downward_api_labels_file() {
    // As the kubelet writes it: sorted keys, Go-quoted values.
    let text = "app=\"web\"\npod-template-hash=\"5d8f7c9b4\"\nteam=\"a \\\"b\\\" \\u00e9\\\\\"\n";
    let got = parse_labels_file(text).unwrap();
    assert_eq!(
        got,
        vec![
            ("app".to_string(), "web".to_string()),
            ("pod-template-hash".to_string(), "5d8f7c9b4".to_string()),
            ("team".to_string(), "a \"b\" é\\".to_string()),
        ]
    );
    let err = parse_labels_file("app=web\n").unwrap_err();
    assert!(
        err.contains("line 1") && err.contains("double quotes"),
        "{err}"
    );
    let err = parse_labels_file("ok=\"1\"\nx=\"\\q\"").unwrap_err();
    assert!(err.contains("line 2") && err.contains("escape"), "{err}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
    assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    let err = parse_duration("10 parsecs").unwrap_err();
    assert!(err.contains("unknown unit"), "{err}");
    assert!(
        parse_duration("fast")
            .unwrap_err()
            .contains("expected a duration")
    );
}

#[test]
fn inbound_modes_per_port_override_the_proxy_default() {
    let cli = Cli::parse_from([
        "weft-proxy",
        "--identity",
        "files",
        "--identity-cert",
        "c",
        "--identity-key",
        "k",
        "--identity-bundle",
        "b",
        "--inbound-mtls",
        "strict",
        "--inbound-mtls-port",
        "9090=permissive",
        "--inbound-mtls-port",
        "8443=DISABLE",
    ]);
    let m = &cli.run.mtls;
    assert_eq!(m.mode_for(8080), InboundMode::Strict);
    assert_eq!(m.mode_for(9090), InboundMode::Permissive);
    assert_eq!(m.mode_for(8443), InboundMode::Disable);
    let none = Cli::parse_from(["weft-proxy", "--inbound-mtls", "strict"]);
    assert_eq!(
        none.run.mtls.mode_for(8080),
        InboundMode::Disable,
        "no identity, no mutual TLS"
    );
    assert!(parse_port_mode("9090").unwrap_err().contains("PORT=MODE"));
    assert!(
        parse_port_mode("0=strict")
            .unwrap_err()
            .contains("not a port")
    );
    assert!(
        parse_port_mode("9090=lax")
            .unwrap_err()
            .contains("not strict, permissive or disable")
    );
    let err = Cli::try_parse_from(["weft-proxy", "--identity", "ca"]).unwrap_err();
    assert!(err.to_string().contains("--identity-token-file"), "{err}");
}

#[test]
fn tcp_mappings() {
    let m = parse_tcp_mapping("127.0.0.1:16000=DB.default:5432").unwrap();
    assert_eq!(m.listen, "127.0.0.1:16000".parse().unwrap());
    assert_eq!(m.service, "db.default:5432");
    assert!(
        parse_tcp_mapping("db:5432")
            .unwrap_err()
            .contains("LISTEN_ADDR=SERVICE")
    );
    assert!(
        parse_tcp_mapping("nowhere=db")
            .unwrap_err()
            .contains("not a socket address")
    );
}

/// The variables the injector writes (`weft_core::contract`) are each read by a flag.
#[test]
fn every_variable_the_injector_writes_is_read_by_a_flag() {
    use clap::CommandFactory;
    let cli = Cli::command();
    let envs: Vec<String> = std::iter::once(&cli)
        .chain(cli.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .filter_map(|a| a.get_env()?.to_str().map(String::from))
        .collect();
    for name in weft_core::contract::ALL {
        assert!(
            envs.iter().any(|e| e == name),
            "the injector writes {name}, which no flag reads"
        );
    }
}

/// Every flag of every subcommand has a `WEFT_*` variable, and the configuration reference
/// has a row for it, in its command's section, naming the variable and the default.
#[test]
fn every_flag_has_an_env_variable_and_is_documented() {
    use clap::CommandFactory;
    let doc = include_str!("../../../docs/configuration.md");
    let section = |heading: &str| {
        let start = doc.find(heading).expect(heading) + heading.len();
        let len = doc[start..].find("\n## ").unwrap_or(doc.len() - start);
        &doc[start..start + len]
    };
    let cli = Cli::command();
    let mut commands = vec![(section("\n## Flags\n"), cli.clone())];
    for sub in cli.get_subcommands() {
        let heading = format!("\n## `weft-proxy {}`\n", sub.get_name());
        commands.push((section(&heading), sub.clone()));
    }
    let mut missing = Vec::new();
    for (text, cmd) in commands {
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let flag = format!("{} --{long}", cmd.get_name());
            let row = text.lines().find(|l| {
                l.starts_with(&format!("| `--{long}`")) || l.starts_with(&format!("| `--{long} "))
            });
            let Some(row) = row else {
                missing.push(format!("{flag}: no row in its section of configuration.md"));
                continue;
            };
            match arg.get_env().and_then(|e| e.to_str()) {
                Some(env) if env.starts_with("WEFT_") => {
                    if !row.contains(&format!("`{env}`")) {
                        missing.push(format!("{flag}: its row does not name {env}"));
                    }
                }
                _ => missing.push(format!("{flag}: no WEFT_* variable")),
            }
            // Switches default to off; every other default is written as it is given.
            let default_column = row.split(" | ").nth(2).unwrap_or("");
            if arg.get_action().takes_values() {
                for d in arg.get_default_values() {
                    let d = d.to_string_lossy();
                    if !default_column.contains(&format!("`{d}`")) {
                        missing.push(format!("{flag}: default `{d}` not in `{default_column}`"));
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn defaults_match_the_documented_ports() {
    let cfg = Cli::parse_from(["weft-proxy"]).run;
    assert_eq!(cfg.outbound_addr.port(), 15001);
    assert_eq!(cfg.inbound_addr.port(), 15006);
    assert_eq!(cfg.admin_addr, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(cfg.probe_addr.port(), 15020);
    assert_eq!(cfg.detect.detect_timeout, Duration::from_secs(10));
    assert_eq!(cfg.discovery.xds_protocol, XdsProtocol::Delta);
    assert!(cfg.discovery.ready_requires_config);
}

#[test]
fn a_captured_pod_with_ipv6_listens_for_both_families() {
    let parse = |args: &[&str]| {
        let mut cfg = Cli::parse_from([&["weft-proxy"], args].concat()).run;
        cfg.listen_for_ipv6(true);
        (cfg.outbound_addr_v6, cfg.inbound_addr)
    };
    assert_eq!(
        parse(&["--capture"]),
        (
            Some("[::1]:15001".parse().unwrap()),
            "[::]:15006".parse().unwrap()
        )
    );
    // Without capture, or with addresses given, nothing changes.
    assert_eq!(parse(&[]), (None, "0.0.0.0:15006".parse().unwrap()));
    assert_eq!(
        parse(&["--capture", "--inbound-addr", "10.0.0.5:15006"]),
        (
            Some("[::1]:15001".parse().unwrap()),
            "10.0.0.5:15006".parse().unwrap()
        )
    );
    let mut cfg = Cli::parse_from(["weft-proxy", "--capture"]).run;
    cfg.listen_for_ipv6(false);
    assert_eq!(cfg.outbound_addr_v6, None);
    assert_eq!(cfg.inbound_addr, "0.0.0.0:15006".parse().unwrap());
}

#[test]
fn node_identity_and_conflicts() {
    let cfg = Cli::parse_from([
        "weft-proxy",
        "--control-plane=127.0.0.1:15010",
        "--pod-name=web-0",
        "--pod-namespace=shop",
        "--node-label=version=v2,app=web",
    ])
    .run;
    assert_eq!(cfg.discovery.node_id(), "web-0.shop");
    assert_eq!(
        cfg.discovery.node_labels,
        [
            ("version".into(), "v2".into()),
            ("app".into(), "web".into())
        ]
    );
    let err = Cli::try_parse_from(["weft-proxy", "--config=t.yaml", "--control-plane=x:1"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be used with"), "{err}");
    let cfg = Cli::parse_from([
        "weft-proxy",
        "--register=web:8080",
        "--register-address=10.0.0.5:15006",
    ])
    .run;
    assert_eq!(
        cfg.register.register,
        Some(RegisterTarget {
            service: "web".into(),
            port: 8080
        })
    );
    let err = Cli::try_parse_from(["weft-proxy", "--register=web:8080"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--register-address"), "{err}");
    let err = Cli::try_parse_from([
        "weft-proxy",
        "--register=Web.x:80",
        "--register-address=10.0.0.5:1",
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("a service name is"), "{err}");
    let err = Cli::try_parse_from(["weft-proxy", "--node-label=v2"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected KEY=VALUE"), "{err}");
}
