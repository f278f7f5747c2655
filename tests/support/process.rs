//! The real `notify-backbone` binary as a node process, for tests that kill it: start it,
//! follow its log, wait for readiness, read its metrics, `kill -9` it; and a firehose subscriber
//! that follows the nodes across their crashes.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use notify_backbone::pb::{
    self, notification_service_client::NotificationServiceClient, subscribe_response::Kind,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
    sync::{oneshot, watch},
};

use super::{
    PATIENCE, TEST_SECRET,
    amqp::{Names, amqp_url},
    eventually, seen_if, token, with_token,
};

/// The server's binary. Known to the root package's tests only: `bench/`'s tests include this
/// support code too, but never start a server process.
const BIN: Option<&str> = option_env!("CARGO_BIN_EXE_notify-backbone");

/// Every line the server processes wrote to stderr, tagged with the run, for failure reports.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }

    /// The last `n` lines, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lock().unwrap();
        let from = lines.len().saturating_sub(n);
        lines[from..].join("\n")
    }

    /// The lines that contain `text`.
    pub fn containing(&self, text: &str) -> Vec<String> {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|line| line.contains(text))
            .cloned()
            .collect()
    }

    /// The warnings and errors the servers logged.
    pub fn trouble(&self) -> Vec<String> {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .cloned()
            .collect()
    }
}

/// One run of the real binary.
pub struct Node {
    pub child: Child,
    pub run: usize,
    pub url: String,
    pub metrics: SocketAddr,
}

/// The flags that point a node process at the test broker under `names` (those
/// `Names::apply` sets for an in-process server).
pub fn broker_args(names: &Names) -> Vec<String> {
    [
        ["--amqp-url", &amqp_url()],
        ["--node-id", &names.node_id],
        ["--exchange", &names.exchange],
        ["--dead-letter-exchange", &names.dead_letter_exchange],
        ["--dead-letter-queue", &names.dead_letter_queue],
        ["--queue-expires", "120s"],
        ["--reconnect-max-backoff", "1s"],
    ]
    .iter()
    .flatten()
    .map(|arg| (*arg).to_owned())
    .collect()
}

/// Starts `notify-backbone serve` with `args` (see [`broker_args`]) on `data`, and waits until
/// it logged both of its addresses.
pub async fn start_node(args: &[String], data: &Path, run: usize, logs: &Logs) -> Node {
    start_node_logging(args, data, run, logs, Some("info")).await
}

/// [`start_node`] with `RUST_LOG` set to `rust_log`, or, with `None`, unset: the server's own
/// default filter, what an operator who sets nothing sees.
pub async fn start_node_logging(
    args: &[String],
    data: &Path,
    run: usize,
    logs: &Logs,
    rust_log: Option<&str>,
) -> Node {
    let mut command = Command::new(BIN.expect("the server binary (the root package's tests)"));
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    // A node without broker flags runs without a broker: the `AMQP_URL` that scripts/test
    // exports would otherwise make it consume the default queue (`notify-backbone.<host>`,
    // bound to the producers' exchange), which other tests and benchmarks may share or have
    // left full.
    if !args.iter().any(|arg| arg == "--amqp-url") {
        command.env_remove("AMQP_URL");
    }
    let mut child = command
        .arg("serve")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .args(["--jwt-secret", TEST_SECRET])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Drain stderr for the whole life of the process (a full pipe would block its logging),
    // picking out where it listens.
    let stderr = child.stderr.take().unwrap();
    let (grpc_tx, grpc_rx) = oneshot::channel::<String>();
    let (metrics_tx, metrics_rx) = oneshot::channel::<String>();
    let log = logs.clone();
    tokio::spawn(async move {
        let (mut grpc_tx, mut metrics_tx) = (Some(grpc_tx), Some(metrics_tx));
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((_, rest)) = line.split_once("serving gRPC and grpc-web on ")
                && let Some(tx) = grpc_tx.take()
            {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().into());
            }
            if let Some((_, rest)) = line.split_once("metrics on http://")
                && let Some(tx) = metrics_tx.take()
            {
                let _ = tx.send(rest.split('/').next().unwrap_or_default().into());
            }
            log.push(format!("[run {run}] {line}"));
        }
    });
    let addresses = async { (grpc_rx.await, metrics_rx.await) };
    let (grpc, metrics) = match tokio::time::timeout(PATIENCE, addresses).await {
        Ok((Ok(grpc), Ok(metrics))) => (grpc, metrics),
        other => panic!(
            "run {run} did not log where it listens ({other:?}); its log:\n{}",
            logs.tail(40)
        ),
    };
    Node {
        child,
        run,
        url: format!("http://{grpc}"),
        metrics: metrics.parse().unwrap(),
    }
}

/// The whole HTTP response to `GET path` on a metrics port.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await?;
    Ok(response)
}

impl Node {
    /// Waits until `/readyz` says the ingest is consuming.
    pub async fn wait_ready(&self, logs: &Logs) {
        eventually(format!("run {} ready", self.run), async || {
            let response = http_get(self.metrics, "/readyz").await;
            let ready = response
                .as_deref()
                .is_ok_and(|r| r.starts_with("HTTP/1.1 200"));
            seen_if(ready, format!("{response:?}; its log:\n{}", logs.tail(40)))
        })
        .await;
    }

