//! # chatpipe-index
//!
//! The index role: a Kafka consumer group (default `chatpipe-index`) on
//! `chat.messages` that writes every message into the full-text engine
//! through `chatpipe-search`'s [`chatpipe_search::EsBulkSink`].
//!
//! ```text
//!  chat.messages ─▶ run_batches (≤ max_batch_records, ≤ batch_linger_ms)
//!                     └─▶ IndexHandler: decode ─▶ _bulk (requests ≤ max_bulk_bytes) ─▶ dead-letter the rest
//!                                                   │
//!                                                   └─ retriable failure ─▶ backoff, same batch again
//! ```
//!
//! Layout: [`config`] ([`IndexConfig`]), `handler` (the batch handler, with
//! the pure decoding step), [`worker`] ([`IndexWorker::spawn`] / [`run`]),
//! [`metrics`] ([`IndexMetrics`], `chatpipe_index_…`), [`error`].
//!
//! ## Delivery semantics
//!
//! - **At-least-once in, exactly-once effect out.** The handler returns
//!   `Ok` for a batch only when the engine confirmed every document of it,
//!   or the record was published to the dead-letter topic (and Kafka
//!   confirmed that). Only then does `run_batches` store the batch's
//!   offsets. A crash re-delivers the unconfirmed tail; documents are keyed
//!   by message id, so re-indexing overwrites instead of duplicating.
//! - **Poison records never wedge a partition.** An undecodable record, or a
//!   document the engine refuses for good (a 4xx mapping/parsing error), is
//!   dead-lettered with its coordinates and counted, and the batch goes on.
//! - **The engine down is not a poison.** Connection errors, 429 and 5xx
//!   answers (whole request or per item) are retried — items first inside
//!   the sink, then the whole batch by `run_batches` with exponential
//!   backoff — while the consumer stays in its group (heartbeats run on
//!   librdkafka's thread; `max.poll.interval.ms` allows an hour). The lag
//!   grows, and the role catches up when the engine is back.
//! - **Batches adapt to load.** A batch holds up to `max_batch_records`
//!   records, or what arrived within `batch_linger_ms` of its first one:
//!   under load `_bulk` requests are full, at low rates a few documents
//!   still share one. Offsets of indexed batches are committed every
//!   `commit_interval_ms`, never per batch.
//! - **Rollover** of the write alias is checked periodically (engine-neutral,
//!   see `chatpipe_search::template`).

pub mod config;
pub mod error;
mod handler;
pub mod metrics;
pub mod worker;

pub use config::IndexConfig;
pub use error::IndexError;
pub use metrics::IndexMetrics;
pub use worker::{IndexWorker, run};
