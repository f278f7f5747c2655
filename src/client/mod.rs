//! The command-line clients: real gRPC clients on the generated stubs, for people (`subscribe`,
//! `publish`), and `token`, which mints development tokens. The load generator is a crate of its
//! own (`bench/`, binary `notify-bench`) that uses [`authorized`], [`mint_with`] and
//! [`secret_or_dev`] from here.
//!
//! Owns: argument parsing of the client subcommands and their output formats. Does not own
//! anything of the server; these talk to it over the network like any other client.

mod token;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use tonic::transport::{Channel, Endpoint};

pub use token::{TokenArgs, mint_with, secret_or_dev, token};

use crate::pb::{
    self, notification_service_client::NotificationServiceClient, publish_request::Body,
};

/// Arguments of `subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The server's gRPC URL.
    #[arg(long, env = "NOTIFY_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Whose events: by default the token's own user; another user's id or `*` (every user,
    /// the firehose) need an admin token.
    #[arg(long, env = "NOTIFY_USER")]
    pub user: Option<String>,
    /// Event types, exact or `family.*`, comma-separated (default: all).
    #[arg(long, env = "NOTIFY_TYPES", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events about this device.
    #[arg(long, env = "NOTIFY_DEVICE")]
    pub device: Option<String>,
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
    let channel = Endpoint::from_shared(server.to_owned())
        .with_context(|| format!("bad server URL {server:?}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    Ok(NotificationServiceClient::new(channel))
}

/// A refusal or a stream's end as one line: the code's name and the server's reason
/// (`PermissionDenied: may only subscribe to your own events`).
fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
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

/// `subscribe`: prints every message of the stream as one line of canonical proto3 JSON.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).context("descriptor set")?;
    let descriptor = pool
        .get_message_by_name("cloudphone.notify.v1.SubscribeResponse")
        .context("SubscribeResponse descriptor")?;
    let mut client = connect(&args.server).await?;
    let request = pb::SubscribeRequest {
        event_types: args.types,
        device_id: args.device.unwrap_or_default(),
        user_id: args.user.unwrap_or_default(),
        admin_feed: args.admin_feed,
        resume_after: args.resume_after.unwrap_or_default(),
    };
    let mut stream = client
        .subscribe(authorized(request, args.token.as_deref())?)
        .await
        .map_err(refused)?
        .into_inner();
    let options = SerializeOptions::new();
    while let Some(message) = stream.message().await.map_err(refused)? {
        let dynamic =
            DynamicMessage::decode(descriptor.clone(), message.encode_to_vec().as_slice())?;
        let mut line = serde_json::Serializer::new(Vec::new());
        dynamic.serialize_with_options(&mut line, &options)?;
        println!("{}", String::from_utf8_lossy(&line.into_inner()));
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
