//! The service manager's notifications (`sd_notify(3)`): readiness, reloads, stopping and
//! watchdog pings, sent with the `sd-notify` crate from a thread of their own.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::Duration;

use sd_notify::NotifyState;

/// Notifications waiting for the sending thread; more are dropped with a warning.
const QUEUE: usize = 16;

/// Talks to the service manager when `NOTIFY_SOCKET` is set; every call is a no-op otherwise.
///
/// Calls never block: `sd-notify` sends on a blocking socket, so a thread does the sending,
/// and a notification that finds 16 others still waiting (a manager that stopped
/// reading) is dropped with a warning rather than stalling the caller. Clones share the
/// thread, which ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Notifier {
    sender: Option<SyncSender<Notification>>,
    watchdog_interval: Option<Duration>,
}

/// What the sending thread is asked to send.
#[derive(Debug)]
enum Notification {
    Ready,
    /// With CLOCK_MONOTONIC read when the reload began.
    Reloading(NotifyState<'static>),
    Stopping,
    Watchdog,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment (and
    /// leaves them there). Without `NOTIFY_SOCKET`, or when the thread cannot be started, the
    /// notifier does nothing.
    pub fn from_env() -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier {
                sender: None,
                watchdog_interval: None,
            };
        }
        let (sender, receiver) = mpsc::sync_channel::<Notification>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for notification in receiver {
                    send(&notification);
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the notification thread: not notifying the service manager");
            return Notifier {
                sender: None,
                watchdog_interval: None,
            };
        }
        Notifier {
            sender: Some(sender),
            watchdog_interval: watchdog_interval(sd_notify::watchdog_enabled()),
        }
    }

    /// Listeners are bound and the server is serving (also: a reload is done).
    pub fn ready(&self) {
        self.queue(Notification::Ready);
    }

    /// A reload (SIGHUP) has begun; call [`Notifier::ready`] when it is done.
    pub fn reloading(&self) {
        if self.sender.is_none() {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.queue(Notification::Reloading(now)),
            Err(error) => tracing::warn!(%error, "cannot read CLOCK_MONOTONIC for RELOADING=1"),
        }
    }

    /// The server is shutting down.
    pub fn stopping(&self) {
        self.queue(Notification::Stopping);
    }

    /// Tells the manager the process is alive; call it every [`Notifier::watchdog_interval`].
    pub fn watchdog(&self) {
        self.queue(Notification::Watchdog);
    }

    /// Half of `WATCHDOG_USEC` when set and `WATCHDOG_PID` is absent or ours: how often to
    /// call [`Notifier::watchdog`]. `None` as well without `NOTIFY_SOCKET`.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    fn queue(&self, notification: Notification) {
        let Some(sender) = &self.sender else { return };
        if let Err(TrySendError::Full(notification)) = sender.try_send(notification) {
            tracing::warn!(
                ?notification,
                "the service manager is not taking notifications: dropped one"
            );
        }
    }
}

/// Sends one notification (blocking); a failure is a warning.
fn send(notification: &Notification) {
    let pid = std::process::id();
    let states: &[NotifyState] = match notification {
        Notification::Ready => &[
            NotifyState::Ready,
            NotifyState::Status("serving"),
            NotifyState::MainPid(pid),
        ],
        Notification::Reloading(now) => &[NotifyState::Reloading, now.clone()],
        Notification::Stopping => &[NotifyState::Stopping],
        Notification::Watchdog => &[NotifyState::Watchdog],
    };
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, ?notification, "cannot notify the service manager");
    }
}

/// How often to ping, from what `sd_notify::watchdog_enabled` read: half the timeout, at
/// least 1 µs; a zero timeout is no watchdog (a zero interval would make the timer panic).
fn watchdog_interval(timeout: Option<Duration>) -> Option<Duration> {
    timeout
        .filter(|timeout| !timeout.is_zero())
        .map(|timeout| (timeout / 2).max(Duration::from_micros(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_never_zero() {
        let cases = [
            (None, None),
            (Some(Duration::ZERO), None),
            (
                Some(Duration::from_micros(1)),
                Some(Duration::from_micros(1)),
            ),
            (Some(Duration::from_secs(2)), Some(Duration::from_secs(1))),
            (
                Some(Duration::from_millis(400)),
                Some(Duration::from_millis(200)),
            ),
        ];
        for (timeout, interval) in cases {
            assert_eq!(watchdog_interval(timeout), interval, "{timeout:?}");
        }
    }
}
