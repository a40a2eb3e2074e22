//! The batch handler of the fan-out consumer group: decode → resolve
//! recipients → route to edges → one push per edge → confirm.
//!
//! Three topics feed it: `chat.messages` (messages and their changes),
//! `chat.events` (typing, read receipts, presence) and `chat.membership`
//! (membership changes, delivered as membership frames to the members and
//! to the user the change names). Presence reports pass through the
//! partition's [`PresenceTracker`], so a user still connected to another
//! edge is not reported offline.
//!
//! `Ok` is returned once every edge of the batch has answered its push or
//! been given up (see [`crate::push`]: pushes are retried while the edge's
//! lease is live, so a slow edge delays the batch instead of losing it), so
//! offsets move past a batch only after its items reached every live edge.
//! An edge that was given up, or skipped because it was given up recently,
//! is told to resync on its next push. A membership-store failure (nothing
//! pushed yet), a failure to publish a dead letter, or a shutdown while
//! pushes were still retried fails the batch, and the consumer loop retries
//! it (or leaves it to the partition's next owner).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chatpipe_core::EdgeId;
use chatpipe_core::frames::{Deliverable, MessageView};
use chatpipe_core::records::{
    Event, EventRecord, MembershipChange, MembershipRecord, MessageChangeRecord, MessageRecord,
    MessagesTopicRecord, TopicNames, decode_messages_record,
};
use chatpipe_core::store::{MembershipStore, StoreError};
use chatpipe_core::time::now_unix_ms;
use chatpipe_core::{ConversationId, UserId};
use chatpipe_kafka::consumer::{BatchHandler, HandlerError};
use chatpipe_kafka::{DeadLetterSink, PartitionedSendDedup, Record};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::membership::{Members, MembershipCache};
use crate::metrics::{FanoutMetrics, PushOutcome};
use crate::plan::{Delivery, MemberSet, plan_pushes};
use crate::presence::{PresenceTracker, PresenceVerdict};
use crate::push::EdgePushers;
use crate::routes::SharedRouteTable;
use crate::verdicts::{VerdictPusher, verdict_for};

/// Logical topic names used as metric labels.
pub(crate) const MESSAGES: &str = "messages";
pub(crate) const EVENTS: &str = "events";
pub(crate) const MEMBERSHIP: &str = "membership";

/// A record of the batch, decoded.
#[derive(Debug)]
enum Decoded {
    Message(MessageRecord),
    /// An edit or delete: delivered to every member, like the message.
    Change(MessageChangeRecord),
    Event(EventRecord),
    /// A membership change: a frame to the members and the user it names.
    Membership(MembershipRecord),
}

/// Decodes one record of `topics.messages` or `topics.events`.
fn decode(message: &Record, topics: &TopicNames) -> Result<Decoded, String> {
    let Some(payload) = message.payload() else {
        return Err("record has no value".to_owned());
    };
    if message.topic() == topics.messages {
        match decode_messages_record(payload) {
            Ok(MessagesTopicRecord::Message(record)) => Ok(Decoded::Message(record)),
            Ok(MessagesTopicRecord::Change(record)) => Ok(Decoded::Change(record)),
            Err(error) => Err(error.to_string()),
        }
    } else if message.topic() == topics.events {
        serde_json::from_slice::<EventRecord>(payload)
            .map(Decoded::Event)
            .map_err(|error| format!("not an EventRecord: {error}"))
    } else if message.topic() == topics.membership {
        serde_json::from_slice::<MembershipRecord>(payload)
            .map(Decoded::Membership)
            .map_err(|error| format!("not a MembershipRecord: {error}"))
    } else {
        Err(format!("unexpected topic `{}`", message.topic()))
    }
}

/// Items resolved to recipients, and how many were dropped on the way.
struct Resolution {
    deliveries: Vec<Delivery>,
    unknown_conversations: u64,
}

