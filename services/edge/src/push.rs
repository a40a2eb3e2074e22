//! The gRPC service fan-out workers call: each item of a batch is queued, in
//! the order received, to every local session of each of its recipients.
//! A batch flagged `resync` first makes every session start over (see
//! [`SessionRegistry::resync_all`]): the sender had given up on an earlier
//! push, so some of them missed frames.
//!
//! Each item is encoded once ([`SequencedFrame`]) and shared by every
//! session it is queued to; a session adds only its `seq`.
//!
//! Items of large groups name a *member set* instead of listing recipients
//! (see `schemas/proto/push.proto`): the edge keeps the lists fan-out sent
//! ([`MemberSets`], bounded) and delivers to its local sessions of those
//! members. A batch that references a set the edge does not hold is refused
//! whole, before anything is delivered, with `unknown_member_sets`; fan-out
//! resends it with the lists attached.
//!
//! A batch may also carry verdicts on marked resends this edge accepted;
//! each is handed to the send waiting for it (see [`crate::send`]).
//!
//! Every call must carry the cluster's push key ([`RequirePushKey`], see
//! `chatpipe_proto::auth`): whoever reaches the push port without it could
//! otherwise inject frames under any `sender_id`, or `resync` every session
//! away. A call without it, or with another key, is answered
//! `UNAUTHENTICATED` before the service sees it, and counted in
//! `push_refused`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chatpipe_core::MessageId;
use chatpipe_core::auth::PushKey;
use chatpipe_core::dedup::send_key_digest;
use chatpipe_core::frames::{DeliverableOp, SequencedFrame, is_frame_fields};
use chatpipe_proto::auth::presented_bearer;
use chatpipe_proto::push::edge_push_server::EdgePush;
use chatpipe_proto::push::{MemberSetRef, PushBatch, PushReply};
use chatpipe_runtime::metrics::ReasonLabel;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};

use crate::metrics::EdgeMetrics;
use crate::send::{Accepted, VerdictWaiters};
use crate::sessions::{ReadMarkerFrame, SessionRegistry};

/// A member set as fan-out names it: (conversation, set digest).
type MemberSetKey = (String, u64);

/// The member lists fan-out sent, oldest dropped first once they hold more
/// than `max_members` members in all.
#[derive(Debug)]
pub struct MemberSets {
    inner: Mutex<MemberSetsInner>,
    max_members: usize,
}

#[derive(Debug, Default)]
struct MemberSetsInner {
    sets: HashMap<MemberSetKey, Arc<[String]>>,
    /// Insertion order, for eviction.
    order: VecDeque<MemberSetKey>,
    members: usize,
}

impl MemberSets {
    pub fn new(max_members: usize) -> Self {
        Self {
            inner: Mutex::new(MemberSetsInner::default()),
            max_members,
        }
    }

    pub fn get(&self, key: &MemberSetKey) -> Option<Arc<[String]>> {
        self.inner
            .lock()
            .expect("member sets lock")
            .sets
            .get(key)
            .cloned()
    }

    /// Keeps `members` as set `key` (the newest); returns the shared list.
    pub fn insert(&self, key: MemberSetKey, members: Vec<String>) -> Arc<[String]> {
        let members: Arc<[String]> = Arc::from(members);
        let mut inner = self.inner.lock().expect("member sets lock");
        if let Some(previous) = inner.sets.insert(key.clone(), members.clone()) {
            inner.members -= previous.len();
            inner.order.retain(|held| *held != key);
        }
        inner.members += members.len();
        inner.order.push_back(key);
        // The newest set stays even if it alone exceeds the bound: the
        // batch that brought it is about to use it.
        while inner.members > self.max_members && inner.order.len() > 1 {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(dropped) = inner.sets.remove(&oldest) {
                inner.members -= dropped.len();
            }
        }
        members
    }

    /// Sets held now.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("member sets lock").sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Lets through only calls that present the cluster's push key.
#[derive(Clone)]
pub struct RequirePushKey {
    key: PushKey,
    metrics: EdgeMetrics,
}

impl std::fmt::Debug for RequirePushKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("RequirePushKey")
    }
}

impl RequirePushKey {
    pub fn new(key: PushKey, metrics: EdgeMetrics) -> Self {
        Self { key, metrics }
    }
}

