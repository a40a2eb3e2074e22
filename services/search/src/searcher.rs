//! Runs planned searches against the search alias.

use std::time::Instant;

use chatpipe_core::ConversationId;
use chatpipe_core::store::ReadableConversation;
use chatpipe_runtime::metrics::ReasonLabel;
use elasticsearch::http::Method;
use futures::StreamExt;

use crate::client::EsClient;
use crate::config::IndexLayout;
use crate::error::SearchError;
use crate::metrics::SearchMetrics;
use crate::query::{
    PlannedRequest, SearchLimits, SearchPage, SearchParams, merge_pages, parse_hits,
    plan_search_readable,
};

/// Engine requests of one split search run at once.
const SPLIT_CONCURRENCY: usize = 4;

/// Answers searches for callers whose conversations are known.
#[derive(Debug, Clone)]
pub struct MessageSearcher {
    client: EsClient,
    search_alias: String,
    limits: SearchLimits,
    metrics: SearchMetrics,
}

impl MessageSearcher {
    pub fn new(
        client: EsClient,
        layout: &IndexLayout,
        limits: SearchLimits,
        metrics: SearchMetrics,
    ) -> Self {
        Self {
            client,
            search_alias: layout.search_alias.clone(),
            limits,
            metrics,
        }
    }

    pub fn limits(&self) -> &SearchLimits {
        &self.limits
    }

    pub fn metrics(&self) -> &SearchMetrics {
        &self.metrics
    }

    /// Searches the conversations in `caller_conversations` (the caller's
    /// memberships, which the caller of this function is responsible for),
    /// each in full.
    pub async fn search(
        &self,
        params: &SearchParams,
        caller_conversations: &[ConversationId],
    ) -> Result<SearchPage, SearchError> {
        let readable: Vec<ReadableConversation> = caller_conversations
            .iter()
            .cloned()
            .map(ReadableConversation::whole)
            .collect();
        self.search_readable(params, &readable).await
    }

    /// Searches what the caller may read: each conversation of `readable`
    /// from its visibility floor on (see
    /// [`crate::query::plan_search_readable`]).
    pub async fn search_readable(
        &self,
        params: &SearchParams,
        readable: &[ReadableConversation],
    ) -> Result<SearchPage, SearchError> {
        let started = Instant::now();
        let outcome = self.run(params, readable).await;
        self.metrics.searches.inc();
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        if let Err(error) = &outcome {
            self.metrics
                .failures
                .get_or_create(&ReasonLabel::new(error.error_code().as_str()))
                .inc();
            if !matches!(error, SearchError::Invalid(_) | SearchError::Forbidden(_)) {
                tracing::warn!(%error, "search failed");
            }
        }
        outcome
    }

    async fn run(
        &self,
        params: &SearchParams,
        readable: &[ReadableConversation],
    ) -> Result<SearchPage, SearchError> {
        let plan = plan_search_readable(params, readable, &self.limits)?;
        let sort = plan.sort;
        let pages: Vec<Result<_, SearchError>> = futures::stream::iter(plan.requests)
            .map(|request| self.run_one(request, sort))
            .buffer_unordered(SPLIT_CONCURRENCY)
            .collect()
            .await;
        let pages = pages.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(merge_pages(pages, sort, plan.limit))
    }

    async fn run_one(
        &self,
        request: PlannedRequest,
        sort: crate::query::SearchSort,
    ) -> Result<Vec<crate::query::SearchHit>, SearchError> {
        self.metrics.engine_requests.inc();
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(routing) = request.routing.as_deref() {
            query.push(("routing", routing));
        }
        let answer = self
            .client
            .request(
                Method::Post,
                &format!("/{}/_search", self.search_alias),
                &query,
                Some(&request.body),
            )
            .await?
            .into_result()?;
        if answer
            .pointer("/_shards/failed")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
            > 0
        {
            // Partial results would silently hide messages; say so instead.
            return Err(SearchError::Unavailable("some shards failed".to_owned()));
        }
        Ok(parse_hits(&answer, sort)?)
    }
}
