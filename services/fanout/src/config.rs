//! The fan-out role's configuration: one typed struct, defaults from the
//! contract, units in the field names.

use std::time::Duration;

use chatpipe_core::records::TopicNames;

/// How a fan-out worker consumes, resolves and pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutConfig {
    /// Kafka consumer group of the fan-out workers on `chat.messages`,
    /// `chat.events` and `chat.membership`. Workers in one group share the
    /// partitions.
    pub group_id: String,
    /// This worker's name: the `source` of its pushes, and a suffix of its
    /// Kafka `client.id`s. Should be unique per process.
    pub worker_id: String,
    /// The topic names of this deployment.
    pub topics: TopicNames,
    /// Most records handled as one batch (one push per edge per batch).
    pub max_batch_records: usize,
    /// Longest wait for a batch to fill once its first record arrived, in ms.
    pub max_batch_wait_ms: u64,
    /// Deadline of the first attempt of a push RPC to one edge (connecting
    /// included), in ms. A timed-out or failed push is retried while the
    /// edge's lease is live, each attempt with twice the deadline of the
    /// previous one, up to `max_push_timeout_ms`.
    pub push_timeout_ms: u64,
    /// Longest deadline of one push attempt, in ms.
    pub max_push_timeout_ms: u64,
    /// Most recipients in one push RPC (a larger item is cut into several),
    /// which bounds the edge's work per call.
    pub max_push_recipients: usize,
    /// Largest push RPC, in bytes (estimated). Items beyond it go in further
    /// RPCs to the same edge, sent one after another so order holds; keep it
    /// below the edge's gRPC decoding limit (tonic's default is 4 MiB).
    pub max_push_bytes: usize,
    /// How long an edge that was given up (it refused connections, or its
    /// lease ran out while a push was retried) is skipped, in ms.
    pub suspect_backoff_ms: u64,
    /// Tolerance for clock skew between edges and workers when checking an
    /// edge's lease, in ms: an edge counts as live until
    /// `lease_expires_ms + lease_grace_ms`.
    pub lease_grace_ms: u64,
    /// An edge whose lease expired this long ago is forgotten from memory,
    /// with its routes (they are ignored from the moment the lease expires;
    /// this only bounds memory), in ms.
    pub forget_dead_edge_after_ms: u64,
    /// Capacity of the members-per-conversation cache, counted in members
    /// (a 10,000-member conversation weighs 10,000).
    pub membership_cache_max_members: u64,
    /// Capacity of the conversations-per-user cache (used for presence),
    /// counted in conversation ids.
    pub user_conversations_cache_max_entries: u64,
    /// Time-to-live of cached membership, in ms: a safety net behind the
    /// invalidation by the membership topic.
    pub membership_cache_ttl_ms: u64,
    /// Most concurrent membership-store reads while resolving one batch.
    pub resolve_concurrency: usize,
    /// Presence goes to the members of a user's conversations that have at
    /// most this many members: in larger groups it would cost members²
    /// deliveries when everyone connects (clients of large groups ask for
    /// the presence they show instead).
    pub presence_max_members: usize,
    /// The send de-duplication window W (the clients' retry window): a
    /// retry of a send within W of its first attempt is not delivered.
    /// Must equal persist's and index's.
    pub send_dedup_window_ms: u64,
    /// Conversations with at least this many members are pushed as a
    /// *member set*: the push names the conversation's member list by a
    /// digest, sends the list once per edge and membership, and the edge
    /// delivers to its local sessions of those members (see
    /// `schemas/proto/push.proto`). Smaller ones carry their recipients.
    pub member_set_min_members: usize,
    /// Users whose presence across edges one partition handler tracks (see
    /// `presence`); past it, offline users are forgotten first, and a
    /// forgotten user's state is rebuilt from the route table.
    pub presence_tracked_users_max: usize,
    /// Membership records older than this, in ms, update nothing for
    /// clients (they still evict caches): a group that starts reading the
    /// topic from its beginning must not replay weeks of membership frames.
    pub membership_event_max_age_ms: u64,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            group_id: "chatpipe-fanout".to_owned(),
            worker_id: format!("fanout-{}", std::process::id()),
            topics: TopicNames::default(),
            max_batch_records: 500,
            max_batch_wait_ms: 5,
            push_timeout_ms: 2_000,
            max_push_timeout_ms: 30_000,
            max_push_recipients: 20_000,
            max_push_bytes: 3 << 20,
            suspect_backoff_ms: 5_000,
            lease_grace_ms: 1_000,
            forget_dead_edge_after_ms: 10 * 60 * 1_000,
            membership_cache_max_members: 1_000_000,
            user_conversations_cache_max_entries: 1_000_000,
            membership_cache_ttl_ms: 600_000,
            resolve_concurrency: 32,
            presence_max_members: 500,
            send_dedup_window_ms: chatpipe_kafka::send_dedup::DEFAULT_SEND_DEDUP_WINDOW_MS,
            member_set_min_members: 1_000,
            presence_tracked_users_max: 200_000,
            membership_event_max_age_ms: 10 * 60 * 1_000,
        }
    }
}

impl FanoutConfig {
    pub fn push_timeout(&self) -> Duration {
        Duration::from_millis(self.push_timeout_ms)
    }

    /// How pushes are cut and retried.
    pub fn push_settings(&self) -> crate::push::PushSettings {
        crate::push::PushSettings {
            timeout: Duration::from_millis(self.push_timeout_ms),
            max_timeout: Duration::from_millis(self.max_push_timeout_ms),
            suspect_backoff: Duration::from_millis(self.suspect_backoff_ms),
            max_bytes: self.max_push_bytes,
            max_recipients: self.max_push_recipients,
        }
    }

    pub fn membership_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.membership_cache_ttl_ms)
    }

    /// Refuses values that would make the worker misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.group_id.trim().is_empty() {
            return Err("group_id must not be empty".into());
        }
        if self.worker_id.trim().is_empty() {
            return Err("worker_id must not be empty".into());
        }
        if self.max_batch_records == 0 {
            return Err("max_batch_records must be at least 1".into());
        }
        if self.push_timeout_ms == 0 {
            return Err("push_timeout_ms must be at least 1".into());
        }
        if self.max_push_timeout_ms < self.push_timeout_ms {
            return Err("max_push_timeout_ms must be at least push_timeout_ms".into());
        }
        if self.max_push_recipients == 0 {
            return Err("max_push_recipients must be at least 1".into());
        }
        if self.max_push_bytes < 1024 {
            return Err("max_push_bytes must be at least 1024".into());
        }
        if self.member_set_min_members == 0 {
            return Err("member_set_min_members must be at least 1".into());
        }
        if self.resolve_concurrency == 0 {
            return Err("resolve_concurrency must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let config = FanoutConfig::default();
        assert_eq!(config.group_id, "chatpipe-fanout");
        assert_eq!(config.topics.messages, "chat.messages");
        assert_eq!(config.push_timeout(), Duration::from_secs(2));
        assert!(config.validate().is_ok());
        let broken = FanoutConfig {
            max_batch_records: 0,
            ..FanoutConfig::default()
        };
        assert!(broken.validate().is_err());
    }
}
