//! The route table: which edges hold sessions of which user, built from the
//! compacted `chat.sessions` topic. Pure data (no I/O, explicit clock); the
//! tail that feeds it lives in [`crate::tails`].
//!
//! Two kinds of keys (see `SessionKey`): `edge/<edge>` carries the edge's
//! push address and lease, `route/<user>/<edge>` says the edge holds
//! sessions of the user; a tombstone (null value) deletes either. A route
//! counts only while its edge's lease is valid, so an edge that crashed
//! without cleaning up stops attracting pushes within one lease period. Its
//! routes stay in the topic (fan-out workers never write it: each key has a
//! single writer, the edge that owns it) and are dropped from memory once
//! the lease has been expired for `forget_dead_edge_after_ms`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chatpipe_core::records::{EdgeRecord, RouteRecord, SessionKey};
use chatpipe_core::{EdgeId, UserId};

/// A live edge: where to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEdge {
    pub edge_id: EdgeId,
    pub push_addr: Arc<str>,
}

/// Why a sessions-topic record was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteRecordError {
    #[error("missing or non-UTF-8 key")]
    BadKey,
    #[error("unrecognised key `{0}`")]
    UnknownKey(String),
    #[error("undecodable value for `{key}`: {error}")]
    BadValue { key: String, error: String },
}

/// What applying one record changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    EdgeUpserted(EdgeId),
    EdgeRemoved(EdgeId),
    RouteUpserted(UserId, EdgeId),
    RouteRemoved(UserId, EdgeId),
}

#[derive(Debug, Clone)]
struct EdgeEntry {
    push_addr: Arc<str>,
    lease_expires_ms: u64,
}

/// User → edges, edge → lease. Lookups filter by lease at the given time.
#[derive(Debug, Default)]
pub struct RouteTable {
    edges: HashMap<EdgeId, EdgeEntry>,
    routes: HashMap<UserId, Vec<EdgeId>>,
    route_count: usize,
    lease_grace_ms: u64,
}

impl RouteTable {
    /// `lease_grace_ms` tolerates clock skew between edges and workers.
    pub fn new(lease_grace_ms: u64) -> Self {
        Self {
            lease_grace_ms,
            ..Self::default()
        }
    }

