//! # chatpipe-search
//!
//! The one place chatpipe talks to the full-text engine (Elasticsearch 8 or
//! OpenSearch 2, through the `elasticsearch` crate's transport). Only the API
//! the two share is used: `_index_template`, aliases, `_rollover`, `_bulk`,
//! `_search` with `search_after` and highlights, `_refresh`.
//!
//! Place in the pipeline: the `index` role (consumer group on
//! `chat.messages`) writes documents through [`EsBulkSink`]; the `api` role
//! answers `GET /v1/search` through [`MessageSearcher`].
//!
//! Layout:
//! - [`config`]: [`SearchEngineConfig`] and the [`IndexLayout`] (index,
//!   alias and template names derived from one configurable prefix).
//! - [`client`]: [`EsClient`], a thin JSON/NDJSON transport that turns
//!   every failure into an [`EngineError`] saying whether it is retriable.
//! - [`template`]: the index template (`schemas/elasticsearch/`), the
//!   idempotent [`template::apply_template`] and [`template::rollover`].
//! - [`document`]: the search document of a message, a pure mapping.
//! - [`bulk`]: NDJSON `_bulk` bodies and per-item results (pure), and
//!   [`EsBulkSink`], which retries retriable items and hands rejected ones
//!   back to its caller for dead-lettering.
//! - [`changes`]: edits and deletes of indexed messages, one `_bulk`
//!   request by document id per round, by query through the search alias
//!   only for documents of older backing indices ([`EsChangeSink`]).
//! - [`query`]: the search request as a pure function of the caller's
//!   conversations and parameters (authorization is a filter inside the
//!   query), opaque cursors, and the merge of split queries.
//! - [`searcher`]: [`MessageSearcher`], which runs a planned search.
//!
//! Delivery semantics: the document id is the message id and the routing key
//! is the conversation id, so re-indexing a re-delivered record overwrites
//! the same document (exactly-once effect under at-least-once delivery,
//! within one backing index; see [`template`] for rollover). Edits and
//! deletes are applied in partition order after the documents of the
//! messages before them, so a replay converges to the same documents.

pub mod bulk;
pub mod changes;
pub mod client;
pub mod config;
pub mod document;
pub mod error;
pub mod metrics;
pub mod query;
pub mod searcher;
pub mod template;

pub use bulk::{BulkDoc, BulkReport, EsBulkSink, ItemFailure};
pub use changes::EsChangeSink;
pub use client::EsClient;
pub use config::{IndexLayout, SearchEngineConfig};
pub use document::MessageDocument;
pub use error::{EngineError, SearchError};
pub use metrics::{BulkMetrics, ChangeMetrics, SearchMetrics};
pub use query::{Cursor, SearchHit, SearchLimits, SearchPage, SearchParams, SearchSort};
pub use searcher::MessageSearcher;
