//! The write path of a client frame: `send`, `typing`, `read`.
//!
//! A `send` is acknowledged only after Kafka confirmed the record with
//! `acks=all`. Its `client_msg_id` is de-duplicated per user in two layers:
//! a local cache (the same edge, the common case) and the shared
//! [`SendDedupStore`] (a retry that reaches another edge after a
//! reconnect), inside the store's retention window. A retry whose first
//! attempt was never confirmed by Kafka re-produces the *same* message id,
//! so downstream (history, search, clients) sees one message.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chatpipe_core::ids::MessageIdGenerator;
use chatpipe_core::records::{Event, EventRecord, MessageRecord, SCHEMA_VERSION, TopicNames};
use chatpipe_core::store::{MembershipStore, SendClaim, SendDedupStore};
use chatpipe_core::time::now_unix_ms;
use chatpipe_core::{ClientMsgId, ConversationId, EdgeId, ErrorCode, MessageId, UserId};
use chatpipe_kafka::ChatProducer;
use moka::future::Cache;

use crate::metrics::EdgeMetrics;

/// A refusal of a client frame, as it goes into an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SendRefusal {
    pub code: ErrorCode,
    pub message: String,
}

impl SendRefusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn unavailable(what: &str) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!("{what} is unavailable, retry later"),
        )
    }
}

/// What an accepted `send` is acknowledged with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: MessageId,
    pub ts: u64,
}

/// The send path, shared by every connection of an edge.
pub struct SendPath<S> {
    store: S,
    producer: ChatProducer,
    topics: TopicNames,
    edge_id: EdgeId,
    generator: Mutex<MessageIdGenerator>,
    membership: Cache<(ConversationId, UserId), bool>,
    recent_sends: Cache<(UserId, ClientMsgId), Accepted>,
    deadline: Duration,
    metrics: EdgeMetrics,
}

impl<S> std::fmt::Debug for SendPath<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SendPath")
            .field("edge_id", &self.edge_id)
            .finish_non_exhaustive()
    }
}

/// Settings of the send path.
#[derive(Debug, Clone)]
pub struct SendPathSettings {
    pub edge_id: EdgeId,
    pub worker_id: u16,
    pub topics: TopicNames,
    pub deadline: Duration,
    pub membership_ttl: Duration,
    pub dedup_ttl: Duration,
}

impl<S: MembershipStore + SendDedupStore> SendPath<S> {
    pub fn new(
        store: S,
        producer: ChatProducer,
        settings: SendPathSettings,
        metrics: EdgeMetrics,
    ) -> Self {
        Self {
            store,
            producer,
            topics: settings.topics,
            edge_id: settings.edge_id,
            generator: Mutex::new(MessageIdGenerator::new(settings.worker_id)),
            membership: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(settings.membership_ttl)
                .build(),
            recent_sends: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(settings.dedup_ttl)
                .build(),
            deadline: settings.deadline,
            metrics,
        }
    }

