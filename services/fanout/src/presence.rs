//! Presence across edges — pure, no I/O.
//!
//! Edges report presence per edge: `online` when a user's first session on
//! that edge opens, `offline` when the last one there ends (the record
//! names the edge). A user connected to two edges who leaves one (a drain,
//! a closed tab) is still online, so fan-out must not pass that `offline`
//! on. [`PresenceTracker`] decides, per user, which reports change what the
//! other members see:
//!
//! - it keeps the edges that reported the user `online` and not yet
//!   `offline`, and the status last delivered;
//! - an `offline` is delivered only when no edge is left whose lease is
//!   still live (an edge whose lease ran out counts as its sessions gone);
//! - an `online` while the user is already shown online, or an `offline`
//!   while already shown offline, is not delivered again.
//!
//! Presence records are keyed by user id, so all reports of one user are in
//! one partition, in the order the edges published them, and one tracker
//! (one per partition handler) sees them all in that order. A tracker that
//! starts without state for a user (a new worker, a rebalance, an eviction)
//! takes the user's live routes from the route table instead, which the
//! edge publishes before the matching presence.
//!
//! Bounded: past `max_users` tracked users, users shown offline are
//! forgotten first, then everyone (the route table stands in again).

use std::collections::HashMap;

use chatpipe_core::records::PresenceStatus;
use chatpipe_core::{EdgeId, UserId};

/// Whether a presence report is passed on to the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceVerdict {
    Deliver,
    /// It changes nothing the members see (another edge still holds the
    /// user, or the status is the one already shown).
    Unchanged,
}

#[derive(Debug, Clone)]
struct TrackedUser {
    /// Edges that reported the user online and not offline since.
    edges: Vec<EdgeId>,
    /// The status last delivered; `None` when not known (state rebuilt
    /// from the route table).
    shown: Option<PresenceStatus>,
}

/// Per-user presence across edges, for the users of one partition.
#[derive(Debug, Clone)]
pub struct PresenceTracker {
    users: HashMap<UserId, TrackedUser>,
    max_users: usize,
}

impl PresenceTracker {
    pub fn new(max_users: usize) -> Self {
        Self {
            users: HashMap::new(),
            max_users: max_users.max(1),
        }
    }

    /// Users tracked now.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Judges `edge`'s report that `user` is `status` there.
    /// `live_routes` gives the edges the route table holds the user on
    /// (live leases only), used when the tracker has no state for the user;
    /// `is_live` says whether an edge's lease is live now.
    pub fn judge(
        &mut self,
        user: &UserId,
        status: PresenceStatus,
        edge: &EdgeId,
        live_routes: impl FnOnce() -> Vec<EdgeId>,
        is_live: impl Fn(&EdgeId) -> bool,
    ) -> PresenceVerdict {
        if !self.users.contains_key(user) {
            self.make_room();
            self.users.insert(
                user.clone(),
                TrackedUser {
                    edges: live_routes(),
                    shown: None,
                },
            );
        }
        let tracked = self.users.get_mut(user).expect("inserted above");
        match status {
            PresenceStatus::Online => {
                if !tracked.edges.contains(edge) {
                    tracked.edges.push(edge.clone());
                }
            }
            PresenceStatus::Offline => {
                tracked.edges.retain(|held| held != edge && is_live(held));
                if !tracked.edges.is_empty() {
                    return PresenceVerdict::Unchanged;
                }
            }
        }
        if tracked.shown == Some(status) {
            return PresenceVerdict::Unchanged;
        }
        tracked.shown = Some(status);
        PresenceVerdict::Deliver
    }

    /// Keeps the map under `max_users` before an insert.
    fn make_room(&mut self) {
        if self.users.len() < self.max_users {
            return;
        }
        self.users.retain(|_, tracked| !tracked.edges.is_empty());
        if self.users.len() >= self.max_users {
            self.users.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PresenceStatus::{Offline, Online};
    use PresenceVerdict::{Deliver, Unchanged};

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn edge(name: &str) -> EdgeId {
        EdgeId::parse(name).unwrap()
    }

    fn judge(
        tracker: &mut PresenceTracker,
        status: PresenceStatus,
        on: &str,
        dead: &[&str],
    ) -> PresenceVerdict {
        tracker.judge(&user("ann"), status, &edge(on), Vec::new, |held| {
            !dead.contains(&held.as_str())
        })
    }

    #[test]
    fn leaving_one_edge_while_on_another_is_not_offline() {
        let mut tracker = PresenceTracker::new(100);
        assert_eq!(judge(&mut tracker, Online, "e1", &[]), Deliver);
        assert_eq!(judge(&mut tracker, Online, "e2", &[]), Unchanged);
        // e1 drains: ann is still on e2.
        assert_eq!(judge(&mut tracker, Offline, "e1", &[]), Unchanged);
        // The last edge goes: offline, once.
        assert_eq!(judge(&mut tracker, Offline, "e2", &[]), Deliver);
        assert_eq!(judge(&mut tracker, Offline, "e2", &[]), Unchanged);
        // Back on e1.
        assert_eq!(judge(&mut tracker, Online, "e1", &[]), Deliver);
    }

    #[test]
    fn an_edge_whose_lease_ran_out_holds_nobody_online() {
        let mut tracker = PresenceTracker::new(100);
        assert_eq!(judge(&mut tracker, Online, "crashed", &[]), Deliver);
        assert_eq!(judge(&mut tracker, Online, "e2", &[]), Unchanged);
        // The crashed edge never says offline; its lease ran out.
        assert_eq!(judge(&mut tracker, Offline, "e2", &["crashed"]), Deliver);
    }

    #[test]
    fn without_state_the_route_table_stands_in() {
        let mut tracker = PresenceTracker::new(100);
        // A fresh tracker (say after a rebalance): the table holds ann on
        // e1 (whose tombstone is on its way) and e2.
        let verdict = tracker.judge(
            &user("ann"),
            Offline,
            &edge("e1"),
            || vec![edge("e1"), edge("e2")],
            |_| true,
        );
        assert_eq!(verdict, Unchanged);
        let verdict = tracker.judge(&user("ann"), Offline, &edge("e2"), Vec::new, |_| true);
        assert_eq!(verdict, Deliver);
        // Nothing known and no route: an offline is delivered.
        let verdict = tracker.judge(&user("bob"), Offline, &edge("e1"), Vec::new, |_| true);
        assert_eq!(verdict, Deliver);
    }

    #[test]
    fn the_map_stays_bounded_forgetting_offline_users_first() {
        let mut tracker = PresenceTracker::new(3);
        let report = |tracker: &mut PresenceTracker, name: &str, status| {
            tracker.judge(&user(name), status, &edge("e1"), Vec::new, |_| true)
        };
        report(&mut tracker, "a", Online);
        report(&mut tracker, "b", Online);
        report(&mut tracker, "b", Offline);
        report(&mut tracker, "c", Online);
        assert_eq!(tracker.len(), 3);
        report(&mut tracker, "d", Online);
        assert_eq!(tracker.len(), 3, "b, shown offline, was forgotten");
        assert_eq!(report(&mut tracker, "a", Online), Unchanged, "a is kept");
        report(&mut tracker, "e", Online);
        assert!(tracker.len() <= 3);
    }
}
