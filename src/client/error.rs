//! What can go wrong for a TURN client, typed so that a caller can tell a STUN error answer from
//! a timeout, a broken connection or a server that speaks something else.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::stun::{Method, StunError};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error response.
    #[error("{} refused: {code}{}", method_name(*method), with_space(reason))]
    Response {
        method: Method,
        /// The ERROR-CODE number (300..=699).
        code: u16,
        /// Its reason phrase, as the server wrote it.
        reason: String,
        /// ALTERNATE-SERVER of a 300 Try Alternate.
        alternate: Option<SocketAddr>,
    },
    /// No answer within the transaction timeout, retransmissions included.
    #[error("no answer to {} within {after:?}", method_name(*method))]
    Timeout { method: Method, after: Duration },
    /// The TCP connection or TLS handshake did not complete in time.
    #[error("connecting to {server} took longer than {after:?}")]
    ConnectTimeout { server: SocketAddr, after: Duration },
    /// A socket operation failed (TLS handshake failures arrive as this too).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the TCP or TLS connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent bytes on the stream that are neither STUN nor ChannelData; the stream
    /// cannot be resynchronised.
    #[error("the server sent a stream that is not STUN or ChannelData: {0}")]
    Framing(StunError),
    /// An answer that matched our transaction but lacks what its method must carry.
    #[error("malformed answer to {}: {what}", method_name(*method))]
    BadResponse { method: Method, what: &'static str },
    /// A payload that does not fit in one ChannelData message or Send indication.
    #[error("payload of {len} bytes is too large (at most {max})")]
    PayloadTooLarge { len: usize, max: usize },
    /// A channel number outside 0x4000..=0x7FFF.
    #[error("channel number {0:#06x} is outside 0x4000..=0x7FFF")]
    BadChannelNumber(u16),
    /// The client was set up wrongly (e.g. TLS without [`ClientTls`](super::ClientTls)).
    #[error("client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The STUN error code, when the server answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Response { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the transaction timed out (the server may be down or the path lossy).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { .. } | ClientError::ConnectTimeout { .. }
        )
    }
}

/// `reason` with a space in front, or nothing when it is empty (401 and 438 carry none).
fn with_space(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" {reason}")
    }
}

/// A readable name for the methods a TURN client sends.
pub fn method_name(method: Method) -> &'static str {
    match method {
        Method::BINDING => "Binding",
        Method::ALLOCATE => "Allocate",
        Method::REFRESH => "Refresh",
        Method::CREATE_PERMISSION => "CreatePermission",
        Method::CHANNEL_BIND => "ChannelBind",
        Method::SEND => "Send",
        Method::DATA => "Data",
        _ => "request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_method_and_code() {
        let refused = ClientError::Response {
            method: Method::ALLOCATE,
            code: 486,
            reason: "Allocation Quota Reached".into(),
            alternate: None,
        };
        assert_eq!(refused.code(), Some(486));
        assert_eq!(
            refused.to_string(),
            "Allocate refused: 486 Allocation Quota Reached"
        );
        let timeout = ClientError::Timeout {
            method: Method::REFRESH,
            after: Duration::from_millis(39_500),
        };
        assert!(timeout.is_timeout());
        assert_eq!(timeout.code(), None);
        assert_eq!(timeout.to_string(), "no answer to Refresh within 39.5s");
        let challenge = ClientError::Response {
            method: Method::ALLOCATE,
            code: 401,
            reason: String::new(),
            alternate: None,
        };
        assert_eq!(challenge.to_string(), "Allocate refused: 401");
    }
}
