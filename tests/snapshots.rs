//! The status API, the allocation list, `/metrics` and the `stats` line (SIGUSR1) ask the
//! workers when a request comes (a command with a reply) instead of reading what the workers
//! published on a timer: they show what the workers had done at once, with thousands of
//! allocations; a client hammering the API cannot stall relaying; a worker that does not
//! answer gives a clear 503 within the answer timeout, not a hang.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::http::{get_json, http};
use common::stun_client::StunClient;
use common::{Server, TestConfig, rest_credentials, udp_echo_peer};
use serde_json::Value;
use turnpike::stun::Method;

const TOKEN: &str = "snapshot-token-0123456789";
const SECRET: &str = "s3cret";
const CHANNEL: u16 = 0x4000;

/// A server over UDP and TCP, two workers, alice/wonderland and REST credentials, no limit on
/// allocations per user or on unauthenticated answers (thousands of Allocates from one
/// address), and the HTTP API.
fn server() -> Server {
    Server::with(&TestConfig {
        transports: vec!["udp", "tcp"],
        secrets: vec![SECRET],
        extra: format!(
            "[limits]\nuser-allocations = 0\nunauthenticated-rate = 0\n\n\
             [http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
        ),
        ..TestConfig::default()
    })
}

/// `count` UDP allocations by REST users `user-0` … `user-{users - 1}` in turn, made by
/// four threads.
fn hold(server: &Server, count: usize, users: usize) -> Vec<StunClient> {
    let udp = server.addr("udp");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                (t..count)
                    .step_by(4)
                    .map(|i| {
                        let (username, password) = rest_credentials(
                            SECRET,
                            &format!("user-{}", i % users),
                            Duration::from_secs(3600),
                        );
                        let mut client = StunClient::udp(udp, "127.0.0.1:0", &username, &password);
                        client
                            .allocate()
                            .unwrap_or_else(|code| panic!("allocation {i}: {code}"));
                        client
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("an allocating thread"))
        .collect()
}

/// `(worker, index, generation)` of an allocation id `w.i.g`.
fn id_parts(id: &str) -> (u64, u64, u64) {
    let parts: Vec<u64> = id
        .split('.')
        .map(|p| p.parse().unwrap_or_else(|e| panic!("id {id}: {e}")))
        .collect();
    assert_eq!(parts.len(), 3, "id {id}");
    (parts[0], parts[1], parts[2])
}

/// Every allocation of `/api/v1/allocations?limit={limit}{query}`, following `next_cursor`;
/// with the number of pages.
fn all_pages(api: SocketAddr, limit: usize, query: &str) -> (Vec<Value>, usize) {
    let mut found = Vec::new();
    let mut path = format!("/api/v1/allocations?limit={limit}{query}");
    for pages in 1..=100 {
        let page = get_json(api, &path, TOKEN);
        let items = page["allocations"]
            .as_array()
            .unwrap_or_else(|| panic!("no allocations array: {page}"));
        assert!(items.len() <= limit, "limit={limit} gave {}", items.len());
        found.extend(items.iter().cloned());
        match &page["next_cursor"] {
            Value::Null => return (found, pages),
            Value::String(cursor) => {
                assert_eq!(items.len(), limit, "a page before the last is full");
                assert_eq!(
                    items.last().map(|a| &a["id"]),
                    Some(&page["next_cursor"]),
                    "the cursor is the page's last id"
                );
                path = format!("/api/v1/allocations?limit={limit}{query}&cursor={cursor}");
            }
            other => panic!("next_cursor is {other}"),
        }
    }
    panic!("more than 100 pages");
}

/// The value of the sample `name{labels}` in an OpenMetrics text.
fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn status_metrics_and_pages_count_2000_allocations_at_once() {
    const UDP: usize = 2000;
    const USERS: usize = 500;
    let server = server();
    let api = server.addr("http");
    let started = Instant::now();
    let mut clients = hold(&server, UDP, USERS);
    let mut tcp: Vec<StunClient> = (0..3)
        .map(|_| StunClient::tcp(server.addr("tcp"), "alice", "wonderland"))
        .collect();
    for client in &mut tcp {
        client.allocate().expect("alice over TCP");
    }
    eprintln!(
        "{} allocations in {:.1} s",
        UDP + tcp.len(),
        started.elapsed().as_secs_f64()
    );

    // At once, without waiting for anything to be published.
    let asked = Instant::now();
    let status = get_json(api, "/api/v1/status", TOKEN);
    eprintln!(
        "GET /api/v1/status with 2,003 allocations: {:.1} ms",
        ms(asked.elapsed())
    );
    assert_eq!(status["allocations"]["total"], 2003, "{status}");
    assert_eq!(
        status["allocations"]["by_transport"],
        serde_json::json!({"udp": 2000, "tcp": 3, "tls": 0}),
        "{status}"
    );
    assert_eq!(
        status["allocations"]["by_family"],
        serde_json::json!({"ipv4": 2003, "ipv6": 0}),
        "{status}"
    );
    assert_eq!(status["users"], USERS + 1, "{status}");

    let asked = Instant::now();
    let (code, text) = http(api, "GET", "/metrics", Some(TOKEN), "");
    eprintln!("GET /metrics: {:.1} ms", ms(asked.elapsed()));
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        metric(&text, "turnpike_allocations{transport=\"udp\"}"),
        2000.0
    );
    assert_eq!(
        metric(&text, "turnpike_allocations{transport=\"tcp\"}"),
        3.0
    );
    assert_eq!(
        metric(&text, "turnpike_allocations{transport=\"tls\"}"),
        0.0
    );
    assert_eq!(metric(&text, "turnpike_allocations_created_total"), 2003.0);

    // Pages of 1000 and of 333 each visit every allocation once, in id order.
    let ours: HashSet<String> = clients
        .iter()
        .chain(&tcp)
        .map(|c| c.local_addr().to_string())
        .collect();
    for (limit, expected_pages) in [(1000, 3), (333, 7)] {
        let asked = Instant::now();
        let (items, pages) = all_pages(api, limit, "");
        eprintln!(
            "{pages} pages of at most {limit}: {:.1} ms",
            ms(asked.elapsed())
        );
        assert_eq!(pages, expected_pages, "pages of {limit}");
        let ids: Vec<(u64, u64, u64)> = items
            .iter()
            .map(|a| id_parts(a["id"].as_str().expect("a string id")))
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids in order, each once (limit {limit})"
        );
        let workers: BTreeSet<u64> = ids.iter().map(|id| id.0).collect();
        assert_eq!(workers, BTreeSet::from([0, 1]), "both workers hold some");
        let listed: HashSet<String> = items
            .iter()
            .map(|a| a["client"]["address"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, ours, "the list is our clients (limit {limit})");
    }

    // One user's: user-7 holds 4 of them.
    let (user7, _) = all_pages(api, 1000, "&user=user-7");
    assert_eq!(user7.len(), UDP / USERS, "{user7:?}");
    assert!(user7.iter().all(|a| a["user"] == "user-7"), "{user7:?}");

    // Ten deleted by their clients, one by the operator: the API says so at once.
    for client in clients.iter_mut().take(10) {
        assert_eq!(client.refresh(0), None, "Refresh 0");
    }
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["allocations"]["total"], 1993, "{status}");
    let victim = clients.pop().expect("a client");
    let victim_address = victim.local_addr().to_string();
    let (items, _) = all_pages(api, 1000, "");
    let id = items
        .iter()
        .find(|a| a["client"]["address"] == victim_address.as_str())
        .and_then(|a| a["id"].as_str())
        .expect("the victim is listed")
        .to_owned();
    let path = format!("/api/v1/allocations/{id}");
    let (code, body) = http(api, "DELETE", &path, Some(TOKEN), "");
    assert_eq!(code, 200, "{body}");
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["allocations"]["total"], 1992, "{status}");
    let (items, _) = all_pages(api, 1000, "");
    assert!(
        items.iter().all(|a| a["id"] != id.as_str()),
        "the deleted one is not listed"
    );
    let (code, body) = http(api, "DELETE", &path, Some(TOKEN), "");
    assert_eq!(code, 404, "a second DELETE: {body}");
    let mut victim = victim;
    assert_eq!(victim.refresh(600), Some(437), "the victim's Refresh");
}

