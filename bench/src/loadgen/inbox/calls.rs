//! The inbox calls of `--scenario inbox`: clients calling `GetInboxCounts`, `ListInbox` (the
//! newest page) or `MarkInbox` (`READ`, `all`), each call about a random user of `--users`, on
//! an open-loop timetable.
//!
//! Each kind of call has `--inbox-clients` clients, each on its own HTTP/2 connection with one
//! call in flight. With rate R and K clients, call `seq` of a kind (client `seq % K`) is due
//! `seq / R` seconds after the window starts. A call's latency counts from that due instant
//! when the client was still waiting for its previous call then, so a slow answer cannot hide
//! the wait it caused the calls behind it (coordinated omission, as with the publishers); a
//! client that was idle at the due instant counts from its actual send instead, because the
//! timer that wakes it is up to ~1 ms late, which is the client's delay, not the server's, and
//! as large as the calls themselves. The time from the actual send alone is reported beside it.
//! Every call carries a token of the user it is about, minted for that call, so the server
//! checks a token per call as it does for a user's browser.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::super::{
    LATE_SEND_GRACE_NS, LoadgenArgs, RunClock, Timetable, Window, code_name, connect_all, latency,
    publisher::{Failure, FailureTally},
};
use notify_backbone::pb::{self, notification_service_client::NotificationServiceClient};

/// How long a call's token is valid: longer than any run.
const TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// A kind of inbox call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// `GetInboxCounts` of the caller's own inbox.
    Counts,
    /// `ListInbox`: the newest page of the caller's own inbox.
    List,
    /// `MarkInbox`: all of the caller's own inbox read.
    MarkAll,
}

impl Call {
    /// Every kind, in the order of the report.
    pub(super) const ALL: [Call; 3] = [Call::Counts, Call::List, Call::MarkAll];

