//! Small administrative calls for tools and tests: create and delete a
//! topic, read and change a topic's configs, list a consumer group's
//! members. The deployment's own topics are
//! applied from data by [`crate::topology`].

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::context::ChatpipeContext;
use crate::error::KafkaAdapterError;
use crate::topology::{CurrentConfig, alter_keeping_others, current_configs};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

fn admin_client(kafka: &KafkaConfig) -> Result<AdminClient<ChatpipeContext>, KafkaAdapterError> {
    Ok(kafka
        .base()
        .create_with_context(ChatpipeContext::default())?)
}

/// Creates `topic` with `partitions` partitions and replication factor 1
/// (tools and tests on a single broker). An existing topic is left alone.
pub async fn create_topic(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaAdapterError> {
    let admin = admin_client(kafka)?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for result in admin.create_topics([&new_topic], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaAdapterError::Topology(format!(
                    "creating {name}: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Deletes `topics` (a missing one is no error).
pub async fn delete_topics(kafka: &KafkaConfig, topics: &[&str]) -> Result<(), KafkaAdapterError> {
    let admin = admin_client(kafka)?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    for result in admin.delete_topics(topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => {
                return Err(KafkaAdapterError::Topology(format!(
                    "deleting {name}: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Every config of `topic`, by key, as the broker reports it.
pub async fn topic_configs(
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<BTreeMap<String, CurrentConfig>, KafkaAdapterError> {
    let admin = admin_client(kafka)?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| KafkaAdapterError::Topology(format!("describing {topic}: no answer")))?
        .map_err(|code| KafkaAdapterError::Topology(format!("describing {topic}: {code}")))?;
    Ok(current_configs(resource))
}

/// Sets `changes` on `topic`, keeping its other configs (what an operator
/// does with `kafka-configs --alter --add-config`).
pub async fn set_topic_configs(
    kafka: &KafkaConfig,
    topic: &str,
    changes: &[(&str, &str)],
) -> Result<(), KafkaAdapterError> {
    let current = topic_configs(kafka, topic).await?;
    let admin = admin_client(kafka)?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let changes: BTreeMap<&str, &str> = changes.iter().copied().collect();
    alter_keeping_others(&admin, &options, topic, &current, &changes).await
}

/// The member ids of consumer group `group`, as its coordinator sees them.
/// Blocking (a broker round trip): call it off the async threads in
/// services; tests may call it directly.
pub fn group_member_ids(
    kafka: &KafkaConfig,
    group: &str,
) -> Result<Vec<String>, KafkaAdapterError> {
    let client: BaseConsumer<ChatpipeContext> = kafka
        .base()
        .create_with_context(ChatpipeContext::default())?;
    let list = client.fetch_group_list(Some(group), ADMIN_TIMEOUT)?;
    Ok(list
        .groups()
        .iter()
        .flat_map(|info| info.members().iter().map(|member| member.id().to_owned()))
        .collect())
}
