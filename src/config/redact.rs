//! Keeping secrets out of `Debug` output and logs: the `<redacted>` placeholders the sections'
//! `Debug` impls print, and [`redact_url`] for Redis URLs.

use std::fmt;

/// Prints `<redacted>` in place of a secret.
#[derive(Clone, Copy)]
pub(super) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Prints a list of `n` redacted secrets.
pub(super) struct RedactedList(pub(super) usize);

impl fmt::Debug for RedactedList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(std::iter::repeat_n(Redacted, self.0))
            .finish()
    }
}

/// A Redis URL with any password replaced, fit for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}<redacted>{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
