//! Unique edge ids and message-id worker ids, claimed at start.
//!
//! Two edges under one id would overwrite each other's lease and routes;
//! two under one worker id could mint the same message id. Both are settled
//! from the edge leases in `chat.sessions`, which every edge publishes
//! anyway and every fan-out worker reads (no other coordination service):
//!
//! 1. Before it serves, the edge reads every lease (a bounded catch-up of
//!    the compacted topic, as fan-out loads its route table) and keeps the
//!    live ones ([`read_live_edges`]).
//! 2. [`claim`] decides, purely: a live lease under the edge's own id but
//!    another push address means another edge holds the id, and the start
//!    is refused until that lease runs out; under the same push address it
//!    is this edge restarted after a crash, and its lease is taken over. A
//!    configured worker id held by another live edge is refused; without a
//!    configured one the edge takes the one it held before, else the first
//!    free one from a hash of its id.
//! 3. The worker id goes into the lease (`worker_id`), so edges started
//!    later see it.
//! 4. Two edges that start in the same moment may both see the other's
//!    lease missing. So once its own lease is published, the edge reads the
//!    leases again ([`lost_claim`]): of two live leases with one worker id,
//!    the older keeps it and the younger refuses to start; of two edges
//!    under one id, the one whose lease the topic holds last keeps it.
//!
//! Leases are what make this work without a lock service: a crashed
//! edge's claim frees itself within one lease (`lease_ms`, 10 s by
//! default), and an edge that drains retires its lease at once.

use std::collections::HashMap;
use std::time::Duration;

use chatpipe_core::EdgeId;
use chatpipe_core::ids::{MessageId, worker_id_from_name};
use chatpipe_core::records::{EdgeRecord, SessionKey};
use chatpipe_kafka::{
    KafkaAdapterError, KafkaConfig, StartAt, TailConsumer, TailEvent, TailOptions,
};

/// Why an edge may not start under its id or worker id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "edge id {edge_id} is held by a live edge at {push_addr} (its lease runs until {lease_expires_ms} ms); \
         give this edge another --edge-id, or stop the other one"
    )]
    DuplicateEdgeId {
        edge_id: EdgeId,
        push_addr: String,
        lease_expires_ms: u64,
    },
    #[error(
        "worker id {worker_id} is held by live edge {holder}; give this edge another \
         --worker-id (or none: a free one is then taken)"
    )]
    DuplicateWorkerId { worker_id: u16, holder: EdgeId },
    #[error("every worker id (0-1023) is held by a live edge")]
    NoFreeWorkerId,
    #[error("the edge leases could not be read within {0:?}")]
    Timeout(Duration),
}

/// The live leases of `chat.sessions` at `now_ms`, by edge id.
pub type LiveEdges = HashMap<EdgeId, EdgeRecord>;

/// Decides this edge's worker id from the live leases (see the module
/// documentation). `configured` is the operator's worker id, if any.
pub fn claim(
    edge_id: &EdgeId,
    push_addr: &str,
    configured: Option<u16>,
    live: &LiveEdges,
) -> Result<u16, IdentityError> {
    let mut previous = None;
    if let Some(own) = live.get(edge_id) {
        if own.push_addr != push_addr {
            return Err(IdentityError::DuplicateEdgeId {
                edge_id: edge_id.clone(),
                push_addr: own.push_addr.clone(),
                lease_expires_ms: own.lease_expires_ms,
            });
        }
        // This edge, restarted: its old lease is taken over.
        previous = own.worker_id;
    }
    let holder_of = |worker_id: u16| {
        live.values()
            .find(|record| record.edge_id != *edge_id && record.worker_id == Some(worker_id))
    };
    if let Some(worker_id) = configured {
        return match holder_of(worker_id) {
            Some(holder) => Err(IdentityError::DuplicateWorkerId {
                worker_id,
                holder: holder.edge_id.clone(),
            }),
            None => Ok(worker_id),
        };
    }
    if let Some(worker_id) = previous.filter(|worker_id| holder_of(*worker_id).is_none()) {
        return Ok(worker_id);
    }
    let workers = u32::from(MessageId::MAX_WORKER) + 1;
    let preferred = u32::from(worker_id_from_name(edge_id.as_str()));
    (0..workers)
        .map(|step| ((preferred + step) % workers) as u16)
        .find(|worker_id| holder_of(*worker_id).is_none())
        .ok_or(IdentityError::NoFreeWorkerId)
}

/// After this edge published its lease: whether another live edge won its
/// id or worker id meanwhile (see the module documentation).
pub fn lost_claim(
    edge_id: &EdgeId,
    push_addr: &str,
    worker_id: u16,
    own_ts: u64,
    live: &LiveEdges,
) -> Option<IdentityError> {
    if let Some(own) = live.get(edge_id)
        && own.push_addr != push_addr
    {
        return Some(IdentityError::DuplicateEdgeId {
            edge_id: edge_id.clone(),
            push_addr: own.push_addr.clone(),
            lease_expires_ms: own.lease_expires_ms,
        });
    }
    live.values()
        .filter(|record| record.edge_id != *edge_id && record.worker_id == Some(worker_id))
        // The older claim wins; the edge id breaks a tie.
        .find(|record| (record.ts, &record.edge_id) < (own_ts, edge_id))
        .map(|holder| IdentityError::DuplicateWorkerId {
            worker_id,
            holder: holder.edge_id.clone(),
        })
}

