//! `chatpipe topology apply`: Kafka topics, the Cassandra schema and the
//! search index template, each idempotent.

use chatpipe_kafka::topology::{DEFAULT_TOPICS_JSON, TopicsFile};

use crate::cli::{CommonArgs, TopologyArgs};
use crate::commands::engines;

pub async fn run(common: &CommonArgs, args: &TopologyArgs) -> anyhow::Result<()> {
    apply(common, args).await
}

pub async fn apply(common: &CommonArgs, args: &TopologyArgs) -> anyhow::Result<()> {
    let mut file = TopicsFile::parse(DEFAULT_TOPICS_JSON)?;
    if let Some(messages) = file.topic_mut(chatpipe_core::records::topics::MESSAGES) {
        if let Some(partitions) = args.messages_partitions {
            messages.partitions = partitions;
        }
        if let Some(retention) = args.messages_retention_ms {
            messages
                .configs
                .insert("retention.ms".into(), retention.to_string());
        }
    }
    let file = file.with_prefix(&common.topic_prefix);
    let kafka = engines::kafka(common, "chatpipe-topology");
    let report = chatpipe_kafka::topology::apply(&kafka, &file).await?;
    // On three or more brokers the topics were wanted with RF 3 and
    // min.insync.replicas 2 (TopicsFile::for_cluster).
    tracing::info!(brokers = report.brokers, created = ?report.created, grown = ?report.partitions_grown, configured = ?report.config_changes, kept = ?report.configs_kept, "kafka topics applied");
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    let store = engines::cassandra(common).await?;
    let schema = store.apply_schema().await?;
    tracing::info!(?schema, "cassandra schema applied");
    let engine = engines::search_engine_config(common);
    let client = chatpipe_search::EsClient::new(&engine)?;
    let template = chatpipe_search::template::apply_template(&client, &engine).await?;
    tracing::info!(?template, "search index template applied");
    Ok(())
}
