//! The command-line clients: real gRPC clients on the generated stubs, for people (`subscribe`,
//! with `--follow` the reference reconnect loop; `history`; `publish`; `inbox`, the
//! notification centre's list, counts, marks and preferences), `token`, which mints
//! development tokens, and `dead-letters`, which lists, replays and drops the broker's dead
//! letters. The load generator is a crate of its own (`bench/`, binary `notify-bench`) that
//! uses [`authorized`], [`mint_with`] and [`secret_or_dev`] from here.
//!
//! Owns: argument parsing of the client subcommands, their output formats and how their
//! failures read (`failure`: a closed connection said plainly, each cause once). Does not own
//! anything of the server; these talk to it over the network like any other client
//! (`dead-letters` talks to the broker, through `ingest::dead_letter_queue`). Nor the command
//! line around them (`cli`, which also prints the shell completions): this module knows only
//! its own subcommands' arguments.

mod dead_letters;
mod failure;
mod inbox;
mod token;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use tonic::transport::{Channel, Endpoint};

pub use dead_letters::{DeadLettersArgs, dead_letters};
pub use failure::{CallError, one_line};
pub use inbox::{InboxArgs, inbox};
pub use token::{TokenArgs, mint_with, secret_or_dev, token};

use crate::{
    backoff::Backoff,
    pb::{self, notification_service_client::NotificationServiceClient, publish_request::Body},
};

/// Arguments of `subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The server's gRPC URL.
    #[arg(long, env = "NOTIFY_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Whose events, which types, which device.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Also receive the admin feed.
    #[arg(long, env = "NOTIFY_ADMIN_FEED")]
    pub admin_feed: bool,
    /// Continue after this cursor (the `cursor` of the last event you processed).
    #[arg(long, env = "NOTIFY_RESUME_AFTER")]
    pub resume_after: Option<String>,
    /// The bearer token sent as `authorization` metadata (mint one with `token`); the server
    /// refuses a stream without one.
    #[arg(long, env = "NOTIFY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Keep going when the stream ends or the server cannot be reached: reconnect with backoff
    /// (0.5 s doubling to 10 s, ±20 %) and resume after the last cursor, so nothing is missed.
    /// A refusal (bad or expired token, forbidden selection) still ends it.
    #[arg(long, env = "NOTIFY_FOLLOW")]
    pub follow: bool,
    /// Do not print heartbeat lines (their cursors still count for resuming).
    #[arg(long, env = "NOTIFY_HIDE_HEARTBEATS")]
    pub hide_heartbeats: bool,
    /// Also print the inbox's updates as they come (`{"inbox":{...}}` lines: the counts after
    /// each new item, mark or change of preferences, and the state once caught up): of your
    /// own inbox on a stream of your own events, of your admin inbox with --admin-feed.
    #[arg(long, env = "NOTIFY_INBOX")]
    pub inbox: bool,
    /// Storm control for a console: while the stream is behind, skip state events a later one
    /// of the same key supersedes (`quota.updated` by quota, a device's status by device) and,
    /// with --admin-feed, coalesce bursts of admin notices; each skip is a `{"conflated":...}`
    /// line. Not for a service that must see every event.
    #[arg(long, env = "NOTIFY_CONFLATE")]
    pub conflate: bool,
    /// At most this many events a second (superseded state events are skipped while waiting;
    /// others are only delayed).
    #[arg(long, env = "NOTIFY_MAX_EVENTS_PER_SECOND")]
    pub max_events_per_second: Option<u32>,
}

/// What `subscribe` and `history` select: the fields their requests share.
#[derive(Debug, Args)]
pub struct SelectionArgs {
    /// Whose events: by default the token's own user; another user's id or `*` (every user,
    /// the firehose; `subscribe` only) need an admin token.
    #[arg(long, env = "NOTIFY_USER")]
    pub user: Option<String>,
    /// Event types, exact or `family.*`, comma-separated (default: all).
    #[arg(long, env = "NOTIFY_TYPES", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events about this device.
    #[arg(long, env = "NOTIFY_DEVICE")]
    pub device: Option<String>,
}

/// Arguments of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The server's gRPC URL.
    #[arg(long, env = "NOTIFY_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Whose events, which types, which device.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Newest first (default: oldest first).
    #[arg(long)]
    pub newest_first: bool,
    /// Start after this cursor (oldest first) or before it (`--newest-first`).
    #[arg(long)]
    pub from: Option<String>,
    /// Stop after this many events (default: every retained one).
    #[arg(long)]
    pub max: Option<u64>,
    /// Events per `ListEvents` call (the server returns at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page: u32,
    /// The bearer token sent as `authorization` metadata.
    #[arg(long, env = "NOTIFY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Arguments of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The server's gRPC URL.
    #[arg(long, env = "NOTIFY_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// The routing key, e.g. `billing.payment_success`.
    pub routing_key: String,
    /// The producer's JSON body, or `@path` to read it from a file (`@-`: standard input).
    pub body: String,
    /// The bearer token sent as `authorization` metadata: a `service` or `super_admin` role, or
    /// the `notification.publish` permission (mint one with `token --role service`).
    #[arg(long, env = "NOTIFY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Connects to a server's gRPC URL.