#[test]
fn the_allocation_list_refuses_hostile_queries() {
    let server = server();
    let api = server.addr("http");
    let _clients = hold(&server, 6, 2);
    let long = "7".repeat(8000);
    let ok = |path: &str| {
        let page = get_json(api, path, TOKEN);
        page["allocations"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: {page}"))
            .len()
    };
    assert_eq!(ok("/api/v1/allocations"), 6);
    // Limits are clamped into 1..=1000.
    assert_eq!(ok("/api/v1/allocations?limit=0"), 1);
    assert_eq!(ok("/api/v1/allocations?limit=1000000"), 6);
    // A cursor past the last worker, a user nobody is, a huge user: empty pages.
    assert_eq!(ok("/api/v1/allocations?cursor=9.0.0"), 0);
    assert_eq!(ok("/api/v1/allocations?cursor=1.4294967295.4294967295"), 0);
    assert_eq!(ok("/api/v1/allocations?user=nobody"), 0);
    assert_eq!(ok(&format!("/api/v1/allocations?user={long}")), 0);
    assert_eq!(ok("/api/v1/allocations?user="), 0);
    assert_eq!(ok("/api/v1/allocations?user=%FF%00%E2%80%AE"), 0);

    let cursor_error = "invalid cursor: pass the next_cursor of the previous page";
    for query in [
        "cursor=abc".to_owned(),
        "cursor=0.1".to_owned(),
        "cursor=1.2.3.4".to_owned(),
        "cursor=-1.0.0".to_owned(),
        "cursor=0.-1.0".to_owned(),
        "cursor=0.4294967296.0".to_owned(),
        "cursor=99999999999999999999999.0.0".to_owned(),
        "cursor=".to_owned(),
        format!("cursor={long}"),
    ] {
        let path = format!("/api/v1/allocations?{query}");
        let (code, body) = http(api, "GET", &path, Some(TOKEN), "");
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body.contains(cursor_error), "{query}: {body}");
    }
    for query in [
        "limit=-1",
        "limit=1e3",
        "limit=99999999999999999999999999",
        "limit=1&limit=2",
        "cursor=0.0.1&cursor=0.0.2",
        "user=a&user=b",
        "unknown=1",
    ] {
        let path = format!("/api/v1/allocations?{query}");
        let (code, body) = http(api, "GET", &path, Some(TOKEN), "");
        assert_eq!(code, 400, "{query}: {body}");
    }
    // Ids that name nothing.
    for id in [
        "0.0",
        "x",
        "0.0.0.0",
        "18446744073709551616.0.0",
        "1.99999.1",
        "5.0.1",
        long.as_str(),
    ] {
        let (code, body) = http(
            api,
            "DELETE",
            &format!("/api/v1/allocations/{id}"),
            Some(TOKEN),
            "",
        );
        assert_eq!(code, 404, "DELETE {id}: {body}");
    }
    // Without the token, or with another, nothing is asked of the workers.
    for token in [None, Some("wrong-token-0123456789")] {
        for path in [
            "/api/v1/allocations",
            "/api/v1/allocations?cursor=abc",
            "/api/v1/status",
        ] {
            let (code, body) = http(api, "GET", path, token, "");
            assert_eq!(code, 401, "{path} with {token:?}: {body}");
        }
    }
    // Repeated: 300 bad requests in a row, then the list is still whole.
    for i in 0..300 {
        let path = format!("/api/v1/allocations?cursor=bad{i}");
        let (code, _) = http(api, "GET", &path, Some(TOKEN), "");
        assert_eq!(code, 400);
    }
    assert_eq!(ok("/api/v1/allocations"), 6);
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["allocations"]["total"], 6, "{status}");
}

