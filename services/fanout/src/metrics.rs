//! What a fan-out worker counts. Registered under `chatpipe_fanout_…`;
//! tests read the same handles instead of scraping `/metrics`.

use chatpipe_kafka::{ConsumerMetrics, SendDedupMetrics};
use chatpipe_runtime::metrics::{
    CounterByReason, EncodeLabelSet, Family, ReasonLabel, latency_histogram, reason_count,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::push::GiveUpReason;

/// `topic` label: the logical topic (`messages`, `events`), not the
/// deployment's prefixed name, so that label values stay few.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

/// `outcome` label of a push to one edge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// The outcome of one push to one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The edge answered.
    Ok,
    /// No answer within the push timeout.
    Timeout,
    /// The connection or the RPC failed.
    Error,
    /// Not attempted: the edge was given up recently (it will be told to
    /// resync).
    SkippedSuspect,
}

impl PushOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PushOutcome::Ok => "ok",
            PushOutcome::Timeout => "timeout",
            PushOutcome::Error => "error",
            PushOutcome::SkippedSuspect => "skipped_suspect",
        }
    }
}

/// Every counter of one fan-out worker. Cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct FanoutMetrics {
    /// Records received, by logical topic (`messages`, `events`), counted
    /// once per handled batch.
    pub records_in: Family<TopicLabel, Counter>,
    /// Recipient sessions the edges queued items to
    /// (sum of `PushReply.delivered_sessions`).
    pub deliveries: Counter,
    /// Recipients an edge reported as no longer holding a session.
    pub absent_recipients: Counter,
    /// Pushes to edges, by outcome (`ok`, `timeout`, `error`, `skipped_suspect`).
    pub pushes: Family<OutcomeLabel, Counter>,
    /// Latency of attempted pushes, in seconds.
    pub push_latency_seconds: Histogram,
    /// Push attempts that failed or timed out and were tried again.
    pub push_retries: Counter,
    /// Edges given up after failed attempts, by reason (`refused`,
    /// `lease_expired`); each is told to resync on its next push.
    pub pushes_given_up: CounterByReason,
    /// Pushes that carried `resync` to an edge given up before.
    pub resyncs_requested: Counter,
    /// Member-set lists attached to pushes (once per edge, conversation and
    /// membership, plus resends).
    pub member_sets_sent: Counter,
    /// Pushes an edge answered with `unknown_member_sets` (resent with the
    /// lists attached).
    pub member_sets_unknown: Counter,
    /// Items routed to edges (one per item per edge).
    pub pushed_items: Counter,
    /// Recipients skipped because no live edge holds a session of theirs
    /// (they catch up from history).
    pub recipients_offline: Counter,
    /// Recipients skipped because their edge was suspect.
    pub recipients_skipped_suspect: Counter,
    /// Items dropped before routing, by reason (`unknown_conversation`).
    pub items_skipped: CounterByReason,
    /// Routes (user, edge) in the table, live or not.
    pub route_table_routes: Gauge,
    /// Users with at least one route.
    pub route_table_users: Gauge,
    /// Edges with a lease record, live or not.
    pub route_table_edges: Gauge,
    /// Session-topic records applied to the route table.
    pub route_records_applied: Counter,
    /// Session-topic records that could not be decoded (skipped).
    pub route_records_invalid: Counter,
    /// Edges forgotten after their lease had expired long ago.
    pub dead_edges_forgotten: Counter,
    /// Edges whose lease ran out while this worker watched (crashed).
    pub edges_expired: Counter,
    /// `offline` reports published for the users of expired edges whom no
    /// live edge holds (every worker publishes them; fan-out delivers one).
    pub expired_edge_offline_reports: Counter,
    /// 1 once the route table has caught up with the sessions topic.
    pub route_table_ready: Gauge,
    pub membership_cache_hits: Counter,
    pub membership_cache_misses: Counter,
    /// Membership records seen on the membership tail (each evicts entries).
    pub membership_invalidations: Counter,
    /// Membership-store reads that failed (the batch is retried).
    pub membership_store_errors: Counter,
    /// The consumer group's own counters (lag, retries, dead-lettered, …).
    pub consumer: ConsumerMetrics,
    /// Retries of a send not delivered (duplicates), and window rebuilds.
    pub send_dedup: SendDedupMetrics,
    /// Verdicts on marked resends pushed to edges, by outcome (`ok`,
    /// `timeout`, `error`, `no_live_edge`).
    pub verdicts: CounterByReason,
}

