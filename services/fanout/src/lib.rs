//! # chatpipe-fanout
//!
//! The fan-out role: it turns the records of `chat.messages` and
//! `chat.events` into pushes to the edges that hold the recipients' live
//! sessions.
//!
//! ```text
//!  chat.sessions (compacted, read in full) ──▶ RouteTable: user → live edges
//!  chat.membership (tail)                  ──▶ MembershipCache eviction
//!  chat.messages + chat.events (group)     ──▶ FanoutHandler:
//!       decode ─▶ members (cache → MembershipStore) ─▶ route ─▶ one PushBatch per edge ─▶ gRPC
//! ```
//!
//! Layout:
//! - [`config`]: the [`FanoutConfig`].
//! - [`routes`]: the pure [`RouteTable`] built from the sessions topic.
//! - [`membership`]: the bounded, self-invalidating [`MembershipCache`].
//! - [`plan`]: pure grouping of a batch's items into one push per edge.
//! - [`push`]: tonic channels per edge, push deadline, suspect backoff.
//! - `tails`: the two assignment consumers that feed the table and the cache.
//! - `handler`: the consumer group's batch handler.
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
//!   push of the batch has been attempted. A worker that dies re-delivers its
//!   unconfirmed batches through the next owner of its partitions; clients
//!   de-duplicate by `message_id`.
//! - **At-most-once per push attempt.** A push that fails or times out is not
//!   retried: the edge is marked *suspect* and skipped for a short backoff,
//!   so that a dead edge never stalls the partitions. Recipients offline or on
//!   a failed edge recover on resume (the edge's buffer) or from history.
//! - **Routes** count only while their edge's lease holds (plus a small grace
//!   for clock skew). Workers never write the sessions topic; long-dead
//!   edges are forgotten from memory only.
//! - **Membership** is cached per conversation, evicted by the membership
//!   topic as soon as a change arrives (the API writes the store first), with
//!   a TTL as a safety net.
//!
//! ## Head-of-line blocking
//!
//! One consumer loop handles every partition the worker owns, so a slow batch
//! delays the next. What bounds it: a batch is at most `max_batch_records`;
//! its membership reads run concurrently and are cached; a large group costs
//! one RPC per edge, not one per member (the edge only enqueues to local
//! sessions, it does not wait for sockets); every push has a deadline and a
//! failing edge is skipped for `suspect_backoff_ms`, so a dead edge costs one
//! timeout per backoff period. Throughput beyond one loop comes from more
//! partitions and more workers in the group.

pub mod config;
pub mod error;
mod handler;
pub mod membership;
pub mod metrics;
pub mod plan;
pub mod push;
pub mod routes;
mod tails;
pub mod worker;

pub use config::FanoutConfig;
pub use error::FanoutError;
pub use membership::MembershipCache;
pub use metrics::{FanoutMetrics, PushOutcome};
pub use routes::{LiveEdge, RouteTable, SharedRouteTable};
pub use worker::{FanoutWorker, run};