/// A client echoing through the relay at `rate` packets a second for `duration`, then
/// waiting up to a second for late echoes: sent, echoed, and the longest round trip.
fn relay_for(client: &mut StunClient, rate: u32, duration: Duration) -> (u64, u64, Duration) {
    /// Notes an echo: each sequence number counts once.
    fn take(echo: &[u8], sent_at: &[Instant], echoed: &mut HashSet<usize>, longest: &mut Duration) {
        let Ok(bytes) = <[u8; 8]>::try_from(echo) else {
            return;
        };
        let seq = u64::from_be_bytes(bytes) as usize;
        if seq < sent_at.len() && echoed.insert(seq) {
            *longest = (*longest).max(sent_at[seq].elapsed());
        }
    }
    let gap = Duration::from_secs(1) / rate;
    let started = Instant::now();
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut echoed = HashSet::new();
    let mut longest = Duration::ZERO;
    while started.elapsed() < duration {
        client.send_channel_data(CHANNEL, &(sent_at.len() as u64).to_be_bytes());
        sent_at.push(Instant::now());
        let next = started + gap * u32::try_from(sent_at.len()).expect("small");
        while let Some(echo) = client.recv_data(next) {
            take(&echo, &sent_at, &mut echoed, &mut longest);
        }
    }
    let drain = Instant::now() + Duration::from_secs(1);
    while echoed.len() < sent_at.len() {
        let Some(echo) = client.recv_data(drain) else {
            break;
        };
        take(&echo, &sent_at, &mut echoed, &mut longest);
    }
    (sent_at.len() as u64, echoed.len() as u64, longest)
}

