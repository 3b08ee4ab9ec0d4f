//! The invariants of `properties.rs` on generated inputs, shaped to reach past the first
//! checks (plausible request lines, YAML that is nearly a table, resources that decode).

use proptest::prelude::*;

use super::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Connection openings: a plausible start of each protocol, or anything, then anything.
fn opening() -> impl Strategy<Value = Vec<u8>> {
    let start = prop_oneof![
        Just(b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec()),
        Just(b"POST /x HTTP/1.0\r\n".to_vec()),
        Just(b"GET /".to_vec()),
        Just(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        Just(b"PRI * HTTP/2".to_vec()),
        Just(vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
        Just(vec![0x16]),
        Just(Vec::new()),
    ];
    (start, bytes(256)).prop_map(|(mut s, tail)| {
        s.extend(tail);
        s
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn detection_agrees_with_the_bytes(data in opening()) {
        detection(&data);
    }

    #[test]
    fn grpc_timeouts_round_trip_never_longer(
        value in prop_oneof![
            "[0-9]{0,10}[HMSmun]?".prop_map(String::into_bytes),
            bytes(12),
        ],
        nanos in any::<u64>(),
    ) {
        grpc_timeout(&value, nanos);
    }

    #[test]
    fn small_parsers_parse_or_refuse(text in prop_oneof![
        "[0-9a-z.:\\[\\]-]{0,30}",
        "[0-9]{1,20}(ms|s|m|h|d|us)?",
        "([a-z-]{1,8}=\"[^\"\\\\]{0,8}\"\n){0,4}",
        ".{0,40}",
    ]) {
        small_parsers(&text);
    }

}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn balancers_stay_bounded(weights in prop::collection::vec(
        prop_oneof![Just(0u32), Just(1), Just(u32::MAX), 1..10u32, any::<u32>()],
        0..80,
    )) {
        balancer(&weights);
    }
}

/// Header names that matter to the handling, and any token.
fn header_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
            "host",
            "content-length",
            "x-weft-peer-identity",
            "x_weft-orig_proto",
            "X-Weft-Anything",
            "x-wefts",
            "expect",
            "grpc-timeout",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "[a-zA-Z0-9_-]{1,12}".prop_map(String::into_bytes),
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "close",
            "keep-alive, x-a",
            "Upgrade",
            "upgrade, te",
            "host, content-length",
            "chunked",
            "trailers",
            "TRAILERS",
            "websocket",
            "100-continue",
            "b.test:8080",
            "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        bytes(16),
    ]
}

fn raw_request() -> impl Strategy<Value = RawRequest> {
    (
        any::<bool>(),
        prop::sample::select(vec!["GET", "POST", "HEAD", "CONNECT", "OPTIONS", "X-Y"]),
        prop::sample::select(vec![
            "/",
            "/a?b=c",
            "http://a.test/x?q=1",
            "https://b.test:8443/",
            "a.test:80",
            "*",
            "http://[::1]:8080/p",
        ]),
        prop::collection::vec((header_name(), header_value()), 0..8),
        any::<bool>(),
    )
        .prop_map(|(http2, method, uri, headers, upgrade)| RawRequest {
            http2,
            method: method.into(),
            uri: uri.into(),
            headers,
            upgrade,
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn prepared_requests_carry_no_hop_by_hop_or_reserved_field(raw in raw_request()) {
        request_preparation(&raw);
    }
}

/// YAML that is a routing table or close to one: fields with plausible and implausible values.
fn table_text() -> impl Strategy<Value = String> {
    let name = prop_oneof!["[a-z][a-z0-9.-]{0,10}", "[A-Za-z0-9 _.:-]{0,10}"];
    let port = prop_oneof![Just(0u32), Just(80), Just(65535), Just(65536), any::<u32>()];
    let addr = prop_oneof![
        (any::<u8>(), any::<u16>()).prop_map(|(o, p)| format!("10.0.0.{o}:{p}")),
        "[a-z.]{1,8}:[0-9]{1,6}",
        "[0-9a-z:\\[\\]]{0,12}",
    ];
    let duration = prop_oneof![
        "[0-9]{1,12}(ms|s|m|h)",
        "[a-z0-9]{0,6}",
        Just("-1s".to_string())
    ];
    let weight = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::from(u32::MAX) + 1),
        any::<u32>().prop_map(u64::from)
    ];
    let lb = prop::sample::select(vec![
        "round-robin",
        "ring-hash",
        "p2c-ewma",
        "random",
        "least-request",
        "nope",
    ]);
    (
        name,
        port,
        prop::collection::vec((addr, weight), 0..4),
        duration,
        lb,
        any::<bool>(),
        0..6u32,
    )
        .prop_map(|(name, port, eps, duration, lb, protocol_tcp, retries)| {
            let endpoints: Vec<String> = eps
                .iter()
                .map(|(a, w)| format!("      - {{address: '{a}', weight: {w}}}\n"))
                .collect();
            let protocol = if protocol_tcp { "tcp" } else { "http" };
            format!(
                "services:\n  - name: '{name}'\n    port: {port}\n    protocol: {protocol}\n    \
                 loadBalancer: {{policy: {lb}, hash: {{header: x-user}}}}\n    endpoints:\n{}    \
                 routes:\n      - timeout: {duration}\n        retry: {{attempts: {retries}, perTryTimeout: {duration}}}\n",
                endpoints.concat()
            )
        })
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn table_files_load_or_are_refused_by_name(text in prop_oneof![table_text(), ".{0,60}"]) {
        table_file(&text);
    }
}

fn xds_body() -> impl Strategy<Value = XdsBody> {
    let built = (
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            "[a-z:0-9]{0,6}"
        ],
        prop_oneof![
            Just("10.0.0.1".to_string()),
            Just("::1".to_string()),
            "[a-z0-9.]{0,8}"
        ],
        prop_oneof![Just(0u32), Just(8080), Just(70000), any::<u32>()],
        prop_oneof![Just(0u32), Just(1), Just(u32::MAX)],
        "[a-z]{0,4}",
    )
        .prop_map(|(name, address, port, weight, other)| XdsBody::Built {
            name,
            address,
            port,
            weight,
            other,
        });
    prop_oneof![4 => built, 1 => bytes(24).prop_map(XdsBody::Raw)]
}

