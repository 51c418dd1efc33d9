//! What an idle server costs while it holds many allocations, and how fast its status API
//! answers then: starts the release binary on loopback, allocates N UDP allocations with
//! `turnpike::client` (kept, not refreshed: the default lifetime outlives the run), lets it
//! settle, then measures the CPU time of the worker threads (the packet threads) and of the
//! whole process over S idle seconds, from `/proc/<pid>/task/*/stat`, and times
//! `GET /api/v1/status`, `GET /api/v1/allocations?limit=1000` and `GET /metrics`.
//!
//! ```sh
//! cargo bench --bench idle -- --allocations 5000 --seconds 60
//! TURNPIKE_BENCH_BIN=/path/to/other/turnpike cargo bench --bench idle -- --allocations 5000
//! ```
//!
//! Prints the figures and one JSON line. Without `--bench` (as `cargo test --all-targets`
//! runs it) it makes a short run of 50 allocations over 1 s, checks that the status API
//! counts them, and prints the same.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use turnpike::client::{Client, ClientConfig, Credentials, Transport};

const TOKEN: &str = "idle-bench-token-0123456789";
/// How many Allocates are in flight at once.
const CONCURRENCY: usize = 64;
/// Every wait on the server is bounded by this.
const TIMEOUT: Duration = Duration::from_secs(30);

struct Options {
    allocations: usize,
    seconds: u64,
    /// Requests timed per endpoint.
    requests: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let mut options = if bench {
        Options {
            allocations: 5000,
            seconds: 60,
            requests: 10,
        }
    } else {
        Options {
            allocations: 50,
            seconds: 1,
            requests: 3,
        }
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            let text = args
                .next()
                .unwrap_or_else(|| panic!("{name} needs a value"));
            text.parse()
                .unwrap_or_else(|e| panic!("{name} {text}: {e}"))
        };
        match arg.as_str() {
            "--allocations" => options.allocations = value(arg) as usize,
            "--seconds" => options.seconds = value(arg),
            "--requests" => options.requests = value(arg) as usize,
            // What cargo bench and the libtest conventions pass.
            _ => {}
        }
    }
    assert!(
        (1..=18_000).contains(&options.allocations),
        "--allocations: 1 to 18,000 (each is a socket on both sides)"
    );
    assert!(
        (1..=3600).contains(&options.seconds),
        "--seconds: 1 to 3600"
    );
    assert!(
        (1..=1000).contains(&options.requests),
        "--requests: 1 to 1000"
    );
    options
}

fn binary() -> PathBuf {
    match std::env::var_os("TURNPIKE_BENCH_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_turnpike")),
    }
}

/// Raises this process's open-file limit to the hard limit (a socket per client).
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

struct Server {
    child: Child,
    udp: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("a tempdir");
    let config = dir.path().join("turnpike.toml");
    std::fs::write(
        &config,
        format!(
            "realm = \"turnpike.bench\"\nworkers = 2\n\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\n\
             [relay]\naddress = \"127.0.0.1\"\nports = \"20000-59999\"\n\n\
             [[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\n\
             [limits]\nuser-allocations = 0\nunauthenticated-rate = 0\n\n\
             [http]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"
        ),
    )
    .expect("write the configuration");
    let mut child = Command::new(binary())
        .args(["serve", "--log-format", "json", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary().display()));
    let stderr = child.stderr.take().expect("piped");
    let (lines, listening) = mpsc::channel();
    // Reads the log to the end, so that the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let (mut udp, mut http) = (None, None);
    loop {
        let line = listening
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server says ready in time");
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let fields = &event["fields"];
        match fields["message"].as_str() {
            Some("listening") => {
                let address = fields["address"].as_str().and_then(|a| a.parse().ok());
                match fields["transport"].as_str() {
                    Some("udp") => udp = address,
                    Some("http") => http = address,
                    _ => {}
                }
            }
            Some("ready") => break,
            _ => {}
        }
    }
    // Keep draining the log in the background.
    std::thread::spawn(move || while listening.recv().is_ok() {});
    Server {
        child,
        udp: udp.expect("a UDP listener"),
        http: http.expect("the HTTP API"),
        _dir: dir,
    }
}

/// Allocates `count` UDP allocations, `CONCURRENCY` at a time; returns the clients holding them.
fn allocate(server: SocketAddr, count: usize) -> (Vec<Client>, Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    let clients = runtime.block_on(async {
        let mut clients = Vec::with_capacity(count);
        let mut tasks = tokio::task::JoinSet::new();
        let mut started = 0;
        while clients.len() < count {
            while started < count && tasks.len() < CONCURRENCY {
                started += 1;
                tasks.spawn(async move {
                    let config = ClientConfig::new(
                        server,
                        Transport::Udp,
                        Credentials::long_term("alice", "wonderland"),
                    );
                    let mut client = Client::connect(config).await?;
                    client.allocate(None).await?;
                    Ok::<_, turnpike::client::ClientError>(client)
                });
            }
            let joined = tokio::time::timeout(TIMEOUT, tasks.join_next())
                .await
                .expect("an Allocate answered in time")
                .expect("a task");
            clients.push(
                joined
                    .expect("the task ran")
                    .unwrap_or_else(|e| panic!("allocation {}: {e}", clients.len() + 1)),
            );
        }
        clients
    });
    (clients, started.elapsed())
}

