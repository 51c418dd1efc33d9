//! The operators' HTTP endpoints on the real binary, against a known scenario: `status` and
//! `allocations` report exactly the allocations and bytes the test made, `DELETE` closes an
//! allocation on the wire, `/metrics` parses as OpenMetrics and its counters match the traffic,
//! and the bearer token guards everything but the health probes.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::http::{get_json, http};
use common::stun_client::StunClient;
use common::{EchoPeer, Server, TestConfig, udp_echo_peer};
use serde_json::{Value, json};

const TOKEN: &str = "ops-token-0123456789abcdef";
const ICE_URLS: [&str; 2] = [
    "turn:turn.example.test:3478?transport=udp",
    "turns:turn.example.test:5349?transport=tcp",
];

fn http_section(public_metrics: bool) -> String {
    format!(
        "[http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\nice-urls = {ICE_URLS:?}\npublic-metrics = {public_metrics}\n"
    )
}

fn server(public_metrics: bool) -> Server {
    Server::with(&TestConfig {
        transports: vec!["udp", "tcp"],
        users: vec![("alice", "wonderland"), ("bob", "builder")],
        extra: http_section(public_metrics),
        ..TestConfig::default()
    })
}

/// One allocation of the scenario and the traffic it carried.
struct Leg {
    client: StunClient,
    user: &'static str,
    transport: &'static str,
    relay: SocketAddr,
    /// Payload size and count of the ChannelData messages echoed through it.
    size: usize,
    count: usize,
}

impl Leg {
    fn bytes(&self) -> u64 {
        (self.size * self.count) as u64
    }
}

/// The channel every leg binds to the echo peer.
const CHANNEL: u16 = 0x4000;

/// Allocates with `client`, binds [`CHANNEL`] to `peer` and echoes `count` messages of `size`
/// bytes through it, one at a time (each echo awaited, so none is in flight at the end).
fn leg(
    mut client: StunClient,
    user: &'static str,
    transport: &'static str,
    peer: SocketAddr,
    size: usize,
    count: usize,
) -> Leg {
    let relay = client
        .allocate()
        .unwrap_or_else(|code| panic!("{user} over {transport}: Allocate got {code}"));
    assert_eq!(client.bind(CHANNEL, peer), None, "ChannelBind for {user}");
    for i in 0..count {
        let payload = payload(size, i);
        client.send_channel_data(CHANNEL, &payload);
        let echoed = client.recv_data(Instant::now() + Duration::from_secs(5));
        assert_eq!(
            echoed.as_deref(),
            Some(&payload[..]),
            "echo {i} of {count} for {user} over {transport}"
        );
    }
    Leg {
        client,
        user,
        transport,
        relay,
        size,
        count,
    }
}

/// `size` bytes that name message `i`.
fn payload(size: usize, i: usize) -> Vec<u8> {
    (0..size).map(|j| (i * 31 + j) as u8).collect()
}

/// The scenario: alice twice over UDP, bob once over TCP, each echoing a known number of
/// bytes through `peer`.
fn scenario(server: &Server, peer: SocketAddr) -> Vec<Leg> {
    let udp = server.addr("udp");
    vec![
        leg(
            StunClient::udp(udp, "127.0.0.1:0", "alice", "wonderland"),
            "alice",
            "udp",
            peer,
            100,
            10,
        ),
        leg(
            StunClient::udp(udp, "127.0.0.1:0", "alice", "wonderland"),
            "alice",
            "udp",
            peer,
            200,
            5,
        ),
        leg(
            StunClient::tcp(server.addr("tcp"), "bob", "builder"),
            "bob",
            "tcp",
            peer,
            150,
            8,
        ),
    ]
}

/// The allocations of every page of `/api/v1/allocations?limit=1`, following `next_cursor`.
fn all_pages(api: SocketAddr, query: &str) -> Vec<Value> {
    let mut found = Vec::new();
    let mut path = format!("/api/v1/allocations?limit=1{query}");
    for _ in 0..20 {
        let page = get_json(api, &path, TOKEN);
        let items = page["allocations"]
            .as_array()
            .expect("an allocations array");
        assert!(items.len() <= 1, "limit=1 gave {page}");
        found.extend(items.iter().cloned());
        match &page["next_cursor"] {
            Value::Null => return found,
            Value::String(cursor) => {
                path = format!("/api/v1/allocations?limit=1{query}&cursor={cursor}")
            }
            other => panic!("next_cursor is {other}"),
        }
    }
    panic!("more than 20 pages of one allocation each; got {found:?}");
}

