//! `inbox list`, `counts`, `mark` and `preferences`: the notification centre from the command
//! line, over `ListInbox`, `GetInboxCounts`, `MarkInbox`, `GetPreferences` and
//! `SetPreferences`.
//!
//! Owns: the flags and the output: each answer as JSON lines on stdout (the inbox's messages
//! with every field, zeros included; their events as `history` prints them), a line for people
//! on stderr (counts, where to continue, ids that named nothing). Does not own what the calls
//! mean or who may make them: the server decides and its refusal is printed as it said it
//! (`grpc::inbox`, the contract in `proto/cloudphone/notify/v1/inbox.proto`).

use std::io::Read as _;

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};

use super::{JsonLines, authorized, connect, refused};
use crate::pb;

/// The server and the caller: the flags every `inbox` command takes.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's gRPC URL.
    #[arg(long, env = "NOTIFY_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// The bearer token sent as `authorization` metadata (mint one with `token`): who asks,
    /// and by default whose inbox and preferences.
    #[arg(long, env = "NOTIFY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Arguments of `inbox`.
#[derive(Debug, Args)]
pub struct InboxArgs {
    /// What to do with it.
    #[command(subcommand)]
    pub command: InboxCommand,
}

/// The `inbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// Print a page of the inbox, newest first, one JSON line per item (its event, family and
    /// state); on stderr the counts and how to continue (`--before`).
    List(ListArgs),
    /// Print the inbox's exact counts (total, unread, unseen; per family) as one JSON line.
    Counts(CountsArgs),
    /// Mark items of your own inbox: by event ids, up to a cursor (read, seen) or all of them
    /// (read, seen). Prints the counts after it, how many changed and the ids that named no
    /// item.
    Mark(MarkArgs),
    /// Print a user's preferences (which types are pushed and kept, quiet hours) as one JSON
    /// line; `preferences set` replaces your own.
    #[command(args_conflicts_with_subcommands = true)]
    Preferences(PreferencesArgs),
}

/// Whose inbox a read is about.
#[derive(Debug, Args)]
pub struct WhoseArgs {
    /// Whose inbox: by default the token's own user; another user's id needs an admin token,
    /// and is read only (nobody marks another's inbox).
    #[arg(long)]
    pub user: Option<String>,
    /// The admin inbox (the admin feed's notices, with this admin's own state) instead of the
    /// user's events: needs an admin token.
    #[arg(long)]
    pub admin: bool,
}

/// Which items a page holds (`InboxFilter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Filter {
    /// Not archived and not read.
    Unread,
    /// Not archived and not seen.
    Unseen,
    /// Not archived and read.
    Read,
    /// Archived only.
    Archived,
    /// Every item, archived ones included.
    All,
}

impl Filter {
    fn to_pb(self) -> pb::InboxFilter {
        match self {
            Self::Unread => pb::InboxFilter::Unread,
            Self::Unseen => pb::InboxFilter::Unseen,
            Self::Read => pb::InboxFilter::Read,
            Self::Archived => pb::InboxFilter::Archived,
            Self::All => pb::InboxFilter::All,
        }
    }
}

/// An event type's family (`InboxFamily`): the part of the type before its first dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Family {
    /// `quota.*`.
    Quota,
    /// `billing.*`.
    Billing,
    /// `app.*`.
    App,
    /// `device.*`.
    Device,
}

impl Family {
    fn to_pb(self) -> pb::InboxFamily {
        match self {
            Self::Quota => pb::InboxFamily::Quota,
            Self::Billing => pb::InboxFamily::Billing,
            Self::App => pb::InboxFamily::App,
            Self::Device => pb::InboxFamily::Device,
        }
    }
}

/// Arguments of `inbox list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The server and the token.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Whose inbox.
    #[command(flatten)]
    pub whose: WhoseArgs,
    /// Which items (default: every item not archived, the inbox).
    #[arg(long, value_enum)]
    pub filter: Option<Filter>,
    /// Only items of these families (repeat the flag or separate with commas; default: all).
    #[arg(long = "family", value_enum, value_delimiter = ',')]
    pub families: Vec<Family>,
    /// Items per page (`ListInbox` returns at most 100; default 20, or 100 with --all-pages).
    /// A page may hold fewer while more follow: the server bounds how much one call reads.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub limit: Option<u32>,
    /// Start with the items older than this cursor (what an earlier run said to continue with);
    /// default: the newest item.
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,
    /// Every page, down to the oldest item, instead of one.
    #[arg(long)]
    pub all_pages: bool,
}