    /// The value of an unlabelled sample on `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = http_get(self.metrics, "/metrics").await.unwrap();
        text.lines()
            .find_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// SIGTERM, and waits for the process to exit; it must exit successfully (a clean
    /// shutdown).
    pub async fn stop(mut self, logs: &Logs) {
        let pid = self.child.id().unwrap();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let exited = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("SIGTERM stops a server")
            .unwrap();
        assert!(
            exited.success(),
            "run {} exited with {exited:?}; its log:\n{}",
            self.run,
            logs.tail(40)
        );
    }

    /// `kill -9`, after checking the process did not die by itself, and waits for it to go.
    pub async fn kill(mut self, logs: &Logs) {
        let exited = self.child.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "run {} exited by itself ({exited:?}) before it was killed; its log:\n{}",
            self.run,
            logs.tail(40)
        );
        // SIGKILL on unix: no shutdown path runs, nothing is flushed or acked.
        self.child.start_kill().unwrap();
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("a killed server goes at once")
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt as _;
            assert_eq!(status.signal(), Some(9), "run {}: {status:?}", self.run);
        }
        #[cfg(not(unix))]
        let _ = status;
    }
}

/// What the subscriber has received, across all its streams.
#[derive(Default)]
pub struct Received {
    /// Event ids, in the order they arrived.
    pub ids: Vec<String>,
    pub gaps: Vec<pb::Gap>,
    /// The cursor of the last message processed: what the next stream resumes after.
    pub last_cursor: String,
    /// Streams opened.
    pub streams: usize,
    /// How each stream ended.
    pub endings: Vec<String>,
}

/// A firehose subscriber with an admin token that follows the server wherever `urls` says it
/// is now, and after any error or end resubscribes with `resume_after` = its last cursor.
/// `caught_up` fires at its first `CaughtUp`.
pub fn follow_the_firehose(
    mut urls: watch::Receiver<Option<String>>,
    received: Arc<Mutex<Received>>,
    caught_up: oneshot::Sender<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let token = token("ops", &["admin"]);
        let mut caught_up = Some(caught_up);
        loop {
            let url = urls
                .wait_for(Option::is_some)
                .await
                .unwrap()
                .clone()
                .unwrap();
            let Ok(mut client) = NotificationServiceClient::connect(url).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let request = pb::SubscribeRequest {
                user_id: "*".into(),
                resume_after: received.lock().unwrap().last_cursor.clone(),
                ..Default::default()
            };
            let mut stream = match client.subscribe(with_token(request, &token)).await {
                Ok(response) => response.into_inner(),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            received.lock().unwrap().streams += 1;
            let ending = loop {
                let message = match stream.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break "ended".to_owned(),
                    Err(status) => break format!("{:?}: {}", status.code(), status.message()),
                };
                let mut received = received.lock().unwrap();
                match message.kind {
                    Some(Kind::Event(event)) => {
                        received.ids.push(event.id);
                        received.last_cursor = event.cursor;
                    }
                    Some(Kind::CaughtUp(at)) => {
                        received.last_cursor = at.cursor;
                        if let Some(tx) = caught_up.take() {
                            let _ = tx.send(());
                        }
                    }
                    Some(Kind::Heartbeat(at)) => received.last_cursor = at.cursor,
                    Some(Kind::Gap(gap)) => received.gaps.push(gap),
                    Some(Kind::Conflated(at)) => received.last_cursor = at.up_to_cursor,
                    Some(Kind::Inbox(_)) | None => {}
                }
            };
            received.lock().unwrap().endings.push(ending);
        }
    })
}

/// Ids that occur more than once, with their counts.
pub fn repeated(ids: &[String]) -> Vec<(&str, usize)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    let mut twice: Vec<(&str, usize)> = counts.into_iter().filter(|&(_, n)| n > 1).collect();
    twice.sort();
    twice
}

/// The first `n` of `items`, for a readable failure message.
pub fn first<T: std::fmt::Debug>(items: &[T], n: usize) -> String {
    format!(
        "{:?}{}",
        &items[..items.len().min(n)],
        if items.len() > n { " ..." } else { "" }
    )
}

/// Every stored event's id, oldest first, through `ListEvents` pages of 1000 (admin, firehose),
/// and the newest one's cursor.
pub async fn journal_ids(url: &str) -> (Vec<String>, String) {
    let mut client = NotificationServiceClient::connect(url.to_owned())
        .await
        .unwrap();
    let token = token("ops", &["admin"]);
    let (mut ids, mut after, mut newest) = (Vec::new(), String::new(), String::new());
    for _ in 0..100 {
        let request = pb::ListEventsRequest {
            user_id: "*".into(),
            after: after.clone(),
            limit: 1000,
            ..Default::default()
        };
        let page = client
            .list_events(with_token(request, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.gap.is_none(), "ListEvents reported a gap: {page:?}");
        if let Some(last) = page.events.last() {
            newest.clone_from(&last.cursor);
        }
        ids.extend(page.events.into_iter().map(|event| event.id));
        after = page.next_cursor;
        if page.end {
            return (ids, newest);
        }
    }
    panic!(
        "ListEvents never reached the end ({} ids so far)",
        ids.len()
    );
}
