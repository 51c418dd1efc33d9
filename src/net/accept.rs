//! What a listener does when accept(2) fails: a client that gave up is skipped at once; running
//! out of descriptors or memory is waited out with a doubling delay and one warning per
//! episode, instead of spinning on the same error (and flooding the log).

use std::io;
use std::time::Duration;

/// The first wait after an accept failure; it doubles up to the backoff's maximum.
const FIRST_DELAY: Duration = Duration::from_millis(10);

/// The backoff state of one accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// What is accepting, for the warning ("TURN TCP", "HTTP").
    what: &'static str,
    max: Duration,
    delay: Duration,
}

impl AcceptBackoff {
    pub const fn new(what: &'static str, max: Duration) -> Self {
        AcceptBackoff {
            what,
            max,
            delay: Duration::ZERO,
        }
    }

    /// A connection was accepted: the episode, if any, is over.
    pub fn accepted(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// The next connection on `listener`, waiting out failures as [`failed`](Self::failed)
    /// says: the one accept loop of every TCP listener.
    pub async fn accept(
        &mut self,
        listener: &tokio::net::TcpListener,
    ) -> (tokio::net::TcpStream, std::net::SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    self.accepted();
                    return accepted;
                }
                Err(error) => self.failed(&error).await,
            }
        }
    }

    /// Waits as `error` deserves before the next accept.
    pub async fn failed(&mut self, error: &io::Error) {
        if is_connection_error(error) {
            return;
        }
        if self.delay.is_zero() {
            tracing::warn!(%error, "{} accept failed; retrying with backoff", self.what);
        }
        self.delay = (self.delay * 2).clamp(FIRST_DELAY, self.max);
        tokio::time::sleep(self.delay).await;
    }

    /// The wait the next failure would bring (for tests).
    #[cfg(test)]
    fn next_delay(&self) -> Duration {
        (self.delay * 2).clamp(FIRST_DELAY, self.max)
    }
}

/// Errors about one connection (its client gave up before it was accepted), after which the
/// next accept may succeed at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resource_errors_back_off_doubling_and_connection_errors_do_not() {
        let mut backoff = AcceptBackoff::new("test", Duration::from_millis(40));
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        for ms in [10, 20, 40, 40] {
            assert_eq!(backoff.next_delay(), Duration::from_millis(ms));
            let start = std::time::Instant::now();
            backoff.failed(&emfile).await;
            // A lower bound only: the machine may be slow, never fast.
            assert!(start.elapsed() >= Duration::from_millis(ms));
        }
        backoff
            .failed(&io::Error::from(io::ErrorKind::ConnectionAborted))
            .await;
        assert_eq!(backoff.next_delay(), Duration::from_millis(40));
        backoff.accepted();
        assert_eq!(backoff.next_delay(), FIRST_DELAY);
    }
}
