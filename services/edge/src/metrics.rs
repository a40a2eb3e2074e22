//! The edge's counters, gauges and histograms (prefix `chatpipe_edge`).
//! Tests read them directly; `/metrics` renders them.

use chatpipe_runtime::metrics::{Counter, CounterByReason, Gauge, Histogram, latency_histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug)]
pub struct EdgeMetrics {
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Sessions held (attached or waiting for resume).
    pub sessions: Gauge,
    /// Frames queued to sessions and not yet handed to a socket writer
    /// (summed over sessions; detached sessions keep theirs until resumed).
    pub queued_frames: Gauge,
    /// Route and presence changes waiting for the route task.
    pub route_queue_depth: Gauge,
    pub connections_accepted: Counter,
    /// Connection attempts refused, by reason (`rate_limited_global`,
    /// `rate_limited_ip`, `capacity`, `draining`, `too_many_sessions`,
    /// `connections_per_ip`, `auth_failures_ip`). Never labelled by address.
    pub connections_rejected: CounterByReason,
    /// Token refusals, by reason (`missing`, `malformed`, `expired`, …).
    pub auth_failures: CounterByReason,
    pub sessions_resumed: Counter,
    pub resumes_refused: Counter,
    pub frames_in: Counter,
    pub frames_out: Counter,
    /// Client frames refused, by error code.
    pub frames_rejected: CounterByReason,
    /// Sends this edge produced and Kafka confirmed (marked resends
    /// included, once their verdict came).
    pub sends_acked: Counter,
    /// Sends acked with an earlier attempt's id: answered by the edge's
    /// cache of recent sends (or an attempt in flight), or by a verdict
    /// naming an earlier attempt.
    pub sends_deduplicated: Counter,
    /// Edits and deletes this edge produced and Kafka confirmed (refusals
    /// are in `frames_rejected`).
    pub message_changes_acked: Counter,
    /// Marked resends that waited for their partition's verdict.
    pub resend_verdict_waits: Counter,
    /// Of those, the ones answered `unavailable` because no verdict came
    /// within the send deadline.
    pub resend_verdict_timeouts: Counter,
    /// Verdicts received from fan-out, and those no send was waiting for
    /// (answered from the cache meanwhile, timed out, or pushed again).
    pub verdicts_received: Counter,
    pub verdicts_unclaimed: Counter,
    /// send → ack latency (membership, de-duplication, Kafka `acks=all`).
    pub send_latency_seconds: Histogram,
    pub slow_consumer_closes: Counter,
    pub heartbeat_timeouts: Counter,
    pub push_batches: Counter,
    /// Pushes flagged `resync`: every session was made to start over.
    pub resyncs: Counter,
    /// Lease renewals acknowledged after the previous lease had run out
    /// (Kafka stalled them): fan-out may have skipped this edge's users
    /// meanwhile, so every session was made to start over.
    pub lease_lapses: Counter,
    /// Frames queued to sessions by pushes.
    pub push_deliveries: Counter,
    /// Push recipients that hold no session here.
    pub push_absent_recipients: Counter,
    /// Push calls refused for want of the cluster's push key, by reason
    /// (`missing`, `wrong`): nothing of them was delivered.
    pub push_refused: CounterByReason,
    /// Connections closed because their token expired without a refresh.
    pub token_expiry_closes: Counter,
    /// `refresh` frames, by outcome (`accepted`, `invalid`, `forbidden`).
    pub token_refreshes: CounterByReason,
    pub route_publish_failures: Counter,
}

