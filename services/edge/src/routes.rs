//! Announcing this edge and the users it holds on the compacted
//! session-route topic, which every fan-out worker reads in full.
//!
//! - `edge/<edge_id>` carries the push address and a lease, renewed every
//!   third of `lease_ms`. Fan-out ignores routes to an edge whose lease ran
//!   out, so a crashed edge stops attracting pushes within one lease.
//! - `route/<user_id>/<edge_id>` exists while the user has a session here;
//!   a tombstone removes it when the last session ends.
//!
//! Records for one key go through one producer in order, and compaction
//! keeps the latest per key, so the topic converges to the live table.

use std::time::Duration;

use chatpipe_core::records::{EdgeRecord, EdgeState, RouteRecord, SCHEMA_VERSION, SessionKey};
use chatpipe_core::time::now_unix_ms;
use chatpipe_core::{EdgeId, UserId};
use chatpipe_kafka::{ChatProducer, KafkaAdapterError};

#[derive(Debug, Clone)]
pub struct RouteAnnouncer {
    producer: ChatProducer,
    topic: String,
    edge_id: EdgeId,
    push_addr: String,
    /// The message-id worker id this edge holds (see [`crate::identity`]).
    worker_id: u16,
    lease: Duration,
}

const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);

impl RouteAnnouncer {
    pub fn new(
        producer: ChatProducer,
        topic: String,
        edge_id: EdgeId,
        push_addr: String,
        worker_id: u16,
        lease: Duration,
    ) -> Self {
        Self {
            producer,
            topic,
            edge_id,
            push_addr,
            worker_id,
            lease,
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Publishes (or renews) this edge's lease in `state`; returns the
    /// record's `ts`.
    pub async fn announce_edge(&self, state: EdgeState) -> Result<u64, KafkaAdapterError> {
        let now = now_unix_ms();
        let record = EdgeRecord {
            schema_version: SCHEMA_VERSION,
            edge_id: self.edge_id.clone(),
            push_addr: self.push_addr.clone(),
            state,
            lease_expires_ms: now + self.lease.as_millis() as u64,
            worker_id: Some(self.worker_id),
            ts: now,
        };
        let key = SessionKey::Edge(self.edge_id.clone()).encode();
        self.producer
            .send_json(&self.topic, &key, &record, PUBLISH_DEADLINE)
            .await?;
        Ok(now)
    }

    /// Removes this edge's lease (graceful exit).
    pub async fn retire_edge(&self) -> Result<(), KafkaAdapterError> {
        let key = SessionKey::Edge(self.edge_id.clone()).encode();
        self.producer
            .send_bytes(&self.topic, &key, None, PUBLISH_DEADLINE)
            .await?;
        Ok(())
    }

    pub async fn route_up(&self, user: &UserId) -> Result<(), KafkaAdapterError> {
        let record = RouteRecord {
            schema_version: SCHEMA_VERSION,
            user_id: user.clone(),
            edge_id: self.edge_id.clone(),
            sessions: 1,
            ts: now_unix_ms(),
        };
        let key = SessionKey::Route(user.clone(), self.edge_id.clone()).encode();
        self.producer
            .send_json(&self.topic, &key, &record, PUBLISH_DEADLINE)
            .await?;
        Ok(())
    }

    pub async fn route_down(&self, user: &UserId) -> Result<(), KafkaAdapterError> {
        let key = SessionKey::Route(user.clone(), self.edge_id.clone()).encode();
        self.producer
            .send_bytes(&self.topic, &key, None, PUBLISH_DEADLINE)
            .await?;
        Ok(())
    }
}
