//! The end-of-run checks, as pure functions over what the clients saw and
//! what the API returned:
//!
//! - every acknowledged message reached every member that was online for
//!   it (first `hello` before the send), live or by a history catch-up,
//!   after de-duplication by `message_id`;
//! - every recipient saw a conversation's messages in one order, and that
//!   order is message-id order (issue 10: within a conversation, message-id
//!   order is partition order, so a recipient that saw a higher id before a
//!   lower one saw two senders' messages overtake each other);
//! - history holds every acknowledged message exactly once, newest first,
//!   and its order (id order) is the order every recipient saw live, with
//!   nothing a recipient saw live missing from it.

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
    /// Recipients that saw a conversation's messages live out of
    /// message-id order (the first inversion of each).
    #[serde(default)]
    pub id_order_violations: Vec<IdOrderViolation>,
}

impl DeliveryCheck {
    pub fn passed(&self) -> bool {
        self.missing.is_empty()
            && self.duplicate_acked_ids.is_empty()
            && self.order_violations.is_empty()
            && self.id_order_violations.is_empty()
    }
}

/// A recipient that received `later` live after `earlier` although
/// `later`'s id is lower: the conversation's live order is not id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdOrderViolation {
    pub user: u32,
    pub conversation: u32,
    pub earlier: u64,
    pub later: u64,
}

/// Every `(user, conversation)` whose live list is not increasing in
/// message id, with its first inversion.
pub fn id_order_violations(clients: &[ClientReport]) -> Vec<IdOrderViolation> {
    let mut violations = Vec::new();
    for client in clients {
        for (conversation, list) in &client.order {
            if let Some(pair) = list.windows(2).find(|pair| pair[1] < pair[0]) {
                violations.push(IdOrderViolation {
                    user: client.user,
                    conversation: *conversation,
                    earlier: pair[0],
                    later: pair[1],
                });
            }
        }
    }
    violations.sort_unstable_by_key(|violation| (violation.conversation, violation.user));
    violations
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
    check.id_order_violations = id_order_violations(clients);
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
    /// Recipients whose live order differs from history's order (see
    /// [`check_live_against_history`]).
    #[serde(default)]
    pub live_order_mismatches: Vec<u32>,
    /// Messages some recipient received live that history does not hold.
    #[serde(default)]
    pub live_not_in_history: Vec<u64>,
}

impl HistoryCheck {
    pub fn passed(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && !self.out_of_order
            && self.live_order_mismatches.is_empty()
            && self.live_not_in_history.is_empty()
    }
}

/// The history failures of a run, summed by kind (for the results tables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryCounts {
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order_conversations: u64,
    pub live_order_mismatches: u64,
    pub live_not_in_history: u64,
}

impl HistoryCounts {
    pub fn of(failures: &[(String, HistoryCheck)]) -> Self {
        let mut counts = Self::default();
        for (_, check) in failures {
            counts.missing += check.missing.len() as u64;
            counts.duplicated += check.duplicated.len() as u64;
            counts.out_of_order_conversations += u64::from(check.out_of_order);
            counts.live_order_mismatches += check.live_order_mismatches.len() as u64;
            counts.live_not_in_history += check.live_not_in_history.len() as u64;
        }
        counts
    }
}

/// Compares one conversation's history (`history`, newest first, as
/// returned) with what each recipient saw live (`live`: user and message
/// ids in arrival order): every live list must be a subsequence of
/// history's order, and every message seen live must be in history. Fills
/// `check`'s `live_order_mismatches` and `live_not_in_history`.
pub fn check_live_against_history(
    history: &[u64],
    live: &[(u32, &[u64])],
    check: &mut HistoryCheck,
) {
    // Position in history's oldest-first order (the first occurrence: a
    // duplicate is reported by `check_history`).
    let mut position: HashMap<u64, usize> = HashMap::with_capacity(history.len());
    for (index, id) in history.iter().rev().enumerate() {
        position.entry(*id).or_insert(index);
    }
    let mut not_in_history = HashSet::new();
    let mut mismatches = Vec::new();
    for (user, list) in live {
        let mut last = None;
        let mut mismatch = false;
        for id in list.iter() {
            match position.get(id) {
                None => {
                    not_in_history.insert(*id);
                }
                Some(&here) => {
                    mismatch |= last.is_some_and(|previous| here < previous);
                    last = Some(here);
                }
            }
        }
        if mismatch {
            mismatches.push(*user);
        }
    }
    mismatches.sort_unstable();
    mismatches.dedup();
    let mut not_in_history: Vec<u64> = not_in_history.into_iter().collect();
    not_in_history.sort_unstable();
    check.live_order_mismatches = mismatches;
    check.live_not_in_history = not_in_history;
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
        ..HistoryCheck::default()
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

    #[test]
    fn live_order_must_be_message_id_order() {
        let clients = vec![
            client(1, 1, &[], &[], vec![(0, vec![1, 2, 5]), (1, vec![9])]),
            // Both saw 4 before 3: they agree with each other (the
            // recipients' check passes) yet contradict id order.
            client(2, 1, &[], &[], vec![(0, vec![4, 3])]),
            client(3, 1, &[], &[], vec![(0, vec![2, 4, 3, 1])]),
        ];
        let violations = id_order_violations(&clients);
        assert_eq!(
            violations,
            vec![
                IdOrderViolation {
                    user: 2,
                    conversation: 0,
                    earlier: 4,
                    later: 3
                },
                IdOrderViolation {
                    user: 3,
                    conversation: 0,
                    earlier: 4,
                    later: 3
                },
            ]
        );
        let check = check_deliveries(&[vec![1, 2, 3]], &[], &clients);
        assert_eq!(check.id_order_violations.len(), 2);
        assert!(!check.passed());
        let in_order = vec![client(1, 1, &[], &[], vec![(0, vec![1, 3, 7])])];
        assert!(id_order_violations(&in_order).is_empty());
    }

    #[test]
    fn history_order_must_equal_live_order() {
        // History newest first: oldest-first order is 1, 2, 3, 4.
        let history = [4, 3, 2, 1];
        let mut check = check_history(&[1, 2, 3, 4], &history);
        let (a, b, c): (&[u64], &[u64], &[u64]) = (&[1, 2, 4], &[2, 3], &[1, 3, 2]);
        check_live_against_history(&history, &[(1, a), (2, b), (3, c)], &mut check);
        assert_eq!(check.live_order_mismatches, vec![3]);
        assert!(check.live_not_in_history.is_empty());
        assert!(!check.passed());

        // A message seen live that history lacks fails too, even if no
        // ack of it was recorded (its sender never saw the ack).
        let mut check = check_history(&[1, 2], &[2, 1]);
        let live: &[u64] = &[1, 2, 3];
        check_live_against_history(&[2, 1], &[(5, live)], &mut check);
        assert_eq!(check.live_not_in_history, vec![3]);
        assert!(check.live_order_mismatches.is_empty());
        assert!(!check.passed());

        let mut check = check_history(&[1, 2], &[2, 1]);
        let live: &[u64] = &[1, 2];
        check_live_against_history(&[2, 1], &[(5, live)], &mut check);
        assert!(check.passed(), "{check:?}");
    }
}
