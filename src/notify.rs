//! The service manager's notification protocol (`sd_notify(3)`): readiness, reloads, stopping,
//! status text and watchdog pings, as datagrams to the socket named by `NOTIFY_SOCKET`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Talks to the service manager when `NOTIFY_SOCKET` is set; every call is a no-op otherwise.
///
/// Sends never block: the socket is non-blocking, and a notification the manager cannot take
/// right now is dropped with a warning rather than stalling the caller.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    watchdog_interval: Option<Duration>,
}

/// Where notifications go: an unbound datagram socket and the manager's address.
#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment (and
    /// leaves them there). A variable that cannot be used is logged as a warning and the
    /// notifier does nothing.
    pub fn from_env() -> Notifier {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// [`Notifier::from_env`] with the variables read through `lookup`, so that tests need not
    /// touch the process environment.
    fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Notifier {
        let Some(socket) = lookup("NOTIFY_SOCKET") else {
            return Self::disabled();
        };
        let target = match Target::connect(&socket) {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(
                    notify_socket = %socket.to_string_lossy(),
                    %error,
                    "NOTIFY_SOCKET unusable: not notifying the service manager"
                );
                return Self::disabled();
            }
        };
        Notifier {
            target: Some(target),
            watchdog_interval: watchdog_interval(&lookup, std::process::id()),
        }
    }

    fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog_interval: None,
        }
    }

    /// Listeners are bound and the server is serving.
    pub fn ready(&self) {
        self.send(&format!(
            "READY=1\nSTATUS=serving\nMAINPID={}",
            std::process::id()
        ));
    }

    /// A reload (SIGHUP) has begun; call [`Notifier::ready`] when it is done.
    pub fn reloading(&self) {
        if self.target.is_some() {
            self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
    }

    /// The server is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// One line of free text shown by `systemctl status`. Newlines, carriage returns and NUL
    /// bytes become spaces: they would start another assignment or make the manager drop the
    /// whole datagram.
    pub fn status(&self, text: &str) {
        if self.target.is_some() {
            let line: String = text
                .chars()
                .map(|c| {
                    if matches!(c, '\n' | '\r' | '\0') {
                        ' '
                    } else {
                        c
                    }
                })
                .collect();
            self.send(&format!("STATUS={line}"));
        }
    }

    /// Tells the manager the process is alive; call it every [`Notifier::watchdog_interval`].
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Half of WATCHDOG_USEC when set and WATCHDOG_PID is absent or ours: how often to call `watchdog`.
    ///
    /// `None` as well when there is no `NOTIFY_SOCKET` to send the pings to.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        if let Err(error) = target
            .socket
            .send_to_addr(message.as_bytes(), &target.address)
        {
            let kind = message.split('=').next().unwrap_or_default();
            tracing::warn!(%error, notification = kind, "cannot notify the service manager");
        }
    }
}

impl Target {
    /// `/path` is a socket file, `@name` an abstract socket; nothing else is supported (systemd
    /// also knows `vsock:`, which a service on the host never gets).
    fn connect(notify_socket: &OsStr) -> io::Result<Target> {
        let bytes = notify_socket.as_bytes();
        let address = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(notify_socket)?,
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "expected an absolute path or @abstract-name",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Target { socket, address })
    }
}

/// Half of `WATCHDOG_USEC` (at least 1 µs) when it is a positive integer and `WATCHDOG_PID` is
/// absent or `pid`, as `sd_watchdog_enabled(3)` decides.
fn watchdog_interval(lookup: impl Fn(&str) -> Option<OsString>, pid: u32) -> Option<Duration> {
    let usec = lookup("WATCHDOG_USEC")?;
    let usec = match usec.to_str().and_then(|text| text.parse::<u64>().ok()) {
        Some(usec) if usec > 0 => usec,
        _ => {
            tracing::warn!(watchdog_usec = %usec.to_string_lossy(), "WATCHDOG_USEC is not a positive integer: no watchdog");
            return None;
        }
    };
    if let Some(watchdog_pid) = lookup("WATCHDOG_PID") {
        match watchdog_pid
            .to_str()
            .and_then(|text| text.parse::<u32>().ok())
        {
            Some(watchdog_pid) if watchdog_pid == pid => {}
            Some(_) => return None, // The watchdog is another process's (e.g. our parent's).
            None => {
                tracing::warn!(watchdog_pid = %watchdog_pid.to_string_lossy(), "WATCHDOG_PID is not a pid: no watchdog");
                return None;
            }
        }
    }
    Some(Duration::from_micros((usec / 2).max(1)))
}

