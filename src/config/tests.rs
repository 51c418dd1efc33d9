//! Tests of the configuration: defaults, every key's accepted and refused values, and errors
//! that name the key, the file, the line.

use super::text::ParseText;
use super::units::MAX_DURATION;
use super::*;

fn error(text: &str) -> ConfigError {
    match Config::from_toml(text) {
        Ok(config) => panic!("accepted {text:?}: {config:?}"),
        Err(error) => error,
    }
}

/// Asserts that `text` is refused with an error on `key` whose message contains `needle`.
fn assert_refused(text: &str, key: &str, needle: &str) {
    let error = error(text);
    let shown = error.to_string();
    assert_eq!(error.key(), Some(key), "wrong key in {shown:?}");
    assert!(shown.starts_with(&format!("{key}: ")), "{shown:?}");
    assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    assert!(!shown.contains('\n'), "{shown:?} is more than one line");
}

#[test]
fn relay_offload_takes_auto_off_on_and_nothing_else() {
    assert_eq!(Config::from_toml("").unwrap().relay.offload, Offload::Auto);
    for (text, wanted) in [
        ("auto", Offload::Auto),
        ("off", Offload::Off),
        ("on", Offload::On),
    ] {
        let config = Config::from_toml(&format!("[relay]\noffload = \"{text}\"")).unwrap();
        assert_eq!(config.relay.offload, wanted);
        assert_eq!(config.relay.offload.to_string(), text);
    }
    let long = format!("[relay]\noffload = \"{}\"", "x".repeat(100_000));
    for (text, needle) in [
        (
            "[relay]\noffload = \"yes\"",
            "invalid value \"yes\", expected \"auto\", \"off\" or \"on\"",
        ),
        ("[relay]\noffload = \"ON\"", "invalid value \"ON\""),
        ("[relay]\noffload = \"\"", "invalid value \"\""),
        ("[relay]\noffload = true", "invalid type: boolean `true`"),
        ("[relay]\noffload = 1", "invalid type: integer `1`"),
        ("[relay]\noffload = [\"on\"]", "invalid type: sequence"),
        // Quoted only in part: an error line stays short.
        (long.as_str(), "invalid value \"xxxxxxxxxx"),
    ] {
        assert_refused(text, "relay.offload", needle);
    }
    let repeated = error("[relay]\noffload = \"on\"\noffload = \"off\"").to_string();
    assert!(repeated.contains("duplicate key"), "{repeated:?}");
}

#[test]
fn relay_tcp_is_a_boolean_off_by_default() {
    assert!(!Config::from_toml("").unwrap().relay.tcp);
    assert!(Config::from_toml("[relay]\ntcp = true").unwrap().relay.tcp);
    assert!(!Config::from_toml("[relay]\ntcp = false").unwrap().relay.tcp);
    for (text, needle) in [
        ("[relay]\ntcp = \"yes\"", "invalid type: string \"yes\""),
        ("[relay]\ntcp = 1", "invalid type: integer `1`"),
    ] {
        assert_refused(text, "relay.tcp", needle);
    }
    let repeated = error("[relay]\ntcp = true\ntcp = false").to_string();
    assert!(repeated.contains("duplicate key"), "{repeated:?}");
    // A CONNECTION-ID names its worker in one byte: at most 256 workers relay TCP.
    assert_eq!(
        Config::from_toml("workers = 256\n[relay]\ntcp = true")
            .unwrap()
            .workers,
        256
    );
    assert_eq!(Config::from_toml("workers = 1024").unwrap().workers, 1024);
    assert_refused(
        "workers = 257\n[relay]\ntcp = true",
        "workers",
        "[relay] tcp",
    );
}

/// Asserts that the `[limits]` key `key` (`limits.<name>`) refuses, naming itself, values
/// that are not a u32, and a second occurrence of itself.
fn assert_limits_u32_refuses_what_is_not_one(key: &str) {
    let name = key.strip_prefix("limits.").expect("a [limits] key");
    for (value, needle) in [
        ("-1", "invalid value: integer `-1`, expected u32"),
        (
            "4294967296",
            "invalid value: integer `4294967296`, expected u32",
        ),
        ("2.5", "invalid type: floating point `2.5`, expected u32"),
        ("\"20\"", "invalid type: string \"20\", expected u32"),
        ("true", "invalid type: boolean `true`, expected u32"),
        ("[20]", "invalid type: sequence, expected u32"),
        ("{}", "invalid type: map, expected u32"),
    ] {
        assert_refused(&format!("[limits]\n{name} = {value}"), key, needle);
    }
    assert!(
        error(&format!("[limits]\n{name} = 5\n{name} = 6"))
            .to_string()
            .contains("duplicate key"),
    );
}