#[test]
fn status_and_allocations_describe_a_known_scenario() {
    let server = server(false);
    let api = server.addr("http");
    let (peer, _echo) = udp_echo_peer();
    let legs = scenario(&server, peer);
    let total: u64 = legs.iter().map(Leg::bytes).sum();
    let packets: u64 = legs.iter().map(|l| l.count as u64).sum();

    // Status: counts, transports, users, relayed bytes both ways. At once: the API asks the
    // workers, which answer after everything they handled before.
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["allocations"]["total"], 3, "{status}");
    assert_eq!(
        status["allocations"]["by_transport"],
        json!({"udp": 2, "tcp": 1, "tls": 0}),
        "{status}"
    );
    assert_eq!(
        status["allocations"]["by_family"],
        json!({"ipv4": 3, "ipv6": 0}),
        "{status}"
    );
    assert_eq!(status["users"], 2, "{status}");
    assert_eq!(
        status["relayed"],
        json!({
            "to_peer": {"packets": packets, "bytes": total},
            "to_client": {"packets": packets, "bytes": total},
        }),
        "{status}"
    );
    for reason in [
        "quota",
        "capacity",
        "bandwidth",
        "policy",
        "too_large",
        "rate_limit",
        "rate_limit_node",
        "malformed",
        "no_permission",
        "no_allocation",
        "stream_full",
        "send_failed",
    ] {
        assert!(status["drops"][reason].is_u64(), "drops.{reason}: {status}");
    }
    for reason in [
        "quota",
        "capacity",
        "bandwidth",
        "policy",
        "no_permission",
        "stream_full",
        "send_failed",
    ] {
        assert_eq!(status["drops"][reason], 0, "drops.{reason}: {status}");
    }
    assert_eq!(status["tcp"]["connections"], 1, "{status}");
    for count in [
        "rejected",
        "rejected_per_source",
        "timeouts",
        "write_timeouts",
        "proxy_refused",
    ] {
        assert_eq!(status["tcp"][count], 0, "tcp.{count}: {status}");
    }
    assert_eq!(
        status["redis"],
        json!({"configured": false, "state": "none"}),
        "{status}"
    );
    assert_eq!(status["draining"], false, "{status}");
    assert_eq!(status["ice_urls"], json!(ICE_URLS), "{status}");
    assert!(
        status["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{status}"
    );
    assert!(status["uptime_seconds"].is_u64(), "{status}");
    assert!(status["node"].as_str().is_some(), "{status}");
    let mut listeners: Vec<(String, String, String)> = status["listeners"]
        .as_array()
        .expect("a listeners array")
        .iter()
        .map(|l| {
            let field = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (field("transport"), field("address"), field("state"))
        })
        .collect();
    listeners.sort();
    let listening = |t: &str| (t.to_owned(), server.addr(t).to_string(), "listening".into());
    assert_eq!(listeners, vec![listening("tcp"), listening("udp")]);

    // The allocations list: each of the three with its user, transport, relay and bytes.
    let list = get_json(api, "/api/v1/allocations", TOKEN);
    let items = list["allocations"]
        .as_array()
        .expect("an allocations array");
    assert_eq!(items.len(), 3, "{list}");
    assert_eq!(list["next_cursor"], Value::Null, "{list}");
    let mut ids = HashMap::new();
    for leg in &legs {
        let client = leg.client.local_addr().to_string();
        let a = items
            .iter()
            .find(|a| a["client"]["address"] == client)
            .unwrap_or_else(|| panic!("no allocation for client {client} in {list}"));
        let context = format!("{} over {}: {a}", leg.user, leg.transport);
        assert_eq!(a["user"], leg.user, "{context}");
        assert_eq!(a["username"], leg.user, "{context}");
        assert_eq!(a["client"]["transport"], leg.transport, "{context}");
        assert_eq!(
            a["client"]["server"],
            server.addr(leg.transport).to_string(),
            "{context}"
        );
        assert_eq!(a["relay"], leg.relay.to_string(), "{context}");
        assert_eq!(a["permissions"], json!(["127.0.0.1"]), "{context}");
        assert_eq!(
            a["channels"],
            json!([{"number": CHANNEL, "peer": peer.to_string()}]),
            "{context}"
        );
        let traffic = json!({"packets": leg.count, "bytes": leg.bytes()});
        assert_eq!(a["to_peer"], traffic, "{context}");
        assert_eq!(a["to_client"], traffic, "{context}");
        let (created, expires) = (a["created"].as_u64(), a["expires"].as_u64());
        let (created, expires) = (created.expect(&context), expires.expect(&context));
        // The default lifetime is 10 minutes.
        assert!(
            (590..=610).contains(&(expires - created)),
            "lifetime {}: {context}",
            expires - created
        );
        let id = a["id"].as_str().expect("a string id").to_owned();
        assert!(ids.insert(id, leg.user).is_none(), "ids are unique: {list}");
    }

    // ?user= filters.
    let bob = get_json(api, "/api/v1/allocations?user=bob", TOKEN);
    let bob = bob["allocations"].as_array().expect("an allocations array");
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert_eq!(bob[0]["user"], "bob");
    assert_eq!(bob[0]["client"]["transport"], "tcp");
    let alice = all_pages(api, "&user=alice");
    assert_eq!(alice.len(), 2, "{alice:?}");
    assert!(alice.iter().all(|a| a["user"] == "alice"), "{alice:?}");
    let nobody = get_json(api, "/api/v1/allocations?user=carol", TOKEN);
    assert_eq!(nobody["allocations"], json!([]), "{nobody}");

    // limit=1 and the cursor visit each allocation exactly once.
    let pages = all_pages(api, "");
    let paged: Vec<&str> = pages.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(paged.len(), 3, "{paged:?}");
    let distinct: HashSet<&str> = paged.iter().copied().collect();
    let expected: HashSet<&str> = ids.keys().map(String::as_str).collect();
    assert_eq!(distinct, expected, "pages {paged:?}");
}

