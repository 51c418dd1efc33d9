//! A network namespace a test makes for itself (needs root): its own loopback interface, with
//! whatever addresses the test adds, so a test can give "the host" addresses other than
//! 127.0.0.1 without depending on, or sending traffic to, the real host's interfaces. The
//! server runs inside it (`Server::start_in_netns`), the test's client from a thread that has
//! entered it (`NetNs::run`). Deleted on drop, even when the test fails.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Makes the names of one test process's namespaces unique.
static NAMESPACES: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `tp-<tag>-<pid>-<n>` with its loopback interface up (127.0.0.1 and ::1).
    pub fn new(tag: &str) -> NetNs {
        super::require_tool("ip");
        let n = NAMESPACES.fetch_add(1, Ordering::Relaxed);
        let name = format!("tp-{tag}-{}-{n}", std::process::id());
        assert!(
            name.len() < 64,
            "namespace name {name:?} too long for /run/netns"
        );
        run_ip(&["netns", "add", &name]);
        // From here on, drop deletes it.
        let netns = NetNs { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>`; fails the test with `ip`'s stderr when it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all);
    }

    /// Adds `cidr` (e.g. "10.77.0.1/32", "fd77::1/128") to the namespace's loopback interface.
    pub fn add_address(&self, cidr: &str) {
        self.ip(&["address", "add", cidr, "dev", "lo"]);
    }

    /// Removes `cidr` from the namespace's loopback interface.
    pub fn remove_address(&self, cidr: &str) {
        self.ip(&["address", "del", cidr, "dev", "lo"]);
    }

    /// Runs `f` on a thread that has entered the namespace (setns(2)): the sockets it creates
    /// live there. A panic in `f` fails the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file =
                        std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                    // SAFETY: setns(2) with a namespace file descriptor we hold open; it only
                    // changes this thread's network namespace.
                    let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(
                        entered,
                        0,
                        "setns({path}): {}",
                        std::io::Error::last_os_error()
                    );
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let deleted = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        if !deleted.is_ok_and(|status| status.success()) {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

fn run_ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        output.status.success(),
        "ip {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
