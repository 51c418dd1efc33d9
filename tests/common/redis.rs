//! A throwaway `redis-server` per test: its own port on 127.0.0.1, no persistence, killed (by
//! pid: Redis rewrites its process title) on drop, and restartable on the same port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long `redis-server` may take to answer PING after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` on 127.0.0.1; killed and reaped on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Its working directory and log files.
    dir: TempDir,
    starts: u32,
}

impl RedisServer {
    /// Starts a Redis on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut redis = RedisServer {
            child: None,
            port: super::free_port(),
            dir: tempfile::tempdir().expect("create a tempdir"),
            starts: 0,
        };
        for attempt in 1..=5 {
            if redis.spawn() {
                return redis;
            }
            eprintln!(
                "redis-server did not come up on port {} (attempt {attempt}), retrying",
                redis.port
            );
            redis.port = super::free_port();
        }
        panic!("redis-server did not come up in 5 attempts");
    }

    /// Starts a Redis on `port`, which must be free (e.g. from [`super::free_port`]).
    pub fn start_on(port: u16) -> RedisServer {
        let mut redis = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("create a tempdir"),
            starts: 0,
        };
        assert!(redis.spawn(), "redis-server did not come up on port {port}");
        redis
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A synchronous connection, for writing arbitrary (binary) keys and values.
    pub fn connection(&self) -> ::redis::Connection {
        let client = ::redis::Client::open(self.url()).expect("a valid Redis URL");
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to Redis on port {}: {e}", self.port))
    }

    /// Runs `redis-cli -p PORT ARGS...` and returns its output; fails the test when it fails or
    /// Redis answers with an error.
    pub fn cli(&self, args: &[&str]) -> String {
        let program = super::require_tool("redis-cli");
        let output = Command::new(program)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && !stdout.starts_with("ERR") && !stdout.contains("(error)"),
            "redis-cli {args:?}: {}; stdout: {stdout}; stderr: {stderr}",
            output.status
        );
        stdout
    }

    /// Kills Redis (SIGKILL, by pid) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // Err only if it already exited.
            let _ = child.wait();
        }
    }

    /// Stops Redis in its tracks (SIGSTOP): connections stay open and commands go unanswered,
    /// as with a Redis that hangs, until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused Redis go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("Redis is running");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) with a valid signal has no memory-safety preconditions; the child is
        // not reaped before `kill` or drop, so the pid is still ours.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            sent,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Starts Redis again on the same port, empty (nothing is persisted). Retries for a few
    /// seconds should the port be briefly unavailable.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "redis-server did not come back on port {}; logs in {}",
            self.port,
            self.dir.path().display()
        );
    }

    /// Spawns redis-server on `self.port` and waits for PING; false when it exits or does not
    /// answer in time.
    fn spawn(&mut self) -> bool {
        let program = super::require_tool("redis-server");
        self.starts += 1;
        let log = self.log_path();
        let (stdout, stderr) = super::output_file(&log);
        let mut child = Command::new(program)
            .args(["--save", "", "--appendonly", "no"])
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().expect("poll redis-server").is_some() {
                let printed = std::fs::read_to_string(&log).unwrap_or_default();
                eprintln!("redis-server exited on port {}:\n{printed}", self.port);
                return false;
            }
            if self.pings() {
                self.child = Some(child);
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn pings(&self) -> bool {
        let Ok(client) = ::redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return false;
        };
        ::redis::cmd("PING")
            .query::<String>(&mut conn)
            .is_ok_and(|pong| pong == "PONG")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