#[test]
fn hammering_the_api_does_not_stall_relaying() {
    const HELD: usize = 2000;
    const RATE: u32 = 100;
    const DURATION: Duration = Duration::from_secs(6);
    /// Requests per hammering thread, at most.
    const MAX_REQUESTS: u64 = 20_000;
    let server = server();
    let api = server.addr("http");
    let _held = hold(&server, HELD, 100);
    let (peer, _echo) = udp_echo_peer();
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    client.allocate().expect("the relaying client allocates");
    assert_eq!(client.bind(CHANNEL, peer), None, "ChannelBind");
    let (_, warm, _) = relay_for(&mut client, RATE, Duration::from_millis(500));
    assert!(warm > 0, "the relay works before the hammering");

    let stop = Arc::new(AtomicBool::new(false));
    let paths: [(&str, Option<&'static str>); 8] = [
        ("/api/v1/allocations?limit=1000", Some(TOKEN)),
        ("/api/v1/allocations?limit=1000", Some(TOKEN)),
        ("/api/v1/allocations?limit=1000&cursor=0.500.1", Some(TOKEN)),
        ("/api/v1/status", Some(TOKEN)),
        ("/api/v1/status", Some(TOKEN)),
        ("/metrics", Some(TOKEN)),
        ("/api/v1/allocations?limit=1000", None),
        ("/api/v1/status", Some("wrong-token-0123456789")),
    ];
    let hammers: Vec<_> = paths
        .into_iter()
        .map(|(path, token)| {
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut refused, mut unavailable, mut longest) =
                    (0u64, 0u64, 0u64, Duration::ZERO);
                let deadline = Instant::now() + DURATION + Duration::from_secs(2);
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && ok + refused + unavailable < MAX_REQUESTS
                {
                    let asked = Instant::now();
                    let (code, _) = http(api, "GET", path, token, "");
                    longest = longest.max(asked.elapsed());
                    match code {
                        200 => ok += 1,
                        401 => refused += 1,
                        503 => unavailable += 1,
                        other => panic!("GET {path}: {other}"),
                    }
                }
                (
                    path,
                    token == Some(TOKEN),
                    ok,
                    refused,
                    unavailable,
                    longest,
                )
            })
        })
        .collect();
    let cpu_before = server_cpu(server.pid());
    let (sent, received, longest_echo) = relay_for(&mut client, RATE, DURATION);
    stop.store(true, Ordering::Relaxed);
    let cpu = server_cpu(server.pid()) - cpu_before;
    let mut served = 0;
    for hammer in hammers {
        let (path, authorized, ok, refused, unavailable, longest) =
            hammer.join().expect("a hammering thread");
        eprintln!(
            "hammer {path} (token: {authorized}): {ok} × 200, {refused} × 401, {unavailable} × 503, longest {:.1} ms",
            ms(longest)
        );
        if authorized {
            served += ok;
        } else {
            assert_eq!(ok + unavailable, 0, "{path} served without the token");
            assert!(refused > 0, "{path}: no answer without the token");
        }
    }
    let loss = 100.0 * (sent - received) as f64 / sent as f64;
    eprintln!(
        "relaying during the hammering: {received} of {sent} echoed ({loss:.1} % lost), longest round trip {:.1} ms; server CPU {:.2} s over {:.0} s",
        ms(longest_echo),
        cpu.as_secs_f64(),
        DURATION.as_secs_f64()
    );
    assert!(served > 0, "the API answered nothing while hammered");
    assert!(loss <= 5.0, "{loss:.1} % of the relayed packets lost");
    // And the API still tells the truth.
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(status["allocations"]["total"], HELD + 1, "{status}");
}

