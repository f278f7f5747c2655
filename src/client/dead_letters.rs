//! `dead-letters list`, `replay` and `drop`: the dead-letter queue for operators, with no
//! management plugin needed.
//!
//! Owns: the flags and the output. The broker work (reading the reason headers, holding and
//! requeueing, replaying with confirms, each once, discarding all or none) is
//! `ingest::dead_letter_queue`'s.

use std::io::Write as _;

use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;

use crate::ingest::{
    dead_letter_queue::{
        DeadLetter, DeadLetterQueue, DeadLetterQueueError, RefusedBy, ReplayTarget, Replayed,
        Selection, Walk,
    },
    topology::{DEFAULT_DEAD_LETTER_QUEUE, DEFAULT_EXCHANGE, queue_name},
};

/// Arguments of `dead-letters`.
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    /// What to do with them.
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

/// The `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Show the dead letters, oldest first: reason, field, detail, routing key, time and the
    /// start of the body. Nothing is removed (they are read and put back, marked redelivered).
    List(ListArgs),
    /// Send chosen dead letters back to where they were first published (or into one node's
    /// queue), each once; only those the broker confirmed are removed. Choose them with
    /// --reason, --routing-key and/or --node, or --all. `list` with the same filters shows
    /// what would go.
    Replay(ReplayArgs),
    /// Discard chosen dead letters that can never be fixed: removed for good, and only if
    /// --expect says how many the selection matches (`list` with the same filters counts
    /// them); otherwise nothing is removed. Choose them as for `replay`.
    Drop(DropArgs),
}

/// Where the dead letters are.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// The broker.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// The dead-letter queue; `--dead-letter-queue`, as `serve` spells it, works too.
    #[arg(
        long,
        visible_alias = "dead-letter-queue",
        env = "NOTIFY_DEAD_LETTER_QUEUE",
        default_value = DEFAULT_DEAD_LETTER_QUEUE
    )]
    pub queue: String,
}

/// Which dead letters.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only these reasons (`missing_field`, `too_large`, ...; the broker's own: `rejected`,
    /// `expired`, `maxlen`, `delivery_limit`). Repeat the flag or separate with commas.
    #[arg(long = "reason", value_delimiter = ',')]
    pub reasons: Vec<String>,
    /// Only routing keys matching these AMQP topic patterns (`billing.#`, `*.started`). Repeat
    /// the flag or separate with commas. With --reason too: both must match.
    #[arg(long = "routing-key", value_delimiter = ',')]
    pub routing_keys: Vec<String>,
    /// Only those these nodes refused (their --node-id, `x-notify-node`); none the broker
    /// dead-lettered by itself. Repeat the flag or separate with commas. With the others too:
    /// all must match.
    #[arg(long = "node", value_delimiter = ',')]
    pub nodes: Vec<String>,
}

