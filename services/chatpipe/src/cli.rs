//! Command-line and environment configuration. Every flag has a
//! `CHATPIPE_*` environment variable; default addresses come from
//! [`chatpipe::roles::defaults`] (defined once, shared with the tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;

use chatpipe::roles::defaults;
use chatpipe_core::auth::DEFAULT_MAX_TOKEN_LIFETIME_SECS;
use chatpipe_edge::EdgeConfig;
use chatpipe_search::SearchEngineConfig;
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};

/// The edge's defaults are its config's (`EdgeConfig::default`), written once.
static EDGE_DEFAULTS: LazyLock<EdgeConfig> = LazyLock::new(EdgeConfig::default);

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
        default_value = defaults::KAFKA_BROKERS,
        global = true
    )]
    pub kafka_brokers: String,
    /// Cassandra contact points, comma-separated `host:port`.
    #[arg(
        long,
        env = "CHATPIPE_CASSANDRA",
        default_value = defaults::CASSANDRA,
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
    /// Most partitions one history write request covers (small partitions
    /// sharing a replica are packed into one unlogged batch). At most the
    /// cluster's `unlogged_batch_across_partitions_warn_threshold`; 1
    /// writes each partition with its own request.
    #[arg(
        long,
        env = "CHATPIPE_CASSANDRA_MAX_PARTITIONS_PER_BATCH",
        default_value_t = chatpipe_cassandra::messages::MAX_PARTITIONS_PER_BATCH,
        value_parser = clap::value_parser!(u16).range(1..=100).map(usize::from),
        global = true
    )]
    pub cassandra_max_partitions_per_batch: usize,
    /// Replication of the Cassandra keyspace when `topology apply` (or a
    /// role's connect) creates it: `SimpleStrategy:RF` or
    /// `NetworkTopologyStrategy:DC=RF[,DC=RF…]` (e.g.
    /// `NetworkTopologyStrategy:datacenter1=3`). An existing keyspace with
    /// another replication is kept, with a warning, unless
    /// --cassandra-alter-replication.
    #[arg(
        long,
        env = "CHATPIPE_CASSANDRA_REPLICATION",
        default_value = "SimpleStrategy:1",
        global = true
    )]
    pub cassandra_replication: chatpipe_cassandra::Replication,
    /// Change the replication of an existing keyspace that differs from
    /// --cassandra-replication (`ALTER KEYSPACE`); then run `nodetool
    /// repair` on every node so earlier rows reach their new replicas.
    #[arg(long, env = "CHATPIPE_CASSANDRA_ALTER_REPLICATION", global = true)]
    pub cassandra_alter_replication: bool,
    /// Consistency level of every Cassandra read and write: ONE, TWO,
    /// THREE, QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM or LOCAL_ONE.
    /// LOCAL_QUORUM survives one replica down at replication factor 3.
    #[arg(
        long,
        env = "CHATPIPE_CASSANDRA_CONSISTENCY",
        default_value = "LOCAL_QUORUM",
        global = true
    )]
    pub cassandra_consistency: chatpipe_cassandra::ConsistencyLevel,
    /// Serial consistency of Cassandra's lightweight transactions:
    /// SERIAL or LOCAL_SERIAL.
    #[arg(
        long,
        env = "CHATPIPE_CASSANDRA_SERIAL_CONSISTENCY",
        default_value = "LOCAL_SERIAL",
        global = true
    )]
    pub cassandra_serial_consistency: chatpipe_cassandra::SerialConsistencyLevel,
    /// Elasticsearch-API engine URL (Elasticsearch 8 or OpenSearch 2).
    #[arg(
        long,
        env = "CHATPIPE_ELASTICSEARCH_URL",
        default_value = defaults::ELASTICSEARCH_URL,
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
    /// Primary shards of each new backing search index (the template's;
    /// existing indices keep theirs until the next rollover). Messages are
    /// routed by conversation, so a search reads one shard whatever the
    /// count; more shards spread a large index over more nodes, and on one
    /// node each costs a refresh and a bulk sub-request of its own.
    #[arg(
        long,
        env = "CHATPIPE_SEARCH_SHARDS",
        default_value_t = SearchEngineConfig::default().number_of_shards,
        value_parser = clap::value_parser!(u32).range(1..=1024),
        global = true
    )]
    pub search_shards: u32,
    /// Replicas of each shard of a new backing search index (0 on one
    /// node; 1 or more on a cluster).
    #[arg(
        long,
        env = "CHATPIPE_SEARCH_REPLICAS",
        default_value_t = SearchEngineConfig::default().number_of_replicas,
        global = true
    )]
    pub search_replicas: u32,
    /// Prefix prepended to every Kafka topic name (isolated deployments).
    #[arg(long, env = "CHATPIPE_TOPIC_PREFIX", default_value = "", global = true)]
    pub topic_prefix: String,
    /// HS256 secret of bearer tokens. When unset or empty, the file
    /// `token-secret` under CHATPIPE_HOME (default ~/.cache/chatpipe) is
    /// read; without either, roles refuse to start. There is no built-in
    /// secret. Never logged.
    #[arg(
        long,
        env = "CHATPIPE_TOKEN_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub token_secret: Option<String>,
    /// `kid` of the token secret's key: tokens `chatpipe token` signs carry
    /// it, and tokens naming it verify with the secret. Name keys to rotate
    /// them (README, "Security").
    #[arg(long, env = "CHATPIPE_TOKEN_KID", global = true)]
    pub token_kid: Option<String>,
    /// A JWKS file (`{"keys":[…]}`) of further keys that verify tokens, each
    /// selected by its `kid`: HS256 (`"kty":"oct"`), RS256 (`"kty":"RSA"`),
    /// ES256 (`"kty":"EC"`, P-256). The old key during a rotation; an
    /// identity provider's public keys.
    #[arg(long, env = "CHATPIPE_TOKEN_JWKS_FILE", global = true)]
    pub token_jwks_file: Option<PathBuf>,
    /// An http(s) URL answering with a JWKS document (an identity
    /// provider's `jwks_uri`), whose keys verify tokens next to the secret
    /// and the JWKS file. Fetched at start: unreachable or invalid, the
    /// role does not start. Fetched again every
    /// --token-jwks-refresh-interval-ms, and when a token names an unknown
    /// `kid` (at most every --token-jwks-unknown-kid-refetch-interval-ms;
    /// that token is refused, the client's retry verifies). A failed
    /// refresh keeps the last good keys, is logged and counted in
    /// `chatpipe_token_jwks_refresh_failures_total`.
    #[arg(long, env = "CHATPIPE_TOKEN_JWKS_URL", global = true)]
    pub token_jwks_url: Option<String>,
    /// Time between two scheduled fetches of --token-jwks-url, in ms.
    #[arg(
        long,
        env = "CHATPIPE_TOKEN_JWKS_REFRESH_INTERVAL_MS",
        default_value_t = chatpipe::jwks::DEFAULT_JWKS_REFRESH_INTERVAL_MS,
        global = true
    )]
    pub token_jwks_refresh_interval_ms: u64,
    /// Shortest time between two fetches of --token-jwks-url asked for by
    /// tokens naming an unknown `kid`, in ms (from the last fetch).
    #[arg(
        long,
        env = "CHATPIPE_TOKEN_JWKS_UNKNOWN_KID_REFETCH_INTERVAL_MS",
        default_value_t = chatpipe::jwks::DEFAULT_JWKS_UNKNOWN_KID_REFETCH_INTERVAL_MS,
        global = true
    )]
    pub token_jwks_unknown_kid_refetch_interval_ms: u64,
    /// Accepted token issuers (`iss`), comma-separated. Unset: `iss` is not
    /// checked; set: a token must name one of them.
    #[arg(
        long,
        env = "CHATPIPE_TOKEN_ISSUER",
        value_delimiter = ',',
        global = true
    )]
    pub token_issuer: Vec<String>,
    /// Accepted token audiences (`aud`), comma-separated. Unset: `aud` is
    /// not checked; set: a token must name one of them.
    #[arg(
        long,
        env = "CHATPIPE_TOKEN_AUDIENCE",
        value_delimiter = ',',
        global = true
    )]
    pub token_audience: Vec<String>,
    /// Longest token lifetime accepted, in seconds: a token whose
    /// `exp − iat` or `exp − now` is longer is refused. 0: no limit.
    #[arg(
        long,
        env = "CHATPIPE_TOKEN_MAX_LIFETIME_SECS",
        default_value_t = DEFAULT_MAX_TOKEN_LIFETIME_SECS,
        global = true
    )]
    pub token_max_lifetime_secs: u64,
    /// Secret of the edges' gRPC push service (at least 32 bytes), shared
    /// by every edge and fan-out worker. Unset or empty: the push key is
    /// derived from the token secret (a domain-separated HMAC), so nothing
    /// more needs configuring. Never logged.
    #[arg(
        long,
        env = "CHATPIPE_PUSH_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub push_secret: Option<String>,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Print a bearer token for a user, signed with the configured secret.
    Token(TokenArgs),
    /// Manage the token secret file under CHATPIPE_HOME.
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Apply the topology: Kafka topics, Cassandra schema, index template.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Run a WebSocket edge.
    Edge(EdgeArgs),
    /// Run a fan-out worker.
    Fanout(FanoutArgs),
    /// Run a Cassandra history writer.
    Persist(PersistArgs),
    /// Run a search indexer.
    Index(IndexArgs),
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
    /// Lifetime of the token, in seconds (at most the configured maximum,
    /// `--token-max-lifetime-secs`).
    #[arg(long, default_value_t = DEFAULT_MAX_TOKEN_LIFETIME_SECS)]
    pub ttl_secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum SecretAction {
    /// Create CHATPIPE_HOME/token-secret with a random secret (mode 0600)
    /// unless it exists; print its path. Run by topology/run.sh.
    Init,
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
    /// This edge's id; unique among live edges (a start under the id of a
    /// live edge elsewhere is refused). Unset: `edge-<host>-<push port>`,
    /// unique per process.
    #[arg(long, env = "CHATPIPE_EDGE_ID")]
    pub edge_id: Option<String>,
    /// Snowflake worker id of message ids (0–1023); unique among live
    /// edges (one a live edge holds is refused). Unset: a free one is
    /// taken at start and held in the edge's lease.
    #[arg(long, env = "CHATPIPE_EDGE_WORKER_ID")]
    pub worker_id: Option<u16>,
    /// WebSocket listener (`/ws` only).
    #[arg(long, env = "CHATPIPE_EDGE_LISTEN", default_value = defaults::EDGE_LISTEN)]
    pub listen: SocketAddr,
    /// Ops listener (`/metrics`, `/healthz`, `/readyz`); keep it private.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_OPS_LISTEN",
        default_value = defaults::EDGE_OPS_LISTEN
    )]
    pub ops_listen: SocketAddr,
    /// gRPC push listener (called by fan-out workers).
    #[arg(
        long,
        env = "CHATPIPE_EDGE_PUSH_LISTEN",
        default_value = defaults::EDGE_PUSH_LISTEN
    )]
    pub push_listen: SocketAddr,
    /// Push address announced to fan-out (defaults to the listen address).
    #[arg(long, env = "CHATPIPE_EDGE_ADVERTISED_PUSH_ADDR")]
    pub advertised_push_addr: Option<String>,
    /// Server ping interval, also the `heartbeat_ms` of `hello`.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_HEARTBEAT_INTERVAL_MS",
        default_value_t = EDGE_DEFAULTS.heartbeat_interval_ms
    )]
    pub heartbeat_interval_ms: u64,
    /// A client silent this long is dropped.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_HEARTBEAT_TIMEOUT_MS",
        default_value_t = EDGE_DEFAULTS.heartbeat_timeout_ms
    )]
    pub heartbeat_timeout_ms: u64,
    /// How long a disconnected session stays resumable.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_RESUME_WINDOW_MS",
        default_value_t = EDGE_DEFAULTS.resume_window_ms
    )]
    pub resume_window_ms: u64,
    /// Most concurrent connections.
    #[arg(long, env = "CHATPIPE_EDGE_MAX_CONNECTIONS", default_value_t = EDGE_DEFAULTS.max_connections)]
    pub max_connections: usize,
    /// Most concurrent connections from one client address (0: no cap).
    #[arg(
        long,
        env = "CHATPIPE_EDGE_MAX_CONNECTIONS_PER_IP",
        default_value_t = EDGE_DEFAULTS.max_connections_per_ip
    )]
    pub max_connections_per_ip: usize,
    /// Failed authentications per minute from one client address before
    /// it is refused for a minute (its tokens are then not even checked).
    #[arg(
        long,
        env = "CHATPIPE_EDGE_AUTH_FAILURES_PER_IP_PER_MINUTE",
        default_value_t = EDGE_DEFAULTS.auth_failures_per_ip_per_minute
    )]
    pub auth_failures_per_ip_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed, comma-separated
    /// addresses or networks (`10.0.0.0/8,192.0.2.7`). Unset: the header
    /// is ignored and the TCP peer is the client.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = chatpipe_edge::admission::parse_network
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Longest a write to a client may take before it is closed as a slow consumer, ms.
    #[arg(long, env = "CHATPIPE_EDGE_WRITE_TIMEOUT_MS", default_value_t = EDGE_DEFAULTS.write_timeout_ms)]
    pub write_timeout_ms: u64,
    /// Sessions one user may hold on this edge, detached ones included.
    #[arg(long, env = "CHATPIPE_EDGE_MAX_SESSIONS_PER_USER", default_value_t = EDGE_DEFAULTS.max_sessions_per_user)]
    pub max_sessions_per_user: usize,
    /// New connections per second, whole edge.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_CONNECTS_PER_SECOND",
        default_value_t = EDGE_DEFAULTS.connects_per_second_global
    )]
    pub connects_per_second: u32,
    /// New connections per second per client IP.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_CONNECTS_PER_SECOND_PER_IP",
        default_value_t = EDGE_DEFAULTS.connects_per_second_per_ip
    )]
    pub connects_per_second_per_ip: u32,
    /// Client frames per second per connection.
    #[arg(long, env = "CHATPIPE_EDGE_FRAMES_PER_SECOND", default_value_t = EDGE_DEFAULTS.frames_per_second_per_connection)]
    pub frames_per_second: u32,
    /// WebSocket read buffer per connection, bytes.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_WS_READ_BUFFER_BYTES",
        default_value_t = EDGE_DEFAULTS.ws_read_buffer_bytes
    )]
    pub ws_read_buffer_bytes: usize,
    /// Kafka producer linger, in ms: how long a produce request waits for
    /// more records (batching under load, at most this much on an ack).
    #[arg(
        long,
        env = "CHATPIPE_EDGE_PRODUCER_LINGER_MS",
        default_value_t = EDGE_DEFAULTS.producer_linger_ms
    )]
    pub producer_linger_ms: u32,
    /// Drain deadline on SIGTERM.
    #[arg(
        long,
        env = "CHATPIPE_EDGE_DRAIN_DEADLINE_MS",
        default_value_t = EDGE_DEFAULTS.drain_deadline_ms
    )]
    pub drain_deadline_ms: u64,
}

