//! Partition checkpoints on JetStream, in chunks, so a partition holding many open outages (a
//! big storm) still checkpoints: a NATS message is at most the server's `max_payload` (1 MiB
//! by default), about 25,000 open outages.
//!
//! A checkpoint's state is cut into chunks of `store.jetstream.snapshot_chunk_bytes`, stored
//! on `{P}.snapshots.<partition>.<generation>.<i>`, then a manifest on
//! `{P}.snapshots.<partition>` naming the generation (the event sequence the checkpoint
//! covers), the chunk count, the length and an xxh3 checksum. The manifest is written last,
//! and only while the owner's lease is valid, so a checkpoint cut short by a crash is never
//! read; chunks of other generations are purged after each manifest is stored. A manifest
//! whose chunks are missing or do not match (an old owner's late manifest naming purged
//! chunks) is counted (`snapshot_read`) and the partition replays from the start of the
//! events stream instead.
//!
//! A read goes to the stream's leader; one it does not answer within [`LEADER_WITHIN`] (a
//! leader being elected after a node's death) goes to whichever replica answers a direct
//! get, which may give an older checkpoint (see [`read_from_replicas`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use metrics::counter;

use super::Cluster;
use crate::log::{Checkpoint, Checkpoints, Lease, LogError, Partition};
use crate::telemetry;

/// The start of every manifest.
const MAGIC: &[u8; 4] = b"ORS1";
/// Manifest length: magic, generation, chunks, length, checksum.
const MANIFEST_LEN: usize = 4 + 8 + 4 + 8 + 8;

/// What a manifest says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    /// The generation: the last event sequence the snapshot covers.
    pub generation: u64,
    /// How many chunks.
    pub chunks: u32,
    /// Length of the encoded snapshot.
    pub length: u64,
    /// xxh3 of the encoded snapshot.
    pub checksum: u64,
}

impl Manifest {
    /// The manifest of `encoded`, cut into `chunk` bytes.
    pub fn of(generation: u64, encoded: &[u8], chunk: usize) -> Self {
        Self {
            generation,
            chunks: u32::try_from(encoded.len().div_ceil(chunk.max(1))).unwrap_or(u32::MAX),
            length: encoded.len() as u64,
            checksum: xxhash_rust::xxh3::xxh3_64(encoded),
        }
    }

    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(MANIFEST_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.generation.to_be_bytes());
        bytes.extend_from_slice(&self.chunks.to_be_bytes());
        bytes.extend_from_slice(&self.length.to_be_bytes());
        bytes.extend_from_slice(&self.checksum.to_be_bytes());
        bytes
    }

    /// Reads a manifest; `None` when `bytes` is not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != MANIFEST_LEN || &bytes[..4] != MAGIC {
            return None;
        }
        let u64_at = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        let chunks = bytes
            .get(12..16)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)?;
        Some(Self {
            generation: u64_at(4)?,
            chunks,
            length: u64_at(16)?,
            checksum: u64_at(24)?,
        })
    }

    /// Whether `joined` is the snapshot this manifest describes.
    pub fn matches(&self, joined: &[u8]) -> bool {
        joined.len() as u64 == self.length && xxhash_rust::xxh3::xxh3_64(joined) == self.checksum
    }
}

fn chunk_prefix(cluster: &Cluster, partition: u16) -> String {
    format!("{}.", cluster.names.snapshot_subject(partition))
}

fn chunk_subject(cluster: &Cluster, partition: u16, generation: u64, index: u32) -> String {
    format!("{}{generation}.{index}", chunk_prefix(cluster, partition))
}

/// Stores `checkpoint` of `partition`: chunks (publishes pipelined, all acknowledged), then
/// the manifest, then purges other generations' chunks. `may_finish` is asked before the
/// manifest is written (the lease window).
async fn write(
    cluster: &Cluster,
    partition: u16,
    checkpoint: &Checkpoint,
    may_finish: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let encoded = &checkpoint.state;
    let chunk = cluster.settings.snapshot_chunk_bytes;
    let manifest = Manifest::of(checkpoint.position, encoded, chunk);
    let mut acks = Vec::new();
    for (index, part) in (0u32..).zip(encoded.chunks(chunk.max(1))) {
        let subject = chunk_subject(cluster, partition, manifest.generation, index);
        acks.push(
            cluster
                .js
                .publish(subject, Bytes::copy_from_slice(part))
                .await?,
        );
    }
    for ack in
        futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await
    {
        ack?;
    }
    anyhow::ensure!(
        may_finish(),
        "partition {partition}: the lease window passed while its snapshot was written"
    );
    cluster
        .js
        .publish(
            cluster.names.snapshot_subject(partition),
            Bytes::from(manifest.encode()),
        )
        .await?
        .await?;
    purge_other_generations(cluster, partition, manifest.generation).await
}