/// The server's CPU time (user + system), from `/proc/<pid>/stat`.
fn server_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's stat");
    let (_, tail) = stat.rsplit_once(')').expect("a stat line");
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[test]
fn a_question_to_a_flooded_worker_is_answered_within_the_timeout() {
    const HELD: usize = 500;
    const FLOOD: Duration = Duration::from_secs(4);
    /// Binding requests per flooding socket, at most.
    const MAX_DATAGRAMS: u64 = 2_000_000;
    let server = server();
    let api = server.addr("http");
    let udp = server.addr("udp");
    let _held = hold(&server, HELD, 10);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    // Sixteen sockets, so that both workers get their share; every Binding is answered
    // (`unauthenticated-rate = 0`), which keeps the workers busy.
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, sent) = (stop.clone(), sent.clone());
            thread::spawn(move || {
                let sockets: Vec<std::net::UdpSocket> = (0..4)
                    .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
                    .collect();
                for socket in &sockets {
                    socket.set_nonblocking(true).expect("non-blocking");
                }
                let mut buf = [0u8; 64];
                let mut w = turnpike::stun::MessageWriter::new(
                    &mut buf,
                    Method::BINDING,
                    turnpike::stun::Class::Request,
                    turnpike::stun::TransactionId([7; 12]),
                )
                .expect("a header fits");
                w.fingerprint().expect("fits");
                let n = w.finish();
                let deadline = Instant::now() + FLOOD + Duration::from_secs(2);
                let mut count = 0u64;
                let mut answers = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    for socket in &sockets {
                        let _ = socket.send_to(&buf[..n], udp);
                        while socket.recv(&mut answers).is_ok() {}
                    }
                    count += sockets.len() as u64;
                    if count >= MAX_DATAGRAMS {
                        break;
                    }
                }
                sent.fetch_add(count, Ordering::Relaxed);
            })
        })
        .collect();
    let started = Instant::now();
    let cpu_before = server_cpu(server.pid());
    let mut latencies = Vec::new();
    while started.elapsed() < FLOOD {
        let asked = Instant::now();
        let (code, body) = http(api, "GET", "/api/v1/status", Some(TOKEN), "");
        latencies.push(asked.elapsed());
        assert_eq!(code, 200, "status during the flood: {body}");
        let status: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(status["allocations"]["total"], HELD, "{status}");
        thread::sleep(Duration::from_millis(50));
    }
    let busy =
        (server_cpu(server.pid()) - cpu_before).as_secs_f64() / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().expect("a flooding thread");
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let longest = latencies[latencies.len() - 1];
    eprintln!(
        "{} status requests during a flood of {} Bindings (server at {:.0} % of a core): median {:.1} ms, longest {:.1} ms",
        latencies.len(),
        sent.load(Ordering::Relaxed),
        busy * 100.0,
        ms(median),
        ms(longest)
    );
    // Answered (200, checked above) means within the 2 s answer timeout; generous bound on
    // the whole request, the HTTP exchange included.
    assert!(longest < Duration::from_secs(3), "longest {longest:?}");
    let stats = server.stats();
    assert!(
        stats.get("binding_requests") > 0,
        "the flood reached the server"
    );
}

/// A thread of another process stopped with ptrace (only that thread: the others run on),
/// until dropped. Every call comes from the thread that made it, as ptrace requires.
struct Frozen {
    tid: libc::pid_t,
}

impl Frozen {
    fn new(tid: libc::pid_t) -> Frozen {
        // SAFETY: ptrace and waitpid on a thread id, with no pointers passed.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE {tid}: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
                0,
                "PTRACE_INTERRUPT {tid}: {}",
                std::io::Error::last_os_error()
            );
            let mut status = 0;
            assert_eq!(
                libc::waitpid(tid, &mut status, libc::__WALL),
                tid,
                "waitpid {tid}: {}",
                std::io::Error::last_os_error()
            );
        }
        Frozen { tid }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0);
        }
    }
}

