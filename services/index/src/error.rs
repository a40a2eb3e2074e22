//! Typed errors of the index role; each says whether a retry may help.

use chatpipe_kafka::KafkaAdapterError;
use chatpipe_kafka::consumer::HandlerError;
use chatpipe_search::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The configuration is unusable.
    #[error("invalid index configuration: {0}")]
    Config(String),
    /// A Kafka client could not be created or configured.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaAdapterError),
    /// The engine client could not be built.
    #[error("search engine: {0}")]
    Engine(#[from] EngineError),
    /// The consumer loop stopped on a non-retriable batch failure.
    #[error("consumer stopped: {0}")]
    Consumer(#[from] HandlerError),
    /// The worker task panicked or was aborted.
    #[error("index task ended abnormally: {0}")]
    Task(String),
}

impl IndexError {
    /// Whether starting the worker again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            IndexError::Config(_) | IndexError::Task(_) => false,
            IndexError::Kafka(error) => error.is_retriable(),
            IndexError::Engine(error) => error.is_retriable(),
            IndexError::Consumer(error) => error.retriable,
        }
    }
}
