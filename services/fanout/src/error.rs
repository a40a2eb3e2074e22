//! Typed errors of the fan-out role; each says whether a retry may help.

use chatpipe_kafka::KafkaAdapterError;
use chatpipe_kafka::consumer::HandlerError;

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The configuration is unusable.
    #[error("invalid fan-out configuration: {0}")]
    Config(String),
    /// A Kafka client could not be created or configured.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaAdapterError),
    /// The consumer loop stopped on a non-retriable batch failure.
    #[error("consumer stopped: {0}")]
    Consumer(#[from] HandlerError),
    /// The worker task panicked or was aborted.
    #[error("fan-out task ended abnormally: {0}")]
    Task(String),
}

impl FanoutError {
    /// Whether starting the worker again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            FanoutError::Config(_) => false,
            FanoutError::Kafka(error) => error.is_retriable(),
            FanoutError::Consumer(error) => error.retriable,
            FanoutError::Task(_) => false,
        }
    }
}
