//! Building the engine clients every role needs from the common flags.

use chatpipe_cassandra::{CassandraConfig, CassandraStore};
use chatpipe_core::auth::{DEVELOPMENT_SECRET, TokenKeys};
use chatpipe_core::records::TopicNames;
use chatpipe_kafka::KafkaConfig;

use crate::cli::CommonArgs;

pub fn token_keys(common: &CommonArgs) -> TokenKeys {
    match &common.token_secret {
        Some(secret) if !secret.is_empty() => TokenKeys::from_secret(secret.as_bytes()),
        _ => {
            tracing::warn!("CHATPIPE_TOKEN_SECRET is not set: using the development secret");
            TokenKeys::from_secret(DEVELOPMENT_SECRET.as_bytes())
        }
    }
}

pub fn kafka(common: &CommonArgs, client_id: &str) -> KafkaConfig {
    KafkaConfig::new(common.kafka_brokers.clone(), client_id)
}

pub fn topics(common: &CommonArgs) -> TopicNames {
    TopicNames::with_prefix(&common.topic_prefix)
}

pub fn cassandra_config(common: &CommonArgs) -> CassandraConfig {
    CassandraConfig {
        contact_points: common.cassandra.clone(),
        keyspace: common.cassandra_keyspace.clone(),
        ..CassandraConfig::default()
    }
}

pub async fn cassandra(common: &CommonArgs) -> anyhow::Result<CassandraStore> {
    let config = cassandra_config(common);
    CassandraStore::connect(&config).await.map_err(|error| {
        anyhow::anyhow!(
            "connecting to Cassandra at {:?}: {error}",
            config.contact_points
        )
    })
}
