//! # chatpipe-kafka
//!
//! The one place chatpipe talks to Kafka (through `rdkafka`, whose types
//! never leave this crate): every producer and consumer of every role is
//! built here.
//!
//! - [`producer`]: [`ChatProducer`], an idempotent producer with
//!   `acks=all`. A send resolves only once Kafka accepted the record, which
//!   is what "acked means durable" rests on.
//! - [`consumer`]: [`run_batches`], the at-least-once consumer loop every
//!   consumer group uses: poll a bounded batch (size or linger, whichever
//!   comes first), hand it to a [`BatchHandler`], retry retriable failures
//!   with backoff, and only then *store* the batch's offsets; commits, on a
//!   cadence, cover stored offsets only. A restart therefore re-delivers at
//!   most the unconfirmed tail; handlers are idempotent by message id.
//! - [`tail`]: [`TailConsumer`], which reads every partition of a topic
//!   outside any group from an explicit [`StartAt`] (beginning, end,
//!   a time, offsets), resolved before it returns, so nothing produced
//!   after it was positioned is missed.
//! - [`record`]: [`Record`], what consumers hand out (topic, partition,
//!   offset, key, payload, timestamp).
//! - [`partitioned`]: [`run_partitioned`], the same loop with one task per
//!   assigned partition (its own batch, retries and offset storing), so that
//!   one slow partition does not hold up the others.
//! - [`dead_letter`]: records that cannot be decoded are published to
//!   `chat.deadletter` with their coordinates, counted, and skipped.
//! - [`send_dedup`]: [`PartitionedSendDedup`], the send de-duplication
//!   every consumer of `chat.messages` applies to partition order, rebuilt
//!   after a start or a rebalance by [`replay`].
//! - [`topology`]: the topics as data (`topology/kafka/topics.json`) and an
//!   idempotent apply; [`admin`]: single-topic and group calls for tools
//!   and tests.
//!
//! Idle cost: every consumer long-polls ([`config::LONG_POLL`]): an idle
//! consumer sends two fetches a second, and a record is still handed over
//! as soon as the broker has it.

pub mod admin;
pub mod config;
pub mod consumer;
mod context;
pub mod dead_letter;
pub mod error;
pub mod partitioned;
pub mod producer;
pub mod record;
pub mod replay;
pub mod send_dedup;
pub mod tail;
pub mod topology;

pub use config::KafkaConfig;
pub use consumer::{
    BatchHandler, ConsumerMetrics, ConsumerSettings, GroupConsumer, HandlerError, group_consumer,
    run_batches,
};
pub use dead_letter::DeadLetterSink;
pub use error::KafkaAdapterError;
pub use partitioned::{PartitionKey, partitioned_consumer, run_partitioned};
pub use producer::{ChatProducer, Delivery, Enqueue};
pub use record::Record;
pub use send_dedup::{PartitionedSendDedup, SendDedupMetrics, SendDedupSettings};
pub use tail::{PartitionStart, StartAt, TailConsumer, TailEvent, TailOptions};
