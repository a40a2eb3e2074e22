//! The index template, the write/search aliases, and rollover.
//!
//! ## Layout (prefix `chat-messages` by default)
//!
//! - index template `chat-messages` for the pattern `chat-messages-*`
//!   (`schemas/elasticsearch/chat-messages.template.json`): settings,
//!   analyzers, the mapping and the search alias;
//! - backing indices `chat-messages-000001`, `-000002`, …;
//! - write alias `chat-messages`: exactly one backing index is its
//!   `is_write_index`; the indexer writes only through it
//!   (`require_alias=true`, so a missing alias never auto-creates a stray
//!   index with a guessed mapping);
//! - search alias `chat-messages-search`: every backing index, added by the
//!   template when the index is created; searches read only through it.
//!
//! One Lucene index (one shard) holds at most ~2^31 documents, so a chat
//! history cannot live in one index forever. New backing indices are made by
//! **rollover**: [`rollover`] asks the engine to roll the write alias over
//! when any condition holds (`max_docs`, `max_size`, `max_age`); the engine
//! creates `…-00000N+1` from the template, moves `is_write_index` to it, and
//! the template adds it to the search alias. Run it periodically (the index
//! role does, see `chatpipe-index`); it is a no-op while no condition holds,
//! and engine-neutral (no ILM/ISM, which differ between the engines).
//!
//! Caveat: the document id (message id) is unique per backing index. A
//! record re-delivered *after* a rollover is written to the new write index
//! while the first copy stays in the old one; search de-duplicates hits by
//! message id within a page (see `query::merge_pages`). Re-deliveries come
//! from the uncommitted tail of a partition (seconds), and rollovers happen
//! days apart, so this is rare.
//!
//! Edits and deletes go by id through the write alias, so they reach a
//! message of the current write index directly; a message of an older
//! backing index comes back missing and is changed by query through the
//! search alias instead (see [`crate::changes`]).

use elasticsearch::http::Method;
use serde_json::{Value, json};

use crate::client::{EsClient, error_type_and_reason};
use crate::config::{IndexLayout, SearchEngineConfig};
use crate::error::EngineError;

/// The template as published in `schemas/elasticsearch/`.
pub const TEMPLATE_JSON: &str =
    include_str!("../../../schemas/elasticsearch/chat-messages.template.json");

/// The template body for `config`: the published template with the
/// deployment's names, shard and replica counts. Pure.
pub fn index_template_body(config: &SearchEngineConfig) -> Value {
    let layout = config.layout();
    let mut template: Value =
        serde_json::from_str(TEMPLATE_JSON).expect("the embedded template is valid JSON");
    template["index_patterns"] = json!([layout.index_pattern]);
    template["template"]["aliases"] = json!({ layout.search_alias.clone(): {} });
    let index_settings = &mut template["template"]["settings"]["index"];
    index_settings["number_of_shards"] = json!(config.number_of_shards.max(1));
    index_settings["number_of_replicas"] = json!(config.number_of_replicas);
    template
}

/// What [`apply_template`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateOutcome {
    /// The template was (re)written and the first backing index created.
    CreatedFirstIndex(String),
    /// The template was (re)written; the write alias already existed.
    AliasExisted,
}

/// Puts the index template (overwriting it: the code's template is the
/// truth; existing indices keep their mapping until the next rollover) and
/// creates the first backing index with the write alias if there is none.
/// Idempotent, and safe to run concurrently from several processes.
pub async fn apply_template(
    client: &EsClient,
    config: &SearchEngineConfig,
) -> Result<TemplateOutcome, EngineError> {
    let layout = config.layout();
    client
        .request(
            Method::Put,
            &format!("/_index_template/{}", layout.template_name),
            &[],
            Some(&index_template_body(config)),
        )
        .await?
        .into_result()?;
    if write_alias_exists(client, &layout).await? {
        return Ok(TemplateOutcome::AliasExisted);
    }
    let created = client
        .request(
            Method::Put,
            &format!("/{}", layout.first_index),
            &[],
            Some(&json!({ "aliases": { layout.write_alias.clone(): { "is_write_index": true } } })),
        )
        .await?;
    if created.is_success() {
        tracing::info!(index = %layout.first_index, alias = %layout.write_alias, "created the first backing index");
        return Ok(TemplateOutcome::CreatedFirstIndex(layout.first_index));
    }
    let (kind, reason) = error_type_and_reason(&created.body);
    if kind.contains("already_exists") && write_alias_exists(client, &layout).await? {
        // Another process created it meanwhile.
        return Ok(TemplateOutcome::AliasExisted);
    }
    Err(EngineError::from_status(created.status, &kind, &reason))
}