impl ListArgs {
    /// The flags that select what `list` prints, as given: for the line that says how to
    /// continue.
    fn selection_flags(&self) -> String {
        let mut flags = String::new();
        if let Some(user) = &self.whose.user {
            flags.push_str(&format!(" --user {user}"));
        }
        if self.whose.admin {
            flags.push_str(" --admin");
        }
        if let Some(filter) = self.filter {
            flags.push_str(&format!(" --filter {}", value_name(filter)));
        }
        if !self.families.is_empty() {
            let names: Vec<String> = self.families.iter().map(|&f| value_name(f)).collect();
            flags.push_str(&format!(" --family {}", names.join(",")));
        }
        if let Some(limit) = self.limit {
            flags.push_str(&format!(" --limit {limit}"));
        }
        flags
    }
}

/// Arguments of `inbox counts`.
#[derive(Debug, Args)]
pub struct CountsArgs {
    /// The server and the token.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Whose inbox.
    #[command(flatten)]
    pub whose: WhoseArgs,
}

/// What `mark` does to the items (`InboxMark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MarkAs {
    /// Read, which implies seen.
    Read,
    /// Seen (in a list, not opened).
    Seen,
    /// Not read again (by ids); it stays seen.
    Unread,
    /// Out of the inbox and its counts, kept in history (by ids).
    Archive,
    /// Back in the inbox (by ids).
    Unarchive,
}

impl MarkAs {
    fn to_pb(self) -> pb::InboxMark {
        match self {
            Self::Read => pb::InboxMark::Read,
            Self::Seen => pb::InboxMark::Seen,
            Self::Unread => pb::InboxMark::Unread,
            Self::Archive => pb::InboxMark::Archived,
            Self::Unarchive => pb::InboxMark::Unarchived,
        }
    }
}

/// Arguments of `inbox mark`.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("which").args(["ids", "up_to", "all"]).required(true)),
    override_usage = "notify-backbone inbox mark [OPTIONS] <MARK> (<IDS>... | --up-to <CURSOR> | --all)"
)]
pub struct MarkArgs {
    /// The server and the token (always your own inbox).
    #[command(flatten)]
    pub server: ServerArgs,
    /// What to mark the items.
    #[arg(value_enum)]
    pub mark: MarkAs,
    /// The items' event ids (`event.id` in `inbox list`), at most 100.
    pub ids: Vec<String>,
    /// `read` and `seen` only: every item at or before this cursor (an item's `event.cursor`).
    #[arg(long, value_name = "CURSOR")]
    pub up_to: Option<String>,
    /// `read` and `seen` only: every item.
    #[arg(long)]
    pub all: bool,
    /// Your admin inbox instead of your own events: needs an admin token.
    #[arg(long)]
    pub admin: bool,
}

/// Arguments of `inbox preferences`.
#[derive(Debug, Args)]
pub struct PreferencesArgs {
    /// `set` to replace them; without it, they are printed.
    #[command(subcommand)]
    pub command: Option<PreferencesCommand>,
    /// The server and the token.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Whose: by default the token's own user; another user's needs an admin token.
    #[arg(long)]
    pub user: Option<String>,
}

/// The `inbox preferences` subcommands.
#[derive(Debug, Subcommand)]
pub enum PreferencesCommand {
    /// Replace your own preferences with the protobuf JSON of `Preferences` (what `inbox
    /// preferences` prints; `criticalTypes` is ignored) and print them as stored.
    Set(SetPreferencesArgs),
}

/// Arguments of `inbox preferences set`.
#[derive(Debug, Args)]
pub struct SetPreferencesArgs {
    /// The server and the token (always your own preferences).
    #[command(flatten)]
    pub server: ServerArgs,
    /// The file with the new preferences, e.g. `{"types":[{"eventType":"app.*","enabled":
    /// false}]}`; `-` reads standard input.
    #[arg(long, value_name = "PATH")]
    pub file: String,
}