impl EdgeMetrics {
    pub fn new() -> Self {
        Self {
            connections: Gauge::default(),
            sessions: Gauge::default(),
            queued_frames: Gauge::default(),
            route_queue_depth: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_rejected: CounterByReason::default(),
            auth_failures: CounterByReason::default(),
            sessions_resumed: Counter::default(),
            resumes_refused: Counter::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            frames_rejected: CounterByReason::default(),
            sends_acked: Counter::default(),
            sends_deduplicated: Counter::default(),
            message_changes_acked: Counter::default(),
            resend_verdict_waits: Counter::default(),
            resend_verdict_timeouts: Counter::default(),
            verdicts_received: Counter::default(),
            verdicts_unclaimed: Counter::default(),
            send_latency_seconds: latency_histogram(),
            slow_consumer_closes: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            push_batches: Counter::default(),
            resyncs: Counter::default(),
            lease_lapses: Counter::default(),
            push_deliveries: Counter::default(),
            push_absent_recipients: Counter::default(),
            push_refused: CounterByReason::default(),
            token_expiry_closes: Counter::default(),
            token_refreshes: CounterByReason::default(),
            route_publish_failures: Counter::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("chatpipe_edge");
        registry.register(
            "connections",
            "Open WebSocket connections",
            self.connections.clone(),
        );
        registry.register(
            "sessions",
            "Sessions held, attached or resumable",
            self.sessions.clone(),
        );
        registry.register(
            "queued_frames",
            "Frames queued to sessions, not yet handed to a socket writer",
            self.queued_frames.clone(),
        );
        registry.register(
            "route_queue_depth",
            "Route and presence changes waiting to be published",
            self.route_queue_depth.clone(),
        );
        registry.register(
            "connections_accepted",
            "WebSocket connections accepted",
            self.connections_accepted.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connection attempts refused, by reason",
            self.connections_rejected.clone(),
        );
        registry.register(
            "auth_failures",
            "Token refusals, by reason",
            self.auth_failures.clone(),
        );
        registry.register(
            "sessions_resumed",
            "Sessions resumed",
            self.sessions_resumed.clone(),
        );
        registry.register(
            "resumes_refused",
            "Resume requests answered resumed:false",
            self.resumes_refused.clone(),
        );
        registry.register(
            "frames_in",
            "Client frames received",
            self.frames_in.clone(),
        );
        registry.register(
            "frames_out",
            "Server frames written",
            self.frames_out.clone(),
        );
        registry.register(
            "frames_rejected",
            "Client frames refused, by code",
            self.frames_rejected.clone(),
        );
        registry.register(
            "sends_acked",
            "Sends acknowledged after Kafka confirmed",
            self.sends_acked.clone(),
        );
        registry.register(
            "sends_deduplicated",
            "Retried sends answered with an earlier attempt's id (edge cache or verdict)",
            self.sends_deduplicated.clone(),
        );
        registry.register(
            "message_changes_acked",
            "Edits and deletes produced and confirmed by Kafka",
            self.message_changes_acked.clone(),
        );
        registry.register(
            "resend_verdict_waits",
            "Marked resends that waited for their partition's verdict",
            self.resend_verdict_waits.clone(),
        );
        registry.register(
            "resend_verdict_timeouts",
            "Marked resends answered unavailable: no verdict within the send deadline",
            self.resend_verdict_timeouts.clone(),
        );
        registry.register(
            "verdicts_received",
            "Send verdicts pushed by fan-out",
            self.verdicts_received.clone(),
        );
        registry.register(
            "verdicts_unclaimed",
            "Send verdicts no send was waiting for",
            self.verdicts_unclaimed.clone(),
        );
        registry.register(
            "send_latency_seconds",
            "send to ack latency",
            self.send_latency_seconds.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Connections closed because the client did not read",
            self.slow_consumer_closes.clone(),
        );
        registry.register(
            "heartbeat_timeouts",
            "Connections dropped as silent",
            self.heartbeat_timeouts.clone(),
        );
        registry.register(
            "push_batches",
            "Push batches received from fan-out",
            self.push_batches.clone(),
        );
        registry.register(
            "resyncs",
            "Pushes that made every session start over (frames lost upstream)",
            self.resyncs.clone(),
        );
        registry.register(
            "lease_lapses",
            "Lease renewals acknowledged after the lease had run out (every session started over)",
            self.lease_lapses.clone(),
        );
        registry.register(
            "push_deliveries",
            "Frames queued to sessions by pushes",
            self.push_deliveries.clone(),
        );
        registry.register(
            "push_absent_recipients",
            "Pushed recipients with no session here",
            self.push_absent_recipients.clone(),
        );
        registry.register(
            "push_refused",
            "Push calls refused without a valid push key, by reason",
            self.push_refused.clone(),
        );
        registry.register(
            "token_expiry_closes",
            "Connections closed at their token's expiry (4011)",
            self.token_expiry_closes.clone(),
        );
        registry.register(
            "token_refreshes",
            "refresh frames, by outcome",
            self.token_refreshes.clone(),
        );
        registry.register(
            "route_publish_failures",
            "Session-route records Kafka did not confirm",
            self.route_publish_failures.clone(),
        );
    }
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}
