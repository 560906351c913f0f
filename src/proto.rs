//! Code generated from `proto/outage_relay/v1` (package `outage_relay.v1`), and the file
//! descriptor set that server reflection serves.
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("outage_relay.v1");

/// Encoded `FileDescriptorSet` of every relay proto, for `grpc.reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("outage_relay_descriptor");
