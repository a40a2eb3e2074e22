//! Scenario files (`benches/scenarios/*.toml`): what load to put on which
//! target, for how long, and which baselines to run next to it.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in result file names (`idle`, `chat`, …).
    pub name: String,
    /// One line saying what it measures.
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub target: TargetConfig,
    pub load: LoadConfig,
    #[serde(default)]
    pub conversations: ConversationMix,
    /// Send-rate phases, run in order after every connection is open.
    /// None for an idle scenario.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// A mass reconnect during the phases.
    #[serde(default)]
    pub storm: Option<StormConfig>,
    /// What clients do to messages after sending them (edits, deletes,
    /// reactions, read markers); nothing by default.
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub baselines: BaselineConfig,
}

/// Where chatpipe runs (defaults: `chatpipe all` on this machine).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetConfig {
    /// WebSocket URL of the edge.
    pub ws_url: String,
    /// WebSocket URLs of several edges (when set, `ws_url` is not used):
    /// each conversation's members are spread over them, and a client
    /// whose edge fails moves to the next.
    pub ws_urls: Vec<String>,
    /// Base URL of the HTTP API.
    pub api_url: String,
    /// Prometheus endpoints (`/metrics`) of the edge, fan-out, persist and
    /// index roles: their ops listeners (`chatpipe all` serves them on
    /// these ports).
    pub edge_metrics_url: String,
    /// Every edge's `/metrics` when there are several (when set,
    /// `edge_metrics_url` is not used).
    pub edge_metrics_urls: Vec<String>,
    pub fanout_metrics_url: String,
    pub persist_metrics_url: String,
    pub index_metrics_url: String,
    /// Secret of bearer tokens (`CHATPIPE_TOKEN_SECRET`); when empty, the
    /// roles' secret file under `CHATPIPE_HOME`. The environment variable wins.
    pub token_secret: String,
}

impl TargetConfig {
    /// The edges' WebSocket URLs: `ws_urls`, else `ws_url` alone.
    pub fn edge_urls(&self) -> Vec<String> {
        if self.ws_urls.is_empty() {
            vec![self.ws_url.clone()]
        } else {
            self.ws_urls.clone()
        }
    }

    /// The edges' `/metrics` URLs: `edge_metrics_urls`, else
    /// `edge_metrics_url` alone.
    pub fn edge_metrics(&self) -> Vec<String> {
        if self.edge_metrics_urls.is_empty() {
            vec![self.edge_metrics_url.clone()]
        } else {
            self.edge_metrics_urls.clone()
        }
    }
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            ws_url: "ws://127.0.0.1:8080/ws".into(),
            ws_urls: Vec::new(),
            api_url: "http://127.0.0.1:8090".into(),
            edge_metrics_url: "http://127.0.0.1:8081/metrics".into(),
            edge_metrics_urls: Vec::new(),
            fanout_metrics_url: "http://127.0.0.1:8091/metrics".into(),
            persist_metrics_url: "http://127.0.0.1:8092/metrics".into(),
            index_metrics_url: "http://127.0.0.1:8093/metrics".into(),
            token_secret: String::new(),
        }
    }
}

/// Connections and client behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// Simulated users, one WebSocket connection each.
    pub users: usize,
    /// Most sockets per worker process (a process here may hold at most
    /// 20,000 open files).
    #[serde(default = "default_sockets_per_worker")]
    pub max_sockets_per_worker: usize,
    /// New connections per second over all workers (the edge sheds above
    /// its own limit with 1013 and a retry hint, which clients honour).
    #[serde(default = "default_connect_rate")]
    pub connect_rate_per_s: f64,
    /// Bytes of each message body.
    #[serde(default = "default_body_bytes")]
    pub body_bytes: usize,
    /// The client sends `ack_seq` after this many sequenced frames, or
    /// [`ack_delay_ms`](Self::ack_delay_ms) after the first unacknowledged
    /// one: the TypeScript SDK's policy (`ackEveryFrames`, `ackDelayMs`).
    #[serde(default = "default_ack_every")]
    pub ack_every_frames: u64,
    /// See [`ack_every_frames`](Self::ack_every_frames); the SDK's default
    /// is 1,000 ms. Checked on the client's 250 ms tick, so the delay is
    /// this plus up to 250 ms.
    #[serde(default = "default_ack_delay_ms")]
    pub ack_delay_ms: u64,
    /// Most sends a client has waiting for their `ack`; a send due while
    /// that many are pending is skipped (counted), as a chat client that
    /// waits for acks would. Keeps an overloaded edge's queues bounded so
    /// that the run measures throughput, not an ever-growing backlog.
    #[serde(default = "default_max_unacked")]
    pub max_unacked_per_client: usize,
    /// How long connections stay open (idle) after all are connected,
    /// before memory is read; also the pause before sending starts.
    #[serde(default = "default_settle_s")]
    pub settle_s: u64,
    /// After the last phase: how long to wait for in-flight deliveries.
    #[serde(default = "default_drain_s")]
    pub drain_s: u64,
    /// With several edges: a connection that heard nothing for this long
    /// while a send or a ping waited for its answer is given up and the
    /// client moves to another edge (a stopped edge never closes its
    /// sockets). Clients silent for half of it send a `ping`. 0: never.
    #[serde(default = "default_edge_stall_s")]
    pub edge_stall_s: f64,
    /// First loopback source address of the workers' sockets; worker `k`
    /// binds `base + k * addresses_per_worker + j`.
    #[serde(default = "default_source_base")]
    pub source_ip_base: String,
    /// Loopback source addresses per worker (each has ~28,000 ephemeral ports).
    #[serde(default = "default_addresses_per_worker")]
    pub addresses_per_worker: usize,
}

