//! STUN wire format.
