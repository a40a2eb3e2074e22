//! Building the engine clients and shared dependencies every role needs
//! from the common flags.

use chatpipe::roles::RoleDeps;
use chatpipe::secret::{self, SecretSource};
use chatpipe_cassandra::{CassandraConfig, CassandraStore};
use chatpipe_core::auth::TokenKeys;
use chatpipe_core::records::TopicNames;
use chatpipe_kafka::KafkaConfig;
use chatpipe_search::SearchEngineConfig;

use crate::cli::CommonArgs;

/// The token keys from `--token-secret` / `CHATPIPE_TOKEN_SECRET`, else the
/// secret file under CHATPIPE_HOME; an error (the role does not start)
/// without either. There is no built-in secret.
pub fn token_keys(common: &CommonArgs) -> anyhow::Result<TokenKeys> {
    let (keys, source) =
        secret::load_token_keys(common.token_secret.as_deref(), &secret::chatpipe_home())?;
    match source {
        SecretSource::Configured => tracing::debug!("token secret from CHATPIPE_TOKEN_SECRET"),
        SecretSource::File(file) => {
            tracing::debug!(file = %file.display(), "token secret from the secret file");
        }
    }
    Ok(keys)
}

pub fn kafka(common: &CommonArgs, client_id: &str) -> KafkaConfig {
    KafkaConfig::new(common.kafka_brokers.clone(), client_id)
}

pub fn topics(common: &CommonArgs) -> TopicNames {
    TopicNames::with_prefix(&common.topic_prefix)
}

pub fn search_engine_config(common: &CommonArgs) -> SearchEngineConfig {
    SearchEngineConfig {
        url: common.elasticsearch_url.clone(),
        index_prefix: common.index_prefix.clone(),
        ..SearchEngineConfig::default()
    }
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

/// Everything the roles share. The token secret is checked first, so a
/// role without one refuses to start before touching any engine.
pub async fn role_deps(common: &CommonArgs) -> anyhow::Result<RoleDeps> {
    let token_keys = token_keys(common)?;
    Ok(RoleDeps {
        kafka: kafka(common, "chatpipe"),
        topics: topics(common),
        store: cassandra(common).await?,
        search: search_engine_config(common),
        token_keys,
    })
}