/// Runs an `inbox` subcommand.
pub async fn inbox(args: InboxArgs) -> anyhow::Result<()> {
    match args.command {
        InboxCommand::List(args) => list(args).await,
        InboxCommand::Counts(args) => counts(args).await,
        InboxCommand::Mark(args) => mark(args).await,
        InboxCommand::Preferences(PreferencesArgs {
            command: Some(PreferencesCommand::Set(args)),
            ..
        }) => set_preferences(args).await,
        InboxCommand::Preferences(args) => preferences(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let lines = JsonLines::new("cloudphone.notify.v1.InboxItem")?;
    let mut client = connect(&args.server.server).await?;
    let limit = args.limit.unwrap_or(if args.all_pages { 100 } else { 0 });
    let mut before = args.before.clone().unwrap_or_default();
    let (mut printed, mut head) = (0_u64, String::new());
    let (end, counts) = loop {
        let request = pb::ListInboxRequest {
            user_id: args.whose.user.clone().unwrap_or_default(),
            admin_inbox: args.whose.admin,
            filter: args
                .filter
                .map_or(pb::InboxFilter::Unspecified, Filter::to_pb) as i32,
            families: args.families.iter().map(|f| f.to_pb() as i32).collect(),
            before: before.clone(),
            limit,
        };
        let page = client
            .list_inbox(authorized(request, args.server.token.as_deref())?)
            .await
            .map_err(refused)?
            .into_inner();
        if head.is_empty() {
            head = page.head_cursor;
        }
        for item in &page.items {
            lines.print(item)?;
            printed += 1;
        }
        if page.end {
            break (true, page.counts);
        }
        if page.next_before.is_empty() || page.next_before == before {
            bail!("the server's page is not the last one but says nowhere to continue from");
        }
        before = page.next_before;
        if !args.all_pages {
            break (false, page.counts);
        }
    };
    let mut said = format!(
        "inbox: {printed} item{}; {}",
        if printed == 1 { "" } else { "s" },
        describe(&counts.unwrap_or_default())
    );
    if end {
        said.push_str("; the end");
    } else {
        said.push_str(&format!(
            "; more with: inbox list{} --before {before}",
            args.selection_flags()
        ));
    }
    // Going live from the first page's head misses no change and repeats none; a stream only
    // carries updates of the caller's own inbox, and a run that continued from `--before` does
    // not know the first run's head.
    if args.whose.user.is_none() && args.before.is_none() && !head.is_empty() {
        let feed = if args.whose.admin {
            " --admin-feed"
        } else {
            ""
        };
        said.push_str(&format!(
            " (go live with: subscribe{feed} --inbox --resume-after {head})"
        ));
    }
    eprintln!("{said}");
    Ok(())
}

async fn counts(args: CountsArgs) -> anyhow::Result<()> {
    let lines = JsonLines::new("cloudphone.notify.v1.InboxCounts")?;
    let mut client = connect(&args.server.server).await?;
    let request = pb::GetInboxCountsRequest {
        user_id: args.whose.user.clone().unwrap_or_default(),
        admin_inbox: args.whose.admin,
    };
    let counts = client
        .get_inbox_counts(authorized(request, args.server.token.as_deref())?)
        .await
        .map_err(refused)?
        .into_inner()
        .counts
        .unwrap_or_default();
    lines.print(&counts)?;
    eprintln!("inbox: {}", describe(&counts));
    Ok(())
}

async fn mark(args: MarkArgs) -> anyhow::Result<()> {
    let lines = JsonLines::new("cloudphone.notify.v1.MarkInboxResponse")?;
    let mut client = connect(&args.server.server).await?;
    let request = pb::MarkInboxRequest {
        admin_inbox: args.admin,
        mark: args.mark.to_pb() as i32,
        ids: args.ids.clone(),
        up_to_cursor: args.up_to.clone().unwrap_or_default(),
        all: args.all,
    };
    let response = client
        .mark_inbox(authorized(request, args.server.token.as_deref())?)
        .await
        .map_err(refused)?
        .into_inner();
    lines.print(&response)?;
    if !response.unknown_ids.is_empty() {
        eprintln!(
            "inbox: warning: {} of the ids name no item of this inbox (unknown, no longer \
             retained, or another user's): {}",
            response.unknown_ids.len(),
            response.unknown_ids.join(", ")
        );
    }
    eprintln!(
        "inbox: {} changed; {}",
        response.changed,
        describe(&response.counts.unwrap_or_default())
    );
    Ok(())
}

async fn preferences(args: PreferencesArgs) -> anyhow::Result<()> {
    let lines = JsonLines::new("cloudphone.notify.v1.Preferences")?;
    let mut client = connect(&args.server.server).await?;
    let request = pb::GetPreferencesRequest {
        user_id: args.user.clone().unwrap_or_default(),
    };
    let preferences = client
        .get_preferences(authorized(request, args.server.token.as_deref())?)
        .await
        .map_err(refused)?
        .into_inner()
        .preferences
        .unwrap_or_default();
    lines.print(&preferences)
}

async fn set_preferences(args: SetPreferencesArgs) -> anyhow::Result<()> {
    let lines = JsonLines::new("cloudphone.notify.v1.Preferences")?;
    let text = if args.file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        text
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file))?
    };
    let preferences = parse_preferences(&text).with_context(|| {
        let from = if args.file == "-" {
            "standard input"
        } else {
            args.file.as_str()
        };
        format!("{from} is not the protobuf JSON of Preferences")
    })?;
    let mut client = connect(&args.server.server).await?;
    let request = pb::SetPreferencesRequest {
        preferences: Some(preferences),
    };
    let stored = client
        .set_preferences(authorized(request, args.server.token.as_deref())?)
        .await
        .map_err(refused)?
        .into_inner()
        .preferences
        .unwrap_or_default();
    lines.print(&stored)
}

