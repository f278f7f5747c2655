//! Clients generated from `proto/` in other languages, against a real server: the TypeScript
//! client under Node (`@connectrpc/connect-node`, gRPC over HTTP/2, web/test/node-client.test.ts)
//! and a Python client (`grpcio-tools` stubs, tests/clients/python/test_client.py). Each
//! subscribes with a token, receives typed events and resumes by cursor; this test starts the
//! server, mints their tokens and checks they pass. Also runs the web page's unit tests.
//!
//! Needs Node with `web/node_modules` and the Python venv of `scripts/ensure-python`, which
//! `scripts/test` installs; without them these tests fail rather than skip.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{path::Path, process::Stdio, time::Duration};

use support::*;
use tokio::process::Command;

/// A client program may take this long (it starts Node or Python and generates code).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command` to completion and fails the test, with its output, unless it succeeds.
async fn run_client(what: &str, command: &mut Command) {
    command
        .current_dir(root())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CLIENT_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {CLIENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| {
            panic!("{what} could not start: {e} (run scripts/test, which installs it)")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    eprintln!("{what}: passed\n{stdout}{stderr}");
}

/// The environment every client test reads: where the server is and its tokens.
fn client_env(command: &mut Command, server: &TestServer, user: &str) {
    command
        .env("NOTIFY_URL", server.url())
        .env("NOTIFY_GRPC", server.addr.to_string())
        .env("NOTIFY_USER_ID", user)
        .env("NOTIFY_USER_TOKEN", token(user, &[]))
        .env("NOTIFY_SERVICE_TOKEN", service_token());
}

fn assert_installed(path: &str) {
    assert!(
        root().join(path).exists(),
        "{path} is missing: run scripts/test (it installs the client tools)"
    );
}

#[tokio::test]
async fn the_typescript_client_subscribes_receives_typed_events_and_resumes_under_node() {
    assert_installed("web/node_modules/@connectrpc/connect-node");
    let server = TestServer::start().await;
    let user = format!("u-node-{}", std::process::id());
    let mut command = Command::new("npm");
    command.args(["run", "--prefix", "web", "--silent", "test:node-client"]);
    client_env(&mut command, &server, &user);
    run_client("the Node client test", &mut command).await;
    server.stop_within(PATIENCE).await;
}

#[tokio::test]
async fn the_python_client_subscribes_receives_typed_events_and_resumes() {
    assert_installed("target/python-venv/bin/python");
    let server = TestServer::start().await;
    let user = format!("u-python-{}", std::process::id());
    let mut command = Command::new(root().join("target/python-venv/bin/python"));
    command.arg("tests/clients/python/test_client.py");
    client_env(&mut command, &server, &user);
    run_client("the Python client test", &mut command).await;
    server.stop_within(PATIENCE).await;
}

#[tokio::test]
async fn the_web_pages_unit_tests_pass() {
    assert_installed("web/node_modules/esbuild");
    let mut command = Command::new("npm");
    command.args(["run", "--prefix", "web", "--silent", "test:unit"]);
    run_client("the web unit tests", &mut command).await;
}
