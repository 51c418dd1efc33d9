//! Headless Chromium for the browser tests (`tests/chromium.rs`, `tests/dashboard.rs`): one
//! launcher with the flags a root, offline, GPU-less machine needs, its profile and output in
//! the test's directory, and all its processes killed on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Headless Chromium in its own process group, all of it killed on drop.
pub struct Chromium {
    child: Child,
    dir: PathBuf,
}

impl Chromium {
    /// Opens `url` with `extra` flags; the profile is `dir/profile`, the output `dir/stdout`
    /// and `dir/stderr`.
    pub fn launch(dir: &Path, extra: &[&str], url: &str) -> Chromium {
        let program = super::require_tool("chromium");
        let stdout = std::fs::File::create(dir.join("stdout")).expect("create stdout file");
        let stderr = std::fs::File::create(dir.join("stderr")).expect("create stderr file");
        let child = Command::new(program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("spawn chromium");
        Chromium {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Waits (at most `timeout`) for Chromium to exit and returns its stdout; fails the test,
    /// with its stderr, when it does not exit.
    pub fn finish(mut self, timeout: Duration) -> String {
        let status = super::wait_bounded(&mut self.child, timeout);
        let stdout = std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default();
        assert!(
            status.is_some(),
            "Chromium did not finish within {timeout:?}; stderr:\n{}",
            self.stderr_tail(60)
        );
        stdout
    }

    /// The last `lines` lines of what Chromium wrote to stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Chromium's helpers exit when the browser dies; killing the group (whose id is the
        // leader's) makes sure of it wherever procps' `kill` is installed.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of the element with `id` in serialised HTML (up to its first child tag).
pub fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the DOM:\n{dom}"));
    let rest = &dom[start..];
    let open = rest.find('>').expect("end of the start tag") + 1;
    let close = rest[open..].find('<').expect("an end tag");
    &rest[open..open + close]
}