#[test]
fn delete_closes_an_allocation_on_the_wire() {
    let server = server(false);
    let api = server.addr("http");
    let (peer, echo) = udp_echo_peer();
    let mut legs = scenario(&server, peer);
    let victim = legs.remove(0);
    let mut client = victim.client;

    let list = get_json(api, "/api/v1/allocations", TOKEN);
    let items = list["allocations"]
        .as_array()
        .expect("an allocations array");
    let local = client.local_addr().to_string();
    let id = items
        .iter()
        .find(|a| a["client"]["address"] == local)
        .and_then(|a| a["id"].as_str())
        .unwrap_or_else(|| panic!("no allocation for {local} in {list}"))
        .to_owned();

    for unknown in ["0.999.999", "9.0.1", "not-an-id", "0.1"] {
        let (status, body) = http(
            api,
            "DELETE",
            &format!("/api/v1/allocations/{unknown}"),
            Some(TOKEN),
            "",
        );
        assert_eq!(status, 404, "DELETE {unknown}: {body}");
    }

    let (status, body) = http(
        api,
        "DELETE",
        &format!("/api/v1/allocations/{id}"),
        Some(TOKEN),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer, json!({"deleted": id}));

    // The client finds out: its Refresh gets 437 (the DELETE was answered once the worker
    // had closed it).
    assert_eq!(client.refresh(600), Some(437), "Refresh after DELETE");

    // Relaying stopped: nothing reaches the peer, nothing comes back.
    let echoed_before = echo.echoed();
    for i in 0..5 {
        client.send_channel_data(CHANNEL, &payload(100, i));
    }
    let late = client.recv_data(Instant::now() + Duration::from_secs(1));
    assert_eq!(late, None, "data relayed after DELETE");
    assert_eq!(
        echo.echoed(),
        echoed_before,
        "the peer got data after DELETE"
    );

    // The others are untouched, and the list forgets the deleted one.
    // (Borrowed, not consumed: dropping bob's TCP client would end his allocation.)
    for other in &mut legs {
        let payload = payload(64, 99);
        other.client.send_channel_data(CHANNEL, &payload);
        let back = other
            .client
            .recv_data(Instant::now() + Duration::from_secs(5));
        assert_eq!(
            back.as_deref(),
            Some(&payload[..]),
            "{} still relays",
            other.user
        );
    }
    let list = get_json(api, "/api/v1/allocations", TOKEN);
    let items = list["allocations"]
        .as_array()
        .expect("an allocations array");
    assert_eq!(items.len(), 2, "{list}");
    assert!(items.iter().all(|a| a["id"] != id.as_str()), "{list}");
    let (status, body) = http(
        api,
        "DELETE",
        &format!("/api/v1/allocations/{id}"),
        Some(TOKEN),
        "",
    );
    assert_eq!(status, 404, "a second DELETE: {body}");
    let deleted = scrape(api, Some(TOKEN)).value("turnpike_allocations_deleted_total", &[]);
    assert_eq!(deleted, 1.0, "turnpike_allocations_deleted_total");
    drop(echo);
}

