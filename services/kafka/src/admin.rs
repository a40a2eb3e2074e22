//! Small administrative calls for tools and tests: create and delete a
//! topic, read and change a topic's configs, list a consumer group's
//! members, read a topic's leaders, in-sync replicas and sizes (to pick
//! the broker a fault kills, and to check that it left and came back). The deployment's own topics are
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

/// One partition's leader and replicas, as the cluster's metadata has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplicas {
    pub partition: i32,
    /// The leader's broker id (`-1`: none).
    pub leader: i32,
    pub replicas: Vec<i32>,
    /// The in-sync replicas (ISR).
    pub in_sync: Vec<i32>,
}

/// The leader and replicas of each partition of `topic`, in partition
/// order. Blocking (a broker round trip), like [`group_member_ids`].
pub fn partition_replicas(
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<Vec<PartitionReplicas>, KafkaAdapterError> {
    let client: BaseConsumer<ChatpipeContext> = kafka
        .base()
        .create_with_context(ChatpipeContext::default())?;
    let metadata = client.fetch_metadata(Some(topic), ADMIN_TIMEOUT)?;
    let mut partitions: Vec<PartitionReplicas> = metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic)
        .flat_map(|found| found.partitions())
        .map(|partition| PartitionReplicas {
            partition: partition.id(),
            leader: partition.leader(),
            replicas: partition.replicas().to_vec(),
            in_sync: partition.isr().to_vec(),
        })
        .collect();
    partitions.sort_by_key(|partition| partition.partition);
    Ok(partitions)
}

/// The messages each partition of `topic` holds (high watermark minus
/// low watermark), by partition id. Blocking (a broker round trip per
/// partition), like [`group_member_ids`].
pub fn partition_sizes(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, KafkaAdapterError> {
    let client: BaseConsumer<ChatpipeContext> = kafka
        .base()
        .create_with_context(ChatpipeContext::default())?;
    let mut sizes = BTreeMap::new();
    for &partition in partitions {
        let (low, high) = client.fetch_watermarks(topic, partition, ADMIN_TIMEOUT)?;
        sizes.insert(partition, high - low);
    }
    Ok(sizes)
}

/// The broker that leads the most of `partitions` (the lowest id on a
/// tie), or `None` when none has a leader.
pub fn busiest_leader(partitions: &[PartitionReplicas]) -> Option<i32> {
    let mut led: BTreeMap<i32, usize> = BTreeMap::new();
    for partition in partitions.iter().filter(|partition| partition.leader >= 0) {
        *led.entry(partition.leader).or_default() += 1;
    }
    // max_by_key keeps the last maximum: iterate from the highest id so
    // that the lowest id wins a tie.
    led.into_iter()
        .rev()
        .max_by_key(|(_, count)| *count)
        .map(|(broker, _)| broker)
}

/// Whether `broker` leads none of `partitions` and is in none of their
/// in-sync replicas: what the cluster shows once it noticed the broker
/// is gone.
pub fn out_of_sync(partitions: &[PartitionReplicas], broker: i32) -> bool {
    partitions
        .iter()
        .all(|partition| partition.leader != broker && !partition.in_sync.contains(&broker))
}

/// Whether `broker` is back in every in-sync replica set it belongs to.
pub fn back_in_sync(partitions: &[PartitionReplicas], broker: i32) -> bool {
    partitions
        .iter()
        .filter(|partition| partition.replicas.contains(&broker))
        .all(|partition| partition.in_sync.contains(&broker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(partition: i32, leader: i32, in_sync: &[i32]) -> PartitionReplicas {
        PartitionReplicas {
            partition,
            leader,
            replicas: vec![1, 2, 3],
            in_sync: in_sync.to_vec(),
        }
    }

    #[test]
    fn the_busiest_leader_leads_the_most_partitions_and_ties_go_to_the_lowest_id() {
        let partitions = [
            partition(0, 2, &[2, 3, 1]),
            partition(1, 3, &[3, 1, 2]),
            partition(2, 2, &[2, 1, 3]),
            partition(3, 1, &[1, 2, 3]),
        ];
        assert_eq!(busiest_leader(&partitions), Some(2));
        assert_eq!(busiest_leader(&partitions[..2]), Some(2));
        assert_eq!(
            busiest_leader(&[partition(0, 3, &[3]), partition(1, 1, &[1])]),
            Some(1)
        );
        assert_eq!(busiest_leader(&[partition(0, -1, &[])]), None);
        assert_eq!(busiest_leader(&[]), None);
    }

    #[test]
    fn a_broker_is_out_of_sync_once_it_leads_nothing_and_is_in_no_isr() {
        let before = [partition(0, 2, &[2, 3, 1]), partition(1, 3, &[3, 1, 2])];
        assert!(!out_of_sync(&before, 2));
        // Leadership moved, but 2 is still listed in sync on partition 1.
        let moving = [partition(0, 3, &[3, 1]), partition(1, 3, &[3, 1, 2])];
        assert!(!out_of_sync(&moving, 2));
        let after = [partition(0, 3, &[3, 1]), partition(1, 3, &[3, 1])];
        assert!(out_of_sync(&after, 2));
        assert!(!back_in_sync(&after, 2));
        assert!(back_in_sync(&after, 1));
        assert!(back_in_sync(&before, 2));
    }
}
