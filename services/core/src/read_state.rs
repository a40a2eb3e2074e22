//! Read state, unread and mention counts: the pure rules that the edge
//! (mentions on a send, read markers), persist (what a batch writes) and
//! the API (what the inbox counts) share.
//!
//! How the counts stay exact without a write per recipient per message:
//! - a member's **read marker** is one row per (member, conversation),
//!   written with the marker itself as its write time, so the highest
//!   marker wins in any order of writes and a lower (older, replayed or
//!   stale) marker never moves it back;
//! - **unread** is counted when it is read: the messages of the
//!   conversation after the marker that the member did not send and that
//!   are not deleted (history holds each send once, whatever the retries
//!   and replays, see [`crate::dedup`]), up to [`COUNT_CAP`];
//! - **mentions** are one row per (mentioned user, conversation, message),
//!   written idempotently with the message (at most [`MAX_MENTIONS`] a
//!   message), and counted after the marker the same way.

use std::collections::{BTreeMap, HashSet};

use crate::ids::{ConversationId, MessageId, UserId};

/// Most users one message may mention (`mentions` of a `send`); a send
/// naming more is refused as `invalid`.
pub const MAX_MENTIONS: usize = 20;

/// Unread and mention counts stop at this many: a larger count is reported
/// as the cap with `exact: false` (shown as "100+").
pub const COUNT_CAP: u64 = 100;

/// How far into the future (ms, by its embedded time) a read marker may
/// point: a marker is a message id, and one far ahead of every message
/// would hide every later message from unread counts. Clock skew between
/// edges stays well below it.
pub const MAX_MARKER_AHEAD_MS: u64 = 60_000;

/// The mentions a message keeps: each user once, in the order given, and
/// never its own sender (mentioning oneself notifies nobody).
pub fn normalize_mentions(sender: &UserId, mentions: Vec<UserId>) -> Vec<UserId> {
    let mut seen: HashSet<UserId> = HashSet::with_capacity(mentions.len());
    mentions
        .into_iter()
        .filter(|user| user != sender && seen.insert(user.clone()))
        .collect()
}

/// Whether a read marker may be stored (see [`MAX_MARKER_AHEAD_MS`]).
pub fn marker_is_plausible(marker: MessageId, now_unix_ms: u64) -> bool {
    marker.unix_ms() <= now_unix_ms.saturating_add(MAX_MARKER_AHEAD_MS)
}

/// The position unread counting starts after, exclusive: the stored
/// marker, but never before the member joined (messages from before their
/// join are not unread for them, whatever the history visibility).
pub fn effective_marker(stored: Option<MessageId>, joined_at_ms: u64) -> MessageId {
    let joined_floor = MessageId::lower_bound_for_unix_ms(joined_at_ms)
        .as_u64()
        .saturating_sub(1);
    MessageId::from_u64(stored.map_or(0, MessageId::as_u64).max(joined_floor))
}

/// A count that stops at a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CappedCount {
    /// At most [`COUNT_CAP`].
    pub count: u64,
    /// `false` when more were found than the cap.
    pub exact: bool,
}

impl CappedCount {
    /// `found` items, reported up to `cap`.
    pub fn of(found: u64, cap: u64) -> Self {
        Self {
            count: found.min(cap),
            exact: found <= cap,
        }
    }
}

/// One history row as unread counting sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnreadRow<'a> {
    /// `None` for a partial row (a change whose message is not stored).
    pub sender: Option<&'a str>,
    pub deleted: bool,
}

/// How many of `rows` are unread for `reader`: messages of others that are
/// not deleted.
pub fn tally_unread<'a>(rows: impl IntoIterator<Item = UnreadRow<'a>>, reader: &UserId) -> u64 {
    rows.into_iter()
        .filter(|row| !row.deleted && row.sender.is_some_and(|sender| sender != reader.as_str()))
        .count() as u64
}

/// The read markers of a batch of `read` events, one per (user,
/// conversation): the highest, since only that one can win anyway.
pub fn coalesce_markers<'a>(
    markers: impl IntoIterator<Item = (&'a UserId, &'a ConversationId, MessageId)>,
) -> BTreeMap<(&'a UserId, &'a ConversationId), MessageId> {
    let mut highest: BTreeMap<(&UserId, &ConversationId), MessageId> = BTreeMap::new();
    for (user, conversation, marker) in markers {
        let entry = highest.entry((user, conversation)).or_insert(marker);
        *entry = (*entry).max(marker);
    }
    highest
}

