//! The live notification page (`--web`) in real headless Chromium: it shows a user's events of
//! every family as they arrive, through `Publish` and through RabbitMQ, with readable
//! summaries; never another user's; and after the server restarts it reconnects by itself and
//! shows what was published meanwhile, once each.
//!
//! Needs Node, `web/node_modules` (playwright-core) and Debian's Chromium, which `scripts/test`
//! installs; without them this test fails rather than skips.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{path::Path, process::Stdio};

use notify_backbone::{pb, store::Cursor};
use prost::Message;
use serde_json::{Value, json};
use support::{
    amqp::{Names, Producer},
    *,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// How long the page may take to show something (Chromium on two shared cores is slow to start).
const PAGE_PATIENCE_MS: u64 = 20_000;

/// Headless Chromium behind `tests/browser/driver.mjs`.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    async fn launch() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(
            root.join("web/node_modules/playwright-core").is_dir(),
            "web/node_modules is missing: run scripts/test (it installs the npm packages)"
        );
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists(),
            "{chromium} is missing: run scripts/test (it installs Debian's chromium)"
        );
        let mut child = Command::new("node")
            .arg(root.join("tests/browser/driver.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (scripts/test checks it is installed)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut browser = Self {
            child,
            stdin,
            stdout,
        };
        assert_eq!(browser.answer().await.unwrap(), "ready");
        browser
    }

    async fn answer(&mut self) -> Result<Value, String> {
        let line = tokio::time::timeout(
            std::time::Duration::from_millis(PAGE_PATIENCE_MS + 10_000),
            self.stdout.next_line(),
        )
        .await
        .expect("the browser driver answers")
        .unwrap()
        .expect("the browser driver is running");
        let answer: Value = serde_json::from_str(&line).unwrap();
        if answer["ok"] == true {
            Ok(answer["value"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or("?").to_owned())
        }
    }

    async fn run(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        match self.answer().await {
            Ok(value) => value,
            Err(error) => {
                let log = self.log().await;
                panic!("browser: {command} failed: {error}\npage log:\n{log}");
            }
        }
    }

    async fn log(&mut self) -> String {
        self.stdin.write_all(b"{\"cmd\":\"log\"}\n").await.unwrap();
        match self.answer().await {
            Ok(Value::Array(lines)) => lines
                .iter()
                .map(|l| l.as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
                .join("\n"),
            other => format!("{other:?}"),
        }
    }

    async fn goto(&mut self, url: &str) {
        self.run(json!({"cmd": "goto", "url": url})).await;
    }

    /// Waits until an element matching `selector` (containing `text`, if given) exists.
    async fn wait_for(&mut self, selector: &str, text: Option<&str>) {
        self.run(json!({"cmd": "waitFor", "selector": selector, "text": text,
                        "timeoutMs": PAGE_PATIENCE_MS}))
            .await;
    }

    async fn evaluate(&mut self, expression: &str) -> Value {
        self.run(json!({"cmd": "evaluate", "expression": expression}))
            .await
    }

    /// The summary shown for the event with id `id`.
    async fn summary_of(&mut self, id: &str) -> String {
        let selector = format!("li.event[data-id=\"{id}\"] .summary");
        self.wait_for(&selector, None).await;
        let expression = format!("document.querySelector({selector:?}).textContent");
        self.evaluate(&expression)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The ids of every event the page shows.
    async fn shown_ids(&mut self) -> Vec<String> {
        let ids = self
            .evaluate("[...document.querySelectorAll('li.event')].map(e => e.dataset.id)")
            .await;
        serde_json::from_value(ids).unwrap()
    }

    async fn select(&mut self, selector: &str, value: &str) {
        self.run(json!({"cmd": "select", "selector": selector, "value": value}))
            .await;
    }

    /// The requests of every `Subscribe` call the page made so far (the latest 200), decoded
    /// from their grpc-web frames.
    async fn subscribe_requests(&mut self) -> Vec<pb::SubscribeRequest> {
        self.subscribe_requests_of(None).await
    }

    /// The same, of every tab or of tab `tab` only.
    async fn subscribe_requests_of(&mut self, tab: Option<&str>) -> Vec<pb::SubscribeRequest> {
        use base64::Engine;
        let bodies = self
            .run(json!({"cmd": "subscribeRequests", "page": tab}))
            .await;
        let bodies: Vec<String> = serde_json::from_value(bodies).unwrap();
        bodies
            .iter()
            .map(|body| {
                let frame = base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .unwrap();
                // A grpc-web frame: flags (1 byte), length (4 bytes, big-endian), message.
                pb::SubscribeRequest::decode(&frame[5..]).unwrap()
            })
            .collect()
    }

    /// Waits until the page has made more than `before` `Subscribe` calls and is live again.
    async fn wait_resubscribed(&mut self, before: usize) {
        eventually("the page resubscribes", async || {
            let calls = self.subscribe_requests().await.len();
            seen_if(
                calls > before,
                format!("{calls} Subscribe calls, {before} before"),
            )
        })
        .await;
        self.wait_for("#status[data-state=live]", None).await;
    }

    async fn screenshot(&mut self, name: &str) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        self.run(json!({"cmd": "screenshot", "path": path})).await;
        eprintln!("screenshot: {}", path.display());
    }

    async fn close(mut self) {
        self.run(json!({"cmd": "close"})).await;
        drop(self.stdin);
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the browser driver exits")
            .unwrap();
    }
}

/// Publishes `file` (a wire fixture) for `user` through `Publish`; returns the event's id.
async fn publish_fixture(server: &TestServer, file: &str, user: &str) -> String {
    let (routing_key, body) = fixture_for(file, user);
    let mut client = server.client().await;
    publish_json(&mut client, &routing_key, &body)
        .await
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_a_users_events_and_catches_up_after_a_restart() {
    let names = Names::unique("browser");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |c| c.web = Some(true)).await;
    let addr = server.addr;
    let user = format!("u-browser-{}", std::process::id());
    let stranger = format!("u-stranger-{}", std::process::id());

    let mut browser = Browser::launch().await;
    let page = format!("{}/?token={}", server.url(), token(&user, &[]));
    browser.goto(&page).await;
    browser.wait_for("#status[data-state=live]", None).await;

    // Every family through Publish, with what the page must say about each.
    let mut expected = Vec::new();
    for (file, says) in [
        (
            "billing.payment_success.envelope.json",
            "Payment of 99.9 received (order o-4001)",
        ),
        (
            "app.installed.shape-a.json",
            "WeChat 8.0.50 installed on phone-1",
        ),
        (
            "quota.alert.warning.json",
            "Warning quota alert (Basic): Storage usage at 94.9%",
        ),
        (
            "device.created.outbox.json",
            "Device phone-10 created (creating)",
        ),
    ] {
        expected.push((publish_fixture(&server, file, &user).await, says));
    }
    // Another user's event, published before the user's last ones: had it leaked, the page
    // would show it before them.
    publish_fixture(&server, "app.install.failed.error.json", &stranger).await;
    // Two more families through RabbitMQ, as the platform's producers publish them.
    for (file, says) in [
        (
            "billing.invoice_generated.envelope.json",
            "Invoice inv-5001 for 2025-11: 250",
        ),
        ("quota.updated.shape-b.json", "Quota q-2001 updated: active"),
    ] {
        let (routing_key, body) = fixture_for(file, &user);
        producer
            .publish(&names.exchange, &routing_key, body.as_bytes())
            .await;
        let id = wait_for_id(&mut browser, &routing_key).await;
        expected.push((id, says));
    }
    for (id, says) in &expected {
        let summary = browser.summary_of(id).await;
        assert!(
            summary.contains(says),
            "{id}: {summary:?} should say {says:?}"
        );
    }
    // Hovering an event shows its trace id (the fixtures carry the producer's traceparent).
    let (first, _) = &expected[0];
    let hover = browser
        .evaluate(&format!(
            "document.querySelector('li.event[data-id=\"{first}\"]').title"
        ))
        .await;
    assert_eq!(hover, "trace 4bf92f3577b34da6a3ce929d0e0e4736", "{first}");
    let shown = browser.shown_ids().await;
    assert_eq!(
        shown.len(),
        expected.len(),
        "only the user's events: {shown:?}"
    );
    browser.screenshot("live-page.png").await;

    // Drop the connection: stop the server, publish through RabbitMQ while it is down (the
    // node's queue keeps the messages), start it again on the same address and journal.
    let newest_shown = browser
        .evaluate("document.querySelector('li.event').dataset.cursor")
        .await;
    let newest_shown = Cursor::parse(newest_shown.as_str().unwrap()).unwrap();
    let subscribed_before = browser.subscribe_requests().await.len();
    assert_eq!(subscribed_before, 1, "one stream while the server was up");
    let data = server.stop_within(PATIENCE).await;
    browser
        .wait_for("#status[data-state=reconnecting]", None)
        .await;
    let (routing_key, body) = fixture_for("app.install.failed.error.json", &user);
    producer
        .publish(&names.exchange, &routing_key, body.as_bytes())
        .await;
    let (routing_key, body) = fixture_for("device.deleted.outbox.json", &user);
    producer
        .publish(&names.exchange, &routing_key, body.as_bytes())
        .await;
    let dir = data.0.clone();
    let server = TestServer::start_at(addr, |c| {
        names.apply(c);
        c.web = Some(true);
        c.journal.data_dir = dir;
    })
    .await;
    server.wait_ready().await;
    let after = publish_fixture(&server, "billing.low_balance.envelope.json", &user).await;

    let summary = browser.summary_of(&after).await;
    assert!(summary.starts_with("Low balance: "), "{summary:?}");
    browser
        .wait_for(
            "li.event .summary",
            Some("Douyin failed to install on phone-1: INSTALL_FAILED_INSUFFICIENT_STORAGE"),
        )
        .await;
    browser
        .wait_for("li.event .summary", Some("Device phone-10 deleted"))
        .await;
    browser.wait_for("#status[data-state=live]", None).await;
    let shown = browser.shown_ids().await;
    let unique: std::collections::HashSet<_> = shown.iter().collect();
    assert_eq!(shown.len(), expected.len() + 3, "{shown:?}");
    assert_eq!(unique.len(), shown.len(), "no event twice: {shown:?}");
    browser.screenshot("after-restart.png").await;

    // Every reconnection resumed from where the page was, not from the start or the head: the
    // first stream had no cursor; each later one had the cursor of the newest event shown before
    // the drop, or a later one of that journal (a heartbeat's).
    let requests = browser.subscribe_requests().await;
    assert!(requests.len() >= 2, "{requests:?}");
    // The first stream went live from where the page's history (an empty journal's) ended.
    let first = Cursor::parse(&requests[0].resume_after).expect("the history's head");
    assert_eq!(first.position, 0, "{requests:?}");
    for request in &requests[1..] {
        let resumed = Cursor::parse(&request.resume_after).expect("a reconnection resumes");
        assert_eq!(resumed.epoch, newest_shown.epoch);
        assert!(
            resumed.position >= newest_shown.position,
            "{resumed} < {newest_shown}"
        );
    }

    // An admin may switch to the firehose (other users' events) and narrow by family; each
    // switch starts a fresh stream.
    browser
        .goto(&format!(
            "{}/?token={}",
            server.url(),
            token("ops", &["admin"])
        ))
        .await;
    browser.wait_for("#status[data-state=live]", None).await;
    let before = browser.subscribe_requests().await.len();
    browser.select("#feed", "firehose").await;
    browser.wait_resubscribed(before).await;
    // History on first paint: the firehose shows what the user received before, at once.
    browser
        .wait_for(&format!("li.event[data-id=\"{after}\"]"), None)
        .await;
    let theirs = publish_fixture(&server, "device.started.outbox.json", &stranger).await;
    browser
        .wait_for(
            &format!("li.event[data-id=\"{theirs}\"][data-user=\"{stranger}\"]"),
            None,
        )
        .await;
    let before = browser.subscribe_requests().await.len();
    browser.select("#family", "billing").await;
    browser.wait_resubscribed(before).await;
    let app = publish_fixture(&server, "app.updated.per-device.json", &stranger).await;
    let bill = publish_fixture(&server, "billing.order.completed.flat.json", &user).await;
    browser.summary_of(&bill).await;
    let shown = browser.shown_ids().await;
    assert!(
        !shown.contains(&app),
        "the family filter let an app event through: {shown:?}"
    );
    let families = browser
        .evaluate("[...document.querySelectorAll('li.event')].map(e => e.dataset.type)")
        .await;
    let families: Vec<String> = serde_json::from_value(families).unwrap();
    assert!(
        families.iter().all(|t| t.starts_with("billing.")),
        "{families:?}"
    );
    browser.screenshot("admin-firehose-billing.png").await;

    browser.close().await;
    server.stop_within(PATIENCE).await;
    drop(data);
    producer.clean_up(&[&names]).await;
}

/// The id of the newest event the live page (newest first) shows of the type `routing_key`
/// names.
async fn wait_for_id(browser: &mut Browser, routing_key: &str) -> String {
    newest_id_of(browser, routing_key, "[0]").await
}

/// The id of the newest event of type `event_type` a page shows, once there is one: `at` picks
/// it from the page's list in order (`[0]` newest first, `.at(-1)` oldest first).
async fn newest_id_of(browser: &mut Browser, event_type: &str, at: &str) -> String {
    let selector = format!("li.event[data-type=\"{event_type}\"]");
    browser.wait_for(&selector, None).await;
    let expression = format!("[...document.querySelectorAll({selector:?})]{at}.dataset.id");
    browser
        .evaluate(&expression)
        .await
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_page_is_served_only_with_web_on() {
    let server = TestServer::start_with(|c| c.web = Some(true)).await;
    let response = http_get(server.addr, "/").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("text/html"), "{response}");
    assert!(
        response.contains("referrer-policy: no-referrer"),
        "{response}"
    );
    assert!(response.contains("/app.js"), "{response}");
    let script = http_get(server.addr, "/app.js").await;
    assert!(script.starts_with("HTTP/1.1 200"), "{script}");
    assert!(script.contains("text/javascript"), "{script}");
    server.stop_within(PATIENCE).await;

    let server = TestServer::start_with(|c| c.web = Some(false)).await;
    let response = http_get(server.addr, "/").await;
    assert!(!response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(!response.contains("/app.js"), "{response}");
    server.stop_within(PATIENCE).await;

    // `--dev` turns it on unless told otherwise.
    let server = TestServer::start_with(|c| c.auth.dev = true).await;
    let response = http_get(server.addr, "/").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    server.stop_within(PATIENCE).await;
}

/// The whole HTTP/1.1 response to `GET path` on `addr`.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response
}

/// Where the React test console is served (by the driver's interception: nothing listens
/// there). A localhost origin, so Chromium lets it call the server on 127.0.0.1.
const CONSOLE_ORIGIN: &str = "http://localhost:9";

impl Browser {
    /// Builds the React test console (web/test/console/app.tsx) and serves it with `tokens` as
    /// the answers of its token endpoint.
    async fn serve_console(&mut self, tokens: &[String]) {
        self.serve_console_for(tokens, &[]).await;
    }

    /// The same, its token endpoint answering each of `users` (user, token) with that token.
    async fn serve_console_for(&mut self, tokens: &[String], users: &[(&str, String)]) {
        let user_tokens: serde_json::Map<String, Value> = users
            .iter()
            .map(|(user, token)| ((*user).to_owned(), Value::from(token.as_str())))
            .collect();
        let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let built = Command::new("node")
            .arg("esbuild.mjs")
            .arg("--console")
            .current_dir(&web)
            .status()
            .await
            .unwrap();
        assert!(built.success(), "building the test console failed");
        let script = web.join("build/console/app.js");
        self.run(json!({"cmd": "serveConsole", "origin": CONSOLE_ORIGIN,
                        "script": script, "tokens": tokens, "userTokens": user_tokens}))
            .await;
    }

    /// How often the console called each endpoint of its API (`token`, `balance`, `devices`).
    async fn api_calls(&mut self) -> std::collections::HashMap<String, u64> {
        serde_json::from_value(self.run(json!({"cmd": "apiCalls"})).await).unwrap()
    }

    async fn api_call_count(&mut self, endpoint: &str) -> u64 {
        self.api_calls().await.get(endpoint).copied().unwrap_or(0)
    }

    /// Waits until the console called `endpoint` `n` times.
    async fn wait_api_calls(&mut self, endpoint: &str, n: u64) {
        let what = format!("{n} calls of {endpoint}");
        let calls = eventually(what, async || {
            let calls = self.api_call_count(endpoint).await;
            seen_if(calls >= n, calls)
        })
        .await;
        assert_eq!(calls, n, "{endpoint} was called more often than expected");
    }

    /// The status the console's device list shows for `device`.
    async fn device_status(&mut self, device: &str) -> String {
        let expression = format!(
            "document.querySelector('li.device[data-device-id=\"{device}\"]').dataset.status"
        );
        self.evaluate(&expression)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// The first tab of the browser (the driver's default).
const MAIN: &str = "main";

/// Commands for one tab of several (the driver's `page`).
impl Browser {
    /// Opens another tab, `tab`, in the same browser context (the same origin's locks and
    /// channels: tabs of one console share its stream).
    async fn new_tab(&mut self, tab: &str) {
        self.run(json!({"cmd": "newPage", "page": tab})).await;
    }

    /// Closes tab `tab`, as a user closing it.
    async fn close_tab(&mut self, tab: &str) {
        self.run(json!({"cmd": "closePage", "page": tab})).await;
    }

    async fn goto_in(&mut self, tab: &str, url: &str) {
        self.run(json!({"cmd": "goto", "url": url, "page": tab}))
            .await;
    }

    /// Waits at most `timeout_ms` until an element matching `selector` exists in tab `tab`.
    async fn wait_in(&mut self, tab: &str, selector: &str, timeout_ms: u64) {
        self.run(
            json!({"cmd": "waitFor", "selector": selector, "timeoutMs": timeout_ms,
                        "page": tab}),
        )
        .await;
    }

    async fn evaluate_in(&mut self, tab: &str, expression: &str) -> Value {
        self.run(json!({"cmd": "evaluate", "expression": expression, "page": tab}))
            .await
    }

    async fn click_in(&mut self, tab: &str, selector: &str) {
        self.run(json!({"cmd": "click", "selector": selector, "page": tab}))
            .await;
    }

    /// The badge (`useUnreadCount`) of tab `tab`: waits until it shows `unread`.
    async fn wait_badge(&mut self, tab: &str, unread: u64, timeout_ms: u64) {
        self.wait_in(
            tab,
            &format!("#badge[data-unread=\"{unread}\"]"),
            timeout_ms,
        )
        .await;
    }

    /// The ids of the inbox list (`useInbox`) of tab `tab`, newest first, with `:read` for the
    /// items read.
    async fn inbox_of(&mut self, tab: &str) -> Vec<String> {
        let items = self
            .evaluate_in(
                tab,
                "[...document.querySelectorAll('li.inbox-item')]\
                 .map(e => e.dataset.id + (e.dataset.read === 'true' ? ':read' : ''))",
            )
            .await;
        serde_json::from_value(items).unwrap()
    }

    /// Waits until the inbox list of tab `tab` is `expected` (as `inbox_of` says it).
    async fn wait_inbox(&mut self, tab: &str, expected: &[String]) {
        let what = format!("tab {tab}'s inbox list is {expected:?}");
        eventually(what, async || {
            let shown = self.inbox_of(tab).await;
            seen_if(shown == expected, shown)
        })
        .await;
    }
}

/// Publishes a `device.error` with id `id` for `user` through `Publish`; returns its cursor.
async fn publish_device_error(server: &TestServer, id: &str, user: &str) -> String {
    let mut client = server.client().await;
    let answer = publish_json(
        &mut client,
        "device.error",
        &device_error(id, user, "d-console-1"),
    )
    .await
    .unwrap();
    assert!(!answer.duplicate, "{id} was published before");
    answer.cursor
}

/// A `billing.payment_success` for `user` with event id `id` (the platform's envelope).
fn payment_success(id: &str, user: &str) -> Vec<u8> {
    let (_, body) = fixture_for("billing.payment_success.envelope.json", user);
    let mut json: Value = serde_json::from_str(&body).unwrap();
    json["eventId"] = id.into();
    json.to_string().into_bytes()
}

/// A device-service `device.started` or `device.stopped` (outbox shape, no event id: the content
/// names it, so `at` makes each one new).
fn device_status_event(routing_key: &str, user: &str, device: &str, at: u32) -> Vec<u8> {
    let time = format!("2025-11-20T12:{:02}:{:02}.000Z", at / 60 % 60, at % 60);
    let field = if routing_key == "device.started" {
        "startedAt"
    } else {
        "stoppedAt"
    };
    json!({"deviceId": device, "userId": user, "providerType": "redroid", field: time})
        .to_string()
        .into_bytes()
}

/// The React test console against a real server and RabbitMQ: history on first paint and live
/// events after it with no gap and no duplicate; `billing.payment_success` makes the
/// `['balance', user]` query refetch; `device.started` patches the paged device list in place
/// without a refetch; another user's events change nothing; a token that expires mid-stream is
/// refreshed through the app's callback with nothing lost; a server restart is resumed and what
/// was missed is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_react_console_keeps_react_query_fresh_and_loses_nothing() {
    let names = Names::unique("console");
    let producer = Producer::connect().await;
    // No leeway: the short token's stream ends at its `exp`, not 30 s later.
    let server = TestServer::start_amqp(&names, |c| {
        c.cors_origins = vec![CONSOLE_ORIGIN.into()];
        c.auth.jwt_leeway = std::time::Duration::ZERO;
    })
    .await;
    let addr = server.addr;
    let user = format!("u-console-{}", std::process::id());
    let stranger = format!("u-console-stranger-{}", std::process::id());
    let tag = &names.node_id;

    // History: three events before the console opens.
    let mut expected = Vec::new();
    let mut head = String::new();
    for n in 0..3 {
        let id = format!("{tag}-history-{n}");
        head = publish_device_error(&server, &id, &user).await;
        expected.push(id);
    }
    let mut browser = Browser::launch().await;
    // The first token expires mid-test (minted once Chromium is up, so its life is the test's);
    // the app's token endpoint then hands out fresh ones.
    let short = token_for(&user, &[], std::time::Duration::from_secs(10));
    let tokens = [short, token(&user, &[])];
    browser.serve_console(&tokens).await;
    browser
        .goto(&format!(
            "{CONSOLE_ORIGIN}/?server={}&user={user}",
            server.url()
        ))
        .await;
    browser.wait_for("#state[data-state=live]", None).await;

    // 1. History on first paint, oldest first, then live from where it ended.
    assert_eq!(browser.shown_ids().await, expected, "the first paint");
    let requests = browser.subscribe_requests().await;
    assert_eq!(requests.len(), 1, "one stream for the whole app");
    assert_eq!(
        requests[0].resume_after, head,
        "live starts at the history's head"
    );
    let live = format!("{tag}-live-0");
    publish_device_error(&server, &live, &user).await;
    browser
        .wait_for(&format!("li.event[data-id=\"{live}\"]"), None)
        .await;
    expected.push(live);
    assert_eq!(browser.shown_ids().await, expected, "history, then live");
    assert_eq!(browser.api_call_count("token").await, 1);
    assert_eq!(browser.api_call_count("balance").await, 1);
    assert_eq!(browser.api_call_count("devices").await, 1);

    // 2. A payment through RabbitMQ refetches the balance.
    let paid = format!("{tag}-paid-0");
    producer
        .publish(
            &names.exchange,
            "billing.payment_success",
            &payment_success(&paid, &user),
        )
        .await;
    browser.wait_api_calls("balance", 2).await;
    browser
        .wait_for(&format!("li.event[data-id=\"{paid}\"]"), None)
        .await;
    expected.push(paid);
    browser.wait_for("#balance", Some("102.00")).await;

    // 3. A device started: the paged list is patched in place, nothing refetched.
    assert_eq!(browser.device_status("d-console-1").await, "stopped");
    producer
        .publish(
            &names.exchange,
            "device.started",
            &device_status_event("device.started", &user, "d-console-1", 1),
        )
        .await;
    browser
        .wait_for(
            "li.device[data-device-id=\"d-console-1\"][data-status=running]",
            None,
        )
        .await;
    // The console lists oldest first.
    expected.push(newest_id_of(&mut browser, "device.started", ".at(-1)").await);
    assert_eq!(browser.device_status("d-console-2").await, "stopped");
    let patched = browser
        .evaluate("JSON.stringify(queryClient.getQueriesData({queryKey: ['devices']})[0][1].pages[0].items[0])")
        .await;
    let patched: Value = serde_json::from_str(patched.as_str().unwrap()).unwrap();
    assert_eq!(patched["status"], "running");
    assert_eq!(patched["updatedAt"], "2025-11-20T12:00:01.000Z");

    // 4. Another user's events change nothing: a payment and a device stop of theirs, then a
    // sentinel of the user's (the stream is in journal order: once it is shown, theirs came and
    // went).
    producer
        .publish(
            &names.exchange,
            "billing.payment_success",
            &payment_success(&format!("{tag}-theirs"), &stranger),
        )
        .await;
    producer
        .publish(
            &names.exchange,
            "device.stopped",
            &device_status_event("device.stopped", &stranger, "d-console-1", 2),
        )
        .await;
    let sentinel = format!("{tag}-sentinel-0");
    producer
        .publish(
            &names.exchange,
            "device.error",
            device_error(&sentinel, &user, "d-console-1").as_bytes(),
        )
        .await;
    browser
        .wait_for(&format!("li.event[data-id=\"{sentinel}\"]"), None)
        .await;
    expected.push(sentinel);
    assert_eq!(browser.shown_ids().await, expected, "nothing of theirs");
    assert_eq!(browser.device_status("d-console-1").await, "running");
    assert_eq!(browser.api_call_count("balance").await, 2);
    assert_eq!(
        browser.api_call_count("devices").await,
        1,
        "no refetch at all"
    );

    // 5. The first token expires mid-stream: the server ends the stream UNAUTHENTICATED, the
    // feed asks the app for a fresh token and resumes after its cursor.
    browser.wait_api_calls("token", 2).await;
    let after_refresh = format!("{tag}-after-refresh");
    publish_device_error(&server, &after_refresh, &user).await;
    browser
        .wait_for(&format!("li.event[data-id=\"{after_refresh}\"]"), None)
        .await;
    expected.push(after_refresh);
    assert_eq!(
        browser.shown_ids().await,
        expected,
        "nothing lost or repeated"
    );
    let requests = browser.subscribe_requests().await;
    assert_eq!(
        requests.len(),
        2,
        "one resubscription, with the fresh token"
    );
    assert!(
        !requests[1].resume_after.is_empty(),
        "the resubscription resumes"
    );

    // 6. The server restarts; what was published meanwhile reaches the console and its queries.
    let data = server.stop_within(PATIENCE).await;
    browser
        .wait_for("#state[data-state=reconnecting]", None)
        .await;
    let missed_payment = format!("{tag}-paid-while-down");
    producer
        .publish(
            &names.exchange,
            "billing.payment_success",
            &payment_success(&missed_payment, &user),
        )
        .await;
    let missed = format!("{tag}-error-while-down");
    producer
        .publish(
            &names.exchange,
            "device.error",
            device_error(&missed, &user, "d-console-1").as_bytes(),
        )
        .await;
    let dir = data.0.clone();
    let server = TestServer::start_at(addr, |c| {
        names.apply(c);
        c.cors_origins = vec![CONSOLE_ORIGIN.into()];
        c.auth.jwt_leeway = std::time::Duration::ZERO;
        c.journal.data_dir = dir;
    })
    .await;
    server.wait_ready().await;
    browser
        .wait_for(&format!("li.event[data-id=\"{missed}\"]"), None)
        .await;
    expected.extend([missed_payment, missed]);
    browser.wait_api_calls("balance", 3).await;
    browser.wait_for("#state[data-state=live]", None).await;
    assert_eq!(browser.shown_ids().await, expected, "after the restart");
    assert_eq!(browser.api_call_count("devices").await, 1);
    assert_eq!(browser.api_call_count("token").await, 2);
    browser.screenshot("react-console.png").await;

    browser.close().await;
    server.stop_within(PATIENCE).await;
    drop(data);
    producer.clean_up(&[&names]).await;
}

/// The inbox of the React test console (a badge with `useUnreadCount`, a list with `useInbox`) in
/// two tabs of one user and one tab of another user: the user's tabs share one stream (the first
/// holds it and passes it on); an event published shows in both badges and lists; an item read in
/// one tab is read in the other, its badge moved, within a second; the other user's badge does
/// not move; mark all read in one tab reads everything in both; archiving an item removes it from
/// both lists; when the tab holding the stream closes, the other opens it after the last cursor
/// and stays current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_react_consoles_inbox_follows_marks_across_tabs() {
    let server = TestServer::start_with(|c| c.cors_origins = vec![CONSOLE_ORIGIN.into()]).await;
    let pid = std::process::id();
    let user = format!("u-inbox-{pid}");
    let stranger = format!("u-inbox-stranger-{pid}");
    let mut browser = Browser::launch().await;
    browser
        .serve_console_for(
            &[],
            &[
                (user.as_str(), token(&user, &[])),
                (stranger.as_str(), token(&stranger, &[])),
            ],
        )
        .await;
    let console = |who: &str| format!("{CONSOLE_ORIGIN}/?server={}&user={who}", server.url());
    // The other user's console in the first tab; the user's in tab a, then (once a holds the
    // stream) in tab b.
    browser.goto(&console(&stranger)).await;
    for tab in ["a", "b"] {
        browser.new_tab(tab).await;
        browser.goto_in(tab, &console(&user)).await;
        browser
            .wait_in(tab, "#state[data-state=live]", PAGE_PATIENCE_MS)
            .await;
        browser.wait_badge(tab, 0, PAGE_PATIENCE_MS).await;
    }
    browser.wait_badge(MAIN, 0, PAGE_PATIENCE_MS).await;
    assert_eq!(browser.subscribe_requests_of(Some("a")).await.len(), 1);
    assert_eq!(
        browser.subscribe_requests_of(Some("b")).await.len(),
        0,
        "the second tab follows the first one's stream"
    );
    assert_eq!(
        browser
            .evaluate_in("b", "notifications.sharedStream.leading")
            .await,
        false
    );
    assert_eq!(browser.subscribe_requests_of(Some(MAIN)).await.len(), 1);

    // 1. Two events of the user's: both tabs' badges and lists show them.
    let first = format!("inbox-{pid}-first");
    let second = format!("inbox-{pid}-second");
    publish_device_error(&server, &first, &user).await;
    for tab in ["a", "b"] {
        browser.wait_badge(tab, 1, PAGE_PATIENCE_MS).await;
        browser.wait_inbox(tab, std::slice::from_ref(&first)).await;
    }
    publish_device_error(&server, &second, &user).await;
    for tab in ["a", "b"] {
        browser.wait_badge(tab, 2, PAGE_PATIENCE_MS).await;
        browser
            .wait_inbox(tab, &[second.clone(), first.clone()])
            .await;
    }

    // 2. Read in tab a: a's badge at once, b's within a second.
    browser
        .click_in(
            "a",
            &format!("li.inbox-item[data-id=\"{first}\"] button.read"),
        )
        .await;
    browser.wait_badge("a", 1, 1_000).await;
    browser.wait_badge("b", 1, 1_000).await;
    browser
        .wait_in(
            "b",
            &format!("li.inbox-item[data-id=\"{first}\"][data-read=true]"),
            1_000,
        )
        .await;

    // 3. The other user's badge did not move: their own event, published after the user's, moves
    // it to exactly 1 (the stream is in journal order: had the user's leaked, they came first).
    let theirs = format!("inbox-{pid}-theirs");
    publish_device_error(&server, &theirs, &stranger).await;
    browser.wait_badge(MAIN, 1, PAGE_PATIENCE_MS).await;
    browser
        .wait_inbox(MAIN, std::slice::from_ref(&theirs))
        .await;

    // 4. Mark all read in tab b: both badges 0, every item read in both lists.
    browser.click_in("b", "#mark-all-read").await;
    for tab in ["b", "a"] {
        browser.wait_badge(tab, 0, PAGE_PATIENCE_MS).await;
        browser
            .wait_inbox(tab, &[format!("{second}:read"), format!("{first}:read")])
            .await;
    }

    // 5. Archive in tab a: the item leaves both lists.
    browser
        .click_in(
            "a",
            &format!("li.inbox-item[data-id=\"{second}\"] button.archive"),
        )
        .await;
    for tab in ["a", "b"] {
        browser.wait_inbox(tab, &[format!("{first}:read")]).await;
    }
    browser.wait_badge(MAIN, 1, PAGE_PATIENCE_MS).await;
    browser.screenshot("react-console-inbox.png").await;

    // 6. The tab holding the stream closes: b opens it after the last cursor it saw, and stays
    // current.
    let cursor = browser
        .evaluate_in("b", "notifications.cursor")
        .await
        .as_str()
        .unwrap()
        .to_owned();
    browser.close_tab("a").await;
    let requests = eventually("tab b opens the stream", async || {
        let requests = browser.subscribe_requests_of(Some("b")).await;
        seen_if(!requests.is_empty(), requests)
    })
    .await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    // After the last cursor b saw (or a later one of a heartbeat's, had one come meanwhile).
    let resumed = Cursor::parse(&requests[0].resume_after).expect("the takeover resumes");
    let seen = Cursor::parse(&cursor).unwrap();
    assert_eq!(resumed.epoch, seen.epoch);
    assert!(resumed.position >= seen.position, "{resumed} < {seen}");
    let third = format!("inbox-{pid}-third");
    publish_device_error(&server, &third, &user).await;
    browser.wait_badge("b", 1, PAGE_PATIENCE_MS).await;
    browser
        .wait_inbox("b", &[third.clone(), format!("{first}:read")])
        .await;
    browser.wait_badge(MAIN, 1, PAGE_PATIENCE_MS).await;

    browser.close().await;
    server.stop_within(PATIENCE).await;
}