fn default_sockets_per_worker() -> usize {
    15_000
}
fn default_connect_rate() -> f64 {
    1_500.0
}
fn default_body_bytes() -> usize {
    100
}
fn default_ack_every() -> u64 {
    32
}
fn default_ack_delay_ms() -> u64 {
    1_000
}
fn default_max_unacked() -> usize {
    2
}
fn default_settle_s() -> u64 {
    5
}
fn default_drain_s() -> u64 {
    15
}
fn default_edge_stall_s() -> f64 {
    10.0
}
fn default_source_base() -> String {
    "127.0.1.1".into()
}
fn default_addresses_per_worker() -> usize {
    2
}

/// The conversations created through the HTTP API, and where sends go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConversationMix {
    /// One-to-one conversations (random pairs of users).
    pub direct: usize,
    /// Groups of `group_min..=group_max` members.
    pub groups: usize,
    pub group_min: usize,
    pub group_max: usize,
    /// Large groups of `large_min..=large_max` members (capped at `users`).
    pub large: usize,
    pub large_min: usize,
    pub large_max: usize,
    /// Share of sends that go to 1:1, group and large conversations
    /// (normalised; a kind with no conversation gets none).
    pub direct_send_share: f64,
    pub group_send_share: f64,
    pub large_send_share: f64,
    /// Create conversations after every user is connected. chatpipe sends
    /// presence to every member of every conversation of a user on
    /// connect, so connecting the members of a 1,000+ group is an O(n²)
    /// presence storm; creating the groups afterwards isolates message
    /// delivery from it.
    pub create_after_connect: bool,
}

impl Default for ConversationMix {
    fn default() -> Self {
        Self {
            direct: 0,
            groups: 0,
            group_min: 5,
            group_max: 50,
            large: 0,
            large_min: 1_000,
            large_max: 2_000,
            direct_send_share: 0.8,
            group_send_share: 0.18,
            large_send_share: 0.02,
            create_after_connect: true,
        }
    }
}

/// A period at one send rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Messages per second over all senders (Poisson arrivals: exponential
    /// gaps give the jitter).
    pub rate_per_s: f64,
    pub duration_s: u64,
}

/// A mass reconnect: at `at_s` into the phases every client drops its TCP
/// connection without a close handshake (as a network blip does) and
/// reconnects after a random delay up to `jitter_ms`, resuming its session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormConfig {
    pub at_s: u64,
    pub jitter_ms: u64,
    /// Share of the connections that drop (1.0 = all).
    #[serde(default = "default_storm_share")]
    pub share: f64,
}

fn default_storm_share() -> f64 {
    1.0
}

/// A message's life after its send (issue 12), as shares of sends: after
/// a send, the client edits one of its own recent acknowledged messages
/// with probability `edit_share`, deletes one with `delete_share`, and
/// reacts to a recent message it received with `react_share`. Every
/// `read_every` messages received it sends a `read` marker for the
/// conversation of the last one. All zero by default: a scenario without
/// this section sends messages only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    pub edit_share: f64,
    pub delete_share: f64,
    pub react_share: f64,
    /// 0: no reads.
    pub read_every: u64,
    /// No reads in conversations of more members than this (0: no limit).
    /// The edge relays a `read` to every other member, so reads every few
    /// messages in a 1,000-member group cost members² frames per message:
    /// a client of a large group reads when the user opens it, not per
    /// message.
    pub read_max_members: usize,
}

impl LifecycleConfig {
    /// Whether clients do anything besides sending.
    pub fn active(&self) -> bool {
        self.edit_share > 0.0
            || self.delete_share > 0.0
            || self.react_share > 0.0
            || self.read_every > 0
    }
}

