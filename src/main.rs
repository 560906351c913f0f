//! The `outage-relay` binary.
fn main() {}
