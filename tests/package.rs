//! The Debian package: `scripts/deb --no-build` packages the binary under test with `cargo deb`,
//! `dpkg -i` installs it into a scratch root (maintainer scripts run, `DPKG_ROOT` set), and
//! the installed files are what Cargo.toml's `[package.metadata.deb]` and the postinst
//! promise: the configuration a conffile, root:turnpike 640, the user made by sysusers, the
//! installed `turnpike check-config` accepts the installed configuration, the man pages
//! render, the completions know the subcommands, the symbols are in the dbgsym package; then
//! `dpkg -r` and `dpkg -P` remove it all.
//!
//! The binary packaged is this test build's (debug profile), copied where `cargo deb` looks
//! for a release build: compiling a release build here would add minutes to the suite, and
//! the packaging is the same for both (README, "Install from the .deb", gives the release
//! command, and the report of issue 13 its time).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::netns::NetNs;

/// Every subcommand the man pages and completions must know.
const SUBCOMMANDS: &[&str] = &[
    "serve",
    "check-config",
    "credentials",
    "secret",
    "user",
    "revoke",
];

const CONFIG: &str = "etc/turnpike/turnpike.toml";

/// Runs `command`, fails the test with its output unless it exits 0, and returns its output.
fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        output.status.success(),
        "{shown}: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The single file in `dir` whose name ends with `suffix`.
fn only_file(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list the output directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one *{suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().expect("one file")
}

/// Builds the .deb and .ddeb from the binary under test, into `scratch/out`.
fn build_package(scratch: &Path) -> (PathBuf, PathBuf) {
    common::require_tool("cargo-deb");
    common::require_tool("dpkg-shlibdeps");
    common::require_tool("objcopy");
    let target = scratch.join("target");
    std::fs::create_dir_all(target.join("release")).expect("create target/release");
    std::fs::copy(
        env!("CARGO_BIN_EXE_turnpike"),
        target.join("release/turnpike"),
    )
    .expect("copy the binary under test");
    let out = scratch.join("out");
    let started = Instant::now();
    run(
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deb"))
            .args(["--no-build", "--fast", "--output"])
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target),
    );
    let deb = only_file(&out, ".deb");
    let ddeb = only_file(&out, ".ddeb");
    eprintln!(
        "scripts/deb --no-build: {:.1?}; {} {} bytes, {} {} bytes",
        started.elapsed(),
        deb.display(),
        deb.metadata().expect("stat the .deb").len(),
        ddeb.display(),
        ddeb.metadata().expect("stat the .ddeb").len()
    );
    (deb, ddeb)
}

/// `dpkg-deb --contents`: (mode string, owner/group, path without the leading `.`).
fn contents(package: &Path) -> Vec<(String, String, String)> {
    let listing = stdout(&run(Command::new("dpkg-deb")
        .arg("--contents")
        .arg(package)));
    listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "unexpected dpkg-deb line {line:?}");
            let path = fields[5].trim_start_matches('.').to_owned();
            (fields[0].to_owned(), fields[1].to_owned(), path)
        })
        .collect()
}

fn dpkg(root: &Path) -> Command {
    let mut command = Command::new(common::require_tool("dpkg"));
    command
        .arg(format!("--root={}", root.display()))
        // The maintainer scripts run here with DPKG_ROOT set (the scratch root has no shell
        // to chroot into); they honour it. Its dependencies (libc6, systemd) are this
        // machine's, not recorded in the scratch root's database.
        .args(["--force-script-chrootless", "--force-depends"])
        .arg(format!("--log={}", root.join("dpkg.log").display()));
    command
}

/// An empty dpkg database and `/etc`, as a new system has.
fn scratch_root(scratch: &Path) -> PathBuf {
    let root = scratch.join("root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(root.join(dir)).expect("create the scratch root");
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").expect("write the dpkg status");
    root
}

/// The id of `name` in the root's `etc/group` or `etc/passwd` (third field).
fn id_of(root: &Path, file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(root.join(file)).ok()?;
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields[0] == name)
        .and_then(|fields| fields.get(2)?.parse().ok())
}