impl Interceptor for RequirePushKey {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let reason = match presented_bearer(&request) {
            Some(bearer) if self.key.accepts(bearer) => return Ok(request),
            Some(_) => "wrong",
            None => "missing",
        };
        self.metrics
            .push_refused
            .get_or_create(&ReasonLabel::new(reason))
            .inc();
        // Debug only: a caller at the port could otherwise fill the logs;
        // the counter tells operators. The presented value is never logged.
        tracing::debug!(reason, peer = ?request.remote_addr(), "push call refused: no valid push key");
        Err(Status::unauthenticated("a valid push key is required"))
    }
}

#[derive(Debug, Clone)]
pub struct PushService {
    pub(crate) sessions: Arc<SessionRegistry>,
    pub(crate) metrics: EdgeMetrics,
    pub(crate) verdicts: Arc<VerdictWaiters>,
    pub(crate) member_sets: Arc<MemberSets>,
}

impl PushService {
    /// Checks every item, stores attached member sets and resolves the
    /// referenced ones: the member list of each item (`None` for a
    /// recipient list), or the sets this edge lacks.
    #[allow(clippy::type_complexity)]
    fn resolve_member_sets(
        &self,
        batch: &PushBatch,
    ) -> Result<Result<Vec<Option<Arc<[String]>>>, Vec<MemberSetRef>>, Status> {
        let mut resolved = Vec::with_capacity(batch.items.len());
        let mut unknown: Vec<MemberSetRef> = Vec::new();
        for item in &batch.items {
            if DeliverableOp::from_name(&item.op).is_none() {
                return Err(Status::invalid_argument(format!(
                    "unknown op {:?}",
                    item.op
                )));
            }
            if !is_frame_fields(&item.fields_json) {
                return Err(Status::invalid_argument(
                    "fields_json must be a JSON object without `op` or `seq`",
                ));
            }
            if item.member_set == 0 {
                resolved.push(None);
                continue;
            }
            let key = (item.conversation_id.clone(), item.member_set);
            let members = if item.member_set_members.is_empty() {
                self.member_sets.get(&key)
            } else {
                Some(
                    self.member_sets
                        .insert(key.clone(), item.member_set_members.clone()),
                )
            };
            match members {
                Some(members) => resolved.push(Some(members)),
                None => {
                    if !unknown
                        .iter()
                        .any(|known| known.conversation_id == key.0 && known.member_set == key.1)
                    {
                        unknown.push(MemberSetRef {
                            conversation_id: key.0,
                            member_set: key.1,
                        });
                    }
                    resolved.push(None);
                }
            }
        }
        if unknown.is_empty() {
            Ok(Ok(resolved))
        } else {
            Ok(Err(unknown))
        }
    }
}