#[test]
fn limits_parse_with_units_and_defaults() {
    let config = Config::from_toml(
        "[limits]\nuser-allocations = 2\nallocation-bandwidth = \"1.5 Mbps\"\n\
         user-bandwidth = \"500 kbps\"\nstream-idle-timeout = \"2s\"\n\
         unauthenticated-rate = 0",
    )
    .unwrap();
    assert_eq!(config.limits.user_allocations, 2);
    assert_eq!(config.limits.allocation_bandwidth, Bandwidth(1_500_000));
    assert_eq!(
        config.limits.user_bandwidth.bits_per_second(),
        Some(500_000)
    );
    assert_eq!(config.limits.stream_idle_timeout, Duration::from_secs(2));
    assert_eq!(config.limits.unauthenticated_rate, 0);
    assert_eq!(config.limits.channels_per_allocation, 64);
    assert_eq!(Config::default().limits.user_allocations, 10);
    assert_eq!(
        Config::default()
            .limits
            .allocation_bandwidth
            .bits_per_second(),
        None
    );
    for (text, bits) in [
        ("0", 0),
        ("1 Gbps", 1_000_000_000),
        ("64kbps", 64_000),
        ("8 bps", 8),
    ] {
        assert_eq!(Bandwidth::parse_text(text), Ok(Bandwidth(bits)), "{text}");
    }
}

#[test]
fn bad_limits_are_named() {
    assert_refused(
        "[limits]\nallocation-bandwidth = \"2 MB\"",
        "limits.allocation-bandwidth",
        "invalid bandwidth",
    );
    assert_refused(
        "[limits]\nuser-bandwidth = \"5\"",
        "limits.user-bandwidth",
        "invalid bandwidth",
    );
    assert_refused(
        "[limits]\npermissions-per-allocation = 0",
        "limits.permissions-per-allocation",
        "at least 1",
    );
    assert_refused(
        "[limits]\nstream-idle-timeout = \"0s\"",
        "limits.stream-idle-timeout",
        "minimum",
    );
    assert_refused(
        "[limits]\nuser-allocation = 3",
        "limits.user-allocation",
        "unknown field",
    );
}

#[test]
fn max_tcp_connections_per_source() {
    let limits = |text: &str| Config::from_toml(text).unwrap().limits;
    assert_eq!(Config::default().limits.max_tcp_connections_per_source, 256);
    assert_eq!(
        limits("[limits]\nmax-tcp-connections-per-source = 20").max_tcp_connections_per_source,
        20
    );
    // 0 turns the cap off.
    assert_eq!(
        limits("[limits]\nmax-tcp-connections-per-source = 0").max_tcp_connections_per_source,
        0
    );
    // Above max-tcp-connections is allowed (the node-wide cap is reached first): a node
    // configured for fewer connections than the default per-source cap stays valid.
    let small = limits("[limits]\nmax-tcp-connections = 100");
    assert_eq!(
        (
            small.max_tcp_connections,
            small.max_tcp_connections_per_source
        ),
        (100, 256)
    );
    let key = "limits.max-tcp-connections-per-source";
    assert_limits_u32_refuses_what_is_not_one(key);
    assert_refused(
        "[limits]\nmax-tcp-connection-per-source = 5",
        "limits.max-tcp-connection-per-source",
        "unknown field",
    );
}

#[test]
fn the_reflection_budget() {
    let limits = |text: &str| Config::from_toml(text).unwrap().limits;
    let defaults = Config::default().limits;
    assert_eq!(
        (
            defaults.unauthenticated_rate,
            defaults.unauthenticated_burst,
            defaults.unauthenticated_node_rate
        ),
        (20, 2000, 10_000)
    );
    let set = limits(
        "[limits]\nunauthenticated-rate = 5\nunauthenticated-burst = 1\n\
         unauthenticated-node-rate = 0",
    );
    assert_eq!(
        (
            set.unauthenticated_rate,
            set.unauthenticated_burst,
            set.unauthenticated_node_rate
        ),
        (5, 1, 0)
    );
    // The largest values are taken (and mean: as good as unlimited).
    let huge = limits(
        "[limits]\nunauthenticated-rate = 4294967295\nunauthenticated-burst = 4294967295\n\
         unauthenticated-node-rate = 4294967295",
    );
    assert_eq!(huge.unauthenticated_burst, u32::MAX);
    assert_refused(
        "[limits]\nunauthenticated-burst = 0",
        "limits.unauthenticated-burst",
        "at least 1",
    );
    for key in [
        "unauthenticated-rate",
        "unauthenticated-burst",
        "unauthenticated-node-rate",
    ] {
        assert_limits_u32_refuses_what_is_not_one(&format!("limits.{key}"));
    }
    assert_refused(
        "[limits]\nunauthenticated-bursts = 5",
        "limits.unauthenticated-bursts",
        "unknown field",
    );
}

#[test]
fn redis_section() {
    let config = Config::from_toml(
        "[redis]\nurl = \"redis://:hunter2@127.0.0.1:6379/0\"\nschema = \"coturn\"\nstale-for = \"30s\"",
    )
    .unwrap();
    let redis = config.redis.unwrap();
    assert_eq!(redis.schema, RedisSchema::Coturn);
    assert_eq!(redis.prefix, "turnpike");
    assert_eq!(redis.stale_for, Duration::from_secs(30));
    let shown = format!("{redis:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("redis://<redacted>@127.0.0.1:6379/0"),
        "{shown}"
    );
    assert_eq!(Config::default().redis, None);
    assert_refused(
        "[redis]\nurl = \"http://x\"",
        "redis.url",
        "invalid Redis URL",
    );
    let secret_in_error = error("[redis]\nurl = \"mysql://:hunter2@h\"").to_string();
    assert!(!secret_in_error.contains("hunter2"), "{secret_in_error}");
    assert_refused(
        "[redis]\nurl = \"redis://h\"\nschema = \"etcd\"",
        "redis.schema",
        "unknown variant",
    );
    assert_refused(
        "[redis]\nurl = \"redis://h\"\nprefix = \"\"",
        "redis.prefix",
        "non-empty",
    );
}

