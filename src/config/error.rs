//! Why a configuration was refused: [`ConfigError`], its one-line rendering, and the path of the
//! key (`listen[1].address`) a TOML error's span points at.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Why a configuration was refused. Its `Display` is one line naming the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The text is not valid TOML.
    Syntax {
        /// The file, when loaded from one.
        file: Option<PathBuf>,
        /// 1-based line and column of the error.
        line: usize,
        column: usize,
        message: String,
    },
    /// A key is unknown or its value is of the wrong type or refused.
    Invalid {
        /// The file, when loaded from one.
        file: Option<PathBuf>,
        /// Path of the key, e.g. `listen[1].address`; empty when unknown.
        key: String,
        problem: String,
    },
}

impl ConfigError {
    /// The path of the offending key, e.g. `relay.ports`, when the error concerns one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } if !key.is_empty() => Some(key),
            _ => None,
        }
    }

    pub(super) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: None,
            key: key.into(),
            problem: problem.into(),
        }
    }

    pub(super) fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            ConfigError::Syntax { file, .. } | ConfigError::Invalid { file, .. } => {
                *file = Some(path.to_owned());
            }
            ConfigError::Read { .. } => {}
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Syntax {
                file,
                line,
                column,
                message,
            } => {
                if let Some(file) = file {
                    write!(f, "{}: ", file.display())?;
                }
                write!(
                    f,
                    "TOML syntax error at line {line}, column {column}: {message}"
                )
            }
            ConfigError::Invalid { file, key, problem } => {
                if let Some(file) = file {
                    write!(f, "{}: ", file.display())?;
                }
                if !key.is_empty() {
                    write!(f, "{key}: ")?;
                }
                f.write_str(problem)
            }
        }
    }
}

pub(super) fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start.min(text.len()));
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Syntax {
        file: None,
        line,
        column,
        message: error.message().replace('\n', " "),
    }
}

/// The path (`auth.users[0].key`) of the narrowest key or value whose span holds `target`.
pub(super) fn key_path(root: &DeTable<'_>, target: Range<usize>) -> String {
    let mut best = None;
    visit_table(root, "", &target, &mut best);
    best.map(|(_, path)| path).unwrap_or_default()
}

fn visit_table(
    table: &DeTable<'_>,
    prefix: &str,
    target: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        consider(key.span(), &path, target, best);
        visit_value(value, &path, target, best);
    }
}

fn visit_value(
    value: &Spanned<DeValue<'_>>,
    path: &str,
    target: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    consider(value.span(), path, target, best);
    match value.get_ref() {
        DeValue::Table(table) => visit_table(table, path, target, best),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                visit_value(item, &format!("{path}[{index}]"), target, best);
            }
        }
        _ => {}
    }
}

fn consider(
    span: Range<usize>,
    path: &str,
    target: &Range<usize>,
    best: &mut Option<(usize, String)>,
) {
    let holds = span.start <= target.start && target.end <= span.end;
    let narrower = best.as_ref().is_none_or(|(len, _)| span.len() <= *len);
    if holds && narrower {
        *best = Some((span.len(), path.to_owned()));
    }
}
