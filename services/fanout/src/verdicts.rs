//! Verdicts on marked resends, pushed back to the edge that accepted them.
//!
//! Fan-out sees every record of its partitions in partition order, so it
//! knows, for each `chat.messages` record marked `resend`, whether it was
//! the first attempt of its send or a duplicate, and which attempt counts
//! (see `chatpipe_core::dedup`). The edge named in the record's `edge_id`
//! holds a client waiting for that answer; it gets it as a `PushBatch`
//! carrying only `verdicts`.
//!
//! Best effort, one attempt per batch and edge, bounded by the push
//! timeout: a lost verdict costs the client a timeout (`unavailable`) and
//! a marked retry, whose own record brings a new verdict. Verdicts never
//! hold up a partition beyond that timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpipe_core::EdgeId;
use chatpipe_core::auth::PushKey;
use chatpipe_core::dedup::SendVerdict;
use chatpipe_core::records::MessageRecord;
use chatpipe_core::time::now_unix_ms;
use chatpipe_proto::auth::{AuthenticatedPushClient, authenticated_client};
use chatpipe_proto::push::{self as proto, PushBatch};
use tonic::transport::Endpoint;

use crate::metrics::FanoutMetrics;
use crate::routes::SharedRouteTable;

/// The verdict on `record` (marked `resend`), as pushed to its edge.
pub(crate) fn verdict_for(record: &MessageRecord, verdict: SendVerdict) -> proto::SendVerdict {
    let original = verdict.original(record);
    proto::SendVerdict {
        conversation_id: record.conversation_id.as_str().to_owned(),
        sender_id: record.sender_id.as_str().to_owned(),
        client_msg_id: record.client_msg_id.as_str().to_owned(),
        message_id: original.message_id.to_string(),
        ts: original.ts,
        record_message_id: record.message_id.to_string(),
    }
}

/// Sends verdicts to edges, one lazily connected channel per address.
#[derive(Debug)]
pub(crate) struct VerdictPusher {
    source: String,
    timeout: Duration,
    /// Presented on every call (edges refuse calls without it).
    push_key: PushKey,
    channels: Mutex<HashMap<Arc<str>, AuthenticatedPushClient>>,
    metrics: FanoutMetrics,
}

impl VerdictPusher {
    pub(crate) fn new(
        source: String,
        timeout: Duration,
        push_key: PushKey,
        metrics: FanoutMetrics,
    ) -> Self {
        Self {
            source,
            timeout,
            push_key,
            channels: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn client(
        &self,
        push_addr: &Arc<str>,
    ) -> Result<AuthenticatedPushClient, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("verdict channels lock");
        if let Some(client) = channels.get(push_addr) {
            return Ok(client.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{push_addr}"))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let client = authenticated_client(channel, &self.push_key);
        // Edges come and go; a few stale channels cost nothing, but do
        // not let the map grow without bound.
        if channels.len() >= 4096 {
            channels.clear();
        }
        channels.insert(push_addr.clone(), client.clone());
        Ok(client)
    }

    /// Pushes `verdicts` to their edges, concurrently, one attempt each.
    pub(crate) async fn push(
        &self,
        routes: &SharedRouteTable,
        verdicts: Vec<(EdgeId, proto::SendVerdict)>,
    ) {
        if verdicts.is_empty() {
            return;
        }
        let mut per_edge: HashMap<EdgeId, Vec<proto::SendVerdict>> = HashMap::new();
        for (edge_id, verdict) in verdicts {
            per_edge.entry(edge_id).or_default().push(verdict);
        }
        let now = now_unix_ms();
        let sends = per_edge.into_iter().map(|(edge_id, verdicts)| async move {
            let count = verdicts.len() as u64;
            let Some(push_addr) = routes.read(|table| table.push_addr_of(&edge_id, now)) else {
                // The edge is gone: its clients reconnect and retry.
                self.metrics.count_verdicts("no_live_edge", count);
                return;
            };
            let mut client = match self.client(&push_addr) {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(edge = %edge_id, %error, "bad edge push address");
                    self.metrics.count_verdicts("error", count);
                    return;
                }
            };
            let request = PushBatch {
                source: self.source.clone(),
                verdicts,
                ..Default::default()
            };
            match tokio::time::timeout(self.timeout, client.push(request)).await {
                Ok(Ok(_)) => self.metrics.count_verdicts("ok", count),
                Ok(Err(status)) => {
                    tracing::debug!(edge = %edge_id, %status, "verdict push failed");
                    self.metrics.count_verdicts("error", count);
                }
                Err(_) => self.metrics.count_verdicts("timeout", count),
            }
        });
        futures::future::join_all(sends).await;
    }
}