async fn write_alias_exists(client: &EsClient, layout: &IndexLayout) -> Result<bool, EngineError> {
    let answer = client
        .request(
            Method::Get,
            &format!("/_alias/{}", layout.write_alias),
            &[],
            None,
        )
        .await?;
    match answer.status {
        200 => Ok(true),
        404 => Ok(false),
        _ => answer.into_result().map(|_| true),
    }
}

/// When [`rollover`] should start a new backing index (any condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloverConditions {
    /// Documents in the current write index (primaries).
    pub max_docs: Option<u64>,
    /// Primary store size, in the engine's notation (`"50gb"`).
    pub max_size: Option<String>,
    /// Age of the current write index (`"30d"`).
    pub max_age: Option<String>,
}

impl Default for RolloverConditions {
    /// One shard (the default layout) of at most 200 M documents, far
    /// below Lucene's ~2^31, and ~50 GB, the size engines recommend per
    /// shard. With more shards an index rolls over with smaller shards,
    /// which is only safer.
    fn default() -> Self {
        Self {
            max_docs: Some(200_000_000),
            max_size: Some("50gb".to_owned()),
            max_age: None,
        }
    }
}

/// What the engine did on a rollover request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloverOutcome {
    pub rolled_over: bool,
    pub old_index: String,
    pub new_index: String,
}

/// Rolls the write alias over to a new backing index if any of
/// `conditions` holds (all `None`: unconditionally).
pub async fn rollover(
    client: &EsClient,
    layout: &IndexLayout,
    conditions: &RolloverConditions,
) -> Result<RolloverOutcome, EngineError> {
    let mut wanted = serde_json::Map::new();
    if let Some(max_docs) = conditions.max_docs {
        wanted.insert("max_docs".to_owned(), json!(max_docs));
    }
    if let Some(max_size) = &conditions.max_size {
        wanted.insert("max_size".to_owned(), json!(max_size));
    }
    if let Some(max_age) = &conditions.max_age {
        wanted.insert("max_age".to_owned(), json!(max_age));
    }
    let body = if wanted.is_empty() {
        json!({})
    } else {
        json!({ "conditions": wanted })
    };
    let answer = client
        .request(
            Method::Post,
            &format!("/{}/_rollover", layout.write_alias),
            &[],
            Some(&body),
        )
        .await?
        .into_result()?;
    let text = |field: &str| {
        answer
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let outcome = RolloverOutcome {
        rolled_over: answer
            .get("rolled_over")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        old_index: text("old_index"),
        new_index: text("new_index"),
    };
    if outcome.rolled_over {
        tracing::info!(old = %outcome.old_index, new = %outcome.new_index, "rolled the write alias over");
    }
    Ok(outcome)
}

/// The backing indices of the deployment (by the template's pattern).
pub async fn backing_indices(
    client: &EsClient,
    layout: &IndexLayout,
) -> Result<Vec<String>, EngineError> {
    let answer = client
        .request(
            Method::Get,
            &format!("/{}/_alias", layout.index_pattern),
            &[],
            None,
        )
        .await?
        .into_result()?;
    let mut names: Vec<String> = answer
        .as_object()
        .map(|indices| indices.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

/// Deletes the deployment's backing indices (by explicit name: Elasticsearch 8
/// refuses wildcard deletes) and its template. For tests and teardown.
pub async fn delete_deployment(client: &EsClient, layout: &IndexLayout) -> Result<(), EngineError> {
    let indices = backing_indices(client, layout).await?;
    if !indices.is_empty() {
        client
            .request(
                Method::Delete,
                &format!("/{}", indices.join(",")),
                &[],
                None,
            )
            .await?
            .into_result()?;
    }
    let deleted = client
        .request(
            Method::Delete,
            &format!("/_index_template/{}", layout.template_name),
            &[],
            None,
        )
        .await?;
    if deleted.status != 404 {
        deleted.into_result()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_takes_the_deployment_names() {
        let config = SearchEngineConfig {
            index_prefix: "t1-chat-messages".to_owned(),
            number_of_shards: 1,
            ..SearchEngineConfig::default()
        };
        let body = index_template_body(&config);
        assert_eq!(body["index_patterns"], json!(["t1-chat-messages-*"]));
        assert_eq!(
            body["template"]["aliases"],
            json!({"t1-chat-messages-search": {}})
        );
        assert_eq!(
            body["template"]["settings"]["index"]["number_of_shards"],
            json!(1)
        );
        let mappings = &body["template"]["mappings"];
        assert_eq!(mappings["_routing"]["required"], json!(true));
        assert_eq!(mappings["properties"]["message_id"]["type"], json!("long"));
        assert_eq!(
            mappings["properties"]["body"]["fields"]["cjk"]["analyzer"],
            json!("chat_cjk")
        );
    }
}