#[test]
fn http_section() {
    let config = Config::from_toml(
        "[http]\ntoken = \"0123456789abcdef0123\"\nice-urls = [\"turn:t.example.com:3478?transport=udp\"]",
    )
    .unwrap();
    let http = config.http.unwrap();
    assert_eq!(http.address, "127.0.0.1:9641".parse().unwrap());
    assert!(!format!("{http:?}").contains("0123456789abcdef"));
    // Without a token only on a loopback address (one is made at start).
    for loopback in ["127.0.0.1:1", "127.0.0.53:9641", "[::1]:9641"] {
        let config = Config::from_toml(&format!("[http]\naddress = \"{loopback}\"")).unwrap();
        assert_eq!(config.http.unwrap().token, None, "{loopback}");
    }
    assert_eq!(
        Config::from_toml("[http]").unwrap().http.unwrap().token,
        None
    );
    for elsewhere in [
        "0.0.0.0:9641",
        "[::]:9641",
        "192.0.2.7:9641",
        "[::ffff:127.0.0.1]:9641",
    ] {
        assert_refused(
            &format!("[http]\naddress = \"{elsewhere}\""),
            "http.token",
            "is required when http.address",
        );
    }
    assert_refused("[http]\ntoken = \"\"", "http.token", "at least 16");
    assert_refused("[http]\ntoken = \"short\"", "http.token", "at least 16");
    assert_refused(
        "[http]\ntoken = \"0123456789abcdef0123\"\nice-urls = [\"http://x\"]",
        "http.ice-urls[0]",
        "not a STUN/TURN URI",
    );
}

#[test]
fn http_connection_caps() {
    const HTTP: &str = "[http]\ntoken = \"0123456789abcdef0123\"\n";
    let http = Config::from_toml(HTTP).unwrap().http.unwrap();
    assert_eq!(http.max_connections, 256);
    assert_eq!(http.max_connections_per_source, 32);
    let http = Config::from_toml(&format!(
        "{HTTP}max-connections = 1000\nmax-connections-per-source = 1000"
    ))
    .unwrap()
    .http
    .unwrap();
    assert_eq!(
        (http.max_connections, http.max_connections_per_source),
        (1000, 1000)
    );
    // A cap below the default per-source cap lowers it.
    let http = Config::from_toml(&format!("{HTTP}max-connections = 8"))
        .unwrap()
        .http
        .unwrap();
    assert_eq!(
        (http.max_connections, http.max_connections_per_source),
        (8, 8)
    );
    assert_refused(
        &format!("{HTTP}max-connections = 0"),
        "http.max-connections",
        "at least 1",
    );
    assert_refused(
        &format!("{HTTP}max-connections-per-source = 0"),
        "http.max-connections-per-source",
        "at least 1",
    );
    assert_refused(
        &format!("{HTTP}max-connections = 10\nmax-connections-per-source = 11"),
        "http.max-connections-per-source",
        "more than http.max-connections (10)",
    );
    assert_refused(
        &format!("{HTTP}max-connections = -1"),
        "http.max-connections",
        "invalid value",
    );
    assert_refused(
        &format!("{HTTP}max-connections = \"many\""),
        "http.max-connections",
        "invalid type",
    );
}

#[test]
fn operations_keys() {
    let config = Config::from_toml(
        "drain-timeout = \"5s\"\n[log]\nlevel = \"turnpike=debug,info\"\nredact = true\n\
         [http]\ntoken = \"0123456789abcdef0123\"\npublic-metrics = true",
    )
    .unwrap();
    assert_eq!(config.drain_timeout, Duration::from_secs(5));
    assert!(config.log.redact);
    assert!(config.http.unwrap().public_metrics);
    assert_eq!(Config::default().drain_timeout, Duration::from_secs(60));
    assert_refused("[log]\nlevel = \"loud[\"", "log.level", "invalid level");
    assert_refused("drain-timeout = \"0s\"", "drain-timeout", "minimum");
}

#[test]
fn empty_text_gives_the_defaults() {
    let config = Config::from_toml("").unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.realm, "turnpike.local");
    assert_eq!(config.software, "turnpike");
    assert_eq!(config.workers, 0);
    let udp = "udp 0.0.0.0:3478";
    let tcp = "tcp 0.0.0.0:3478";
    let listen: Vec<String> = config.listen.iter().map(ToString::to_string).collect();
    assert_eq!(listen, [udp, tcp]);
    assert_eq!(config.tls, None);
    assert_eq!(config.relay.address, None);
    assert_eq!(config.relay.address_v6, None);
    assert_eq!(config.relay.public_address, None);
    assert_eq!(config.relay.ports.to_string(), "49152-65535");
    assert_eq!(config.relay.default_lifetime, Duration::from_secs(600));
    assert_eq!(config.relay.max_lifetime, Duration::from_secs(3600));
    assert_eq!(config.auth.nonce_lifetime, Duration::from_secs(600));
    assert_eq!(config.auth.max_rest_ttl, Duration::from_secs(86_400));
    assert!(config.auth.secrets.is_empty());
    assert!(config.auth.users.is_empty());
    assert!(config.peers.allow.is_empty());
    assert!(config.peers.deny.is_empty());
}

