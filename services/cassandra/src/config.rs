//! Where Cassandra is and how chatpipe uses it: contact points, keyspace,
//! the keyspace's replication and the consistency of every request.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use scylla::statement::{Consistency, SerialConsistency};
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
    /// Replication of the keyspace when the schema apply creates it
    /// (`SimpleStrategy:1`, or `NetworkTopologyStrategy:datacenter1=3`).
    /// An existing keyspace that differs is left as it is, with a warning,
    /// unless [`Self::alter_replication`].
    pub replication: Replication,
    /// When the existing keyspace's replication differs from
    /// [`Self::replication`], change it (`ALTER KEYSPACE`). Data written
    /// before is on the new replicas only after a `nodetool repair` of the
    /// keyspace on every node.
    pub alter_replication: bool,
    /// Consistency level of every read and write (and of the commit of a
    /// lightweight transaction). `LOCAL_QUORUM` survives one replica down
    /// at replication factor 3 and is one replica at factor 1.
    pub consistency: ConsistencyLevel,
    /// Consistency of the Paxos phase of the lightweight transactions
    /// (conversation creation, role and visibility changes).
    pub serial_consistency: SerialConsistencyLevel,
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
            replication: Replication::default(),
            alter_replication: false,
            consistency: ConsistencyLevel::LocalQuorum,
            serial_consistency: SerialConsistencyLevel::LocalSerial,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            max_partitions_per_batch: crate::messages::MAX_PARTITIONS_PER_BATCH,
        }
    }
}

/// Why a replication or consistency setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error(
        "replication {0:?} must be `SimpleStrategy:RF` or `NetworkTopologyStrategy:DC=RF[,DC=RF…]`"
    )]
    ReplicationShape(String),
    #[error("replication factor {0:?} must be a whole number from 1 to {MAX_REPLICATION_FACTOR}")]
    ReplicationFactor(String),
    #[error("datacenter name {0:?} must be letters, digits, `_`, `-` or `.`")]
    Datacenter(String),
    #[error("datacenter {0:?} is named twice")]
    DuplicateDatacenter(String),
    #[error(
        "consistency {0:?} must be one of ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM, LOCAL_ONE"
    )]
    Consistency(String),
    #[error("serial consistency {0:?} must be SERIAL or LOCAL_SERIAL")]
    SerialConsistency(String),
}

/// Highest replication factor accepted (a typo guard, not a Cassandra limit
/// anyone reaches).
pub const MAX_REPLICATION_FACTOR: u8 = 32;

/// The replication of chatpipe's keyspace. Written `SimpleStrategy:1` or
/// `NetworkTopologyStrategy:datacenter1=3,dc2=3` (configuration, CLI).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Replication {
    /// One replication factor for the whole cluster, ignoring datacenters
    /// (the single local node).
    Simple { replication_factor: u8 },
    /// A replication factor per datacenter (what production clusters use).
    NetworkTopology { datacenters: BTreeMap<String, u8> },
}

impl Default for Replication {
    /// `SimpleStrategy:1`, what `schemas/cql/chatpipe.cql` says.
    fn default() -> Self {
        Replication::Simple {
            replication_factor: 1,
        }
    }
}

fn parse_factor(text: &str) -> Result<u8, SettingError> {
    text.trim()
        .parse::<u8>()
        .ok()
        .filter(|factor| (1..=MAX_REPLICATION_FACTOR).contains(factor))
        .ok_or_else(|| SettingError::ReplicationFactor(text.to_owned()))
}

/// Datacenter names are spliced into CQL string literals: no quotes.
fn is_datacenter_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "_-.".contains(character))
}