#[derive(Clone)]
pub(crate) struct FanoutHandler<M> {
    pub(crate) topics: TopicNames,
    pub(crate) routes: SharedRouteTable,
    pub(crate) membership: MembershipCache<M>,
    pub(crate) pushers: Arc<EdgePushers>,
    pub(crate) dead_letters: DeadLetterSink,
    pub(crate) metrics: FanoutMetrics,
    pub(crate) resolve_concurrency: usize,
    /// Conversations larger than this do not carry presence.
    pub(crate) presence_max_members: usize,
    /// Conversations with at least this many members are pushed as member
    /// sets (a reference, not one recipient id per member).
    pub(crate) member_set_min_members: usize,
    /// Records of the current batch already dead-lettered, so that a retry
    /// of the batch does not publish them again.
    pub(crate) dead_lettered: HashSet<(String, i32, i64)>,
    /// Ends push retries when the worker stops or the partition is revoked.
    pub(crate) shutdown: CancellationToken,
    /// Drops retries of earlier sends (the rule persist and index apply).
    pub(crate) dedup: PartitionedSendDedup,
    pub(crate) verdicts: Arc<VerdictPusher>,
    /// Presence across edges, for the users of this partition (presence
    /// records are keyed by user, so each user's reports meet here).
    pub(crate) presence: PresenceTracker,
    /// Verdicts on the presence records of the current batch, by offset:
    /// the tracker has already counted them, so a retry of the batch must
    /// reuse them instead of judging again.
    pub(crate) presence_judged: HashMap<i64, bool>,
    /// Membership records older than this are not delivered (a consumer
    /// group that starts on the topic's old records, or a long outage,
    /// would otherwise replay stale frames to clients).
    pub(crate) membership_event_max_age_ms: u64,
}

/// The deliveries of one membership record: its frame to the members
/// the change leaves (named by their member set in a large group) and,
/// when the change names a user who is not among them (the removed
/// member, or an added one whom the cache does not list yet), to that
/// user as well. Empty for a conversation that does not exist and
/// names nobody.
fn membership_deliveries(
    record: &MembershipRecord,
    members_of: impl Fn(&ConversationId) -> Option<Members>,
    member_set_min_members: usize,
) -> Vec<Delivery> {
    let members: Option<Members> = match &record.change {
        MembershipChange::Created { members, .. } => Some(Arc::from(members.as_slice())),
        _ => members_of(&record.conversation_id),
    };
    let deliverable = Deliverable::membership(record);
    let delivery_to = |recipients: Members, member_set: Option<MemberSet>| Delivery {
        deliverable: deliverable.clone(),
        conversation_id: Some(record.conversation_id.clone()),
        message_id: None,
        recipients,
        except: None,
        member_set,
    };
    let named = named_user(&record.change);
    let mut deliveries = Vec::with_capacity(2);
    let mut named_reached = false;
    if let Some(members) = members.filter(|members| !members.is_empty()) {
        named_reached = named.is_none_or(|user| members.contains(user));
        // Same rule as messages: a large group's item names its member
        // set, whose list each edge gets once.
        let member_set =
            (members.len() >= member_set_min_members).then(|| MemberSet::new(members.clone()));
        deliveries.push(delivery_to(members, member_set));
    }
    if let Some(user) = named
        && !named_reached
    {
        deliveries.push(delivery_to(Arc::from([user.clone()]), None));
    }
    deliveries
}

/// The user a membership change is about (added, removed, or given a
/// role), who gets its frame whether or not the member list shows them.
fn named_user(change: &MembershipChange) -> Option<&UserId> {
    match change {
        MembershipChange::Added { user_id }
        | MembershipChange::Removed { user_id }
        | MembershipChange::RoleChanged { user_id, .. } => Some(user_id),
        MembershipChange::Created { .. } | MembershipChange::SettingsChanged { .. } => None,
    }
}