#[test]
fn the_deb_installs_into_a_scratch_root_and_its_binary_checks_the_installed_configuration() {
    common::require_tool("systemd-sysusers");
    let scratch = tempfile::tempdir().expect("create a tempdir");
    let (deb, ddeb) = build_package(scratch.path());

    // The package as built.
    let field = |name: &str| {
        stdout(&run(Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg(name)))
        .trim()
        .to_owned()
    };
    assert_eq!(field("Package"), "turnpike");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let depends = field("Depends");
    assert!(
        depends.contains("libc6") && depends.contains("systemd-sysusers"),
        "Depends: {depends}"
    );
    let files = contents(&deb);
    let entry = |path: &str| {
        files
            .iter()
            .find(|(_, _, p)| p == path)
            .unwrap_or_else(|| panic!("{path} not in the package: {files:?}"))
    };
    for (path, mode) in [
        ("/usr/bin/turnpike", "-rwxr-xr-x"),
        ("/etc/turnpike/turnpike.toml", "-rw-r-----"),
        ("/usr/lib/sysusers.d/turnpike.conf", "-rw-r--r--"),
        ("/usr/lib/systemd/system/turnpike.service", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/turnpike",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_turnpike", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/turnpike.fish",
            "-rw-r--r--",
        ),
    ] {
        let (got, owner, _) = entry(path);
        assert_eq!(got, mode, "{path}");
        assert!(
            owner == "root/root" || owner == "0/0",
            "{path} owned by {owner}"
        );
    }
    let man_pages: Vec<&String> = files
        .iter()
        .map(|(_, _, p)| p)
        .filter(|p| p.starts_with("/usr/share/man/man1/"))
        .collect();
    for subcommand in SUBCOMMANDS {
        let page = format!("/usr/share/man/man1/turnpike-{subcommand}.1");
        assert!(
            man_pages.iter().any(|p| p.starts_with(&page)),
            "no {page}[.gz] in {man_pages:?}"
        );
    }
    let debug_files: Vec<String> = contents(&ddeb)
        .into_iter()
        .map(|(_, _, p)| p)
        .filter(|p| p.ends_with(".debug"))
        .collect();
    assert!(
        files
            .iter()
            .all(|(_, _, p)| !p.starts_with("/usr/lib/debug")),
        "debug files in the .deb: {files:?}"
    );

    // dpkg -i into an empty root: the maintainer scripts run.
    let root = scratch_root(scratch.path());
    run(dpkg(&root).arg("--install").arg(&deb));
    let status = stdout(&run(dpkg(&root).args(["--status", "turnpike"])));
    assert!(
        status.contains("Status: install ok installed"),
        "dpkg --status:\n{status}"
    );
    let conffiles = std::fs::read_to_string(root.join("var/lib/dpkg/info/turnpike.conffiles"))
        .expect("read the package's conffiles");
    assert_eq!(conffiles.trim(), "/etc/turnpike/turnpike.toml");

    // The postinst: the user and group from sysusers, the configuration root:turnpike 640.
    let gid = id_of(&root, "etc/group", "turnpike").expect("a turnpike group in etc/group");
    let uid = id_of(&root, "etc/passwd", "turnpike").expect("a turnpike user in etc/passwd");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("read etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("turnpike:") && l.ends_with(":/usr/sbin/nologin")),
        "turnpike has a login shell:\n{passwd}"
    );
    let config = std::fs::metadata(root.join(CONFIG)).expect("stat the installed configuration");
    eprintln!(
        "installed {CONFIG}: mode {:o}, uid {}, gid {} (turnpike: uid {uid}, gid {gid})",
        config.mode() & 0o7777,
        config.uid(),
        config.gid()
    );
    assert_eq!(config.mode() & 0o7777, 0o640);
    assert_eq!((config.uid(), config.gid()), (0, gid));
    assert_eq!(
        std::fs::read(root.join(CONFIG)).expect("read the installed configuration"),
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/turnpike.toml"))
            .expect("read config/turnpike.toml"),
        "the installed configuration is not config/turnpike.toml"
    );

    // The installed binary accepts the installed configuration. In a network namespace of its
    // own: with the example's `offload = "auto"`, check-config attaches the kernel fast path
    // to the interfaces for a moment, and this machine's are not the test's to touch.
    let binary = root.join("usr/bin/turnpike");
    let netns = NetNs::new("package");
    let checked = run(Command::new(common::require_tool("ip"))
        .args(["netns", "exec", netns.name()])
        .arg(&binary)
        .arg("check-config")
        .arg("-c")
        .arg(root.join(CONFIG)));
    let said = stdout(&checked);
    eprintln!("installed turnpike check-config:\n{said}");
    assert!(said.contains(": ok"), "check-config said:\n{said}");

    // The shipped binary is stripped; its build id names the symbol file of the dbgsym package.
    let sections = stdout(&run(Command::new(common::require_tool("readelf"))
        .args(["--sections", "--wide"])
        .arg(&binary)));
    // (`.debug_gdb_scripts` is no debug information: rustc's pointer to gdb's pretty printers.)
    assert!(
        [".symtab", ".debug_info", ".debug_line"]
            .iter()
            .all(|section| !sections.contains(section)),
        "the installed binary is not stripped:\n{sections}"
    );
    let notes = stdout(&run(Command::new(common::require_tool("readelf"))
        .arg("--notes")
        .arg(&binary)));
    let build_id = notes
        .lines()
        .find_map(|line| line.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build id in\n{notes}"));
    let symbols = format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &build_id[..2],
        &build_id[2..]
    );
    assert!(
        debug_files.contains(&symbols),
        "{symbols} not in the dbgsym package: {debug_files:?}"
    );
    eprintln!(
        "installed binary: {} bytes (stripped), symbols in {symbols}",
        binary.metadata().expect("stat the binary").len()
    );

    // The unit runs the installed binary on the installed configuration.
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/turnpike.service"))
        .expect("read the installed unit");
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/turnpike serve -c /etc/turnpike/turnpike.toml"),
        "ExecStart in the installed unit:\n{unit}"
    );
    assert!(
        unit.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| !l.contains("/usr/local")),
        "/usr/local in the unit:\n{unit}"
    );

    // The man pages render, naming every subcommand; the completions know them.
    let man_dir = root.join("usr/share/man/man1");
    let main_page = std::fs::read_dir(&man_dir)
        .expect("list man1")
        .map(|entry| entry.expect("an entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("turnpike.1"))
        })
        .expect("turnpike.1 installed");
    let rendered = run(Command::new(common::require_tool("man"))
        .arg("-l")
        .arg(&main_page)
        .env("MANWIDTH", "100")
        .env_remove("MAN_KEEP_FORMATTING"));
    let text = stdout(&rendered);
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    assert!(warnings.trim().is_empty(), "man -l warned:\n{warnings}");
    assert!(
        text.contains("NAME") && text.contains("SUBCOMMANDS"),
        "{text}"
    );
    for subcommand in SUBCOMMANDS {
        assert!(
            text.contains(&format!("turnpike-{subcommand}(1)")),
            "the man page does not name {subcommand}:\n{text}"
        );
    }
    for completions in [
        "usr/share/bash-completion/completions/turnpike",
        "usr/share/zsh/vendor-completions/_turnpike",
        "usr/share/fish/vendor_completions.d/turnpike.fish",
    ] {
        let script = std::fs::read_to_string(root.join(completions)).expect("read completions");
        for subcommand in SUBCOMMANDS {
            assert!(
                script.contains(subcommand),
                "{completions} does not know {subcommand}"
            );
        }
    }
    // bash loads the completion and registers it for `turnpike`.
    let registered = run(Command::new(common::require_tool("bash"))
        .arg("-c")
        .arg(r#"source "$1" && complete -p turnpike"#)
        .arg("bash")
        .arg(root.join("usr/share/bash-completion/completions/turnpike")));
    assert!(
        stdout(&registered).contains("turnpike"),
        "{}",
        stdout(&registered)
    );

    // dpkg -r keeps the (conf)figuration, dpkg -P removes it and the directory.
    run(dpkg(&root).args(["--remove", "turnpike"]));
    assert!(!binary.exists(), "the binary survived dpkg -r");
    assert!(root.join(CONFIG).exists(), "dpkg -r removed the conffile");
    run(dpkg(&root).args(["--purge", "turnpike"]));
    assert!(!root.join(CONFIG).exists(), "dpkg -P kept the conffile");
    assert!(
        !root.join("etc/turnpike").exists(),
        "dpkg -P kept /etc/turnpike"
    );
}
