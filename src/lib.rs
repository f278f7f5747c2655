//! notify-backbone: a schema-first gRPC streaming notification backbone.
//!
//! Events flow top to bottom through these modules; each knows only its neighbours' plain
//! Rust types (see `docs/architecture.md`):
//!
//! | module        | owns                                                                      |
//! |---------------|---------------------------------------------------------------------------|
//! | [`pb`]        | the generated protobuf types of `proto/` (the public contract)            |
//! | [`schema`]    | producer JSON (every wire shape) or a typed event → validated `pb::Event`  |
//! | [`ingest`]    | AMQP: topology, consume, ack after acceptance, dead letters, reconnect;   |
//! |               | listing, replaying and dropping dead letters                              |
//! | [`store`]     | the journal: positions, cursors, dedupe by event id                       |
//! | [`write`]     | the write contract: the `Writer` trait, its receipt and its errors        |
//! | [`sequencer`] | the single writer: journal append in batches, then hand-off to the hub    |
//! | [`cluster`]   | cluster mode: the journal on a RabbitMQ stream, every node's replica and   |
//! |               | follower, the single writer, `Publish` on any node                         |
//! | [`auth`]      | the platform's JWT → `Principal`; who may subscribe to what, see, publish |
//! | [`hub`]       | routing index, filters, per-subscriber bounded queues, overflow policy    |
//! | [`grpc`]      | tonic services (thin adapters), grpc-web, TLS, limits, `Status` map,      |
//! |               | the port's connections ([`grpc::connections`]), the live notification     |
//! |               | page served at `/` (`--web`, [`grpc::page`])                              |
//! | [`telemetry`] | logging setup, Prometheus metrics and the `/metrics` endpoint             |
//! | [`otel`]      | OpenTelemetry tracing: OTLP export, an event's spans in its trace         |
//! | [`config`]    | every knob of `serve`: CLI flag + env var + documented default, grouped   |
//! |               | as `--help` shows them, each group beside the settings it produces        |
//! | [`app`]       | wires the stages together, owns shutdown and task tracking                |
//! | [`client`]    | the command-line clients: `subscribe`, `history`, `publish`, `token`,     |
//! |               | `dead-letters`                                                            |
//! | [`cli`]       | the command line's top level: the subcommands, `completions`              |
//!
//! The load generator is not here: it is `bench/` (`notify-bench`), a crate of its own in this
//! workspace that uses this library as any client would.

pub mod app;
pub mod auth;
pub(crate) mod backoff;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub(crate) mod grpc;
pub(crate) mod hub;
pub mod ingest;
pub mod otel;
pub mod pb;
pub mod schema;
pub(crate) mod sequencer;
pub mod store;
pub mod telemetry;
pub mod write;
