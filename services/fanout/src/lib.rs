//! # chatpipe-fanout
//!
//! The fan-out role: it turns the records of `chat.messages`,
//! `chat.events` and `chat.membership` into pushes to the edges that hold
//! the recipients' live sessions.
//!
//! ```text
//!  chat.sessions (compacted, read in full) ──▶ RouteTable: user → live edges
//!  chat.membership (tail)                  ──▶ MembershipCache eviction
//!  chat.messages + chat.events
//!    + chat.membership (group)             ──▶ FanoutHandler:
//!       decode ─▶ members (cache → MembershipStore) ─▶ route ─▶ one PushBatch per edge ─▶ gRPC
//! ```
//!
//! Layout:
//! - [`config`]: the [`FanoutConfig`].
//! - [`routes`]: the pure [`RouteTable`] built from the sessions topic.
//! - [`membership`]: the bounded, self-invalidating [`MembershipCache`].
//! - [`plan`]: pure grouping of a batch's items into one push per edge.
//! - [`presence`]: pure judging of presence across edges (a user is online
//!   while any edge holds a session of theirs).
//! - [`push`]: tonic channels per edge, cutting, retries, give-up and resync;
//!   every call presents the cluster's push key (`chatpipe_proto::auth`),
//!   without which edges refuse it.
//! - `tails`: the two assignment consumers that feed the table and the cache.
//! - `handler`: the consumer group's batch handler; it drops retries of
//!   earlier sends (`chatpipe_kafka::send_dedup`, the rule persist and
//!   index apply too).
//! - `verdicts`: verdicts on marked resends, pushed to their edge.
//! - [`worker`]: [`FanoutWorker::spawn`] / [`run`], the start-up order.
//! - [`metrics`]: [`FanoutMetrics`] (`chatpipe_fanout_…`).
//!
//! ## Delivery semantics
//!
//! - **Per-conversation order.** A conversation's records share a Kafka
//!   partition; a batch is handled in Kafka order, and each edge gets the
//!   batch's items as *one* RPC (items in Kafka order) awaited before the
//!   next batch starts. Edges deliver a push's items in order, so recipients
//!   see the partition's order.
//! - **At-least-once, towards edges.** Offsets are stored only after every
//!   edge of the batch answered its push or was given up. A push that fails
//!   or times out is retried, with a doubling deadline, for as long as the
//!   edge's lease is live: a slow edge delays its partitions instead of
//!   losing frames. A worker that dies re-delivers its unconfirmed batches
//!   through the next owner of its partitions; clients de-duplicate by
//!   `message_id`.
//! - **Given up, then resync.** Only an edge that refuses connections or
//!   whose lease ran out is given up (and skipped for `suspect_backoff_ms`);
//!   the next push that reaches it carries `resync`, and the edge makes
//!   every session start over from history (close `4010`, resume refused).
//!   Recipients offline recover on resume (the edge's buffer) or from
//!   history.
//! - **Routes** count only while their edge's lease holds (plus a small grace
//!   for clock skew). Workers never write the sessions topic; long-dead
//!   edges are forgotten from memory only.
//! - **Membership** is cached per conversation, evicted by the membership
//!   topic as soon as a change arrives (the API writes the store first), with
//!   a TTL as a safety net. The consumer group also delivers each
//!   membership record as a frame (`conversation_created`, `member_added`,
//!   `member_removed`, `member_role_changed`, `conversation_updated`) to the
//!   conversation's members and to the user the change names, in the
//!   conversation's order of changes (one partition of `chat.membership`).
//!   It travels apart from the messages (another topic), so its order
//!   against them is not guaranteed: see the README's "Membership events".
//! - **Presence** reports are per edge; a user's `offline` reaches members
//!   only when no live edge holds the user any more (see [`presence`]).
//!
//! ## Head-of-line blocking
//!
//! One consumer loop handles every partition the worker owns, so a slow batch
//! delays the next. What bounds it: a batch is at most `max_batch_records`;
//! its membership reads run concurrently and are cached; a large group costs
//! one RPC per edge, not one per member (cut at `max_push_recipients`, so
//! the edge answers each call quickly; it only enqueues to local sessions,
//! it does not wait for sockets). A wedged edge holds its partitions for at
//! most its lease (10 s by default) before it is given up; a dead one
//! (connection refused) is given up at once. Throughput beyond one loop
//! comes from more partitions and more workers in the group.

pub mod config;
pub mod error;
mod handler;
pub mod membership;
pub mod metrics;
pub mod plan;
pub mod presence;
pub mod push;
pub mod routes;
mod tails;
mod verdicts;
pub mod worker;

pub use config::FanoutConfig;
pub use error::FanoutError;
pub use membership::MembershipCache;
pub use metrics::{FanoutMetrics, PushOutcome};
pub use routes::{LiveEdge, RouteTable, SharedRouteTable};
pub use worker::{FanoutWorker, run};
