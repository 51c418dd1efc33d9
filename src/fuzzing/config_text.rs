//! The configuration target: TOML text in, a validated `Config` or an error that names a key.

use std::sync::Arc;

use crate::config::{Config, ConfigError};

use super::core::{FINGERPRINT, Harness, Mode, Op};

/// Parses the input (as UTF-8, lossily) with `Config::from_toml`. An error must be one line; a
/// refused value must name its key, and the message must start with it. A configuration that
/// validates must run the core: a core is built from it as the I/O layer builds one, and a
/// Binding, an Allocate and a Refresh asking for the longest lifetime, and the expiry of what
/// they made, go through it.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::from_toml(&text) {
        Ok(config) => run_core(config),
        Err(error) => check_error(&error, &text),
    }
}

fn check_error(error: &ConfigError, text: &str) {
    let message = error.to_string();
    assert!(
        !message.contains('\n'),
        "error of several lines: {message:?}"
    );
    match error {
        ConfigError::Invalid { key, problem, .. } => {
            assert!(!key.is_empty(), "error without a key: {message:?}");
            assert!(!problem.is_empty(), "error without a problem: {message:?}");
            assert!(message.starts_with(&format!("{key}: ")), "{message:?}");
        }
        ConfigError::Syntax { line, column, .. } => {
            let lines = text.split('\n').count();
            assert!(
                (1..=lines).contains(line) && *column >= 1,
                "syntax error at {line}:{column} of {lines} lines"
            );
        }
        ConfigError::Read { .. } => panic!("from_toml reads no file: {message:?}"),
    }
}

fn run_core(config: Config) {
    let mut harness = Harness::new(Mode::Authenticated, Arc::from([config]), 0);
    let longest = [0x00, 0x0D, 0x00, 0x04, 0xFF, 0xFF, 0xFF, 0xFF];
    let mut allocate = vec![0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0];
    allocate.extend_from_slice(&longest);
    let ops = [
        Op::Stun {
            tuple: 0,
            message_type: 0x0001,
            tid: 1,
            flags: 0,
            attributes: &[],
        },
        Op::Stun {
            tuple: 0,
            message_type: 0x0003,
            tid: 2,
            flags: FINGERPRINT,
            attributes: &allocate,
        },
        Op::Lease {
            pending: 0,
            granted: true,
        },
        Op::Stun {
            tuple: 0,
            message_type: 0x0004,
            tid: 3,
            flags: 0,
            attributes: &longest,
        },
        Op::Stun {
            tuple: 2,
            message_type: 0x0003,
            tid: 4,
            flags: 0,
            attributes: &allocate[..8],
        },
        Op::Lease {
            pending: 0,
            granted: true,
        },
        Op::WaitSeconds { seconds: u16::MAX },
        Op::Timeout,
        Op::Timeout,
    ];
    for op in &ops {
        harness.apply(op);
    }
    harness.finish();
}
