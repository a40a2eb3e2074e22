//! From resolved items to one push per edge — pure, no I/O.
//!
//! Given the items of one Kafka batch in Kafka order, each with its
//! recipients, and the route table, [`plan_pushes`] builds one
//! [`EdgeBatch`] per live edge: the items that have at least one recipient
//! on that edge, still in Kafka order, each carrying only the recipients
//! that edge holds. A 10,000-member conversation spread over two edges thus
//! costs two pushes, whatever the member count.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chatpipe_core::frames::Deliverable;
use chatpipe_core::{ConversationId, EdgeId, MessageId, UserId};
use chatpipe_proto::push::PushItem;

use crate::routes::RouteTable;

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
}

/// The push for one edge.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeBatch {
    pub edge_id: EdgeId,
    pub push_addr: Arc<str>,
    pub items: Vec<PushItem>,
    /// Recipients over all items (a user counts once per item).
    pub recipient_count: usize,
    last_delivery: Option<usize>,
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
    }
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
                    }
                    let item = batch
                        .items
                        .last_mut()
                        .expect("an item was just pushed for this delivery");
                    item.recipients.push(recipient.as_str().to_owned());
                    batch.recipient_count += 1;
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

    fn message(id: u64, members: &[&str]) -> Delivery {
        let view = MessageView {
            message_id: MessageId::from_u64(id),
            conversation_id: ConversationId::parse("c1").unwrap(),
            sender_id: user(members[0]),
            client_msg_id: ClientMsgId::parse(format!("m{id}")).unwrap(),
            body: format!("body {id}"),
            ts: 1,
        };
        Delivery {
            deliverable: Deliverable::message(&view),
            conversation_id: Some(view.conversation_id.clone()),
            message_id: Some(view.message_id),
            recipients: members.iter().map(|name| user(name)).collect(),
            except: None,
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
        };
        let presence = Delivery {
            deliverable: Deliverable::presence(&user("b"), PresenceStatus::Online),
            conversation_id: None,
            message_id: None,
            recipients: ["a", "b", "d"].iter().map(|name| user(name)).collect(),
            except: Some(user("b")),
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
        let routes_list: Vec<(&str, &str)> = names
            .iter()
            .enumerate()
            .map(|(index, name)| (name.as_str(), if index % 2 == 0 { "e1" } else { "e2" }))
            .collect();
        let routes = table(&routes_list, &[("e1", 1_000), ("e2", 1_000)]);
        let member_names: Vec<&str> = names.iter().map(String::as_str).collect();
        let plan = plan_pushes(&[message(7, &member_names)], &routes, 1, &HashSet::new());
        assert_eq!(plan.batches.len(), 2);
        assert!(
            plan.batches
                .iter()
                .all(|batch| batch.items.len() == 1 && batch.recipient_count == 5_000)
        );
    }
}
