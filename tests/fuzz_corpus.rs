//! Replays every committed fuzz input, `fuzz/corpus/<target>/*` (seeds from real clients and
//! what the fuzzers kept) and `fuzz/regressions/<target>/*` (inputs that once found a bug),
//! through the same `turnpike::fuzzing` functions the cargo-fuzz targets call. No nightly
//! toolchain needed; a panic or an input slower than [`PER_INPUT`] fails the test.
//! `--nocapture` prints each target's count of inputs, total time and slowest input.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use turnpike::fuzzing::TARGETS;

/// Longest one input may take here. libFuzzer's limit is 1 s in an optimised build; a debug
/// build on a busy shared machine is many times slower, so this only catches inputs that are
/// slow by orders of magnitude (a quadratic path, a loop that does not end).
const PER_INPUT: Duration = Duration::from_secs(5);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let run = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .unwrap_or_else(|| panic!("no target {target} in turnpike::fuzzing::TARGETS"));
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty: regenerate it with fuzz/seeds.sh"
    );
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, PathBuf::new());
    let started = Instant::now();
    for path in corpus.iter().chain(&regressions) {
        let data = fs::read(path).expect("read a fuzz input");
        let start = Instant::now();
        let outcome = panic::catch_unwind(|| run(&data));
        let took = start.elapsed();
        let name = path.strip_prefix(fuzz_dir()).unwrap_or(path).display();
        if outcome.is_err() {
            failures.push(format!("{name}: panicked (message above)"));
        }
        if took > PER_INPUT {
            failures.push(format!("{name}: took {took:?}, more than {PER_INPUT:?}"));
        }
        if took > slowest.0 {
            slowest = (took, path.clone());
        }
    }
    eprintln!(
        "{target}: {} corpus and {} regression inputs in {:?}; slowest {:?} ({})",
        corpus.len(),
        regressions.len(),
        started.elapsed(),
        slowest.0,
        slowest.1.display()
    );
    assert!(failures.is_empty(), "{target}:\n{}", failures.join("\n"));
}

#[test]
fn stun_message_corpus() {
    replay("stun_message");
}

#[test]
fn stream_framing_corpus() {
    replay("stream_framing");
}

#[test]
fn config_corpus() {
    replay("config");
}

#[test]
fn core_unauthenticated_corpus() {
    replay("core_unauthenticated");
}

#[test]
fn core_authenticated_corpus() {
    replay("core_authenticated");
}

/// The fuzz package, the library's table and the corpus directories name the same targets, so
/// a target cannot be added to one and forgotten in another.
#[test]
fn targets_agree_everywhere() {
    let mut library: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    library.sort();
    let mut wrappers: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    wrappers.sort();
    assert_eq!(wrappers, library, "fuzz/fuzz_targets/*.rs");
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &library {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
        let wrapper = fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs")))
            .expect("read the wrapper");
        assert!(
            wrapper.contains(&format!("turnpike::fuzzing::{name}(")),
            "fuzz_targets/{name}.rs does not call turnpike::fuzzing::{name}"
        );
    }
    for kind in ["corpus", "regressions"] {
        for dir in fs::read_dir(fuzz_dir().join(kind)).into_iter().flatten() {
            let dir = dir.expect("a directory entry").file_name();
            let dir = dir.to_string_lossy();
            assert!(
                library.contains(&&*dir),
                "fuzz/{kind}/{dir}/ is not a target's"
            );
        }
    }
}