/// The flags of one consumer-group role (fan-out, persist, index): its ops
/// listener and its consumer group, each with the role's own variable.
macro_rules! worker_args {
    ($name:ident, $ops_env:literal, $ops_default:expr, $group_env:literal, $group_default:literal) => {
        #[derive(Debug, Clone, Args)]
        pub struct $name {
            /// Ops listener (`/metrics`, `/healthz`, `/readyz`); keep it private.
            #[arg(long, alias = "listen", env = $ops_env, default_value = $ops_default)]
            pub ops_listen: SocketAddr,
            /// Consumer group id.
            #[arg(long, env = $group_env, default_value = $group_default)]
            pub group: String,
            #[command(flatten)]
            pub batching: BatchingArgs,
        }
    };
}

/// How the persist and index roles batch their writes and commit offsets
/// (unset: the role's default; fan-out keeps its own short batches).
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
    /// Index: bytes a Kafka fetch waits for, up to its 500 ms long poll
    /// (default 65536; 1 fetches on the first record). Bounds how many
    /// fetches the indexer makes under load; at low rates a document is
    /// searchable up to 500 ms later.
    #[arg(long, env = "CHATPIPE_INDEX_FETCH_MIN_BYTES")]
    pub index_fetch_min_bytes: Option<usize>,
    /// Persist: bytes a Kafka fetch waits for, up to its 200 ms long poll
    /// (default 16384; 1 fetches on the first record). Under load a fetch
    /// then carries ~50 records instead of one producer batch; at low
    /// rates a message reaches history up to 200 ms later.
    #[arg(long, env = "CHATPIPE_PERSIST_FETCH_MIN_BYTES")]
    pub persist_fetch_min_bytes: Option<usize>,
}