pub async fn connect(server: &str) -> anyhow::Result<NotificationServiceClient<Channel>> {
    let endpoint = Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("bad server URL {server:?}"))?
        .tcp_nodelay(true);
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        // Closed as soon as it was opened: a server over its connection cap does that.
        Err(error) if failure::closes(Some(&error)) => {
            let cause =
                anyhow::Error::new(error).context(CallError::ClosedBeforeAnswer { cause: None });
            return Err(cause.context(format!("cannot connect to {server}")));
        }
        Err(error) => return Err(error).with_context(|| format!("cannot connect to {server}")),
    };
    Ok(NotificationServiceClient::new(channel))
}

/// A unary call's failure: the server's refusal, or the connection it closed.
fn refused(status: tonic::Status) -> anyhow::Error {
    CallError::of(status, false).into()
}

/// `message` with `authorization: Bearer <token>` metadata when a token is given.
pub fn authorized<T>(message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the token is not valid metadata")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Prints messages as lines of proto3 JSON, by their protobuf descriptor (see [`Shown`] for
/// which fields a line carries).
struct JsonLines {
    descriptor: prost_reflect::MessageDescriptor,
}

impl JsonLines {
    fn new(message: &str) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("descriptor set")?;
        let descriptor = pool
            .get_message_by_name(message)
            .with_context(|| format!("{message} descriptor"))?;
        Ok(Self { descriptor })
    }

    /// `message` as one line of JSON.
    fn line(&self, message: &impl Message) -> anyhow::Result<String> {
        let dynamic =
            DynamicMessage::decode(self.descriptor.clone(), message.encode_to_vec().as_slice())?;
        let mut line = serde_json::Serializer::new(Vec::new());
        serde::Serialize::serialize(&Shown(&dynamic), &mut line)?;
        Ok(String::from_utf8_lossy(&line.into_inner()).into_owned())
    }

    fn print(&self, message: &impl Message) -> anyhow::Result<()> {
        println!("{}", self.line(message)?);
        Ok(())
    }
}

/// The file of the inbox's messages, whose every field a line shows.
const INBOX_PROTO: &str = "cloudphone/notify/v1/inbox.proto";

/// A message as proto3 JSON. An `Event` (and everything in it) in canonical form, as `history`
/// prints it: fields at their default value left out. The inbox's messages (`inbox.proto`:
/// counts, items, marks, preferences, updates) with every field, zeros, `false` and empty
/// lists included: a script reads `.unread` of a count and finds `"0"`, not nothing, and an
/// item says `"read": false`. Other messages (`CaughtUp`, ...) canonical too; the walk goes
/// through them only to reach the inbox's messages inside (`SubscribeResponse.inbox`). Field
/// order is field number order, as in the canonical form.
struct Shown<'a>(&'a DynamicMessage);

impl serde::Serialize for Shown<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use prost_reflect::{ReflectMessage as _, Value};
        use serde::ser::{Error as _, SerializeMap as _};
        let message = self.0;
        let descriptor = message.descriptor();
        let every_field = descriptor.parent_file().name() == INBOX_PROTO;
        if !every_field && !reaches_inbox(&descriptor) {
            return message.serialize_with_options(serializer, &SerializeOptions::new());
        }
        let mut map = serializer.serialize_map(None)?;
        for field in descriptor.fields() {
            let shown = message.has_field(&field) || (every_field && !field.supports_presence());
            if !shown {
                continue;
            }
            let value = message.get_field(&field);
            match &*value {
                Value::Message(inner) => map.serialize_entry(field.json_name(), &Shown(inner))?,
                Value::List(items) if field.kind().as_message().is_some() => {
                    map.serialize_entry(field.json_name(), &ShownList(items))?;
                }
                // A scalar, an enum, a list of them or a map: as prost-reflect writes it, from a
                // message holding that field alone (their own JSON has no field order to keep).
                value => {
                    let mut alone = DynamicMessage::new(descriptor.clone());
                    alone.set_field(&field, value.clone());
                    let options = SerializeOptions::new().skip_default_fields(false);
                    let json = alone
                        .serialize_with_options(serde_json::value::Serializer, &options)
                        .map_err(S::Error::custom)?;
                    map.serialize_entry(field.json_name(), &json[field.json_name()])?;
                }
            }
        }
        map.end()
    }
}