/// CLOCK_MONOTONIC in microseconds, the clock `MONOTONIC_USEC` is read against.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given. CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail and `now` is always written.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0); // Never negative for CLOCK_MONOTONIC.
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0); // Always 0..1_000_000_000.
    seconds * 1_000_000 + nanos / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An environment of the given variables only.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: HashMap<String, OsString> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), OsString::from(value)))
            .collect();
        move |name| vars.get(name).cloned()
    }

    /// A socket playing the service manager, with the `NOTIFY_SOCKET` value that names it.
    struct Manager {
        socket: UnixDatagram,
        notify_socket: String,
        _dir: tempfile::TempDir,
    }

    impl Manager {
        fn at_path() -> Manager {
            let dir = tempfile::tempdir().expect("create a tempdir");
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
            let notify_socket = path.to_str().expect("a UTF-8 tempdir").to_string();
            Manager::new(socket, notify_socket, dir)
        }

        fn abstract_socket() -> Manager {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "turnpike-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("a short name");
            let socket = UnixDatagram::bind_addr(&address).expect("bind the abstract socket");
            let dir = tempfile::tempdir().expect("create a tempdir");
            Manager::new(socket, format!("@{name}"), dir)
        }

        fn new(socket: UnixDatagram, notify_socket: String, dir: tempfile::TempDir) -> Manager {
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("set a read timeout");
            Manager {
                socket,
                notify_socket,
                _dir: dir,
            }
        }

        fn notifier(&self) -> Notifier {
            Notifier::from_lookup(env(&[("NOTIFY_SOCKET", &self.notify_socket)]))
        }

        fn receive(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).expect("a notification");
            String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
        }

        fn nothing_pending(&self) -> bool {
            self.socket.set_nonblocking(true).expect("non-blocking");
            let pending = self.socket.recv(&mut [0u8; 64]);
            self.socket.set_nonblocking(false).expect("blocking");
            matches!(pending, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }

    fn check_every_message(manager: &Manager) {
        let notifier = manager.notifier();
        notifier.ready();
        assert_eq!(
            manager.receive(),
            format!("READY=1\nSTATUS=serving\nMAINPID={}", std::process::id())
        );
        notifier.stopping();
        assert_eq!(manager.receive(), "STOPPING=1");
        notifier.watchdog();
        assert_eq!(manager.receive(), "WATCHDOG=1");
        notifier.status("draining 3 allocations");
        assert_eq!(manager.receive(), "STATUS=draining 3 allocations");
        assert!(manager.nothing_pending());
    }

    #[test]
    fn sends_each_notification_to_a_socket_file() {
        check_every_message(&Manager::at_path());
    }

    #[test]
    fn sends_each_notification_to_an_abstract_socket() {
        check_every_message(&Manager::abstract_socket());
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let manager = Manager::at_path();
        let before = monotonic_usec();
        manager.notifier().reloading();
        let after = monotonic_usec();
        let message = manager.receive();
        let usec = message
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("unexpected {message:?}"));
        let usec: u64 = usec.parse().expect("an integer");
        assert!(
            (before..=after).contains(&usec),
            "{before} <= {usec} <= {after}"
        );
    }

    #[test]
    fn status_cannot_smuggle_another_assignment() {
        let manager = Manager::at_path();
        manager.notifier().status("ok\nREADY=1\r\0!");
        assert_eq!(manager.receive(), "STATUS=ok READY=1  !");
    }

    #[test]
    fn without_notify_socket_nothing_happens() {
        let notifier = Notifier::from_lookup(env(&[("WATCHDOG_USEC", "2000000")]));
        assert!(notifier.target.is_none());
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.ready();
        notifier.reloading();
        notifier.stopping();
        notifier.status("x");
        notifier.watchdog();
    }

    #[test]
    fn an_unusable_notify_socket_disables_the_notifier() {
        for value in [
            "",
            "relative/path",
            "vsock:2:1234",
            &format!("/{}", "x".repeat(200)),
        ] {
            let notifier = Notifier::from_lookup(env(&[("NOTIFY_SOCKET", value)]));
            assert!(notifier.target.is_none(), "{value:?} accepted");
        }
    }

    #[test]
    fn a_vanished_manager_is_only_a_warning() {
        let manager = Manager::at_path();
        let notifier = manager.notifier();
        drop(manager);
        notifier.ready();
        notifier.watchdog();
    }

    /// Environment variables, and the watchdog interval they give.
    type WatchdogCase<'a> = (&'a [(&'a str, &'a str)], Option<Duration>);

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec() {
        let ours = std::process::id();
        let theirs = ours.wrapping_add(1).to_string();
        let ours = ours.to_string();
        let cases: &[WatchdogCase] = &[
            (
                &[("WATCHDOG_USEC", "2000000")],
                Some(Duration::from_secs(1)),
            ),
            (
                &[("WATCHDOG_USEC", "400000")],
                Some(Duration::from_millis(200)),
            ),
            (
                &[("WATCHDOG_USEC", "2000000"), ("WATCHDOG_PID", &ours)],
                Some(Duration::from_secs(1)),
            ),
            (
                &[("WATCHDOG_USEC", "2000000"), ("WATCHDOG_PID", &theirs)],
                None,
            ),
            (&[("WATCHDOG_USEC", "2000000"), ("WATCHDOG_PID", "x")], None),
            (&[("WATCHDOG_USEC", "1")], Some(Duration::from_micros(1))),
            (&[("WATCHDOG_USEC", "0")], None),
            (&[("WATCHDOG_USEC", "-5")], None),
            (&[("WATCHDOG_USEC", "30s")], None),
            (&[("WATCHDOG_PID", &ours)], None),
            (&[], None),
        ];
        for (vars, expected) in cases {
            let pid = std::process::id();
            assert_eq!(
                watchdog_interval(env(vars), pid),
                *expected,
                "environment {vars:?}"
            );
        }
    }

    #[test]
    fn watchdog_interval_comes_with_the_socket() {
        let manager = Manager::at_path();
        let notifier = Notifier::from_lookup(env(&[
            ("NOTIFY_SOCKET", &manager.notify_socket),
            ("WATCHDOG_USEC", "2000000"),
        ]));
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(1)));
    }
}
