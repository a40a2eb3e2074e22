//! From resolved items to one push per edge — pure, no I/O.
//!
//! Given the items of one Kafka batch in Kafka order, each with its
//! recipients, and the route table, [`plan_pushes`] builds one
//! [`EdgeBatch`] per live edge: the items that have at least one recipient
//! on that edge, still in Kafka order, each carrying only the recipients
//! that edge holds. A 10,000-member conversation spread over two edges thus
//! costs two pushes, whatever the member count.
//!
//! An item of a large group (a [`MemberSet`], see `schemas/proto/push.proto`)
//! carries no recipient ids at all: only the reference of the member set,
//! whose list the edge keeps, so its cost on the wire and on the edge no
//! longer grows with the member count per message.

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::sync::Arc;

use chatpipe_core::frames::Deliverable;
use chatpipe_core::{ConversationId, EdgeId, MessageId, UserId};
use chatpipe_proto::push::PushItem;

use crate::routes::RouteTable;

/// The members of a large conversation as one referenceable set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSet {
    /// Digest of the members (never 0; see [`member_set_id`]).
    pub id: u64,
    pub members: Arc<[UserId]>,
}

impl MemberSet {
    pub fn new(members: Arc<[UserId]>) -> Self {
        Self {
            id: member_set_id(&members),
            members,
        }
    }
}

/// A member set as the edges know it: (conversation, set id).
pub type MemberSetKey = (String, u64);

/// A digest of a member list, independent of its order: any change of
/// membership gives another id (up to 64-bit collisions). Never 0, which
/// means "no member set" on the wire.
pub fn member_set_id(members: &[UserId]) -> u64 {
    let mut sum: u64 = 0;
    let mut mixed: u64 = 0;
    for member in members {
        // FNV-1a, then a finaliser, so that similar ids spread well.
        let mut hasher = Fnv1a::default();
        hasher.write(member.as_str().as_bytes());
        let hash = finalise(hasher.finish());
        sum = sum.wrapping_add(hash);
        mixed ^= finalise(hash ^ 0x9E37_79B9_7F4A_7C15);
    }
    let id = finalise(sum ^ mixed.rotate_left(17) ^ (members.len() as u64));
    id.max(1)
}

/// The splitmix64 finaliser.
fn finalise(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    value ^ (value >> 31)
}

/// 64-bit FNV-1a: stable across processes and builds (unlike std's
/// `DefaultHasher`), so every fan-out worker names a set the same way.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xCBF2_9CE4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

/// One item to deliver, with whom it goes to.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub deliverable: Deliverable,
    /// `None` for presence.
    pub conversation_id: Option<ConversationId>,
    /// `Some` for messages.
    pub message_id: Option<MessageId>,
    /// The candidate recipients (deduplicated).
    pub recipients: Arc<[UserId]>,
    /// A recipient to leave out (the actor of typing, read and presence).
    pub except: Option<UserId>,
    /// `Some` for a large group: the items name this set instead of
    /// listing recipients (`recipients` are its members).
    pub member_set: Option<MemberSet>,
}

/// A member set used by the items of one edge's push.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeMemberSet {
    pub members: Arc<[UserId]>,
    /// Members routed to this edge: the edge's work per item of the set.
    pub local_recipients: usize,
    /// The delivery whose recipients were counted.
    counted_for: usize,
}

impl EdgeMemberSet {
    pub fn new(members: Arc<[UserId]>, local_recipients: usize) -> Self {
        Self {
            members,
            local_recipients,
            counted_for: 0,
        }
    }
}

/// The push for one edge.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeBatch {
    pub edge_id: EdgeId,
    pub push_addr: Arc<str>,
    pub items: Vec<PushItem>,
    /// Recipients over all items (a user counts once per item).
    pub recipient_count: usize,
    /// The member sets the items reference.
    pub member_sets: HashMap<MemberSetKey, EdgeMemberSet>,
    last_delivery: Option<usize>,
}

