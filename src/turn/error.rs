//! Why a request failed, and the one place where that becomes a STUN error code.

/// A request the core refuses; [`RequestError::code`] and [`RequestError::reason`] are what the
/// client sees in ERROR-CODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// This node is full (or draining); the client should use the other node named.
    #[error("try alternate server {0}")]
    TryAlternate(std::net::SocketAddr),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("unknown comprehension-required attribute")]
    UnknownAttribute,
    #[error("allocation mismatch")]
    AllocationMismatch,
    #[error("stale nonce")]
    StaleNonce,
    #[error("address family not supported")]
    AddressFamilyNotSupported,
    #[error("wrong credentials")]
    WrongCredentials,
    #[error("unsupported transport protocol")]
    UnsupportedTransport,
    #[error("peer address family mismatch")]
    PeerAddressFamilyMismatch,
    /// RFC 6062 §5.2: a connection to this peer is being made, pending or active.
    #[error("connection already exists")]
    ConnectionAlreadyExists,
    /// RFC 6062 §5.2: the connection to the peer failed or timed out.
    #[error("connection timeout or failure")]
    ConnectionFailed,
    #[error("allocation quota reached")]
    AllocationQuotaReached,
    #[error("server error")]
    ServerError,
    #[error("insufficient capacity")]
    InsufficientCapacity,
}

impl RequestError {
    /// The STUN error code (RFC 8489 §14.8, RFC 8656 §18).
    pub fn code(self) -> u16 {
        match self {
            RequestError::TryAlternate(_) => 300,
            RequestError::BadRequest(_) => 400,
            RequestError::Unauthorized => 401,
            RequestError::Forbidden(_) => 403,
            RequestError::UnknownAttribute => 420,
            RequestError::AllocationMismatch => 437,
            RequestError::StaleNonce => 438,
            RequestError::AddressFamilyNotSupported => 440,
            RequestError::WrongCredentials => 441,
            RequestError::UnsupportedTransport => 442,
            RequestError::PeerAddressFamilyMismatch => 443,
            RequestError::ConnectionAlreadyExists => 446,
            RequestError::ConnectionFailed => 447,
            RequestError::AllocationQuotaReached => 486,
            RequestError::ServerError => 500,
            RequestError::InsufficientCapacity => 508,
        }
    }

    /// The reason phrase: the RFC's, or a more precise one where it helps the client's developer.
    pub fn reason(self) -> &'static str {
        match self {
            RequestError::TryAlternate(_) => "Try Alternate",
            RequestError::BadRequest(why) => why,
            RequestError::Unauthorized => "Unauthorized",
            RequestError::Forbidden(why) => why,
            RequestError::UnknownAttribute => "Unknown Attribute",
            RequestError::AllocationMismatch => "Allocation Mismatch",
            RequestError::StaleNonce => "Stale Nonce",
            RequestError::AddressFamilyNotSupported => "Address Family not Supported",
            RequestError::WrongCredentials => "Wrong Credentials",
            RequestError::UnsupportedTransport => "Unsupported Transport Protocol",
            RequestError::PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            RequestError::ConnectionAlreadyExists => "Connection Already Exists",
            RequestError::ConnectionFailed => "Connection Timeout or Failure",
            RequestError::AllocationQuotaReached => "Allocation Quota Reached",
            RequestError::ServerError => "Server Error",
            RequestError::InsufficientCapacity => "Insufficient Capacity",
        }
    }
}