#[tonic::async_trait]
impl EdgePush for PushService {
    async fn push(&self, request: Request<PushBatch>) -> Result<Response<PushReply>, Status> {
        let batch = request.into_inner();
        self.metrics.push_batches.inc();
        // Everything is checked before anything is delivered, so that a
        // refused batch can be resent whole without duplicates.
        let member_lists = match self.resolve_member_sets(&batch)? {
            Ok(member_lists) => member_lists,
            Err(unknown_member_sets) => {
                tracing::debug!(source = %batch.source, unknown = unknown_member_sets.len(), "push references member sets this edge does not hold");
                return Ok(Response::new(PushReply {
                    delivered_sessions: 0,
                    absent_recipients: 0,
                    unknown_member_sets,
                }));
            }
        };
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
        for (item, members) in batch.items.iter().zip(member_lists) {
            // Encoded once; every recipient session shares it and adds its seq.
            let body = Arc::new(SequencedFrame::new(&item.op, item.fields_json.trim()));
            // A read receipt also goes to the reader's own devices; the
            // session that sent it is left out.
            let read_marker = (item.op == "read")
                .then(|| serde_json::from_str::<ReadMarkerFrame>(&item.fields_json).ok())
                .flatten();
            match members {
                Some(members) => {
                    // Most members of a large group are on other edges: no
                    // absent count for them.
                    let except = item.except_user.as_str();
                    let (sessions, _) = self.sessions.deliver_to_all_but(
                        members
                            .iter()
                            .map(String::as_str)
                            .filter(|member| *member != except),
                        &body,
                        read_marker.as_ref(),
                    );
                    delivered += sessions as u32;
                }
                None => {
                    let (sessions, missing) = self.sessions.deliver_to_all_but(
                        item.recipients.iter().map(String::as_str),
                        &body,
                        read_marker.as_ref(),
                    );
                    delivered += sessions as u32;
                    absent += missing as u32;
                }
            }
        }
        self.metrics.push_deliveries.inc_by(u64::from(delivered));
        self.metrics
            .push_absent_recipients
            .inc_by(u64::from(absent));
        Ok(Response::new(PushReply {
            delivered_sessions: delivered,
            absent_recipients: absent,
            unknown_member_sets: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use chatpipe_core::UserId;
    use chatpipe_proto::push::PushItem;

    use super::*;

    fn service() -> PushService {
        PushService {
            sessions: Arc::new(SessionRegistry::new(64, 64)),
            metrics: EdgeMetrics::new(),
            member_sets: Arc::new(MemberSets::new(10)),
            verdicts: Arc::new(VerdictWaiters::default()),
        }
    }

    fn item(member_set: u64, members: &[&str], except: &str) -> PushItem {
        PushItem {
            op: "message".into(),
            fields_json: r#"{"message":{"body":"hi"}}"#.into(),
            conversation_id: "big".into(),
            message_id: "1".into(),
            member_set,
            member_set_members: members.iter().map(|name| (*name).to_owned()).collect(),
            except_user: except.into(),
            ..PushItem::default()
        }
    }

    fn batch(items: Vec<PushItem>) -> Request<PushBatch> {
        Request::new(PushBatch {
            source: "test".into(),
            items,
            resync: false,
            ..PushBatch::default()
        })
    }

    #[test]
    fn only_calls_with_the_push_key_pass() {
        let key = PushKey::derive(b"cluster-secret");
        let metrics = EdgeMetrics::new();
        let mut gate = RequirePushKey::new(key.clone(), metrics.clone());
        let credentials = |key: &PushKey| {
            chatpipe_proto::auth::PushCredentials::new(key)
                .call(Request::new(()))
                .unwrap()
        };
        assert!(gate.call(credentials(&key)).is_ok());
        let refused = gate.call(Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(
            gate.call(credentials(&PushKey::derive(b"another")))
                .is_err()
        );
        let mut raw = Request::new(());
        raw.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", "cluster-secret").parse().unwrap(),
        );
        assert!(gate.call(raw).is_err());
        assert!(!format!("{gate:?}").contains(&key.bearer()));
        let count = |reason| chatpipe_runtime::metrics::reason_count(&metrics.push_refused, reason);
        assert_eq!((count("missing"), count("wrong")), (1, 2));
    }

    #[tokio::test]
    async fn member_sets_are_kept_referenced_and_refused_when_unknown() {
        let push = service();
        let (ann, _, _) = push
            .sessions
            .open(&UserId::parse("ann").unwrap(), 1)
            .unwrap();
        let (bob, _, _) = push
            .sessions
            .open(&UserId::parse("bob").unwrap(), 2)
            .unwrap();

        // A reference to a set never sent: nothing delivered, set named.
        let reply = push
            .push(batch(vec![item(7, &[], "")]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.delivered_sessions, 0);
        assert_eq!(
            reply.unknown_member_sets,
            vec![MemberSetRef {
                conversation_id: "big".into(),
                member_set: 7
            }]
        );
        assert_eq!(ann.unwritten(), 0);

        // Sent with its list, then referenced: local members only, minus
        // the actor; one shared body per item.
        let reply = push
            .push(batch(vec![
                item(7, &["ann", "bob", "elsewhere"], ""),
                item(7, &[], "bob"),
            ]))
            .await
            .unwrap()
            .into_inner();
        assert!(reply.unknown_member_sets.is_empty());
        assert_eq!(reply.delivered_sessions, 3);
        assert_eq!(reply.absent_recipients, 0);
        let (ann_frames, bob_frames) = (ann.take_unwritten(), bob.take_unwritten());
        assert_eq!(ann_frames.len(), 2);
        assert_eq!(bob_frames.len(), 1);
        assert_eq!(
            ann_frames[0].text().as_str(),
            r#"{"op":"message","seq":1,"message":{"body":"hi"}}"#
        );

        // Evicted past the bound (10 members): asked for again.
        push.member_sets.insert(
            ("other".into(), 1),
            (0..9).map(|index| format!("u{index}")).collect(),
        );
        let reply = push
            .push(batch(vec![item(7, &[], "")]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.unknown_member_sets.len(), 1);
        assert_eq!(push.member_sets.len(), 1);
    }
}
