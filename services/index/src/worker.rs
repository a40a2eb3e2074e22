//! Wires one index worker: the engine client, the bulk sink, the dead-letter
//! producer and the consumer group; plus the periodic rollover check.
//!
//! Health component: `index.consumer` (Ready while consuming; Degraded while
//! a batch is being retried because the engine is down).

use std::time::Duration;

use chatpipe_kafka::consumer::{ConsumerSettings, group_consumer};
use chatpipe_kafka::{ChatProducer, DeadLetterSink, KafkaConfig, run_batches};
use chatpipe_runtime::{Health, Shutdown};
use chatpipe_search::template::{apply_template, rollover};
use chatpipe_search::{EsBulkSink, EsChangeSink, EsClient};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::config::IndexConfig;
use crate::error::IndexError;
use crate::handler::IndexHandler;
use crate::metrics::IndexMetrics;

/// The dead-letter producer lingers a little: dead letters are rare.
const DEAD_LETTER_LINGER_MS: u32 = 5;

/// A running index worker.
#[derive(Debug)]
pub struct IndexWorker {
    metrics: IndexMetrics,
    task: JoinHandle<Result<(), IndexError>>,
}

impl IndexWorker {
    /// Starts a worker on the current Tokio runtime and returns at once.
    /// Metrics go into `registry` under `chatpipe_index_`; the component
    /// `index.consumer` into `health`. It stops when `shutdown` is
    /// cancelled, after committing what it stored.
    pub fn spawn(
        config: IndexConfig,
        kafka: KafkaConfig,
        registry: &mut Registry,
        health: Health,
        shutdown: Shutdown,
    ) -> Result<Self, IndexError> {
        config.validate().map_err(IndexError::Config)?;
        let metrics = IndexMetrics::new();
        metrics.register(registry);
        let client = EsClient::new(&config.engine)?;
        let layout = config.engine.layout();
        let sink = EsBulkSink::new(
            client.clone(),
            layout.write_alias.clone(),
            config.bulk_settings(),
            metrics.bulk.clone(),
        );
        let producer = ChatProducer::new(&kafka, DEAD_LETTER_LINGER_MS)?;
        let dead_letters = DeadLetterSink::new(
            producer,
            config.topics.dead_letter.clone(),
            config.group_id.clone(),
            metrics.consumer.clone(),
        );
        let mut settings =
            ConsumerSettings::new(config.group_id.clone(), &[config.topics.messages.as_str()]);
        settings.max_batch_records = config.max_batch_records;
        settings.batch_linger = Duration::from_millis(config.batch_linger_ms);
        settings.fetch_min_bytes = config.fetch_min_bytes;
        settings.commit_interval = Duration::from_millis(config.commit_interval_ms);
        settings.initial_backoff = Duration::from_millis(config.batch_initial_backoff_ms);
        settings.max_backoff = Duration::from_millis(config.batch_max_backoff_ms);
        let consumer = group_consumer(&kafka, &settings, &metrics.consumer)?;
        let mut handler = IndexHandler {
            changes: EsChangeSink::new(
                client.clone(),
                layout.write_alias.clone(),
                layout.search_alias.clone(),
                metrics.changes.clone(),
            ),
            client: client.clone(),
            engine: config.engine.clone(),
            template_ready: false,
            sink,
            dead_letters,
            metrics: metrics.clone(),
            dedup: chatpipe_kafka::PartitionedSendDedup::new(
                &kafka,
                config.topics.messages.clone(),
                chatpipe_kafka::SendDedupSettings::with_window_ms(config.send_dedup_window_ms),
                metrics.send_dedup.clone(),
            ),
        };
        let component = health.component("index.consumer");

        if config.rollover_check_interval_ms > 0 {
            let interval = Duration::from_millis(config.rollover_check_interval_ms);
            let conditions = config.rollover_conditions();
            let rollover_shutdown = shutdown.child();
            let rollover_client = client;
            shutdown.spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = rollover_shutdown.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                    if let Err(error) = rollover(&rollover_client, &layout, &conditions).await {
                        tracing::warn!(%error, alias = %layout.write_alias, "rollover check failed");
                    }
                }
            });
        }

        tracing::info!(group = %settings.group_id, topic = %config.topics.messages, "index worker consuming");
        let consumer_metrics = metrics.consumer.clone();
        let task = shutdown.spawn({
            let shutdown = shutdown.clone();
            async move {
                // Create the aliases now, so searches find an (empty) index
                // before the first message arrives; if the engine is not up
                // yet, the first batch retries it.
                match apply_template(&handler.client, &handler.engine).await {
                    Ok(_) => handler.template_ready = true,
                    Err(error) => tracing::warn!(%error, "index template not applied yet; retrying with the first batch"),
                }
                let outcome = run_batches(
                    consumer,
                    settings,
                    handler,
                    consumer_metrics,
                    component,
                    shutdown,
                )
                .await;
                if let Err(error) = &outcome {
                    tracing::error!(%error, "index worker stopped");
                }
                outcome.map_err(IndexError::from)
            }
        });
        Ok(Self { metrics, task })
    }

    /// The worker's counters (shared handles: they keep counting).
    pub fn metrics(&self) -> &IndexMetrics {
        &self.metrics
    }

    /// Kills the worker at once, without the final commit (crash tests).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Waits for the worker to stop.
    pub async fn join(self) -> Result<(), IndexError> {
        match self.task.await {
            Ok(result) => result,
            Err(join_error) => Err(IndexError::Task(join_error.to_string())),
        }
    }
}

/// Runs an index worker until `shutdown` is cancelled (or the consumer stops
/// on a non-retriable failure).
pub async fn run(
    config: IndexConfig,
    kafka: KafkaConfig,
    registry: &mut Registry,
    health: Health,
    shutdown: Shutdown,
) -> Result<(), IndexError> {
    IndexWorker::spawn(config, kafka, registry, health, shutdown)?
        .join()
        .await
}
