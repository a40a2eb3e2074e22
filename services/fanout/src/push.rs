//! The gRPC side: one lazily-connected tonic channel per edge address, and
//! the retry policy of a push.
//!
//! A push to an edge is retried until the edge answers, with a growing
//! deadline (an edge busy with a large batch finishes it and answers the
//! next attempt in time) and a growing pause, for as long as the edge's
//! lease is live. Meanwhile the batch, and so the partition, waits: a slow
//! edge slows delivery down instead of losing it. Only two things end the
//! retries without an answer:
//! - the edge refuses connections (no process listens there any more, so no
//!   client is attached to it), or
//! - its lease runs out (presumed dead; its clients reconnect elsewhere).
//!
//! Either way the edge is *missed*: skipped for `suspect_backoff_ms`, and the
//! next push that reaches it carries `resync`, so that an edge that was in
//! fact alive makes its sessions catch up from history instead of silently
//! missing frames. An edge that retires its lease (a drain, which closed
//! every session) is forgotten: a new edge under the same id starts clean.
//! A retry may deliver an item twice (the edge may have
//! done the work of an attempt whose answer came too late); clients
//! de-duplicate by `message_id`.
//!
//! Member sets (large groups, see `schemas/proto/push.proto`): the pusher
//! remembers, per edge, which sets the edge acknowledged holding (an
//! answered push that carried or referenced them) and attaches a set's
//! members only to a push that needs them. An edge that answers
//! `unknown_member_sets` delivered nothing; the same RPC is sent again at
//! once with those lists attached, so order and at-least-once hold.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpipe_core::EdgeId;
use chatpipe_core::auth::PushKey;
use chatpipe_proto::auth::{AuthenticatedPushClient, authenticated_client};
use chatpipe_proto::push::PushReply;
use chatpipe_proto::push::{PushBatch, PushItem};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::metrics::{FanoutMetrics, PushOutcome};
use crate::plan::{EdgeMemberSet, MemberSetKey, item_weight};

/// Member sets remembered per edge; past this the edge's memory is cleared
/// (the cost is one resend of each list still in use).
const MAX_KNOWN_SETS_PER_EDGE: usize = 4_096;

/// First pause between two attempts; it doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How pushes are cut and retried.
#[derive(Debug, Clone, Copy)]
pub struct PushSettings {
    /// Deadline of a first attempt; each retry doubles it.
    pub timeout: Duration,
    /// Longest deadline of one attempt.
    pub max_timeout: Duration,
    /// How long an edge that was given up is skipped.
    pub suspect_backoff: Duration,
    /// Largest RPC in (estimated) bytes.
    pub max_bytes: usize,
    /// Most recipients in one RPC: bounds the edge's work per call, so that
    /// every call is answered well within its deadline.
    pub max_recipients: usize,
}

/// Channels, suspicion and "missed" state, shared by every batch of one
/// worker.
#[derive(Debug)]
pub struct EdgePushers {
    source: String,
    settings: PushSettings,
    /// Presented on every call (edges refuse calls without it).
    push_key: PushKey,
    channels: Mutex<HashMap<Arc<str>, AuthenticatedPushClient>>,
    suspects: Mutex<HashMap<EdgeId, Instant>>,
    /// Edges this worker gave up on since their last successful push.
    missed: Mutex<HashSet<EdgeId>>,
    /// Member sets each edge acknowledged holding.
    known_sets: Mutex<HashMap<EdgeId, HashSet<MemberSetKey>>>,
    metrics: FanoutMetrics,
}

/// Why retries to an edge ended without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// Nothing listens at the edge's address.
    Refused,
    /// The edge's lease ran out (or it left the route table).
    LeaseExpired,
}

impl GiveUpReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::Refused => "refused",
            GiveUpReason::LeaseExpired => "lease_expired",
        }
    }
}

/// The worker is shutting down while a push was still being retried: the
/// batch must not be confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutdown while retrying a push")]
pub struct Interrupted;

/// A failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failure {
    outcome: PushOutcome,
    refused: bool,
}

/// An answered attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Sessions the items were queued to.
    Delivered(u64),
    /// The edge lacks these member sets and delivered nothing.
    UnknownSets(Vec<MemberSetKey>),
}

