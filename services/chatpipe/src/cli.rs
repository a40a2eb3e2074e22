//! Command-line and environment configuration. Every flag has a
//! `CHATPIPE_*` environment variable; defaults are the contract's addresses.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chatpipe",
    version,
    about = "A real-time chat backend built around Kafka"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the engines are, and what every role shares.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "CHATPIPE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub kafka_brokers: String,
    /// Cassandra contact points, comma-separated `host:port`.
    #[arg(
        long,
        env = "CHATPIPE_CASSANDRA",
        default_value = "127.0.0.1:9042",
        value_delimiter = ',',
        global = true
    )]
    pub cassandra: Vec<String>,
    /// Cassandra keyspace.
    #[arg(
        long,
        env = "CHATPIPE_CASSANDRA_KEYSPACE",
        default_value = "chatpipe",
        global = true
    )]
    pub cassandra_keyspace: String,
    /// Elasticsearch-API engine URL (Elasticsearch 8 or OpenSearch 2).
    #[arg(
        long,
        env = "CHATPIPE_ELASTICSEARCH_URL",
        default_value = "http://127.0.0.1:9200",
        global = true
    )]
    pub elasticsearch_url: String,
    /// Prefix of the search indices and aliases.
    #[arg(
        long,
        env = "CHATPIPE_INDEX_PREFIX",
        default_value = "chat-messages",
        global = true
    )]
    pub index_prefix: String,
    /// Prefix prepended to every Kafka topic name (isolated deployments).
    #[arg(long, env = "CHATPIPE_TOPIC_PREFIX", default_value = "", global = true)]
    pub topic_prefix: String,
    /// HS256 secret of bearer tokens. Defaults to a development secret
    /// (a warning is logged); set it in production. Never logged.
    #[arg(
        long,
        env = "CHATPIPE_TOKEN_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub token_secret: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a bearer token for a user.
    Token(TokenArgs),
    /// Apply the topology: Kafka topics, Cassandra schema, index template.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Run a WebSocket edge.
    Edge(EdgeArgs),
    /// Run a fan-out worker.
    Fanout(WorkerArgs),
    /// Run a Cassandra history writer.
    Persist(WorkerArgs),
    /// Run a search indexer.
    Index(WorkerArgs),
    /// Run the HTTP API.
    Api(ApiArgs),
    /// Run every role in one process: topology apply, edges, fan-out,
    /// persist, index and the API (the Quickstart).
    All(AllArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (the token's `sub`).
    #[arg(long)]
    pub user: String,
    /// Lifetime of the token, in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub ttl_secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum TopologyAction {
    /// Create or update topics, keyspace and tables, and the index template
    /// (idempotent).
    Apply(TopologyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TopologyArgs {
    /// Partitions of `chat.messages` (can only grow).
    #[arg(long, env = "CHATPIPE_MESSAGES_PARTITIONS")]
    pub messages_partitions: Option<i32>,
    /// Retention of `chat.messages`, in milliseconds.
    #[arg(long, env = "CHATPIPE_MESSAGES_RETENTION_MS")]
    pub messages_retention_ms: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// This edge's id; unique per edge process.
    #[arg(long, env = "CHATPIPE_EDGE_ID", default_value = "edge-1")]
    pub edge_id: String,
    /// Snowflake worker id of message ids; unique per edge (0–1023).
    #[arg(long, env = "CHATPIPE_EDGE_WORKER_ID", default_value_t = 1)]
    pub worker_id: u16,
    /// WebSocket and ops listener.
    #[arg(long, env = "CHATPIPE_EDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// gRPC push listener (called by fan-out workers).
    #[arg(
        long,
        env = "CHATPIPE_EDGE_PUSH_LISTEN",
        default_value = "127.0.0.1:8180"
    )]
    pub push_listen: SocketAddr,
    /// Push address announced to fan-out (defaults to the listen address).
    #[arg(long, env = "CHATPIPE_EDGE_ADVERTISED_PUSH_ADDR")]
    pub advertised_push_addr: Option<String>,
    /// Server ping interval, also the `heartbeat_ms` of `hello`.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_HEARTBEAT_INTERVAL_MS",
        default_value_t = 15_000
    )]
    pub heartbeat_interval_ms: u64,
    /// A client silent this long is dropped.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_HEARTBEAT_TIMEOUT_MS",
        default_value_t = 45_000
    )]
    pub heartbeat_timeout_ms: u64,
    /// How long a disconnected session stays resumable.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_RESUME_WINDOW_MS",
        default_value_t = 120_000
    )]
    pub resume_window_ms: u64,
    /// Most concurrent connections.
    #[arg(long, env = "CHATPIPE_EDGE_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// New connections per second, whole edge.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_CONNECTS_PER_SECOND",
        default_value_t = 2_000
    )]
    pub connects_per_second: u32,
    /// New connections per second per client IP.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_CONNECTS_PER_SECOND_PER_IP",
        default_value_t = 2_000
    )]
    pub connects_per_second_per_ip: u32,
    /// Client frames per second per connection.
    #[arg(long, env = "CHATPIPE_EDGE_FRAMES_PER_SECOND", default_value_t = 50)]
    pub frames_per_second: u32,
    /// WebSocket read buffer per connection, bytes.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_WS_READ_BUFFER_BYTES",
        default_value_t = 1024
    )]
    pub ws_read_buffer_bytes: usize,
    /// Kafka producer linger, in ms: how long a produce request waits for
    /// more records (batching under load, at most this much on an ack).
    #[arg(long, env = "CHATPIPE_EDGE_PRODUCER_LINGER_MS", default_value_t = 5)]
    pub producer_linger_ms: u32,
    /// Drain deadline on SIGTERM.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_DRAIN_DEADLINE_MS",
        default_value_t = 10_000
    )]
    pub drain_deadline_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Ops listener (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "CHATPIPE_WORKER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Consumer group id (defaults to `chatpipe-<role>`).
    #[arg(long, env = "CHATPIPE_WORKER_GROUP")]
    pub group: Option<String>,
    #[command(flatten)]
    pub batching: BatchingArgs,
}