    /// Its key in the JSON report.
    pub(super) fn key(self) -> &'static str {
        match self {
            Call::Counts => "counts",
            Call::List => "list",
            Call::MarkAll => "mark_all",
        }
    }

    /// The call, in words.
    pub(super) fn rpc(self) -> &'static str {
        match self {
            Call::Counts => "GetInboxCounts",
            Call::List => "ListInbox, newest page",
            Call::MarkAll => "MarkInbox READ all",
        }
    }

    /// Its calls per second (`--inbox-*-rate`).
    pub(super) fn rate(self, args: &LoadgenArgs) -> u64 {
        match self {
            Call::Counts => args.inbox_counts_rate,
            Call::List => args.inbox_list_rate,
            Call::MarkAll => args.inbox_mark_rate,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the calls of one kind came to (one client's, or a kind's added up).
pub(super) struct CallStats {
    /// The kind.
    pub call: Call,
    /// Answered calls.
    pub ok: u64,
    /// Answered calls due in the measurement window.
    pub ok_measured: u64,
    /// Failed calls.
    pub errors: u64,
    /// Calls due in the measurement window that were never made: the client was still behind
    /// its timetable when the window closed.
    pub unsent_measured: u64,
    /// Failures by kind.
    pub failures: Vec<FailureTally>,
    /// Measured calls, µs from the instant each was due (or, when the client was idle then,
    /// sent) to its answer.
    pub latency_us: Histogram<u64>,
    /// Measured calls, µs from the actual send to the answer.
    pub service_us: Histogram<u64>,
    /// Over the measured calls: items a `ListInbox` page held, items a mark changed.
    pub items: u64,
}

impl CallStats {
    fn new(call: Call) -> anyhow::Result<Self> {
        Ok(Self {
            call,
            ok: 0,
            ok_measured: 0,
            errors: 0,
            unsent_measured: 0,
            failures: Vec::new(),
            latency_us: latency::histogram()?,
            service_us: latency::histogram()?,
            items: 0,
        })
    }

    fn add(&mut self, other: &Self) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.ok_measured += other.ok_measured;
        self.errors += other.errors;
        self.unsent_measured += other.unsent_measured;
        self.items += other.items;
        for tally in &other.failures {
            FailureTally::add_to(&mut self.failures, &tally.code, tally.count, &tally.example);
        }
        latency::merge(&mut self.latency_us, &other.latency_us)?;
        latency::merge(&mut self.service_us, &other.service_us)
    }
}

/// Calls made so far per kind, for the progress line.
#[derive(Default)]
pub(super) struct Done([AtomicU64; 3]);

impl Done {
    /// Calls of `call` answered or failed so far.
    pub(super) fn of(&self, call: Call) -> u64 {
        self.0[call.index()].load(Relaxed)
    }
}

/// The clients, connected and not yet calling.
pub(super) struct Clients {
    /// Per client: its kind, its index among that kind's clients, its connection.
    clients: Vec<(Call, u64, Channel)>,
}

impl Clients {
    /// Opens the connections of the clients of every kind with a rate.
    pub(super) async fn connect(args: &LoadgenArgs) -> anyhow::Result<Self> {
        let kinds: Vec<Call> = Call::ALL
            .into_iter()
            .filter(|call| call.rate(args) > 0)
            .collect();
        let channels = connect_all(&args.server, kinds.len() * args.inbox_clients, true)
            .await
            .context("opening the inbox clients' connections")?;
        let clients = kinds
            .iter()
            .flat_map(|&call| (0..args.inbox_clients as u64).map(move |index| (call, index)))
            .zip(channels)
            .map(|((call, index), channel)| (call, index, channel))
            .collect();
        Ok(Self { clients })
    }

    /// Starts every client on `window`'s timetable.
    pub(super) fn start(
        self,
        args: &LoadgenArgs,
        secret: &str,
        clock: RunClock,
        window: Window,
        done: Arc<Done>,
        stop: CancellationToken,
    ) -> Running {
        let mut tasks = JoinSet::new();
        for (call, index, channel) in self.clients {
            let client = Client {
                call,
                index,
                timetable: Timetable {
                    rate: call.rate(args),
                    senders: args.inbox_clients as u64,
                },
                users: args.users,
                page: args.inbox_page,
                request_timeout: args.request_timeout,
                secret: secret.to_owned(),
                rpc: NotificationServiceClient::new(channel),
            };
            tasks.spawn(client.run(clock, window, done.clone(), stop.clone()));
        }
        Running { tasks }
    }
}

/// The clients while they call.
pub(super) struct Running {
    tasks: JoinSet<anyhow::Result<CallStats>>,
}

impl Running {
    /// Waits for every client (each ends with the window; a call in flight by its timeout) and
    /// adds up their calls per kind, in the order of [`Call::ALL`].
    pub(super) async fn finish(mut self) -> anyhow::Result<Vec<CallStats>> {
        let mut kinds: Vec<CallStats> = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            let stats = joined.context("an inbox client failed")??;
            match kinds.iter_mut().find(|kind| kind.call == stats.call) {
                Some(kind) => kind.add(&stats)?,
                None => kinds.push(stats),
            }
        }
        kinds.sort_by_key(|kind| kind.call.index());
        Ok(kinds)
    }
}

/// One client: calls of one kind, one at a time.
struct Client {
    call: Call,
    index: u64,
    timetable: Timetable,
    users: u64,
    page: u32,
    request_timeout: std::time::Duration,
    secret: String,
    rpc: NotificationServiceClient<Channel>,
}