    /// Membership, cached. Only positive answers are cached; a membership
    /// event for the pair evicts it (see [`SendPath::forget_membership`]).
    async fn require_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<(), SendRefusal> {
        let key = (conversation.clone(), user.clone());
        if self.membership.get(&key).await == Some(true) {
            return Ok(());
        }
        let member = self
            .store
            .is_member(conversation, user)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "membership lookup failed");
                SendRefusal::unavailable("membership")
            })?;
        if !member {
            return Err(SendRefusal::new(
                ErrorCode::Forbidden,
                "not a member of this conversation (or it does not exist)",
            ));
        }
        self.membership.insert(key, true).await;
        Ok(())
    }

    /// Drops cached membership of `user` in `conversation`.
    pub async fn forget_membership(&self, conversation: &ConversationId, user: &UserId) {
        self.membership
            .invalidate(&(conversation.clone(), user.clone()))
            .await;
    }

    /// Handles a `send`; resolves when Kafka confirmed (or refused) it.
    pub async fn send(
        &self,
        sender: &UserId,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: String,
    ) -> Result<Accepted, SendRefusal> {
        let started = Instant::now();
        let dedup_key = (sender.clone(), client_msg_id.clone());
        if let Some(accepted) = self.recent_sends.get(&dedup_key).await {
            self.metrics.sends_deduplicated.inc();
            return Ok(accepted);
        }
        self.require_member(&conversation, sender).await?;

        let ts = now_unix_ms();
        let fresh_id = self.generator.lock().expect("generator lock").next_id(ts);
        let claim = self
            .store
            .claim(sender, &client_msg_id, &conversation, fresh_id, ts)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "send de-duplication claim failed");
                SendRefusal::unavailable("storage")
            })?;
        let accepted = match claim {
            SendClaim::Existing(seen) if seen.acked => {
                self.metrics.sends_deduplicated.inc();
                let accepted = Accepted {
                    message_id: seen.message_id,
                    ts: seen.ts,
                };
                self.recent_sends.insert(dedup_key, accepted).await;
                return Ok(accepted);
            }
            // Claimed before but never confirmed: produce the same id again.
            SendClaim::Existing(seen) => Accepted {
                message_id: seen.message_id,
                ts: seen.ts,
            },
            SendClaim::Claimed => Accepted {
                message_id: fresh_id,
                ts,
            },
        };

        let record = MessageRecord {
            schema_version: SCHEMA_VERSION,
            message_id: accepted.message_id,
            conversation_id: conversation,
            sender_id: sender.clone(),
            client_msg_id: client_msg_id.clone(),
            body,
            ts: accepted.ts,
            edge_id: self.edge_id.clone(),
        };
        self.producer
            .send_json(&self.topics.messages, record.conversation_id.as_str(), &record, self.deadline)
            .await
            .map_err(|error| {
                tracing::warn!(%error, message_id = %accepted.message_id, "kafka did not confirm a send");
                SendRefusal::unavailable("kafka")
            })?;
        self.recent_sends.insert(dedup_key, accepted).await;
        self.metrics.sends_acked.inc();
        self.metrics
            .send_latency_seconds
            .observe(started.elapsed().as_secs_f64());

        // Recording the ack lets a cross-edge retry answer without
        // re-producing; failing to record it only costs a duplicate record
        // with the same id, which every reader absorbs.
        let store = self.store.clone();
        let user = sender.clone();
        tokio::spawn(async move {
            if let Err(error) = store.mark_acked(&user, &client_msg_id).await {
                tracing::debug!(%error, "could not record send ack");
            }
        });
        Ok(accepted)
    }

    /// Publishes a `typing` or `read` event after checking membership.
    pub async fn publish_event(&self, user: &UserId, event: Event) -> Result<(), SendRefusal> {
        let conversation = match &event {
            Event::Typing {
                conversation_id, ..
            }
            | Event::Read {
                conversation_id, ..
            } => conversation_id.clone(),
            Event::Presence { .. } => {
                return Err(SendRefusal::new(
                    ErrorCode::Invalid,
                    "presence is not sent by clients",
                ));
            }
        };
        self.require_member(&conversation, user).await?;
        let record = EventRecord {
            schema_version: SCHEMA_VERSION,
            event,
            ts: now_unix_ms(),
        };
        self.producer
            .send_json(
                &self.topics.events,
                conversation.as_str(),
                &record,
                self.deadline,
            )
            .await
            .map_err(|_| SendRefusal::unavailable("kafka"))?;
        Ok(())
    }

    /// Publishes presence of `user` (keyed by user id).
    pub async fn publish_presence(
        &self,
        record: &EventRecord,
        user: &UserId,
    ) -> Result<(), SendRefusal> {
        self.producer
            .send_json(&self.topics.events, user.as_str(), record, self.deadline)
            .await
            .map(|_| ())
            .map_err(|_| SendRefusal::unavailable("kafka"))
    }
}