impl<M: MembershipStore> FanoutHandler<M> {
    async fn resolve(&self, decoded: &[Decoded]) -> Result<Resolution, StoreError> {
        // A membership change this worker delivers reaches its cache first
        // (the membership tail applies it too, on its own schedule): once a
        // client has seen `member_added`, the messages sent after it are
        // planned with the new member list. Invalidating twice is harmless.
        for record in decoded {
            if let Decoded::Membership(record) = record {
                self.membership.apply_change(record).await;
            }
        }
        let mut conversations: HashSet<&ConversationId> = HashSet::new();
        let mut presence_users: HashSet<&UserId> = HashSet::new();
        for record in decoded {
            match record {
                Decoded::Message(message) => {
                    conversations.insert(&message.conversation_id);
                }
                Decoded::Change(change) => {
                    conversations.insert(&change.conversation_id);
                }
                // A created conversation's members are in the record.
                Decoded::Membership(record) => {
                    if !matches!(record.change, MembershipChange::Created { .. }) {
                        conversations.insert(&record.conversation_id);
                    }
                }
                Decoded::Event(event) => match &event.event {
                    Event::Typing {
                        conversation_id, ..
                    }
                    | Event::Read {
                        conversation_id, ..
                    } => {
                        conversations.insert(conversation_id);
                    }
                    Event::Presence { user_id, .. } => {
                        presence_users.insert(user_id);
                    }
                },
            }
        }
        let membership = &self.membership;
        let presence_users: Vec<UserId> = presence_users.into_iter().cloned().collect();
        let conversations_of: HashMap<UserId, Arc<[ConversationId]>> =
            futures::stream::iter(presence_users)
                .map(|user: UserId| async move {
                    let found = membership.conversations_of(&user).await?;
                    Ok::<_, StoreError>((user, found))
                })
                .buffer_unordered(self.resolve_concurrency)
                .try_collect()
                .await?;
        let mut all_conversations: HashSet<ConversationId> =
            conversations.into_iter().cloned().collect();
        all_conversations.extend(
            conversations_of
                .values()
                .flat_map(|found| found.iter().cloned()),
        );
        let members: HashMap<ConversationId, Option<Members>> =
            futures::stream::iter(all_conversations)
                .map(|conversation: ConversationId| async move {
                    let found = membership.recipients(&conversation).await?;
                    Ok::<_, StoreError>((conversation, found))
                })
                .buffer_unordered(self.resolve_concurrency)
                .try_collect()
                .await?;

        let mut resolution = Resolution {
            deliveries: Vec::with_capacity(decoded.len()),
            unknown_conversations: 0,
        };
        let members_of =
            |conversation: &ConversationId| members.get(conversation).cloned().flatten();
        // One digest per large conversation and batch.
        let member_sets: HashMap<&ConversationId, MemberSet> = members
            .iter()
            .filter_map(|(conversation, found)| {
                let found = found.as_ref()?;
                (found.len() >= self.member_set_min_members)
                    .then(|| (conversation, MemberSet::new(found.clone())))
            })
            .collect();
        let member_set_of = |conversation: &ConversationId| member_sets.get(conversation).cloned();
        for record in decoded {
            let delivery = match record {
                Decoded::Membership(membership) => {
                    let deliveries =
                        membership_deliveries(membership, members_of, self.member_set_min_members);
                    if deliveries.is_empty() {
                        resolution.unknown_conversations += 1;
                    }
                    resolution.deliveries.extend(deliveries);
                    continue;
                }
                Decoded::Message(message) => {
                    members_of(&message.conversation_id).map(|recipients| Delivery {
                        deliverable: Deliverable::message(&MessageView::from(message)),
                        conversation_id: Some(message.conversation_id.clone()),
                        message_id: Some(message.message_id),
                        // Every member, the sender included: the sender's other
                        // devices show what was sent.
                        recipients,
                        except: None,
                        member_set: member_set_of(&message.conversation_id),
                    })
                }
                Decoded::Change(change) => {
                    members_of(&change.conversation_id).map(|recipients| Delivery {
                        deliverable: Deliverable::message_change(change),
                        conversation_id: Some(change.conversation_id.clone()),
                        // Not a message: edges do not count it as one.
                        message_id: None,
                        // The actor's other devices show the change too.
                        recipients,
                        except: None,
                        member_set: member_set_of(&change.conversation_id),
                    })
                }
                Decoded::Event(event) => match &event.event {
                    Event::Typing {
                        conversation_id,
                        user_id,
                    } => members_of(conversation_id).map(|recipients| Delivery {
                        deliverable: Deliverable::typing(conversation_id, user_id),
                        conversation_id: Some(conversation_id.clone()),
                        message_id: None,
                        recipients,
                        except: Some(user_id.clone()),
                        member_set: member_set_of(conversation_id),
                    }),
                    Event::Read {
                        conversation_id,
                        user_id,
                        message_id,
                    } => members_of(conversation_id).map(|recipients| Delivery {
                        deliverable: Deliverable::read(conversation_id, user_id, *message_id),
                        conversation_id: Some(conversation_id.clone()),
                        message_id: None,
                        recipients,
                        // The reader too: their other devices move their
                        // marker (the edge leaves out the session that
                        // sent it, which knows it already).
                        except: None,
                        member_set: member_set_of(conversation_id),
                    }),
                    Event::Presence {
                        user_id, status, ..
                    } => {
                        let mut seen: HashSet<&UserId> = HashSet::new();
                        let mut recipients: Vec<UserId> = Vec::new();
                        let member_lists = conversations_of
                            .get(user_id)
                            .into_iter()
                            .flat_map(|found| found.iter())
                            .filter_map(|conversation| {
                                members.get(conversation).and_then(Option::as_ref)
                            })
                            // Presence in very large groups would cost
                            // members² pushes when everyone connects.
                            .filter(|list| list.len() <= self.presence_max_members);
                        for list in member_lists {
                            for member in list.iter() {
                                if member != user_id && seen.insert(member) {
                                    recipients.push(member.clone());
                                }
                            }
                        }
                        Some(Delivery {
                            deliverable: Deliverable::presence(user_id, *status),
                            conversation_id: None,
                            message_id: None,
                            recipients: Arc::from(recipients),
                            except: Some(user_id.clone()),
                            // Merged over conversations: always a list.
                            member_set: None,
                        })
                    }
                },
            };
            match delivery {
                Some(delivery) => resolution.deliveries.push(delivery),
                None => resolution.unknown_conversations += 1,
            }
        }
        Ok(resolution)
    }