async fn purge_other_generations(
    cluster: &Cluster,
    partition: u16,
    keep: u64,
) -> anyhow::Result<()> {
    let prefix = chunk_prefix(cluster, partition);
    let stream = cluster
        .js
        .get_stream(cluster.names.snapshots_stream())
        .await?;
    let mut subjects = stream.info_with_subjects(format!("{prefix}>")).await?;
    let mut stale = std::collections::BTreeSet::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _) = subject?;
        if let Some(generation) = subject
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('.').next())
            .and_then(|generation| generation.parse::<u64>().ok())
            && generation != keep
        {
            stale.insert(generation);
        }
    }
    for generation in stale {
        stream
            .purge()
            .filter(format!("{prefix}{generation}.>"))
            .await?;
    }
    Ok(())
}

/// A checkpoint read back.
#[derive(Debug)]
enum Restored {
    /// The last checkpoint (none when the partition never had one).
    Found(Option<Checkpoint>),
    /// The manifest names chunks that are gone or do not match it; the reason.
    Unusable(String),
}

/// Reads `partition`'s last checkpoint. Errors are the cluster's (worth trying again).
async fn read(cluster: &Cluster, partition: u16) -> anyhow::Result<Restored> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let stream = cluster
        .js
        .get_stream(cluster.names.snapshots_stream())
        .await?;
    let manifest = match stream
        .get_last_raw_message_by_subject(&cluster.names.snapshot_subject(partition))
        .await
    {
        Ok(message) => Manifest::decode(&message.payload)
            .ok_or_else(|| anyhow::anyhow!("partition {partition}: not a snapshot manifest"))?,
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
            return Ok(Restored::Found(None));
        }
        Err(err) => anyhow::bail!("reading partition {partition}'s snapshot manifest: {err}"),
    };
    let reads = (0..manifest.chunks).map(|index| {
        let subject = chunk_subject(cluster, partition, manifest.generation, index);
        let stream = &stream;
        async move { stream.get_last_raw_message_by_subject(&subject).await }
    });
    let mut joined = Vec::with_capacity(usize::try_from(manifest.length).unwrap_or(0));
    for (index, chunk) in futures::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        match chunk {
            Ok(chunk) => joined.extend_from_slice(&chunk.payload),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Restored::Unusable(format!(
                    "chunk {index} of snapshot {} is gone",
                    manifest.generation
                )));
            }
            Err(err) => anyhow::bail!(
                "partition {partition}: chunk {index} of snapshot {}: {err}",
                manifest.generation
            ),
        }
    }
    if !manifest.matches(&joined) {
        return Ok(Restored::Unusable(format!(
            "snapshot {} does not match its manifest",
            manifest.generation
        )));
    }
    Ok(Restored::Found(Some(Checkpoint {
        position: manifest.generation,
        state: joined,
    })))
}

/// Reads `partition`'s last checkpoint from whichever replica answers a direct get (the
/// stream allows them), for when its leader does not answer: after a node's death a stream
/// it led has no leader for 4–9 s, while the followers answer direct gets within about 2 s.
/// A follower may be behind: its checkpoint may be an older one, which is as good (the events
/// after it are replayed, and the replay guards answer the alerts already stored). Anything
/// that cannot be a whole checkpoint (no manifest, a chunk missing or not matching: the
/// chunks may come from replicas behind or ahead of the manifest's) is an error to try again,
/// never "no checkpoint" nor "unusable", which only the leader may say.
async fn read_from_replicas(cluster: &Cluster, partition: u16) -> anyhow::Result<Checkpoint> {
    let stream = cluster
        .js
        .get_stream_no_info(cluster.names.snapshots_stream())
        .await?;
    let manifest = stream
        .direct_get_last_for_subject(cluster.names.snapshot_subject(partition))
        .await?;
    let manifest = Manifest::decode(&manifest.payload)
        .ok_or_else(|| anyhow::anyhow!("partition {partition}: not a snapshot manifest"))?;
    let reads = (0..manifest.chunks).map(|index| {
        let subject = chunk_subject(cluster, partition, manifest.generation, index);
        let stream = &stream;
        async move { stream.direct_get_last_for_subject(subject).await }
    });
    let mut joined = Vec::with_capacity(usize::try_from(manifest.length).unwrap_or(0));
    for (index, chunk) in futures::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        let chunk = chunk.map_err(|err| {
            anyhow::anyhow!(
                "chunk {index} of snapshot {} from a replica: {err}",
                manifest.generation
            )
        })?;
        joined.extend_from_slice(&chunk.payload);
    }
    anyhow::ensure!(
        manifest.matches(&joined),
        "snapshot {} from the replicas does not match its manifest",
        manifest.generation
    );
    Ok(Checkpoint {
        position: manifest.generation,
        state: joined,
    })
}