/// The newest message id per conversation of a batch (its last activity).
pub fn coalesce_activity<'a>(
    messages: impl IntoIterator<Item = (&'a ConversationId, MessageId)>,
) -> BTreeMap<&'a ConversationId, MessageId> {
    let mut newest: BTreeMap<&ConversationId, MessageId> = BTreeMap::new();
    for (conversation, message_id) in messages {
        let entry = newest.entry(conversation).or_insert(message_id);
        *entry = (*entry).max(message_id);
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(raw: &str) -> UserId {
        UserId::parse(raw).unwrap()
    }

    #[test]
    fn mentions_keep_each_user_once_and_never_the_sender() {
        let kept = normalize_mentions(
            &user("ann"),
            vec![user("bob"), user("ann"), user("cid"), user("bob")],
        );
        assert_eq!(kept, vec![user("bob"), user("cid")]);
        assert!(normalize_mentions(&user("ann"), vec![user("ann")]).is_empty());
    }

    #[test]
    fn the_marker_never_starts_before_the_join() {
        let joined_ms = MessageId::EPOCH_UNIX_MS + 10_000;
        let floor = MessageId::lower_bound_for_unix_ms(joined_ms).as_u64() - 1;
        assert_eq!(effective_marker(None, joined_ms).as_u64(), floor);
        let older = MessageId::lower_bound_for_unix_ms(joined_ms - 1);
        assert_eq!(effective_marker(Some(older), joined_ms).as_u64(), floor);
        let newer = MessageId::lower_bound_for_unix_ms(joined_ms + 5);
        assert_eq!(effective_marker(Some(newer), joined_ms), newer);
        // A message sent at the join instant counts as unread.
        assert!(MessageId::lower_bound_for_unix_ms(joined_ms) > effective_marker(None, joined_ms));
    }

    #[test]
    fn markers_far_in_the_future_are_not_plausible() {
        let now = MessageId::EPOCH_UNIX_MS + 1_000_000;
        assert!(marker_is_plausible(
            MessageId::lower_bound_for_unix_ms(now),
            now
        ));
        assert!(marker_is_plausible(
            MessageId::lower_bound_for_unix_ms(now + MAX_MARKER_AHEAD_MS),
            now
        ));
        assert!(!marker_is_plausible(
            MessageId::lower_bound_for_unix_ms(now + MAX_MARKER_AHEAD_MS + 1),
            now
        ));
        assert!(marker_is_plausible(MessageId::from_u64(1), now));
    }

    #[test]
    fn counts_stop_at_the_cap() {
        assert_eq!(
            CappedCount::of(0, 100),
            CappedCount {
                count: 0,
                exact: true
            }
        );
        assert_eq!(
            CappedCount::of(100, 100),
            CappedCount {
                count: 100,
                exact: true
            }
        );
        assert_eq!(
            CappedCount::of(101, 100),
            CappedCount {
                count: 100,
                exact: false
            }
        );
    }

    #[test]
    fn unread_counts_the_others_messages_that_are_not_deleted() {
        let rows = [
            UnreadRow {
                sender: Some("bob"),
                deleted: false,
            },
            UnreadRow {
                sender: Some("ann"),
                deleted: false,
            },
            UnreadRow {
                sender: Some("bob"),
                deleted: true,
            },
            UnreadRow {
                sender: None,
                deleted: false,
            },
            UnreadRow {
                sender: Some("cid"),
                deleted: false,
            },
        ];
        assert_eq!(tally_unread(rows, &user("ann")), 2);
        assert_eq!(tally_unread(rows, &user("bob")), 2);
    }

    #[test]
    fn a_batch_keeps_the_highest_marker_and_the_newest_message() {
        let (ann, bob) = (user("ann"), user("bob"));
        let (c1, c2) = (
            ConversationId::parse("c1").unwrap(),
            ConversationId::parse("c2").unwrap(),
        );
        let id = MessageId::from_u64;
        let markers = coalesce_markers([
            (&ann, &c1, id(5)),
            (&ann, &c1, id(9)),
            (&ann, &c1, id(7)),
            (&bob, &c1, id(3)),
            (&ann, &c2, id(1)),
        ]);
        assert_eq!(markers.len(), 3);
        assert_eq!(markers[&(&ann, &c1)], id(9));
        assert_eq!(markers[&(&bob, &c1)], id(3));
        let activity = coalesce_activity([(&c1, id(4)), (&c2, id(8)), (&c1, id(6))]);
        assert_eq!(activity[&&c1], id(6));
        assert_eq!(activity[&&c2], id(8));
    }
}
