//! The librdkafka client context every chatpipe client uses: librdkafka's
//! logs and client errors go to `tracing` (warnings for errors, debug for
//! the rest), and a consumer may publish its lag from librdkafka's
//! statistics.

use chatpipe_runtime::metrics::Gauge;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

/// What one client reports besides its logs.
#[derive(Default)]
pub(crate) struct ChatpipeContext {
    /// Set from the statistics callback: the sum over assigned partitions
    /// of (high watermark − committed offset).
    lag: Option<Gauge>,
}

impl ChatpipeContext {
    pub(crate) fn with_lag(lag: Gauge) -> Self {
        Self { lag: Some(lag) }
    }
}

impl ClientContext for ChatpipeContext {
    fn stats(&self, statistics: Statistics) {
        let Some(gauge) = &self.lag else { return };
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|partition| partition.partition >= 0 && partition.consumer_lag >= 0)
            .map(|partition| partition.consumer_lag)
            .sum();
        gauge.set(lag);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::warn!(facility, message, "librdkafka"),
            _ => tracing::debug!(facility, message, "librdkafka"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Partition-EOF notices are expected: tails ask for them to see
        // that they caught up.
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if end_of_partition {
            tracing::trace!(reason, "end of partition");
        } else {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for ChatpipeContext {}