impl Default for FanoutMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl FanoutMetrics {
    pub fn new() -> Self {
        let metrics = Self {
            records_in: Family::default(),
            deliveries: Counter::default(),
            absent_recipients: Counter::default(),
            pushes: Family::default(),
            push_latency_seconds: latency_histogram(),
            push_retries: Counter::default(),
            pushes_given_up: CounterByReason::default(),
            resyncs_requested: Counter::default(),
            member_sets_sent: Counter::default(),
            member_sets_unknown: Counter::default(),
            pushed_items: Counter::default(),
            recipients_offline: Counter::default(),
            recipients_skipped_suspect: Counter::default(),
            items_skipped: CounterByReason::default(),
            route_table_routes: Gauge::default(),
            route_table_users: Gauge::default(),
            route_table_edges: Gauge::default(),
            route_records_applied: Counter::default(),
            route_records_invalid: Counter::default(),
            dead_edges_forgotten: Counter::default(),
            edges_expired: Counter::default(),
            expired_edge_offline_reports: Counter::default(),
            route_table_ready: Gauge::default(),
            membership_cache_hits: Counter::default(),
            membership_cache_misses: Counter::default(),
            membership_invalidations: Counter::default(),
            membership_store_errors: Counter::default(),
            consumer: ConsumerMetrics::new(),
            send_dedup: SendDedupMetrics::default(),
            verdicts: CounterByReason::default(),
        };
        // Exported at 0 from the start, so that alerts and dashboards see
        // the series before the first give-up.
        for reason in [GiveUpReason::Refused, GiveUpReason::LeaseExpired] {
            drop(
                metrics
                    .pushes_given_up
                    .get_or_create(&ReasonLabel::new(reason.as_str())),
            );
        }
        metrics
    }

