//! The fault runner's view of a replicated Kafka (`chatpipe-loadgen
//! kafka-leader` and `kafka-isr`, called by `benches/run.sh`): which broker
//! leads the busiest partitions of a topic (the one a `kafka-leader` fault
//! kills), and when a killed broker has left every in-sync replica set
//! (ISR) of the topic, and when it is back in all of them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatpipe_kafka::KafkaConfig;
use chatpipe_kafka::admin::{self, PartitionReplicas};
use serde::Serialize;

/// How often [`watch_isr`] reads the topic's metadata.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// One partition: its replicas as the metadata has them, and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionState {
    pub partition: i32,
    /// The leader's broker id (`-1`: none).
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub in_sync: Vec<i32>,
    /// Messages the partition holds (high minus low watermark).
    pub messages: i64,
}

/// The partitions of `topic` with their sizes. Blocking.
pub fn snapshot(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<PartitionState>> {
    let replicas = admin::partition_replicas(kafka, topic)?;
    anyhow::ensure!(!replicas.is_empty(), "topic {topic} has no partitions");
    let ids: Vec<i32> = replicas
        .iter()
        .map(|partition| partition.partition)
        .collect();
    let sizes = admin::partition_sizes(kafka, topic, &ids)?;
    Ok(replicas
        .into_iter()
        .map(|partition| PartitionState {
            messages: sizes.get(&partition.partition).copied().unwrap_or(0),
            partition: partition.partition,
            leader: partition.leader,
            replicas: partition.replicas,
            in_sync: partition.in_sync,
        })
        .collect())
}

/// What one broker leads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Led {
    pub partitions: usize,
    pub messages: i64,
}

/// The broker a `kafka-leader` fault kills, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderPick {
    pub broker: i32,
    pub partitions_led: usize,
    pub messages_led: i64,
    pub partitions: usize,
    pub messages: i64,
    /// What every leader leads (brokers excluded included).
    pub leaders: BTreeMap<i32, Led>,
    pub excluded: Vec<i32>,
}

/// The broker leading the most messages of `partitions` (then the most
/// partitions, then the lowest id), brokers in `exclude` left out (a
/// second fault kills another broker than the first); `None` when no
/// other broker leads anything.
pub fn busiest_leader(partitions: &[PartitionState], exclude: &[i32]) -> Option<LeaderPick> {
    let mut leaders: BTreeMap<i32, Led> = BTreeMap::new();
    for partition in partitions.iter().filter(|partition| partition.leader >= 0) {
        let led = leaders.entry(partition.leader).or_default();
        led.partitions += 1;
        led.messages += partition.messages;
    }
    let (&broker, led) = leaders
        .iter()
        .filter(|(broker, _)| !exclude.contains(broker))
        // Ascending ids: on a full tie the later (higher) id must lose.
        .max_by(|(a_id, a), (b_id, b)| {
            (a.messages, a.partitions, std::cmp::Reverse(**a_id)).cmp(&(
                b.messages,
                b.partitions,
                std::cmp::Reverse(**b_id),
            ))
        })?;
    Some(LeaderPick {
        broker,
        partitions_led: led.partitions,
        messages_led: led.messages,
        partitions: partitions.len(),
        messages: partitions.iter().map(|partition| partition.messages).sum(),
        leaders: leaders.clone(),
        excluded: exclude.to_vec(),
    })
}

/// The ISR sizes of a topic at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IsrSizes {
    /// Smallest and largest ISR of any partition.
    pub smallest: usize,
    pub largest: usize,
    /// Partitions whose ISR is smaller than their replica set.
    pub under_replicated: usize,
    pub without_leader: usize,
}

/// The ISR sizes of `partitions`.
pub fn isr_sizes(partitions: &[PartitionReplicas]) -> IsrSizes {
    let sizes = partitions.iter().map(|partition| partition.in_sync.len());
    IsrSizes {
        smallest: sizes.clone().min().unwrap_or(0),
        largest: sizes.max().unwrap_or(0),
        under_replicated: partitions
            .iter()
            .filter(|partition| partition.in_sync.len() < partition.replicas.len())
            .count(),
        without_leader: partitions
            .iter()
            .filter(|partition| partition.leader < 0)
            .count(),
    }
}

/// What [`watch_isr`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IsrWait {
    /// The broker leads nothing and is in no ISR of the topic.
    Out,
    /// The broker is back in every ISR it belongs to, and no partition of
    /// the topic is under-replicated.
    In,
}

/// Whether `partitions` show what `wait` waits for, for `broker`.
pub fn isr_reached(partitions: &[PartitionReplicas], broker: i32, wait: IsrWait) -> bool {
    !partitions.is_empty()
        && match wait {
            IsrWait::Out => admin::out_of_sync(partitions, broker),
            IsrWait::In => {
                admin::back_in_sync(partitions, broker)
                    && isr_sizes(partitions).under_replicated == 0
            }
        }
}

