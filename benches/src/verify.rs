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
//!   nothing a recipient saw live missing from it;
//! - with `[lifecycle]` (issue 12): every member online for an edit, a
//!   delete or a reaction received its frame; history holds each message's
//!   final state (the last edit's body, a tombstone, the reactions applied);
//!   search finds an edited message by its new text and no deleted one.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::api::HistoryItem;
use crate::client::{AckRecord, ClientReport, OpKind, OpRecord, SeenOp};

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

/// A member that should have received a lifecycle frame and did not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingOpFrame {
    pub kind: OpKind,
    pub message_id: u64,
    pub conversation: u32,
    pub user: u32,
}

/// Outcome of the lifecycle frames check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleFrameCheck {
    /// Acknowledged requests by kind.
    pub edits: u64,
    pub deletes: u64,
    pub reactions: u64,
    /// Refused as the contract says they must be: a change to a message
    /// deleted (by its sender) before the change arrived.
    pub refused_deleted: u64,
    /// Refused otherwise: `(message id, code)`, a failure.
    pub unexpected_refusals: Vec<(u64, String)>,
    /// Never answered before the run ended (their messages' final state
    /// is not checked).
    pub unanswered: u64,
    /// Member × acknowledged change pairs whose frame had to arrive.
    pub expected: u64,
    pub received: u64,
    pub missing: Vec<MissingOpFrame>,
    /// How many were missing (`missing` may be cut short in results files).
    pub missing_total: u64,
    /// Of the missing, those of a member whose history catch-up ended after
    /// the change (its session was not resumed; a catch-up brings new
    /// messages, not changes to ones held: still counted missing).
    pub missing_after_catch_up: u64,
}

impl LifecycleFrameCheck {
    pub fn passed(&self) -> bool {
        self.missing_total == 0 && self.unexpected_refusals.is_empty()
    }

    /// Acknowledged edits, deletes and reactions.
    pub fn acked(&self) -> u64 {
        self.edits + self.deletes + self.reactions
    }
}

/// Every member of the conversation (but the one who asked: one device
/// here) that was online when a change was asked for must receive its
/// frame; refusals are expected only for changes to deleted messages.
pub fn check_lifecycle_frames(
    members: &[Vec<u32>],
    ops: &[OpRecord],
    clients: &[ClientReport],
) -> LifecycleFrameCheck {
    let mut check = LifecycleFrameCheck::default();
    let deleted: HashSet<u64> = ops
        .iter()
        .filter(|op| op.kind == OpKind::Delete && (op.refused.is_empty() || op.refused == "no_ack"))
        .map(|op| op.message_id)
        .collect();
    let by_user: HashMap<u32, (&ClientReport, HashSet<&SeenOp>)> = clients
        .iter()
        .map(|client| (client.user, (client, client.seen_ops.iter().collect())))
        .collect();
    for op in ops {
        match op.refused.as_str() {
            "" => {}
            "no_ack" => {
                check.unanswered += 1;
                continue;
            }
            "forbidden" if deleted.contains(&op.message_id) => {
                check.refused_deleted += 1;
                continue;
            }
            code => {
                check
                    .unexpected_refusals
                    .push((op.message_id, code.to_owned()));
                continue;
            }
        }
        *match op.kind {
            OpKind::Edit => &mut check.edits,
            OpKind::Delete => &mut check.deletes,
            OpKind::React => &mut check.reactions,
        } += 1;
        let key = SeenOp {
            kind: op.kind,
            message_id: op.message_id,
            user: op.user,
            detail: op.detail.clone(),
        };
        let Some(conversation_members) = members.get(op.conversation as usize) else {
            continue;
        };
        for &member in conversation_members {
            if member == op.user {
                continue;
            }
            let Some((client, seen)) = by_user.get(&member) else {
                continue;
            };
            if client.first_online_unix_us == 0 || client.first_online_unix_us >= op.sent_unix_us {
                continue;
            }
            check.expected += 1;
            if seen.contains(&key) {
                check.received += 1;
                continue;
            }
            check.missing_total += 1;
            if client
                .catch_ups_unix_us
                .iter()
                .any(|&caught_up| caught_up >= op.acked_unix_us)
            {
                check.missing_after_catch_up += 1;
            }
            check.missing.push(MissingOpFrame {
                kind: op.kind,
                message_id: op.message_id,
                conversation: op.conversation,
                user: member,
            });
        }
    }
    check
}

