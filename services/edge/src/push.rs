//! The gRPC service fan-out workers call: each item of a batch is queued, in
//! the order received, to every local session of each of its recipients.
//! A batch flagged `resync` first makes every session start over (see
//! [`SessionRegistry::resync_all`]): the sender had given up on an earlier
//! push, so some of them missed frames. A batch may also carry verdicts on
//! marked resends this edge accepted; each is handed to the send waiting for
//! it (see [`crate::send`]).

use std::sync::Arc;

use chatpipe_core::MessageId;
use chatpipe_core::dedup::send_key_digest;
use chatpipe_core::frames::{encode_sequenced, is_json_object};
use chatpipe_proto::push::edge_push_server::EdgePush;
use chatpipe_proto::push::{PushBatch, PushReply};
use tonic::{Request, Response, Status};

use crate::metrics::EdgeMetrics;
use crate::send::{Accepted, VerdictWaiters};
use crate::sessions::SessionRegistry;

const DELIVERABLE_OPS: [&str; 4] = ["message", "typing", "read", "presence"];

#[derive(Debug, Clone)]
pub struct PushService {
    pub(crate) sessions: Arc<SessionRegistry>,
    pub(crate) metrics: EdgeMetrics,
    pub(crate) verdicts: Arc<VerdictWaiters>,
}

#[tonic::async_trait]
impl EdgePush for PushService {
    async fn push(&self, request: Request<PushBatch>) -> Result<Response<PushReply>, Status> {
        let batch = request.into_inner();
        self.metrics.push_batches.inc();
        if batch.resync {
            let sessions = self.sessions.resync_all();
            self.metrics.resyncs.inc();
            tracing::warn!(source = %batch.source, sessions, "fan-out lost frames for this edge; every session starts over");
        }
        for verdict in &batch.verdicts {
            let Ok(message_id) = MessageId::parse(&verdict.message_id) else {
                return Err(Status::invalid_argument("verdict message_id is not an id"));
            };
            self.metrics.verdicts_received.inc();
            let digest = send_key_digest(
                &verdict.conversation_id,
                &verdict.sender_id,
                &verdict.client_msg_id,
            );
            let accepted = Accepted {
                message_id,
                ts: verdict.ts,
            };
            if self.verdicts.resolve(digest, accepted) == 0 {
                self.metrics.verdicts_unclaimed.inc();
            }
        }
        let mut delivered: u32 = 0;
        let mut absent: u32 = 0;
        for item in &batch.items {
            let Some(op) = DELIVERABLE_OPS.iter().find(|known| **known == item.op) else {
                return Err(Status::invalid_argument(format!(
                    "unknown op {:?}",
                    item.op
                )));
            };
            if !is_json_object(&item.fields_json) {
                return Err(Status::invalid_argument(
                    "fields_json must be a JSON object",
                ));
            }
            let fields = item.fields_json.trim();
            let encode = |seq: u64| encode_sequenced(op, seq, fields);
            let (sessions, missing) = self.sessions.deliver_to_all(&item.recipients, &encode);
            delivered += sessions as u32;
            absent += missing as u32;
        }
        self.metrics.push_deliveries.inc_by(u64::from(delivered));
        self.metrics
            .push_absent_recipients
            .inc_by(u64::from(absent));
        Ok(Response::new(PushReply {
            delivered_sessions: delivered,
            absent_recipients: absent,
        }))
    }
}