impl FromStr for Replication {
    type Err = SettingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape = || SettingError::ReplicationShape(text.to_owned());
        let (class, factors) = text.trim().split_once(':').ok_or_else(shape)?;
        match class.trim() {
            "SimpleStrategy" => Ok(Replication::Simple {
                replication_factor: parse_factor(factors)?,
            }),
            "NetworkTopologyStrategy" => {
                let mut datacenters = BTreeMap::new();
                for entry in factors.split(',') {
                    let (name, factor) = entry.split_once('=').ok_or_else(shape)?;
                    let name = name.trim();
                    if !is_datacenter_name(name) {
                        return Err(SettingError::Datacenter(name.to_owned()));
                    }
                    if datacenters
                        .insert(name.to_owned(), parse_factor(factor)?)
                        .is_some()
                    {
                        return Err(SettingError::DuplicateDatacenter(name.to_owned()));
                    }
                }
                Ok(Replication::NetworkTopology { datacenters })
            }
            _ => Err(shape()),
        }
    }
}

impl TryFrom<String> for Replication {
    type Error = SettingError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replication::Simple { replication_factor } => {
                write!(formatter, "SimpleStrategy:{replication_factor}")
            }
            Replication::NetworkTopology { datacenters } => {
                formatter.write_str("NetworkTopologyStrategy:")?;
                for (index, (name, factor)) in datacenters.iter().enumerate() {
                    let separator = if index == 0 { "" } else { "," };
                    write!(formatter, "{separator}{name}={factor}")?;
                }
                Ok(())
            }
        }
    }
}

impl Replication {
    /// The CQL map of `CREATE KEYSPACE … WITH replication = …`.
    pub fn cql_map(&self) -> String {
        match self {
            Replication::Simple { replication_factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}")
            }
            Replication::NetworkTopology { datacenters } => {
                let factors: Vec<String> = datacenters
                    .iter()
                    .map(|(name, factor)| format!(", '{name}': {factor}"))
                    .collect();
                format!("{{'class': 'NetworkTopologyStrategy'{}}}", factors.concat())
            }
        }
    }

    /// Reads the `replication` map of `system_schema.keyspaces`
    /// (`class` is the strategy's full Java name there); `None` for a
    /// strategy chatpipe does not configure (`LocalStrategy`, …).
    pub fn from_schema_map<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<Self> {
        let mut class = None;
        let mut options = BTreeMap::new();
        for (key, value) in entries {
            if key == "class" {
                class = Some(value.rsplit('.').next().unwrap_or(value));
            } else {
                options.insert(key, value);
            }
        }
        match class? {
            "SimpleStrategy" => Some(Replication::Simple {
                replication_factor: parse_factor(options.get("replication_factor")?).ok()?,
            }),
            "NetworkTopologyStrategy" => {
                let mut datacenters = BTreeMap::new();
                for (name, factor) in options {
                    datacenters.insert(name.to_owned(), parse_factor(factor).ok()?);
                }
                Some(Replication::NetworkTopology { datacenters })
            }
            _ => None,
        }
    }
}

/// The consistency level of chatpipe's reads and writes, by its CQL name
/// (`LOCAL_QUORUM`; case and `-`/`_` do not matter). `ANY` is not offered:
/// it is not a read level, and it acknowledges writes no replica holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ConsistencyLevel {
    One,
    Two,
    Three,
    Quorum,
    All,
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

/// Upper case with `-` as `_`: `local-quorum` → `LOCAL_QUORUM`.
fn canonical_level_name(text: &str) -> String {
    text.trim().to_ascii_uppercase().replace('-', "_")
}

impl ConsistencyLevel {
    const ALL_LEVELS: [ConsistencyLevel; 8] = [
        ConsistencyLevel::One,
        ConsistencyLevel::Two,
        ConsistencyLevel::Three,
        ConsistencyLevel::Quorum,
        ConsistencyLevel::All,
        ConsistencyLevel::LocalQuorum,
        ConsistencyLevel::EachQuorum,
        ConsistencyLevel::LocalOne,
    ];

