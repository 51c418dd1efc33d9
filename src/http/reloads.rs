//! What the status API and `/metrics` say about configuration reloads (SIGHUP): how many were
//! applied and rejected, the last one's outcome, and the changed keys that wait for a restart.
//! Written by the reload (control path), read by the API; never touched by relayed packets.

use std::sync::Mutex;

use serde::Serialize;

/// The longest rejection message kept, in bytes (the log has it whole).
pub const MAX_RELOAD_ERROR: usize = 1024;

/// The reloads of this process so far.
#[derive(Debug, Default)]
pub struct Reloads {
    state: Mutex<ReloadState>,
}

/// One reading of [`Reloads`], as `/api/v1/status` shows it under `reloads`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadState {
    pub applied: u64,
    pub rejected: u64,
    /// The last reload, applied or rejected (`None` before the first).
    pub last: Option<LastReload>,
    /// Keys whose new value the running node cannot take without a restart: the file differs
    /// from what runs. As of the last applied reload (a rejected one changes nothing).
    pub pending_restart: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastReload {
    /// Unix seconds.
    pub at: u64,
    /// `applied` or `rejected`.
    pub result: &'static str,
    /// Why it was rejected: the message the log has.
    pub error: Option<String>,
}

impl Reloads {
    /// A reload at `at` (Unix seconds) applied what it could; `pending_restart` waits.
    pub fn applied(&self, at: u64, pending_restart: Vec<String>) {
        let mut state = self.lock();
        state.applied += 1;
        state.last = Some(LastReload {
            at,
            result: "applied",
            error: None,
        });
        state.pending_restart = pending_restart;
    }

    /// A reload at `at` was rejected with `error` (kept to [`MAX_RELOAD_ERROR`] bytes: a message may
    /// quote the file): the old configuration keeps running.
    pub fn rejected(&self, at: u64, mut error: String) {
        if error.len() > MAX_RELOAD_ERROR {
            let mut end = MAX_RELOAD_ERROR;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
            error.push('…');
        }
        let mut state = self.lock();
        state.rejected += 1;
        state.last = Some(LastReload {
            at,
            result: "rejected",
            error: Some(error),
        });
    }

    pub fn snapshot(&self) -> ReloadState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_reload_keeps_the_pending_keys_and_an_applied_one_replaces_them() {
        let reloads = Reloads::default();
        assert_eq!(reloads.snapshot(), ReloadState::default());
        reloads.applied(10, vec!["relay.address".to_owned()]);
        reloads.rejected(20, "limits.user-quota: not a number".to_owned());
        let state = reloads.snapshot();
        assert_eq!((state.applied, state.rejected), (1, 1));
        assert_eq!(state.pending_restart, ["relay.address"]);
        let last = state.last.unwrap();
        assert_eq!((last.at, last.result), (20, "rejected"));
        assert_eq!(
            last.error.as_deref(),
            Some("limits.user-quota: not a number")
        );
        reloads.rejected(25, "é".repeat(MAX_RELOAD_ERROR));
        let error = reloads.snapshot().last.unwrap().error.unwrap();
        assert!(error.len() <= MAX_RELOAD_ERROR + '…'.len_utf8() && error.ends_with("é…"));
        reloads.applied(30, Vec::new());
        let state = reloads.snapshot();
        assert!(state.pending_restart.is_empty());
        assert_eq!(state.last.unwrap().error, None);
    }
}
