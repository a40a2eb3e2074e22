//! The write path of a client frame: `send`, `edit`, `delete`, `typing`,
//! `read`.
//!
//! An `edit` or `delete` is authorized against stored history (one read of
//! the message's row, plus the conversation's row for a moderator's
//! delete), then produced as a [`MessageChangeRecord`] on the message's
//! partition and acknowledged once Kafka confirmed it. The plain `send`
//! reads nothing of this.
//!
//! A `send` is acknowledged only after Kafka confirmed the record with
//! `acks=all`, and costs nothing else: no consensus, no store write.
//! De-duplication rests on partition order (see `chatpipe_core::dedup`):
//! every attempt of a send — key `(conversation_id, sender_id,
//! client_msg_id)` — lands in the conversation's partition, and every
//! consumer drops the attempts after the first one identically. The edge
//! adds two things on top:
//!
//! - a local cache of recent sends, by key, that coalesces attempts on this
//!   edge: a retry that arrives while the first attempt is in flight waits
//!   for it and gets the same answer; a later one is answered from the
//!   cache without producing. A failed attempt is not cached.
//! - for a send the client marked `resend` that misses the cache (another
//!   edge took the first attempt, or this edge forgot it), the edge
//!   produces the marked record and then waits, within the send deadline,
//!   for the partition's verdict that fan-out pushes back
//!   ([`VerdictWaiters`]); the ack carries the first attempt's `message_id`
//!   and `ts`. No verdict in time: `unavailable`, and the client retries,
//!   still marked.
//!
//! Message ids follow partition order on an edge: the id is taken and the
//! record handed to the producer in one critical section
//! ([`SendPath::sequence`]), and the idempotent producer keeps a
//! partition's enqueue order. Two edges take ids from two clocks, so two
//! sends in one conversation that race on two edges can land in the
//! opposite order of their ids; the consumers count such an inversion
//! (`chatpipe_core::dedup`), see the README's "Guarantees".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatpipe_core::dedup::{SendKey, SendKeyDigest};
use chatpipe_core::ids::MessageIdGenerator;
use chatpipe_core::records::{
    CHANGE_SCHEMA_VERSION, Event, EventRecord, MessageChange, MessageChangeRecord, MessageRecord,
    SCHEMA_VERSION, TopicNames,
};
use chatpipe_core::store::{EdgeStore, StoredMessageFacts};
use chatpipe_core::time::now_unix_ms;
use chatpipe_core::{ClientMsgId, ConversationId, EdgeId, ErrorCode, MessageId, UserId};
use chatpipe_kafka::{ChatProducer, Delivery, Enqueue};
use chatpipe_membership::InvalidatingCache;
use moka::future::Cache;
use tokio::sync::oneshot;

use crate::metrics::EdgeMetrics;

/// Pause before trying again when the producer's bounded queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

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

/// One registered wait: its ticket and where its verdict goes.
type Waiter = (u64, oneshot::Sender<Accepted>);

/// Marked resends waiting for their partition's verdict, by key digest.
/// Bounded by the sends in progress (one per connection at a time); a
/// waiter removes itself when it gives up.
#[derive(Debug, Default)]
pub struct VerdictWaiters {
    waiting: Mutex<HashMap<SendKeyDigest, Vec<Waiter>>>,
    next_ticket: AtomicU64,
}

/// One registered wait; dropping it unregisters it.
#[derive(Debug)]
pub(crate) struct VerdictWait<'a> {
    waiters: &'a VerdictWaiters,
    digest: SendKeyDigest,
    ticket: u64,
    receiver: Option<oneshot::Receiver<Accepted>>,
}

