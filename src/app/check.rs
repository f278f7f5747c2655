//! `serve --check`: the configuration validated as `serve` would read it, without starting,
//! binding or creating anything; in cluster mode, what the broker holds under the cluster's
//! names.
//!
//! Owns: what is checked and the summary printed. Does not own: reading the key and TLS files
//! (`credentials`, the same functions `serve` uses), inspecting the broker (`cluster::inspect`).

use super::credentials::{configured_verifier, tls_identity};
use crate::{
    cluster,
    config::{JournalKind, ServeConfig},
    telemetry::Chain,
};

/// How long `serve --check` waits for the broker's account of the cluster's names.
const BROKER_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `serve --check`: validates the configuration as `serve` would read it (the key and TLS
/// files, the broker URL's syntax, the journal directory) without starting, binding or
/// creating anything. Returns a one-line summary of what would run; in cluster mode, then what
/// the broker holds under the stream and ingest queue names (read, never written; an
/// unreachable broker is reported, not a failure), so names already in use show before a node
/// joins them.
pub async fn check(config: &ServeConfig) -> anyhow::Result<String> {
    let tokens = match configured_verifier(&config.auth)? {
        Some(_) => "tokens checked with the configured key",
        None => "DEVELOPMENT MODE: tokens signed with a generated secret",
    };
    if let Some(identity) = tls_identity(&config.tls)? {
        for (flag, pem) in [
            ("--tls-cert", &identity.cert_pem),
            ("--tls-key", &identity.key_pem),
        ] {
            anyhow::ensure!(
                pem.windows(11).any(|w| w == b"-----BEGIN "),
                "{flag} is not PEM (no -----BEGIN line)"
            );
        }
    }
    if let Some(url) = &config.amqp.amqp_url {
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|error| anyhow::anyhow!("--amqp-url does not parse: {error}"))?;
    }
    let dir = &config.journal.data_dir;
    match std::fs::metadata(dir) {
        Ok(meta) => anyhow::ensure!(
            meta.is_dir(),
            "--data-dir {} is not a directory",
            dir.display()
        ),
        Err(_) => {
            // Created at start-up: its nearest existing ancestor must be a directory.
            let parent = dir
                .ancestors()
                .skip(1)
                .find(|a| a.as_os_str().is_empty() || a.exists())
                .map(|a| {
                    if a.as_os_str().is_empty() {
                        std::path::Path::new(".")
                    } else {
                        a
                    }
                });
            anyhow::ensure!(
                parent.is_some_and(std::path::Path::is_dir),
                "--data-dir {} cannot be created: no directory above it",
                dir.display()
            );
        }
    }
    let ingest = match (&config.amqp.amqp_url, config.cluster.journal) {
        (None, JournalKind::RabbitmqStream) => {
            anyhow::bail!("--journal rabbitmq-stream needs --amqp-url (AMQP_URL)")
        }
        (Some(url), JournalKind::RabbitmqStream) => format!(
            "cluster mode: journal stream {} and ingest queue {} on {}",
            config.cluster.stream,
            config.cluster.ingest_queue,
            crate::ingest::redacted(url)
        ),
        (Some(url), JournalKind::Redb) => format!("ingest from {}", crate::ingest::redacted(url)),
        (None, JournalKind::Redb) => "embedded (Publish only)".to_owned(),
    };
    let summary = format!(
        "configuration OK: gRPC on {}, metrics on {}, journal in {}, {ingest}, {tokens}",
        config.listen,
        config.metrics_listen,
        config.journal.data_dir.display()
    );
    Ok(match (&config.amqp.amqp_url, config.cluster.journal) {
        (Some(url), JournalKind::RabbitmqStream) => {
            format!("{summary}\n{}", check_cluster_names(config, url).await)
        }
        _ => summary,
    })
}

/// What the broker holds under the cluster's names, or why that is not known.
async fn check_cluster_names(config: &ServeConfig, url: &str) -> String {
    let broker = crate::ingest::redacted(url);
    let (node_id, settings) = (
        config.amqp.node_id(),
        config.cluster.stream_settings(&config.journal),
    );
    let inspected = cluster::inspect(url, &node_id, &settings, &config.cluster.ingest_queue);
    match tokio::time::timeout(BROKER_CHECK_TIMEOUT, inspected).await {
        Ok(Ok(report)) => format!("broker {broker}:\n{report}"),
        Ok(Err(error @ cluster::ClusterError::Connect(_))) => {
            let error = Chain(&error);
            format!("broker {broker}: unreachable ({error}); the names are not checked")
        }
        Ok(Err(error)) => format!(
            "broker {broker}: the names could not be checked: {}",
            Chain(&error)
        ),
        Err(_) => format!(
            "broker {broker}: no answer within {BROKER_CHECK_TIMEOUT:?}; the names are not checked"
        ),
    }
}