    /// Whether a presence report changes what members see (see
    /// [`PresenceTracker`]). Reports of edges that do not name themselves
    /// (older versions) pass as they come.
    fn presence_changes(&mut self, event: &EventRecord) -> bool {
        let Event::Presence {
            user_id,
            status,
            edge_id: Some(edge_id),
        } = &event.event
        else {
            return true;
        };
        let now = now_unix_ms();
        let routes = &self.routes;
        let verdict = self.presence.judge(
            user_id,
            *status,
            edge_id,
            || {
                routes.read(|table| {
                    table
                        .live_edges(user_id, now)
                        .into_iter()
                        .map(|live| live.edge_id)
                        .collect()
                })
            },
            |held| routes.read(|table| table.push_addr_of(held, now).is_some()),
        );
        verdict == PresenceVerdict::Deliver
    }
}

impl<M: MembershipStore> BatchHandler for FanoutHandler<M> {
    async fn handle(&mut self, batch: &[Record]) -> Result<(), HandlerError> {
        let mut decoded = Vec::with_capacity(batch.len());
        let (mut messages_in, mut events_in, mut membership_in) = (0u64, 0u64, 0u64);
        let mut verdicts: Vec<(EdgeId, chatpipe_proto::push::SendVerdict)> = Vec::new();
        for message in batch {
            if message.topic() == self.topics.messages {
                messages_in += 1;
            } else if message.topic() == self.topics.membership {
                membership_in += 1;
            } else {
                events_in += 1;
            }
            match decode(message, &self.topics) {
                Ok(Decoded::Message(record)) => {
                    let verdict = self
                        .dedup
                        .judge(message.partition(), message.offset(), &record)
                        .await?;
                    if record.resend {
                        verdicts.push((record.edge_id.clone(), verdict_for(&record, verdict)));
                    }
                    if !verdict.is_duplicate() {
                        decoded.push(Decoded::Message(record));
                    }
                }
                Ok(Decoded::Change(record)) => {
                    // Not a send: judged by nobody, but the partition moves on.
                    self.dedup.skip(message.partition(), message.offset());
                    decoded.push(Decoded::Change(record));
                }
                Ok(Decoded::Event(record)) => {
                    let changes = match self.presence_judged.get(&message.offset()) {
                        Some(judged) => *judged,
                        None => {
                            let judged = self.presence_changes(&record);
                            self.presence_judged.insert(message.offset(), judged);
                            judged
                        }
                    };
                    if changes {
                        decoded.push(Decoded::Event(record));
                    } else {
                        self.metrics.count_item_skipped("presence_unchanged");
                    }
                }
                Ok(Decoded::Membership(record)) => {
                    if now_unix_ms().saturating_sub(record.ts) > self.membership_event_max_age_ms {
                        self.metrics.count_item_skipped("stale_membership_event");
                    } else {
                        decoded.push(Decoded::Membership(record));
                    }
                }
                Err(reason) => {
                    if message.topic() == self.topics.messages {
                        self.dedup.skip(message.partition(), message.offset());
                    }
                    let coordinates = (
                        message.topic().to_owned(),
                        message.partition(),
                        message.offset(),
                    );
                    if self.dead_lettered.contains(&coordinates) {
                        continue;
                    }
                    self.dead_letters
                        .publish(message, &reason)
                        .await
                        .map_err(|error| {
                            HandlerError::retriable(format!("dead-letter publish failed: {error}"))
                        })?;
                    self.dead_lettered.insert(coordinates);
                }
            }
        }

        // Nothing has been pushed yet, so retrying the whole batch is safe.
        // Even a non-retriable store error is retried (the consumer shows as
        // degraded): giving up would stop fan-out for every conversation.
        let resolution = self
            .resolve(&decoded)
            .await
            .map_err(|error| HandlerError::retriable(format!("membership store: {error}")))?;

        let suspects = self.pushers.suspects();
        let now = now_unix_ms();
        let plan = self
            .routes
            .read(|table| plan_pushes(&resolution.deliveries, table, now, &suspects));
        let pushed_items: usize = plan.batches.iter().map(|batch| batch.items.len()).sum();
        let pushers = &self.pushers;
        let routes = &self.routes;
        let shutdown = &self.shutdown;
        let results = futures::future::join_all(plan.batches.into_iter().map(|batch| async move {
            let still_live = || {
                routes.read(|table| {
                    table.is_edge_live_at(&batch.edge_id, &batch.push_addr, now_unix_ms())
                })
            };
            pushers
                .push(
                    &batch.edge_id,
                    &batch.push_addr,
                    batch.items,
                    &batch.member_sets,
                    still_live,
                    shutdown,
                )
                .await
        }))
        .await;
        let delivered_per_edge: Vec<u64> = results
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|interrupted| HandlerError::retriable(interrupted.to_string()))?;

