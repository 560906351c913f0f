//! Spreading the events streams' leaders over the nodes.
//!
//! A stream's leader takes every write to it, so the events streams only share the ingest
//! load when their leaders are on different nodes. Raft elects leaders where it happens to,
//! often two on one node. At start, an instance moves a leader off a node that leads more
//! events streams than another replica of that stream does: it asks the stream to step down
//! in favour of that replica (`placement.preferred`, nats-server 2.11 and later; older
//! servers elect at random, so it looks again), a few rounds at most. It never fails the
//! start: a cluster it cannot balance just runs with the leaders where they are.
//!
//! Later, every `store.jetstream.rebalance_interval` (plus a part set by the instance's
//! name, so that instances do not all look at once), it looks again and makes at most one
//! such move: a node that died and came back leads nothing until then. A step-down costs the
//! stream an election (a publish stall of well under a second), so it is made only when one
//! node leads at least two more events streams than a replica of one of them.
//!
//! Each events stream's partition leases bucket (`{P}_LEASES_<index>`) is led from the same
//! node as the stream, at start and after every such look: a node's death then ends the
//! leases of the partitions whose events it stopped taking anyway, and no others.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::Context;
use tokio_util::sync::CancellationToken;

use super::Names;

/// Rounds of looking and moving one leader, at most.
const ROUNDS: usize = 8;
/// How long to wait for a new leader after a step-down.
const ELECTION_WAIT: Duration = Duration::from_secs(5);

/// One stream's leader and the replicas that could lead it instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The stream.
    pub stream: String,
    /// Its leader, if it has one.
    pub leader: Option<String>,
    /// Its other replicas that are current and online.
    pub followers: Vec<String>,
}

/// The step-down that evens the leaders out most, if any does: the stream whose leader leads
/// the most streams, moved to its follower leading the fewest, when that one leads at least
/// two fewer (so that the move makes the spread better, never just different).
pub fn next_move(placements: &[Placement]) -> Option<(String, String)> {
    let mut led: BTreeMap<&str, usize> = BTreeMap::new();
    for placement in placements {
        for follower in &placement.followers {
            led.entry(follower).or_default();
        }
        if let Some(leader) = &placement.leader {
            *led.entry(leader).or_default() += 1;
        }
    }
    placements
        .iter()
        .filter_map(|placement| {
            let leader = placement.leader.as_deref()?;
            let from = led[leader];
            let (to, count) = placement
                .followers
                .iter()
                .map(|follower| (follower, led[follower.as_str()]))
                .min_by_key(|(name, count)| (*count, *name))?;
            (count + 2 <= from).then(|| (from, placement.stream.clone(), to.clone()))
        })
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1)))
        .map(|(_, stream, to)| (stream, to))
}

/// The step-downs that bring each partition leases bucket's leader to its events stream's
/// leader's node, `leases[i]` going with `events[i]`: (bucket's stream, node) for each bucket
/// led elsewhere (or not at all) that has a current replica on that node.
pub fn colocations(events: &[Placement], leases: &[Placement]) -> Vec<(String, String)> {
    events
        .iter()
        .zip(leases)
        .filter_map(|(events, leases)| {
            let node = events.leader.as_ref()?;
            (leases.leader.as_ref() != Some(node) && leases.followers.contains(node))
                .then(|| (leases.stream.clone(), node.clone()))
        })
        .collect()
}

/// The events streams' names, by index.
fn events_streams(names: &Names) -> Vec<String> {
    (0..names.event_stream_count())
        .map(|index| names.events_stream(index))
        .collect()
}

/// The streams of the partition leases buckets, by events stream index.
fn lease_streams(names: &Names) -> Vec<String> {
    (0..names.event_stream_count())
        .map(|index| format!("KV_{}", names.partition_leases_bucket(index)))
        .collect()
}

