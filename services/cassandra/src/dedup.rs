//! Cross-edge de-duplication of client sends (`send_dedup`).
//!
//! `claim` is a lightweight transaction (`INSERT … IF NOT EXISTS`, Paxos at
//! `LOCAL_SERIAL`), so of two edges racing on the same
//! `(user_id, client_msg_id)` exactly one gets [`SendClaim::Claimed`]; the
//! other gets the winner's message id. Rows live for
//! [`CassandraConfig::send_dedup_ttl_secs`](crate::CassandraConfig) (24 h by
//! default): a retry within that window is recognised, a later one is a new
//! message.
//!
//! `mark_acked` is a plain (non-Paxos) update: it only ever follows a
//! resolved claim and flips one flag, and losing it merely makes a retry
//! produce the same record again (harmless: every consumer is idempotent by
//! message id). Its cell gets a fresh TTL, so it can outlive the claim's
//! cells by the ack delay; a claim that finds such an orphan (a row without
//! `message_id`) takes it over with a second conditional update.

use scylla::value::{CqlValue, Row};

use chatpipe_core::ids::{ClientMsgId, ConversationId, MessageId, UserId};
use chatpipe_core::store::{SeenSend, SendClaim, SendDedupStore, StoreError};

use crate::error::CassandraError;
use crate::store::CassandraStore;

/// The `[applied]` flag and the existing row of a conditional statement.
struct LwtOutcome {
    applied: bool,
    existing_message_id: Option<i64>,
    existing_ts: Option<i64>,
    existing_acked: Option<bool>,
}

fn lwt_outcome(
    result: scylla::response::query_result::QueryResult,
) -> Result<LwtOutcome, CassandraError> {
    let rows = result.into_rows_result()?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_owned())
        .collect();
    let row = rows
        .first_row::<Row>()
        .map_err(|error| CassandraError::Decode(error.to_string()))?;
    let column = |name: &str| -> Option<&CqlValue> {
        let index = names.iter().position(|candidate| candidate == name)?;
        row.columns.get(index)?.as_ref()
    };
    let applied = match column("[applied]") {
        Some(CqlValue::Boolean(applied)) => *applied,
        other => {
            return Err(CassandraError::Decode(format!(
                "LWT result without [applied]: {other:?}"
            )));
        }
    };
    Ok(LwtOutcome {
        applied,
        existing_message_id: column("message_id").and_then(CqlValue::as_bigint),
        existing_ts: column("ts").and_then(CqlValue::as_bigint),
        existing_acked: column("acked").and_then(CqlValue::as_boolean),
    })
}

impl CassandraStore {
    async fn claim_send(
        &self,
        user: &UserId,
        client_msg_id: &ClientMsgId,
        conversation: &ConversationId,
        message_id: MessageId,
        ts: u64,
    ) -> Result<SendClaim, CassandraError> {
        let statements = &self.inner.statements;
        let ttl = self.inner.config.send_dedup_ttl_secs as i32;
        let result = self
            .inner
            .session
            .execute_unpaged(
                &statements.claim_send,
                (
                    user.as_str(),
                    client_msg_id.as_str(),
                    message_id.as_i64(),
                    conversation.as_str(),
                    ts as i64,
                    ttl,
                ),
            )
            .await?;
        let mut outcome = lwt_outcome(result)?;
        if !outcome.applied && outcome.existing_message_id.is_none() {
            // Only an orphaned `acked` cell is left of an expired claim.
            let result = self
                .inner
                .session
                .execute_unpaged(
                    &statements.reclaim_orphan_send,
                    (
                        ttl,
                        message_id.as_i64(),
                        conversation.as_str(),
                        ts as i64,
                        user.as_str(),
                        client_msg_id.as_str(),
                    ),
                )
                .await?;
            outcome = lwt_outcome(result)?;
        }
        if outcome.applied {
            return Ok(SendClaim::Claimed);
        }
        let existing = outcome
            .existing_message_id
            .and_then(|raw| MessageId::parse(&raw.to_string()).ok())
            .ok_or_else(|| CassandraError::Decode("send_dedup row without message_id".into()))?;
        if existing == message_id {
            // Our own earlier attempt applied even though we did not hear
            // back (a timeout after Paxos committed): it is still ours.
            return Ok(SendClaim::Claimed);
        }
        Ok(SendClaim::Existing(SeenSend {
            message_id: existing,
            ts: outcome.existing_ts.unwrap_or(0).max(0) as u64,
            acked: outcome.existing_acked.unwrap_or(false),
        }))
    }

    async fn mark_send_acked(
        &self,
        user: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<(), CassandraError> {
        let ttl = self.inner.config.send_dedup_ttl_secs as i32;
        self.inner
            .session
            .execute_unpaged(
                &self.inner.statements.mark_send_acked,
                (ttl, user.as_str(), client_msg_id.as_str()),
            )
            .await?;
        Ok(())
    }
}

impl SendDedupStore for CassandraStore {
    async fn claim(
        &self,
        user: &UserId,
        client_msg_id: &ClientMsgId,
        conversation: &ConversationId,
        message_id: MessageId,
        ts: u64,
    ) -> Result<SendClaim, StoreError> {
        Ok(self
            .claim_send(user, client_msg_id, conversation, message_id, ts)
            .await?)
    }

    async fn mark_acked(
        &self,
        user: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<(), StoreError> {
        Ok(self.mark_send_acked(user, client_msg_id).await?)
    }
}