        let delivered: u64 = delivered_per_edge.iter().sum();
        self.metrics.deliveries.inc_by(delivered);
        self.metrics.pushed_items.inc_by(pushed_items as u64);
        self.metrics
            .recipients_offline
            .inc_by(plan.recipients_offline);
        self.metrics
            .recipients_skipped_suspect
            .inc_by(plan.recipients_skipped_suspect);
        // A skipped edge misses these items: its next answered push carries
        // `resync`.
        for edge_id in &plan.suspect_edges_skipped {
            self.pushers.note_skipped(edge_id);
            self.metrics.count_push(PushOutcome::SkippedSuspect);
        }
        for _ in 0..resolution.unknown_conversations {
            self.metrics.count_item_skipped("unknown_conversation");
        }
        self.metrics.count_records_in(MESSAGES, messages_in);
        self.metrics.count_records_in(EVENTS, events_in);
        self.metrics.count_records_in(MEMBERSHIP, membership_in);
        // After the batch's deliveries; best effort (see `verdicts`).
        self.verdicts.push(&self.routes, verdicts).await;
        self.dead_lettered.clear();
        self.presence_judged.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chatpipe_core::records::SCHEMA_VERSION;

    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn record(change: MembershipChange) -> MembershipRecord {
        MembershipRecord {
            schema_version: SCHEMA_VERSION,
            conversation_id: ConversationId::parse("c1").unwrap(),
            change,
            actor_id: user("owner"),
            ts: 1,
        }
    }