#[test]
fn empty_sections_give_the_defaults() {
    let text = "[relay]\n[auth]\n[peers]\n";
    assert_eq!(Config::from_toml(text).unwrap(), Config::default());
}

#[test]
fn full_file_parses() {
    let text = r#"
            realm = "example.org"
            software = ""
            workers = 4

            [[listen]]
            transport = "udp"
            address = "0.0.0.0:3478"

            [[listen]]
            transport = "tls"
            address = "[::]:5349"

            [tls]
            certificate = "/etc/turnpike/cert.pem"
            private-key = "/etc/turnpike/key.pem"

            [relay]
            address = "203.0.113.7"
            address-v6 = "2001:db8::7"
            public-address = "198.51.100.9"
            ports = "50000-50100"
            default-lifetime = "5m"
            max-lifetime = "2h"

            [auth]
            secrets = ["s1", "s2"]
            nonce-lifetime = "30s"
            max-rest-ttl = "12h"

            [[auth.users]]
            name = "demo"
            password = "demo"

            [[auth.users]]
            name = "keyed:user"
            key = "0123456789ABCDEFfedcba9876543210"
            sha256-key = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF"

            [peers]
            allow = ["127.0.0.1/32", "::1", "10.1.2.3/8"]
            deny = ["8.8.8.8"]
        "#;
    let config = Config::from_toml(text).unwrap();
    assert_eq!(config.realm, "example.org");
    assert_eq!(config.software, "");
    assert_eq!(config.workers, 4);
    assert_eq!(
        config.listen,
        [
            Listen::new(Transport::Udp, "0.0.0.0:3478".parse().unwrap()),
            Listen::new(Transport::Tls, "[::]:5349".parse().unwrap()),
        ]
    );
    assert_eq!(
        config.tls,
        Some(TlsFiles {
            certificate: "/etc/turnpike/cert.pem".into(),
            private_key: "/etc/turnpike/key.pem".into(),
        })
    );
    assert_eq!(config.relay.address, Some(Ipv4Addr::new(203, 0, 113, 7)));
    assert_eq!(
        config.relay.address_v6,
        Some("2001:db8::7".parse().unwrap())
    );
    assert_eq!(
        config.relay.public_address,
        Some(Ipv4Addr::new(198, 51, 100, 9))
    );
    assert_eq!(
        config.relay.ports,
        PortRange {
            first: 50000,
            last: 50100
        }
    );
    assert_eq!(config.relay.default_lifetime, Duration::from_secs(300));
    assert_eq!(config.relay.max_lifetime, Duration::from_secs(7200));
    assert_eq!(config.auth.secrets, ["s1", "s2"]);
    assert_eq!(config.auth.nonce_lifetime, Duration::from_secs(30));
    assert_eq!(config.auth.max_rest_ttl, Duration::from_secs(12 * 3600));
    assert_eq!(
        config.auth.users,
        [
            User {
                name: "demo".into(),
                credential: UserCredential::Password("demo".into()),
            },
            User {
                name: "keyed:user".into(),
                credential: UserCredential::Key {
                    md5: [
                        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98,
                        0x76, 0x54, 0x32, 0x10
                    ],
                    sha256: Some([
                        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
                        0xcc, 0xdd, 0xee, 0xff, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                        0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff
                    ]),
                },
            },
        ]
    );
    let allow: Vec<String> = config.peers.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allow, ["127.0.0.1/32", "::1/128", "10.0.0.0/8"]);
    let deny: Vec<String> = config.peers.deny.iter().map(ToString::to_string).collect();
    assert_eq!(deny, ["8.8.8.8/32"]);
}

#[test]
fn example_file_parses() {
    let config = Config::from_toml(include_str!("../../config/turnpike.toml")).unwrap();
    assert_eq!(config.listen, default_listeners());
    assert_eq!(config.tls, None);
    assert_eq!(config.relay.address, None);
    assert_eq!(
        config.auth.users,
        [User {
            name: "demo".into(),
            credential: UserCredential::Password("demo".into()),
        }]
    );
    assert!(config.auth.secrets.is_empty());
    assert!(config.peers.allow.is_empty());
    assert!(config.peers.deny.is_empty());
    // The file's [limits] are the defaults it says they are.
    assert_eq!(config.limits, Limits::default());
    // The dashboard is on, on loopback, with a token made at start.
    let http = config.http.expect("the example enables [http]");
    assert_eq!(http.address, "127.0.0.1:9641".parse().unwrap());
    assert_eq!(http.token, None);
}

#[test]
fn unknown_keys_are_named() {
    assert_refused("colour = 1", "colour", "unknown field `colour`");
    assert_refused(
        "[relay]\nport = \"1-2\"",
        "relay.port",
        "unknown field `port`",
    );
    assert_refused(
        "[auth]\nnonce = \"1s\"",
        "auth.nonce",
        "unknown field `nonce`",
    );
    assert_refused(
        "[peers]\nallowed = []",
        "peers.allowed",
        "unknown field `allowed`",
    );
    assert_refused("[tls]\ncert = \"x\"", "tls.cert", "unknown field `cert`");
    assert_refused(
        "[[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:1\"\nproto = 1",
        "listen[0].proto",
        "unknown field `proto`",
    );
    assert_refused(
        "[[auth.users]]\nname = \"a\"\npassword = \"b\"\nrole = \"admin\"",
        "auth.users[0].role",
        "unknown field `role`",
    );
    assert_refused("[http]\nport = 1", "http.port", "unknown field `port`");
    assert_refused("[metrics]\nport = 1", "metrics", "unknown field `metrics`");
}

