//! # chatpipe-edge
//!
//! The gateway tier. An edge holds clients' WebSocket connections and:
//!
//! - verifies each client's token on connect, rate-limits connections (per
//!   IP and globally, to shed reconnect storms) and frames (per connection),
//!   caps connections per client address and refuses addresses that fail
//!   authentication too often ([`admission`]); closes a connection when its
//!   token expires unless the client sent a fresh one (`refresh`, [`ws`]);
//! - accepts pushes only from callers holding the cluster's push key;
//! - turns `send` frames into `chat.messages` records (keyed by
//!   conversation) and answers `ack` only after Kafka confirmed them with
//!   `acks=all` — *acked means durable*, and nothing else is paid per
//!   send; retries, keyed by `(conversation_id, sender_id, client_msg_id)`,
//!   are coalesced on the edge and dropped by every consumer from partition
//!   order; a retry marked `resend` is acked with the original id through
//!   the verdict fan-out pushes back ([`send`], [`push`]);
//! - turns `edit`, `delete`, `react` and `unreact` frames into change
//!   records on the message's partition of `chat.messages`, after checking
//!   the rules against stored history (only these read it, never a plain
//!   send) ([`send`]);
//! - publishes which users it holds to the compacted session-route topic, so
//!   fan-out workers know where to push ([`routes`]); claims a unique edge
//!   id and message-id worker id against the live edge leases there at
//!   start ([`identity`]);
//! - receives batched pushes from fan-out over gRPC and queues each frame to
//!   the sessions of its recipients ([`push`]);
//! - keeps a per-session outbound stream with `seq` numbers, bounded and
//!   replayable on resume ([`stream`], [`sessions`]);
//! - drains on shutdown: `reconnect` to every client, in-flight sends
//!   finished, routes removed ([`server`]).
//!
//! Delivery to clients is at-least-once per session across resumes; clients
//! de-duplicate by `message_id`.

pub mod admission;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod push;
pub mod routes;
pub mod send;
pub mod server;
pub mod sessions;
pub mod stream;
pub mod ws;

pub use config::EdgeConfig;
pub use metrics::EdgeMetrics;
pub use server::{EdgeError, EdgeHandle, spawn_edge};