/// How the persist and index roles batch their writes and commit offsets
/// (unset: the role's default).
#[derive(Debug, Clone, Default, Args)]
pub struct BatchingArgs {
    /// Persist and index: longest wait for a batch to fill once its first
    /// record arrived, in ms (default 50). Under load batches are cut by
    /// size first.
    #[arg(long, env = "CHATPIPE_BATCH_LINGER_MS")]
    pub batch_linger_ms: Option<u64>,
    /// Persist and index: how often the offsets of written batches are
    /// committed, in ms (default 1000).
    #[arg(long, env = "CHATPIPE_COMMIT_INTERVAL_MS")]
    pub commit_interval_ms: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// HTTP listener of the API and its ops endpoints.
    #[arg(
        long = "api-listen",
        env = "CHATPIPE_API_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    pub api_listen: SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// Number of edges; edge N listens on 8080+2(N-1) and pushes on 8180+N-1.
    #[arg(long, env = "CHATPIPE_EDGES", default_value_t = 1)]
    pub edges: u16,
    /// Skip `topology apply` at start.
    #[arg(long)]
    pub skip_topology: bool,
    #[command(flatten)]
    pub topology: TopologyArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Settings of the first edge (the others take the next ports).
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub batching: BatchingArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn all_takes_edge_and_api_flags_together() {
        let cli = Cli::try_parse_from([
            "chatpipe",
            "all",
            "--edges",
            "2",
            "--listen",
            "127.0.0.1:18080",
            "--api-listen",
            "127.0.0.1:18090",
        ])
        .unwrap();
        let Command::All(args) = cli.command else {
            panic!("parsed another command")
        };
        assert_eq!(
            (
                args.edges,
                args.edge.listen.port(),
                args.api.api_listen.port()
            ),
            (2, 18080, 18090)
        );
        assert_eq!(args.batching.batch_linger_ms, None);
    }

    #[test]
    fn batching_flags_reach_the_worker_roles_and_all() {
        for command in ["persist", "index", "all"] {
            let cli = Cli::try_parse_from([
                "chatpipe",
                command,
                "--batch-linger-ms",
                "80",
                "--commit-interval-ms",
                "2500",
            ])
            .unwrap();
            let batching = match cli.command {
                Command::Persist(args) | Command::Index(args) => args.batching,
                Command::All(args) => args.batching,
                _ => panic!("parsed another command"),
            };
            assert_eq!(
                (batching.batch_linger_ms, batching.commit_interval_ms),
                (Some(80), Some(2500))
            );
        }
    }
}
