//! Kafka topics as data, and an idempotent apply.
//!
//! The source of truth is `topology/kafka/topics.json` (embedded in the
//! binary). `apply` creates missing topics, grows partition counts that are
//! below the file's (Kafka cannot shrink them; a lower number is reported,
//! not applied), and sets each topic's listed configs. Running it twice
//! changes nothing the second time.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
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

/// What `apply` did, for the operator and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub partitions_grown: Vec<String>,
    pub configs_changed: Vec<String>,
    pub warnings: Vec<String>,
}

impl ApplyReport {
    pub fn changed_anything(&self) -> bool {
        !(self.created.is_empty()
            && self.partitions_grown.is_empty()
            && self.configs_changed.is_empty())
    }
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
    let existing: BTreeMap<String, i32> = metadata
        .topics()
        .iter()
        .filter(|topic| topic.error().is_none())
        .map(|topic| (topic.name().to_owned(), topic.partitions().len() as i32))
        .collect();
    let mut report = ApplyReport::default();

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
            let differs = spec.configs.iter().any(|(key, wanted)| {
                resource.get(key).and_then(|entry| entry.value.as_deref()) != Some(wanted.as_str())
            });
            if differs {
                // AlterConfigs (non-incremental) replaces the topic's whole
                // dynamic config with the file's: the file is the truth.
                let alter = spec.configs.iter().fold(
                    AlterConfig::new(ResourceSpecifier::Topic(&spec.name)),
                    |alter, (key, value)| alter.set(key, value),
                );
                for result in admin.alter_configs([&alter], &options).await? {
                    result.map_err(|(_, code)| {
                        KafkaAdapterError::Topology(format!("configuring {}: {code}", spec.name))
                    })?;
                }
                report.configs_changed.push(spec.name.clone());
            }
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
}