#[test]
fn wrong_types_are_named() {
    assert_refused("workers = -1", "workers", "invalid value");
    assert_refused("realm = 5", "realm", "invalid type");
    assert_refused("[relay]\nports = 5", "relay.ports", "invalid type");
    assert_refused(
        "[[listen]]\ntransport = \"sctp\"\naddress = \"0.0.0.0:1\"",
        "listen[0].transport",
        "unknown variant `sctp`",
    );
    assert_refused(
        "[[listen]]\ntransport = \"udp\"",
        "listen[0]",
        "missing field `address`",
    );
    assert_refused(
        "[[auth.users]]\npassword = \"x\"",
        "auth.users[0]",
        "missing field `name`",
    );
}

#[test]
fn top_level_values_are_checked() {
    assert_refused("realm = \"\"", "realm", "must not be empty");
    let long = "r".repeat(764);
    assert_refused(&format!("realm = \"{long}\""), "realm", "764 bytes");
    assert_refused(&format!("software = \"{long}\""), "software", "764 bytes");
    assert!(Config::from_toml(&format!("realm = \"{}\"", "r".repeat(763))).is_ok());
    assert_refused("workers = 1025", "workers", "maximum of 1024");
    assert!(Config::from_toml("workers = 1024").is_ok());
}

#[test]
fn proxy_protocol_listeners_name_their_balancers() {
    let listener = |extra: &str| {
        format!("[[listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:3478\"\n{extra}")
    };
    let config = Config::from_toml(&listener(
        "proxy-protocol = true\nproxy-from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]",
    ))
    .unwrap();
    let ranges: Vec<String> = config.listen[0]
        .proxy_from
        .as_ref()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ranges, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    let plain = Config::from_toml(&listener("proxy-protocol = false")).unwrap();
    assert_eq!(plain.listen[0].proxy_from, None);

    assert_refused(
        &listener("proxy-protocol = true"),
        "listen[0].proxy-from",
        "required with proxy-protocol = true",
    );
    assert_refused(
        &listener("proxy-protocol = true\nproxy-from = []"),
        "listen[0].proxy-from",
        "is empty",
    );
    assert_refused(
        &listener("proxy-from = [\"10.0.0.0/8\"]"),
        "listen[0].proxy-from",
        "proxy-protocol is not true",
    );
    assert_refused(
        &listener("proxy-protocol = true\nproxy-from = [\"10.0.0.0/8\", \"balancer\"]"),
        "listen[0].proxy-from[1]",
        "balancer",
    );
    assert_refused(
        &listener("proxy-protocol = \"yes\"\nproxy-from = [\"10.0.0.0/8\"]"),
        "listen[0].proxy-protocol",
        "invalid type",
    );
    assert_refused(
        "[[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:3478\"\n\
         proxy-protocol = true\nproxy-from = [\"10.0.0.0/8\"]",
        "listen[0].proxy-protocol",
        "tcp and tls listeners, not udp",
    );
    let many: Vec<String> = (0..257)
        .map(|i| format!("\"10.0.{}.{}\"", i / 256, i % 256))
        .collect();
    assert_refused(
        &listener(&format!(
            "proxy-protocol = true\nproxy-from = [{}]",
            many.join(", ")
        )),
        "listen[0].proxy-from",
        "257 ranges; the maximum is 256",
    );
}

#[test]
fn listeners_are_checked() {
    assert_refused("listen = []", "listen", "at least one listener");
    assert_refused(
        "[[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:3478\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"x\"",
        "listen[1].address",
        "invalid socket address \"x\"",
    );
    assert_refused(
        "[[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:3478\"\n\
         [[listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:3478\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:3478\"",
        "listen[2]",
        "duplicate of listen[0] (udp 0.0.0.0:3478)",
    );
    assert_refused(
        "[[listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:443\"\n\
         [[listen]]\ntransport = \"tls\"\naddress = \"0.0.0.0:443\"\n\
         [tls]\ncertificate = \"c\"\nprivate-key = \"k\"",
        "listen[1]",
        "same TCP port as listen[0]",
    );
    // Port 0 asks for a free port, so several such listeners are fine.
    let ephemeral = Config::from_toml(
        "[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [tls]\ncertificate = \"c\"\nprivate-key = \"k\"",
    );
    assert_eq!(ephemeral.map(|c| c.listen.len()).ok(), Some(4));
}

#[test]
fn tls_section_goes_with_tls_listeners() {
    let tls_listener = "[[listen]]\ntransport = \"tls\"\naddress = \"0.0.0.0:5349\"\n";
    let tls_section = "[tls]\ncertificate = \"c.pem\"\nprivate-key = \"k.pem\"\n";
    assert_refused(
        tls_listener,
        "tls",
        "required by listen[0] (tls 0.0.0.0:5349)",
    );
    assert_refused(tls_section, "tls", "no listener has transport \"tls\"");
    assert!(Config::from_toml(&format!("{tls_listener}{tls_section}")).is_ok());
    assert_refused(
        &format!("{tls_listener}[tls]\ncertificate = \"c.pem\""),
        "tls",
        "missing field `private-key`",
    );
    assert_refused(
        &format!("{tls_listener}[tls]\ncertificate = \"\"\nprivate-key = \"k\""),
        "tls.certificate",
        "must not be empty",
    );
}