    /// Applies one sessions-topic record (`payload` `None` = tombstone).
    pub fn apply(
        &mut self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<RouteChange, RouteRecordError> {
        let raw_key = key
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .ok_or(RouteRecordError::BadKey)?;
        let session_key = SessionKey::decode(raw_key)
            .ok_or_else(|| RouteRecordError::UnknownKey(raw_key.chars().take(200).collect()))?;
        let bad_value = |error: String| RouteRecordError::BadValue {
            key: raw_key.to_owned(),
            error,
        };
        match (session_key, payload) {
            (SessionKey::Edge(edge_id), None) => {
                self.edges.remove(&edge_id);
                Ok(RouteChange::EdgeRemoved(edge_id))
            }
            (SessionKey::Edge(edge_id), Some(bytes)) => {
                let record: EdgeRecord =
                    serde_json::from_slice(bytes).map_err(|error| bad_value(error.to_string()))?;
                // The key names the edge; a payload that disagrees is refused
                // rather than guessed at.
                if record.edge_id != edge_id {
                    return Err(bad_value(format!(
                        "payload names edge `{}`",
                        record.edge_id
                    )));
                }
                self.edges.insert(
                    edge_id.clone(),
                    EdgeEntry {
                        push_addr: Arc::from(record.push_addr.as_str()),
                        lease_expires_ms: record.lease_expires_ms,
                    },
                );
                Ok(RouteChange::EdgeUpserted(edge_id))
            }
            (SessionKey::Route(user_id, edge_id), None) => {
                self.remove_route(&user_id, &edge_id);
                Ok(RouteChange::RouteRemoved(user_id, edge_id))
            }
            (SessionKey::Route(user_id, edge_id), Some(bytes)) => {
                let record: RouteRecord =
                    serde_json::from_slice(bytes).map_err(|error| bad_value(error.to_string()))?;
                if record.sessions == 0 {
                    self.remove_route(&user_id, &edge_id);
                    return Ok(RouteChange::RouteRemoved(user_id, edge_id));
                }
                self.insert_route(user_id.clone(), edge_id.clone());
                Ok(RouteChange::RouteUpserted(user_id, edge_id))
            }
        }
    }

    fn insert_route(&mut self, user_id: UserId, edge_id: EdgeId) {
        let edges = self.routes.entry(user_id).or_default();
        if !edges.contains(&edge_id) {
            edges.push(edge_id);
            self.route_count += 1;
        }
    }

    fn remove_route(&mut self, user_id: &UserId, edge_id: &EdgeId) {
        let Some(edges) = self.routes.get_mut(user_id) else {
            return;
        };
        let before = edges.len();
        edges.retain(|held_by| held_by != edge_id);
        self.route_count -= before - edges.len();
        if edges.is_empty() {
            self.routes.remove(user_id);
        }
    }

    fn is_live(&self, entry: &EdgeEntry, now_unix_ms: u64) -> bool {
        now_unix_ms <= entry.lease_expires_ms.saturating_add(self.lease_grace_ms)
    }

    /// Calls `visit` for each live edge holding sessions of `user_id`;
    /// returns how many there were.
    pub fn for_each_live_edge(
        &self,
        user_id: &UserId,
        now_unix_ms: u64,
        mut visit: impl FnMut(&EdgeId, &Arc<str>),
    ) -> usize {
        let Some(edge_ids) = self.routes.get(user_id) else {
            return 0;
        };
        let mut live = 0;
        for edge_id in edge_ids {
            if let Some(entry) = self.edges.get(edge_id)
                && self.is_live(entry, now_unix_ms)
            {
                live += 1;
                visit(edge_id, &entry.push_addr);
            }
        }
        live
    }

    /// The push address of `edge_id` while its lease is live.
    pub fn push_addr_of(&self, edge_id: &EdgeId, now_unix_ms: u64) -> Option<Arc<str>> {
        self.edges
            .get(edge_id)
            .filter(|entry| self.is_live(entry, now_unix_ms))
            .map(|entry| entry.push_addr.clone())
    }

    /// Whether `edge_id` holds a live lease at `push_addr`.
    pub fn is_edge_live_at(&self, edge_id: &EdgeId, push_addr: &str, now_unix_ms: u64) -> bool {
        self.edges
            .get(edge_id)
            .is_some_and(|entry| &*entry.push_addr == push_addr && self.is_live(entry, now_unix_ms))
    }

    /// The live edges holding sessions of `user_id`.
    pub fn live_edges(&self, user_id: &UserId, now_unix_ms: u64) -> Vec<LiveEdge> {
        let mut found = Vec::new();
        self.for_each_live_edge(user_id, now_unix_ms, |edge_id, push_addr| {
            found.push(LiveEdge {
                edge_id: edge_id.clone(),
                push_addr: push_addr.clone(),
            })
        });
        found
    }

    /// Drops edges whose lease expired more than `after_ms` ago, and every
    /// route to them. Returns the edges forgotten.
    pub fn forget_dead_edges(&mut self, now_unix_ms: u64, after_ms: u64) -> Vec<EdgeId> {
        let dead: Vec<EdgeId> = self
            .edges
            .iter()
            .filter(|(_, entry)| {
                now_unix_ms
                    > entry
                        .lease_expires_ms
                        .saturating_add(self.lease_grace_ms)
                        .saturating_add(after_ms)
            })
            .map(|(edge_id, _)| edge_id.clone())
            .collect();
        if dead.is_empty() {
            return dead;
        }
        for edge_id in &dead {
            self.edges.remove(edge_id);
        }
        let mut removed = 0;
        self.routes.retain(|_, edge_ids| {
            let before = edge_ids.len();
            edge_ids.retain(|edge_id| !dead.contains(edge_id));
            removed += before - edge_ids.len();
            !edge_ids.is_empty()
        });
        self.route_count -= removed;
        dead
    }

    /// The push addresses of every known edge (for pruning channels).
    pub fn push_addresses(&self) -> Vec<Arc<str>> {
        self.edges
            .values()
            .map(|entry| entry.push_addr.clone())
            .collect()
    }

    pub fn route_count(&self) -> usize {
        self.route_count
    }

    pub fn user_count(&self) -> usize {
        self.routes.len()
    }

    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }
}

/// Notices edges whose lease runs out while the worker watches: an edge
/// that crashed (a drained one retires its lease and reports its users
/// offline itself). Pure: the caller passes the table and the clock.
#[derive(Debug, Default)]
pub struct LeaseWatch {
    /// When the previous look was.
    last_look_ms: Option<u64>,
}

/// An edge whose lease ran out, and the users it held that no live edge
/// holds any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredEdge {
    pub edge_id: EdgeId,
    pub users_gone: Vec<UserId>,
}