/// How long a checkpoint read waits for the stream's leader before it asks the replicas.
const LEADER_WITHIN: Duration = Duration::from_secs(1);

/// The checkpoints of a cluster's partitions.
#[derive(Debug, Clone)]
pub struct JsCheckpoints {
    cluster: Arc<Cluster>,
}

impl JsCheckpoints {
    /// The checkpoints in `cluster`.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

#[async_trait]
impl Checkpoints for JsCheckpoints {
    async fn save(
        &self,
        partition: Partition,
        checkpoint: &Checkpoint,
        lease: &Lease,
    ) -> Result<(), LogError> {
        write(&self.cluster, partition, checkpoint, || lease.valid())
            .await
            .map_err(|err| {
                counter!(telemetry::JETSTREAM_ERRORS, "operation" => "snapshot").increment(1);
                LogError::Unavailable(format!("partition {partition}'s checkpoint: {err:#}"))
            })
    }

    async fn load(&self, partition: Partition) -> Result<Option<Checkpoint>, LogError> {
        let from_leader = tokio::time::timeout(LEADER_WITHIN, read(&self.cluster, partition))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "the stream's leader did not answer within {LEADER_WITHIN:?}"
                ))
            });
        let restored = match from_leader {
            Ok(restored) => Ok(restored),
            Err(err) => match read_from_replicas(&self.cluster, partition).await {
                Ok(found) => {
                    tracing::info!(partition, position = found.position, leader = %format!("{err:#}"), "checkpoint read from a replica");
                    Ok(Restored::Found(Some(found)))
                }
                Err(replicas) => Err(anyhow::anyhow!("{err:#}; from the replicas: {replicas:#}")),
            },
        };
        match restored {
            Ok(Restored::Found(found)) => Ok(found),
            Ok(Restored::Unusable(why)) => {
                // Correct but slow: every retained event of the partition is replayed.
                counter!(telemetry::JETSTREAM_ERRORS, "operation" => "snapshot_read").increment(1);
                tracing::warn!(partition, %why, "checkpoint unusable; replaying the partition from its first retained event");
                Ok(None)
            }
            Err(err) => Err(LogError::Unavailable(format!(
                "reading partition {partition}'s checkpoint: {err:#}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_as_written() {
        let manifest = Manifest::of(42, &[7u8; 2500], 1000);
        assert_eq!(manifest.chunks, 3);
        assert_eq!(Manifest::decode(&manifest.encode()), Some(manifest));
    }

    #[test]
    fn an_empty_snapshot_has_no_chunk_and_matches_nothing_else() {
        let manifest = Manifest::of(0, &[], 1000);
        assert_eq!(manifest.chunks, 0);
        assert!(manifest.matches(&[]));
        assert!(!manifest.matches(&[0]));
    }

    #[test]
    fn chunks_joined_wrongly_do_not_match() {
        // No two chunks alike: the high byte of the position is mixed in.
        let encoded: Vec<u8> = (0..3000u32).map(|i| (i ^ (i >> 8)) as u8).collect();
        let manifest = Manifest::of(1, &encoded, 1024);
        let mut swapped = encoded[1024..2048].to_vec();
        swapped.extend_from_slice(&encoded[..1024]);
        swapped.extend_from_slice(&encoded[2048..]);
        assert!(manifest.matches(&encoded));
        assert!(!manifest.matches(&swapped));
        assert!(!manifest.matches(&encoded[..2048]));
    }

    #[test]
    fn other_bytes_are_not_a_manifest() {
        assert_eq!(Manifest::decode(b"ORS1"), None);
        assert_eq!(Manifest::decode(&[0u8; MANIFEST_LEN]), None);
    }
}
