//! chatpipe-kafka against the real Kafka (`CHATPIPE_KAFKA`, default
//! `127.0.0.1:9092`): tails start exactly where they are told, the consumer
//! loop commits only what its handler confirmed, batches fill by linger at
//! low rates and by size under load, and long polls cost no latency.
//! Every test uses its own topics and groups.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatpipe_kafka::{
    BatchHandler, ChatProducer, ConsumerMetrics, ConsumerSettings, HandlerError, KafkaConfig,
    Record, StartAt, TailConsumer, TailEvent, TailOptions, group_consumer, run_batches,
};
use chatpipe_runtime::{Health, Shutdown};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);
const SEND_DEADLINE: Duration = Duration::from_secs(10);

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn kafka() -> KafkaConfig {
    let brokers = std::env::var("CHATPIPE_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    KafkaConfig::new(brokers, format!("kafka-test-{}", &unique()[..8]))
}

/// A fresh topic with `partitions` partitions.
async fn fresh_topic(kafka: &KafkaConfig, partitions: i32) -> String {
    let topic = format!("t{}.kafka-test", unique());
    chatpipe_kafka::admin::create_topic(kafka, &topic, partitions)
        .await
        .expect("Kafka must be reachable (topology/engines.sh up kafka)");
    topic
}

async fn produce(producer: &ChatProducer, topic: &str, key: &str, payload: &str) {
    producer
        .send_bytes(topic, key, Some(payload.as_bytes()), SEND_DEADLINE)
        .await
        .expect("produced");
}

/// Reads records (skipping end-of-partition notices) until `count` arrived.
async fn read_records(tail: &TailConsumer, count: usize) -> Vec<Record> {
    let mut records = Vec::new();
    while records.len() < count {
        let event = tokio::time::timeout(WAIT, tail.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} records", records.len()))
            .expect("tail receives");
        if let TailEvent::Record(record) = event {
            records.push(record);
        }
    }
    records
}

fn payload_text(record: &Record) -> String {
    String::from_utf8(record.payload().unwrap().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_started_at_the_end_reads_everything_produced_after_it_was_positioned() {
    let kafka = kafka();
    let topic = fresh_topic(&kafka, 3).await;
    let producer = ChatProducer::new(&kafka, 1).unwrap();
    for index in 0..6 {
        produce(
            &producer,
            &topic,
            &format!("k{index}"),
            &format!("old-{index}"),
        )
        .await;
    }
    let tail = TailConsumer::new(&kafka, "end", &topic, &TailOptions::default()).unwrap();
    let starts = tail.assign(&StartAt::End).await.unwrap();
    assert_eq!(starts.len(), 3);
    assert_eq!(starts.iter().map(|start| start.high).sum::<i64>(), 6);
    for start in &starts {
        assert_eq!(start.offset, start.high, "{start:?}");
        assert!(!start.has_backlog());
    }
    // Produced at once: a tail left at "latest" (resolved at its first
    // fetch, later) would miss some of these.
    for index in 0..6 {
        produce(
            &producer,
            &topic,
            &format!("k{index}"),
            &format!("new-{index}"),
        )
        .await;
    }
    let mut seen: Vec<String> = read_records(&tail, 6)
        .await
        .iter()
        .map(payload_text)
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..6)
            .map(|index| format!("new-{index}"))
            .collect::<Vec<_>>()
    );
    let extra = tokio::time::timeout(Duration::from_millis(700), tail.recv()).await;
    assert!(extra.is_err(), "nothing else is read: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_from_the_beginning_reads_all_and_reports_each_partition_end() {
    let kafka = kafka();
    let topic = fresh_topic(&kafka, 2).await;
    let producer = ChatProducer::new(&kafka, 1).unwrap();
    for index in 0..5 {
        produce(
            &producer,
            &topic,
            &format!("key-{index}"),
            &format!("v{index}"),
        )
        .await;
    }
    let options = TailOptions {
        report_partition_end: true,
        ..TailOptions::default()
    };
    let tail = TailConsumer::new(&kafka, "beginning", &topic, &options).unwrap();
    let starts = tail.assign(&StartAt::Beginning).await.unwrap();
    let backlog: i64 = starts.iter().map(|start| start.high - start.low).sum();
    assert_eq!(backlog, 5);
    let mut records = Vec::new();
    let mut ended = std::collections::BTreeSet::new();
    while ended.len() < starts.iter().filter(|start| start.has_backlog()).count()
        || records.len() < 5
    {
        match tokio::time::timeout(WAIT, tail.recv())
            .await
            .unwrap()
            .unwrap()
        {
            TailEvent::Record(record) => records.push(record),
            TailEvent::PartitionEnd { partition } => {
                ended.insert(partition);
            }
        }
    }
    assert_eq!(records.len(), 5);
    for record in &records {
        assert_eq!(record.topic(), topic);
        let index = payload_text(record)[1..].to_owned();
        assert_eq!(record.key_str(), Some(format!("key-{index}").as_str()));
        assert!(
            record
                .timestamp_ms()
                .is_some_and(|ms| ms > 1_600_000_000_000)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_starts_at_a_time_or_at_given_offsets() {
    let kafka = kafka();
    let topic = fresh_topic(&kafka, 1).await;
    let producer = ChatProducer::new(&kafka, 1).unwrap();
    for index in 0..3 {
        produce(&producer, &topic, "k", &format!("a{index}")).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = chatpipe_core::time::now_unix_ms() as i64;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for index in 0..2 {
        produce(&producer, &topic, "k", &format!("b{index}")).await;
    }

    let by_time = TailConsumer::new(&kafka, "time", &topic, &TailOptions::default()).unwrap();
    let starts = by_time.assign(&StartAt::Timestamp(between)).await.unwrap();
    assert_eq!(starts[0].offset, 3);
    let read: Vec<String> = read_records(&by_time, 2)
        .await
        .iter()
        .map(payload_text)
        .collect();
    assert_eq!(read, ["b0", "b1"]);

    let by_offset = TailConsumer::new(&kafka, "offsets", &topic, &TailOptions::default()).unwrap();
    by_offset
        .assign(&StartAt::Offsets(BTreeMap::from([(0, 1)])))
        .await
        .unwrap();
    let read: Vec<String> = read_records(&by_offset, 4)
        .await
        .iter()
        .map(payload_text)
        .collect();
    assert_eq!(read, ["a1", "a2", "b0", "b1"]);

    // No record that late: the tail starts at the end, and reads what
    // comes next.
    let future = TailConsumer::new(&kafka, "future", &topic, &TailOptions::default()).unwrap();
    let starts = future
        .assign(&StartAt::Timestamp(between + 3_600_000))
        .await
        .unwrap();
    assert_eq!(starts[0].offset, 5);
    produce(&producer, &topic, "k", "c0").await;
    let read: Vec<String> = read_records(&future, 1)
        .await
        .iter()
        .map(payload_text)
        .collect();
    assert_eq!(read, ["c0"]);
}

/// Confirms batches whose records all lie below `fail_from`, fails the
/// others fatally; reports every batch it was given.
struct GateHandler {
    fail_from: i64,
    seen: mpsc::Sender<Vec<i64>>,
}

impl BatchHandler for GateHandler {
    async fn handle(&mut self, batch: &[Record]) -> Result<(), HandlerError> {
        let offsets: Vec<i64> = batch.iter().map(Record::offset).collect();
        let _ = self.seen.send(offsets.clone()).await;
        if offsets.iter().any(|offset| *offset >= self.fail_from) {
            return Err(HandlerError::fatal("refused by the test"));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_only_for_batches_the_handler_confirmed() {
    let kafka = kafka();
    let topic = fresh_topic(&kafka, 1).await;
    let producer = ChatProducer::new(&kafka, 1).unwrap();
    for index in 0..10 {
        produce(&producer, &topic, "k", &format!("r{index}")).await;
    }
    let group = format!("g{}", unique());
    let mut settings = ConsumerSettings::new(group.clone(), &[topic.as_str()]);
    settings.max_batch_records = 5;
    // Longer than the test: batches are cut by size only.
    settings.batch_linger = Duration::from_secs(60);
    settings.commit_interval = Duration::from_millis(100);
    let metrics = ConsumerMetrics::new();
    let consumer = group_consumer(&kafka, &settings, &metrics).unwrap();
    let (seen_tx, mut seen) = mpsc::channel(16);
    let handler = GateHandler {
        fail_from: 5,
        seen: seen_tx,
    };
    let health = Health::new();
    let outcome = tokio::time::timeout(
        WAIT,
        run_batches(
            consumer,
            settings.clone(),
            handler,
            metrics.clone(),
            health.component("consumer"),
            Shutdown::new(),
        ),
    )
    .await
    .expect("the loop stops on the fatal failure");
    assert!(outcome.is_err());
    assert_eq!(seen.recv().await.unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!(seen.recv().await.unwrap(), vec![5, 6, 7, 8, 9]);
    assert_eq!(metrics.records.get(), 5, "only the confirmed batch counts");

    // The group resumes right after the confirmed batch: the refused one
    // was never committed, the confirmed one was.
    let again = group_consumer(&kafka, &settings, &ConsumerMetrics::new()).unwrap();
    let first = tokio::time::timeout(WAIT, again.recv())
        .await
        .expect("the group re-reads")
        .unwrap();
    assert_eq!((first.offset(), payload_text(&first)), (5, "r5".to_owned()));
}

/// Reports the size of every batch and when it arrived.
struct SizeHandler {
    sizes: mpsc::Sender<(usize, Instant)>,
}

impl BatchHandler for SizeHandler {
    async fn handle(&mut self, batch: &[Record]) -> Result<(), HandlerError> {
        let _ = self.sizes.send((batch.len(), Instant::now())).await;
        Ok(())
    }
}

/// Starts `run_batches` on `topic` with a [`SizeHandler`]; returns its
/// reports and the shutdown that stops it.
fn start_sizes(
    kafka: &KafkaConfig,
    topic: &str,
    max_batch_records: usize,
    batch_linger: Duration,
) -> (mpsc::Receiver<(usize, Instant)>, Shutdown) {
    let mut settings = ConsumerSettings::new(format!("g{}", unique()), &[topic]);
    settings.max_batch_records = max_batch_records;
    settings.batch_linger = batch_linger;
    let metrics = ConsumerMetrics::new();
    let consumer = group_consumer(kafka, &settings, &metrics).unwrap();
    let (sizes_tx, sizes) = mpsc::channel(64);
    let shutdown = Shutdown::new();
    let health = Health::new();
    tokio::spawn(run_batches(
        consumer,
        settings,
        SizeHandler { sizes: sizes_tx },
        metrics,
        health.component("consumer"),
        shutdown.clone(),
    ));
    (sizes, shutdown)
}

async fn next_size(sizes: &mut mpsc::Receiver<(usize, Instant)>) -> (usize, Instant) {
    tokio::time::timeout(WAIT, sizes.recv())
        .await
        .expect("a batch arrives")
        .expect("the loop runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_fill_by_linger_at_low_rates_and_by_size_under_load() {
    let kafka = kafka();
    let topic = fresh_topic(&kafka, 1).await;
    let producer = ChatProducer::new(&kafka, 1).unwrap();
    let (mut sizes, shutdown) = start_sizes(&kafka, &topic, 4, Duration::from_millis(400));
    // Once the group has its partition, a lone record is a batch of one.
    produce(&producer, &topic, "k", "warm-up").await;
    assert_eq!(next_size(&mut sizes).await.0, 1);

    // A trickle inside one linger shares one batch.
    for index in 0..3 {
        produce(&producer, &topic, "k", &format!("slow-{index}")).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(next_size(&mut sizes).await.0, 3);

    // A burst is cut by size, without waiting out the linger; the rest
    // waits for its linger.
    let bodies: Vec<String> = (0..10).map(|index| format!("fast-{index}")).collect();
    let burst_started = Instant::now();
    futures::future::join_all(
        bodies
            .iter()
            .map(|body| produce(&producer, &topic, "k", body)),
    )
    .await;
    let mut burst = Vec::new();
    while burst.iter().map(|(size, _)| size).sum::<usize>() < 10 {
        burst.push(next_size(&mut sizes).await);
    }
    let burst_sizes: Vec<usize> = burst.iter().map(|(size, _)| *size).collect();
    assert_eq!(burst_sizes, [4, 4, 2], "{burst_sizes:?}");
    assert!(
        burst[1].1.duration_since(burst_started) < Duration::from_millis(350),
        "full batches do not wait for the linger"
    );
    shutdown.cancel();
}

/// Records produced one at a time to an idle consumer reach its handler
/// long before a long poll would end: the broker answers a waiting fetch as
/// soon as data arrives. Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_hands_records_over_as_soon_as_they_arrive() {
    let kafka = kafka();
    let topic = fresh_topic(&kafka, 1).await;
    let producer = ChatProducer::new(&kafka, 1).unwrap();
    let (mut sizes, shutdown) = start_sizes(&kafka, &topic, 100, Duration::ZERO);
    produce(&producer, &topic, "k", "warm-up").await;
    next_size(&mut sizes).await;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    for index in 0..8 {
        // Idle long enough that the consumer's fetch is waiting at the
        // broker when the record arrives.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let sent = Instant::now();
        produce(&producer, &topic, "k", &format!("r{index}")).await;
        let (_, delivered) = next_size(&mut sizes).await;
        latencies
            .lock()
            .unwrap()
            .push(delivered.duration_since(sent).as_secs_f64() * 1000.0);
    }
    let mut sorted = latencies.lock().unwrap().clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "produce→handler ms, idle consumer, long poll {:?}: {sorted:.1?}",
        chatpipe_kafka::config::LONG_POLL
    );
    assert!(
        sorted[sorted.len() / 2] < 150.0,
        "median {:.1} ms: records waited for the long poll",
        sorted[sorted.len() / 2]
    );
    shutdown.cancel();
}
