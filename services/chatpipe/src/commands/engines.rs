//! Building the engine clients and shared dependencies every role needs
//! from the common flags.

use chatpipe::roles::RoleDeps;
use chatpipe::secret::{self, SecretSource, TokenOptions};
use chatpipe_cassandra::{CassandraConfig, CassandraStore};
use chatpipe_core::auth::{PushKey, TokenKeys, TokenPolicy};
use chatpipe_core::records::TopicNames;
use chatpipe_kafka::KafkaConfig;
use chatpipe_search::SearchEngineConfig;

use crate::cli::CommonArgs;

/// The token keys from `--token-secret` / `CHATPIPE_TOKEN_SECRET`, else the
/// secret file under CHATPIPE_HOME; an error (the role does not start)
/// without either. There is no built-in secret. Then the token options
/// (kid, JWKS file, issuers, audiences, lifetime) are applied.
pub fn token_keys(common: &CommonArgs) -> anyhow::Result<TokenKeys> {
    let (keys, source) =
        secret::load_token_keys(common.token_secret.as_deref(), &secret::chatpipe_home())?;
    match source {
        SecretSource::Configured => tracing::debug!("token secret from CHATPIPE_TOKEN_SECRET"),
        SecretSource::File(file) => {
            tracing::debug!(file = %file.display(), "token secret from the secret file");
        }
    }
    let options = TokenOptions {
        kid: common.token_kid.clone(),
        jwks_file: common.token_jwks_file.clone(),
        policy: TokenPolicy {
            issuers: common.token_issuer.clone(),
            audiences: common.token_audience.clone(),
            max_lifetime_secs: common.token_max_lifetime_secs,
        },
    };
    Ok(secret::configure_token_keys(keys, &options)?)
}

/// The push key: `CHATPIPE_PUSH_SECRET`'s, else derived from the token
/// secret (see `chatpipe_core::auth::PushKey`).
pub fn push_key(common: &CommonArgs, keys: &TokenKeys) -> anyhow::Result<PushKey> {
    Ok(secret::load_push_key(common.push_secret.as_deref(), keys)?)
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
        number_of_shards: common.search_shards,
        number_of_replicas: common.search_replicas,
        ..SearchEngineConfig::default()
    }
}

pub fn cassandra_config(common: &CommonArgs) -> CassandraConfig {
    CassandraConfig {
        contact_points: common.cassandra.clone(),
        keyspace: common.cassandra_keyspace.clone(),
        max_partitions_per_batch: common.cassandra_max_partitions_per_batch,
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
    let push_key = push_key(common, &token_keys)?;
    Ok(RoleDeps {
        kafka: kafka(common, "chatpipe"),
        topics: topics(common),
        store: cassandra(common).await?,
        search: search_engine_config(common),
        token_keys,
        push_key,
    })
}