    /// The CQL name (`LOCAL_QUORUM`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyLevel::One => "ONE",
            ConsistencyLevel::Two => "TWO",
            ConsistencyLevel::Three => "THREE",
            ConsistencyLevel::Quorum => "QUORUM",
            ConsistencyLevel::All => "ALL",
            ConsistencyLevel::LocalQuorum => "LOCAL_QUORUM",
            ConsistencyLevel::EachQuorum => "EACH_QUORUM",
            ConsistencyLevel::LocalOne => "LOCAL_ONE",
        }
    }

    /// The driver's value.
    pub fn to_driver(self) -> Consistency {
        match self {
            ConsistencyLevel::One => Consistency::One,
            ConsistencyLevel::Two => Consistency::Two,
            ConsistencyLevel::Three => Consistency::Three,
            ConsistencyLevel::Quorum => Consistency::Quorum,
            ConsistencyLevel::All => Consistency::All,
            ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyLevel::EachQuorum => Consistency::EachQuorum,
            ConsistencyLevel::LocalOne => Consistency::LocalOne,
        }
    }
}

impl FromStr for ConsistencyLevel {
    type Err = SettingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let name = canonical_level_name(text);
        Self::ALL_LEVELS
            .into_iter()
            .find(|level| level.as_str() == name)
            .ok_or_else(|| SettingError::Consistency(text.to_owned()))
    }
}

impl TryFrom<String> for ConsistencyLevel {
    type Error = SettingError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for ConsistencyLevel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The serial consistency of lightweight transactions: `SERIAL` (a quorum
/// of all replicas) or `LOCAL_SERIAL` (of the local datacenter's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SerialConsistencyLevel {
    Serial,
    LocalSerial,
}

impl SerialConsistencyLevel {
    /// The CQL name (`LOCAL_SERIAL`).
    pub fn as_str(self) -> &'static str {
        match self {
            SerialConsistencyLevel::Serial => "SERIAL",
            SerialConsistencyLevel::LocalSerial => "LOCAL_SERIAL",
        }
    }

    /// The driver's value.
    pub fn to_driver(self) -> SerialConsistency {
        match self {
            SerialConsistencyLevel::Serial => SerialConsistency::Serial,
            SerialConsistencyLevel::LocalSerial => SerialConsistency::LocalSerial,
        }
    }
}

impl FromStr for SerialConsistencyLevel {
    type Err = SettingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match canonical_level_name(text).as_str() {
            "SERIAL" => Ok(SerialConsistencyLevel::Serial),
            "LOCAL_SERIAL" => Ok(SerialConsistencyLevel::LocalSerial),
            _ => Err(SettingError::SerialConsistency(text.to_owned())),
        }
    }
}

