//! notify-backbone: a schema-first gRPC streaming notification backbone.
//!
//! The modules, from the entry points at the top to the leaves at the bottom. A module uses
//! only modules below it in this table, never one above (`tests/module_map.rs` checks it, and
//! that the files inside one folder do not import each other in a circle either); each module's
//! `//!` header says what it owns and what it does not. The data flow and the delivery
//! promises are in `docs/architecture.md`.
//!
//! | module        | owns                                                                      |
//! |---------------|---------------------------------------------------------------------------|
//! | [`app`]       | wires the stages together (one node or a cluster node), the background    |
//! |               | tasks, `serve --check`, shutdown by one deadline                          |
//! | [`cli`]       | the command line's top level: the subcommands, `completions`              |
//! | [`config`]    | every knob of `serve`: CLI flag + env var + documented default, grouped   |
//! |               | as `--help` shows them, each group beside the settings it produces        |
//! | [`client`]    | the command-line clients: `subscribe`, `history`, `publish`, `inbox`,     |
//! |               | `token`, `dead-letters`                                                   |
//! | [`cluster`]   | cluster mode: the journal on a RabbitMQ stream, every node's replica and   |
//! |               | follower, the single writer, `Publish` on any node                         |
//! | `grpc`        | tonic services (thin adapters), grpc-web, TLS, limits, the one `Status`   |
//! |               | map, the port's connections, the live notification page served at `/`    |
//! | [`ingest`]    | AMQP: topology, consume, ack after acceptance, dead letters, reconnect;   |
//! |               | listing, replaying and dropping dead letters                              |
//! | `sequencer`   | the single node's writer: journal append in batches, then the hub         |
//! | `hub`         | routing index, filters, per-subscriber bounded queues, overflow policy,   |
//! |               | replay on resume, history pages                                           |
//! | [`write`]     | the write contract: the `Writer` trait, its receipt and its error         |
//! | [`auth`]      | the platform's JWT → `Principal`; who may subscribe to what, see, publish |
//! | [`otel`]      | OpenTelemetry tracing: OTLP export, an event's spans in its trace         |
//! | [`telemetry`] | logging setup, Prometheus metrics and the `/metrics` endpoint             |
//! | [`schema`]    | producer JSON (every wire shape) or a typed event → validated `pb::Event`  |
//! | [`store`]     | the journal: positions, cursors, dedupe by event id; the inbox's state,   |
//! |               | written in the transaction that stores the events                         |
//! | [`inbox`]     | the inbox's model: item states, exact counts, marks, updates, preferences |
//! | [`pb`]        | the generated protobuf types of `proto/` (the public contract)            |
//! | `pipeline`    | the event path's own thread: a current-thread runtime for the ingest, the |
//! |               | writer, the commit and the fan-out; the writer's pause between commits    |
//! | `backoff`     | the one retry policy: exponential pauses with jitter, a cap, a reset      |
//!
//! `grpc`, `sequencer`, `hub`, `pipeline` and `backoff` are internal (`pub(crate)`): nothing outside the
//! crate uses them. The load generator is not here: it is `bench/` (`notify-bench`), a crate of
//! its own in this workspace that uses this library as any client would.

pub mod app;
pub mod auth;
pub(crate) mod backoff;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub(crate) mod grpc;
pub(crate) mod hub;
pub mod inbox;
pub mod ingest;
pub mod otel;
pub mod pb;
pub(crate) mod pipeline;
pub mod schema;
pub(crate) mod sequencer;
pub mod store;
pub mod telemetry;
pub mod write;
