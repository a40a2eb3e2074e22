//! Where Cassandra is and how chatpipe uses it.

use serde::Deserialize;

/// Connection and behaviour settings of the Cassandra adapter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CassandraConfig {
    /// Contact points, `host:port` each; the driver discovers the rest of
    /// the cluster from them.
    pub contact_points: Vec<String>,
    /// Keyspace holding chatpipe's tables (letters, digits, `_`; at most 48).
    pub keyspace: String,
    /// Create the keyspace and tables if missing when connecting
    /// (idempotent; see [`crate::schema::apply_schema`]).
    pub apply_schema_on_connect: bool,
    /// Client-side deadline of one request, retries included.
    pub request_timeout_ms: u64,
    /// Deadline for opening a connection to a node.
    pub connect_timeout_ms: u64,
    /// Most partitions one history write request may cover (an unlogged
    /// batch of small partitions sharing a replica; see
    /// `CassandraStore::write_messages`). Keep it at or under the cluster's
    /// `unlogged_batch_across_partitions_warn_threshold` (10 by default);
    /// 1 writes every partition with its own request.
    pub max_partitions_per_batch: usize,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "chatpipe".to_owned(),
            apply_schema_on_connect: true,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            max_partitions_per_batch: crate::messages::MAX_PARTITIONS_PER_BATCH,
        }
    }
}
