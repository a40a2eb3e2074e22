//! Kafka topics as data, and an idempotent apply.
//!
//! The source of truth is `topology/kafka/topics.json` (embedded in the
//! binary). `apply` creates missing topics, grows partition counts that are
//! below the file's (Kafka cannot shrink them; a lower number is reported,
//! not applied), and sets each listed config of an existing topic only where
//! it differs ([`decide_config`]). Running it twice changes nothing the
//! second time.
//!
//! Existing topics belong to their operators as much as to this file. So
//! `apply` never lowers a durability or retention setting an operator
//! raised ([`NEVER_LOWERED`]: `min.insync.replicas`, `retention.ms`,
//! `retention.bytes`, `delete.retention.ms`, whether raised on the topic or
//! in the broker's configuration; Kafka's built-in defaults count as no
//! one's choice), never changes an existing topic's replication (raising it
//! is a partition reassignment, an operator's job; a factor below the
//! file's is reported), and keeps every other dynamic config of the topic
//! it does not list: Kafka's `AlterConfigs` replaces a topic's whole dynamic
//! config, so the request carries the topic's current dynamic entries with
//! only the differing keys changed. Each change and each kept value is
//! logged and listed in the [`ApplyReport`].
//!
//! Replication follows the cluster: the file's factors (1) are for one
//! broker; on a cluster of [`REPLICATED_BROKERS`] or more, `apply` creates
//! every topic with at least [`REPLICATED_FACTOR`] copies and
//! `min.insync.replicas` [`REPLICATED_MIN_INSYNC`] ([`TopicsFile::for_cluster`]):
//! with the producers' `acks=all`, an acked record is then on two brokers,
//! and one broker may die without refusing writes. On an existing topic the
//! file's `min.insync.replicas` is capped at the topic's own replication
//! ([`min_insync_within`]): a topic of one copy with a minimum of two would
//! refuse every write.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::FromClientConfig;
use serde::Deserialize;

use crate::config::KafkaConfig;
use crate::error::KafkaAdapterError;

/// The embedded default topology file.
pub const DEFAULT_TOPICS_JSON: &str = include_str!("../../../topology/kafka/topics.json");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    #[serde(rename = "_comment", default)]
    pub comment: Option<String>,
    pub topics: Vec<TopicSpec>,
}

/// One topic: name, partitions, replication and configs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    /// What the records are keyed by (documentation).
    pub key: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: BTreeMap<String, String>,
}

impl TopicsFile {
    pub fn parse(json: &str) -> Result<Self, KafkaAdapterError> {
        serde_json::from_str(json).map_err(|error| KafkaAdapterError::Topology(error.to_string()))
    }

    /// The same topics under `prefix` (for isolated test deployments).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        for topic in &mut self.topics {
            topic.name = format!("{prefix}{}", topic.name);
        }
        self
    }

    pub fn topic_mut(&mut self, name: &str) -> Option<&mut TopicSpec> {
        self.topics.iter_mut().find(|topic| topic.name == name)
    }
}

/// A cluster of this many brokers or more gets replicated topics.
pub const REPLICATED_BROKERS: usize = 3;
/// The least replication factor of a topic on a replicated cluster.
pub const REPLICATED_FACTOR: i32 = 3;
/// The least `min.insync.replicas` of a topic on a replicated cluster.
pub const REPLICATED_MIN_INSYNC: i32 = 2;

const MIN_INSYNC: &str = "min.insync.replicas";

impl TopicsFile {
    /// The topics as `apply` wants them on a cluster of `brokers` live
    /// brokers: as the file says below [`REPLICATED_BROKERS`], else with a
    /// replication factor of at least [`REPLICATED_FACTOR`] and
    /// `min.insync.replicas` of at least [`REPLICATED_MIN_INSYNC`] (higher
    /// values in the file are kept).
    pub fn for_cluster(mut self, brokers: usize) -> Self {
        if brokers < REPLICATED_BROKERS {
            return self;
        }
        for topic in &mut self.topics {
            topic.replication_factor = topic.replication_factor.max(REPLICATED_FACTOR);
            let listed = topic
                .configs
                .get(MIN_INSYNC)
                .and_then(|value| value.trim().parse::<i32>().ok());
            if listed.is_none_or(|value| value < REPLICATED_MIN_INSYNC) {
                topic
                    .configs
                    .insert(MIN_INSYNC.to_owned(), REPLICATED_MIN_INSYNC.to_string());
            }
        }
        self
    }
}

