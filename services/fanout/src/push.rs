//! The gRPC side: one lazily-connected tonic channel per edge address, a
//! per-push deadline, and a short "suspect" backoff for edges that failed.
//!
//! A push is attempted once. If it fails or times out, the edge is skipped
//! for `suspect_backoff_ms` so that a dead or wedged edge costs at most one
//! timeout per backoff period instead of one per batch; its clients recover
//! what they missed by resuming or from history (at-most-once on this hop,
//! as `push.proto` says).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpipe_core::EdgeId;
use chatpipe_proto::push::edge_push_client::EdgePushClient;
use chatpipe_proto::push::{PushBatch, PushItem};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::{FanoutMetrics, PushOutcome};

/// Channels and suspicion state, shared by every batch of one worker.
#[derive(Debug)]
pub struct EdgePushers {
    source: String,
    push_timeout: Duration,
    suspect_backoff: Duration,
    max_push_bytes: usize,
    channels: Mutex<HashMap<Arc<str>, EdgePushClient<Channel>>>,
    suspects: Mutex<HashMap<EdgeId, Instant>>,
    metrics: FanoutMetrics,
}

/// The result of pushing to one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgePushResult {
    pub outcome: PushOutcome,
    pub delivered_sessions: u64,
}

/// A rough protobuf size of one item (field tags and lengths included), to
/// keep each RPC under the edge's decoding limit.
fn estimated_item_bytes(item: &PushItem) -> usize {
    const PER_FIELD: usize = 6;
    item.op.len()
        + item.fields_json.len()
        + item.conversation_id.len()
        + item.message_id.len()
        + item
            .recipients
            .iter()
            .map(|recipient| recipient.len() + PER_FIELD)
            .sum::<usize>()
        + 5 * PER_FIELD
}

/// Splits `items` into consecutive runs of at most `max_bytes` (each run
/// holds at least one item), preserving order.
pub fn split_by_size(items: Vec<PushItem>, max_bytes: usize) -> Vec<Vec<PushItem>> {
    let mut runs: Vec<Vec<PushItem>> = Vec::new();
    let mut current: Vec<PushItem> = Vec::new();
    let mut current_bytes = 0;
    for item in items {
        let item_bytes = estimated_item_bytes(&item);
        if !current.is_empty() && current_bytes + item_bytes > max_bytes {
            runs.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += item_bytes;
        current.push(item);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

impl EdgePushers {
    pub fn new(
        source: impl Into<String>,
        push_timeout: Duration,
        suspect_backoff: Duration,
        max_push_bytes: usize,
        metrics: FanoutMetrics,
    ) -> Self {
        Self {
            source: source.into(),
            push_timeout,
            suspect_backoff,
            max_push_bytes,
            channels: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
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

    fn mark_suspect(&self, edge_id: &EdgeId) {
        let until = Instant::now() + self.suspect_backoff;
        self.suspects
            .lock()
            .expect("suspects lock poisoned")
            .insert(edge_id.clone(), until);
    }

    fn client(
        &self,
        push_addr: &Arc<str>,
    ) -> Result<EdgePushClient<Channel>, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("channels lock poisoned");
        if let Some(client) = channels.get(push_addr) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{push_addr}"))?
            .connect_timeout(self.push_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(self.push_timeout.max(Duration::from_secs(1)));
        let client = EdgePushClient::new(endpoint.connect_lazy());
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

    /// Pushes `items` to one edge: one RPC, or a few consecutive ones when
    /// the items exceed `max_push_bytes`. Counts the outcome; a failure
    /// marks the edge suspect. Never returns an error: the caller carries on.
    pub async fn push(
        &self,
        edge_id: &EdgeId,
        push_addr: &Arc<str>,
        items: Vec<PushItem>,
    ) -> EdgePushResult {
        let mut delivered_sessions = 0;
        for run in split_by_size(items, self.max_push_bytes) {
            let outcome = self.push_once(edge_id, push_addr, run).await;
            match outcome {
                Ok(delivered) => delivered_sessions += delivered,
                Err(outcome) => {
                    self.metrics.count_push(outcome);
                    self.mark_suspect(edge_id);
                    return EdgePushResult {
                        outcome,
                        delivered_sessions,
                    };
                }
            }
        }
        self.metrics.count_push(PushOutcome::Ok);
        EdgePushResult {
            outcome: PushOutcome::Ok,
            delivered_sessions,
        }
    }

    async fn push_once(
        &self,
        edge_id: &EdgeId,
        push_addr: &Arc<str>,
        items: Vec<PushItem>,
    ) -> Result<u64, PushOutcome> {
        let mut client = match self.client(push_addr) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(edge = %edge_id, push_addr = &**push_addr, %error, "bad edge push address");
                return Err(PushOutcome::Error);
            }
        };
        let item_count = items.len();
        let request = PushBatch {
            source: self.source.clone(),
            items,
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(self.push_timeout, client.push(request)).await;
        self.metrics
            .push_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                self.metrics
                    .absent_recipients
                    .inc_by(u64::from(reply.absent_recipients));
                Ok(u64::from(reply.delivered_sessions))
            }
            Ok(Err(status)) => {
                tracing::warn!(edge = %edge_id, push_addr = &**push_addr, code = ?status.code(), message = status.message(), items = item_count, "push failed; edge suspect");
                Err(PushOutcome::Error)
            }
            Err(_elapsed) => {
                tracing::warn!(edge = %edge_id, push_addr = &**push_addr, timeout_ms = self.push_timeout.as_millis() as u64, items = item_count, "push timed out; edge suspect");
                Err(PushOutcome::Timeout)
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
        }
    }

    #[test]
    fn small_batches_stay_one_rpc_and_large_ones_split_in_order() {
        assert_eq!(split_by_size(vec![item(3), item(3)], 3 << 20).len(), 1);
        let items: Vec<PushItem> = (0..10)
            .map(|index| {
                let mut big = item(1_000);
                big.message_id = index.to_string();
                big
            })
            .collect();
        let runs = split_by_size(items, 30_000);
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
            split_by_size(vec![item(10_000)], 10).len(),
            1,
            "an oversized item still goes alone"
        );
    }
}