#[test]
fn relay_values_are_checked() {
    assert_refused(
        "[relay]\nports = \"60000-50000\"",
        "relay.ports",
        "start 60000 is greater than end 50000",
    );
    assert_refused("[relay]\nports = \"0-100\"", "relay.ports", "port 0");
    assert_refused(
        "[relay]\nports = \"1000\"",
        "relay.ports",
        "invalid port range",
    );
    assert_refused(
        "[relay]\nports = \"1-70000\"",
        "relay.ports",
        "invalid port range",
    );
    assert_refused(
        "[relay]\naddress = \"2001:db8::1\"",
        "relay.address",
        "is an IPv6 address",
    );
    assert_refused(
        "[relay]\naddress = \"nope\"",
        "relay.address",
        "invalid IPv4",
    );
    assert_refused(
        "[relay]\naddress = \"0.0.0.0\"",
        "relay.address",
        "not a unicast",
    );
    assert_refused(
        "[relay]\npublic-address = \"224.0.0.1\"",
        "relay.public-address",
        "not a unicast",
    );
    assert_refused(
        "[relay]\naddress-v6 = \"1.2.3.4\"",
        "relay.address-v6",
        "invalid IPv6",
    );
    assert_refused(
        "[relay]\ndefault-lifetime = \"10 parsecs\"",
        "relay.default-lifetime",
        "invalid duration \"10 parsecs\"",
    );
    assert_refused(
        "[relay]\nmax-lifetime = \"500ms\"",
        "relay.max-lifetime",
        "minimum of 1s",
    );
    assert_refused(
        "[relay]\ndefault-lifetime = \"2h\"",
        "relay.default-lifetime",
        "2h is greater than relay.max-lifetime (1h)",
    );
    assert!(
        Config::from_toml(
            "[relay]\nports = \"1-1\"\nmax-lifetime = \"1s\"\ndefault-lifetime = \"1s\""
        )
        .is_ok()
    );
}

/// Every duration key has a ceiling the clock can hold (found by the config fuzz target:
/// a lifetime of 300,000,000,000 years validated, then overflowed `Instant + Duration`).
#[test]
fn durations_have_a_ceiling() {
    let redis = "[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n";
    for (text, key) in [
        ("drain-timeout = \"366d\"".to_owned(), "drain-timeout"),
        (
            "[relay]\ndefault-lifetime = \"300000000000y\"\nmax-lifetime = \"300000000000y\""
                .to_owned(),
            "relay.default-lifetime",
        ),
        (
            "[relay]\nmax-lifetime = \"2y\"".to_owned(),
            "relay.max-lifetime",
        ),
        (
            "[auth]\nnonce-lifetime = \"366d\"".to_owned(),
            "auth.nonce-lifetime",
        ),
        (
            "[limits]\nstream-idle-timeout = \"366d\"".to_owned(),
            "limits.stream-idle-timeout",
        ),
        (format!("{redis}stale-for = \"366d\""), "redis.stale-for"),
        (format!("{redis}lease-time = \"366d\""), "redis.lease-time"),
    ] {
        assert_refused(&text, key, "longer than the maximum of 365 days");
    }
    let config = Config::from_toml(&format!(
        "drain-timeout = \"365d\"\n[relay]\ndefault-lifetime = \"365d\"\n\
         max-lifetime = \"365d\"\n[auth]\nnonce-lifetime = \"365d\"\n\
         [limits]\nstream-idle-timeout = \"365d\"\n{redis}stale-for = \"365d\"\n\
         lease-time = \"365d\""
    ))
    .expect("365 days is accepted everywhere");
    assert_eq!(config.relay.max_lifetime, MAX_DURATION);
}

