//! The end-of-run checks, as pure functions over what the clients saw and
//! what the API returned:
//!
//! - every acknowledged message reached every member that was online for
//!   it (first `hello` before the send), live or by a history catch-up,
//!   after de-duplication by `message_id`;
//! - every recipient saw a conversation's messages in one order;
//! - history holds every acknowledged message exactly once, newest first.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::client::{AckRecord, ClientReport};

/// A member that should have received a message and did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingDelivery {
    pub message_id: u64,
    pub conversation: u32,
    pub user: u32,
}

/// Outcome of the delivery check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeliveryCheck {
    pub acked_messages: u64,
    pub duplicate_acked_ids: Vec<u64>,
    /// Member × message pairs that had to arrive.
    pub expected: u64,
    pub delivered_live: u64,
    pub delivered_by_catch_up: u64,
    pub missing: Vec<MissingDelivery>,
    /// How many were missing (`missing` may be cut short in results files).
    #[serde(default)]
    pub missing_total: u64,
    /// Recipients whose live order of a conversation contradicts another's.
    pub order_violations: Vec<(u32, u32)>,
}

impl DeliveryCheck {
    pub fn passed(&self) -> bool {
        self.missing.is_empty()
            && self.duplicate_acked_ids.is_empty()
            && self.order_violations.is_empty()
    }
}

/// Checks deliveries. `members[c]` are conversation `c`'s members; the
/// sender itself is not required to receive its own message (it has one
/// device here).
pub fn check_deliveries(
    members: &[Vec<u32>],
    acks: &[AckRecord],
    clients: &[ClientReport],
) -> DeliveryCheck {
    let mut check = DeliveryCheck {
        acked_messages: acks.len() as u64,
        ..DeliveryCheck::default()
    };
    let mut seen_ids = HashSet::with_capacity(acks.len());
    for ack in acks {
        if !seen_ids.insert(ack.message_id) {
            check.duplicate_acked_ids.push(ack.message_id);
        }
    }
    let by_user: HashMap<u32, (&ClientReport, HashSet<u64>, HashSet<u64>)> = clients
        .iter()
        .map(|client| {
            (
                client.user,
                (
                    client,
                    client.delivered.iter().copied().collect(),
                    client.caught_up.iter().copied().collect(),
                ),
            )
        })
        .collect();
    for ack in acks {
        let Some(conversation_members) = members.get(ack.conversation as usize) else {
            continue;
        };
        for &member in conversation_members {
            if member == ack.sender {
                continue;
            }
            let Some((client, live, caught_up)) = by_user.get(&member) else {
                continue;
            };
            let online =
                client.first_online_unix_us != 0 && client.first_online_unix_us < ack.sent_unix_us;
            if !online {
                continue;
            }
            check.expected += 1;
            if live.contains(&ack.message_id) {
                check.delivered_live += 1;
            } else if caught_up.contains(&ack.message_id) {
                check.delivered_by_catch_up += 1;
            } else {
                check.missing.push(MissingDelivery {
                    message_id: ack.message_id,
                    conversation: ack.conversation,
                    user: member,
                });
            }
        }
    }
    check.missing_total = check.missing.len() as u64;
    check.order_violations = order_violations(clients);
    check
}

/// `(user, conversation)` pairs whose live order of a conversation
/// contradicts the order the conversation's longest-seen list has.
pub fn order_violations(clients: &[ClientReport]) -> Vec<(u32, u32)> {
    let mut lists: HashMap<u32, Vec<(u32, &Vec<u64>)>> = HashMap::new();
    for client in clients {
        for (conversation, list) in &client.order {
            lists
                .entry(*conversation)
                .or_default()
                .push((client.user, list));
        }
    }
    let mut violations = Vec::new();
    for (conversation, recipients) in lists {
        let Some((_, reference)) = recipients.iter().max_by_key(|(_, list)| list.len()) else {
            continue;
        };
        let position: HashMap<u64, usize> = reference
            .iter()
            .enumerate()
            .map(|(index, id)| (*id, index))
            .collect();
        for (user, list) in &recipients {
            let mut last = None;
            for id in list.iter() {
                let Some(&here) = position.get(id) else {
                    continue;
                };
                if last.is_some_and(|previous| here < previous) {
                    violations.push((*user, conversation));
                    break;
                }
                last = Some(here);
            }
        }
    }
    violations.sort_unstable();
    violations
}

