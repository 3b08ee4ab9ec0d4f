use super::*;
use clap::Parser;

#[derive(Parser)]
struct T {
    #[command(flatten)]
    init: InitConfig,
}

fn cfg(args: &[&str]) -> InitConfig {
    T::parse_from(std::iter::once("init").chain(args.iter().copied())).init
}

#[test]
fn the_default_rules_capture_all_tcp_but_the_proxy_loopback_and_the_probe_port() {
    let r = rules(&cfg(&[]), Family::V4).unwrap();
    assert_eq!(
        r,
        "*nat
:WEFT_INBOUND - [0:0]
:WEFT_IN_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_REDIRECT - [0:0]
:WEFT_DNS - [0:0]
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A WEFT_INBOUND -p tcp --dport 15020 -j RETURN
-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT
-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTPUT -p tcp -j WEFT_REDIRECT
-A PREROUTING -p tcp -j WEFT_INBOUND
-A OUTPUT -p tcp -j WEFT_OUTPUT
COMMIT
"
    );
}

#[test]
fn exclusions_inclusions_and_dns_become_rules_per_family() {
    let c = cfg(&[
        "--inbound-ports",
        "8080,9090",
        "--exclude-inbound-ports",
        "22,15020",
        "--exclude-outbound-ports",
        "5432",
        "--exclude-outbound-cidrs",
        "169.254.169.254/32,fd00::/8",
        "--include-outbound-cidrs",
        "10.0.0.0/8",
        "--redirect-dns",
        "--proxy-uid",
        "1337",
    ]);
    let v4 = rules(&c, Family::V4).unwrap();
    for line in [
        "-A WEFT_INBOUND -p tcp --dport 15020 -j RETURN\n-A WEFT_INBOUND -p tcp --dport 22 -j RETURN\n-A WEFT_INBOUND -p tcp --dport 8080 -j WEFT_IN_REDIRECT\n-A WEFT_INBOUND -p tcp --dport 9090 -j WEFT_IN_REDIRECT\n",
        "-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN\n",
        "-A WEFT_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053\n",
        "-A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN\n",
        "-A WEFT_OUTPUT -d 169.254.169.254/32 -j RETURN\n",
        "-A WEFT_OUTPUT -p tcp -d 10.0.0.0/8 -j WEFT_REDIRECT\n",
        "-A WEFT_DNS -m owner --uid-owner 1337 -j RETURN\n-A WEFT_DNS -p udp -j REDIRECT --to-ports 15053\n",
        "-A OUTPUT -p udp --dport 53 -j WEFT_DNS\n",
    ] {
        assert!(v4.contains(line), "missing {line:?} in\n{v4}");
    }
    assert!(!v4.contains("fd00::/8"), "IPv6 blocks stay out of iptables");
    assert!(!v4.contains("-A WEFT_OUTPUT -p tcp -j WEFT_REDIRECT"));
    let v6 = rules(&c, Family::V6).unwrap();
    assert!(v6.contains("-A WEFT_OUTPUT -d ::1/128 -j RETURN\n"), "{v6}");
    assert!(
        v6.contains("-A WEFT_OUTPUT -d fd00::/8 -j RETURN\n"),
        "{v6}"
    );
    assert!(!v6.contains("169.254"), "{v6}");
}

#[test]
fn bad_values_are_named() {
    assert_eq!(
        rules(&cfg(&["--inbound-ports", "80,http"]), Family::V4)
            .unwrap_err()
            .to_string(),
        "--inbound-ports: `http` is not a port (or use `*`)"
    );
    assert!(parse_cidr("10.0.0.0/33").unwrap_err().contains("0 to 32"));
    assert!(
        parse_cidr("ten")
            .unwrap_err()
            .contains("not an address block")
    );
    assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
}