/// `Preferences` from its protobuf JSON (camelCase or the proto's names; unknown fields
/// refused, so a misspelt one is not silently dropped).
fn parse_preferences(text: &str) -> anyhow::Result<pb::Preferences> {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("descriptor set")?;
    let descriptor = pool
        .get_message_by_name("cloudphone.notify.v1.Preferences")
        .context("Preferences descriptor")?;
    let mut json = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor, &mut json)?;
    json.end()?;
    Ok(pb::Preferences::decode(dynamic.encode_to_vec().as_slice())?)
}

/// Counts for people: `2 unread, 3 unseen, 5 in all (unread/all: billing 1/2, device 1/3)`,
/// the families with items only.
fn describe(counts: &pb::InboxCounts) -> String {
    let families: Vec<String> = counts
        .families
        .iter()
        .filter(|family| family.total > 0)
        .map(|family| {
            let name = pb::InboxFamily::try_from(family.family)
                .map_or_else(|_| family.family.to_string(), family_name);
            format!("{name} {}/{}", family.unread, family.total)
        })
        .collect();
    let mut text = format!(
        "{} unread, {} unseen, {} in all",
        counts.unread, counts.unseen, counts.total
    );
    if !families.is_empty() {
        text.push_str(&format!(" (unread/all: {})", families.join(", ")));
    }
    text
}

/// A family as `--family` spells it.
fn family_name(family: pb::InboxFamily) -> String {
    match family {
        pb::InboxFamily::Unspecified => "other".into(),
        pb::InboxFamily::Quota => value_name(Family::Quota),
        pb::InboxFamily::Billing => value_name(Family::Billing),
        pb::InboxFamily::App => value_name(Family::App),
        pb::InboxFamily::Device => value_name(Family::Device),
    }
}

