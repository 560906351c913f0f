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

/// Reads where each events stream's leader is.
async fn placements(js: &Context, names: &Names) -> Option<Vec<Placement>> {
    let mut placements = Vec::new();
    for index in 0..names.event_stream_count() {
        let name = names.events_stream(index);
        let info = match js.get_stream(&name).await {
            Ok(mut stream) => stream.info().await.ok()?.clone(),
            Err(err) => {
                tracing::debug!(%err, stream = %name, "reading an events stream's leader");
                return None;
            }
        };
        let cluster = info.cluster?;
        placements.push(Placement {
            stream: name,
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

/// Asks `stream`'s leader to step down in favour of `to`, and waits for an election.
async fn step_down(js: &Context, stream: &str, to: &str) {
    let request = serde_json::json!({ "placement": { "preferred": to } });
    let answer: Result<serde_json::Value, _> = js
        .request(format!("STREAM.LEADER.STEPDOWN.{stream}"), &request)
        .await;
    match answer {
        Ok(answer) if answer.get("error").is_none() => {
            tracing::info!(
                stream,
                to,
                "moving an events stream's leader to spread the ingest load"
            );
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
/// [`ROUNDS`] have passed.
pub async fn spread(js: &Context, names: &Names) {
    if names.event_stream_count() < 2 {
        return;
    }
    for _ in 0..ROUNDS {
        let Some(placements) = placements(js, names).await else {
            return;
        };
        let Some((stream, to)) = next_move(&placements) else {
            let leaders: Vec<String> = placements
                .iter()
                .map(|p| format!("{}={}", p.stream, p.leader.as_deref().unwrap_or("none")))
                .collect();
            tracing::info!(leaders = %leaders.join(","), "events stream leaders");
            return;
        };
        step_down(js, &stream, &to).await;
    }
}

/// Every `every` (plus up to a quarter of it, set by the instance's name), makes the one
/// move that evens the leaders out most, if any does, until `stop`; `every` of zero: never.
pub async fn keep_spread(
    js: Context,
    names: Names,
    instance: &str,
    every: Duration,
    stop: CancellationToken,
) {
    if every.is_zero() || names.event_stream_count() < 2 {
        return;
    }
    let share = (xxhash_rust::xxh3::xxh3_64(instance.as_bytes()) % 1000) as f64 / 4000.0;
    let jitter = every.mul_f64(share);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every + jitter) => {}
        }
        let Some(placements) = placements(&js, &names).await else {
            continue;
        };
        if let Some((stream, to)) = next_move(&placements) {
            tracing::info!(%stream, %to, "events stream leaders uneven; moving one");
            step_down(&js, &stream, &to).await;
        }
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