    fn members(names: &[&str]) -> Option<Members> {
        Some(names.iter().map(|name| user(name)).collect())
    }

    fn recipients(delivery: &Delivery) -> Vec<&str> {
        delivery.recipients.iter().map(UserId::as_str).collect()
    }

    #[test]
    fn a_membership_frame_reaches_the_members_and_the_user_it_names() {
        // The cache already lists the new member: one delivery.
        let added = record(MembershipChange::Added {
            user_id: user("new"),
        });
        let deliveries = membership_deliveries(&added, |_| members(&["owner", "new"]), 1_000);
        assert_eq!(deliveries.len(), 1);
        assert_eq!(recipients(&deliveries[0]), vec!["owner", "new"]);
        assert_eq!(deliveries[0].deliverable.op.as_str(), "member_added");
        assert!(deliveries[0].member_set.is_none());

        // Not yet: the new member gets it on their own.
        let deliveries = membership_deliveries(&added, |_| members(&["owner"]), 1_000);
        assert_eq!(deliveries.len(), 2);
        assert_eq!(recipients(&deliveries[1]), vec!["new"]);

        // A removed member is told, besides the members who stay.
        let removed = record(MembershipChange::Removed {
            user_id: user("gone"),
        });
        let deliveries = membership_deliveries(&removed, |_| members(&["owner"]), 1_000);
        let all: Vec<Vec<&str>> = deliveries.iter().map(recipients).collect();
        assert_eq!(all, vec![vec!["owner"], vec!["gone"]]);

        // The last member left: only they are told.
        let deliveries = membership_deliveries(&removed, |_| members(&[]), 1_000);
        assert_eq!(deliveries.len(), 1);
        assert_eq!(recipients(&deliveries[0]), vec!["gone"]);

        // A created conversation's members come from the record itself.
        let created = record(MembershipChange::Created {
            members: vec![user("owner"), user("b")],
            title: None,
            history_visibility: None,
        });
        let deliveries = membership_deliveries(&created, |_| None, 1_000);
        assert_eq!(deliveries.len(), 1);
        assert_eq!(recipients(&deliveries[0]), vec!["owner", "b"]);
        assert_eq!(
            deliveries[0].deliverable.op.as_str(),
            "conversation_created"
        );

        // Settings of a conversation that is gone: nobody.
        let updated = record(MembershipChange::SettingsChanged {
            history_visibility: chatpipe_core::membership::HistoryVisibility::Joined,
        });
        assert!(membership_deliveries(&updated, |_| None, 1_000).is_empty());
    }

    #[test]
    fn a_large_group_is_told_through_its_member_set() {
        let names: Vec<String> = (0..20_000).map(|index| format!("m{index}")).collect();
        let list: Members = names.iter().map(|name| user(name)).collect();
        let removed = record(MembershipChange::Removed {
            user_id: user("gone"),
        });
        let deliveries = membership_deliveries(&removed, |_| Some(list.clone()), 1_000);
        assert_eq!(deliveries.len(), 2);
        let set = deliveries[0]
            .member_set
            .as_ref()
            .expect("a member set for 20,000 members");
        assert_eq!(set.members.len(), 20_000);
        // The removed member alone is listed by id.
        assert!(deliveries[1].member_set.is_none());
        assert_eq!(recipients(&deliveries[1]), vec!["gone"]);
    }
}