/// The `min.insync.replicas` to want of an existing topic of `replication`
/// copies when the file wants `wanted`: `None` to keep `wanted`, else the
/// replication itself (Kafka refuses `acks=all` writes to a topic whose
/// minimum exceeds its copies, so wanting more would stop the topic).
pub fn min_insync_within(wanted: &str, replication: i32) -> Option<String> {
    let wanted: i32 = wanted.trim().parse().ok()?;
    (replication > 0 && wanted > replication).then(|| replication.to_string())
}

/// What `apply` did, for the operator and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Live brokers of the cluster, which decided the replication
    /// ([`TopicsFile::for_cluster`]).
    pub brokers: usize,
    pub created: Vec<String>,
    pub partitions_grown: Vec<String>,
    /// Topics whose configs were changed.
    pub configs_changed: Vec<String>,
    /// Each key set on an existing topic: `topic: key=new (was old)`.
    pub config_changes: Vec<String>,
    /// Each listed key left as the operator raised it:
    /// `topic: key=current (file: wanted)`.
    pub configs_kept: Vec<String>,
    pub warnings: Vec<String>,
}

/// Config keys whose value an operator may raise above the file's (more
/// durability, longer retention) and `apply` then keeps.
pub const NEVER_LOWERED: [&str; 4] = [
    "min.insync.replicas",
    "retention.ms",
    "retention.bytes",
    "delete.retention.ms",
];

/// A topic config as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentConfig {
    /// The effective value (`None` for a sensitive one).
    pub value: Option<String>,
    /// Set on the topic itself (a dynamic topic config), rather than
    /// inherited from the broker or Kafka's defaults.
    pub set_on_topic: bool,
    /// Kafka's built-in default, which no operator chose.
    pub built_in_default: bool,
}

/// What `apply` does with one listed config key of an existing topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigDecision {
    /// Set on the topic with the file's value already.
    Unchanged,
    /// Not set on the topic, or set to another value: set it to the file's.
    Set,
    /// An operator raised it (on the topic or broker-wide) above the file's
    /// value: keep it.
    KeepRaised,
}

/// A [`NEVER_LOWERED`] value as a number to compare; `-1` (no limit) is
/// the largest of all.
fn magnitude(key: &str, value: &str) -> Option<i128> {
    let number: i128 = value.trim().parse().ok()?;
    let unlimited = number < 0 && (key == "retention.ms" || key == "retention.bytes");
    Some(if unlimited { i128::MAX } else { number })
}

/// Decides one key (pure; see the module documentation).
pub fn decide_config(key: &str, wanted: &str, current: Option<&CurrentConfig>) -> ConfigDecision {
    let Some(current) = current else {
        return ConfigDecision::Set;
    };
    let value = current.value.as_deref();
    if NEVER_LOWERED.contains(&key)
        && !current.built_in_default
        && let Some(value) = value
        && let (Some(have), Some(want)) = (magnitude(key, value), magnitude(key, wanted))
        && have > want
    {
        return ConfigDecision::KeepRaised;
    }
    if current.set_on_topic && value == Some(wanted) {
        ConfigDecision::Unchanged
    } else {
        ConfigDecision::Set
    }
}

impl ApplyReport {
    pub fn changed_anything(&self) -> bool {
        !(self.created.is_empty()
            && self.partitions_grown.is_empty()
            && self.configs_changed.is_empty())
    }
}

/// The current configs of `described`, by key.
pub(crate) fn current_configs(
    described: rdkafka::admin::ConfigResource,
) -> BTreeMap<String, CurrentConfig> {
    described
        .entries
        .into_iter()
        .map(|entry| {
            (
                entry.name,
                CurrentConfig {
                    value: entry.value,
                    set_on_topic: matches!(entry.source, ConfigSource::DynamicTopic),
                    built_in_default: matches!(entry.source, ConfigSource::Default),
                },
            )
        })
        .collect()
}