fn xds_step() -> impl Strategy<Value = XdsStep> {
    let resource = (
        prop::option::of(prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            "[a-z]{0,3}"
        ]),
        prop_oneof![6 => Just(0u8), 1 => Just(1), 1 => Just(2)],
        xds_body(),
    )
        .prop_map(|(name, type_sel, body)| XdsResource {
            name,
            type_sel,
            body,
        });
    (
        0..4u8,
        any::<bool>(),
        prop::collection::vec(resource, 0..5),
        prop::collection::vec(
            prop_oneof![Just("a".to_string()), Just("b".to_string())],
            0..2,
        ),
    )
        .prop_map(|(kind, full, resources, removed)| XdsStep {
            kind,
            full,
            resources,
            removed,
        })
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn xds_updates_never_lose_good_resources(steps in prop::collection::vec(xds_step(), 1..8)) {
        xds_updates(&steps);
    }
}

fn dns_query() -> impl Strategy<Value = Vec<u8>> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };
    let built = (
        any::<u16>(),
        prop_oneof![
            Just("echo.test.".to_string()),
            Just("ECHO.test".to_string()),
            "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}\\.?",
        ],
        prop::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::TXT]),
    )
        .prop_filter_map("a name", |(id, name, rtype)| {
            let mut m = Message::new();
            m.set_id(id)
                .add_query(Query::query(Name::from_ascii(&name).ok()?, rtype));
            m.to_vec().ok()
        });
    prop_oneof![built, bytes(80)]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn dns_answers_are_responses_to_the_query(query in dns_query()) {
        dns_answer(&query);
    }
}
