//! Typed errors of the Kafka adapter; each says whether a retry may help.
//! librdkafka's own error stays inside [`ClientError`]: callers see its
//! message and chain, never the rdkafka type.

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum KafkaAdapterError {
    /// Kafka did not confirm the record within the caller's deadline.
    #[error("kafka did not confirm within {0:?}")]
    Timeout(std::time::Duration),
    /// The client or broker refused or failed the operation.
    #[error("kafka: {0}")]
    Client(#[from] ClientError),
    /// A topic has no partitions this client can see (it does not exist
    /// yet, or the broker has not said so yet).
    #[error("topic {topic} has no partitions (does it exist?)")]
    NoPartitions { topic: String },
    /// A record or configuration could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// A client's own thread could not be started.
    #[error("starting a kafka client thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A topology file or request is wrong.
    #[error("topology: {0}")]
    Topology(String),
}

impl KafkaAdapterError {
    /// Whether trying the same operation again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaAdapterError::Timeout(_)
            | KafkaAdapterError::Client(_)
            | KafkaAdapterError::NoPartitions { .. }
            | KafkaAdapterError::Thread(_) => true,
            KafkaAdapterError::Serialization(_) | KafkaAdapterError::Topology(_) => false,
        }
    }
}

impl From<KafkaError> for KafkaAdapterError {
    fn from(error: KafkaError) -> Self {
        KafkaAdapterError::Client(ClientError(error))
    }
}

/// A failure reported by librdkafka (opaque: its text and source chain are
/// what callers get).
#[derive(Debug)]
pub struct ClientError(KafkaError);

impl std::fmt::Display for ClientError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