    /// Registers every metric into `registry` (the caller's registry; this
    /// adds the `chatpipe_fanout` prefix).
    pub fn register(&self, registry: &mut Registry) {
        let fanout = registry.sub_registry_with_prefix("chatpipe_fanout");
        fanout.register(
            "records_in",
            "Records received, by logical topic",
            self.records_in.clone(),
        );
        fanout.register(
            "deliveries",
            "Recipient sessions pushed to (as reported by edges)",
            self.deliveries.clone(),
        );
        fanout.register(
            "absent_recipients",
            "Recipients an edge no longer held",
            self.absent_recipients.clone(),
        );
        fanout.register("pushes", "Pushes to edges, by outcome", self.pushes.clone());
        fanout.register(
            "push_latency_seconds",
            "Latency of pushes to edges",
            self.push_latency_seconds.clone(),
        );
        fanout.register(
            "push_retries",
            "Push attempts that failed or timed out and were retried",
            self.push_retries.clone(),
        );
        fanout.register(
            "pushes_given_up",
            "Edges given up after failed pushes, by reason",
            self.pushes_given_up.clone(),
        );
        fanout.register(
            "resyncs_requested",
            "Pushes that told an edge to resync its sessions",
            self.resyncs_requested.clone(),
        );
        fanout.register(
            "member_sets_sent",
            "Member-set lists attached to pushes",
            self.member_sets_sent.clone(),
        );
        fanout.register(
            "member_sets_unknown",
            "Pushes an edge refused for a member set it did not hold (resent with the list)",
            self.member_sets_unknown.clone(),
        );
        fanout.register(
            "pushed_items",
            "Items routed to edges, one per item per edge",
            self.pushed_items.clone(),
        );
        fanout.register(
            "recipients_offline",
            "Recipients skipped: no live edge holds them",
            self.recipients_offline.clone(),
        );
        fanout.register(
            "recipients_skipped_suspect",
            "Recipients skipped: their edge was suspect",
            self.recipients_skipped_suspect.clone(),
        );
        fanout.register(
            "items_skipped",
            "Items dropped before routing, by reason",
            self.items_skipped.clone(),
        );
        fanout.register(
            "route_table_routes",
            "User-to-edge routes in the route table",
            self.route_table_routes.clone(),
        );
        fanout.register(
            "route_table_users",
            "Users with a route",
            self.route_table_users.clone(),
        );
        fanout.register(
            "route_table_edges",
            "Edges with a lease record",
            self.route_table_edges.clone(),
        );
        fanout.register(
            "route_records_applied",
            "Session-topic records applied",
            self.route_records_applied.clone(),
        );
        fanout.register(
            "route_records_invalid",
            "Session-topic records skipped as invalid",
            self.route_records_invalid.clone(),
        );
        fanout.register(
            "dead_edges_forgotten",
            "Long-dead edges dropped from memory",
            self.dead_edges_forgotten.clone(),
        );
        fanout.register(
            "edges_expired",
            "Edges whose lease ran out while watched (crashed, not drained)",
            self.edges_expired.clone(),
        );
        fanout.register(
            "expired_edge_offline_reports",
            "Offline reports published for the users of expired edges",
            self.expired_edge_offline_reports.clone(),
        );
        fanout.register(
            "route_table_ready",
            "1 once the route table caught up",
            self.route_table_ready.clone(),
        );
        fanout.register(
            "membership_cache_hits",
            "Membership cache hits",
            self.membership_cache_hits.clone(),
        );
        fanout.register(
            "membership_cache_misses",
            "Membership cache misses",
            self.membership_cache_misses.clone(),
        );
        fanout.register(
            "membership_invalidations",
            "Membership records that evicted cache entries",
            self.membership_invalidations.clone(),
        );
        fanout.register(
            "membership_store_errors",
            "Failed membership-store reads",
            self.membership_store_errors.clone(),
        );
        self.consumer.register(fanout);
        self.send_dedup.register(fanout);
        fanout.register(
            "send_verdicts",
            "Verdicts on marked resends pushed to edges, by outcome",
            self.verdicts.clone(),
        );
    }

    /// Counts one push with its outcome.
    pub fn count_push(&self, outcome: PushOutcome) {
        self.pushes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }

    /// Pushes so far with `outcome`.
    pub fn pushes_with(&self, outcome: PushOutcome) -> u64 {
        self.pushes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().to_owned(),
            })
            .get()
    }

    /// Counts `count` records received from the logical `topic`.
    pub fn count_records_in(&self, topic: &str, count: u64) {
        self.records_in
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc_by(count);
    }

    /// Records so far from the logical `topic` (`messages`, `events`).
    pub fn records_in_for(&self, topic: &str) -> u64 {
        self.records_in
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .get()
    }

    /// Items skipped so far for `reason`.
    pub fn items_skipped_for(&self, reason: &str) -> u64 {
        reason_count(&self.items_skipped, reason)
    }

    /// Edges given up so far for `reason` (`refused`, `lease_expired`).
    pub fn given_up_for(&self, reason: &str) -> u64 {
        reason_count(&self.pushes_given_up, reason)
    }

    pub(crate) fn count_given_up(&self, reason: GiveUpReason) {
        self.pushes_given_up
            .get_or_create(&ReasonLabel::new(reason.as_str()))
            .inc();
    }

    pub(crate) fn count_verdicts(&self, outcome: &str, count: u64) {
        self.verdicts
            .get_or_create(&ReasonLabel::new(outcome))
            .inc_by(count);
    }

    pub(crate) fn count_item_skipped(&self, reason: &str) {
        self.items_skipped
            .get_or_create(&ReasonLabel::new(reason))
            .inc();
    }
}