worker_args!(
    FanoutArgs,
    "CHATPIPE_FANOUT_OPS_LISTEN",
    defaults::FANOUT_OPS_LISTEN,
    "CHATPIPE_FANOUT_GROUP",
    "chatpipe-fanout"
);
worker_args!(
    PersistArgs,
    "CHATPIPE_PERSIST_OPS_LISTEN",
    defaults::PERSIST_OPS_LISTEN,
    "CHATPIPE_PERSIST_GROUP",
    "chatpipe-persist"
);
worker_args!(
    IndexArgs,
    "CHATPIPE_INDEX_OPS_LISTEN",
    defaults::INDEX_OPS_LISTEN,
    "CHATPIPE_INDEX_GROUP",
    "chatpipe-index"
);

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// HTTP listener of the API (`/v1/…`, `/openapi.json`).
    #[arg(
        long = "api-listen",
        env = "CHATPIPE_API_LISTEN",
        default_value = defaults::API_LISTEN
    )]
    pub api_listen: SocketAddr,
    /// Ops listener of the API (`/metrics`, `/healthz`, `/readyz`).
    #[arg(
        long = "api-ops-listen",
        env = "CHATPIPE_API_OPS_LISTEN",
        default_value = defaults::API_OPS_LISTEN
    )]
    pub api_ops_listen: SocketAddr,
    /// Most members a conversation may have; adding one more (or creating a
    /// conversation with more) is refused with 409 `conflict`.
    #[arg(
        long = "max-members-per-conversation",
        env = "CHATPIPE_API_MAX_MEMBERS_PER_CONVERSATION",
        default_value_t = chatpipe_api::ApiConfig::default().max_members_per_conversation
    )]
    pub max_members_per_conversation: u64,
    /// Development mode: `POST /v1/dev/token` signs a token for any user
    /// name, without a password (the web app's sign-in on a local stack).
    /// Refused unless --api-listen is a loopback address. Never in production.
    #[arg(long = "dev", env = "CHATPIPE_DEV")]
    pub dev: bool,
    /// Serve this directory (the web app's build, clients/web/dist) under
    /// `/app/` on the API's port.
    #[arg(long, env = "CHATPIPE_APP_DIR")]
    pub app_dir: Option<std::path::PathBuf>,
    /// The WebSocket URL the web app is told to use (`/app/config.json`);
    /// `chatpipe all` defaults it to the first edge's `ws://<listen>/ws`.
    #[arg(long, env = "CHATPIPE_APP_WS_URL")]
    pub app_ws_url: Option<String>,
    /// Origins allowed to call the API from a browser (CORS),
    /// comma-separated (`http://localhost:5173`), or `*`; none by default.
    #[arg(long, env = "CHATPIPE_API_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

