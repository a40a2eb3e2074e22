//! Typed errors of the Kafka adapter; each says whether a retry may help.

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum KafkaAdapterError {
    /// Kafka did not confirm the record within the caller's deadline.
    #[error("kafka did not confirm within {0:?}")]
    Timeout(std::time::Duration),
    /// The client or broker refused or failed the operation.
    #[error("kafka: {0}")]
    Client(#[from] KafkaError),
    /// A record or configuration could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A topology file or request is wrong.
    #[error("topology: {0}")]
    Topology(String),
}

impl KafkaAdapterError {
    /// Whether trying the same operation again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaAdapterError::Timeout(_) => true,
            KafkaAdapterError::Client(_) => true,
            KafkaAdapterError::Serialization(_) | KafkaAdapterError::Topology(_) => false,
        }
    }
}
