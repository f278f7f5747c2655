//! The AMQP path of the publishers (`--via amqp`): events go to RabbitMQ the way the platform's
//! NestJS producers send them, and reach the server through its AMQP ingest.
//!
//! A message looks exactly like a producer's (`docs/wire-format.md` "The AMQP message"):
//! exchange `--exchange` (a durable topic exchange), routing key = the event type,
//! `delivery_mode` 2 (persistent), `timestamp` = milliseconds since the epoch (the producers
//! send `Date.now()`, not the seconds the AMQP spec asks for), an empty `headers` table
//! (amqplib always sends one), and no other property: no `content_type`, no `content_encoding`,
//! no `message_id`.
//!
//! Two things differ from a producer, and neither is visible to a consumer. The channel is in
//! confirm mode, so an event counts as sent only once the broker has taken responsibility for it;
//! and every publish is `mandatory`, so a message no queue is bound for comes back as a failure
//! (`AMQP_RETURNED`) instead of vanishing into the exchange and showing up as an unexplained loss.
//!
//! Every publisher has its own channel (a channel's confirms arrive in its own numbering, so no
//! two publishers could share one without sharing their bookkeeping), and all channels share one
//! connection; see [`CONNECTIONS`] for why.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind, PublisherConfirm,
    message::BasicReturnMessage,
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    protocol::constants::REPLY_SUCCESS,
    types::{FieldTable, ShortString},
};

use super::publisher::Failure;

/// How long connecting, declaring the exchange and opening the channels may take, each.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long closing the connection may take at the end; the broker cleans up after a client
/// that went away anyway, so this only spares its log a warning.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// `delivery_mode` of a persistent message, what the producers send.
const PERSISTENT: u8 = 2;
/// The longest AMQP short string (exchange names, routing keys).
pub(super) const MAX_NAME_BYTES: usize = 255;
/// Connections the publishers' channels are spread over, round-robin. One, because one per
/// publisher measured no better on the 2-core machine of BENCHMARKS.md: closed loop (`--rate 0`,
/// 4 publishers, 1,000 per-user streams, 10 s windows, alternating), one connection gave 6,805
/// and 5,707 events/s, four gave 6,248 and 6,242 — noise around the broker's own ceiling (RabbitMQ
/// took ~0.85 of a core at 4,000 persistent events/s, the server and the loadgen ~0.4 each). One
/// connection is also what a NestJS service has, and costs the broker one connection process
/// instead of one per publisher.
const CONNECTIONS: usize = 1;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// `amqp://user:password@host:port/vhost`.
    pub url: String,
    /// The exchange, e.g. `cloudphone.events`.
    pub exchange: String,
    /// The routing key of every message: the event type.
    pub routing_key: String,
}

/// The open connections; closed when the run is over.
pub(super) struct Session {
    connections: Vec<Connection>,
}

/// One publisher's confirm-mode channel.
pub(super) struct Publisher {
    channel: Channel,
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
}

/// Connects, declares the exchange and opens one confirm-mode channel per publisher.
pub(super) async fn open(
    target: &Target,
    publishers: usize,
) -> anyhow::Result<(Session, Vec<Publisher>)> {
    let shown = redact(&target.url);
    let properties = || ConnectionProperties::default().with_connection_name("notify-bench".into());
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS.min(publishers).max(1) {
        let connection = within(
            SETUP_TIMEOUT,
            Connection::connect(&target.url, properties()),
        )
        .await
        .with_context(|| format!("connecting to RabbitMQ at {shown}"))?;
        connections.push(connection);
    }
    let session = Session { connections };
    declare_exchange(&session.connections[0], &target.exchange).await?;

    let mut opened = Vec::with_capacity(publishers);
    for index in 0..publishers {
        let connection = &session.connections[index % session.connections.len()];
        let channel = within(SETUP_TIMEOUT, connection.create_channel())
            .await
            .context("opening a publisher channel")?;
        within(
            SETUP_TIMEOUT,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .context("putting a publisher channel in confirm mode")?;
        opened.push(Publisher {
            channel,
            exchange: target.exchange.as_str().into(),
            routing_key: target.routing_key.as_str().into(),
            properties: BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_headers(FieldTable::default()),
        });
    }
    Ok((session, opened))
}

/// Declares the exchange the producers publish to, as they do: a durable topic exchange. Declaring
/// is idempotent, so this works on a fresh broker and on one where the exchange exists; an
/// exchange of the same name with other settings is refused by the broker and ends the run.
async fn declare_exchange(connection: &Connection, exchange: &str) -> anyhow::Result<()> {
    let channel = within(SETUP_TIMEOUT, connection.create_channel())
        .await
        .context("opening a channel to declare the exchange")?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    within(
        SETUP_TIMEOUT,
        channel.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        ),
    )
    .await
    .with_context(|| {
        format!(
            "declaring exchange {exchange:?} (durable, topic); does it exist with other settings?"
        )
    })?;
    // Closing is courtesy; a failure here changes nothing about the run.
    let _closed = within(
        SETUP_TIMEOUT,
        channel.close(REPLY_SUCCESS, "exchange declared".into()),
    )
    .await;
    Ok(())
}