/// One sample of an exposition: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed OpenMetrics / Prometheus text exposition.
#[derive(Debug, Default)]
struct Metrics {
    /// Metric family name → type, from `# TYPE`.
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format: `# TYPE`, `# HELP` and `# UNIT` lines, samples with optional
    /// labels and timestamp, and the final `# EOF`. Fails the test on anything else.
    fn parse(text: &str) -> Metrics {
        let mut metrics = Metrics::default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.last(),
            Some(&"# EOF"),
            "the exposition ends with # EOF:\n{text}"
        );
        for (n, line) in lines[..lines.len() - 1].iter().enumerate() {
            let context = || format!("line {}: {line:?}", n + 1);
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
                let name = name.unwrap_or_else(|| panic!("no metric name, {}", context()));
                match kind {
                    Some("TYPE") => {
                        let typ = rest.unwrap_or_else(|| panic!("no type, {}", context()));
                        assert!(
                            [
                                "counter",
                                "gauge",
                                "info",
                                "stateset",
                                "histogram",
                                "gaugehistogram",
                                "summary",
                                "unknown"
                            ]
                            .contains(&typ),
                            "unknown type, {}",
                            context()
                        );
                        let previous = metrics.types.insert(name.to_owned(), typ.to_owned());
                        assert!(previous.is_none(), "a second TYPE, {}", context());
                    }
                    Some("HELP" | "UNIT") => {}
                    _ => panic!("unknown comment, {}", context()),
                }
                continue;
            }
            assert!(!line.is_empty(), "an empty line, {}", context());
            metrics.samples.push(parse_sample(line).unwrap_or_else(|e| {
                panic!("{e}, {}", context());
            }));
        }
        for sample in &metrics.samples {
            assert!(
                metrics.family(&sample.name).is_some(),
                "sample {} has no # TYPE",
                sample.name
            );
        }
        metrics
    }

    /// The family a sample name belongs to and its type (`x_total` is counter `x`'s sample).
    fn family(&self, sample: &str) -> Option<(&str, &str)> {
        if let Some((name, typ)) = self.types.get_key_value(sample) {
            return Some((name, typ));
        }
        ["_total", "_created", "_info", "_bucket", "_count", "_sum"]
            .iter()
            .filter_map(|suffix| sample.strip_suffix(suffix))
            .find_map(|base| self.types.get_key_value(base))
            .map(|(name, typ)| (name.as_str(), typ.as_str()))
    }

    /// The value of the sample `name` with exactly `labels`; fails the test when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted)
            .collect();
        assert_eq!(found.len(), 1, "samples {name}{wanted:?}: {found:?}");
        found[0].value
    }

    /// The type of the family of sample `name`.
    fn type_of(&self, name: &str) -> &str {
        self.family(name)
            .unwrap_or_else(|| panic!("no family for {name}"))
            .1
    }
}