/// Reads where each of `streams`' leader is.
async fn placements(js: &Context, streams: &[String]) -> Option<Vec<Placement>> {
    let mut placements = Vec::new();
    for name in streams {
        let info = match js.get_stream(name).await {
            Ok(mut stream) => stream.info().await.ok()?.clone(),
            Err(err) => {
                tracing::debug!(%err, stream = %name, "reading a stream's leader");
                return None;
            }
        };
        let cluster = info.cluster?;
        placements.push(Placement {
            stream: name.clone(),
            leader: cluster.leader,
            followers: cluster
                .replicas
                .into_iter()
                .filter(|peer| peer.current && !peer.offline)
                .map(|peer| peer.name)
                .collect(),
        });
    }
    Some(placements)
}

/// Asks `stream`'s leader to step down in favour of `to` (logging `why`; a server that takes
/// no preference is asked for a plain step-down), and waits for an election.
async fn step_down(js: &Context, stream: &str, to: &str, why: &str) {
    let subject = format!("STREAM.LEADER.STEPDOWN.{stream}");
    let preferred = serde_json::json!({ "placement": { "preferred": to } });
    let mut answer: Result<serde_json::Value, _> = js.request(subject.clone(), &preferred).await;
    if answer
        .as_ref()
        .is_ok_and(|answer| answer.get("error").is_some())
    {
        // A server before 2.11 takes no preference: a plain step-down, to whichever
        // replica wins the election (the caller looks again).
        answer = js.request(subject, &serde_json::json!({})).await;
    }
    match answer {
        Ok(answer) if answer.get("error").is_none() => {
            tracing::info!(stream, to, "moving a stream's leader {why}");
        }
        Ok(answer) => {
            tracing::debug!(stream, %answer, "step-down refused");
            return;
        }
        Err(err) => {
            tracing::debug!(stream, %err, "step-down request");
            return;
        }
    }
    let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(mut handle) = js.get_stream(stream).await
            && let Ok(info) = handle.info().await
            && info.cluster.as_ref().is_some_and(|c| c.leader.is_some())
        {
            return;
        }
    }
}

/// Moves events stream leaders until they are spread as evenly as their replicas allow, or
/// [`ROUNDS`] have passed; then brings the partition leases buckets' leaders to them.
pub async fn spread(js: &Context, names: &Names) {
    let events = events_streams(names);
    for _ in 0..ROUNDS {
        if events.len() < 2 {
            break;
        }
        let Some(placements) = placements(js, &events).await else {
            break;
        };
        let Some((stream, to)) = next_move(&placements) else {
            let leaders: Vec<String> = placements
                .iter()
                .map(|p| format!("{}={}", p.stream, p.leader.as_deref().unwrap_or("none")))
                .collect();
            tracing::info!(leaders = %leaders.join(","), "events stream leaders");
            break;
        };
        step_down(js, &stream, &to, "to spread the ingest load").await;
    }
    for _ in 0..ROUNDS {
        if colocate(js, names).await == 0 {
            return;
        }
    }
}

/// Makes the step-downs [`colocations`] asks for; how many it asked.
async fn colocate(js: &Context, names: &Names) -> usize {
    let (Some(events), Some(leases)) = (
        placements(js, &events_streams(names)).await,
        placements(js, &lease_streams(names)).await,
    ) else {
        return 0;
    };
    let moves = colocations(&events, &leases);
    for (stream, to) in &moves {
        step_down(js, stream, to, "to its events stream's leader").await;
    }
    moves.len()
}

