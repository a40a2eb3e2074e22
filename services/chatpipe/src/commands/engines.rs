//! Building the engine clients and shared dependencies every role needs
//! from the common flags.

use chatpipe::jwks::{self, JwksUrlConfig};
use chatpipe::roles::RoleDeps;
use chatpipe::secret::{self, SecretSource, TokenOptions};
use chatpipe_cassandra::{CassandraConfig, CassandraStore};
use chatpipe_core::auth::{PushKey, TokenKeys, TokenPolicy};
use chatpipe_core::records::TopicNames;
use chatpipe_kafka::KafkaConfig;
use chatpipe_runtime::Shutdown;
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
        replication: common.cassandra_replication.clone(),
        alter_replication: common.cassandra_alter_replication,
        consistency: common.cassandra_consistency,
        serial_consistency: common.cassandra_serial_consistency,
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
/// role without one refuses to start before touching any engine; then the
/// JWKS URL, when one is set, is fetched (unreachable or invalid: the role
/// does not start) and kept current until `root` is cancelled.
pub async fn role_deps(common: &CommonArgs, root: &Shutdown) -> anyhow::Result<RoleDeps> {
    let token_keys = token_keys(common)?;
    let push_key = push_key(common, &token_keys)?;
    let (token_keys, jwks) = match jwks_url_config(common) {
        Some(config) => {
            let (keys, metrics) = jwks::start(token_keys, &config, root).await?;
            (keys, Some(metrics))
        }
        None => (token_keys, None),
    };
    Ok(RoleDeps {
        kafka: kafka(common, "chatpipe"),
        topics: topics(common),
        store: cassandra(common).await?,
        search: search_engine_config(common),
        token_keys,
        push_key,
        jwks,
    })
}

/// The JWKS URL's settings, when `--token-jwks-url` is set and not empty.
pub fn jwks_url_config(common: &CommonArgs) -> Option<JwksUrlConfig> {
    let url = common.token_jwks_url.as_deref()?.trim();
    (!url.is_empty()).then(|| JwksUrlConfig {
        url: url.to_owned(),
        refresh_interval_ms: common.token_jwks_refresh_interval_ms,
        unknown_kid_refetch_interval_ms: common.token_jwks_unknown_kid_refetch_interval_ms,
        ..JwksUrlConfig::new(url)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn search_shards_and_replicas_reach_the_template_config() {
        let cli = Cli::try_parse_from(["chatpipe", "index"]).unwrap();
        let config = search_engine_config(&cli.common);
        assert_eq!((config.number_of_shards, config.number_of_replicas), (1, 0));
        let cli = Cli::try_parse_from([
            "chatpipe",
            "index",
            "--search-shards",
            "6",
            "--search-replicas",
            "1",
        ])
        .unwrap();
        let config = search_engine_config(&cli.common);
        assert_eq!((config.number_of_shards, config.number_of_replicas), (6, 1));
        assert!(Cli::try_parse_from(["chatpipe", "index", "--search-shards", "0"]).is_err());
    }

    #[test]
    fn cassandra_replication_and_consistency_reach_the_store_config() {
        use chatpipe_cassandra::{ConsistencyLevel, Replication, SerialConsistencyLevel};
        let cli = Cli::try_parse_from(["chatpipe", "persist"]).unwrap();
        let config = cassandra_config(&cli.common);
        assert_eq!(config.replication, Replication::default());
        assert!(!config.alter_replication);
        assert_eq!(config.consistency, ConsistencyLevel::LocalQuorum);
        assert_eq!(
            config.serial_consistency,
            SerialConsistencyLevel::LocalSerial
        );
        let cli = Cli::try_parse_from([
            "chatpipe",
            "persist",
            "--cassandra-replication",
            "NetworkTopologyStrategy:datacenter1=3",
            "--cassandra-alter-replication",
            "--cassandra-consistency",
            "quorum",
            "--cassandra-serial-consistency",
            "SERIAL",
        ])
        .unwrap();
        let config = cassandra_config(&cli.common);
        assert_eq!(
            config.replication.to_string(),
            "NetworkTopologyStrategy:datacenter1=3"
        );
        assert!(config.alter_replication);
        assert_eq!(config.consistency, ConsistencyLevel::Quorum);
        assert_eq!(config.serial_consistency, SerialConsistencyLevel::Serial);
        for bad in [
            ["--cassandra-replication", "SimpleStrategy:0"],
            ["--cassandra-replication", "NetworkTopologyStrategy"],
            ["--cassandra-consistency", "ANY"],
            ["--cassandra-serial-consistency", "LOCAL_QUORUM"],
        ] {
            let parsed = Cli::try_parse_from(["chatpipe", "persist", bad[0], bad[1]]);
            assert!(parsed.is_err(), "{bad:?} must be refused");
        }
    }
}
