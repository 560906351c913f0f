//! Client and operator tools shipped with the relay: `outage-relay publish` (sends device
//! events the way a CSP adapter does), `outage-relay dno-sink` (the reference DNO receiver, in
//! push or subscribe mode), `outage-relay health` (a gRPC health check for containers) and
//! `outage-relay check-config` (validates a configuration before a restart).

pub mod check_config;
pub mod health;
pub mod publish;
pub mod sink;
pub mod tls_args;