/// What [`watch_isr`] saw.
#[derive(Debug, Clone, Serialize)]
pub struct IsrWatch {
    pub topic: String,
    pub broker: i32,
    pub until: IsrWait,
    pub reached: bool,
    /// Seconds from the start of the watch until it was reached.
    pub after_s: Option<f64>,
    /// The smallest ISR of any partition, and the most partitions
    /// under-replicated at once, over the whole watch.
    pub smallest_isr_seen: Option<usize>,
    pub most_under_replicated_seen: usize,
    pub most_without_leader_seen: usize,
    /// The ISR sizes at the last read.
    pub last: Option<IsrSizes>,
    pub polls: u32,
    /// Metadata reads that failed (the cluster was electing, say).
    pub failed_reads: u32,
}

/// Reads `topic`'s metadata every 250 ms until `wait` holds for `broker`
/// or `timeout` passed. Blocking.
pub fn watch_isr(
    kafka: &KafkaConfig,
    topic: &str,
    broker: i32,
    wait: IsrWait,
    timeout: Duration,
) -> IsrWatch {
    let started = Instant::now();
    let mut watch = IsrWatch {
        topic: topic.to_owned(),
        broker,
        until: wait,
        reached: false,
        after_s: None,
        smallest_isr_seen: None,
        most_under_replicated_seen: 0,
        most_without_leader_seen: 0,
        last: None,
        polls: 0,
        failed_reads: 0,
    };
    loop {
        watch.polls += 1;
        match admin::partition_replicas(kafka, topic) {
            Ok(partitions) if !partitions.is_empty() => {
                let sizes = isr_sizes(&partitions);
                watch.smallest_isr_seen = Some(
                    watch
                        .smallest_isr_seen
                        .map_or(sizes.smallest, |seen| seen.min(sizes.smallest)),
                );
                watch.most_under_replicated_seen =
                    watch.most_under_replicated_seen.max(sizes.under_replicated);
                watch.most_without_leader_seen =
                    watch.most_without_leader_seen.max(sizes.without_leader);
                watch.last = Some(sizes);
                if isr_reached(&partitions, broker, wait) {
                    watch.reached = true;
                    watch.after_s = Some(round_tenths(started.elapsed()));
                    return watch;
                }
            }
            Ok(_) | Err(_) => watch.failed_reads += 1,
        }
        if started.elapsed() >= timeout {
            return watch;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

fn round_tenths(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(partition: i32, leader: i32, messages: i64) -> PartitionState {
        PartitionState {
            partition,
            leader,
            replicas: vec![1, 2, 3],
            in_sync: vec![1, 2, 3],
            messages,
        }
    }

    fn replicas(partition: i32, leader: i32, in_sync: &[i32]) -> PartitionReplicas {
        PartitionReplicas {
            partition,
            leader,
            replicas: vec![1, 2, 3],
            in_sync: in_sync.to_vec(),
        }
    }

    #[test]
    fn the_busiest_leader_leads_the_most_messages_not_the_most_partitions() {
        let partitions = [
            state(0, 1, 10),
            state(1, 1, 10),
            state(2, 2, 50),
            state(3, 3, 5),
        ];
        let pick = busiest_leader(&partitions, &[]).expect("a leader");
        assert_eq!(pick.broker, 2);
        assert_eq!((pick.partitions_led, pick.messages_led), (1, 50));
        assert_eq!((pick.partitions, pick.messages), (4, 75));
        assert_eq!(
            pick.leaders.get(&1),
            Some(&Led {
                partitions: 2,
                messages: 20
            })
        );
    }

    #[test]
    fn an_excluded_broker_is_never_picked_and_ties_go_to_more_partitions_then_the_lowest_id() {
        let partitions = [state(0, 2, 50), state(1, 3, 20), state(2, 1, 20)];
        assert_eq!(busiest_leader(&partitions, &[2]).map(|p| p.broker), Some(1));
        let partitions = [state(0, 3, 10), state(1, 3, 10), state(2, 1, 20)];
        assert_eq!(busiest_leader(&partitions, &[]).map(|p| p.broker), Some(3));
        assert_eq!(busiest_leader(&partitions, &[1, 3]), None);
        assert_eq!(busiest_leader(&[state(0, -1, 9)], &[]), None);
    }

    #[test]
    fn out_means_the_broker_left_every_isr_and_in_means_every_isr_is_full_again() {
        let full = [replicas(0, 2, &[2, 3, 1]), replicas(1, 3, &[3, 1, 2])];
        let shrunk = [replicas(0, 3, &[3, 1]), replicas(1, 3, &[3, 1])];
        let partly_back = [replicas(0, 3, &[3, 1, 2]), replicas(1, 3, &[3, 1])];
        assert!(!isr_reached(&full, 2, IsrWait::Out));
        assert!(isr_reached(&shrunk, 2, IsrWait::Out));
        assert!(!isr_reached(&shrunk, 2, IsrWait::In));
        assert!(!isr_reached(&partly_back, 2, IsrWait::In));
        assert!(isr_reached(&full, 2, IsrWait::In));
        assert!(!isr_reached(&[], 2, IsrWait::Out));
        let sizes = isr_sizes(&partly_back);
        assert_eq!((sizes.smallest, sizes.largest), (2, 3));
        assert_eq!((sizes.under_replicated, sizes.without_leader), (1, 0));
    }
}
