//! Connection settings shared by every Kafka client of a service, and the
//! client settings chatpipe's consumers share.

use std::time::Duration;

/// How long a consumer's fetch waits at the broker for data to arrive
/// (`fetch.wait.max.ms`). The broker answers as soon as a record arrives,
/// so a long wait costs no latency; it bounds how often an *idle* consumer
/// asks: twice a second instead of the hundred times of a 10 ms wait
/// (issue 10: "no idle burn").
pub const LONG_POLL: Duration = Duration::from_millis(500);

/// [`LONG_POLL`] of a tail (a consumer that assigns every partition of its
/// topic once and never rebalances). A group consumer keeps the shorter
/// wait because partitions it gains in a rebalance join its fetches only
/// when the fetch in flight returns; a tail never gains any, so its wait
/// is only the idle cadence: one fetch every 5 s per tail.
pub const TAIL_LONG_POLL: Duration = Duration::from_secs(5);

/// Where Kafka is and how this process names itself to it.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// `client.id` prefix, shown in broker logs and metrics.
    pub client_id: String,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: client_id.into(),
        }
    }

    pub(crate) fn base(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // Loopback brokers and CI machines: fail fast on a wrong address
            // instead of the default multi-minute waits.
            .set("socket.connection.setup.timeout.ms", "10000")
            .set("reconnect.backoff.max.ms", "2000")
            .set("log_level", "4");
        config
    }
}