impl VerdictWaiters {
    /// Registers a wait for `digest` (before the record is produced, so
    /// that a fast verdict is not missed).
    pub(crate) fn register(&self, digest: SendKeyDigest) -> VerdictWait<'_> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .expect("verdict waiters lock")
            .entry(digest)
            .or_default()
            .push((ticket, sender));
        VerdictWait {
            waiters: self,
            digest,
            ticket,
            receiver: Some(receiver),
        }
    }

    /// Hands a verdict to every wait for `digest`; returns how many there
    /// were.
    pub fn resolve(&self, digest: SendKeyDigest, accepted: Accepted) -> usize {
        let found = self
            .waiting
            .lock()
            .expect("verdict waiters lock")
            .remove(&digest)
            .unwrap_or_default();
        let woken = found.len();
        for (_, sender) in found {
            let _ = sender.send(accepted);
        }
        woken
    }

    /// Waits in progress (for tests and the gauge-less debugging).
    pub fn len(&self) -> usize {
        self.waiting
            .lock()
            .expect("verdict waiters lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl VerdictWait<'_> {
    async fn verdict(&mut self) -> Option<Accepted> {
        self.receiver.take()?.await.ok()
    }
}

impl Drop for VerdictWait<'_> {
    fn drop(&mut self) {
        let mut waiting = self.waiters.waiting.lock().expect("verdict waiters lock");
        if let Some(list) = waiting.get_mut(&self.digest) {
            list.retain(|(ticket, _)| *ticket != self.ticket);
            if list.is_empty() {
                waiting.remove(&self.digest);
            }
        }
    }
}

/// The send path, shared by every connection of an edge.
pub struct SendPath<S> {
    store: S,
    producer: ChatProducer,
    topics: TopicNames,
    edge_id: EdgeId,
    generator: Mutex<MessageIdGenerator>,
    membership: InvalidatingCache<(ConversationId, UserId), ()>,
    recent_sends: Cache<SendKey, Accepted>,
    verdicts: Arc<VerdictWaiters>,
    deadline: Duration,
    metrics: EdgeMetrics,
    /// The `ts` of this edge's latest message change (changes get strictly
    /// increasing times).
    last_change_ts: AtomicU64,
}

chatpipe_core::debug_fields!(SendPath<S> { edge_id });

/// Settings of the send path.
#[derive(Debug, Clone)]
pub struct SendPathSettings {
    pub edge_id: EdgeId,
    pub worker_id: u16,
    pub topics: TopicNames,
    /// Bounds a send end to end, the verdict wait of a marked resend
    /// included.
    pub deadline: Duration,
    pub membership_ttl: Duration,
    /// How long the local cache remembers a send.
    pub dedup_ttl: Duration,
}

/// One client send, as the send path takes it.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub conversation_id: ConversationId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// The client marked it as a retry.
    pub resend: bool,
    /// The message of the same conversation this one replies to.
    pub reply_to: Option<MessageId>,
    /// Users the message mentions, as the client listed them (the record
    /// keeps them once each, without the sender).
    pub mentions: Vec<UserId>,
}

/// One client `edit`, `delete`, `react` or `unreact`, as the send path
/// takes it.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub change: MessageChange,
}