impl FilterArgs {
    fn selection(&self) -> Selection {
        Selection {
            reasons: self.reasons.clone(),
            routing_keys: self.routing_keys.clone(),
            nodes: self.nodes.clone(),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.reasons.is_empty() {
            parts.push(format!("reason {}", self.reasons.join("|")));
        }
        if !self.routing_keys.is_empty() {
            parts.push(format!("routing key {}", self.routing_keys.join("|")));
        }
        if !self.nodes.is_empty() {
            parts.push(format!("node {}", self.nodes.join("|")));
        }
        if parts.is_empty() {
            "all".into()
        } else {
            parts.join(" and ")
        }
    }
}

/// Arguments of `dead-letters list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The broker and the queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Which ones.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Show at most this many.
    #[arg(long, default_value_t = 100)]
    pub max: u64,
    /// Bytes of each body to show.
    #[arg(long, default_value_t = 200)]
    pub preview: usize,
    /// One JSON object per dead letter, per line, instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `dead-letters replay`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").args(["reasons", "routing_keys", "nodes", "all"]).required(true).multiple(true)))]
#[command(group(ArgGroup::new("target").args(["to_exchange", "to_queue", "to_node"])))]
pub struct ReplayArgs {
    /// The broker and the queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Which ones.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Every dead letter (instead of --reason, --routing-key or --node).
    #[arg(long, conflicts_with_all = ["reasons", "routing_keys", "nodes"])]
    pub all: bool,
    /// Try at most this many chosen ones (those kept count too).
    #[arg(long)]
    pub max: Option<u64>,
    /// Where to send those that do not say which exchange they came from.
    #[arg(long, env = "NOTIFY_EXCHANGE", default_value = DEFAULT_EXCHANGE)]
    pub exchange: String,
    /// Send all of them to this exchange (default: each to the one it was first published to).
    #[arg(long)]
    pub to_exchange: Option<String>,
    /// Send them straight into this queue, e.g. one node's `notify-backbone.<node-id>` or
    /// cluster mode's ingest queue; other nodes do not see them.
    #[arg(long)]
    pub to_queue: Option<String>,
    /// Send them straight into this node's queue (`notify-backbone.<node-id>`).
    #[arg(long)]
    pub to_node: Option<String>,
}

/// Arguments of `dead-letters drop`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").args(["reasons", "routing_keys", "nodes", "all"]).required(true).multiple(true)))]
pub struct DropArgs {
    /// The broker and the queue.
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Which ones.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Every dead letter (instead of --reason, --routing-key or --node).
    #[arg(long, conflicts_with_all = ["reasons", "routing_keys", "nodes"])]
    pub all: bool,
    /// How many the selection matches, as `list` with the same filters counted them: any other
    /// number drops nothing (and says how many match).
    #[arg(long, value_name = "N")]
    pub expect: u64,
}

/// Runs a `dead-letters` subcommand.
pub async fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<()> {
    match args.command {
        DeadLettersCommand::List(args) => list(args).await,
        DeadLettersCommand::Replay(args) => replay(args).await,
        DeadLettersCommand::Drop(args) => drop_chosen(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let queue = open(&args.queue).await?;
    let mut stdout = std::io::stdout().lock();
    let mut failed = None;
    let walk = queue
        .list(&args.filter.selection(), args.max, |letter| {
            let written = if args.json {
                writeln!(stdout, "{}", as_json(letter, args.preview))
            } else {
                write!(stdout, "{}", as_text(letter, args.preview))
            };
            if let Err(error) = written {
                failed.get_or_insert(error);
            }
        })
        .await;
    queue.close().await;
    let walk = walk?;
    if let Some(error) = failed {
        return Err(error.into());
    }
    eprintln!(
        "dead-letters: {} shown ({}) of {} in {}; nothing removed{}",
        walk.chosen,
        args.filter.describe(),
        walk.in_queue,
        args.queue.queue,
        stopped(&walk, "--max")
    );
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let target = match (&args.to_exchange, &args.to_queue, &args.to_node) {
        (Some(exchange), _, _) => ReplayTarget::Exchange(exchange.clone()),
        (_, Some(queue), _) => ReplayTarget::Queue(queue.clone()),
        (_, _, Some(node)) => ReplayTarget::Queue(queue_name(node)),
        _ => ReplayTarget::OriginalExchange {
            fallback: args.exchange.clone(),
        },
    };
    let queue = open(&args.queue).await?;
    let mut kept = 0_u64;
    let walk = queue
        .replay(
            &args.filter.selection(),
            &target,
            args.max.unwrap_or(u64::MAX),
            |letter, outcome| {
                let (verb, to) = match outcome {
                    Replayed::Sent { to } => ("replayed", to.clone()),
                    Replayed::Unroutable { to } => ("kept (no queue takes it there)", to.clone()),
                    Replayed::NoExchange { exchange } => (
                        "kept (the exchange does not exist)",
                        format!("exchange {exchange}"),
                    ),
                    Replayed::Refused { to } => ("kept (the broker refused it)", to.clone()),
                };
                if !matches!(outcome, Replayed::Sent { .. }) {
                    kept += 1;
                }
                println!(
                    "{verb}: #{} {} ({}) to {to}",
                    letter.position,
                    letter.routing_key,
                    letter.reason.as_deref().unwrap_or("no reason")
                );
            },
        )
        .await;
    queue.close().await;
    let walk = walk?;
    eprintln!(
        "dead-letters: {} replayed, {kept} kept ({}) of {} in {}{}",
        walk.removed,
        args.filter.describe(),
        walk.in_queue,
        args.queue.queue,
        stopped(&walk, "--max")
    );
    if kept > 0 {
        anyhow::bail!("{kept} chosen dead letters could not be replayed and are still queued");
    }
    Ok(())
}

async fn drop_chosen(args: DropArgs) -> anyhow::Result<()> {
    let queue = open(&args.queue).await?;
    // Each chosen one as it is read, before it is known whether they go: what is dropped, or
    // what would have been.
    let walk = queue
        .discard(&args.filter.selection(), args.expect, |letter| {
            println!(
                "chosen: #{} {} ({}), refused by {}",
                letter.position,
                letter.routing_key,
                letter.reason.as_deref().unwrap_or("no reason"),
                refused_by(&letter.refused_by)
            );
        })
        .await;
    queue.close().await;
    let walk = walk?;
    if walk.chosen != args.expect {
        anyhow::bail!(
            "nothing dropped: {} match ({}) of {} in {}, not --expect {}",
            walk.chosen,
            args.filter.describe(),
            walk.in_queue,
            args.queue.queue,
            args.expect
        );
    }
    eprintln!(
        "dead-letters: {} dropped ({}) of {} in {}",
        walk.removed,
        args.filter.describe(),
        walk.in_queue,
        args.queue.queue
    );
    Ok(())
}

async fn open(args: &QueueArgs) -> anyhow::Result<DeadLetterQueue> {
    DeadLetterQueue::open(&args.amqp_url, &args.queue)
        .await
        .map_err(|error| match error {
            DeadLetterQueueError::NoQueue(queue) => anyhow::anyhow!(
                "dead-letter queue {queue:?} does not exist (a server using this broker declares \
                 it when it starts; another name is given with --queue)"
            ),
            error => error.into(),
        })
}

fn stopped(walk: &Walk, flag: &str) -> String {
    if walk.stopped_at_max {
        format!("; stopped at {flag}, more may match")
    } else {
        String::new()
    }
}

/// A dead letter as a few lines for people.
fn as_text(letter: &DeadLetter, preview: usize) -> String {
    let mut text = format!(
        "#{} {} {} at {}\n",
        letter.position,
        letter.reason.as_deref().unwrap_or("(no reason)"),
        letter.routing_key,
        letter
            .dead_lettered_at_ms
            .map_or_else(|| "(time unknown)".into(), rfc3339)
    );
    let mut line = |label: &str, value: &str| {
        text.push_str(&format!("  {label:<9} {value}\n"));
    };
    line("refused", &refused_by(&letter.refused_by));
    if let Some(field) = &letter.field {
        line("field", field);
    }
    if let Some(detail) = &letter.detail {
        line("detail", detail);
    }
    if let Some(exchange) = &letter.exchange {
        line("exchange", exchange);
    }
    if let Some(ms) = letter.published_at_ms {
        line("published", &rfc3339(ms));
    }
    if letter.replays > 0 {
        line("replays", &letter.replays.to_string());
    }
    if let Some(bytes) = letter.headers_dropped {
        line(
            "note",
            &format!("{bytes} bytes of its headers were left out"),
        );
    }
    line(
        "body",
        &format!(
            "{} bytes: {}",
            letter.body.len(),
            body_preview(&letter.body, preview)
        ),
    );
    text
}

/// A dead letter as one JSON object.
fn as_json(letter: &DeadLetter, preview: usize) -> serde_json::Value {
    json!({
        "position": letter.position,
        "reason": letter.reason,
        "refusedBy": refused_by(&letter.refused_by),
        "field": letter.field,
        "detail": letter.detail,
        "routingKey": letter.routing_key,
        "exchange": letter.exchange,
        "deadLetteredAt": letter.dead_lettered_at_ms.map(rfc3339),
        "publishedAt": letter.published_at_ms.map(rfc3339),
        "replays": letter.replays,
        "headersDropped": letter.headers_dropped,
        "bodyBytes": letter.body.len(),
        "bodyPreview": body_preview(&letter.body, preview),
    })
}

fn refused_by(by: &RefusedBy) -> String {
    match by {
        RefusedBy::Node(node) => format!("node {node}"),
        RefusedBy::Broker { queue } => format!("the broker, in queue {queue}"),
        RefusedBy::Unknown => "unknown".into(),
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// The first `max` bytes of `body` as one line of text: invalid UTF-8 replaced (U+FFFD),
/// control characters escaped, `…` when cut.
fn body_preview(body: &[u8], max: usize) -> String {
    let cut = body.len() > max;
    let text = String::from_utf8_lossy(&body[..body.len().min(max)]);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_preview_is_one_line_and_says_when_it_is_cut() {
        assert_eq!(body_preview(b"{\"a\":1}", 100), "{\"a\":1}");
        assert_eq!(body_preview(b"{\"a\":\n1}", 100), "{\"a\":\\n1}");
        assert_eq!(body_preview(b"abcdef", 3), "abc…");
        assert_eq!(body_preview(&[0xff, b'a'], 10), "\u{fffd}a");
        assert_eq!(body_preview("é".as_bytes(), 1), "\u{fffd}…");
    }
}