/// A flag's value as the command line spells it.
fn value_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |value| value.get_name().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(unread: u64, total: u64) -> pb::InboxCounts {
        pb::InboxCounts {
            total,
            unread,
            unseen: unread,
            families: vec![
                pb::InboxFamilyCounts {
                    family: pb::InboxFamily::Quota as i32,
                    ..Default::default()
                },
                pb::InboxFamilyCounts {
                    family: pb::InboxFamily::Billing as i32,
                    total,
                    unread,
                    unseen: unread,
                },
            ],
        }
    }

    #[test]
    fn counts_print_every_field_zeros_included() {
        let lines = JsonLines::new("cloudphone.notify.v1.InboxCounts").unwrap();
        let line: serde_json::Value =
            serde_json::from_str(&lines.line(&counts(0, 2)).unwrap()).unwrap();
        assert_eq!(line["unread"], "0", "{line}");
        assert_eq!(line["total"], "2", "{line}");
        assert_eq!(line["families"][0]["family"], "INBOX_FAMILY_QUOTA");
        assert_eq!(line["families"][0]["unread"], "0", "{line}");
        let empty = lines.line(&pb::InboxCounts::default()).unwrap();
        assert_eq!(
            empty,
            r#"{"total":"0","unread":"0","unseen":"0","families":[]}"#
        );
    }

    #[test]
    fn an_items_state_is_always_said_and_its_event_printed_as_history_prints_it() {
        let event = pb::Event {
            id: "e1".into(),
            r#type: "billing.payment_success".into(),
            cursor: "c1".into(),
            ..Default::default()
        };
        let item = pb::InboxItem {
            event: Some(event.clone()),
            family: pb::InboxFamily::Billing as i32,
            ..Default::default()
        };
        let items = JsonLines::new("cloudphone.notify.v1.InboxItem").unwrap();
        let history = JsonLines::new("cloudphone.notify.v1.Event").unwrap();
        let line: serde_json::Value = serde_json::from_str(&items.line(&item).unwrap()).unwrap();
        let printed: serde_json::Value =
            serde_json::from_str(&history.line(&event).unwrap()).unwrap();
        assert_eq!(line["event"], printed);
        assert!(printed.get("deviceId").is_none(), "{printed}");
        assert_eq!(line["family"], "INBOX_FAMILY_BILLING");
        for state in ["seen", "read", "archived"] {
            assert_eq!(line[state], false, "{line}");
        }
    }

    #[test]
    fn a_streams_inbox_update_shows_its_counts_and_other_messages_stay_canonical() {
        use pb::subscribe_response::Kind;
        let lines = JsonLines::new("cloudphone.notify.v1.SubscribeResponse").unwrap();
        let update = pb::SubscribeResponse {
            kind: Some(Kind::Inbox(pb::InboxUpdate {
                reason: pb::InboxUpdateReason::State as i32,
                counts: Some(counts(0, 0)),
                ..Default::default()
            })),
        };
        let line: serde_json::Value = serde_json::from_str(&lines.line(&update).unwrap()).unwrap();
        assert_eq!(line["inbox"]["reason"], "INBOX_UPDATE_REASON_STATE");
        assert_eq!(line["inbox"]["counts"]["unread"], "0", "{line}");
        assert_eq!(line["inbox"]["quiet"], false, "{line}");
        let gap = pb::SubscribeResponse {
            kind: Some(Kind::Gap(pb::Gap {
                to_cursor: "c2".into(),
                ..Default::default()
            })),
        };
        assert_eq!(lines.line(&gap).unwrap(), r#"{"gap":{"toCursor":"c2"}}"#);
    }

    #[test]
    fn preferences_parse_from_what_inbox_preferences_prints_and_refuse_unknown_fields() {
        let preferences = pb::Preferences {
            types: vec![pb::TypePreference {
                event_type: "app.*".into(),
                enabled: false,
                channels: vec!["email".into()],
            }],
            quiet_hours: Some(pb::QuietHours {
                start: "22:00".into(),
                end: "07:00".into(),
                time_zone: "Asia/Shanghai".into(),
            }),
            critical_types: vec!["device.error".into()],
        };
        let lines = JsonLines::new("cloudphone.notify.v1.Preferences").unwrap();
        let printed = lines.line(&preferences).unwrap();
        assert!(printed.contains(r#""enabled":false"#), "{printed}");
        assert_eq!(parse_preferences(&printed).unwrap(), preferences);
        assert!(parse_preferences(r#"{"types":[{"eventTyp":"app.*"}]}"#).is_err());
        assert!(parse_preferences(r#"{"types":[]} trailing"#).is_err());
    }

    #[test]
    fn counts_for_people_name_the_families_with_items() {
        assert_eq!(
            describe(&counts(1, 2)),
            "1 unread, 1 unseen, 2 in all (unread/all: billing 1/2)"
        );
        assert_eq!(
            describe(&pb::InboxCounts::default()),
            "0 unread, 0 unseen, 0 in all"
        );
    }
}