/// The messages of a repeated message field, each as [`Shown`].
struct ShownList<'a>(&'a [prost_reflect::Value]);

impl serde::Serialize for ShownList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq as _};
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            match item {
                prost_reflect::Value::Message(inner) => seq.serialize_element(&Shown(inner))?,
                _ => return Err(S::Error::custom("a list of messages holds something else")),
            }
        }
        seq.end()
    }
}

/// Whether a message of this type may hold one of the inbox's messages: a `SubscribeResponse`
/// (its `inbox`) or a response of the inbox's calls. An `Event` never does.
fn reaches_inbox(descriptor: &prost_reflect::MessageDescriptor) -> bool {
    descriptor.fields().any(|field| {
        field
            .kind()
            .as_message()
            .is_some_and(|inner| inner.parent_file().name() == INBOX_PROTO)
    })
}

/// How a `subscribe --follow` attempt ended.
enum Ended {
    /// Worth trying again: the server or the network may recover.
    Transient(anyhow::Error),
    /// A refusal that retrying would only repeat.
    Permanent(anyhow::Error),
}

/// Status codes `--follow` retries (the same as the browser feed's).
fn is_transient(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// The waits before reconnecting: from 500 ms, doubling up to 10 s (a person is watching; the
/// policy and its reasons: `crate::backoff`), starting over once a stream is live again.
fn reconnect_pauses() -> Backoff {
    Backoff::new(
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(10),
    )
}

/// `subscribe`: prints every message of the stream as one line of canonical proto3 JSON; with
/// `--follow`, reconnects and resumes until refused or interrupted.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let lines = JsonLines::new("cloudphone.notify.v1.SubscribeResponse")?;
    let mut cursor = args.resume_after.clone().unwrap_or_default();
    let mut pauses = reconnect_pauses();
    loop {
        let ended = subscribe_once(&args, &lines, &mut cursor, &mut pauses).await;
        let reason = match ended {
            Ended::Permanent(error) => return Err(error),
            Ended::Transient(reason) if args.follow => reason,
            Ended::Transient(reason) => {
                if cursor.is_empty() {
                    return Err(reason);
                }
                bail!(
                    "{} (continue with --resume-after {cursor}, or use --follow)",
                    one_line(&reason)
                );
            }
        };
        let wait = pauses.next_pause();
        eprintln!(
            "subscribe: {}; reconnecting in {:.1} s{}",
            one_line(&reason),
            wait.as_secs_f64(),
            if cursor.is_empty() {
                String::new()
            } else {
                format!(", after {cursor}")
            }
        );
        tokio::time::sleep(wait).await;
    }
}

/// One stream: prints its messages and keeps `cursor` at the last position seen.
async fn subscribe_once(
    args: &SubscribeArgs,
    lines: &JsonLines,
    cursor: &mut String,
    pauses: &mut Backoff,
) -> Ended {
    use pb::subscribe_response::Kind;
    let mut client = match connect(&args.server).await {
        Ok(client) => client,
        // The URL was already checked once this is not the first attempt; the server may be
        // restarting.
        Err(error) => return Ended::Transient(error),
    };
    let request = pb::SubscribeRequest {
        event_types: args.selection.types.clone(),
        device_id: args.selection.device.clone().unwrap_or_default(),
        user_id: args.selection.user.clone().unwrap_or_default(),
        admin_feed: args.admin_feed,
        resume_after: cursor.clone(),
        inbox: args.inbox,
        conflate: args.conflate,
        max_events_per_second: args.max_events_per_second.unwrap_or(0),
    };
    let request = match authorized(request, args.token.as_deref()) {
        Ok(request) => request,
        Err(error) => return Ended::Permanent(error),
    };
    // A closed connection is worth another try whatever its code (hyper's "canceled, the
    // connection closed" is `Cancelled`, which a server's own answer never means here).
    let ended = |status: tonic::Status, answered: bool| {
        let code = status.code();
        let error = CallError::of(status, answered);
        if error.is_closed() || is_transient(code) {
            Ended::Transient(error.into())
        } else {
            Ended::Permanent(error.into())
        }
    };
    let mut stream = match client.subscribe(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return ended(status, false),
    };
    // The server answered the call (its response headers arrived): a failure from here on is
    // the stream's.
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return Ended::Transient(anyhow::anyhow!("the server ended the stream")),
            Err(status) => return ended(status, true),
        };
        let (position, heartbeat) = match &message.kind {
            Some(Kind::Event(event)) => (event.cursor.as_str(), false),
            Some(Kind::CaughtUp(caught_up)) => {
                pauses.reset();
                (caught_up.cursor.as_str(), false)
            }
            Some(Kind::Heartbeat(heartbeat)) => (heartbeat.cursor.as_str(), true),
            Some(Kind::Gap(gap)) => (gap.to_cursor.as_str(), false),
            Some(Kind::Conflated(conflated)) => (conflated.up_to_cursor.as_str(), false),
            // An inbox update carries no position: the stream's stays where it was.
            Some(Kind::Inbox(_)) | None => ("", false),
        };
        if !position.is_empty() {
            position.clone_into(cursor);
        }
        if heartbeat && args.hide_heartbeats {
            continue;
        }
        if let Err(error) = lines.print(&message) {
            return Ended::Permanent(error);
        }
    }
}

