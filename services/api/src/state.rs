//! What every handler shares.

use std::sync::Arc;

use chatpipe_cassandra::CassandraStore;
use chatpipe_core::auth::TokenKeys;
use chatpipe_core::records::TopicNames;
use chatpipe_kafka::ChatProducer;

use crate::auth::{UserRateLimiter, user_rate_limiter};
use crate::config::ApiConfig;
use crate::member_cap::MemberCap;
use crate::metrics::ApiMetrics;

/// The engines and keys the API role needs.
#[derive(Debug, Clone)]
pub struct ApiDeps {
    /// Conversations, membership and history.
    pub store: CassandraStore,
    /// Publishes membership records (idempotent, `acks=all`).
    pub producer: ChatProducer,
    /// The deployment's topic names (membership records go to
    /// `topics.membership`).
    pub topics: TopicNames,
    /// Verifies bearer tokens.
    pub token_keys: TokenKeys,
}

/// The state handlers receive (cheap to clone).
#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<ApiConfig>,
    pub store: CassandraStore,
    pub producer: ChatProducer,
    pub topics: Arc<TopicNames>,
    pub token_keys: TokenKeys,
    pub metrics: ApiMetrics,
    pub rate_limiter: Arc<UserRateLimiter>,
    /// Member counts of recently joined conversations, for the member cap.
    pub member_cap: MemberCap,
}

chatpipe_core::debug_fields!(ApiState { config });

impl ApiState {
    pub fn new(config: ApiConfig, deps: ApiDeps, metrics: ApiMetrics) -> Self {
        let rate_limiter = user_rate_limiter(config.rate_limit_per_second, config.rate_limit_burst);
        let member_cap = MemberCap::new(config.max_members_per_conversation);
        Self {
            member_cap,
            config: Arc::new(config),
            store: deps.store,
            producer: deps.producer,
            topics: Arc::new(deps.topics),
            token_keys: deps.token_keys,
            metrics,
            rate_limiter: Arc::new(rate_limiter),
        }
    }
}
