//! Typed errors of the Cassandra adapter, each classified as retriable or
//! not, and their mapping onto the store seam's [`StoreError`].

use scylla::errors::{
    ConnectionPoolError, DbError, ExecutionError, IntoRowsResultError, NewSessionError,
    NextRowError, PagerExecutionError, PrepareError, RequestAttemptError, RowsError,
    UseKeyspaceError,
};

use chatpipe_core::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CassandraError {
    /// No session could be opened (no contact point answered).
    #[error("cannot connect to cassandra: {0}")]
    Connect(Box<NewSessionError>),
    /// A statement could not be prepared.
    #[error("cannot prepare a statement: {0}")]
    Prepare(Box<PrepareError>),
    /// A request failed; `retriable` says whether the same request may
    /// succeed later (timeouts, unavailable replicas, a node that is down).
    #[error("cassandra request failed: {source}")]
    Execution {
        retriable: bool,
        #[source]
        source: Box<ExecutionError>,
    },
    /// A paged read failed.
    #[error("cassandra paged read failed: {0}")]
    Paging(Box<PagerExecutionError>),
    /// A page of a paged read failed.
    #[error("cassandra paged read failed: {0}")]
    NextRow(Box<NextRowError>),
    /// The keyspace does not exist or cannot be used.
    #[error("cannot use keyspace: {0}")]
    UseKeyspace(Box<UseKeyspaceError>),
    /// A result did not have the shape the code expects (schema drift).
    #[error("unexpected result from cassandra: {0}")]
    Decode(String),
    /// A stored value failed validation (an id written by something else).
    #[error("invalid data in cassandra: {0}")]
    InvalidData(String),
    /// Bad configuration (for example an invalid keyspace name).
    #[error("invalid cassandra configuration: {0}")]
    Config(String),
}

impl CassandraError {
    /// Whether trying the same operation again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            CassandraError::Connect(_) => true,
            CassandraError::Prepare(error) => prepare_is_retriable(error),
            CassandraError::Execution { retriable, .. } => *retriable,
            CassandraError::Paging(error) => match error.as_ref() {
                PagerExecutionError::PrepareError(error) => prepare_is_retriable(error),
                PagerExecutionError::NextPageError(_) => true,
                PagerExecutionError::SerializationError(_) => false,
                _ => true,
            },
            CassandraError::NextRow(error) => {
                matches!(error.as_ref(), NextRowError::NextPageError(_))
            }
            CassandraError::UseKeyspace(error) => matches!(
                error.as_ref(),
                UseKeyspaceError::RequestTimeout(_) | UseKeyspaceError::RequestError(_)
            ),
            CassandraError::Decode(_)
            | CassandraError::InvalidData(_)
            | CassandraError::Config(_) => false,
        }
    }
}

impl From<ExecutionError> for CassandraError {
    fn from(source: ExecutionError) -> Self {
        CassandraError::Execution {
            retriable: execution_is_retriable(&source),
            source: Box::new(source),
        }
    }
}

macro_rules! boxed_from {
    ($($variant:ident($error:ty)),* $(,)?) => {
        $(impl From<$error> for CassandraError {
            fn from(error: $error) -> Self {
                CassandraError::$variant(Box::new(error))
            }
        })*
    };
}

boxed_from!(
    Connect(NewSessionError),
    Prepare(PrepareError),
    Paging(PagerExecutionError),
    NextRow(NextRowError),
    UseKeyspace(UseKeyspaceError),
);

impl From<IntoRowsResultError> for CassandraError {
    fn from(error: IntoRowsResultError) -> Self {
        CassandraError::Decode(error.to_string())
    }
}

impl From<RowsError> for CassandraError {
    fn from(error: RowsError) -> Self {
        CassandraError::Decode(error.to_string())
    }
}

impl From<scylla::deserialize::DeserializationError> for CassandraError {
    fn from(error: scylla::deserialize::DeserializationError) -> Self {
        CassandraError::Decode(error.to_string())
    }
}

impl From<CassandraError> for StoreError {
    fn from(error: CassandraError) -> Self {
        if error.is_retriable() {
            StoreError::unavailable(error.to_string())
        } else {
            StoreError::internal(error.to_string())
        }
    }
}

fn execution_is_retriable(error: &ExecutionError) -> bool {
    match error {
        ExecutionError::BadQuery(_) => false,
        ExecutionError::EmptyPlan => true,
        ExecutionError::PrepareError(error) => prepare_is_retriable(error),
        ExecutionError::ConnectionPoolError(error) => pool_is_retriable(error),
        ExecutionError::LastAttemptError(error) => attempt_is_retriable(error),
        ExecutionError::RequestTimeout(_) => true,
        ExecutionError::UseKeyspaceError(_) => true,
        ExecutionError::SchemaAgreementError(_) => true,
        ExecutionError::MetadataError(_) => true,
        _ => true,
    }
}

fn prepare_is_retriable(error: &PrepareError) -> bool {
    match error {
        PrepareError::ConnectionPoolError(error) => pool_is_retriable(error),
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_is_retriable(first_attempt),
        PrepareError::PreparedStatementIdsMismatch => false,
        _ => true,
    }
}

fn pool_is_retriable(error: &ConnectionPoolError) -> bool {
    !matches!(error, ConnectionPoolError::NodeDisabledByHostFilter)
}

fn attempt_is_retriable(error: &RequestAttemptError) -> bool {
    match error {
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_)
        | RequestAttemptError::NonfinishedPagingState => false,
        RequestAttemptError::DbError(db_error, _) => db_error_is_retriable(db_error),
        _ => true,
    }
}

/// Server-side errors: capacity and availability problems are transient,
/// errors about the request itself are not.
fn db_error_is_retriable(error: &DbError) -> bool {
    match error {
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::TruncateError
        | DbError::ServerError
        | DbError::Unprepared { .. }
        | DbError::RateLimitReached { .. } => true,
        DbError::SyntaxError
        | DbError::Invalid
        | DbError::AlreadyExists { .. }
        | DbError::FunctionFailure { .. }
        | DbError::AuthenticationError
        | DbError::Unauthorized
        | DbError::ConfigError
        | DbError::ProtocolError => false,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_errors_are_retriable_and_request_errors_are_not() {
        let timeout = CassandraError::from(ExecutionError::RequestTimeout(
            std::time::Duration::from_secs(1),
        ));
        assert!(timeout.is_retriable());
        let overloaded = CassandraError::from(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(DbError::Overloaded, "busy".into()),
        ));
        assert!(overloaded.is_retriable());
        let syntax = CassandraError::from(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(DbError::SyntaxError, "bad".into()),
        ));
        assert!(!syntax.is_retriable());
        assert!(StoreError::from(timeout).retriable);
        assert!(!StoreError::from(syntax).retriable);
        assert!(!CassandraError::Decode("x".into()).is_retriable());
    }
}