impl EdgeBatch {
    /// The edge's work for `item`: its recipients, or its member set's
    /// members on this edge.
    pub fn weight(&self, item: &PushItem) -> usize {
        item_weight(item, &self.member_sets)
    }
}

/// See [`EdgeBatch::weight`].
pub fn item_weight(item: &PushItem, member_sets: &HashMap<MemberSetKey, EdgeMemberSet>) -> usize {
    if item.member_set == 0 {
        return item.recipients.len();
    }
    member_sets
        .get(&(item.conversation_id.clone(), item.member_set))
        .map_or(1, |set| set.local_recipients.max(1))
}

/// What [`plan_pushes`] decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushPlan {
    /// One entry per edge, in the order edges first appeared in the batch.
    pub batches: Vec<EdgeBatch>,
    /// Recipient × item pairs with no live edge (offline users).
    pub recipients_offline: u64,
    /// Recipient × item × edge triples left out because the edge is suspect.
    pub recipients_skipped_suspect: u64,
    /// Suspect edges that would have received something.
    pub suspect_edges_skipped: Vec<EdgeId>,
}

fn push_item(delivery: &Delivery) -> PushItem {
    PushItem {
        op: delivery.deliverable.op.as_str().to_owned(),
        fields_json: delivery.deliverable.fields_json.clone(),
        recipients: Vec::new(),
        conversation_id: delivery
            .conversation_id
            .as_ref()
            .map(|conversation| conversation.as_str().to_owned())
            .unwrap_or_default(),
        message_id: delivery
            .message_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
        member_set: delivery.member_set.as_ref().map_or(0, |set| set.id),
        member_set_members: Vec::new(),
        except_user: match (&delivery.member_set, &delivery.except) {
            (Some(_), Some(except)) => except.as_str().to_owned(),
            _ => String::new(),
        },
    }
}

fn push_item_conversation(delivery: &Delivery) -> String {
    delivery
        .conversation_id
        .as_ref()
        .map(|conversation| conversation.as_str().to_owned())
        .unwrap_or_default()
}

