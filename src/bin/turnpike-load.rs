//! `turnpike-load`: the load generator that ships with turnpike. Everything is in
//! [`turnpike::load`]; see `turnpike-load --help` and the README's "Load generator" section.

fn main() -> std::process::ExitCode {
    turnpike::load::cli::main()
}