impl<S: EdgeStore> SendPath<S> {
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
            membership: InvalidatingCache::new(
                Cache::builder()
                    .max_capacity(200_000)
                    .time_to_live(settings.membership_ttl)
                    .build(),
            ),
            recent_sends: Cache::builder()
                .max_capacity(200_000)
                .time_to_live(settings.dedup_ttl)
                .build(),
            verdicts: Arc::new(VerdictWaiters::default()),
            deadline: settings.deadline,
            metrics,
            last_change_ts: AtomicU64::new(0),
        }
    }

    /// Where pushed verdicts are handed to waiting sends.
    pub fn verdict_waiters(&self) -> Arc<VerdictWaiters> {
        self.verdicts.clone()
    }

    /// Membership, cached. Only positive answers are cached; a membership
    /// event for the pair evicts it (see [`SendPath::forget_membership`]),
    /// also while a read of it is in flight (`chatpipe_membership`).
    async fn require_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<(), SendRefusal> {
        let key = (conversation.clone(), user.clone());
        let member = self
            .membership
            .get_or_load(&key, || async {
                let member = self.store.is_member(conversation, user).await?;
                Ok::<_, chatpipe_core::store::StoreError>(member.then_some(()))
            })
            .await
            .map_err(|error| {
                tracing::warn!(%error, "membership lookup failed");
                SendRefusal::unavailable("membership")
            })?;
        if member.into_value().is_none() {
            return Err(SendRefusal::new(
                ErrorCode::Forbidden,
                "not a member of this conversation (or it does not exist)",
            ));
        }
        Ok(())
    }

    /// Drops cached membership of `user` in `conversation`.
    pub async fn forget_membership(&self, conversation: &ConversationId, user: &UserId) {
        self.membership
            .invalidate(&(conversation.clone(), user.clone()))
            .await;
    }

    /// Handles a `send`; resolves when Kafka confirmed (or refused) it, and
    /// for a marked resend that this edge does not remember, when the
    /// partition's verdict arrived.
    pub async fn send(
        &self,
        sender: &UserId,
        request: SendRequest,
    ) -> Result<Accepted, SendRefusal> {
        let started = Instant::now();
        self.require_member(&request.conversation_id, sender)
            .await?;
        // Only a reply reads history (a plain send reads nothing).
        if let Some(reply_to) = request.reply_to {
            self.stored_message(&request.conversation_id, reply_to, started)
                .await?
                .ok_or_else(|| {
                    SendRefusal::new(
                        ErrorCode::Invalid,
                        "`reply_to` is not a message of this conversation",
                    )
                })?;
        }
        let key = SendKey::new(
            request.conversation_id.clone(),
            sender.clone(),
            request.client_msg_id.clone(),
        );
        let digest = key.digest();
        // Whether this call produced (true) or was answered by another
        // attempt of the same send on this edge (false).
        let produced = AtomicBool::new(false);
        let attempt = async {
            produced.store(true, Ordering::Relaxed);
            self.attempt(sender, request, digest, started).await
        };
        let outcome = self.recent_sends.try_get_with(key, attempt).await;
        match outcome {
            Ok(accepted) if produced.load(Ordering::Relaxed) => {
                self.metrics.sends_acked.inc();
                self.metrics
                    .send_latency_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(accepted)
            }
            Ok(accepted) => {
                self.metrics.sends_deduplicated.inc();
                Ok(accepted)
            }
            Err(refusal) => Err((*refusal).clone()),
        }
    }

    /// Produces one attempt; waits for the verdict if it is marked.
    async fn attempt(
        &self,
        sender: &UserId,
        request: SendRequest,
        digest: SendKeyDigest,
        started: Instant,
    ) -> Result<Accepted, SendRefusal> {
        let mut record = MessageRecord {
            schema_version: SCHEMA_VERSION,
            message_id: MessageId::from_u64(0),
            conversation_id: request.conversation_id,
            sender_id: sender.clone(),
            client_msg_id: request.client_msg_id,
            body: request.body,
            ts: 0,
            edge_id: self.edge_id.clone(),
            resend: request.resend,
            reply_to: request.reply_to,
            mentions: chatpipe_core::read_state::normalize_mentions(sender, request.mentions),
        };
        // Registered before producing, so that a fast verdict is not missed.
        let mut wait = request.resend.then(|| self.verdicts.register(digest));
        let delivery = self.sequence(&mut record, started).await?;
        let (message_id, ts) = (record.message_id, record.ts);
        let left = self.deadline.saturating_sub(started.elapsed());
        delivery.wait(left).await.map_err(|error| {
            tracing::warn!(%error, %message_id, "kafka did not confirm a send");
            SendRefusal::unavailable("kafka")
        })?;
        let produced = Accepted { message_id, ts };
        let Some(wait) = wait.as_mut() else {
            return Ok(produced);
        };
        self.metrics.resend_verdict_waits.inc();
        let left = self.deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, wait.verdict()).await {
            Ok(Some(original)) => {
                if original != produced {
                    self.metrics.sends_deduplicated.inc();
                }
                Ok(original)
            }
            _ => {
                self.metrics.resend_verdict_timeouts.inc();
                tracing::debug!(%message_id, "no verdict for a marked resend within the deadline");
                Err(SendRefusal::unavailable("the send's verdict"))
            }
        }
    }

    /// Handles an `edit`, `delete`, `react` or `unreact` of
    /// `request.message_id` by `actor`: only the sender edits; the sender
    /// or a moderator of the conversation deletes; any member reacts to a
    /// message that is not deleted. Resolves when Kafka confirmed the change
    /// record; the `Accepted` names the changed message and the change's
    /// time.
    pub async fn change(
        &self,
        actor: &UserId,
        request: ChangeRequest,
    ) -> Result<Accepted, SendRefusal> {
        let started = Instant::now();
        self.require_member(&request.conversation_id, actor).await?;
        let facts = self
            .stored_message(&request.conversation_id, request.message_id, started)
            .await?
            .ok_or_else(|| {
                SendRefusal::new(ErrorCode::Forbidden, "no such message in this conversation")
            })?;
        match &request.change {
            MessageChange::Edit { .. } if facts.deleted => {
                return Err(SendRefusal::new(
                    ErrorCode::Forbidden,
                    "the message is deleted",
                ));
            }
            MessageChange::Edit { .. } if &facts.sender_id != actor => {
                return Err(SendRefusal::new(
                    ErrorCode::Forbidden,
                    "only the sender may edit a message",
                ));
            }
            MessageChange::Edit { .. } => {}
            MessageChange::ReactionAdd { .. } | MessageChange::ReactionRemove { .. }
                if facts.deleted =>
            {
                return Err(SendRefusal::new(
                    ErrorCode::Forbidden,
                    "the message is deleted",
                ));
            }
            // Any member reacts to any message.
            MessageChange::ReactionAdd { .. } | MessageChange::ReactionRemove { .. } => {}
            MessageChange::Delete => {
                let moderator = &facts.sender_id != actor
                    && self
                        .store
                        .is_moderator(&request.conversation_id, actor)
                        .await
                        .map_err(|error| {
                            tracing::warn!(%error, "role lookup failed");
                            SendRefusal::unavailable("membership")
                        })?;
                if &facts.sender_id != actor && !moderator {
                    return Err(SendRefusal::new(
                        ErrorCode::Forbidden,
                        "only the sender or the conversation's owner may delete a message",
                    ));
                }
            }
        }
        // Later than the message and its latest edit, so that stores that
        // keep the latest write (Cassandra's write time) keep this one even
        // when edges' clocks disagree a little; and later than this edge's
        // previous change, so that two changes within one millisecond (a
        // reaction added and taken back) keep their order there too.
        let floor = now_unix_ms()
            .max(facts.ts + 1)
            .max(facts.edited_at.map_or(0, |at| at + 1));
        let previous = self
            .last_change_ts
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(floor.max(last + 1))
            })
            .expect("the update always applies");
        let ts = floor.max(previous + 1);
        let record = MessageChangeRecord {
            schema_version: CHANGE_SCHEMA_VERSION,
            message_id: request.message_id,
            conversation_id: request.conversation_id,
            actor_id: actor.clone(),
            change: request.change,
            ts,
            edge_id: self.edge_id.clone(),
        };
        self.producer
            .send_json(
                &self.topics.messages,
                record.conversation_id.as_str(),
                &record,
                self.deadline,
            )
            .await
            .map_err(|error| {
                tracing::warn!(%error, message_id = %record.message_id, "kafka did not confirm a change");
                SendRefusal::unavailable("kafka")
            })?;
        self.metrics.message_changes_acked.inc();
        Ok(Accepted {
            message_id: record.message_id,
            ts,
        })
    }

    /// The stored facts of a message. History is written a few
    /// milliseconds after a send's ack (by the persist consumers), so a
    /// message that is not there yet is looked up again, with growing
    /// pauses, for up to half the send deadline before it counts as absent:
    /// a client may edit or delete a message right after its ack.
    async fn stored_message(
        &self,
        conversation: &ConversationId,
        message_id: MessageId,
        started: Instant,
    ) -> Result<Option<StoredMessageFacts>, SendRefusal> {
        let patience = self.deadline / 2;
        let mut pause = Duration::from_millis(25);
        loop {
            let found = self
                .store
                .message_facts(conversation, message_id)
                .await
                .map_err(|error| {
                    tracing::warn!(%error, "message lookup failed");
                    SendRefusal::unavailable("history")
                })?;
            if found.is_some() || started.elapsed() + pause > patience {
                return Ok(found);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(400));
        }
    }

    /// Gives `record` its id and time and hands it to the producer in one
    /// critical section, so that this edge's records reach their partition
    /// in the order of their ids (the producer keeps a partition's enqueue
    /// order). A full producer queue releases the lock, waits and takes a
    /// fresh id, within the send's deadline.
    async fn sequence(
        &self,
        record: &mut MessageRecord,
        started: Instant,
    ) -> Result<Delivery, SendRefusal> {
        loop {
            let enqueued = {
                let mut generator = self.generator.lock().expect("generator lock");
                record.ts = now_unix_ms();
                record.message_id = generator.next_id(record.ts);
                let payload = serde_json::to_vec(&*record).map_err(|error| {
                    tracing::error!(%error, "a message record did not serialize");
                    SendRefusal::unavailable("kafka")
                })?;
                self.producer.enqueue(
                    &self.topics.messages,
                    record.conversation_id.as_str(),
                    Some(&payload),
                )
            };
            match enqueued {
                Ok(delivery) => return Ok(delivery),
                Err(Enqueue::Full) if started.elapsed() + QUEUE_FULL_PAUSE < self.deadline => {
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err(Enqueue::Full) => return Err(SendRefusal::unavailable("kafka")),
                Err(Enqueue::Failed(error)) => {
                    tracing::warn!(%error, "kafka refused a send");
                    return Err(SendRefusal::unavailable("kafka"));
                }
            }
        }
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
        if let Event::Read { message_id, .. } = &event
            && !chatpipe_core::read_state::marker_is_plausible(*message_id, now_unix_ms())
        {
            return Err(SendRefusal::new(
                ErrorCode::Invalid,
                "`message_id` of a read is a message id from the future",
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(raw: u64) -> Accepted {
        Accepted {
            message_id: MessageId::from_u64(raw),
            ts: raw,
        }
    }

    #[tokio::test]
    async fn a_verdict_reaches_every_wait_for_its_key_only() {
        let waiters = VerdictWaiters::default();
        let mut first = waiters.register(7);
        let mut second = waiters.register(7);
        let mut other = waiters.register(8);
        assert_eq!(waiters.len(), 3);
        assert_eq!(waiters.resolve(7, accepted(42)), 2);
        assert_eq!(first.verdict().await, Some(accepted(42)));
        assert_eq!(second.verdict().await, Some(accepted(42)));
        assert_eq!(waiters.resolve(7, accepted(43)), 0, "already answered");
        assert_eq!(waiters.len(), 1);
        drop(other.receiver.take());
        drop(other);
        assert!(waiters.is_empty(), "a wait that gives up unregisters");
    }

    #[tokio::test]
    async fn a_verdict_before_the_wait_starts_is_kept() {
        // The edge registers before producing: a verdict that arrives
        // before the producer's ack still reaches the send.
        let waiters = VerdictWaiters::default();
        let mut wait = waiters.register(1);
        assert_eq!(waiters.resolve(1, accepted(5)), 1);
        tokio::task::yield_now().await;
        assert_eq!(wait.verdict().await, Some(accepted(5)));
    }
}