/// Runs a lapin call with a deadline, so a broker that does not answer ends the run with a reason.
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = lapin::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("no answer from RabbitMQ within {limit:?}"),
    }
}

impl Session {
    /// Closes the connections (and with them the channels) cleanly.
    pub(super) async fn close(self) {
        for connection in self.connections {
            let _closed = tokio::time::timeout(
                CLOSE_TIMEOUT,
                connection.close(REPLY_SUCCESS, "loadgen done".into()),
            )
            .await;
        }
    }
}

impl Publisher {
    /// Hands one message to the channel; resolves once its frames are on their way, with the
    /// confirm to wait for. A publisher calls this from its one task, so the broker numbers its
    /// messages (and confirms them) in the order they were stamped.
    pub(super) async fn send(
        &self,
        body: &[u8],
        timestamp_ms: u64,
    ) -> lapin::Result<PublisherConfirm> {
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        self.channel
            .basic_publish(
                self.exchange.clone(),
                self.routing_key.clone(),
                options,
                body,
                self.properties.clone().with_timestamp(timestamp_ms),
            )
            .await
    }
}

/// What the broker made of one publish: `Ok` only for an ack of a message that was routed.
pub(super) fn outcome(confirmation: lapin::Result<Confirmation>) -> Result<(), Failure> {
    match confirmation {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => Err(Failure {
            code: "AMQP_RETURNED".to_owned(),
            message: returned_message(&returned),
        }),
        Ok(Confirmation::Nack(returned)) => Err(Failure {
            code: "AMQP_NACK".to_owned(),
            message: match returned {
                Some(returned) => format!("the broker nacked it; {}", returned_message(&returned)),
                None => "the broker nacked it (could not store it)".to_owned(),
            },
        }),
        Ok(Confirmation::NotRequested) => Err(Failure {
            code: "AMQP_UNCONFIRMED".to_owned(),
            message: "the channel is not in confirm mode".to_owned(),
        }),
        Err(error) => Err(channel_failure(&error)),
    }
}

/// A channel or connection that failed under a publish.
pub(super) fn channel_failure(error: &lapin::Error) -> Failure {
    // Once the broker closed the channel or the connection, every later publish only learns
    // that it is closed; lapin logs the broker's reason when it happens.
    let hint = match error.kind() {
        ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidConnectionState(..) => {
            " (the channel or its connection was closed; lapin's log above has the broker's reason)"
        }
        _ => "",
    };
    Failure {
        code: "AMQP_CHANNEL_ERROR".to_owned(),
        message: format!("{error}{hint}"),
    }
}

fn returned_message(returned: &BasicReturnMessage) -> String {
    format!(
        "returned {} {}: no queue is bound to exchange {:?} for routing key {:?} (is the server's \
         AMQP ingest running on this broker?)",
        returned.reply_code,
        returned.reply_text,
        returned.delivery.exchange.as_str(),
        returned.delivery.routing_key.as_str(),
    )
}

/// Checks what the broker would refuse only after the streams are open.
pub(super) fn check_names(exchange: &str, routing_key: &str) -> anyhow::Result<()> {
    ensure!(!exchange.is_empty(), "--exchange must not be empty");
    ensure!(
        exchange.len() <= MAX_NAME_BYTES,
        "--exchange is longer than AMQP allows ({MAX_NAME_BYTES} bytes)"
    );
    ensure!(
        routing_key.len() <= MAX_NAME_BYTES,
        "--event-type is the routing key and is longer than AMQP allows ({MAX_NAME_BYTES} bytes)"
    );
    Ok(())
}

/// `amqp://guest:secret@host/` → `amqp://guest:***@host/`, for anything printed. Text without a
/// password in a URL is returned as it is.
pub(super) fn redact(text: &str) -> String {
    let Some(scheme_end) = text.find("://").map(|i| i + 3) else {
        return text.to_owned();
    };
    let rest = &text[scheme_end..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return text.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return text.to_owned();
    };
    format!(
        "{}{}:***{}",
        &text[..scheme_end],
        &authority[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_not_printed() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("--amqp-url=amqp://u:p@localhost"),
            "--amqp-url=amqp://u:***@localhost"
        );
        assert_eq!(redact("amqp://user@localhost/"), "amqp://user@localhost/");
        assert_eq!(redact("amqp://localhost/a:b@c"), "amqp://localhost/a:b@c");
        assert_eq!(redact("--rate"), "--rate");
    }

    #[test]
    fn only_an_ack_without_a_returned_message_counts_as_sent() {
        let failure = outcome(Ok(Confirmation::Nack(None))).err();
        assert_eq!(failure.map(|f| f.code), Some("AMQP_NACK".to_owned()));
        assert!(outcome(Ok(Confirmation::Ack(None))).is_ok());
        assert!(outcome(Ok(Confirmation::NotRequested)).is_err());
    }

    #[test]
    fn names_longer_than_a_short_string_are_refused() {
        assert!(check_names("cloudphone.events", "device.error").is_ok());
        assert!(check_names("", "device.error").is_err());
        assert!(check_names("cloudphone.events", &"x".repeat(256)).is_err());
    }
}
