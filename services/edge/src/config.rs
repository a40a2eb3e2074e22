//! The edge's configuration: one typed struct, every field documented, units
//! in the names. The binary layers CLI flags and `CHATPIPE_EDGE_*`
//! environment variables over [`EdgeConfig::default`].

use std::net::SocketAddr;

use chatpipe_core::EdgeId;
use chatpipe_core::frames::FrameLimits;
use chatpipe_core::records::TopicNames;
use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// This edge's id in the session-route topic; unique per edge process:
    /// a start under the id of a live edge elsewhere is refused (see
    /// [`crate::identity`]).
    pub edge_id: EdgeId,
    /// Snowflake worker id for message ids (10 bits); unique among live
    /// edges: a configured one that a live edge holds is refused at start,
    /// and `None` takes a free one.
    pub worker_id: Option<u16>,
    /// WebSocket listener (`/ws` only; ops endpoints are on the role's ops
    /// listener).
    pub http_addr: SocketAddr,
    /// gRPC push listener that fan-out workers call.
    pub push_addr: SocketAddr,
    /// The push address announced to fan-out workers (defaults to `push_addr`).
    pub advertised_push_addr: Option<String>,
    /// Kafka topics.
    pub topics: TopicNames,
    /// Interval of server pings, also sent to clients as `heartbeat_ms`.
    pub heartbeat_interval_ms: u64,
    /// A client silent (no frame, no pong) for this long is dropped.
    pub heartbeat_timeout_ms: u64,
    /// How long a disconnected session stays resumable.
    pub resume_window_ms: u64,
    /// Server frames kept per session for replay (acked frames are trimmed).
    pub session_buffer_frames: usize,
    /// Frames written-but-not-yet-flushed allowed per connection before the
    /// client is closed as a slow consumer (4008).
    pub max_unwritten_frames: usize,
    /// Limits of decoded client frames.
    pub frame_limits: FrameLimits,
    /// How long a `send` may wait for Kafka before `unavailable`.
    pub send_deadline_ms: u64,
    /// Client frames per second per connection, and burst: every kind
    /// (`ping` and `ack_seq` too, and malformed frames) counts.
    pub frames_per_second_per_connection: u32,
    pub frames_burst_per_connection: u32,
    /// New connections per second per client IP, and burst: 5 % of the
    /// edge-wide budget, so that one address cannot shed everyone else.
    /// Charged for valid tokens and for failed authentications alike (a
    /// failure spends only its own IP's budget, never the edge-wide one).
    pub connects_per_second_per_ip: u32,
    pub connects_burst_per_ip: u32,
    /// New connections per second for the whole edge, and burst: the
    /// reconnect-storm shed valve.
    pub connects_per_second_global: u32,
    pub connects_burst_global: u32,
    /// Sessions one user may hold on this edge, detached ones (waiting for
    /// a resume) included. At the cap a new connection drops the user's
    /// session detached the longest; with all of them attached it is closed
    /// with 4029.
    pub max_sessions_per_user: usize,
    /// Longest any write to a client may take (frames, replies, errors,
    /// `hello` and the resume replay, pings): a client that stops reading
    /// is closed as a slow consumer (4008) instead of pinning its
    /// connection.
    pub write_timeout_ms: u64,
    /// Most concurrent WebSocket connections this edge holds.
    pub max_connections: usize,
    /// Most concurrent WebSocket connections from one client address (0:
    /// no cap); past it a connection is closed with 1013. Generous by
    /// default, as many users can share an address behind a NAT.
    pub max_connections_per_ip: usize,
    /// Failed authentications (bad, expired or missing tokens) one client
    /// address may have per minute; past it the address is refused (1013)
    /// for `auth_failure_penalty_ms` before its tokens are even verified.
    pub auth_failures_per_ip_per_minute: u32,
    pub auth_failure_penalty_ms: u64,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` is believed:
    /// a connection from one of them is charged to the client address the
    /// header names (its rightmost entry that is not a trusted proxy) for
    /// every per-IP limit. Empty (the default): the header is ignored, and
    /// the TCP peer is the client.
    pub trusted_proxies: Vec<IpNet>,
    /// WebSocket read buffer per connection (tungstenite's default is 128 KiB;
    /// small buffers are what keep idle connections cheap).
    pub ws_read_buffer_bytes: usize,
    /// Frames fed to a connection are written to its socket once this many
    /// bytes are buffered, or at the flush that ends each burst: a burst
    /// smaller than this is one `write`. (0 would write every frame on its
    /// own. A connection's buffer keeps the capacity of its largest write,
    /// so this also bounds what a once-busy idle connection holds.)
    pub ws_write_buffer_bytes: usize,
    /// Lease of this edge's route record; renewed every third of it.
    pub lease_ms: u64,
    /// Time-to-live of cached membership (positive answers only), in ms: a
    /// safety net behind the invalidation by the membership topic, which
    /// evicts a pair as soon as its record arrives. Long, so that a
    /// member's sends cost no store read.
    pub membership_cache_ttl_ms: u64,
    /// How long the edge's cache of recent sends (keyed by conversation,
    /// sender and `client_msg_id`) remembers a send: a retry on this edge
    /// within it is answered without producing.
    pub dedup_cache_ttl_ms: u64,
    /// Kafka producer linger (`linger.ms`), in ms: how long a produce
    /// request waits for more records before it is sent. Every send of the
    /// edge (messages, events, routes) shares the producer, and one produce
    /// request carries every partition led by a broker, so at 1,000 sends
    /// a second a 5 ms linger sends ~200 requests instead of ~1,000, for at
    /// most 5 ms more on an ack. (librdkafka's own default; at a few sends a
    /// second no linger short enough for chat would batch anything.)
    pub producer_linger_ms: u32,
    /// Total time the drain may take on SIGTERM.
    pub drain_deadline_ms: u64,
    /// Members kept over all the member sets fan-out sent (large groups'
    /// member lists, see `schemas/proto/push.proto`); past it the oldest
    /// sets are dropped, and fan-out resends one when it is used again.
    pub push_member_sets_max_members: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            edge_id: EdgeId::parse("edge-1").expect("valid literal"),
            worker_id: None,
            http_addr: "127.0.0.1:8080".parse().expect("valid literal"),
            push_addr: "127.0.0.1:8180".parse().expect("valid literal"),
            advertised_push_addr: None,
            topics: TopicNames::default(),
            heartbeat_interval_ms: 15_000,
            heartbeat_timeout_ms: 45_000,
            resume_window_ms: 120_000,
            session_buffer_frames: 512,
            max_unwritten_frames: 256,
            frame_limits: FrameLimits::default(),
            send_deadline_ms: 5_000,
            frames_per_second_per_connection: 50,
            frames_burst_per_connection: 100,
            connects_per_second_per_ip: 100,
            connects_burst_per_ip: 200,
            connects_per_second_global: 2_000,
            connects_burst_global: 4_000,
            max_sessions_per_user: 16,
            write_timeout_ms: 10_000,
            max_connections: 20_000,
            max_connections_per_ip: 1_000,
            auth_failures_per_ip_per_minute: 60,
            auth_failure_penalty_ms: 60_000,
            trusted_proxies: Vec::new(),
            ws_read_buffer_bytes: 1024,
            ws_write_buffer_bytes: 16 * 1024,
            lease_ms: 10_000,
            membership_cache_ttl_ms: 600_000,
            dedup_cache_ttl_ms: 600_000,
            producer_linger_ms: 5,
            push_member_sets_max_members: 500_000,
            drain_deadline_ms: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ip_gets_a_small_share_of_the_connect_budget() {
        let config = EdgeConfig::default();
        assert!(config.connects_per_second_per_ip * 20 <= config.connects_per_second_global);
        assert!(config.connects_burst_per_ip * 20 <= config.connects_burst_global);
    }
}