/// Outcome of one conversation's history check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryCheck {
    pub missing: Vec<u64>,
    pub duplicated: Vec<u64>,
    /// The pages were not newest first.
    pub out_of_order: bool,
}

impl HistoryCheck {
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty() && !self.out_of_order
    }
}

/// `history` as returned (newest first) against the acked ids.
pub fn check_history(acked: &[u64], history: &[u64]) -> HistoryCheck {
    let mut counts: HashMap<u64, u32> = HashMap::with_capacity(history.len());
    for id in history {
        *counts.entry(*id).or_default() += 1;
    }
    let mut duplicated: Vec<u64> = counts
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, _)| *id)
        .collect();
    duplicated.sort_unstable();
    let out_of_order = history.windows(2).any(|pair| pair[0] < pair[1]);
    HistoryCheck {
        missing: acked
            .iter()
            .copied()
            .filter(|id| !counts.contains_key(id))
            .collect(),
        duplicated,
        out_of_order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(message_id: u64, conversation: u32, sender: u32, sent: u64) -> AckRecord {
        AckRecord {
            message_id,
            conversation,
            sender,
            sent_unix_us: sent,
            acked_unix_us: sent + 1,
            search_word: format!("q{message_id}"),
        }
    }

    fn client(
        user: u32,
        online: u64,
        delivered: &[u64],
        caught_up: &[u64],
        order: Vec<(u32, Vec<u64>)>,
    ) -> ClientReport {
        ClientReport {
            user,
            first_online_unix_us: online,
            delivered: delivered.to_vec(),
            caught_up: caught_up.to_vec(),
            order,
            ..ClientReport::default()
        }
    }

    #[test]
    fn deliveries_count_only_members_online_for_the_message() {
        let members = vec![vec![1, 2, 3, 4]];
        let acks = vec![ack(10, 0, 1, 100), ack(11, 0, 1, 200)];
        let clients = vec![
            client(1, 50, &[], &[], vec![]),
            client(2, 50, &[10, 11], &[], vec![(0, vec![10, 11])]),
            client(3, 150, &[11], &[], vec![(0, vec![11])]), // online after 10 was sent
            client(4, 50, &[10], &[11], vec![(0, vec![10])]),
        ];
        let check = check_deliveries(&members, &acks, &clients);
        assert!(check.passed(), "{check:?}");
        assert_eq!(
            (
                check.expected,
                check.delivered_live,
                check.delivered_by_catch_up
            ),
            (5, 4, 1)
        );

        let lossy = vec![
            client(1, 50, &[], &[], vec![]),
            client(2, 50, &[11], &[], vec![]),
        ];
        let check = check_deliveries(&members, &acks, &lossy);
        assert_eq!(
            check.missing,
            vec![MissingDelivery {
                message_id: 10,
                conversation: 0,
                user: 2
            }]
        );
        assert!(!check.passed());
    }

    #[test]
    fn order_and_duplicate_ids_are_caught() {
        let clients = vec![
            client(1, 1, &[], &[], vec![(0, vec![1, 2, 3])]),
            client(2, 1, &[], &[], vec![(0, vec![1, 3])]),
            client(3, 1, &[], &[], vec![(0, vec![3, 1])]),
        ];
        assert_eq!(order_violations(&clients), vec![(3, 0)]);
        let check = check_deliveries(&[vec![1, 2]], &[ack(5, 0, 1, 1), ack(5, 0, 1, 2)], &[]);
        assert_eq!(check.duplicate_acked_ids, vec![5]);
    }

    #[test]
    fn history_exactly_once_newest_first() {
        assert!(check_history(&[1, 2, 3], &[3, 2, 1]).passed());
        let check = check_history(&[1, 2, 3], &[3, 3, 1]);
        assert_eq!(
            (check.missing.clone(), check.duplicated.clone()),
            (vec![2], vec![3])
        );
        assert!(check_history(&[1, 2], &[1, 2]).out_of_order);
    }
}