/// What history must show of a message that was changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedState {
    pub deleted: bool,
    /// The search word of the last acknowledged edit's body.
    pub edit_word: Option<String>,
    /// Reactions applied: the number of distinct users per reaction.
    pub reactions: BTreeMap<String, u32>,
    /// A change to it was never answered: its state is not known.
    pub uncertain: bool,
}

/// The final state of every message some change was asked for, from the
/// requests' outcomes (refused ones change nothing). A client never has two
/// changes of one message in flight, so its edits apply in ack order.
pub fn expected_states(ops: &[OpRecord]) -> HashMap<u64, ExpectedState> {
    let mut ordered: Vec<&OpRecord> = ops.iter().collect();
    ordered.sort_by_key(|op| op.acked_unix_us);
    let mut states: HashMap<u64, ExpectedState> = HashMap::new();
    let mut reacted: HashSet<(u64, u32, &str)> = HashSet::new();
    for op in ordered {
        match op.refused.as_str() {
            "" => {}
            "no_ack" => {
                states.entry(op.message_id).or_default().uncertain = true;
                continue;
            }
            _ => continue,
        }
        let state = states.entry(op.message_id).or_default();
        match op.kind {
            OpKind::Delete => state.deleted = true,
            OpKind::Edit => state.edit_word = Some(op.detail.clone()),
            OpKind::React => {
                if reacted.insert((op.message_id, op.user, op.detail.as_str())) {
                    *state.reactions.entry(op.detail.clone()).or_default() += 1;
                }
            }
        }
    }
    states
}

/// A message whose state in history is not the expected one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrongState {
    pub message_id: u64,
    pub what: String,
}

/// One conversation's history against the expected final states: a
/// deleted message is a tombstone without body, an edited one has
/// `edited_at` and its last edit's body, reactions count what was applied,
/// and a message nobody changed is neither edited nor deleted nor reacted
/// to. Messages whose state is uncertain are skipped.
pub fn check_final_state(
    expected: &HashMap<u64, ExpectedState>,
    history: &[HistoryItem],
) -> Vec<WrongState> {
    let unchanged = ExpectedState::default();
    let mut wrong = Vec::new();
    for item in history {
        let state = expected.get(&item.message_id).unwrap_or(&unchanged);
        if state.uncertain {
            continue;
        }
        let mut what = Vec::new();
        if state.deleted {
            if !item.deleted || !item.body.is_empty() {
                what.push("not a tombstone".to_owned());
            }
        } else {
            if item.deleted {
                what.push("deleted".to_owned());
            }
            match &state.edit_word {
                Some(word) if !item.edited || !item.body.split(' ').any(|part| part == word) => {
                    what.push(format!("not the edited body {word}"));
                }
                None if item.edited => what.push("edited".to_owned()),
                _ => {}
            }
            let reactions: BTreeMap<String, u32> = item.reactions.iter().cloned().collect();
            if reactions != state.reactions {
                what.push(format!(
                    "reactions {reactions:?}, expected {:?}",
                    state.reactions
                ));
            }
        }
        if !what.is_empty() {
            wrong.push(WrongState {
                message_id: item.message_id,
                what: what.join(", "),
            });
        }
    }
    wrong
}