impl LeaseWatch {
    /// The edges whose lease ran out since the previous call (each is
    /// reported once; an edge whose lease record was removed was retired,
    /// not expired). The first call reports nothing: a worker that starts
    /// reads long-dead leases from the topic, which are not news.
    pub fn expired(&mut self, table: &RouteTable, now_unix_ms: u64) -> Vec<ExpiredEdge> {
        let Some(since) = self.last_look_ms.replace(now_unix_ms) else {
            return Vec::new();
        };
        let live_until =
            |entry: &EdgeEntry| entry.lease_expires_ms.saturating_add(table.lease_grace_ms);
        table
            .edges
            .iter()
            .filter(|(_, entry)| (since..now_unix_ms).contains(&live_until(entry)))
            .map(|(edge_id, _)| ExpiredEdge {
                edge_id: edge_id.clone(),
                users_gone: table
                    .routes
                    .iter()
                    .filter(|(_, edges)| {
                        edges.contains(edge_id)
                            && !edges.iter().any(|held| {
                                table
                                    .edges
                                    .get(held)
                                    .is_some_and(|entry| table.is_live(entry, now_unix_ms))
                            })
                    })
                    .map(|(user_id, _)| user_id.clone())
                    .collect(),
            })
            .collect()
    }
}

/// The route table shared between its tail (the only writer) and the batch
/// handler (readers). Locks are held only for in-memory work, never across
/// an await.
#[derive(Debug, Clone, Default)]
pub struct SharedRouteTable {
    inner: Arc<RwLock<RouteTable>>,
}

impl SharedRouteTable {
    pub fn new(table: RouteTable) -> Self {
        Self {
            inner: Arc::new(RwLock::new(table)),
        }
    }

    pub fn read<T>(&self, reader: impl FnOnce(&RouteTable) -> T) -> T {
        reader(&self.inner.read().expect("route table lock poisoned"))
    }

    pub fn write<T>(&self, writer: impl FnOnce(&mut RouteTable) -> T) -> T {
        writer(&mut self.inner.write().expect("route table lock poisoned"))
    }

    /// The live edges of `user_id` now (wall clock).
    pub fn live_edges(&self, user_id: &UserId) -> Vec<LiveEdge> {
        let now = chatpipe_core::time::now_unix_ms();
        self.read(|table| table.live_edges(user_id, now))
    }
}

#[cfg(test)]
mod tests {
    use chatpipe_core::records::{EdgeState, SCHEMA_VERSION};

    use super::*;

    #[test]
    fn a_lease_that_runs_out_is_noticed_once_with_the_users_it_leaves_offline() {
        let mut table = RouteTable::new(0);
        let lease = |table: &mut RouteTable, edge: &str, expires: u64| {
            let record = EdgeRecord {
                schema_version: SCHEMA_VERSION,
                edge_id: EdgeId::parse(edge).unwrap(),
                push_addr: format!("{edge}:1"),
                state: EdgeState::Serving,
                lease_expires_ms: expires,
                worker_id: None,
                ts: 0,
            };
            table
                .apply(
                    Some(format!("edge/{edge}").as_bytes()),
                    Some(&serde_json::to_vec(&record).unwrap()),
                )
                .unwrap();
        };
        let route = |table: &mut RouteTable, user: &str, edge: &str| {
            let record = RouteRecord {
                schema_version: SCHEMA_VERSION,
                user_id: UserId::parse(user).unwrap(),
                edge_id: EdgeId::parse(edge).unwrap(),
                sessions: 1,
                ts: 0,
            };
            table
                .apply(
                    Some(format!("route/{user}/{edge}").as_bytes()),
                    Some(&serde_json::to_vec(&record).unwrap()),
                )
                .unwrap();
        };
        lease(&mut table, "long-dead", 10);
        lease(&mut table, "crashes", 1_000);
        lease(&mut table, "stays", 5_000);
        lease(&mut table, "retires", 1_000);
        route(&mut table, "only-there", "crashes");
        route(&mut table, "on-both", "crashes");
        route(&mut table, "on-both", "stays");
        route(&mut table, "old", "long-dead");
        let mut watch = LeaseWatch::default();
        assert!(
            watch.expired(&table, 500).is_empty(),
            "first look: all live"
        );
        table.apply(Some(b"edge/retires"), None).unwrap();
        let expired = watch.expired(&table, 2_000);
        assert_eq!(
            expired,
            vec![ExpiredEdge {
                edge_id: EdgeId::parse("crashes").unwrap(),
                users_gone: vec![UserId::parse("only-there").unwrap()],
            }]
        );
        assert!(watch.expired(&table, 3_000).is_empty(), "noticed once");
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn edge(name: &str) -> EdgeId {
        EdgeId::parse(name).unwrap()
    }

    fn edge_record(name: &str, lease_expires_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&EdgeRecord {
            schema_version: SCHEMA_VERSION,
            edge_id: edge(name),
            push_addr: format!("127.0.0.1:{}", 7000 + name.len()),
            state: EdgeState::Serving,
            lease_expires_ms,
            worker_id: None,
            ts: 0,
        })
        .unwrap()
    }

