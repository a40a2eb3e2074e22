//! Connection settings shared by every Kafka client of a service.

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
