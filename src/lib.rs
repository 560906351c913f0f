//! # outage-relay
//!
//! Tells electricity Distribution Network Operators (DNOs) within seconds that a smart-metered
//! supply has gone off, and when it comes back, meeting the Smart Energy Code deadlines: a Power
//! Outage Alert (POA) for any outage longer than the 3-minute debounce, delivered within 60 s
//! of becoming due, and a Power Restoration Alert (PRA) within 60 s of restoration.
//!
//! ## Pipeline
//!
//! ```text
//!  CSP adapters ──gRPC Ingest──▶ ingest ──(validate, shard by device)──▶ debounce shard × N
//!                                                                           │ state machine +
//!                                                                           │ timing wheel
//!                                                                           ▼
//!                      route (registry: device → MPAN → distributor → subscriber, or park)
//!                                                                           │
//!                                                                           ▼
//!                          store (per-subscriber alert log, cursors, parked alerts)
//!                                       │                         │
//!                     deliver::feed (Subscribe/Ack)     deliver::push (AlertReceiver)
//!                                       │                         │
//!                                       └──────▶ sla watch ◀──────┘   telemetry (Prometheus)
//! ```
//!
//! - [`ingest`]: gRPC `Ingest`; validates events, splits batches by shard, answers one
//!   `BatchAck` per batch once every event is applied.
//! - [`debounce`]: the pure per-supply-point state machine ([`debounce::machine`]) and the
//!   single-writer shard task that drives it with a `DelayQueue` timing wheel.
//! - [`route`]: device registry and routing table.
//! - [`commit`]: the single writer: routes each batch's alerts and commits batches, acks and
//!   maintenance to the store in groups, then answers publishers and announces new alerts.
//! - [`store`]: the storage interface and its embedded durable (redb) and in-memory
//!   implementations: alert logs, cursors, parked alerts, open outages, tombstones, event keys.
//! - [`deliver`]: subscriber feeds (server streaming with resume and cumulative acks) and push
//!   delivery to DNO-hosted receivers.
//! - [`sla`]: the deadline watchdog.
//! - [`admin`]: the operator gRPC service.
//! - [`cluster`]: the JetStream backend: several instances sharing a NATS JetStream cluster,
//!   partitions owned through leases, alerts in replicated per-subscriber streams.
//! - [`security`]: mutual TLS, certificate identities and roles, and the per-call checks and
//!   limits in front of every service.
//! - [`telemetry`]: metric names and handles.
//! - [`server`]: wires the stages together and runs them until shutdown.
//! - [`bench`](mod@bench): `outage-relay bench`, the end-to-end SLA benchmark against the real binary.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod debounce;
pub mod deliver;
pub mod domain;
pub mod error;
pub mod ingest;
pub mod proto;
pub mod route;
pub mod security;
pub mod server;
pub mod sla;
pub mod store;
pub mod telemetry;
pub mod tools;