/// What the end-of-run verification checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Every acked message delivered to every member online for it.
    pub deliveries: bool,
    /// Every acked message in history exactly once and in order.
    pub history: bool,
    /// Acked messages searched for: 0 = none, or a sample of this many;
    /// `search_all` checks every one.
    pub search_sample: usize,
    pub search_all: bool,
    /// How long history and search may take to catch up.
    pub timeout_s: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            deliveries: true,
            history: true,
            search_sample: 500,
            search_all: false,
            timeout_s: 180,
        }
    }
}

/// Baselines run in the same command, on the same connections and rates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Read buffer sizes of `bare-ws` runs, bytes (0 = tungstenite's default).
    pub bare_read_buffers: Vec<usize>,
    /// Run the same load against Centrifugo (`benches/centrifugo.sh`).
    pub centrifugo: bool,
    /// Port of the baselines' servers.
    pub bare_port: u16,
    pub centrifugo_port: u16,
    /// Body size of the baselines' broadcast messages.
    pub body_bytes: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            bare_read_buffers: Vec::new(),
            centrifugo: false,
            bare_port: 8380,
            centrifugo_port: 8390,
            body_bytes: 100,
        }
    }
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
        let scenario: Scenario = toml::from_str(&text)
            .map_err(|error| anyhow::anyhow!("parsing {}: {error}", path.display()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.load.users >= 1, "load.users must be at least 1");
        anyhow::ensure!(
            (1..=18_000).contains(&self.load.max_sockets_per_worker),
            "load.max_sockets_per_worker must be 1..=18000 (20,000 open files per process)"
        );
        let mix = &self.conversations;
        anyhow::ensure!(
            mix.group_min >= 3 && mix.group_min <= mix.group_max,
            "groups need 3 <= group_min <= group_max"
        );
        anyhow::ensure!(
            mix.large_min >= 2 && mix.large_min <= mix.large_max,
            "large_min <= large_max"
        );
        if mix.direct > 0 {
            anyhow::ensure!(self.load.users >= 2, "1:1 conversations need two users");
        }
        for phase in &self.phases {
            anyhow::ensure!(phase.rate_per_s >= 0.0, "phase rate must be >= 0");
        }
        anyhow::ensure!(
            self.target.edge_urls().iter().all(|url| !url.is_empty()),
            "target.ws_urls: an edge URL is empty"
        );
        anyhow::ensure!(
            self.load.edge_stall_s >= 0.0,
            "load.edge_stall_s must be >= 0"
        );
        let lifecycle = &self.lifecycle;
        for (name, share) in [
            ("edit_share", lifecycle.edit_share),
            ("delete_share", lifecycle.delete_share),
            ("react_share", lifecycle.react_share),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&share), "lifecycle.{name} is 0..=1");
        }
        if let Some(storm) = &self.storm {
            anyhow::ensure!((0.0..=1.0).contains(&storm.share), "storm.share is 0..=1");
        }
        Ok(())
    }

    /// Total length of the send phases, seconds.
    pub fn phases_s(&self) -> u64 {
        self.phases.iter().map(|phase| phase.duration_s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                Scenario::load(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                count += 1;
            }
        }
        assert!(count >= 4, "idle, chat, broadcast, storm");
    }

    #[test]
    fn lifecycle_defaults_to_nothing() {
        let plain: Scenario = toml::from_str("name='t'\n[load]\nusers=2\n").unwrap();
        assert_eq!(plain.lifecycle, LifecycleConfig::default());
        assert!(!plain.lifecycle.active());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let chat = Scenario::load(&dir.join("chat.toml")).unwrap();
        assert!(!chat.lifecycle.active());
        let lifecycle = Scenario::load(&dir.join("chat-lifecycle.toml")).unwrap();
        assert!(lifecycle.lifecycle.active());
        assert_eq!(lifecycle.lifecycle.read_every, 5);
        let wrong: Scenario =
            toml::from_str("name='t'\n[load]\nusers=2\n[lifecycle]\nedit_share=1.5\n").unwrap();
        assert!(wrong.validate().is_err());
    }

    #[test]
    fn one_edge_url_or_several() {
        let old: Scenario =
            toml::from_str("name='t'\n[target]\nws_url='ws://a/ws'\n[load]\nusers=2\n").unwrap();
        assert_eq!(old.target.edge_urls(), vec!["ws://a/ws".to_owned()]);
        assert_eq!(
            old.target.edge_metrics(),
            vec!["http://127.0.0.1:8081/metrics".to_owned()]
        );
        let several: Scenario = toml::from_str(
            "name='t'\n[target]\nws_urls=['ws://a/ws','ws://b/ws']\nedge_metrics_urls=['http://a/m','http://b/m']\n[load]\nusers=2\n",
        )
        .unwrap();
        assert_eq!(several.target.edge_urls().len(), 2);
        assert_eq!(several.target.edge_metrics()[1], "http://b/m");
        several.validate().unwrap();
    }
}