/// The thread ids of the server's worker threads, in the order they were started.
fn worker_threads(pid: u32) -> Vec<libc::pid_t> {
    let mut tids: Vec<libc::pid_t> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the server's threads")
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with("turnpike-worke"))
        })
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

#[test]
fn a_stuck_worker_gets_a_clear_503_not_a_hang() {
    let server = server();
    let api = server.addr("http");
    let (peer, _echo) = udp_echo_peer();
    // Clients on both workers, each with a channel to the echo peer.
    let mut clients: Vec<StunClient> = (0..12)
        .map(|_| {
            let mut client =
                StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
            client.allocate().expect("allocate");
            assert_eq!(client.bind(CHANNEL, peer), None, "ChannelBind");
            client
        })
        .collect();
    let list = get_json(api, "/api/v1/allocations", TOKEN);
    let worker_of = |client: &StunClient| -> (u64, String) {
        let address = client.local_addr().to_string();
        let a = list["allocations"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|a| a["client"]["address"] == address.as_str())
            })
            .unwrap_or_else(|| panic!("{address} not listed: {list}"));
        let id = a["id"].as_str().expect("an id").to_owned();
        (id_parts(&id).0, id)
    };
    let workers: BTreeSet<u64> = clients.iter().map(|c| worker_of(c).0).collect();
    assert_eq!(
        workers,
        BTreeSet::from([0, 1]),
        "12 clients on both workers"
    );

    let tids = worker_threads(server.pid());
    assert_eq!(tids.len(), 2, "two worker threads: {tids:?}");
    let frozen = Frozen::new(tids[0]);

    // The status API gives up on the stuck worker after the answer timeout (2 s) and says
    // which it is.
    let asked = Instant::now();
    let (code, body) = http(api, "GET", "/api/v1/status", Some(TOKEN), "");
    let took = asked.elapsed();
    eprintln!(
        "status with a stuck worker: {code} after {:.2} s: {body}",
        took.as_secs_f64()
    );
    assert_eq!(code, 503, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    let stuck = answer["unanswered_workers"]
        .as_array()
        .and_then(|w| (w.len() == 1).then(|| w[0].as_u64()).flatten())
        .unwrap_or_else(|| panic!("one stuck worker named: {answer}"));
    assert_eq!(
        answer["error"],
        format!("worker {stuck} did not answer within 2 s; try again"),
        "{answer}"
    );
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(6)).contains(&took),
        "503 after {took:?}"
    );
    // So do the list and the metrics; the probes are not held up.
    for path in ["/api/v1/allocations", "/metrics"] {
        let asked = Instant::now();
        let (code, body) = http(api, "GET", path, Some(TOKEN), "");
        eprintln!(
            "{path} with a stuck worker: {code} after {:.2} s",
            asked.elapsed().as_secs_f64()
        );
        assert_eq!(code, 503, "{path}: {body}");
        assert!(body.contains("did not answer within 2 s"), "{path}: {body}");
    }
    let asked = Instant::now();
    let (code, _) = http(api, "GET", "/healthz", None, "");
    assert_eq!(code, 200, "healthz");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "healthz took {:?}",
        asked.elapsed()
    );

    // The other worker relays, and closes an allocation of its own on request; closing one of
    // the stuck worker's gets 503.
    let (live, stuck_clients): (Vec<usize>, Vec<usize>) =
        (0..clients.len()).partition(|&i| worker_of(&clients[i]).0 != stuck);
    for &i in &live {
        let payload = [i as u8; 32];
        clients[i].send_channel_data(CHANNEL, &payload);
        let echo = clients[i].recv_data(Instant::now() + Duration::from_secs(5));
        assert_eq!(
            echo.as_deref(),
            Some(&payload[..]),
            "client {i} on the live worker"
        );
    }
    let (_, live_id) = worker_of(&clients[live[0]]);
    let (code, body) = http(
        api,
        "DELETE",
        &format!("/api/v1/allocations/{live_id}"),
        Some(TOKEN),
        "",
    );
    assert_eq!(code, 200, "DELETE on the live worker: {body}");
    let (_, stuck_id) = worker_of(&clients[stuck_clients[0]]);
    let (code, body) = http(
        api,
        "DELETE",
        &format!("/api/v1/allocations/{stuck_id}"),
        Some(TOKEN),
        "",
    );
    assert_eq!(code, 503, "DELETE on the stuck worker: {body}");

    // SIGUSR1 still logs the stats line, with a warning naming the worker.
    let asked = Instant::now();
    let stats = server.stats();
    eprintln!(
        "stats line with a stuck worker after {:.2} s",
        asked.elapsed().as_secs_f64()
    );
    assert!(
        stats.get("allocations") >= live.len() as u64 - 1,
        "{stats:?}"
    );
    let warned = server.wait_for_log(
        &format!("worker {stuck} did not answer within 2 s"),
        1,
        Duration::from_secs(5),
    );
    assert!(!warned.is_empty(), "no warning naming the stuck worker");

    // Once it runs again, everything answers, and its clients relay.
    drop(frozen);
    let status = get_json(api, "/api/v1/status", TOKEN);
    assert_eq!(
        status["allocations"]["total"],
        clients.len() - 1,
        "{status}"
    );
    for &i in &stuck_clients {
        let payload = [i as u8; 48];
        clients[i].send_channel_data(CHANNEL, &payload);
        let echo = clients[i].recv_data(Instant::now() + Duration::from_secs(5));
        assert_eq!(
            echo.as_deref(),
            Some(&payload[..]),
            "client {i} after the thaw"
        );
    }
    let (code, body) = http(
        api,
        "DELETE",
        &format!("/api/v1/allocations/{stuck_id}"),
        Some(TOKEN),
        "",
    );
    assert_eq!(code, 200, "DELETE once the worker runs: {body}");
}