/// Messages whose body changed or may have (deleted, edited, uncertain):
/// the plain search sample leaves them out.
pub fn changed_bodies(expected: &HashMap<u64, ExpectedState>) -> HashSet<u64> {
    expected
        .iter()
        .filter(|(_, state)| state.deleted || state.edit_word.is_some() || state.uncertain)
        .map(|(id, _)| *id)
        .collect()
}

/// What searching for a changed message must give: `(message id, word,
/// found)` — a deleted message is not found by its original word (from
/// `acks`), an edited one is found by its new word. At most `limit` of
/// each kind, spread over the messages in id order.
pub fn lifecycle_search_sample(
    expected: &HashMap<u64, ExpectedState>,
    acks: &[AckRecord],
    limit: usize,
) -> Vec<(u64, String, bool)> {
    let words: HashMap<u64, &str> = acks
        .iter()
        .map(|ack| (ack.message_id, ack.search_word.as_str()))
        .collect();
    let mut deleted = Vec::new();
    let mut edited = Vec::new();
    let mut ids: Vec<u64> = expected.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let state = &expected[&id];
        if state.uncertain {
            continue;
        }
        if state.deleted {
            if let Some(word) = words.get(&id) {
                deleted.push((id, (*word).to_owned(), false));
            }
        } else if let Some(word) = &state.edit_word {
            edited.push((id, word.clone(), true));
        }
    }
    let spread = |list: Vec<(u64, String, bool)>| -> Vec<(u64, String, bool)> {
        let step = (list.len() / limit.max(1)).max(1);
        list.into_iter().step_by(step).take(limit).collect()
    };
    let mut sample = spread(deleted);
    sample.extend(spread(edited));
    sample
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

    fn op(
        kind: OpKind,
        message_id: u64,
        user: u32,
        acked: u64,
        detail: &str,
        refused: &str,
    ) -> OpRecord {
        OpRecord {
            kind,
            message_id,
            conversation: 0,
            user,
            sent_unix_us: 100,
            acked_unix_us: acked,
            detail: detail.to_owned(),
            refused: refused.to_owned(),
        }
    }

    fn seen(kind: OpKind, message_id: u64, user: u32, detail: &str) -> SeenOp {
        SeenOp {
            kind,
            message_id,
            user,
            detail: detail.to_owned(),
        }
    }

    #[test]
    fn every_online_member_but_the_actor_sees_each_change() {
        let members = vec![vec![1, 2, 3]];
        let ops = vec![
            op(OpKind::Edit, 10, 1, 200, "qnew", ""),
            op(OpKind::React, 10, 2, 210, "+1", ""),
            op(OpKind::Delete, 11, 1, 220, "", ""),
            // A reaction to a message deleted first: refused, as it must be.
            op(OpKind::React, 11, 3, 0, "+1", "forbidden"),
            op(OpKind::Edit, 12, 1, 0, "qx", "no_ack"),
        ];
        let mut clients = vec![
            client(1, 50, &[], &[], vec![]),
            client(2, 50, &[], &[], vec![]),
            client(3, 150, &[], &[], vec![]), // online after the changes were asked
        ];
        clients[0].seen_ops = vec![seen(OpKind::React, 10, 2, "+1")];
        clients[1].seen_ops = vec![
            seen(OpKind::Edit, 10, 1, "qnew"),
            seen(OpKind::Delete, 11, 1, ""),
        ];
        let check = check_lifecycle_frames(&members, &ops, &clients);
        assert!(check.passed(), "{check:?}");
        assert_eq!(
            (
                check.acked(),
                check.expected,
                check.received,
                check.refused_deleted,
                check.unanswered
            ),
            (3, 3, 3, 1, 1)
        );

        // Member 2 misses the delete; a refusal of something not deleted fails.
        clients[1].seen_ops.pop();
        clients[1].catch_ups_unix_us = vec![300];
        let mut ops = ops;
        ops.push(op(OpKind::Edit, 13, 1, 0, "qy", "forbidden"));
        let check = check_lifecycle_frames(&members, &ops, &clients);
        assert_eq!(
            check.missing,
            vec![MissingOpFrame {
                kind: OpKind::Delete,
                message_id: 11,
                conversation: 0,
                user: 2
            }]
        );
        assert_eq!((check.missing_total, check.missing_after_catch_up), (1, 1));
        assert_eq!(
            check.unexpected_refusals,
            vec![(13, "forbidden".to_owned())]
        );
        assert!(!check.passed());
    }

    fn item(
        message_id: u64,
        body: &str,
        edited: bool,
        deleted: bool,
        reactions: &[(&str, u32)],
    ) -> HistoryItem {
        HistoryItem {
            message_id,
            sender_id: "u".into(),
            body: body.into(),
            edited,
            deleted,
            reactions: reactions
                .iter()
                .map(|(reaction, count)| ((*reaction).to_owned(), *count))
                .collect(),
        }
    }

    #[test]
    fn history_holds_the_final_state() {
        let ops = vec![
            op(OpKind::Edit, 10, 1, 300, "qsecond", ""),
            op(OpKind::Edit, 10, 1, 200, "qfirst", ""),
            op(OpKind::React, 10, 2, 210, "+1", ""),
            op(OpKind::React, 10, 2, 211, "+1", ""), // the same user again: once
            op(OpKind::React, 10, 3, 212, "+1", ""),
            op(OpKind::React, 10, 3, 0, "heart", "forbidden"),
            op(OpKind::Delete, 11, 1, 220, "", ""),
            op(OpKind::React, 11, 2, 215, "+1", ""),
            op(OpKind::Edit, 12, 1, 0, "qz", "no_ack"),
        ];
        let expected = expected_states(&ops);
        assert_eq!(expected[&10].edit_word.as_deref(), Some("qsecond"));
        assert_eq!(
            expected[&10].reactions,
            BTreeMap::from([("+1".to_owned(), 2)])
        );
        assert!(expected[&11].deleted && expected[&12].uncertain);
        let good = vec![
            item(13, "t1 qplain lg", false, false, &[]),
            item(12, "anything", true, false, &[]),
            item(11, "", false, true, &[]),
            item(10, "t2 qsecond lg", true, false, &[("+1", 2)]),
        ];
        assert_eq!(check_final_state(&expected, &good), vec![]);
        let bad = vec![
            item(13, "t1 qplain lg", true, false, &[]),
            item(11, "t1 qold lg", false, false, &[]),
            item(10, "t2 qfirst lg", true, false, &[("+1", 1)]),
        ];
        let wrong = check_final_state(&expected, &bad);
        assert_eq!(
            wrong
                .iter()
                .map(|wrong| wrong.message_id)
                .collect::<Vec<_>>(),
            vec![13, 11, 10]
        );
        assert!(wrong[2].what.contains("qsecond") && wrong[2].what.contains("reactions"));
        assert_eq!(changed_bodies(&expected), HashSet::from([10, 11, 12]));
    }

    #[test]
    fn search_looks_for_new_words_and_not_for_deleted_ones() {
        let ops = vec![
            op(OpKind::Edit, 10, 1, 300, "qnew", ""),
            op(OpKind::Delete, 11, 1, 220, "", ""),
            op(OpKind::Delete, 12, 1, 0, "", "no_ack"),
            op(OpKind::React, 13, 2, 230, "+1", ""),
        ];
        let acks = vec![ack(10, 0, 1, 1), ack(11, 0, 1, 2), ack(12, 0, 1, 3)];
        let sample = lifecycle_search_sample(&expected_states(&ops), &acks, 10);
        assert_eq!(
            sample,
            vec![(11, "q11".to_owned(), false), (10, "qnew".to_owned(), true)]
        );
        assert_eq!(
            lifecycle_search_sample(&expected_states(&ops), &acks, 0).len(),
            0
        );
    }
}