/// A rough protobuf size of one item (field tags and lengths included), to
/// keep each RPC under the edge's decoding limit. (An attached member-set
/// list is not counted: it goes once per edge and set.)
fn estimated_item_bytes(item: &PushItem) -> usize {
    const PER_FIELD: usize = 6;
    item.op.len()
        + item.fields_json.len()
        + item.conversation_id.len()
        + item.message_id.len()
        + item.except_user.len()
        + item
            .recipients
            .iter()
            .map(|recipient| recipient.len() + PER_FIELD)
            .sum::<usize>()
        + 8 * PER_FIELD
}

/// Splits `items` into consecutive runs of at most `max_bytes` and
/// `max_recipients` (each run holds at least one item; an item with more
/// recipients than `max_recipients` is cut into several items with the
/// same content), preserving order.
pub fn split_runs(
    items: Vec<PushItem>,
    max_bytes: usize,
    max_recipients: usize,
    weight: impl Fn(&PushItem) -> usize,
) -> Vec<Vec<PushItem>> {
    let max_recipients = max_recipients.max(1);
    let mut runs: Vec<Vec<PushItem>> = Vec::new();
    let mut current: Vec<PushItem> = Vec::new();
    let (mut current_bytes, mut current_recipients) = (0, 0);
    let pieces = items.into_iter().flat_map(|mut item| {
        // Only a recipient list is cut; a member-set item has none.
        if item.recipients.len() <= max_recipients {
            return vec![item];
        }
        let recipients = std::mem::take(&mut item.recipients);
        recipients
            .chunks(max_recipients)
            .map(|chunk| PushItem {
                recipients: chunk.to_vec(),
                ..item.clone()
            })
            .collect()
    });
    for item in pieces {
        let item_bytes = estimated_item_bytes(&item);
        let item_recipients = weight(&item);
        if !current.is_empty()
            && (current_bytes + item_bytes > max_bytes
                || current_recipients + item_recipients > max_recipients)
        {
            runs.push(std::mem::take(&mut current));
            (current_bytes, current_recipients) = (0, 0);
        }
        current_bytes += item_bytes;
        current_recipients += item_recipients;
        current.push(item);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// Resolves once `still_live()` stops holding (checked every 250 ms).
async fn lease_lapse(still_live: &impl Fn() -> bool) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if !still_live() {
            return;
        }
    }
}

/// Whether a failed RPC shows that nothing listens at the address.
fn is_connection_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = error.source();
    }
    status.code() == tonic::Code::Unavailable && status.message().contains("Connection refused")
}