impl Client {
    async fn run(
        mut self,
        clock: RunClock,
        window: Window,
        done: Arc<Done>,
        stop: CancellationToken,
    ) -> anyhow::Result<CallStats> {
        let mut stats = CallStats::new(self.call)?;
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        // When the previous call was answered.
        let mut idle_since_ns = 0;
        for round in 0_u64.. {
            let due_ns = window.publish_from_ns
                + self
                    .timetable
                    .due_offset_ns(self.timetable.seq(self.index, round));
            if due_ns >= window.until_ns || stop.is_cancelled() {
                break;
            }
            if clock.now_ns() >= window.until_ns + LATE_SEND_GRACE_NS {
                // Behind when the window closed: what was due and not made is counted instead,
                // and makes the run invalid.
                stats.unsent_measured = self.timetable.unsent_in_window(self.index, round, &window);
                break;
            }
            if due_ns > clock.now_ns() {
                tokio::select! {
                    () = tokio::time::sleep_until(clock.instant_at(due_ns).into()) => {}
                    () = stop.cancelled() => break,
                }
            }
            let user = rng.random_range(0..self.users.max(1));
            let sent_ns = clock.now_ns();
            let outcome = match tokio::time::timeout(self.request_timeout, self.once(user)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Failure {
                    code: code_name(tonic::Code::DeadlineExceeded),
                    message: format!(
                        "no answer within --request-timeout ({:?})",
                        self.request_timeout
                    ),
                }),
            };
            let done_ns = clock.now_ns();
            let start_ns = if idle_since_ns > due_ns {
                due_ns
            } else {
                sent_ns
            };
            idle_since_ns = done_ns;
            done.0[self.call.index()].fetch_add(1, Relaxed);
            match outcome {
                Ok(items) => {
                    stats.ok += 1;
                    if window.measures(due_ns) {
                        stats.ok_measured += 1;
                        stats.items += items;
                        stats
                            .latency_us
                            .saturating_record(done_ns.saturating_sub(start_ns) / 1000);
                        stats
                            .service_us
                            .saturating_record(done_ns.saturating_sub(sent_ns) / 1000);
                    }
                }
                Err(failure) => {
                    stats.errors += 1;
                    FailureTally::add_to(&mut stats.failures, &failure.code, 1, &failure.message);
                }
            }
        }
        Ok(stats)
    }

    /// One call about `lg-user-{user}`, with that user's token: the items it returned or
    /// changed.
    async fn once(&mut self, user: u64) -> Result<u64, Failure> {
        let token = notify_backbone::client::mint_with(
            &self.secret,
            &format!("lg-user-{user}"),
            &["user".to_owned()],
            TOKEN_TTL,
            notify_backbone::auth::DEFAULT_ISSUER,
            notify_backbone::auth::DEFAULT_AUDIENCE,
        )
        .map_err(local_failure)?;
        let token = token.as_str();
        let answered = match self.call {
            Call::Counts => self
                .rpc
                .get_inbox_counts(authorized(pb::GetInboxCountsRequest::default(), token)?)
                .await
                .map(|_| 0),
            Call::List => self
                .rpc
                .list_inbox(authorized(
                    pb::ListInboxRequest {
                        limit: self.page,
                        ..Default::default()
                    },
                    token,
                )?)
                .await
                .map(|page| page.into_inner().items.len() as u64),
            Call::MarkAll => self
                .rpc
                .mark_inbox(authorized(
                    pb::MarkInboxRequest {
                        mark: pb::InboxMark::Read.into(),
                        all: true,
                        ..Default::default()
                    },
                    token,
                )?)
                .await
                .map(|marked| u64::from(marked.into_inner().changed)),
        };
        answered.map_err(|status| Failure {
            code: code_name(status.code()),
            message: status.message().to_owned(),
        })
    }
}

/// `message` with `token` as its bearer token.
fn authorized<T>(message: T, token: &str) -> Result<tonic::Request<T>, Failure> {
    notify_backbone::client::authorized(message, Some(token)).map_err(local_failure)
}

/// A call that could not be made (its token): counted like a failed call.
fn local_failure(error: anyhow::Error) -> Failure {
    Failure {
        code: "LOCAL".to_owned(),
        message: format!("{error:#}"),
    }
}
