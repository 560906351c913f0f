//! Client tools shipped with the relay: `outage-relay publish` (sends device events the way a
//! CSP adapter does) and `outage-relay dno-sink` (the reference DNO receiver, in push or
//! subscribe mode).

pub mod publish;
pub mod sink;