/// Every `every` (plus up to a quarter of it, set by the instance's name), makes the one
/// move that evens the events streams' leaders out most, if any does, and brings the lease
/// buckets' leaders to them, until `stop`; `every` of zero: never.
pub async fn keep_spread(
    js: Context,
    names: Names,
    instance: &str,
    every: Duration,
    stop: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    let share = (xxhash_rust::xxh3::xxh3_64(instance.as_bytes()) % 1000) as f64 / 4000.0;
    let jitter = every.mul_f64(share);
    let events = events_streams(&names);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every + jitter) => {}
        }
        if events.len() > 1
            && let Some(placements) = placements(&js, &events).await
            && let Some((stream, to)) = next_move(&placements)
        {
            tracing::info!(%stream, %to, "events stream leaders uneven; moving one");
            step_down(&js, &stream, &to, "to spread the ingest load").await;
        }
        colocate(&js, &names).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(stream: &str, leader: &str, followers: &[&str]) -> Placement {
        Placement {
            stream: stream.to_owned(),
            leader: Some(leader.to_owned()),
            followers: followers.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    #[test]
    fn a_node_leading_two_streams_gives_one_to_a_node_leading_none() {
        let placements = [
            placement("E0", "n1", &["n2", "n3"]),
            placement("E1", "n1", &["n2", "n3"]),
            placement("E2", "n2", &["n1", "n3"]),
        ];
        assert_eq!(next_move(&placements), Some(("E0".into(), "n3".into())));
    }

    #[test]
    fn leaders_already_spread_stay() {
        let placements = [
            placement("E0", "n1", &["n2", "n3"]),
            placement("E1", "n2", &["n1", "n3"]),
            placement("E2", "n3", &["n1", "n2"]),
        ];
        assert_eq!(next_move(&placements), None);
    }

    #[test]
    fn a_move_that_would_only_swap_the_imbalance_is_not_made() {
        // Four streams on three nodes: 2, 1, 1 is as even as it gets.
        let placements = [
            placement("E0", "n1", &["n2", "n3"]),
            placement("E1", "n1", &["n2", "n3"]),
            placement("E2", "n2", &["n1", "n3"]),
            placement("E3", "n3", &["n1", "n2"]),
        ];
        assert_eq!(next_move(&placements), None);
    }

    #[test]
    fn a_leader_only_moves_to_a_current_replica_of_its_stream() {
        // n3 leads nothing, but it is not a current replica of either stream n1 leads.
        let placements = [
            placement("E0", "n1", &["n2"]),
            placement("E1", "n1", &["n2"]),
            placement("E2", "n1", &["n2"]),
        ];
        assert_eq!(next_move(&placements), Some(("E0".into(), "n2".into())));
        let with_n3 = [
            placement("E0", "n1", &["n2"]),
            placement("E1", "n2", &["n1"]),
            placement("E2", "n3", &["n1"]),
        ];
        assert_eq!(next_move(&with_n3), None);
    }

    #[test]
    fn a_lease_bucket_led_elsewhere_moves_to_its_events_streams_leader() {
        let events = [
            placement("E0", "n1", &["n2", "n3"]),
            placement("E1", "n2", &["n1", "n3"]),
            placement("E2", "n3", &["n1", "n2"]),
        ];
        let leases = [
            placement("L0", "n1", &["n2", "n3"]),
            placement("L1", "n3", &["n1", "n2"]),
            placement("L2", "n3", &["n1"]),
        ];
        // L0 is where it should be; L1 moves to n2; L2 has no replica on n3 but leads there.
        assert_eq!(
            colocations(&events, &leases),
            vec![("L1".to_owned(), "n2".to_owned())]
        );
    }

    #[test]
    fn a_lease_bucket_is_not_moved_to_a_node_without_its_replica_or_after_a_leaderless_stream() {
        let events = [
            placement("E0", "n1", &["n2", "n3"]),
            Placement {
                stream: "E1".into(),
                leader: None,
                followers: vec!["n1".into(), "n2".into()],
            },
        ];
        let leases = [
            placement("L0", "n2", &["n3"]),
            placement("L1", "n3", &["n1", "n2"]),
        ];
        assert_eq!(colocations(&events, &leases), Vec::new());
    }

    #[test]
    fn a_leaderless_lease_bucket_is_moved_once_it_can_be() {
        let events = [placement("E0", "n1", &["n2", "n3"])];
        let leases = [Placement {
            stream: "L0".into(),
            leader: None,
            followers: vec!["n1".into(), "n2".into()],
        }];
        assert_eq!(
            colocations(&events, &leases),
            vec![("L0".to_owned(), "n1".to_owned())]
        );
    }

    #[test]
    fn a_stream_without_a_leader_is_left_to_its_election() {
        let placements = [
            Placement {
                stream: "E0".into(),
                leader: None,
                followers: vec!["n1".into(), "n2".into()],
            },
            placement("E1", "n1", &["n2"]),
        ];
        assert_eq!(next_move(&placements), None);
    }
}