/// Reads every lease of `topic` up to the end it had when reading began,
/// and keeps those live at the end (not expired, not retired).
pub async fn read_live_edges(
    kafka: &KafkaConfig,
    topic: &str,
    deadline: Duration,
) -> Result<Result<LiveEdges, IdentityError>, KafkaAdapterError> {
    let tail = TailConsumer::new(
        kafka,
        "edge-identity",
        topic,
        &TailOptions {
            report_partition_end: true,
            // The end of a partition shows in the fetch after its last
            // record: a short wait keeps the start-up read quick.
            fetch_wait_max: chatpipe_kafka::config::LONG_POLL,
        },
    )?;
    let until = tokio::time::Instant::now() + deadline;
    let starts = tail.assign_before(&StartAt::Beginning, until).await?;
    let mut pending: HashMap<i32, i64> = starts
        .iter()
        .filter(|start| start.has_backlog())
        .map(|start| (start.partition, start.high))
        .collect();
    let mut leases: LiveEdges = HashMap::new();
    while !pending.is_empty() {
        let received = match tokio::time::timeout_at(until, tail.recv()).await {
            Ok(received) => received,
            Err(_) => return Ok(Err(IdentityError::Timeout(deadline))),
        };
        match received {
            Ok(TailEvent::Record(record)) => {
                let partition = record.partition();
                let caught_up = pending
                    .get(&partition)
                    .is_some_and(|high| record.offset() + 1 >= *high);
                let key = record.key_str().and_then(SessionKey::decode);
                if let Some(SessionKey::Edge(edge_id)) = key {
                    match record.payload().map(serde_json::from_slice::<EdgeRecord>) {
                        Some(Ok(lease)) => {
                            leases.insert(edge_id, lease);
                        }
                        // A tombstone: the edge retired.
                        None => {
                            leases.remove(&edge_id);
                        }
                        Some(Err(_)) => {}
                    }
                }
                if caught_up {
                    pending.remove(&partition);
                }
            }
            Ok(TailEvent::PartitionEnd { partition }) => {
                pending.remove(&partition);
            }
            Err(error) => {
                tracing::debug!(%error, "reading edge leases");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let now = chatpipe_core::time::now_unix_ms();
    leases.retain(|_, lease| lease.lease_expires_ms > now);
    Ok(Ok(leases))
}

#[cfg(test)]
mod tests {
    use chatpipe_core::records::{EdgeState, SCHEMA_VERSION};

    use super::*;

    fn edge(raw: &str) -> EdgeId {
        EdgeId::parse(raw).unwrap()
    }

    fn lease(
        edge_id: &str,
        push_addr: &str,
        worker_id: Option<u16>,
        ts: u64,
    ) -> (EdgeId, EdgeRecord) {
        (
            edge(edge_id),
            EdgeRecord {
                schema_version: SCHEMA_VERSION,
                edge_id: edge(edge_id),
                push_addr: push_addr.into(),
                state: EdgeState::Serving,
                lease_expires_ms: u64::MAX,
                worker_id,
                ts,
            },
        )
    }

    #[test]
    fn a_live_edge_keeps_its_id_and_worker_id() {
        let live: LiveEdges = [lease("edge-a", "10.0.0.1:8180", Some(7), 1)].into();
        // Same id elsewhere: refused.
        assert!(matches!(
            claim(&edge("edge-a"), "10.0.0.2:8180", None, &live),
            Err(IdentityError::DuplicateEdgeId { .. })
        ));
        // Same id, same push address: this edge restarted, same worker id.
        assert_eq!(claim(&edge("edge-a"), "10.0.0.1:8180", None, &live), Ok(7));
        // Its worker id, configured on another edge: refused.
        assert_eq!(
            claim(&edge("edge-b"), "10.0.0.2:8180", Some(7), &live),
            Err(IdentityError::DuplicateWorkerId {
                worker_id: 7,
                holder: edge("edge-a")
            })
        );
        assert_eq!(
            claim(&edge("edge-b"), "10.0.0.2:8180", Some(8), &live),
            Ok(8)
        );
    }

    #[test]
    fn without_a_configured_worker_id_a_free_one_is_taken() {
        let preferred = worker_id_from_name("edge-b");
        let next = (preferred + 1) % (MessageId::MAX_WORKER + 1);
        let live: LiveEdges = [lease("edge-a", "10.0.0.1:8180", Some(preferred), 1)].into();
        assert_eq!(
            claim(&edge("edge-b"), "10.0.0.2:8180", None, &live),
            Ok(next)
        );
        assert_eq!(
            claim(&edge("edge-b"), "10.0.0.2:8180", None, &LiveEdges::new()),
            Ok(preferred)
        );
        // Every id held: refused.
        let full: LiveEdges = (0..=MessageId::MAX_WORKER)
            .map(|worker| lease(&format!("e{worker}"), "x:1", Some(worker), 1))
            .collect();
        assert_eq!(
            claim(&edge("edge-new"), "y:1", None, &full),
            Err(IdentityError::NoFreeWorkerId)
        );
    }

    #[test]
    fn of_two_simultaneous_claims_the_older_wins() {
        let live: LiveEdges = [
            lease("edge-a", "10.0.0.1:8180", Some(5), 100),
            lease("edge-b", "10.0.0.2:8180", Some(5), 200),
        ]
        .into();
        assert_eq!(
            lost_claim(&edge("edge-a"), "10.0.0.1:8180", 5, 100, &live),
            None
        );
        assert!(matches!(
            lost_claim(&edge("edge-b"), "10.0.0.2:8180", 5, 200, &live),
            Some(IdentityError::DuplicateWorkerId { .. })
        ));
        // Same id: whoever the topic holds last keeps it.
        let same_id: LiveEdges = [lease("edge-a", "10.0.0.2:8180", Some(1), 300)].into();
        assert!(lost_claim(&edge("edge-a"), "10.0.0.1:8180", 1, 299, &same_id).is_some());
        assert_eq!(
            lost_claim(&edge("edge-a"), "10.0.0.2:8180", 1, 300, &same_id),
            None
        );
    }
}