/// `history`: pages through `ListEvents` and prints each event as one JSON line; a last line on
/// stderr says how many and where to continue, and where to go live from.
///
/// Going live is `subscribe --resume-after` a page's `head_cursor`, the journal's head when the
/// page was read. Oldest first, the last page's: it read up to that head. Newest first, the first
/// page's: everything up to it was printed from the top down, and an event stored while the
/// older pages were read comes after it. (The last newest-first page's `next_cursor` is the
/// oldest event's: following it would replay everything again.) A newest-first run that
/// continues `--from` an earlier one does not know that run's head, so it names none.
pub async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let lines = JsonLines::new("cloudphone.notify.v1.Event")?;
    let mut client = connect(&args.server).await?;
    let mut from = args.from.clone().unwrap_or_default();
    let mut live_from = String::new();
    let mut printed = 0_u64;
    let max = args.max.unwrap_or(u64::MAX);
    let end = loop {
        let left = max - printed;
        if left == 0 {
            break false;
        }
        let request = pb::ListEventsRequest {
            user_id: args.selection.user.clone().unwrap_or_default(),
            after: if args.newest_first {
                String::new()
            } else {
                from.clone()
            },
            before: if args.newest_first {
                from.clone()
            } else {
                String::new()
            },
            limit: u32::try_from(left).unwrap_or(u32::MAX).min(args.page),
            event_types: args.selection.types.clone(),
            device_id: args.selection.device.clone().unwrap_or_default(),
            newest_first: args.newest_first,
        };
        let page = client
            .list_events(authorized(request, args.token.as_deref())?)
            .await
            .map_err(refused)?
            .into_inner();
        if let Some(gap) = &page.gap {
            eprintln!(
                "history: a gap ({:?}): events before {} are no longer retained",
                pb::GapReason::try_from(gap.reason).unwrap_or_default(),
                gap.to_cursor
            );
        }
        if !args.newest_first || (live_from.is_empty() && args.from.is_none()) {
            live_from.clone_from(&page.head_cursor);
        }
        for event in &page.events {
            lines.print(event)?;
            printed += 1;
        }
        if !page.next_cursor.is_empty() {
            from = page.next_cursor;
        }
        if page.end {
            break true;
        }
    };
    let flag = if args.newest_first {
        "--newest-first --from"
    } else {
        "--from"
    };
    let live = if live_from.is_empty() {
        String::new()
    } else {
        format!("go live with: subscribe --resume-after {live_from}")
    };
    match (end, live.is_empty()) {
        (true, true) => eprintln!("history: {printed} events; the end"),
        (true, false) => eprintln!("history: {printed} events; the end ({live})"),
        (false, _) if args.newest_first && !live.is_empty() => {
            eprintln!("history: {printed} events; more with: history {flag} {from}; or {live}");
        }
        (false, _) => eprintln!("history: {printed} events; more with: history {flag} {from}"),
    }
    Ok(())
}

/// `publish`: sends one JSON body and prints `{"id","cursor","duplicate"}`.
pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let json = read_body(&args.body)?;
    let mut client = connect(&args.server).await?;
    let request = pb::PublishRequest {
        routing_key: args.routing_key,
        body: Some(Body::Json(json)),
    };
    let response = client
        .publish(authorized(request, args.token.as_deref())?)
        .await
        .map_err(refused)?
        .into_inner();
    println!(
        "{}",
        serde_json::json!({
            "id": response.id,
            "cursor": response.cursor,
            "duplicate": response.duplicate,
        })
    );
    Ok(())
}

fn read_body(arg: &str) -> anyhow::Result<Vec<u8>> {
    match arg.strip_prefix('@') {
        Some("-") => {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)
                .context("reading stdin")?;
            Ok(body)
        }
        Some(path) => {
            let path = PathBuf::from(path);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        }
        None if arg.is_empty() => bail!("the body is empty"),
        None => Ok(arg.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod auth_metadata_tests {
    use super::*;

    #[test]
    fn a_token_becomes_bearer_metadata_and_none_adds_nothing() {
        let request = authorized((), Some("abc.def.ghi")).unwrap();
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer abc.def.ghi")
        );
        assert!(
            authorized((), None)
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );
        assert!(authorized((), Some("bad\ntoken")).is_err());
    }
}