impl EdgePushers {
    pub fn new(
        source: impl Into<String>,
        settings: PushSettings,
        push_key: PushKey,
        metrics: FanoutMetrics,
    ) -> Self {
        Self {
            source: source.into(),
            settings,
            push_key,
            channels: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            missed: Mutex::new(HashSet::new()),
            known_sets: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The edges to skip now (and forgets suspicions that have run out).
    pub fn suspects(&self) -> HashSet<EdgeId> {
        let now = Instant::now();
        let mut suspects = self.suspects.lock().expect("suspects lock poisoned");
        suspects.retain(|_, until| *until > now);
        suspects.keys().cloned().collect()
    }

    /// Remembers that `edge_id` missed frames: skip it for a while, and ask
    /// it to resync on the next push that reaches it.
    pub fn mark_missed(&self, edge_id: &EdgeId) {
        let until = Instant::now() + self.settings.suspect_backoff;
        self.suspects
            .lock()
            .expect("suspects lock poisoned")
            .insert(edge_id.clone(), until);
        self.missed
            .lock()
            .expect("missed lock poisoned")
            .insert(edge_id.clone());
    }

    /// Items meant for `edge_id` were left out (it was given up recently):
    /// it must resync on its next answered push.
    pub fn note_skipped(&self, edge_id: &EdgeId) {
        self.missed
            .lock()
            .expect("missed lock poisoned")
            .insert(edge_id.clone());
    }

    /// `edge_id` retired its lease after draining every session: nothing it
    /// held can still be missing frames, and a new edge under the same id
    /// starts clean.
    pub fn forget_edge(&self, edge_id: &EdgeId) {
        self.known_sets
            .lock()
            .expect("known sets lock poisoned")
            .remove(edge_id);
        self.missed
            .lock()
            .expect("missed lock poisoned")
            .remove(edge_id);
        self.suspects
            .lock()
            .expect("suspects lock poisoned")
            .remove(edge_id);
    }

    fn has_missed(&self, edge_id: &EdgeId) -> bool {
        self.missed
            .lock()
            .expect("missed lock poisoned")
            .contains(edge_id)
    }

    fn resynced(&self, edge_id: &EdgeId) {
        self.missed
            .lock()
            .expect("missed lock poisoned")
            .remove(edge_id);
        self.metrics.resyncs_requested.inc();
    }

    fn client(
        &self,
        push_addr: &Arc<str>,
    ) -> Result<AuthenticatedPushClient, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("channels lock poisoned");
        if let Some(client) = channels.get(push_addr) {
            return Ok(client.clone());
        }
        let connect_timeout = self.settings.timeout;
        let endpoint = Endpoint::from_shared(format!("http://{push_addr}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(connect_timeout.max(Duration::from_secs(1)));
        let client = authenticated_client(endpoint.connect_lazy(), &self.push_key);
        channels.insert(push_addr.clone(), client.clone());
        Ok(client)
    }

    /// Drops channels to addresses no known edge uses any more.
    pub fn retain_addresses(&self, known: &[Arc<str>]) {
        let known: HashSet<&str> = known.iter().map(|addr| &**addr).collect();
        self.channels
            .lock()
            .expect("channels lock poisoned")
            .retain(|addr, _| known.contains(&**addr));
    }

    /// The deadline of attempt number `attempt` (0-based).
    fn attempt_timeout(&self, attempt: u32) -> Duration {
        let grown = self
            .settings
            .timeout
            .saturating_mul(1u32 << attempt.min(16));
        grown.min(self.settings.max_timeout.max(self.settings.timeout))
    }

    /// Pushes `items` to one edge, in order: one RPC, or a few consecutive
    /// ones when the items exceed the size or recipient bounds. Each RPC is
    /// retried until answered while `still_live()` holds (see the module
    /// documentation). `member_sets` holds the sets the items reference.
    /// Counts every attempt; returns the recipient sessions the edge queued
    /// items to. Errs only when `shutdown` was cancelled before every RPC
    /// was answered or given up.
    pub async fn push(
        &self,
        edge_id: &EdgeId,
        push_addr: &Arc<str>,
        items: Vec<PushItem>,
        member_sets: &HashMap<MemberSetKey, EdgeMemberSet>,
        still_live: impl Fn() -> bool,
        shutdown: &CancellationToken,
    ) -> Result<u64, Interrupted> {
        let mut delivered_sessions = 0;
        let runs = split_runs(
            items,
            self.settings.max_bytes,
            self.settings.max_recipients,
            |item| item_weight(item, member_sets),
        );
        for run in runs {
            let mut attempt: u32 = 0;
            let mut pause = FIRST_RETRY_PAUSE;
            // Sets the edge said it lacks: attached whatever we believed.
            let mut lacking: HashSet<MemberSetKey> = HashSet::new();
            loop {
                let resync = self.has_missed(edge_id);
                let timeout = self.attempt_timeout(attempt);
                let (request_items, attached) =
                    self.attach_member_sets(edge_id, &run, member_sets, &lacking);
                let attempted = tokio::select! {
                    answer = self.push_once(edge_id, push_addr, request_items, resync, timeout) => answer,
                    // A long attempt does not outlive the edge's lease.
                    () = lease_lapse(&still_live) => Err(Failure {
                        outcome: PushOutcome::Timeout,
                        refused: false,
                    }),
                };
                let attempted = match attempted {
                    Ok(Answer::UnknownSets(unknown)) => {
                        self.metrics.member_sets_unknown.inc();
                        self.forget_sets(edge_id, &unknown);
                        if unknown.iter().all(|key| attached.contains(key)) {
                            // Lists were attached and still unknown: the
                            // edge is broken; retry like any failure.
                            tracing::warn!(edge = %edge_id, "edge refused member sets sent with their lists");
                            Err(Failure {
                                outcome: PushOutcome::Error,
                                refused: false,
                            })
                        } else {
                            // Nothing was delivered: resend at once.
                            lacking.extend(unknown);
                            continue;
                        }
                    }
                    Ok(Answer::Delivered(delivered)) => Ok(delivered),
                    Err(failure) => Err(failure),
                };
                match attempted {
                    Ok(delivered) => {
                        self.metrics.count_push(PushOutcome::Ok);
                        if resync {
                            self.resynced(edge_id);
                        }
                        self.remember_sets(edge_id, &run);
                        delivered_sessions += delivered;
                        break;
                    }
                    Err(failure) => {
                        self.metrics.count_push(failure.outcome);
                        let gave_up = if failure.refused {
                            Some(GiveUpReason::Refused)
                        } else if !still_live() {
                            Some(GiveUpReason::LeaseExpired)
                        } else {
                            None
                        };
                        if let Some(reason) = gave_up {
                            tracing::warn!(edge = %edge_id, push_addr = &**push_addr, reason = reason.as_str(), attempts = attempt + 1, "push given up; the edge will be told to resync");
                            self.metrics.count_given_up(reason);
                            self.mark_missed(edge_id);
                            return Ok(delivered_sessions);
                        }
                        self.metrics.push_retries.inc();
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => return Err(Interrupted),
                            _ = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(MAX_RETRY_PAUSE);
                        attempt = attempt.saturating_add(1);
                    }
                }
            }
        }
        Ok(delivered_sessions)
    }

    /// The run's items, with the members of each referenced set the edge
    /// is not known to hold (or said it lacks) attached to the set's first
    /// item; and which sets were attached.
    fn attach_member_sets(
        &self,
        edge_id: &EdgeId,
        run: &[PushItem],
        member_sets: &HashMap<MemberSetKey, EdgeMemberSet>,
        lacking: &HashSet<MemberSetKey>,
    ) -> (Vec<PushItem>, HashSet<MemberSetKey>) {
        let mut items = run.to_vec();
        let mut attached: HashSet<MemberSetKey> = HashSet::new();
        if run.iter().all(|item| item.member_set == 0) {
            return (items, attached);
        }
        let known_sets = self.known_sets.lock().expect("known sets lock poisoned");
        let known = known_sets.get(edge_id);
        for item in &mut items {
            if item.member_set == 0 {
                continue;
            }
            let key = (item.conversation_id.clone(), item.member_set);
            let edge_holds =
                known.is_some_and(|known| known.contains(&key)) && !lacking.contains(&key);
            if edge_holds || attached.contains(&key) {
                continue;
            }
            let Some(set) = member_sets.get(&key) else {
                debug_assert!(false, "the plan holds every set its items reference");
                continue;
            };
            item.member_set_members = set
                .members
                .iter()
                .map(|member| member.as_str().to_owned())
                .collect();
            self.metrics.member_sets_sent.inc();
            attached.insert(key);
        }
        (items, attached)
    }

    /// The edge answered a push referencing these sets: it holds them.
    fn remember_sets(&self, edge_id: &EdgeId, run: &[PushItem]) {
        if run.iter().all(|item| item.member_set == 0) {
            return;
        }
        let mut known_sets = self.known_sets.lock().expect("known sets lock poisoned");
        let known = known_sets.entry(edge_id.clone()).or_default();
        if known.len() > MAX_KNOWN_SETS_PER_EDGE {
            known.clear();
        }
        for item in run.iter().filter(|item| item.member_set != 0) {
            known.insert((item.conversation_id.clone(), item.member_set));
        }
    }

    fn forget_sets(&self, edge_id: &EdgeId, unknown: &[MemberSetKey]) {
        let mut known_sets = self.known_sets.lock().expect("known sets lock poisoned");
        if let Some(known) = known_sets.get_mut(edge_id) {
            for key in unknown {
                known.remove(key);
            }
        }
    }

    async fn push_once(
        &self,
        edge_id: &EdgeId,
        push_addr: &Arc<str>,
        items: Vec<PushItem>,
        resync: bool,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let mut client = match self.client(push_addr) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(edge = %edge_id, push_addr = &**push_addr, %error, "bad edge push address");
                return Err(Failure {
                    outcome: PushOutcome::Error,
                    refused: true,
                });
            }
        };
        let item_count = items.len();
        let request = PushBatch {
            source: self.source.clone(),
            items,
            resync,
            ..Default::default()
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(timeout, client.push(request)).await;
        self.metrics
            .push_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(reply)) => {
                let reply: PushReply = reply.into_inner();
                if !reply.unknown_member_sets.is_empty() {
                    let unknown = reply
                        .unknown_member_sets
                        .into_iter()
                        .map(|set| (set.conversation_id, set.member_set))
                        .collect();
                    return Ok(Answer::UnknownSets(unknown));
                }
                self.metrics
                    .absent_recipients
                    .inc_by(u64::from(reply.absent_recipients));
                Ok(Answer::Delivered(u64::from(reply.delivered_sessions)))
            }
            Ok(Err(status)) => {
                let refused = is_connection_refused(&status);
                tracing::warn!(edge = %edge_id, push_addr = &**push_addr, code = ?status.code(), message = status.message(), refused, items = item_count, "push failed");
                Err(Failure {
                    outcome: PushOutcome::Error,
                    refused,
                })
            }
            Err(_elapsed) => {
                tracing::warn!(edge = %edge_id, push_addr = &**push_addr, timeout_ms = timeout.as_millis() as u64, items = item_count, "push timed out; retrying with a longer deadline");
                Err(Failure {
                    outcome: PushOutcome::Timeout,
                    refused: false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(recipients: usize) -> PushItem {
        PushItem {
            op: "message".into(),
            fields_json: "{}".into(),
            recipients: (0..recipients)
                .map(|index| format!("user{index:05}"))
                .collect(),
            conversation_id: "c".into(),
            message_id: "1".into(),
            ..PushItem::default()
        }
    }

    fn by_recipients(item: &PushItem) -> usize {
        item.recipients.len()
    }

    #[test]
    fn member_set_items_weigh_their_local_members_and_are_never_cut() {
        let set_item = |id: &str| PushItem {
            op: "message".into(),
            fields_json: "{}".into(),
            conversation_id: "big".into(),
            message_id: id.into(),
            member_set: 7,
            ..PushItem::default()
        };
        let members: Arc<[chatpipe_core::UserId]> = Arc::from(Vec::new());
        let sets: HashMap<MemberSetKey, EdgeMemberSet> =
            HashMap::from([(("big".to_owned(), 7), EdgeMemberSet::new(members, 600))]);
        let runs = split_runs(
            vec![set_item("1"), set_item("2"), set_item("3")],
            3 << 20,
            1_000,
            |item| item_weight(item, &sets),
        );
        let shapes: Vec<usize> = runs.iter().map(Vec::len).collect();
        assert_eq!(shapes, vec![1, 1, 1], "600 + 600 > 1,000 per RPC");
    }

    #[test]
    fn small_batches_stay_one_rpc_and_large_ones_split_in_order() {
        assert_eq!(
            split_runs(vec![item(3), item(3)], 3 << 20, 100, by_recipients).len(),
            1
        );
        let items: Vec<PushItem> = (0..10)
            .map(|index| {
                let mut big = item(1_000);
                big.message_id = index.to_string();
                big
            })
            .collect();
        let runs = split_runs(items, 30_000, 1_000_000, by_recipients);
        assert!(runs.len() > 1);
        let order: Vec<String> = runs
            .iter()
            .flatten()
            .map(|item| item.message_id.clone())
            .collect();
        assert_eq!(
            order,
            (0..10).map(|index| index.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(
            split_runs(vec![item(10_000)], 10, 1_000_000, by_recipients).len(),
            1,
            "an oversized item still goes alone"
        );
    }

    #[test]
    fn runs_are_bounded_by_recipients_and_large_items_are_cut() {
        let mut first = item(2_500);
        first.message_id = "a".into();
        let mut second = item(10);
        second.message_id = "b".into();
        let runs = split_runs(vec![first, second], 3 << 20, 1_000, by_recipients);
        let shapes: Vec<Vec<(String, usize)>> = runs
            .iter()
            .map(|run| {
                run.iter()
                    .map(|item| (item.message_id.clone(), item.recipients.len()))
                    .collect()
            })
            .collect();
        assert_eq!(
            shapes,
            vec![
                vec![("a".to_owned(), 1_000)],
                vec![("a".to_owned(), 1_000)],
                vec![("a".to_owned(), 500), ("b".to_owned(), 10)],
            ]
        );
        let recipients: Vec<String> = runs
            .iter()
            .flatten()
            .filter(|item| item.message_id == "a")
            .flat_map(|item| item.recipients.clone())
            .collect();
        assert_eq!(
            recipients,
            item(2_500).recipients,
            "every recipient once, in order"
        );
    }

    #[test]
    fn attempt_deadlines_grow_to_the_cap() {
        let pushers = EdgePushers::new(
            "test",
            PushSettings {
                timeout: Duration::from_millis(500),
                max_timeout: Duration::from_secs(3),
                suspect_backoff: Duration::from_secs(5),
                max_bytes: 1 << 20,
                max_recipients: 1_000,
            },
            PushKey::derive(b"test"),
            FanoutMetrics::new(),
        );
        let deadlines: Vec<u128> = (0..5)
            .map(|attempt| pushers.attempt_timeout(attempt).as_millis())
            .collect();
        assert_eq!(deadlines, vec![500, 1_000, 2_000, 3_000, 3_000]);
    }
}