/// `name{k="v",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or_else(|| "no value".to_owned())?;
    let name = &line[..name_end];
    let name_ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !name_ok {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            // A label name, `=`, a quoted value with \\, \" and \n escapes, then `,` or `}`.
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            if inner[start..].starts_with('}') {
                chars.next();
                break;
            }
            let eq = inner[start..].find('=').ok_or("a label without =")? + start;
            let key = &inner[start..eq];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad label name {key:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("a label value without quotes".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("a dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    c => value.push(c),
                }
            }
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            match chars.next().ok_or("unterminated labels")?.1 {
                ',' => {}
                '}' => break,
                c => return Err(format!("{c:?} after a label")),
            }
        }
        let consumed = chars.peek().map_or(inner.len(), |(i, _)| *i);
        rest = &inner[consumed..];
    }
    let mut fields = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = match fields.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<f64>()
            .map_err(|e| format!("bad timestamp {timestamp:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `GET /metrics` (with `token`, if any), which must answer 200; parsed.
fn scrape(api: SocketAddr, token: Option<&str>) -> Metrics {
    let (status, body) = http(api, "GET", "/metrics", token, "");
    assert_eq!(status, 200, "GET /metrics: {body}");
    Metrics::parse(&body)
}

#[test]
fn the_parser_reads_the_text_format() {
    let text = "# TYPE a counter\n# HELP a A thing.\na_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 3 1700000000\n# TYPE b gauge\nb -1.5\n# TYPE c info\nc_info{version=\"1.0\"} 1\n# EOF\n";
    let metrics = Metrics::parse(text);
    assert_eq!(
        metrics.value("a_total", &[("x", "1"), ("y", "q\"\\\n")]),
        3.0
    );
    assert_eq!(metrics.value("b", &[]), -1.5);
    assert_eq!(metrics.value("c_info", &[("version", "1.0")]), 1.0);
    assert_eq!(metrics.type_of("a_total"), "counter");
    for bad in [
        "x{a=\"1\" 1",
        "x{a=1} 1",
        "x 1 2 3",
        "x",
        "1x 1",
        "x{a=\"\\q\"} 1",
    ] {
        assert!(parse_sample(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn metrics_parse_and_match_the_traffic() {
    let server = server(false);
    let api = server.addr("http");
    let (peer, _echo): (SocketAddr, EchoPeer) = udp_echo_peer();
    let legs = scenario(&server, peer);
    let total: u64 = legs.iter().map(Leg::bytes).sum();
    let packets: u64 = legs.iter().map(|l| l.count as u64).sum();

    // At once: the scrape asks the workers.
    let metrics = scrape(api, Some(TOKEN));

    let expect = |name: &str, labels: &[(&str, &str)], typ: &str, value: f64| {
        assert_eq!(metrics.type_of(name), typ, "type of {name}");
        assert_eq!(metrics.value(name, labels), value, "{name}{labels:?}");
    };
    for (transport, count) in [("udp", 2.0), ("tcp", 1.0), ("tls", 0.0)] {
        expect(
            "turnpike_allocations",
            &[("transport", transport)],
            "gauge",
            count,
        );
    }
    expect("turnpike_allocations_created_total", &[], "counter", 3.0);
    expect("turnpike_allocations_expired_total", &[], "counter", 0.0);
    expect("turnpike_allocations_deleted_total", &[], "counter", 0.0);
    for direction in ["to_peer", "to_client"] {
        let labels = [("direction", direction)];
        expect(
            "turnpike_relayed_bytes_total",
            &labels,
            "counter",
            total as f64,
        );
        expect(
            "turnpike_relayed_packets_total",
            &labels,
            "counter",
            packets as f64,
        );
    }
    let responses = |method, code| {
        metrics.value(
            "turnpike_responses_total",
            &[("method", method), ("code", code)],
        )
    };
    assert_eq!(metrics.type_of("turnpike_responses_total"), "counter");
    assert_eq!(responses("allocate", "200"), 3.0, "Allocate successes");
    assert_eq!(
        responses("channel_bind", "200"),
        3.0,
        "ChannelBind successes"
    );
    // Each client's first Allocate carries no credentials and gets 401 with a nonce. A UDP
    // retransmission of it (after 250 ms without an answer, on a loaded machine) is answered
    // and counted again, so allow a few more.
    let unauthorized = responses("allocate", "401");
    assert!(
        (3.0..=6.0).contains(&unauthorized),
        "Allocate 401s: {unauthorized}"
    );
    for reason in [
        "no_allocation",
        "no_permission",
        "policy",
        "bandwidth",
        "too_large",
        "rate_limit",
        "rate_limit_node",
        "malformed",
        "stream_full",
        "send_failed",
    ] {
        assert_eq!(metrics.type_of("turnpike_drops_total"), "counter");
        let value = metrics.value("turnpike_drops_total", &[("reason", reason)]);
        assert!(value >= 0.0, "drops {reason}: {value}");
    }
    expect(
        "turnpike_drops_total",
        &[("reason", "bandwidth")],
        "counter",
        0.0,
    );
    expect(
        "turnpike_drops_total",
        &[("reason", "policy")],
        "counter",
        0.0,
    );
    assert!(metrics.value("turnpike_auth_failures_total", &[]) >= 0.0);
    assert_eq!(metrics.type_of("turnpike_auth_failures_total"), "counter");
    expect("turnpike_tcp_connections", &[], "gauge", 1.0);
    for name in [
        "turnpike_tcp_rejected_total",
        "turnpike_tcp_rejected_per_source_total",
        "turnpike_stream_timeouts_total",
        "turnpike_stream_write_timeouts_total",
        "turnpike_proxy_refused_total",
    ] {
        expect(name, &[], "counter", 0.0);
    }
    expect("turnpike_redis_up", &[], "gauge", 0.0);
    expect("turnpike_draining", &[], "gauge", 0.0);
    let build: Vec<&Sample> = metrics
        .samples
        .iter()
        .filter(|s| s.name == "turnpike_build_info")
        .collect();
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].value, 1.0);
    assert!(
        build[0]
            .labels
            .get("version")
            .is_some_and(|v| !v.is_empty()),
        "{build:?}"
    );
    assert_eq!(metrics.type_of("turnpike_build_info"), "info");

    // No series names a user or an address: the set of series does not grow with traffic.
    let addresses: Vec<String> = legs
        .iter()
        .flat_map(|l| [l.client.local_addr().to_string(), l.relay.to_string()])
        .chain([peer.to_string(), "127.0.0.1".to_owned()])
        .collect();
    for sample in &metrics.samples {
        for (key, value) in &sample.labels {
            let context = format!("{}{{{key}={value:?}}}", sample.name);
            assert!(
                !value.contains("alice") && !value.contains("bob"),
                "a username in {context}"
            );
            assert!(
                value.parse::<IpAddr>().is_err() && value.parse::<SocketAddr>().is_err(),
                "an address in {context}"
            );
            assert!(
                addresses.iter().all(|a| !value.contains(a.as_str())),
                "an address in {context}"
            );
        }
    }
}

#[test]
fn the_token_guards_everything_but_the_probes() {
    let server = server(false);
    let api = server.addr("http");
    let requests = [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/allocations"),
        ("GET", "/api/v1/allocations?user=alice&limit=1"),
        ("DELETE", "/api/v1/allocations/0.0.1"),
        ("GET", "/metrics"),
    ];
    let wrong = "wrong-token-0123456789abcdef";
    let prefix = &TOKEN[..TOKEN.len() - 1];
    for token in [None, Some(wrong), Some(""), Some(prefix)] {
        for (method, path) in requests {
            let (status, body) = http(api, method, path, token, "");
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            for leak in ["allocations", "turnpike_", "version", "relayed"] {
                assert!(!body.contains(leak), "{method} {path}: {body}");
            }
        }
    }
    // With the token every one of them answers.
    for (method, path) in requests {
        let (status, body) = http(api, method, path, Some(TOKEN), "");
        let expected = if method == "DELETE" { 404 } else { 200 };
        assert_eq!(status, expected, "{method} {path}: {body}");
    }
    // The probes need no token.
    for path in ["/healthz", "/readyz"] {
        for token in [None, Some(wrong)] {
            let (status, body) = http(api, "GET", path, token, "");
            assert_eq!(status, 200, "GET {path} with {token:?}: {body}");
        }
    }
}

#[test]
fn public_metrics_opens_metrics_only() {
    let server = server(true);
    let api = server.addr("http");
    let metrics = scrape(api, None);
    assert_eq!(
        metrics.value("turnpike_allocations", &[("transport", "udp")]),
        0.0
    );
    let (status, body) = http(api, "GET", "/metrics", Some("wrong-token-0123456789"), "");
    assert_eq!(status, 200, "{body}");
    for (method, path) in [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/allocations"),
        ("DELETE", "/api/v1/allocations/0.0.1"),
    ] {
        let (status, body) = http(api, method, path, None, "");
        assert_eq!(status, 401, "{method} {path}: {body}");
    }
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["allocations"]["total"], 0, "{status}");
}

/// The allocation log lines (JSON) whose message is `message`.
fn allocation_events(server: &Server, message: &str) -> Vec<Value> {
    server
        .log_messages(message)
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|event| event["fields"].clone())
        .collect()
}

#[test]
fn allocations_are_logged_when_created_and_ended_and_redacted_on_request() {
    for redact in [false, true] {
        let server = Server::with(&TestConfig {
            transports: vec!["udp"],
            extra: format!("[log]\nredact = {redact}\n"),
            ..TestConfig::default()
        });
        let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
        let relay = client.allocate().expect("an allocation");
        assert_eq!(client.refresh(0), None);
        let ended = server.wait_for_log("allocation ended", 1, Duration::from_secs(5));
        assert_eq!(ended.len(), 1, "{:?}", server.log());
        let created = allocation_events(&server, "allocation created");
        let ended = allocation_events(&server, "allocation ended");
        assert_eq!((created.len(), ended.len()), (1, 1));
        let (created, ended) = (&created[0], &ended[0]);
        assert_eq!(ended["reason"], "deleted");
        assert_eq!(ended["relay"], relay.to_string());
        assert_eq!(created["allocation"], ended["allocation"]);
        assert!(ended["duration_s"].as_f64().is_some());
        assert_eq!(ended["to_peer_bytes"], 0);
        let client_addr = client.local_addr().to_string();
        if redact {
            for event in [created, ended] {
                let text = event.to_string();
                assert!(!text.contains("alice"), "{text}");
                assert!(!text.contains(&client_addr), "{text}");
                assert!(
                    event["user"].as_str().unwrap().starts_with("user-"),
                    "{text}"
                );
                assert!(
                    event["client"].as_str().unwrap().starts_with("ip-"),
                    "{text}"
                );
            }
            assert_eq!(created["user"], ended["user"], "stable hashes");
        } else {
            assert_eq!(created["user"], "alice");
            assert_eq!(ended["client"], client_addr);
        }
    }
}

/// Write system calls the process has made (`syscw` of `/proc/PID/io`).
fn write_calls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|line| line.strip_prefix("syscw: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("syscw in /proc/PID/io")
}

#[test]
fn the_audit_lines_of_a_burst_are_written_together_and_whole() {
    // One worker, so that one listener socket queues the whole burst.
    const CLIENTS: usize = 16;
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        workers: 1,
        extra: "[limits]\nuser-allocations = 20\n".to_string(),
        ..TestConfig::default()
    });
    let mut clients: Vec<StunClient> = (0..CLIENTS)
        .map(|_| StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland"))
        .collect();
    for client in &mut clients {
        client.allocate().expect("an allocation");
    }
    server.wait_for_log("allocation created", CLIENTS, Duration::from_secs(5));
    // The worker stopped, every Refresh 0 waits in the listener's queue; it then reads them
    // in one batch and logs 16 "allocation ended" lines.
    std::thread::sleep(Duration::from_millis(200));
    let before = write_calls(server.pid());
    server.signal(libc::SIGSTOP);
    let refreshed = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter_mut()
            .map(|client| scope.spawn(move || client.refresh(0)))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        server.signal(libc::SIGCONT);
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(refreshed.iter().all(Option::is_none), "{refreshed:?}");
    let ended = server.wait_for_log("allocation ended", CLIENTS, Duration::from_secs(5));
    assert_eq!(ended.len(), CLIENTS);
    let writes = write_calls(server.pid()) - before;
    eprintln!("{CLIENTS} allocation-ended lines in {writes} write calls");
    // Each line is whole JSON (held lines are never cut or interleaved).
    for line in &ended {
        let event: Value = serde_json::from_str(line).expect("a whole JSON line");
        assert_eq!(event["fields"]["reason"], "deleted", "{line}");
    }
    assert!(
        writes < CLIENTS as u64 / 2,
        "{writes} write calls for {CLIENTS} lines: not written together"
    );
}

#[test]
fn readyz_says_not_ready_while_redis_is_unreachable() {
    // Nothing listens on this port: Redis never answers.
    let port = common::free_port();
    let server = Server::with(&TestConfig {
        transports: vec!["udp"],
        extra: format!(
            "{}\n[redis]\nurl = \"redis://127.0.0.1:{port}/0\"\n",
            http_section(false)
        ),
        ..TestConfig::default()
    });
    let api = server.addr("http");
    let (status, body) = http(api, "GET", "/readyz", None, "");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Redis"), "{body}");
    let (status, _) = http(api, "GET", "/healthz", None, "");
    assert_eq!(status, 200);
}
