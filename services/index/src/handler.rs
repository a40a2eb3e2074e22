//! The consumer group's batch handler: decode, drop retries of earlier
//! sends (the partition-order rule shared with fan-out and persist, see
//! [`PartitionedSendDedup`]; change records are not sends), bulk-index,
//! apply the batch's edits and deletes, dead-letter.
//!
//! The documents of a batch are written before its changes: a message's
//! record always precedes its changes in the partition, so no document is
//! written over a later change to it, and a change by id (see
//! `chatpipe_search::changes`) finds the document of a message of the same
//! batch without a refresh.

use std::time::Instant;

use chatpipe_core::records::{
    MessageChangeRecord, MessageRecord, MessagesTopicRecord, decode_messages_record,
};
use chatpipe_kafka::consumer::{BatchHandler, HandlerError};
use chatpipe_kafka::{DeadLetterSink, PartitionedSendDedup, Record};
use chatpipe_search::template::apply_template;
use chatpipe_search::{
    BulkDoc, EsBulkSink, EsChangeSink, EsClient, MessageDocument, SearchEngineConfig,
};

use crate::metrics::IndexMetrics;

/// A batch split into documents to index and records to dead-letter. Pure.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DecodedBatch {
    pub docs: Vec<BulkDoc>,
    /// For each document, its record.
    pub records: Vec<MessageRecord>,
    /// For each document, the index of its record in the batch.
    pub origins: Vec<usize>,
    /// Edits and deletes, in batch order, with their index in the batch.
    pub changes: Vec<(usize, MessageChangeRecord)>,
    /// Records that are not a message record: (index in the batch, why).
    pub undecodable: Vec<(usize, String)>,
}

/// Decodes the payloads of a batch (`None`: a tombstone). Pure.
pub(crate) fn decode_batch<'a>(
    payloads: impl IntoIterator<Item = Option<&'a [u8]>>,
) -> DecodedBatch {
    let mut decoded = DecodedBatch::default();
    for (position, payload) in payloads.into_iter().enumerate() {
        let Some(bytes) = payload else {
            decoded.undecodable.push((
                position,
                "empty payload (tombstone) on the messages topic".to_owned(),
            ));
            continue;
        };
        match decode_messages_record(bytes) {
            Ok(MessagesTopicRecord::Change(change)) => decoded.changes.push((position, change)),
            Ok(MessagesTopicRecord::Message(record)) => {
                decoded
                    .docs
                    .push(BulkDoc::from_document(&MessageDocument::from_record(
                        &record,
                    )));
                decoded.records.push(record);
                decoded.origins.push(position);
            }
            Err(error) => decoded.undecodable.push((position, error.to_string())),
        }
    }
    decoded
}

pub(crate) struct IndexHandler {
    pub client: EsClient,
    pub changes: EsChangeSink,
    pub engine: SearchEngineConfig,
    pub template_ready: bool,
    pub sink: EsBulkSink,
    pub dead_letters: DeadLetterSink,
    pub metrics: IndexMetrics,
    pub dedup: PartitionedSendDedup,
}

impl IndexHandler {
    async fn dead_letter(&self, message: &Record, reason: &str) -> Result<(), HandlerError> {
        self.dead_letters
            .publish(message, reason)
            .await
            .map_err(|error| HandlerError::retriable(format!("dead-letter publish: {error}")))
    }
}

impl BatchHandler for IndexHandler {
    async fn handle(&mut self, batch: &[Record]) -> Result<(), HandlerError> {
        let started = Instant::now();
        if !self.template_ready {
            // The write alias must exist before the first write
            // (`require_alias`); the engine may still be starting.
            apply_template(&self.client, &self.engine)
                .await
                .map_err(|error| {
                    HandlerError::retriable(format!("applying the index template: {error}"))
                })?;
            self.template_ready = true;
        }
        let mut decoded = decode_batch(batch.iter().map(|message| message.payload()));
        // Judged in batch order; undecodable records only move the
        // partition's expected offset on.
        let mut doc_at: Vec<Option<usize>> = vec![None; batch.len()];
        for (doc, origin) in decoded.origins.iter().enumerate() {
            doc_at[*origin] = Some(doc);
        }
        let mut keep = vec![true; decoded.docs.len()];
        for (message, doc) in batch.iter().zip(&doc_at) {
            let Some(doc) = doc else {
                self.dedup.skip(message.partition(), message.offset());
                continue;
            };
            let verdict = self
                .dedup
                .judge(
                    message.partition(),
                    message.offset(),
                    &decoded.records[*doc],
                )
                .await?;
            keep[*doc] = !verdict.is_duplicate();
        }
        if keep.contains(&false) {
            let mut kept = keep.iter();
            decoded
                .docs
                .retain(|_| *kept.next().expect("one flag per doc"));
            let mut kept = keep.iter();
            decoded
                .origins
                .retain(|_| *kept.next().expect("one flag per doc"));
        }
        // Every engine failure is retried: a wrong request would fail the
        // same way forever, but so would a stopped role, and retrying keeps
        // the worker visible as degraded and self-heals the transient ones.
        let report = self
            .sink
            .write(&decoded.docs)
            .await
            .map_err(|error| HandlerError::retriable(format!("bulk indexing: {error}")))?;
        let changes: Vec<MessageChangeRecord> = decoded
            .changes
            .iter()
            .map(|(_, change)| change.clone())
            .collect();
        let applied = self
            .changes
            .apply(&changes)
            .await
            .map_err(|error| HandlerError::retriable(format!("applying changes: {error}")))?;
        self.metrics.changes_applied.inc_by(applied);
        for (position, reason) in &decoded.undecodable {
            self.dead_letter(&batch[*position], reason).await?;
            self.metrics.undecodable.inc();
        }
        for failure in &report.rejected {
            let origin = decoded.origins[failure.position];
            self.dead_letter(
                &batch[origin],
                &format!("rejected by the search engine: {failure}"),
            )
            .await?;
            self.metrics.rejected_documents.inc();
        }
        self.metrics
            .batch_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_core::{ConversationId, MessageId};

    #[test]
    fn batches_split_into_documents_and_poison() {
        let record = MessageRecord::builder(
            MessageId::from_u64(5),
            &ConversationId::parse("c1").unwrap(),
        )
        .body("hello")
        .ts(1)
        .edge("e")
        .build();
        let good = serde_json::to_vec(&record).unwrap();
        let bad_id = br#"{"schema_version":1,"message_id":"0","conversation_id":"c1","sender_id":"a","client_msg_id":"m","body":"x","ts":1,"edge_id":"e"}"#;
        let payloads: Vec<Option<&[u8]>> = vec![
            Some(b"not json"),
            Some(&good),
            None,
            Some(bad_id),
            Some(&good),
        ];
        let decoded = decode_batch(payloads);
        assert_eq!(decoded.origins, vec![1, 4]);
        assert_eq!(decoded.docs.len(), 2);
        assert_eq!(decoded.docs[0].id, "5");
        assert_eq!(decoded.docs[0].routing, "c1");
        let poisoned: Vec<usize> = decoded
            .undecodable
            .iter()
            .map(|(position, _)| *position)
            .collect();
        assert_eq!(poisoned, vec![0, 2, 3]);
    }
}