#[test]
fn the_stats_line_counts_everything_handled_before_the_signal() {
    let server = server();
    let (peer, _echo) = udp_echo_peer();
    let mut client = StunClient::udp(server.addr("udp"), "127.0.0.1:0", "alice", "wonderland");
    client.allocate().expect("allocate");
    assert_eq!(client.bind(CHANNEL, peer), None, "ChannelBind");
    let before = server.stats();

    // 50 echoes, each awaited: the server has relayed each both ways.
    for i in 0..50u8 {
        let payload = [i; 100];
        client.send_channel_data(CHANNEL, &payload);
        let echo = client.recv_data(Instant::now() + Duration::from_secs(5));
        assert_eq!(echo.as_deref(), Some(&payload[..]), "echo {i}");
    }
    // 30 Bindings, each answered.
    for _ in 0..30 {
        let answer = client.request(Method::BINDING, &|_| {});
        assert_eq!(answer.code, None, "Binding");
    }
    // 100 ChannelData messages on a channel never bound (dropped unanswered), then a Binding
    // on the same socket: answered, so each datagram before it has been handled.
    for _ in 0..100 {
        client.send_channel_data(CHANNEL + 1, b"no channel");
    }
    assert_eq!(client.request(Method::BINDING, &|_| {}).code, None);

    let asked = Instant::now();
    let after = server.stats();
    eprintln!("stats line {:.1} ms after SIGUSR1", ms(asked.elapsed()));
    let moved = |name: &str| after.get(name) - before.get(name);
    assert_eq!(moved("to_peer_packets"), 50, "{after:?}");
    assert_eq!(moved("to_client_packets"), 50, "{after:?}");
    assert_eq!(moved("to_peer_bytes"), 5000, "{after:?}");
    assert_eq!(moved("to_client_bytes"), 5000, "{after:?}");
    assert_eq!(moved("binding_requests"), 31, "{after:?}");
    assert_eq!(moved("dropped_no_permission"), 100, "{after:?}");
    assert_eq!(after.get("allocations"), 1, "{after:?}");
    // And a deletion is counted at once.
    assert_eq!(client.refresh(0), None, "Refresh 0");
    let deleted = server.stats();
    assert_eq!(deleted.get("allocations"), 0, "{deleted:?}");
    assert_eq!(
        deleted.get("allocations_deleted") - before.get("allocations_deleted"),
        1,
        "{deleted:?}"
    );
}