/// Groups `deliveries` by the live edges of their recipients at
/// `now_unix_ms`, leaving out edges in `suspects`.
pub fn plan_pushes(
    deliveries: &[Delivery],
    table: &RouteTable,
    now_unix_ms: u64,
    suspects: &HashSet<EdgeId>,
) -> PushPlan {
    let mut plan = PushPlan::default();
    let mut slot_of_edge: HashMap<EdgeId, usize> = HashMap::new();
    let mut suspect_hit: HashSet<EdgeId> = HashSet::new();
    for (delivery_index, delivery) in deliveries.iter().enumerate() {
        let set_key: Option<MemberSetKey> = delivery
            .member_set
            .as_ref()
            .map(|set| (push_item_conversation(delivery), set.id));
        for recipient in delivery.recipients.iter() {
            if delivery.except.as_ref() == Some(recipient) {
                continue;
            }
            let live_edges =
                table.for_each_live_edge(recipient, now_unix_ms, |edge_id, push_addr| {
                    if suspects.contains(edge_id) {
                        plan.recipients_skipped_suspect += 1;
                        if !suspect_hit.contains(edge_id) {
                            suspect_hit.insert(edge_id.clone());
                            plan.suspect_edges_skipped.push(edge_id.clone());
                        }
                        return;
                    }
                    let slot = match slot_of_edge.get(edge_id) {
                        Some(slot) => *slot,
                        None => {
                            plan.batches.push(EdgeBatch {
                                edge_id: edge_id.clone(),
                                push_addr: push_addr.clone(),
                                items: Vec::new(),
                                recipient_count: 0,
                                member_sets: HashMap::new(),
                                last_delivery: None,
                            });
                            slot_of_edge.insert(edge_id.clone(), plan.batches.len() - 1);
                            plan.batches.len() - 1
                        }
                    };
                    let batch = &mut plan.batches[slot];
                    if batch.last_delivery != Some(delivery_index) {
                        batch.items.push(push_item(delivery));
                        batch.last_delivery = Some(delivery_index);
                        if let (Some(key), Some(set)) = (&set_key, &delivery.member_set) {
                            batch
                                .member_sets
                                .entry(key.clone())
                                .or_insert_with(|| EdgeMemberSet {
                                    members: set.members.clone(),
                                    local_recipients: 0,
                                    counted_for: delivery_index,
                                });
                        }
                    }
                    batch.recipient_count += 1;
                    match &set_key {
                        // The edge resolves the set: no id on the wire. Its
                        // local members are counted on its first item.
                        Some(key) => {
                            if let Some(entry) = batch.member_sets.get_mut(key)
                                && entry.counted_for == delivery_index
                            {
                                entry.local_recipients += 1;
                            }
                        }
                        None => {
                            let item = batch
                                .items
                                .last_mut()
                                .expect("an item was just pushed for this delivery");
                            item.recipients.push(recipient.as_str().to_owned());
                        }
                    }
                });
            if live_edges == 0 {
                plan.recipients_offline += 1;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use chatpipe_core::frames::MessageView;
    use chatpipe_core::records::{EdgeRecord, EdgeState, RouteRecord, SCHEMA_VERSION, SessionKey};
    use chatpipe_core::{ClientMsgId, records::PresenceStatus};

    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn table(routes: &[(&str, &str)], edges: &[(&str, u64)]) -> RouteTable {
        let mut table = RouteTable::new(0);
        for (edge_name, lease_expires_ms) in edges {
            let edge_id = EdgeId::parse(*edge_name).unwrap();
            let record = EdgeRecord {
                schema_version: SCHEMA_VERSION,
                edge_id: edge_id.clone(),
                push_addr: format!("{edge_name}:1"),
                state: EdgeState::Serving,
                lease_expires_ms: *lease_expires_ms,
                worker_id: None,
                ts: 0,
            };
            let key = SessionKey::Edge(edge_id).encode();
            table
                .apply(
                    Some(key.as_bytes()),
                    Some(&serde_json::to_vec(&record).unwrap()),
                )
                .unwrap();
        }
        for (user_name, edge_name) in routes {
            let record = RouteRecord {
                schema_version: SCHEMA_VERSION,
                user_id: user(user_name),
                edge_id: EdgeId::parse(*edge_name).unwrap(),
                sessions: 1,
                ts: 0,
            };
            let key = SessionKey::Route(record.user_id.clone(), record.edge_id.clone()).encode();
            table
                .apply(
                    Some(key.as_bytes()),
                    Some(&serde_json::to_vec(&record).unwrap()),
                )
                .unwrap();
        }
        table
    }

    /// Routes `names` alternately to edges `e1` and `e2` (both live).
    fn alternating_edges(names: &[String]) -> RouteTable {
        let routes_list: Vec<(&str, &str)> = names
            .iter()
            .enumerate()
            .map(|(index, name)| (name.as_str(), if index % 2 == 0 { "e1" } else { "e2" }))
            .collect();
        table(&routes_list, &[("e1", 1_000), ("e2", 1_000)])
    }

    fn message(id: u64, members: &[&str]) -> Delivery {
        let view = MessageView {
            message_id: MessageId::from_u64(id),
            conversation_id: ConversationId::parse("c1").unwrap(),
            sender_id: user(members[0]),
            client_msg_id: ClientMsgId::parse(format!("m{id}")).unwrap(),
            body: format!("body {id}"),
            ts: 1,
            reply_to: None,
            mentions: Vec::new(),
        };
        Delivery {
            deliverable: Deliverable::message(&view),
            conversation_id: Some(view.conversation_id.clone()),
            message_id: Some(view.message_id),
            recipients: members.iter().map(|name| user(name)).collect(),
            except: None,
            member_set: None,
        }
    }

    fn recipients(item: &PushItem) -> Vec<&str> {
        item.recipients.iter().map(String::as_str).collect()
    }

    #[test]
    fn one_batch_per_edge_with_only_its_recipients_in_order() {
        let routes = table(
            &[("a", "e1"), ("b", "e2"), ("c", "e1"), ("c", "e2")],
            &[("e1", 1_000), ("e2", 1_000)],
        );
        let deliveries: Vec<Delivery> = (1..=3)
            .map(|id| message(id, &["a", "b", "c", "offline"]))
            .collect();
        let plan = plan_pushes(&deliveries, &routes, 500, &HashSet::new());
        assert_eq!(plan.batches.len(), 2);
        let e1 = &plan.batches[0];
        assert_eq!(e1.edge_id.as_str(), "e1");
        assert_eq!(e1.items.len(), 3);
        let ids: Vec<&str> = e1
            .items
            .iter()
            .map(|item| item.message_id.as_str())
            .collect();
        assert_eq!(ids, vec!["1", "2", "3"]);
        assert!(
            e1.items
                .iter()
                .all(|item| recipients(item) == vec!["a", "c"])
        );
        assert!(
            plan.batches[1]
                .items
                .iter()
                .all(|item| recipients(item) == vec!["b", "c"])
        );
        assert_eq!(e1.items[0].op, "message");
        assert_eq!(e1.items[0].conversation_id, "c1");
        assert_eq!(plan.recipients_offline, 3);
        assert_eq!(e1.recipient_count, 6);
    }

    #[test]
    fn actors_expired_edges_and_suspects_are_left_out() {
        let routes = table(
            &[("a", "e1"), ("b", "e1"), ("c", "expired"), ("d", "suspect")],
            &[("e1", 1_000), ("expired", 10), ("suspect", 1_000)],
        );
        let conversation = ConversationId::parse("c1").unwrap();
        let typing = Delivery {
            deliverable: Deliverable::typing(&conversation, &user("a")),
            conversation_id: Some(conversation.clone()),
            message_id: None,
            recipients: ["a", "b", "c", "d"].iter().map(|name| user(name)).collect(),
            except: Some(user("a")),
            member_set: None,
        };
        let presence = Delivery {
            deliverable: Deliverable::presence(&user("b"), PresenceStatus::Online),
            conversation_id: None,
            message_id: None,
            recipients: ["a", "b", "d"].iter().map(|name| user(name)).collect(),
            except: Some(user("b")),
            member_set: None,
        };
        let suspects: HashSet<EdgeId> = [EdgeId::parse("suspect").unwrap()].into_iter().collect();
        let plan = plan_pushes(&[typing, presence], &routes, 500, &suspects);
        assert_eq!(plan.batches.len(), 1);
        let items = &plan.batches[0].items;
        assert_eq!(items.len(), 2);
        assert_eq!(
            (items[0].op.as_str(), recipients(&items[0])),
            ("typing", vec!["b"])
        );
        assert_eq!(
            (items[1].op.as_str(), recipients(&items[1])),
            ("presence", vec!["a"])
        );
        assert_eq!(items[1].conversation_id, "");
        assert_eq!(plan.recipients_offline, 1, "c is only on an expired edge");
        assert_eq!(plan.recipients_skipped_suspect, 2);
        assert_eq!(
            plan.suspect_edges_skipped,
            vec![EdgeId::parse("suspect").unwrap()]
        );
    }

    #[test]
    fn a_large_group_costs_one_batch_per_edge() {
        let names: Vec<String> = (0..10_000).map(|index| format!("u{index}")).collect();
        let routes = alternating_edges(&names);
        let member_names: Vec<&str> = names.iter().map(String::as_str).collect();
        let plan = plan_pushes(&[message(7, &member_names)], &routes, 1, &HashSet::new());
        assert_eq!(plan.batches.len(), 2);
        assert!(
            plan.batches
                .iter()
                .all(|batch| batch.items.len() == 1 && batch.recipient_count == 5_000)
        );
    }

    #[test]
    fn a_large_group_names_its_member_set_instead_of_listing_recipients() {
        let routes = table(
            &[("a", "e1"), ("b", "e1"), ("c", "e2")],
            &[("e1", 1_000), ("e2", 1_000)],
        );
        let members: Arc<[UserId]> = ["a", "b", "c", "offline"]
            .iter()
            .map(|name| user(name))
            .collect();
        let set = MemberSet::new(members.clone());
        let conversation = ConversationId::parse("c1").unwrap();
        let mut first = message(1, &["a", "b", "c", "offline"]);
        first.member_set = Some(set.clone());
        let mut second = message(2, &["a", "b", "c", "offline"]);
        second.member_set = Some(set.clone());
        let typing = Delivery {
            deliverable: Deliverable::typing(&conversation, &user("a")),
            conversation_id: Some(conversation.clone()),
            message_id: None,
            recipients: members.clone(),
            except: Some(user("a")),
            member_set: Some(set.clone()),
        };
        let plan = plan_pushes(&[first, second, typing], &routes, 500, &HashSet::new());
        assert_eq!(plan.batches.len(), 2);
        let e1 = &plan.batches[0];
        assert_eq!(e1.items.len(), 3);
        assert!(e1.items.iter().all(|item| item.recipients.is_empty()
            && item.member_set == set.id
            && item.conversation_id == "c1"));
        assert_eq!(e1.items[2].except_user, "a");
        assert_eq!(e1.items[0].except_user, "");
        let key = ("c1".to_owned(), set.id);
        assert_eq!(e1.member_sets[&key].local_recipients, 2);
        assert_eq!(e1.member_sets[&key].members, members);
        assert_eq!(e1.weight(&e1.items[0]), 2);
        let e2 = &plan.batches[1];
        assert_eq!(e2.items.len(), 3, "c is on e2 for every item");
        assert_eq!(e2.member_sets[&key].local_recipients, 1);
        assert_eq!(plan.recipients_offline, 3);
    }

    #[test]
    fn member_set_ids_follow_membership_not_order() {
        let list =
            |names: &[&str]| -> Vec<UserId> { names.iter().map(|name| user(name)).collect() };
        let id = member_set_id(&list(&["a", "b", "c"]));
        assert_eq!(id, member_set_id(&list(&["c", "a", "b"])));
        assert_ne!(id, member_set_id(&list(&["a", "b"])));
        assert_ne!(id, member_set_id(&list(&["a", "b", "d"])));
        assert_ne!(member_set_id(&[]), 0);
        // Stable across processes: a digest of the bytes, no random seed.
        assert_eq!(id, member_set_id(&list(&["b", "c", "a"])));
    }

    #[test]
    fn a_member_set_push_does_not_grow_with_the_group() {
        use prost::Message;
        let names: Vec<String> = (0..10_000)
            .map(|index| format!("member-{index:05}"))
            .collect();
        let routes = alternating_edges(&names);
        let member_names: Vec<&str> = names.iter().map(String::as_str).collect();
        let listed = message(7, &member_names);
        let mut by_set = listed.clone();
        by_set.member_set = Some(MemberSet::new(listed.recipients.clone()));
        let wire_bytes = |delivery: Delivery| -> usize {
            plan_pushes(&[delivery], &routes, 1, &HashSet::new())
                .batches
                .iter()
                .map(|batch| {
                    chatpipe_proto::push::PushBatch {
                        source: "w".into(),
                        items: batch.items.clone(),
                        resync: false,
                        ..Default::default()
                    }
                    .encoded_len()
                })
                .sum()
        };
        let (listed_bytes, set_bytes) = (wire_bytes(listed), wire_bytes(by_set));
        eprintln!(
            "one message to 10,000 members over 2 edges: {listed_bytes} bytes as recipient lists, {set_bytes} bytes as member-set references"
        );
        assert!(listed_bytes > 100_000);
        assert!(set_bytes < 1_000);
    }
}