    fn route_record(user_name: &str, edge_name: &str, sessions: u32) -> Vec<u8> {
        serde_json::to_vec(&RouteRecord {
            schema_version: SCHEMA_VERSION,
            user_id: user(user_name),
            edge_id: edge(edge_name),
            sessions,
            ts: 0,
        })
        .unwrap()
    }

    fn apply(table: &mut RouteTable, key: &SessionKey, value: Option<Vec<u8>>) {
        table
            .apply(Some(key.encode().as_bytes()), value.as_deref())
            .unwrap();
    }

    /// Applies edge `name`'s lease record, valid until `lease_expires_ms`.
    fn announce_edge(table: &mut RouteTable, name: &str, lease_expires_ms: u64) {
        let record = edge_record(name, lease_expires_ms);
        apply(table, &SessionKey::Edge(edge(name)), Some(record));
    }

    /// Applies the route record of `user_name` on `edge_name`.
    fn announce_route(table: &mut RouteTable, user_name: &str, edge_name: &str, sessions: u32) {
        let record = route_record(user_name, edge_name, sessions);
        let key = SessionKey::Route(user(user_name), edge(edge_name));
        apply(table, &key, Some(record));
    }

    #[test]
    fn routes_count_only_while_the_edge_lease_holds() {
        let mut table = RouteTable::new(0);
        announce_edge(&mut table, "e1", 1_000);
        announce_route(&mut table, "alice", "e1", 1);
        announce_route(&mut table, "alice", "e2", 2);
        // e2 never announced a lease: its route is not live.
        let live = table.live_edges(&user("alice"), 500);
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].edge_id, edge("e1"));
        assert!(
            table.live_edges(&user("alice"), 1_001).is_empty(),
            "lease expired"
        );
        assert_eq!(
            (table.route_count(), table.user_count(), table.edge_count()),
            (2, 1, 1)
        );
    }

    #[test]
    fn lease_grace_tolerates_skew() {
        let mut table = RouteTable::new(100);
        announce_edge(&mut table, "e1", 1_000);
        announce_route(&mut table, "bob", "e1", 1);
        assert_eq!(table.live_edges(&user("bob"), 1_100).len(), 1);
        assert!(table.live_edges(&user("bob"), 1_101).is_empty());
    }

    #[test]
    fn tombstones_and_zero_sessions_remove_routes() {
        let mut table = RouteTable::new(0);
        announce_edge(&mut table, "e1", u64::MAX / 2);
        announce_route(&mut table, "a", "e1", 1);
        announce_route(&mut table, "a", "e1", 3);
        assert_eq!(
            table.route_count(),
            1,
            "re-announcing a route does not duplicate it"
        );
        announce_route(&mut table, "b", "e1", 1);
        apply(&mut table, &SessionKey::Route(user("a"), edge("e1")), None);
        announce_route(&mut table, "b", "e1", 0);
        assert_eq!((table.route_count(), table.user_count()), (0, 0));
        apply(&mut table, &SessionKey::Edge(edge("e1")), None);
        assert_eq!(table.edge_count(), 0);
    }

    #[test]
    fn invalid_records_are_refused_without_changing_the_table() {
        let mut table = RouteTable::new(0);
        assert_eq!(
            table.apply(None, Some(b"{}")),
            Err(RouteRecordError::BadKey)
        );
        assert!(matches!(
            table.apply(Some(b"nope/x"), None),
            Err(RouteRecordError::UnknownKey(_))
        ));
        assert!(matches!(
            table.apply(Some(b"edge/e1"), Some(b"not json")),
            Err(RouteRecordError::BadValue { .. })
        ));
        assert!(matches!(
            table.apply(Some(b"edge/e9"), Some(&edge_record("e1", 5))),
            Err(RouteRecordError::BadValue { .. })
        ));
        assert_eq!((table.edge_count(), table.route_count()), (0, 0));
    }

    #[test]
    fn long_dead_edges_are_forgotten_with_their_routes() {
        let mut table = RouteTable::new(0);
        announce_edge(&mut table, "dead", 1_000);
        announce_edge(&mut table, "live", 100_000);
        announce_route(&mut table, "a", "dead", 1);
        announce_route(&mut table, "a", "live", 1);
        announce_route(&mut table, "b", "dead", 1);
        assert!(
            table.forget_dead_edges(5_000, 10_000).is_empty(),
            "not dead long enough"
        );
        assert_eq!(table.forget_dead_edges(11_001, 10_000), vec![edge("dead")]);
        assert_eq!(
            (table.edge_count(), table.route_count(), table.user_count()),
            (1, 1, 1)
        );
        assert_eq!(table.live_edges(&user("a"), 11_001).len(), 1);
    }
}
