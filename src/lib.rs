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
//!  CSP adapters ──gRPC Ingest──▶ ingest ──(validate, split by partition)──▶ owner × P
//!                                                   state machine + timers + dedup + route
//!                                  (embedded: the owner stamps, applies, appends the record)
//!                                                                    │ alerts, in order
//!  ══════════════════════ the seam: crate::log ══════════════════════▼═══════════════════
//!   EventLog (records by partition) · AlertLog (per subscriber) · Checkpoints · Ownership
//!   · Peers      embedded: segment files + group commit   JetStream: streams + leases
//!  ═══════════════════════════════════════════════════════════════════╤═══════════════════
//!                                                                    │
//!            deliver::feed (Subscribe/Ack) · deliver::push (AlertReceiver) · sla watch
//!                              admin · telemetry (Prometheus)
//! ```
//!
//! - [`ingest`]: gRPC `Ingest`; validates events, splits batches by partition, answers one
//!   `BatchAck` per batch once every part is durable.
//! - [`owner`]: one loop per owned partition: the pure [`owner::state`] (the
//!   [`debounce`] state machine, timers by log time, event-id de-duplication), routing, and
//!   the appends, checkpoints and replay around it.
//! - [`log`]: the seam (traits and module-doc spec), its codecs, the conformance suite, and
//!   its implementations: in memory ([`log::memory`]), embedded ([`log::local`]), JetStream
//!   ([`log::jetstream`]: several instances sharing a NATS JetStream cluster, partitions and
//!   subscribers owned through leases), and the single-instance ownership ([`log::single`]).
//! - [`route`]: device registry and routing table.
//! - [`deliver`]: subscriber feeds (server streaming with resume and cumulative acks) and push
//!   delivery to DNO-hosted receivers, over the alert log.
//! - [`summary`]: storm summaries beside the alerts: owners' loss and restoration notes,
//!   per-area counts and inferences (the pure [`summary::Summariser`]), sent every interval
//!   on `AlertFeed.WatchSummaries`.
//! - [`sla`]: the deadline watch, one per subscriber.
//! - [`timers`]: the due-time queues the owners and SLA watches fire from.
//! - [`admin`]: the operator gRPC service.
//! - [`report`]: `outage-relay report`, the SLA compliance report from the delivery journal.
//! - [`replay`]: `outage-relay replay`, the accepted events of a window re-run through the
//!   owner's decisions on a simulated clock, diffed against the alerts the relay emitted.
//! - [`security`]: mutual TLS, certificate identities and roles, and the per-call checks and
//!   limits in front of every service.
//! - [`telemetry`]: metric names and handles, and the `/metrics` listener (HTTPS, with or
//!   without client certificates, or plaintext where allowed).
//! - [`runtime`]: supervised tasks.
//! - [`server`]: wires the stages together and runs them until shutdown.
//! - [`bench`](mod@bench): `outage-relay bench`, the end-to-end SLA benchmark against the real binary.

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod debounce;
pub mod deliver;
pub mod domain;
pub mod error;
pub mod ingest;
pub mod log;
pub mod owner;
pub mod proto;
pub mod replay;
pub mod report;
pub mod route;
pub mod runtime;
pub mod security;
pub mod server;
pub mod sla;
pub mod summary;
pub mod telemetry;
pub mod timers;
pub mod tools;