/// CPU time (user + system) of the process's worker threads and of the whole process.
fn cpu(pid: u32) -> (Duration, Duration) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut workers = 0.0;
    let mut all = 0.0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads");
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The name is in parentheses and may hold spaces: fields count from its end.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = tail.split_whitespace().collect();
        let time = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat(5); `tail` starts at field 3.
        let seconds = (time(11) + time(12)) / ticks;
        all += seconds;
        if head.contains("turnpike-worke") {
            workers += seconds;
        }
    }
    (
        Duration::from_secs_f64(workers),
        Duration::from_secs_f64(all),
    )
}

/// `GET path` with the token: the status, the body and how long it took.
fn get(api: SocketAddr, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&api, TIMEOUT).expect("connect to the API");
    stream.set_read_timeout(Some(TIMEOUT)).expect("a timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: turnpike\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the answer");
    let took = started.elapsed();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body, took)
}

/// The median and the longest of `count` timed requests for `path`, each checked.
fn timed(api: SocketAddr, path: &str, count: usize, check: impl Fn(&str)) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..count)
        .map(|_| {
            let (status, body, took) = get(api, path);
            assert_eq!(status, 200, "GET {path}: {body}");
            check(&body);
            took
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let options = options();
    raise_open_files();
    let server = start_server();
    let pid = server.child.id();
    let (clients, took) = allocate(server.udp, options.allocations);
    eprintln!(
        "idle: {} allocations in {:.1} s ({})",
        clients.len(),
        took.as_secs_f64(),
        binary().display()
    );
    // Let the allocation burst's work (logging, the first status snapshots) end.
    std::thread::sleep(Duration::from_secs(2));
    let (workers_before, all_before) = cpu(pid);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(options.seconds));
    let (workers_after, all_after) = cpu(pid);
    let wall = started.elapsed().as_secs_f64();
    let worker_cpu = workers_after.saturating_sub(workers_before);
    let all_cpu = all_after.saturating_sub(all_before);

    let expected = options.allocations;
    let (status_median, status_max) =
        timed(server.http, "/api/v1/status", options.requests, |body| {
            let status: serde_json::Value = serde_json::from_str(body).expect("JSON");
            assert_eq!(
                status["allocations"]["total"].as_u64(),
                Some(expected as u64),
                "the status counts every allocation: {status}"
            );
        });
    let (page_median, page_max) = timed(
        server.http,
        "/api/v1/allocations?limit=1000",
        options.requests,
        |body| {
            let page: serde_json::Value = serde_json::from_str(body).expect("JSON");
            let listed = page["allocations"].as_array().map_or(0, Vec::len);
            assert_eq!(listed, expected.min(1000), "a full page");
        },
    );
    let (metrics_median, metrics_max) = timed(server.http, "/metrics", options.requests, |body| {
        assert!(body.contains("turnpike_allocations{"), "{body}");
    });
    drop(clients);

    eprintln!(
        "idle: over {wall:.1} s: worker threads {:.1} ms of CPU ({:.3} % of a core), whole process {:.1} ms ({:.3} %)",
        ms(worker_cpu),
        worker_cpu.as_secs_f64() / wall * 100.0,
        ms(all_cpu),
        all_cpu.as_secs_f64() / wall * 100.0,
    );
    eprintln!(
        "idle: GET /api/v1/status {:.2} ms median, {:.2} ms max; /api/v1/allocations?limit=1000 {:.2} / {:.2} ms; /metrics {:.2} / {:.2} ms",
        ms(status_median),
        ms(status_max),
        ms(page_median),
        ms(page_max),
        ms(metrics_median),
        ms(metrics_max),
    );
    println!(
        "{}",
        serde_json::json!({
            "allocations": options.allocations,
            "seconds": wall,
            "worker_cpu_ms": ms(worker_cpu),
            "process_cpu_ms": ms(all_cpu),
            "worker_cpu_percent": worker_cpu.as_secs_f64() / wall * 100.0,
            "status_ms": {"median": ms(status_median), "max": ms(status_max)},
            "allocations_page_ms": {"median": ms(page_median), "max": ms(page_max)},
            "metrics_ms": {"median": ms(metrics_median), "max": ms(metrics_max)},
        })
    );
}