/// The consumer groups of the consumer-group roles in `chatpipe all` (the
/// same variables as `chatpipe fanout|persist|index --group`): separate
/// deployments on one Kafka cluster need their own.
#[derive(Debug, Clone, Args)]
pub struct WorkerGroupArgs {
    /// Fan-out consumer group.
    #[arg(long, env = "CHATPIPE_FANOUT_GROUP", default_value = "chatpipe-fanout")]
    pub fanout_group: String,
    /// Persist consumer group.
    #[arg(
        long,
        env = "CHATPIPE_PERSIST_GROUP",
        default_value = "chatpipe-persist"
    )]
    pub persist_group: String,
    /// Index consumer group.
    #[arg(long, env = "CHATPIPE_INDEX_GROUP", default_value = "chatpipe-index")]
    pub index_group: String,
}

/// The ops listeners of the consumer-group roles in `chatpipe all`.
#[derive(Debug, Clone, Args)]
pub struct WorkerOpsArgs {
    /// Fan-out ops listener.
    #[arg(
        long,
        env = "CHATPIPE_FANOUT_OPS_LISTEN",
        default_value = defaults::FANOUT_OPS_LISTEN
    )]
    pub fanout_ops_listen: SocketAddr,
    /// Persist ops listener.
    #[arg(
        long,
        env = "CHATPIPE_PERSIST_OPS_LISTEN",
        default_value = defaults::PERSIST_OPS_LISTEN
    )]
    pub persist_ops_listen: SocketAddr,
    /// Index ops listener.
    #[arg(
        long,
        env = "CHATPIPE_INDEX_OPS_LISTEN",
        default_value = defaults::INDEX_OPS_LISTEN
    )]
    pub index_ops_listen: SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// Number of edges; edge N (from 1) takes the first edge's WebSocket and
    /// ops ports plus 2(N-1) (8080/8081, 8082/8083, …) and its push port
    /// plus N-1 (8180, 8181, …).
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
    pub workers: WorkerOpsArgs,
    #[command(flatten)]
    pub groups: WorkerGroupArgs,
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
            "--ops-listen",
            "127.0.0.1:18081",
            "--index-ops-listen",
            "127.0.0.1:18093",
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
        assert_eq!(args.edge.ops_listen.port(), 18081);
        assert_eq!(args.workers.index_ops_listen.port(), 18093);
        assert_eq!(
            args.api.api_ops_listen.to_string(),
            defaults::API_OPS_LISTEN
        );
    }

    #[test]
    fn development_mode_app_files_and_cors_are_off_unless_asked_for() {
        let cli = Cli::try_parse_from(["chatpipe", "all"]).unwrap();
        let Command::All(args) = cli.command else {
            panic!("parsed another command")
        };
        assert!(!args.api.dev && args.api.app_dir.is_none() && args.api.cors_origins.is_empty());
        assert_eq!(args.groups.fanout_group, "chatpipe-fanout");
        let cli = Cli::try_parse_from([
            "chatpipe",
            "api",
            "--dev",
            "--app-dir",
            "clients/web/dist",
            "--cors-origins",
            "http://localhost:5173,https://chat.example",
        ])
        .unwrap();
        let Command::Api(args) = cli.command else {
            panic!("parsed another command")
        };
        assert!(args.dev);
        assert_eq!(args.app_dir.unwrap().to_str(), Some("clients/web/dist"));
        assert_eq!(
            args.cors_origins,
            ["http://localhost:5173", "https://chat.example"]
        );
    }

    #[test]
    fn batching_flags_reach_persist_index_and_all() {
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
                Command::Persist(args) => args.batching,
                Command::Index(args) => args.batching,
                Command::All(args) => args.batching,
                _ => panic!("parsed another command"),
            };
            assert_eq!(
                (batching.batch_linger_ms, batching.commit_interval_ms),
                (Some(80), Some(2500))
            );
        }
    }

    #[test]
    fn edge_identity_and_admission_flags() {
        let cli = Cli::try_parse_from(["chatpipe", "edge"]).unwrap();
        let Command::Edge(args) = cli.command else {
            panic!("parsed another command")
        };
        assert_eq!((args.edge_id, args.worker_id), (None, None));
        assert!(args.trusted_proxies.is_empty());
        let cli = Cli::try_parse_from([
            "chatpipe",
            "edge",
            "--trusted-proxies",
            "10.0.0.0/8,192.0.2.7",
            "--max-connections-per-ip",
            "50",
            "--worker-id",
            "9",
        ])
        .unwrap();
        let Command::Edge(args) = cli.command else {
            panic!("parsed another command")
        };
        assert_eq!(args.trusted_proxies.len(), 2);
        assert_eq!((args.max_connections_per_ip, args.worker_id), (50, Some(9)));
        assert!(Cli::try_parse_from(["chatpipe", "edge", "--trusted-proxies", "a-name"]).is_err());
    }

    #[test]
    fn token_options_are_flags_with_documented_defaults() {
        let cli = Cli::try_parse_from(["chatpipe", "edge"]).unwrap();
        assert_eq!(
            cli.common.token_max_lifetime_secs,
            DEFAULT_MAX_TOKEN_LIFETIME_SECS
        );
        assert!(cli.common.token_issuer.is_empty() && cli.common.push_secret.is_none());
        let cli = Cli::try_parse_from([
            "chatpipe",
            "all",
            "--token-issuer",
            "https://a.example,https://b.example",
            "--token-audience",
            "chatpipe",
            "--token-kid",
            "2026-01",
            "--token-jwks-file",
            "/etc/chatpipe/jwks.json",
            "--token-jwks-url",
            "https://idp.example/.well-known/jwks.json",
            "--token-jwks-unknown-kid-refetch-interval-ms",
            "10000",
            "--token-max-lifetime-secs",
            "3600",
        ])
        .unwrap();
        assert_eq!(cli.common.token_issuer.len(), 2);
        assert_eq!(cli.common.token_audience, vec!["chatpipe".to_owned()]);
        assert_eq!(cli.common.token_kid.as_deref(), Some("2026-01"));
        assert_eq!(
            cli.common.token_jwks_url.as_deref(),
            Some("https://idp.example/.well-known/jwks.json")
        );
        assert_eq!(
            cli.common.token_jwks_refresh_interval_ms,
            chatpipe::jwks::DEFAULT_JWKS_REFRESH_INTERVAL_MS
        );
        assert_eq!(
            cli.common.token_jwks_unknown_kid_refetch_interval_ms,
            10_000
        );
        assert_eq!(cli.common.token_max_lifetime_secs, 3600);
    }

    #[test]
    fn worker_ops_listeners_default_to_loopback_and_keep_the_old_flag() {
        let cli = Cli::try_parse_from(["chatpipe", "fanout"]).unwrap();
        let Command::Fanout(args) = cli.command else {
            panic!("parsed another command")
        };
        assert_eq!(args.ops_listen.to_string(), defaults::FANOUT_OPS_LISTEN);
        assert!(args.ops_listen.ip().is_loopback());
        let cli =
            Cli::try_parse_from(["chatpipe", "index", "--listen", "127.0.0.1:18093"]).unwrap();
        let Command::Index(args) = cli.command else {
            panic!("parsed another command")
        };
        assert_eq!(args.ops_listen.port(), 18093);
    }
}