impl TryFrom<String> for SerialConsistencyLevel {
    type Error = SettingError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for SerialConsistencyLevel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_parses_both_strategies_and_prints_them_back() {
        let simple: Replication = "SimpleStrategy:1".parse().unwrap();
        assert_eq!(simple, Replication::default());
        assert_eq!(simple.to_string(), "SimpleStrategy:1");
        assert_eq!(
            simple.cql_map(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        let topology: Replication = " NetworkTopologyStrategy: dc2=2, datacenter1=3 "
            .parse()
            .unwrap();
        assert_eq!(
            topology,
            Replication::NetworkTopology {
                datacenters: BTreeMap::from([("datacenter1".to_owned(), 3), ("dc2".to_owned(), 2)])
            }
        );
        assert_eq!(
            topology.to_string(),
            "NetworkTopologyStrategy:datacenter1=3,dc2=2"
        );
        assert_eq!(
            topology.to_string().parse::<Replication>().unwrap(),
            topology
        );
        assert_eq!(
            topology.cql_map(),
            "{'class': 'NetworkTopologyStrategy', 'datacenter1': 3, 'dc2': 2}"
        );
    }

    #[test]
    fn bad_replication_is_refused_with_the_reason() {
        for (text, expected) in [
            ("", SettingError::ReplicationShape(String::new())),
            (
                "SimpleStrategy",
                SettingError::ReplicationShape("SimpleStrategy".into()),
            ),
            (
                "Simple:3",
                SettingError::ReplicationShape("Simple:3".into()),
            ),
            (
                "SimpleStrategy:0",
                SettingError::ReplicationFactor("0".into()),
            ),
            (
                "SimpleStrategy:three",
                SettingError::ReplicationFactor("three".into()),
            ),
            (
                "SimpleStrategy:-1",
                SettingError::ReplicationFactor("-1".into()),
            ),
            (
                "SimpleStrategy:99",
                SettingError::ReplicationFactor("99".into()),
            ),
            (
                "NetworkTopologyStrategy:",
                SettingError::ReplicationShape("NetworkTopologyStrategy:".into()),
            ),
            (
                "NetworkTopologyStrategy:dc1",
                SettingError::ReplicationShape("NetworkTopologyStrategy:dc1".into()),
            ),
            (
                "NetworkTopologyStrategy:=3",
                SettingError::Datacenter(String::new()),
            ),
            (
                "NetworkTopologyStrategy:dc'1=3",
                SettingError::Datacenter("dc'1".into()),
            ),
            (
                "NetworkTopologyStrategy:dc1=3,dc1=2",
                SettingError::DuplicateDatacenter("dc1".into()),
            ),
            (
                "NetworkTopologyStrategy:dc1=0",
                SettingError::ReplicationFactor("0".into()),
            ),
        ] {
            assert_eq!(text.parse::<Replication>(), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn replication_is_read_back_from_system_schema() {
        let simple = [
            ("class", "org.apache.cassandra.locator.SimpleStrategy"),
            ("replication_factor", "1"),
        ];
        assert_eq!(
            Replication::from_schema_map(simple),
            Some(Replication::default())
        );
        let topology = [
            (
                "class",
                "org.apache.cassandra.locator.NetworkTopologyStrategy",
            ),
            ("datacenter1", "3"),
        ];
        assert_eq!(
            Replication::from_schema_map(topology),
            Some("NetworkTopologyStrategy:datacenter1=3".parse().unwrap())
        );
        let local = [("class", "org.apache.cassandra.locator.LocalStrategy")];
        assert_eq!(Replication::from_schema_map(local), None);
    }

    #[test]
    fn consistency_levels_parse_by_cql_name() {
        assert_eq!(
            "LOCAL_QUORUM".parse::<ConsistencyLevel>(),
            Ok(ConsistencyLevel::LocalQuorum)
        );
        assert_eq!(
            " local-quorum ".parse::<ConsistencyLevel>(),
            Ok(ConsistencyLevel::LocalQuorum)
        );
        for level in ConsistencyLevel::ALL_LEVELS {
            assert_eq!(level.to_string().parse::<ConsistencyLevel>(), Ok(level));
        }
        assert_eq!(
            ConsistencyLevel::LocalQuorum.to_driver(),
            Consistency::LocalQuorum
        );
        for bad in ["", "ANY", "SERIAL", "LOCAL_SERIAL", "quorum2"] {
            assert_eq!(
                bad.parse::<ConsistencyLevel>(),
                Err(SettingError::Consistency(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(
            "serial".parse::<SerialConsistencyLevel>(),
            Ok(SerialConsistencyLevel::Serial)
        );
        assert_eq!(
            "LOCAL_SERIAL".parse::<SerialConsistencyLevel>(),
            Ok(SerialConsistencyLevel::LocalSerial)
        );
        assert_eq!(
            "LOCAL_QUORUM".parse::<SerialConsistencyLevel>(),
            Err(SettingError::SerialConsistency("LOCAL_QUORUM".into()))
        );
    }

    #[test]
    fn the_defaults_are_one_replica_and_local_quorum() {
        let config = CassandraConfig::default();
        assert_eq!(config.replication.to_string(), "SimpleStrategy:1");
        assert!(!config.alter_replication);
        assert_eq!(config.consistency, ConsistencyLevel::LocalQuorum);
        assert_eq!(
            config.serial_consistency,
            SerialConsistencyLevel::LocalSerial
        );
    }
}