#[test]
fn auth_values_are_checked() {
    assert_refused(
        "[auth]\nsecrets = [\"a\", \"\"]",
        "auth.secrets[1]",
        "must not be empty",
    );
    assert_refused(
        "[auth]\nnonce-lifetime = \"0s\"",
        "auth.nonce-lifetime",
        "minimum of 1s",
    );
    assert_refused(
        "[auth]\nnonce-lifetime = \"soon\"",
        "auth.nonce-lifetime",
        "invalid duration",
    );
    for (value, needle) in [
        ("0s", "minimum of 1s"),
        ("100y", "longer than the maximum of 365 days"),
        ("364d", "longer than the maximum of 30 days"),
        ("31d", "longer than the maximum of 30 days"),
        ("forever", "invalid duration"),
        ("", "invalid duration"),
    ] {
        assert_refused(
            &format!("[auth]\nmax-rest-ttl = {value:?}"),
            "auth.max-rest-ttl",
            needle,
        );
    }
    assert_refused("[auth]\nmax-rest-ttl = 86400", "auth.max-rest-ttl", "");
    let edge = Config::from_toml("[auth]\nmax-rest-ttl = \"30d\"").unwrap();
    assert_eq!(edge.auth.max_rest_ttl, MAX_MAX_REST_TTL);
    let user = |body: &str| format!("[[auth.users]]\n{body}\n");
    assert_refused(
        &user("name = \"\"\npassword = \"p\""),
        "auth.users[0].name",
        "must not be empty",
    );
    assert_refused(
        &format!(
            "{}{}",
            user("name = \"a\"\npassword = \"p\""),
            user("name = \"a\"\npassword = \"q\"")
        ),
        "auth.users[1].name",
        "already defined by auth.users[0]",
    );
    assert_refused(
        &user("name = \"a\""),
        "auth.users[0]",
        "exactly one of `password` and `key`",
    );
    assert_refused(
        &user("name = \"a\"\npassword = \"p\"\nkey = \"00000000000000000000000000000000\""),
        "auth.users[0]",
        "exactly one of `password` and `key`",
    );
    assert_refused(
        &user("name = \"a\"\npassword = \"\""),
        "auth.users[0].password",
        "must not be empty",
    );
    assert_refused(
        &user("name = \"a\"\nkey = \"abc\""),
        "auth.users[0].key",
        "32 hex digits",
    );
    assert_refused(
        &user("name = \"a\"\nkey = \"0000000000000000000000000000000g\""),
        "auth.users[0].key",
        "not a hex digit",
    );
    let key = "key = \"00000000000000000000000000000000\"";
    for (sha256, problem) in [
        (
            "abc",
            "64 hex digits (SHA-256 of name:realm:password), got 3 characters",
        ),
        (&"0".repeat(65)[..], "got 65 characters"),
        (&format!("{}g", "0".repeat(63))[..], "got 64 characters"),
        (&"é".repeat(32)[..], "got 32 characters"),
    ] {
        assert_refused(
            &user(&format!("name = \"a\"\n{key}\nsha256-key = {sha256:?}")),
            "auth.users[0].sha256-key",
            problem,
        );
    }
    assert_refused(
        &user(&format!(
            "name = \"a\"\npassword = \"p\"\nsha256-key = \"{}\"",
            "0".repeat(64)
        )),
        "auth.users[0].sha256-key",
        "goes with `key`",
    );
    assert_refused(
        &user(&format!(
            "name = \"a\"\nsha256-key = \"{}\"",
            "0".repeat(64)
        )),
        "auth.users[0]",
        "exactly one of `password` and `key`",
    );
    assert_refused(
        &user(&format!("name = \"a\"\n{key}\nsha256-key = 7")),
        "auth.users[0].sha256-key",
        "invalid type",
    );
    assert_refused(
        &user(&format!("name = \"{}\"\npassword = \"p\"", "n".repeat(509))),
        "auth.users[0].name",
        "maximum is 508",
    );
}

#[test]
fn peer_ranges_are_checked() {
    assert_refused("[peers]\nallow = [1]", "peers.allow[0]", "invalid type");
    assert_refused(
        "[peers]\nallow = [\"10.0.0/8\"]",
        "peers.allow[0]",
        "invalid IP range \"10.0.0/8\"",
    );
    assert_refused(
        "[peers]\ndeny = [\"::/0\", \"fe80::/129\"]",
        "peers.deny[1]",
        "invalid IP range \"fe80::/129\"",
    );
}

#[test]
fn syntax_errors_give_line_and_column() {
    let error = error("realm = \"a\"\n[relay\n");
    let shown = error.to_string();
    assert!(
        matches!(error, ConfigError::Syntax { line: 2, .. }),
        "{shown:?}"
    );
    assert!(
        shown.starts_with("TOML syntax error at line 2, column"),
        "{shown:?}"
    );
    assert!(!shown.contains('\n'), "{shown:?}");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[relay]\nports = \"9-1\"\n").unwrap();
    let shown = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        shown,
        format!(
            "{}: relay.ports: start 9 is greater than end 1",
            path.display()
        )
    );

    let missing = dir.path().join("missing.toml");
    let shown = Config::load(&missing).unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("cannot read {}: ", missing.display())),
        "{shown:?}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "workers = 2\n").unwrap();
    assert_eq!(Config::load(&good).unwrap().workers, 2);
}

