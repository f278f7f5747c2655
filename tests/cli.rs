//! The README's tour: the `subscribe` and `publish` commands against a running server.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::process::Stdio;

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_notify-backbone");

#[tokio::test]
async fn subscribe_prints_what_publish_sends_as_json_lines() {
    let server = TestServer::start().await;
    let mut subscriber = tokio::process::Command::new(BIN)
        .args([
            "subscribe",
            "--token",
            &token("u1", &["user"]),
            "--server",
            &server.url(),
            "--user",
            "u1",
            "--types",
            "billing.*",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let next_line = async |lines: &mut tokio::io::Lines<_>| -> serde_json::Value {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let first = next_line(&mut lines).await;
    assert!(first["caughtUp"]["cursor"].is_string(), "{first}");

    let body = r#"{"userId":"u1","paymentId":"p1","paymentMethod":"alipay","amount":99.9,"newBalance":120.5,"_trace":{}}"#;
    let output = tokio::process::Command::new(BIN)
        .args([
            "publish",
            "--token",
            &service_token(),
            "--server",
            &server.url(),
            "billing.payment_success",
            body,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let published: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(published["duplicate"], false);

    let event = next_line(&mut lines).await;
    assert_eq!(event["event"]["id"], published["id"], "{event}");
    assert_eq!(event["event"]["cursor"], published["cursor"], "{event}");
    assert_eq!(event["event"]["type"], "billing.payment_success");
    assert_eq!(
        event["event"]["billingPaymentSuccess"]["amount"]["value"],
        "99.9"
    );
}

#[tokio::test]
async fn publish_reports_bad_input_and_fails() {
    let server = TestServer::start().await;
    let output = tokio::process::Command::new(BIN)
        .args([
            "publish",
            "--token",
            &service_token(),
            "--server",
            &server.url(),
            "device.started",
            "[1]",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not an object"), "{stderr}");
}

/// A scratch working directory of this test's own, removed when dropped.
fn scratch_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("notify-cli-{name}-"))
        .tempdir()
        .unwrap()
}

#[tokio::test]
async fn the_server_refuses_to_start_without_a_key_unless_dev() {
    let scratch = scratch_dir("nokey");
    let dir = scratch.path();
    let output = tokio::process::Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("JWT_SECRET")
        .env_remove("AMQP_URL")
        .env_remove("NOTIFY_DEV")
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--jwt-secret") && stderr.contains("--dev"),
        "{stderr}"
    );
    assert!(!dir.join(".notify-backbone").exists());
}

/// The README's tour as written: `--dev`, then `token` in the same directory for a subscriber
/// and a publisher.
#[tokio::test]
async fn dev_mode_and_the_token_command_work_together() {
    let scratch = scratch_dir("dev");
    let dir = scratch.path();
    let (_server, url, log) = spawn_dev(dir, &[]).await;
    let warned = log.iter().any(|line| line.contains("DEVELOPMENT MODE"));
    assert!(warned, "no loud warning in --dev");
    let secret = dir.join(".notify-backbone/dev-jwt-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the secret is readable by others: {mode:o}"
        );
    }

    let mint = async |args: &[&str]| -> String {
        let output = tokio::process::Command::new(BIN)
            .arg("token")
            .args(args)
            .current_dir(dir)
            .env_remove("JWT_SECRET")
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let user = mint(&["--sub", "u1"]).await;
    let service = mint(&["--sub", "billing-service", "--role", "service"]).await;

    let mut subscriber = tokio::process::Command::new(BIN)
        .args(["subscribe", "--server", &url])
        .env("NOTIFY_TOKEN", &user)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.contains("caughtUp"), "{first}");

    let publish = async |token: &str| {
        tokio::process::Command::new(BIN)
            .args(["publish", "--server", &url, "billing.payment_success"])
            .arg(r#"{"userId":"u1","paymentId":"p1","paymentMethod":"alipay","amount":99.9,"newBalance":120.5}"#)
            .env("NOTIFY_TOKEN", token)
            .env("RUST_BACKTRACE", "0")
            .output()
            .await
            .unwrap()
    };
    // A user may not publish; the service may, and the user's stream shows the event.
    let refused = publish(&user).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied"),
        "{refused:?}"
    );
    let published = publish(&service).await;
    assert!(published.status.success(), "{published:?}");
    let event = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(event.contains(r#""paymentId":"p1""#), "{event}");

    // A token signed with any other secret is refused.
    let foreign = notify_backbone::auth::mint_hs256(
        b"some-other-secret",
        "billing-service",
        &["service".into()],
        std::time::Duration::from_secs(60),
        notify_backbone::auth::DEFAULT_ISSUER,
        notify_backbone::auth::DEFAULT_AUDIENCE,
    )
    .unwrap();
    let refused = publish(&foreign).await;
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{refused:?}"
    );
}

/// A `--dev` server in `dir` on free ports (plus `extra` flags), logging at `info` into a pipe:
/// the process, its URL, and its log lines up to the one that says where it listens.
async fn spawn_dev(
    dir: &std::path::Path,
    extra: &[&str],
) -> (tokio::process::Child, String, Vec<String>) {
    let mut server = tokio::process::Command::new(BIN)
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .current_dir(dir)
        .env_remove("JWT_SECRET")
        // scripts/test exports AMQP_URL: this server must not consume the default queue.
        .env_remove("AMQP_URL")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = BufReader::new(server.stderr.take().unwrap()).lines();
    let (mut lines, mut url) = (Vec::new(), None);
    while url.is_none() {
        let line = tokio::time::timeout(PATIENCE, log.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the server logs where it listens");
        if let Some((_, rest)) = line.split_once("serving gRPC and grpc-web on ") {
            // Text or JSON: the address ends where its port's digits do.
            let addr = rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(|c: char| !c.is_ascii_digit());
            url = Some(format!("http://{addr}"));
        }
        lines.push(line);
    }
    // Keep reading the log, so a full pipe never blocks the server.
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    (server, url.unwrap(), lines)
}

/// A second `--dev` server in the same directory (for the RabbitMQ part of the tour, say) reuses
/// the first one's secret: tokens minted before it started work on both, and `token` mints for
/// both.
#[tokio::test]
async fn two_dev_servers_in_one_directory_accept_the_same_tokens() {
    let scratch = scratch_dir("two-dev");
    let dir = scratch.path();
    let (_first, first_url, _) = spawn_dev(dir, &[]).await;
    let secret = dir.join(".notify-backbone/dev-jwt-secret");
    let before = std::fs::read_to_string(&secret).unwrap();
    let mint = || {
        let output = std::process::Command::new(BIN)
            .args(["token", "--sub", "u1"])
            .current_dir(dir)
            .env_remove("JWT_SECRET")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let minted_before = mint();
    let (_second, second_url, _) = spawn_dev(dir, &["--data-dir", "second-journal"]).await;
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        before,
        "the second server replaced the secret"
    );
    let minted_after = mint();
    for url in [&first_url, &second_url] {
        for token in [&minted_before, &minted_after] {
            let mut client = notify_backbone::pb::notification_service_client::NotificationServiceClient::connect(url.clone())
                .await
                .unwrap();
            let request = notify_backbone::pb::ListEventsRequest {
                user_id: "u1".into(),
                ..Default::default()
            };
            client
                .list_events(with_token(request, token))
                .await
                .unwrap_or_else(|status| panic!("{url} refused a token: {status:?}"));
        }
    }
}

/// A refusal is one line on stderr and exit code 1, also with `RUST_BACKTRACE=1` (common among
/// Rust developers), which must not turn it into a backtrace; a usage error is exit code 2.
#[tokio::test]
async fn errors_are_one_line_with_an_exit_code_even_with_rust_backtrace() {
    let scratch = scratch_dir("errors");
    let dir = scratch.path();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env_remove("JWT_SECRET")
            .env_remove("NOTIFY_DEV")
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    };
    for (args, says) in [
        (
            &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"][..],
            "--jwt-secret",
        ),
        (&["token", "--sub", "u1"][..], "dev-jwt-secret"),
        (
            &[
                "publish",
                "--server",
                "http://127.0.0.1:9",
                "--token",
                "t",
                "device.started",
                "{}",
            ][..],
            "127.0.0.1:9",
        ),
    ] {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr}");
        assert!(
            lines[0].starts_with("notify-backbone: error: ") && lines[0].contains(says),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
    }
    let usage = run(&["--no-such-flag"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}

/// `serve --check` validates a deployment's configuration without starting anything: it says
/// what would run, or why it would not, and creates nothing.
#[tokio::test]
async fn serve_check_validates_the_configuration_and_starts_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("journal");
    let check = |extra: &[&str]| {
        let mut command = std::process::Command::new(BIN);
        command
            .args(["serve", "--check", "--data-dir"])
            .arg(&data)
            .args(extra)
            .env_remove("JWT_SECRET")
            .env_remove("AMQP_URL")
            .env_remove("RUST_BACKTRACE");
        command.output().unwrap()
    };
    let ok = check(&[
        "--jwt-secret",
        "s",
        "--amqp-url",
        "amqp://guest:guest@rabbit:5672/%2f",
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(stdout.contains("guest:***@rabbit"), "{stdout}");
    assert!(!data.exists(), "nothing is created");
    for (extra, reason) in [
        (&[][..], "no way to check tokens"),
        (
            &["--jwt-public-key", "/nonexistent/key.pem"][..],
            "--jwt-public-key",
        ),
        (
            &["--jwt-secret", "s", "--amqp-url", "not a url"][..],
            "--amqp-url",
        ),
        (
            &["--jwt-secret", "s", "--max-event-bytes", "16MiB"][..],
            "max-event-bytes",
        ),
        (
            &["--jwt-secret", "s", "--journal", "rabbitmq-stream"][..],
            "needs --amqp-url",
        ),
    ] {
        let failed = check(extra);
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(!failed.status.success(), "{extra:?} passed");
        assert!(stderr.contains(reason), "{extra:?}: {stderr}");
    }
}

/// No container engine runs where the project is developed, so each node of
/// `docker/compose.cluster.yaml` is checked here instead: its command line, with the
/// environment the file gives it, passes `serve --check` as a cluster node.
#[test]
fn the_cluster_compose_files_node_commands_pass_serve_check() {
    let compose = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/compose.cluster.yaml"),
    )
    .unwrap();
    let commands: Vec<Vec<String>> = compose
        .lines()
        .filter_map(|line| line.trim().strip_prefix("command: "))
        .map(|array| serde_json::from_str(array).unwrap())
        .collect();
    assert_eq!(commands.len(), 3, "three nodes");
    for command in commands {
        let output = std::process::Command::new(BIN)
            .args(&command)
            .arg("--check")
            .env("JWT_SECRET", "compose-dev-secret-change-me")
            .env_remove("AMQP_URL")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("cluster mode"), "{stdout}");
    }
}

/// `--version` names the commit; `--help` names RUST_LOG; `--log-format json` writes one JSON
/// object per line (the first says which version starts); and with stderr not a terminal there
/// are no colour codes, `NO_COLOR` or not.
#[tokio::test]
async fn logs_are_for_machines_too_and_the_version_names_its_commit() {
    let version = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8(output.stdout).unwrap().trim().to_owned());
    let expected = format!(
        "notify-backbone {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        commit.as_deref().unwrap_or("unknown")
    );
    assert_eq!(version.trim(), expected);
    let help = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("RUST_LOG") && help.contains("--log-format") && help.contains("NO_COLOR"),
        "{help}"
    );

    let scratch = scratch_dir("json-logs");
    let dir = scratch.path();
    let (server, _, log) = spawn_dev(dir, &["--log-format", "json"]).await;
    for line in &log {
        assert!(
            !line.contains('\u{1b}'),
            "a colour code in a pipe: {line:?}"
        );
    }
    let lines: Vec<serde_json::Value> = log
        .iter()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"))
        })
        .collect();
    let first = &lines[0];
    assert_eq!(first["message"], "notify-backbone starting", "{first}");
    assert_eq!(first["level"], "INFO", "{first}");
    assert_eq!(
        first["version"],
        expected.trim_start_matches("notify-backbone "),
        "{first}"
    );
    assert!(first["timestamp"].is_string(), "{first}");
    drop(server);

    // Text logs into a pipe carry no colour codes either.
    let (_server, _, log) = spawn_dev(dir, &["--data-dir", "text-journal"]).await;
    for line in &log {
        assert!(
            !line.contains('\u{1b}'),
            "a colour code in a pipe: {line:?}"
        );
    }
}

/// `subscribe --follow` is what every client should do: when the server stops, it reconnects
/// with backoff and resumes after its last cursor, so an event published after the restart
/// comes next, once, with nothing repeated; `--hide-heartbeats` keeps heartbeats out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_follow_reconnects_and_resumes_across_a_restart() {
    let fast_heartbeats = |c: &mut notify_backbone::config::ServeConfig| {
        c.heartbeat_interval = std::time::Duration::from_millis(50);
    };
    let server = TestServer::start_with(fast_heartbeats).await;
    let addr = server.addr;
    let mut subscriber = tokio::process::Command::new(BIN)
        .args([
            "subscribe",
            "--follow",
            "--hide-heartbeats",
            "--server",
            &server.url(),
        ])
        .env("NOTIFY_TOKEN", token("u-follow", &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let mut errors = BufReader::new(subscriber.stderr.take().unwrap()).lines();
    let next = async |lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>| {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("subscribe keeps running");
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    assert!(next(&mut lines).await.get("caughtUp").is_some());
    let mut client = server.client().await;
    let before = publish_json(
        &mut client,
        "device.error",
        &device_error("follow-1", "u-follow", "d1"),
    )
    .await
    .unwrap();
    assert_eq!(next(&mut lines).await["event"]["id"], "follow-1");

    let data = server.stop_within(PATIENCE).await;
    // It says what happened and that it goes on.
    let said = tokio::time::timeout(PATIENCE, errors.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        said.starts_with("subscribe: ") && said.contains("reconnecting in"),
        "{said}"
    );
    let dir = data.0.clone();
    let server = TestServer::start_at(addr, |c| {
        fast_heartbeats(c);
        c.journal.data_dir = dir;
    })
    .await;
    let mut client = server.client().await;
    publish_json(
        &mut client,
        "device.error",
        &device_error("follow-2", "u-follow", "d1"),
    )
    .await
    .unwrap();
    // Resumed after follow-1: follow-2 and a CaughtUp (in either order: the reconnection may
    // come before or after the publish), no heartbeat, follow-1 not again.
    let (mut got_event, mut got_caught_up) = (false, false);
    while !(got_event && got_caught_up) {
        let line = next(&mut lines).await;
        if let Some(cursor) = line["caughtUp"]["cursor"].as_str() {
            assert!(
                cursor >= before.cursor.as_str(),
                "resumed before follow-1: {line}"
            );
            got_caught_up = true;
        } else {
            assert_eq!(line["event"]["id"], "follow-2", "{line}");
            assert!(!got_event, "follow-2 twice");
            got_event = true;
        }
    }
    server.stop_within(PATIENCE).await;
    drop(data);
}

/// `history` pages through `ListEvents`: oldest first by default, or newest first up to `--max`,
/// and says on stderr where to continue, and where to go live from: the journal's head (the
/// newest event here), in both orders, never the journal's start (following that would replay
/// everything again).
#[tokio::test]
async fn history_pages_through_the_stored_events() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for n in 0..5 {
        publish_json(
            &mut client,
            "device.error",
            &device_error(&format!("history-{n}"), "u-history", "d1"),
        )
        .await
        .unwrap();
    }
    // tokio's process: a blocking wait would stall the in-process server on this runtime.
    let url = server.url();
    let history = async |args: &[&str]| {
        tokio::process::Command::new(BIN)
            .args(["history", "--server", &url, "--page", "2"])
            .args(args)
            .env("NOTIFY_TOKEN", token("u-history", &[]))
            .output()
            .await
            .unwrap()
    };
    let field = |output: &std::process::Output, name: &str| -> Vec<String> {
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let event: serde_json::Value = serde_json::from_str(line).unwrap();
                event[name].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let ids = |output: &std::process::Output| field(output, "id");
    let all = history(&[]).await;
    assert_eq!(
        ids(&all),
        [
            "history-0",
            "history-1",
            "history-2",
            "history-3",
            "history-4"
        ]
    );
    let newest_cursor = field(&all, "cursor").pop().unwrap();
    let go_live = format!("go live with: subscribe --resume-after {newest_cursor})");
    let said = String::from_utf8_lossy(&all.stderr);
    assert!(said.contains("5 events; the end"), "{said}");
    assert!(said.contains(&go_live), "{said}");

    // Newest first to the end (three pages): the first page's head, not the oldest event.
    let everything = history(&["--newest-first"]).await;
    assert_eq!(ids(&everything).len(), 5);
    let said = String::from_utf8_lossy(&everything.stderr);
    assert!(said.contains("5 events; the end"), "{said}");
    assert!(said.contains(&go_live), "{said}");

    let newest = history(&["--newest-first", "--max", "3"]).await;
    assert_eq!(ids(&newest), ["history-4", "history-3", "history-2"]);
    let said = String::from_utf8_lossy(&newest.stderr);
    let from = said
        .split("more with: history --newest-first --from ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no way to continue: {said}"))
        .trim()
        .to_owned();
    assert!(
        said.contains(&format!(
            "; or go live with: subscribe --resume-after {newest_cursor}\n"
        )),
        "{said}"
    );
    let rest = history(&["--newest-first", "--from", &from]).await;
    assert_eq!(ids(&rest), ["history-1", "history-0"]);
    // A continuation does not know where the first run's head was: it names none.
    let said = String::from_utf8_lossy(&rest.stderr);
    assert!(
        said.contains("2 events; the end") && !said.contains("go live"),
        "{said}"
    );
    server.stop_within(PATIENCE).await;
}

/// `completions` prints a script for each shell that knows the subcommands.
#[test]
fn completions_cover_the_subcommands_in_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = std::process::Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8(output.stdout).unwrap();
        for word in ["notify-backbone", "subscribe", "history", "follow", "inbox"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let unknown = std::process::Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
}

/// A server over its `--max-connections` accepts a connection and closes it at once: the clients
/// say that the server closed the connection, not `Unknown: transport error` (or `Cancelled`),
/// and `subscribe --follow` takes it for a reason to try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closes_at_its_cap_is_said_to_be_closed() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 1).await;
    // The one connection the cap allows, held open (and past its handshake) for the whole test.
    let mut held = server.client().await;
    let request = notify_backbone::pb::ListEventsRequest::default();
    held.list_events(with_token(request, &token("u-cap", &[])))
        .await
        .unwrap();
    let url = server.url();
    let run = async |args: &[&str]| {
        tokio::process::Command::new(BIN)
            .args(args)
            .args(["--server", &url])
            .env("NOTIFY_TOKEN", token("u-cap", &[]))
            .env("RUST_LOG", "off")
            .output()
            .await
            .unwrap()
    };
    let publish = ["publish", "device.error", "{}"];
    for args in [&["history"][..], &["subscribe"][..], &publish[..]] {
        let output = run(args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("notify-backbone: error: the server closed the connection before answering (likely at its connection limit)"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("transport error") && !stderr.contains("Cancelled"),
            "{args:?}: {stderr}"
        );
    }
    // --follow tries again (a closed connection is worth another try) and says why.
    let (_follower, said) = follow_until_it_complains(&url, "u-cap").await;
    assert!(
        said.starts_with("subscribe: the server closed the connection before answering")
            && said.contains("reconnecting in"),
        "{said}"
    );
    drop(held);
    server.stop_within(PATIENCE).await;
}

/// `subscribe --follow` of `server` as `user`, and the first line it writes on stderr (why it
/// reconnects); the process is killed when dropped.
async fn follow_until_it_complains(server: &str, user: &str) -> (tokio::process::Child, String) {
    let mut follower = tokio::process::Command::new(BIN)
        .args(["subscribe", "--follow", "--server", server])
        .env("NOTIFY_TOKEN", token(user, &[]))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut errors = BufReader::new(follower.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(PATIENCE, errors.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (follower, said)
}

/// An unreachable server is said once per cause: `cannot connect to …: transport error: tcp
/// connect error: Connection refused`, not `tcp connect error: tcp connect error: …` (tonic's
/// connect error shows its source's message and returns it as its source too).
#[tokio::test]
async fn subscribe_follow_says_each_cause_of_an_unreachable_server_once() {
    // A port nothing listens on: bound, then let go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (_follower, said) = follow_until_it_complains(&url, "u-closed").await;
    let reason = said
        .strip_prefix("subscribe: ")
        .and_then(|rest| rest.split("; reconnecting in").next())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(
        reason.starts_with(&format!("cannot connect to {url}: ")),
        "{said}"
    );
    let causes: Vec<&str> = reason.split(": ").collect();
    for pair in causes.windows(2) {
        assert_ne!(pair[0], pair[1], "a cause said twice: {said}");
    }
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).to_string();
    assert!(
        said.to_lowercase().contains(&refused.to_lowercase()),
        "{said}"
    );
}

/// The notification centre from the command line: `inbox counts`, `list` page by page, `mark`
/// by id (an unknown id warned about) and all at once, preferences set from standard input
/// and read back, the server's refusals said as it said them with exit code 1, and a
/// `subscribe --inbox` that prints the inbox's updates as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_lists_counts_and_marks_and_subscribe_prints_its_updates() {
    use serde_json::Value;
    let server = TestServer::start().await;
    let url = server.url();
    let user = "u-cli-inbox";
    let user_token = token(user, &["user"]);
    let run = async |args: &[&str], stdin: Option<&str>| {
        let mut child = tokio::process::Command::new(BIN)
            .args(args)
            .args(["--server", &url])
            .env("NOTIFY_TOKEN", &user_token)
            .env("RUST_LOG", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut input, stdin.unwrap_or("").as_bytes())
            .await
            .unwrap();
        drop(input);
        child.wait_with_output().await.unwrap()
    };
    let json_lines = |output: &std::process::Output| -> Vec<Value> {
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let stderr =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();

    // A stream with the inbox's updates: its state once caught up, empty.
    let mut subscriber = tokio::process::Command::new(BIN)
        .args(["subscribe", "--inbox", "--server", &url])
        .env("NOTIFY_TOKEN", &user_token)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(subscriber.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("subscribe keeps running");
        serde_json::from_str(&line).unwrap()
    };
    assert!(next().await["caughtUp"]["cursor"].is_string());
    let state = next().await;
    assert_eq!(
        state["inbox"]["reason"], "INBOX_UPDATE_REASON_STATE",
        "{state}"
    );
    assert_eq!(state["inbox"]["counts"]["unread"], "0", "{state}");

    let mut client = server.client().await;
    let mut ids = Vec::new();
    for file in [
        "billing.payment_success.flat.json",
        "device.error.envelope.json",
        "app.installed.shape-a.json",
    ] {
        let (routing_key, body) = fixture_for(file, user);
        ids.push(
            publish_json(&mut client, &routing_key, &body)
                .await
                .unwrap()
                .id,
        );
    }
    let [pay, err, app] = [&ids[0], &ids[1], &ids[2]];
    // Each event, then the update that counts it.
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(&next().await["event"]["id"], id.as_str());
        let update = next().await;
        assert_eq!(
            update["inbox"]["reason"], "INBOX_UPDATE_REASON_NEW_ITEMS",
            "{update}"
        );
        assert_eq!(update["inbox"]["ids"][0], id.as_str(), "{update}");
        assert_eq!(
            update["inbox"]["counts"]["unread"],
            (n + 1).to_string(),
            "{update}"
        );
    }

    let counts = run(&["inbox", "counts"], None).await;
    let printed = json_lines(&counts);
    assert_eq!(printed.len(), 1);
    assert_eq!(
        (&printed[0]["total"], &printed[0]["unread"]),
        (&"3".into(), &"3".into())
    );
    let families = printed[0]["families"].as_array().unwrap();
    let billing = families
        .iter()
        .find(|f| f["family"] == "INBOX_FAMILY_BILLING")
        .unwrap();
    assert_eq!(billing["unread"], "1");
    let quota = families
        .iter()
        .find(|f| f["family"] == "INBOX_FAMILY_QUOTA")
        .unwrap();
    assert_eq!(quota["total"], "0", "zeros are printed: {quota}");
    assert!(
        stderr(&counts).contains("3 unread, 3 unseen, 3 in all"),
        "{counts:?}"
    );

    // Newest first, two per page: the second page continues where the first said.
    let item_ids = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|item| item["event"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = run(&["inbox", "list", "--limit", "2"], None).await;
    let items = json_lines(&first);
    assert_eq!(item_ids(&items), [app.clone(), err.clone()]);
    assert_eq!(items[0]["read"], false, "{}", items[0]);
    assert_eq!(items[0]["family"], "INBOX_FAMILY_APP");
    let said = stderr(&first);
    assert!(said.starts_with("inbox: 2 items; 3 unread"), "{said}");
    assert!(
        said.contains("go live with: subscribe --inbox --resume-after "),
        "{said}"
    );
    let before = said
        .split("more with: inbox list --limit 2 --before ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no way to continue: {said}"))
        .to_owned();
    let rest = run(
        &["inbox", "list", "--limit", "2", "--before", &before],
        None,
    )
    .await;
    assert_eq!(item_ids(&json_lines(&rest)), std::slice::from_ref(pay));
    assert!(
        stderr(&rest).contains("1 item; 3 unread, 3 unseen, 3 in all"),
        "{rest:?}"
    );
    assert!(stderr(&rest).contains("; the end"), "{rest:?}");
    let every = run(&["inbox", "list", "--limit", "2", "--all-pages"], None).await;
    assert_eq!(
        item_ids(&json_lines(&every)),
        [app.clone(), err.clone(), pay.clone()]
    );

    // By id: one changed, the unknown one warned about.
    let marked = run(&["inbox", "mark", "read", pay, "no-such-event"], None).await;
    let response = &json_lines(&marked)[0];
    assert_eq!(response["changed"], 1, "{response}");
    assert_eq!(response["unknownIds"], serde_json::json!(["no-such-event"]));
    assert_eq!(response["counts"]["unread"], "2", "{response}");
    let said = stderr(&marked);
    assert!(
        said.contains("warning") && said.contains("no-such-event"),
        "{said}"
    );
    let unread = run(&["inbox", "list", "--filter", "unread"], None).await;
    assert_eq!(item_ids(&json_lines(&unread)), [app.clone(), err.clone()]);
    let marked = update_after(&mut next, "INBOX_MARK_READ").await;
    assert_eq!(marked["ids"], serde_json::json!([pay]), "{marked}");

    let all = run(&["inbox", "mark", "read", "--all"], None).await;
    let response = &json_lines(&all)[0];
    assert_eq!(response["changed"], 2, "{response}");
    assert_eq!(response["unknownIds"], serde_json::json!([]), "{response}");
    assert_eq!(
        (&response["counts"]["unread"], &response["counts"]["unseen"]),
        (&"0".into(), &"0".into())
    );
    let marked = update_after(&mut next, "INBOX_MARK_READ").await;
    assert_eq!(marked["all"], true, "{marked}");
    assert_eq!(marked["counts"]["unread"], "0", "{marked}");

    // Preferences from standard input, as stored, and read back.
    let set = run(
        &["inbox", "preferences", "set", "--file", "-"],
        Some(r#"{"types":[{"eventType":"app.*","enabled":false}]}"#),
    )
    .await;
    let stored = &json_lines(&set)[0];
    assert_eq!(stored["types"][0]["eventType"], "app.*", "{stored}");
    assert_eq!(stored["types"][0]["enabled"], false, "{stored}");
    assert_eq!(
        &json_lines(&run(&["inbox", "preferences"], None).await)[0],
        stored
    );

    // Refusals: the server's own words, one line, exit code 1.
    for (args, says) in [
        (
            &["inbox", "counts", "--user", "someone-else"][..],
            "PermissionDenied: may only read your own inbox and preferences",
        ),
        (
            &["inbox", "list", "--admin"][..],
            "PermissionDenied: the admin inbox is for admins",
        ),
        (
            &["inbox", "mark", "archive", "--all"][..],
            "InvalidArgument: ",
        ),
    ] {
        let refused = run(args, None).await;
        let said = stderr(&refused);
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {said}");
        assert_eq!(said.lines().count(), 1, "{args:?}: {said}");
        assert!(
            said.starts_with(&format!("notify-backbone: error: {says}")),
            "{args:?}: {said}"
        );
        assert!(refused.stdout.is_empty(), "{args:?}: {refused:?}");
    }
    let bad = run(
        &["inbox", "preferences", "set", "--file", "-"],
        Some(r#"{"typos":[]}"#),
    )
    .await;
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        stderr(&bad).contains("standard input is not the protobuf JSON of Preferences"),
        "{bad:?}"
    );
    subscriber.kill().await.unwrap();
    server.stop_within(PATIENCE).await;
}

/// The next inbox update with `mark` that `next` reads (events and other updates skipped).
async fn update_after(
    next: &mut impl AsyncFnMut() -> serde_json::Value,
    mark: &str,
) -> serde_json::Value {
    loop {
        let line = next().await;
        if line["inbox"]["reason"] == "INBOX_UPDATE_REASON_MARKED" && line["inbox"]["mark"] == mark
        {
            return line["inbox"].clone();
        }
    }
}
