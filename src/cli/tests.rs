//! Parsing the whole command line: `serve`'s flags as given with and without the subcommand,
//! their values refused or read, `--help`'s defaults.

use std::time::Duration;

use clap::Parser as _;

use super::*;

#[test]
fn help_shows_list_defaults_comma_separated() {
    use clap::CommandFactory as _;
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("[default: admin,super_admin]"), "{help}");
    assert!(help.contains("[default: service,super_admin]"), "{help}");
}

#[test]
fn node_ids_that_would_make_odd_queue_names_are_refused() {
    for bad in ["", "a b", "a/b", "ünï"] {
        let parsed = Cli::try_parse_from(["notify-backbone", "--node-id", bad]);
        assert!(parsed.is_err(), "{bad:?} accepted");
    }
    let parsed = Cli::try_parse_from(["notify-backbone", "--node-id", "node-1.eu_west"]);
    assert_eq!(
        parsed.map(|cli| cli.serve.amqp.node_id()).ok().as_deref(),
        Some("node-1.eu_west")
    );
}

#[test]
fn a_tls_certificate_needs_its_key_and_the_other_way_round() {
    assert!(Cli::try_parse_from(["notify-backbone", "--tls-cert", "c.pem"]).is_err());
    assert!(Cli::try_parse_from(["notify-backbone", "--tls-key", "k.pem"]).is_err());
    assert!(
        Cli::try_parse_from([
            "notify-backbone",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem"
        ])
        .is_ok()
    );
}

#[test]
fn bindings_repeat_or_split_on_commas() {
    let parsed = Cli::try_parse_from([
        "notify-backbone",
        "--bind",
        "quota.#,app.#",
        "--bind",
        "device.error",
    ])
    .map(|cli| cli.serve.amqp.bindings);
    assert_eq!(
        parsed.ok(),
        Some(vec![
            "quota.#".into(),
            "app.#".into(),
            "device.error".into()
        ])
    );
}

#[test]
fn the_event_size_limit_stays_within_what_clients_can_receive() {
    let parse = |value: &str| {
        Cli::try_parse_from(["notify-backbone", "--max-event-bytes", value])
            .map(|cli| cli.serve.limits.max_event_bytes)
    };
    assert_eq!(parse("64KiB").ok(), Some(64 * 1024));
    assert_eq!(parse("4128768").ok(), Some(4 * 1024 * 1024 - 64 * 1024));
    assert!(
        parse("4MiB").is_err(),
        "above what a default client receives"
    );
    assert!(parse("16MiB").is_err());
    assert!(parse("0").is_err());
    // The old name still works.
    let old = Cli::try_parse_from(["notify-backbone", "--max-publish-bytes", "2048"]);
    assert_eq!(
        old.map(|cli| cli.serve.limits.max_event_bytes).ok(),
        Some(2048)
    );
    assert_eq!(
        ServeConfig::default().limits.max_event_bytes,
        crate::schema::DEFAULT_MAX_EVENT_BYTES
    );
}

#[test]
fn a_commit_delay_above_the_limit_is_refused() {
    let parse = |delay: &str| Cli::try_parse_from(["notify-backbone", "--commit-delay", delay]);
    assert_eq!(
        parse("0").map(|cli| cli.serve.journal.commit_delay).ok(),
        Some(Duration::ZERO)
    );
    assert!(parse("100ms").is_ok());
    assert!(parse("101ms").is_err());
}

#[test]
fn the_per_peer_cap_defaults_to_a_tenth_of_the_connections_and_0_turns_it_off() {
    let parse = |args: &[&str]| {
        let cli = Cli::try_parse_from([&["notify-backbone"], args].concat()).unwrap();
        cli.serve.limits.max_connections_per_peer()
    };
    assert_eq!(
        ServeConfig::default().limits.max_connections_per_peer(),
        Some(1000)
    );
    assert_eq!(parse(&["--max-connections", "200"]), Some(20));
    assert_eq!(parse(&["--max-connections", "50"]), Some(16));
    assert_eq!(parse(&["--max-connections-per-peer", "3"]), Some(3));
    assert_eq!(parse(&["--max-connections-per-peer", "0"]), None);
}

#[test]
fn the_idle_timeout_defaults_to_five_minutes_and_0_turns_it_off() {
    assert_eq!(
        ServeConfig::default().limits.connection_idle_timeout(),
        Some(Duration::from_secs(300))
    );
    let cli = Cli::try_parse_from(["notify-backbone", "--connection-idle-timeout", "0"]).unwrap();
    assert_eq!(cli.serve.limits.connection_idle_timeout(), None);
}

#[test]
fn a_zero_heartbeat_interval_is_refused() {
    let parsed = Cli::try_parse_from(["notify-backbone", "--heartbeat-interval", "0s"]);
    assert!(parsed.is_err());
    assert!(
        Cli::try_parse_from(["notify-backbone", "serve", "--heartbeat-interval", "250ms"]).is_ok()
    );
}