#[test]
fn debug_never_shows_secrets() {
    let text = r#"
            [auth]
            secrets = ["rest-secret-xyzzy"]
            [[auth.users]]
            name = "alice"
            password = "hunter2-plugh"
            [[auth.users]]
            name = "bob"
            key = "abcdefabcdefabcdefabcdefabcdef12"
        "#;
    let config = Config::from_toml(text).unwrap();
    for shown in [format!("{config:?}"), format!("{config:#?}")] {
        assert!(!shown.contains("xyzzy"), "{shown}");
        assert!(!shown.contains("plugh"), "{shown}");
        assert!(!shown.to_lowercase().contains("abcdef"), "{shown}");
        assert!(!shown.contains("171, 205"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("alice") && shown.contains("bob"), "{shown}");
    }
}

/// The keys the file may hold in `section` (empty: the top level), as the raw serde layer
/// lists them when it refuses an unknown key.
fn keys_of(section: &str) -> Vec<String> {
    let text = if section.is_empty() {
        "zz-unknown = 1".to_owned()
    } else {
        format!("[{section}]\nzz-unknown = 1")
    };
    let refused = match toml::from_str::<raw::RawConfig>(&text) {
        Ok(_) => panic!("{text:?} was accepted"),
        Err(error) => error.message().to_owned(),
    };
    let (_, expected) = refused
        .split_once("expected one of ")
        .or_else(|| refused.split_once("expected "))
        .unwrap_or_else(|| panic!("serde's message lists no keys: {refused:?}"));
    expected
        .split(", ")
        .flat_map(|keys| keys.split(" or "))
        .map(|key| key.trim().trim_matches('`').to_owned())
        .map(|key| match section {
            "" => key,
            _ => format!("{section}.{key}"),
        })
        .collect()
}

/// A key added to the file without a reload decision fails here: the keys
/// `reload::decisions` visits are exactly the keys the raw layer accepts. A list of tables
/// (`listen`, `auth.users`) is decided as a whole; an optional section (`[tls]`, `[redis]`,
/// `[http]`) has a decision of its own for being added or removed, besides its keys.
#[test]
fn every_key_has_a_reload_decision() {
    let always = ["relay", "auth", "peers", "limits", "log"];
    let mut file: Vec<String> = keys_of("")
        .into_iter()
        .filter(|key| !always.contains(&key.as_str()))
        .collect();
    for section in always.iter().chain(&["tls", "redis", "http"]) {
        file.extend(keys_of(section));
    }
    file.sort();
    let mut decided: Vec<String> = reload::decisions()
        .into_iter()
        .map(|(key, _)| key.to_owned())
        .collect();
    decided.sort();
    let before = decided.len();
    decided.dedup();
    assert_eq!(decided.len(), before, "a key is decided twice");
    assert_eq!(
        decided, file,
        "keys decided for a reload vs keys the file may hold"
    );
    assert!(file.len() > 40, "the raw layer lists the keys: {file:?}");
}

fn with(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|error| panic!("{text:?}: {error}"))
}

#[test]
fn an_unchanged_file_reloads_nothing() {
    let config = with(
        "[relay]\naddress-v6 = \"::1\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n\
         [http]\naddress = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef\"\n",
    );
    let reload = reload::plan(&config, &config);
    assert_eq!(reload.config, config);
    assert!(
        reload.applied.is_empty() && reload.restart.is_empty(),
        "{reload:?}"
    );
}

/// Issue 11: adding `[relay] address-v6` used to be neither applied nor reported, and the core
/// then promised IPv6 relays no worker could open (508). It needs a restart, is reported, and
/// the running value stays.
#[test]
fn relay_addresses_need_a_restart_and_keep_their_running_values() {
    let running = with("[relay]\nports = \"50000-50100\"\n");
    let fresh =
        with("[relay]\nports = \"50000-50200\"\naddress = \"127.0.0.1\"\naddress-v6 = \"::1\"\n");
    let reload = reload::plan(&running, &fresh);
    assert_eq!(reload.restart, ["relay.address", "relay.address-v6"]);
    assert_eq!(reload.applied, ["relay.ports"]);
    assert_eq!(reload.config.relay.address, None);
    assert_eq!(reload.config.relay.address_v6, None);
    assert_eq!(reload.config.relay.ports, fresh.relay.ports);
    // Compared with what runs, the next reload of the same file reports the same keys.
    let again = reload::plan(&reload.config, &fresh);
    assert_eq!(again.restart, reload.restart);
    assert!(again.applied.is_empty(), "{again:?}");
}

#[test]
fn sections_that_need_a_restart_keep_the_running_ones() {
    let running = with(
        "workers = 2\n[relay]\noffload = \"off\"\n[http]\naddress = \"127.0.0.1:8080\"\ntoken = \"old-0123456789abcdef\"\n",
    );
    let fresh = with(
        "workers = 3\n[relay]\noffload = \"auto\"\n[http]\naddress = \"127.0.0.1:9090\"\n\
         token = \"new-0123456789abcdef\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\n[log]\nlevel = \"debug\"\n",
    );
    let reload = reload::plan(&running, &fresh);
    assert_eq!(
        reload.restart,
        ["workers", "relay.offload", "redis", "http.address"]
    );
    assert_eq!(reload.applied, ["http.token", "log.level"]);
    let config = &reload.config;
    assert_eq!((config.workers, config.relay.offload), (2, Offload::Off));
    assert_eq!(config.redis, None);
    let http = config.http.as_ref().expect("the running [http] stays");
    assert_eq!(http.address.port(), 8080);
    assert_eq!(http.token.as_deref(), Some("new-0123456789abcdef"));
    assert_eq!(config.log.level, "debug");
    // Removing [http] needs a restart too: the running one stays.
    let without = with("workers = 2\n[relay]\noffload = \"off\"\n");
    let reload = reload::plan(&running, &without);
    assert_eq!(reload.restart, ["http"]);
    assert_eq!(reload.config.http, running.http);
}

#[test]
fn applied_keys_take_the_fresh_values() {
    let running = Config::default();
    let fresh = with(
        "realm = \"other\"\n[limits]\nallocation-bandwidth = \"1 Mbps\"\n\
         unauthenticated-rate = 5\n[peers]\ndeny = [\"10.0.0.0/8\"]\n[auth]\nsecrets = [\"s\"]\n",
    );
    let reload = reload::plan(&running, &fresh);
    assert_eq!(
        reload.applied,
        [
            "realm",
            "auth.secrets",
            "peers.deny",
            "limits.allocation-bandwidth",
            "limits.unauthenticated-rate"
        ]
    );
    assert!(reload.restart.is_empty(), "{reload:?}");
    assert_eq!(reload.config, fresh);
}
