//! Where the engine is and how chatpipe names its indices there.

use serde::Deserialize;

/// The default index prefix: template `chat-messages`, pattern
/// `chat-messages-*`, write alias `chat-messages`, search alias
/// `chat-messages-search`, first index `chat-messages-000001`.
pub const DEFAULT_INDEX_PREFIX: &str = "chat-messages";

/// Connection and layout settings of the full-text engine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchEngineConfig {
    /// Base URL of the Elasticsearch/OpenSearch HTTP API.
    pub url: String,
    /// Prefix of every index, alias and template name (tests use a unique
    /// one per run; it must not start with another deployment's prefix
    /// followed by `-`, or the template patterns would overlap).
    pub index_prefix: String,
    /// Deadline of one HTTP request to the engine.
    pub request_timeout_ms: u64,
    /// Primary shards of each new backing index.
    pub number_of_shards: u32,
    /// Replicas of each shard (0 on a single node; 1 or more in production).
    pub number_of_replicas: u32,
}

impl Default for SearchEngineConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9200".to_owned(),
            index_prefix: DEFAULT_INDEX_PREFIX.to_owned(),
            request_timeout_ms: 10_000,
            // One node, one shard per backing index: each shard costs a
            // refresh and a bulk sub-request of its own, and messages are
            // routed by conversation, so a search reads one shard anyway.
            // Rollover (see `template`) keeps each index's shard ~50 GB.
            number_of_shards: 1,
            number_of_replicas: 0,
        }
    }
}

impl SearchEngineConfig {
    pub fn layout(&self) -> IndexLayout {
        IndexLayout::new(&self.index_prefix)
    }
}

/// Every name derived from the index prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexLayout {
    /// Name of the index template.
    pub template_name: String,
    /// The template's index pattern (`<prefix>-*`).
    pub index_pattern: String,
    /// The alias writes go to; exactly one backing index is its write index.
    pub write_alias: String,
    /// The alias searches go to; every backing index joins it through the
    /// template.
    pub search_alias: String,
    /// The first backing index, created by `apply_template` when none exists.
    pub first_index: String,
}

impl IndexLayout {
    pub fn new(prefix: &str) -> Self {
        Self {
            template_name: prefix.to_owned(),
            index_pattern: format!("{prefix}-*"),
            write_alias: prefix.to_owned(),
            search_alias: format!("{prefix}-search"),
            first_index: format!("{prefix}-000001"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let layout = SearchEngineConfig::default().layout();
        assert_eq!(layout.write_alias, "chat-messages");
        assert_eq!(layout.index_pattern, "chat-messages-*");
        assert_eq!(layout.search_alias, "chat-messages-search");
        assert_eq!(layout.first_index, "chat-messages-000001");
    }
}