/// Sets `changes` on `topic` and keeps its other dynamic configs:
/// `AlterConfigs` replaces a topic's whole dynamic config, so the request
/// carries what the topic has now (`current`) with only `changes` applied.
pub(crate) async fn alter_keeping_others<C: rdkafka::client::ClientContext + 'static>(
    admin: &AdminClient<C>,
    options: &AdminOptions,
    topic: &str,
    current: &BTreeMap<String, CurrentConfig>,
    changes: &BTreeMap<&str, &str>,
) -> Result<(), KafkaAdapterError> {
    let mut whole: BTreeMap<&str, &str> = current
        .iter()
        .filter(|(_, config)| config.set_on_topic)
        .filter_map(|(key, config)| Some((key.as_str(), config.value.as_deref()?)))
        .collect();
    whole.extend(changes.iter().map(|(key, value)| (*key, *value)));
    let alter = whole.iter().fold(
        rdkafka::admin::AlterConfig::new(ResourceSpecifier::Topic(topic)),
        |alter, (key, value)| alter.set(key, value),
    );
    for result in admin.alter_configs([&alter], options).await? {
        result.map_err(|(_, code)| {
            KafkaAdapterError::Topology(format!("configuring {topic}: {code}"))
        })?;
    }
    Ok(())
}

/// Applies `file` to the cluster.
pub async fn apply(
    kafka: &KafkaConfig,
    file: &TopicsFile,
) -> Result<ApplyReport, KafkaAdapterError> {
    let admin: AdminClient<DefaultClientContext> = AdminClient::from_config(&kafka.base())?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(15))?;
    let brokers = metadata.brokers().len();
    let file = &file.clone().for_cluster(brokers);
    let existing: BTreeMap<String, i32> = metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| (topic.name().to_owned(), topic.partitions().len() as i32))
        .collect();
    let mut report = ApplyReport {
        brokers,
        ..ApplyReport::default()
    };

    let missing: Vec<&TopicSpec> = file
        .topics
        .iter()
        .filter(|spec| !existing.contains_key(&spec.name))
        .collect();
    if !missing.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|spec| {
                spec.configs.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(spec.replication_factor),
                    ),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        for result in admin.create_topics(new_topics.iter(), &options).await? {
            match result {
                Ok(name) => report.created.push(name),
                Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => report
                    .warnings
                    .push(format!("{name} was created concurrently")),
                Err((name, code)) => {
                    return Err(KafkaAdapterError::Topology(format!(
                        "creating {name}: {code}"
                    )));
                }
            }
        }
    }

    for spec in &file.topics {
        let Some(current) = existing.get(&spec.name) else {
            continue;
        };
        if spec.partitions > *current {
            let grow = NewPartitions::new(&spec.name, spec.partitions as usize);
            for result in admin.create_partitions([&grow], &options).await? {
                result.map_err(|(name, code)| {
                    KafkaAdapterError::Topology(format!("growing {name}: {code}"))
                })?;
            }
            report.partitions_grown.push(spec.name.clone());
        } else if spec.partitions < *current {
            report.warnings.push(format!(
                "{} has {current} partitions, more than the {} asked: Kafka cannot shrink a topic",
                spec.name, spec.partitions
            ));
        }
    }

    let existing_specs: Vec<&TopicSpec> = file
        .topics
        .iter()
        .filter(|spec| existing.contains_key(&spec.name))
        .collect();
    let mut replications: BTreeMap<&str, i32> = BTreeMap::new();
    for spec in &existing_specs {
        let replication = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == spec.name)
            .and_then(|topic| topic.partitions().first())
            .map(|partition| partition.replicas().len() as i32);
        let Some(replication) = replication else {
            continue;
        };
        replications.insert(&spec.name, replication);
        if replication < spec.replication_factor {
            report.warnings.push(format!(
                "{} has replication factor {replication}, below the {} asked: apply never changes an existing topic's replication (reassign its partitions to raise it)",
                spec.name, spec.replication_factor
            ));
        }
    }
    if !existing_specs.is_empty() {
        let resources: Vec<ResourceSpecifier<'_>> = existing_specs
            .iter()
            .map(|spec| ResourceSpecifier::Topic(&spec.name))
            .collect();
        let described = admin.describe_configs(resources.iter(), &options).await?;
        for (spec, description) in existing_specs.iter().zip(described) {
            let resource = description.map_err(|code| {
                KafkaAdapterError::Topology(format!("describing {}: {code}", spec.name))
            })?;
            let current = current_configs(resource);
            let replication = replications.get(spec.name.as_str()).copied();
            let wanted_configs: Vec<(&str, String)> = spec
                .configs
                .iter()
                .map(|(key, listed)| {
                    let capped = (key == MIN_INSYNC)
                        .then(|| min_insync_within(listed, replication?))
                        .flatten();
                    if let Some(capped) = &capped {
                        report.warnings.push(format!(
                            "{}: {key}={capped}, not {listed}: the topic has only {capped} replicas",
                            spec.name
                        ));
                    }
                    (key.as_str(), capped.unwrap_or_else(|| listed.clone()))
                })
                .collect();
            let mut changes: BTreeMap<&str, &str> = BTreeMap::new();
            for (key, wanted) in &wanted_configs {
                let (key, wanted) = (*key, wanted.as_str());
                let now = current.get(key);
                let shown = now
                    .and_then(|config| config.value.as_deref())
                    .unwrap_or("unset");
                match decide_config(key, wanted, now) {
                    ConfigDecision::Unchanged => {}
                    ConfigDecision::Set => {
                        tracing::info!(topic = %spec.name, key = %key, from = shown, to = %wanted, "topic config set");
                        report
                            .config_changes
                            .push(format!("{}: {key}={wanted} (was {shown})", spec.name));
                        changes.insert(key, wanted);
                    }
                    ConfigDecision::KeepRaised => {
                        tracing::info!(topic = %spec.name, key = %key, kept = shown, file = %wanted, "topic config raised by an operator, kept");
                        report
                            .configs_kept
                            .push(format!("{}: {key}={shown} (file: {wanted})", spec.name));
                    }
                }
            }
            if changes.is_empty() {
                continue;
            }
            alter_keeping_others(&admin, &options, &spec.name, &current, &changes).await?;
            report.configs_changed.push(spec.name.clone());
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_topology_parses_and_names_every_topic() {
        let file = TopicsFile::parse(DEFAULT_TOPICS_JSON).unwrap();
        let names: Vec<&str> = file
            .topics
            .iter()
            .map(|topic| topic.name.as_str())
            .collect();
        use chatpipe_core::records::topics;
        for expected in [
            topics::MESSAGES,
            topics::EVENTS,
            topics::MEMBERSHIP,
            topics::SESSIONS,
            topics::DEAD_LETTER,
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from topics.json"
            );
        }
        let sessions = file
            .topics
            .iter()
            .find(|topic| topic.name == topics::SESSIONS)
            .unwrap();
        assert_eq!(
            sessions.configs.get("cleanup.policy").map(String::as_str),
            Some("compact")
        );
    }

    #[test]
    fn only_what_differs_is_set_and_raised_durability_or_retention_is_kept() {
        let on_topic = |value: &str| CurrentConfig {
            value: Some(value.to_owned()),
            set_on_topic: true,
            built_in_default: false,
        };
        let inherited = |value: &str| CurrentConfig {
            value: Some(value.to_owned()),
            set_on_topic: false,
            built_in_default: false,
        };
        let kafka_default = |value: &str| CurrentConfig {
            value: Some(value.to_owned()),
            set_on_topic: false,
            built_in_default: true,
        };
        use ConfigDecision::{KeepRaised, Set, Unchanged};
        let cases = [
            // Missing, or inherited from the broker: set (pinned on the topic).
            ("retention.ms", "3600000", None, Set),
            ("retention.ms", "3600000", Some(inherited("3600000")), Set),
            ("cleanup.policy", "compact", Some(inherited("delete")), Set),
            // Equal: nothing to do.
            (
                "retention.ms",
                "3600000",
                Some(on_topic("3600000")),
                Unchanged,
            ),
            (
                "cleanup.policy",
                "delete",
                Some(on_topic("delete")),
                Unchanged,
            ),
            // Another value of a key without a direction: the file wins.
            ("cleanup.policy", "delete", Some(on_topic("compact")), Set),
            ("segment.ms", "600000", Some(on_topic("900000")), Set),
            // Raised by an operator, on the topic or broker-wide: kept.
            ("min.insync.replicas", "1", Some(on_topic("2")), KeepRaised),
            ("min.insync.replicas", "1", Some(inherited("2")), KeepRaised),
            // Kafka's own default is nobody's choice: the file's value wins.
            (
                "retention.ms",
                "3600000",
                Some(kafka_default("604800000")),
                Set,
            ),
            (
                "retention.ms",
                "3600000",
                Some(on_topic("86400000")),
                KeepRaised,
            ),
            ("retention.ms", "3600000", Some(on_topic("-1")), KeepRaised),
            ("retention.bytes", "1000", Some(on_topic("-1")), KeepRaised),
            (
                "delete.retention.ms",
                "3600000",
                Some(on_topic("7200000")),
                KeepRaised,
            ),
            // Below the file's: raised to it.
            ("min.insync.replicas", "2", Some(on_topic("1")), Set),
            ("retention.ms", "604800000", Some(on_topic("3600000")), Set),
            ("retention.ms", "-1", Some(on_topic("3600000")), Set),
            // Unreadable numbers are not taken as raised.
            ("retention.ms", "3600000", Some(on_topic("soon")), Set),
        ];
        for (key, wanted, current, expected) in cases {
            assert_eq!(
                decide_config(key, wanted, current.as_ref()),
                expected,
                "{key}: file {wanted}, topic {current:?}"
            );
        }
    }

    #[test]
    fn one_broker_keeps_the_files_replication_and_three_or_more_get_rf_3_and_min_isr_2() {
        let file = TopicsFile::parse(DEFAULT_TOPICS_JSON).unwrap();
        for brokers in [0, 1, 2] {
            let same = file.clone().for_cluster(brokers);
            for (topic, original) in same.topics.iter().zip(&file.topics) {
                assert_eq!(topic.replication_factor, original.replication_factor);
                assert_eq!(topic.configs, original.configs, "{brokers} brokers");
            }
        }
        assert!(
            file.topics
                .iter()
                .all(|topic| topic.replication_factor == 1)
        );
        for brokers in [3, 5] {
            let replicated = file.clone().for_cluster(brokers);
            for topic in &replicated.topics {
                assert_eq!(topic.replication_factor, 3, "{}", topic.name);
                assert_eq!(
                    topic.configs.get("min.insync.replicas").map(String::as_str),
                    Some("2"),
                    "{}",
                    topic.name
                );
            }
            // Only replication changes: the other configs are the file's.
            for (topic, original) in replicated.topics.iter().zip(&file.topics) {
                let others = |configs: &BTreeMap<String, String>| {
                    let mut configs = configs.clone();
                    configs.remove("min.insync.replicas");
                    configs
                };
                assert_eq!(others(&topic.configs), others(&original.configs));
            }
        }
    }

    #[test]
    fn a_file_asking_for_more_than_the_replicated_floor_keeps_it() {
        let mut file = TopicsFile::parse(DEFAULT_TOPICS_JSON).unwrap();
        file.topics[0].replication_factor = 5;
        file.topics[0]
            .configs
            .insert("min.insync.replicas".into(), "3".into());
        file.topics[1].configs.remove("min.insync.replicas");
        file.topics[2]
            .configs
            .insert("min.insync.replicas".into(), "lots".into());
        let replicated = file.for_cluster(3);
        assert_eq!(replicated.topics[0].replication_factor, 5);
        assert_eq!(replicated.topics[0].configs["min.insync.replicas"], "3");
        // Unlisted or unreadable: the floor.
        assert_eq!(replicated.topics[1].configs["min.insync.replicas"], "2");
        assert_eq!(replicated.topics[2].configs["min.insync.replicas"], "2");
    }

    #[test]
    fn the_wanted_min_insync_of_an_existing_topic_never_exceeds_its_replicas() {
        // A topic of one copy created before the cluster grew: wanting 2
        // would refuse every acks=all write, so 1 is wanted.
        assert_eq!(min_insync_within("2", 1), Some("1".to_owned()));
        assert_eq!(min_insync_within("3", 2), Some("2".to_owned()));
        // Within the replicas: the file's value.
        assert_eq!(min_insync_within("2", 3), None);
        assert_eq!(min_insync_within("2", 2), None);
        assert_eq!(min_insync_within("1", 1), None);
        // Unknown replication or an unreadable value: left to decide_config.
        assert_eq!(min_insync_within("2", 0), None);
        assert_eq!(min_insync_within("many", 1), None);
    }
}
