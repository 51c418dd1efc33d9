//! The command line's own tests: hostile values refused, bounds kept, the bad option named.

use std::time::Duration;

use clap::Parser;

use super::checks::{check_clients, check_total_rate, turn_target};
use super::values::{parse_clients, parse_duration, parse_rate, parse_size, parse_window};
use super::{Cli, Mode, TransportArg};

fn parse(args: &[&str]) -> Result<Cli, String> {
    Cli::try_parse_from(std::iter::once("turnpike-load").chain(args.iter().copied()))
        .map_err(|e| e.to_string())
}

#[test]
fn durations_parse_and_hostile_ones_are_refused() {
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    for (bad, why) in [
        ("-5s", "negative"),
        ("-1", "negative"),
        ("0", "at least 1ms"),
        ("0s", "at least 1ms"),
        ("NaN", "finite"),
        ("inf", "finite"),
        ("1e300", "too large"),
        ("25h", "at most 24h"),
        ("fast", "500ms"),
        ("", "500ms"),
    ] {
        let err = parse_duration(bad).unwrap_err();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

#[test]
fn counts_sizes_and_rates_are_bounded() {
    assert_eq!(parse_clients("8"), Ok(8));
    assert!(parse_clients("0").unwrap_err().contains("at least 1"));
    assert!(parse_clients("-3").unwrap_err().contains("negative"));
    assert!(parse_clients("1e9").unwrap_err().contains("whole number"));
    assert!(
        parse_clients("100001")
            .unwrap_err()
            .contains("at most 100000")
    );
    assert_eq!(parse_size("65000"), Ok(65_000));
    assert!(parse_size("65001").unwrap_err().contains("at most 65000"));
    assert!(parse_size("11").unwrap_err().contains("at least 12"));
    assert_eq!(parse_rate("50"), Ok(50.0));
    for (bad, why) in [
        ("0", "more than 0"),
        ("-5", "more than 0"),
        ("1e12", "at most"),
        ("NaN", "finite"),
        ("inf", "finite"),
        ("0.001", "at least 0.01"),
        ("lots", "not a number"),
    ] {
        let err = parse_rate(bad).unwrap_err();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
    assert!(parse_window("0").unwrap_err().contains("at least 1"));
    assert!(check_total_rate(1e6, 64).is_err());
    assert!(check_total_rate(50.0, 64).is_ok());
    assert!(check_clients(20_000, 20_000).is_err());
    assert!(check_clients(15_000, 20_000).is_ok());
}

#[test]
fn the_command_line_names_the_bad_option() {
    let err = parse(&["relay", "--server", "127.0.0.1:3478", "--clients", "0"]).unwrap_err();
    assert!(
        err.contains("--clients") && err.contains("at least 1"),
        "{err}"
    );
    let err = parse(&["relay", "--server", "127.0.0.1:3478", "--duration", "-5"]).unwrap_err();
    assert!(
        err.contains("--duration") && err.contains("negative"),
        "{err}"
    );
    let err = parse(&[
        "relay",
        "--server",
        "127.0.0.1:3478",
        "--window",
        "4",
        "--rate",
        "5",
    ])
    .unwrap_err();
    assert!(err.contains("--window") && err.contains("--rate"), "{err}");
    let err = parse(&["relay", "--server", "turn.example.com:3478"]).unwrap_err();
    assert!(err.contains("--server"), "{err}");
    let cli = parse(&["relay", "--server", "127.0.0.1:3478", "--password", "p"]).unwrap();
    let Mode::Relay(args) = cli.mode else {
        panic!("relay mode")
    };
    assert_eq!((args.clients, args.size, args.window), (8, 160, None));
    assert_eq!(args.duration, Duration::from_secs(5));
}

#[test]
fn targets_need_loopback_credentials_and_tls_roots() {
    let cli = parse(&["relay", "--server", "10.1.2.3:3478", "--password", "p"]).unwrap();
    let Mode::Relay(args) = cli.mode else {
        panic!("relay mode")
    };
    let err = turn_target(&args.turn, false).unwrap_err().0;
    assert!(
        err.contains("10.1.2.3:3478") && err.contains("--allow-remote"),
        "{err}"
    );
    let mut turn = args.turn.clone();
    turn.allow_remote = true;
    assert!(turn_target(&turn, false).is_ok());
    turn.password = None;
    assert!(
        turn_target(&turn, false)
            .unwrap_err()
            .0
            .contains("--password")
    );
    assert!(
        turn_target(&turn, true).is_ok(),
        "plain runs need no credentials"
    );
    turn.password = Some("p".into());
    turn.transport = TransportArg::Tls;
    assert!(
        turn_target(&turn, false)
            .unwrap_err()
            .0
            .contains("--tls-ca")
    );
    turn.tls_insecure = true;
    assert!(turn_target(&turn, false).is_ok());
}
