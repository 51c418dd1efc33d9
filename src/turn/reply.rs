//! Replies: success and error responses written into the caller's buffer, each counted in the
//! cell of [`Stats::responses`](super::Stats::responses) for its method and code.

use super::credentials::{Integrity, Signing};
use super::request::is_known_attribute;
use super::{ClientAction, RESPONSE_CODES, RESPONSE_METHODS, RequestError, Server};
use crate::stun::{self, Class, Message, MessageWriter, Method, StunError, TransactionId, attr};

fn response_slot(method: Method, code: u16) -> (usize, usize) {
    let row = match method {
        Method::BINDING => 0,
        Method::ALLOCATE => 1,
        Method::REFRESH => 2,
        Method::CREATE_PERMISSION => 3,
        Method::CHANNEL_BIND => 4,
        Method::CONNECT => 5,
        Method::CONNECTION_BIND => 6,
        _ => RESPONSE_METHODS.len() - 1,
    };
    let other = RESPONSE_CODES.len() - 1;
    let column = RESPONSE_CODES[..other]
        .iter()
        .position(|&c| c == code)
        .unwrap_or(other);
    (row, column)
}

impl Server {
    /// A signed success response without attributes of its own.
    pub(super) fn reply_success(
        &mut self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        key: &Signing,
    ) -> Result<ClientAction, RequestError> {
        let n = write_response(out, method, tid, &self.config.software, key, |_| Ok(()))
            .map_err(|_| RequestError::ServerError)?;
        self.count_response(method, 200);
        Ok(ClientAction::Reply(n))
    }

    pub(super) fn reply_error(
        &mut self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        error: RequestError,
        key: Option<&Signing>,
    ) -> ClientAction {
        match self.write_error(out, method, tid, error, key) {
            0 => ClientAction::None,
            n => ClientAction::Reply(n),
        }
    }

    pub(super) fn write_error(
        &mut self,
        out: &mut [u8],
        method: Method,
        tid: TransactionId,
        error: RequestError,
        key: Option<&Signing>,
    ) -> usize {
        self.count_error(method, error);
        let software = if key.is_some() {
            &self.config.software[..]
        } else {
            ""
        };
        write_message(out, method, Class::Error, tid, software, key, |w| {
            w.error_code(error.code(), error.reason())?;
            if let RequestError::TryAlternate(alternate) = error {
                w.address(attr::ALTERNATE_SERVER, alternate)?;
            }
            Ok(())
        })
        .unwrap_or(0)
    }

    pub(super) fn reply_unknown_attributes(
        &mut self,
        msg: &Message<'_>,
        key: Option<&Signing>,
        out: &mut [u8],
    ) -> ClientAction {
        self.stats.error_responses += 1;
        self.count_response(msg.method(), 420);
        let mut unknown = [0u16; stun::MAX_UNKNOWN_REPORTED];
        let mut count = 0;
        for (slot, typ) in unknown
            .iter_mut()
            .zip(msg.unknown_required(is_known_attribute))
        {
            *slot = typ;
            count += 1;
        }
        let error = RequestError::UnknownAttribute;
        let software = if key.is_some() {
            &self.config.software[..]
        } else {
            ""
        };
        match write_message(
            out,
            msg.method(),
            Class::Error,
            msg.transaction_id(),
            software,
            key,
            |w| {
                w.error_code(error.code(), error.reason())?;
                w.unknown_attributes(&unknown[..count])
            },
        ) {
            Ok(n) => ClientAction::Reply(n),
            Err(_) => ClientAction::None,
        }
    }

    pub(super) fn count_response(&mut self, method: Method, code: u16) {
        let (row, column) = response_slot(method, code);
        self.stats.responses[row][column] += 1;
    }

    fn count_error(&mut self, method: Method, error: RequestError) {
        self.count_response(method, error.code());
        self.stats.error_responses += 1;
        match error {
            RequestError::AllocationQuotaReached => self.stats.quota_rejected += 1,
            RequestError::InsufficientCapacity => self.stats.capacity_rejected += 1,
            _ => {}
        }
    }
}

/// A success response with MESSAGE-INTEGRITY and FINGERPRINT.
pub(super) fn write_response(
    out: &mut [u8],
    method: Method,
    tid: TransactionId,
    software: &str,
    key: &Signing,
    attributes: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), StunError>,
) -> Result<usize, StunError> {
    write_message(
        out,
        method,
        Class::Success,
        tid,
        software,
        Some(key),
        attributes,
    )
}

pub(super) fn write_message(
    out: &mut [u8],
    method: Method,
    class: Class,
    tid: TransactionId,
    software: &str,
    key: Option<&Signing>,
    attributes: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), StunError>,
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(out, method, class, tid)?;
    attributes(&mut w)?;
    if !software.is_empty() {
        w.attribute(attr::SOFTWARE, software.as_bytes())?;
    }
    // The response carries the integrity attribute of the request (RFC 8489 §9.2.4).
    match key {
        Some(Signing {
            key,
            integrity: Integrity::Sha1,
        }) => w.message_integrity(key.as_bytes())?,
        Some(Signing {
            key,
            integrity: Integrity::Sha256,
        }) => w.message_integrity_sha256(key.as_bytes())?,
        None => {}
    }
    w.fingerprint()?;
    Ok(w.finish())
}
