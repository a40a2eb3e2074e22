//! [`CassandraStore`]: one driver session and chatpipe's prepared statements.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;

use crate::config::CassandraConfig;
use crate::error::CassandraError;
use crate::schema::{
    OnReplicationMismatch, SchemaReport, apply_schema_with, validate_keyspace_name,
};

/// Rows per page of the paged reads (members, a user's conversations).
const PAGE_ROWS: i32 = 1000;

/// A cheaply clonable handle on the cluster. Every method is safe to call
/// concurrently; the driver multiplexes requests over its connections and
/// reconnects by itself after a node comes back.
#[derive(Clone)]
pub struct CassandraStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for CassandraStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CassandraStore")
            .field("keyspace", &self.inner.config.keyspace)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) session: Session,
    pub(crate) config: CassandraConfig,
    pub(crate) statements: Statements,
}

/// Every statement chatpipe runs, prepared once per session. Tables are
/// qualified with the configured keyspace, so the session never needs a
/// current keyspace. None sets a consistency of its own: every request
/// (statements, batches, paged reads) runs at the session profile's,
/// `CassandraConfig::consistency` and `serial_consistency`.
pub(crate) struct Statements {
    pub(crate) insert_conversation_if_absent: PreparedStatement,
    pub(crate) select_conversation: PreparedStatement,
    pub(crate) insert_member: PreparedStatement,
    pub(crate) insert_user_conversation: PreparedStatement,
    pub(crate) delete_member: PreparedStatement,
    pub(crate) delete_user_conversation: PreparedStatement,
    pub(crate) select_member: PreparedStatement,
    pub(crate) select_members: PreparedStatement,
    pub(crate) select_member_roles: PreparedStatement,
    pub(crate) select_member_page: PreparedStatement,
    pub(crate) update_role_if_member: PreparedStatement,
    pub(crate) update_role_if_unchanged: PreparedStatement,
    pub(crate) update_history_visibility_if_exists: PreparedStatement,
    pub(crate) count_members: PreparedStatement,
    pub(crate) select_user_conversations: PreparedStatement,
    pub(crate) insert_message: PreparedStatement,
    pub(crate) select_messages_descending: PreparedStatement,
    pub(crate) select_messages_ascending: PreparedStatement,
    pub(crate) select_message_facts: PreparedStatement,
    pub(crate) edit_message: PreparedStatement,
    pub(crate) delete_message: PreparedStatement,
    pub(crate) insert_relation: PreparedStatement,
    pub(crate) delete_relation: PreparedStatement,
    pub(crate) select_relations: PreparedStatement,
    pub(crate) upsert_read_marker: PreparedStatement,
    pub(crate) select_read_marker: PreparedStatement,
    pub(crate) insert_mention: PreparedStatement,
    pub(crate) select_mentions_after: PreparedStatement,
    pub(crate) upsert_activity: PreparedStatement,
    pub(crate) select_activities: PreparedStatement,
    pub(crate) select_unread_rows: PreparedStatement,
}

const MESSAGE_COLUMNS: &str =
    "message_id, sender_id, client_msg_id, body, ts, edited_at, deleted, mentions";

impl Statements {
    async fn prepare(session: &Session, keyspace: &str) -> Result<Self, CassandraError> {
        let prepare = |cql: String, idempotent: bool, page_rows: Option<i32>| async move {
            let mut statement = Statement::new(cql);
            statement.set_is_idempotent(idempotent);
            if let Some(rows) = page_rows {
                statement.set_page_size(rows);
            }
            session.prepare(statement).await
        };
        let ks = keyspace;
        Ok(Self {
            insert_conversation_if_absent: prepare(
                format!(
                    "INSERT INTO {ks}.conversations (conversation_id, title, created_at, created_by, first_bucket, history_visibility) \
                     VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                false,
                None,
            )
            .await?,
            select_conversation: prepare(
                format!(
                    "SELECT conversation_id, title, created_at, created_by, first_bucket, history_visibility \
                     FROM {ks}.conversations WHERE conversation_id = ?"
                ),
                true,
                None,
            )
            .await?,
            insert_member: prepare(
                format!(
                    "INSERT INTO {ks}.members_by_conversation (conversation_id, user_id, added_at, added_by, role) \
                     VALUES (?, ?, ?, ?, ?)"
                ),
                true,
                None,
            )
            .await?,
            insert_user_conversation: prepare(
                format!(
                    "INSERT INTO {ks}.conversations_by_user (user_id, conversation_id, joined_at) VALUES (?, ?, ?)"
                ),
                true,
                None,
            )
            .await?,
            delete_member: prepare(
                format!("DELETE FROM {ks}.members_by_conversation WHERE conversation_id = ? AND user_id = ?"),
                true,
                None,
            )
            .await?,
            delete_user_conversation: prepare(
                format!("DELETE FROM {ks}.conversations_by_user WHERE user_id = ? AND conversation_id = ?"),
                true,
                None,
            )
            .await?,
            select_member: prepare(
                format!(
                    "SELECT user_id, role, added_at FROM {ks}.members_by_conversation WHERE conversation_id = ? AND user_id = ?"
                ),
                true,
                None,
            )
            .await?,
            select_members: prepare(
                format!("SELECT user_id FROM {ks}.members_by_conversation WHERE conversation_id = ?"),
                true,
                Some(PAGE_ROWS),
            )
            .await?,
            select_member_roles: prepare(
                format!("SELECT user_id, role, added_at FROM {ks}.members_by_conversation WHERE conversation_id = ?"),
                true,
                Some(PAGE_ROWS),
            )
            .await?,
            select_member_page: prepare(
                format!(
                    "SELECT user_id, role, added_at FROM {ks}.members_by_conversation \
                     WHERE conversation_id = ? AND user_id > ? LIMIT ?"
                ),
                true,
                None,
            )
            .await?,
            // Conditional: a plain UPDATE is an upsert and would bring back
            // the row of a member removed a moment earlier, as a member.
            update_role_if_member: prepare(
                format!(
                    "UPDATE {ks}.members_by_conversation SET role = ? \
                     WHERE conversation_id = ? AND user_id = ? IF EXISTS"
                ),
                false,
                None,
            )
            .await?,
            // One half of a guarded owner change: applies only while the
            // row is exactly as read (a removed row has no `added_at`, a
            // re-added one another).
            update_role_if_unchanged: prepare(
                format!(
                    "UPDATE {ks}.members_by_conversation SET role = ? \
                     WHERE conversation_id = ? AND user_id = ? IF added_at = ? AND role = ?"
                ),
                false,
                None,
            )
            .await?,
            update_history_visibility_if_exists: prepare(
                format!(
                    "UPDATE {ks}.conversations SET history_visibility = ? WHERE conversation_id = ? IF EXISTS"
                ),
                false,
                None,
            )
            .await?,
            count_members: prepare(
                format!("SELECT COUNT(*) FROM {ks}.members_by_conversation WHERE conversation_id = ?"),
                true,
                None,
            )
            .await?,
            select_user_conversations: prepare(
                format!("SELECT conversation_id, joined_at FROM {ks}.conversations_by_user WHERE user_id = ?"),
                true,
                Some(PAGE_ROWS),
            )
            .await?,
            // The write timestamp is the message's own time, so a redelivered
            // record rewrites identical cells with an identical timestamp (a
            // no-op) and can never undo a later edit or deletion.
            insert_message: prepare(
                format!(
                    "INSERT INTO {ks}.messages \
                     (conversation_id, bucket, message_id, sender_id, client_msg_id, body, ts, edge_id, mentions) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
                ),
                true,
                None,
            )
            .await?,
            select_messages_descending: prepare(
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages \
                     WHERE conversation_id = ? AND bucket = ? AND message_id > ? AND message_id < ? \
                     ORDER BY message_id DESC LIMIT ?"
                ),
                true,
                None,
            )
            .await?,
            select_messages_ascending: prepare(
                format!(
                    "SELECT {MESSAGE_COLUMNS} FROM {ks}.messages \
                     WHERE conversation_id = ? AND bucket = ? AND message_id > ? AND message_id < ? \
                     ORDER BY message_id ASC LIMIT ?"
                ),
                true,
                None,
            )
            .await?,
            select_message_facts: prepare(
                format!(
                    "SELECT sender_id, ts, edited_at, deleted FROM {ks}.messages \
                     WHERE conversation_id = ? AND bucket = ? AND message_id = ?"
                ),
                true,
                None,
            )
            .await?,
            // Written at the edit's own time (later than the message's, see
            // the edge): the latest edit wins whatever order the writes
            // land in, and a redelivered message cannot undo it.
            edit_message: prepare(
                format!(
                    "UPDATE {ks}.messages USING TIMESTAMP ? SET body = ?, edited_at = ? \
                     WHERE conversation_id = ? AND bucket = ? AND message_id = ?"
                ),
                true,
                None,
            )
            .await?,
            // Written at DELETE_WRITE_TIMESTAMP_US, above every real write
            // time: a deletion is final, no edit or redelivered message
            // brings the body back. The row stays as a tombstone.
            delete_message: prepare(
                format!(
                    "UPDATE {ks}.messages USING TIMESTAMP ? SET body = null, deleted = true, mentions = null \
                     WHERE conversation_id = ? AND bucket = ? AND message_id = ?"
                ),
                true,
                None,
            )
            .await?,
            insert_relation: prepare(
                format!(
                    "INSERT INTO {ks}.message_relations (conversation_id, bucket, message_id, relation, value, user_id) \
                     VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
                ),
                true,
                None,
            )
            .await?,
            delete_relation: prepare(
                format!(
                    "DELETE FROM {ks}.message_relations USING TIMESTAMP ? \
                     WHERE conversation_id = ? AND bucket = ? AND message_id = ? AND relation = ? AND value = ? AND user_id = ?"
                ),
                true,
                None,
            )
            .await?,
            select_relations: prepare(
                format!(
                    "SELECT message_id, relation, value, user_id FROM {ks}.message_relations \
                     WHERE conversation_id = ? AND bucket = ? AND message_id >= ? AND message_id <= ? LIMIT ?"
                ),
                true,
                None,
            )
            .await?,
            // Written with the marker itself as write time: the highest
            // marker wins, a lower one never moves it back.
            upsert_read_marker: prepare(
                format!(
                    "INSERT INTO {ks}.read_markers (user_id, conversation_id, message_id) \
                     VALUES (?, ?, ?) USING TIMESTAMP ?"
                ),
                true,
                None,
            )
            .await?,
            select_read_marker: prepare(
                format!(
                    "SELECT message_id FROM {ks}.read_markers WHERE user_id = ? AND conversation_id = ?"
                ),
                true,
                None,
            )
            .await?,
            insert_mention: prepare(
                format!(
                    "INSERT INTO {ks}.mentions (user_id, conversation_id, message_id) \
                     VALUES (?, ?, ?) USING TIMESTAMP ?"
                ),
                true,
                None,
            )
            .await?,
            select_mentions_after: prepare(
                format!(
                    "SELECT message_id FROM {ks}.mentions \
                     WHERE user_id = ? AND conversation_id = ? AND message_id > ? LIMIT ?"
                ),
                true,
                None,
            )
            .await?,
            // Written with the newest message id as write time: an older
            // message (a replay, a late batch) never wins.
            upsert_activity: prepare(
                format!(
                    "INSERT INTO {ks}.conversation_activity (conversation_id, last_message_id) \
                     VALUES (?, ?) USING TIMESTAMP ?"
                ),
                true,
                None,
            )
            .await?,
            select_activities: prepare(
                format!(
                    "SELECT conversation_id, last_message_id FROM {ks}.conversation_activity \
                     WHERE conversation_id IN ?"
                ),
                true,
                None,
            )
            .await?,
            select_unread_rows: prepare(
                format!(
                    "SELECT message_id, sender_id, deleted FROM {ks}.messages \
                     WHERE conversation_id = ? AND bucket = ? AND message_id > ? LIMIT ?"
                ),
                true,
                None,
            )
            .await?,
        })
    }
}

fn on_replication_mismatch(config: &CassandraConfig) -> OnReplicationMismatch {
    if config.alter_replication {
        OnReplicationMismatch::Alter
    } else {
        OnReplicationMismatch::Warn
    }
}

impl CassandraStore {
    /// Writes the rows of one prepared write in one request: the plain
    /// statement for one row, else an idempotent unlogged batch (callers
    /// keep a batch to one partition, or to small partitions sharing a
    /// replica; see `messages::pack_write_requests`).
    pub(crate) async fn write_rows_of<V: scylla::serialize::row::SerializeRow>(
        &self,
        statement: &PreparedStatement,
        mut rows: Vec<V>,
    ) -> Result<(), CassandraError> {
        if rows.len() == 1 {
            let single = rows.pop().expect("one row");
            self.inner
                .session
                .execute_unpaged(statement, single)
                .await?;
            return Ok(());
        }
        let mut batch =
            scylla::statement::batch::Batch::new(scylla::statement::batch::BatchType::Unlogged);
        batch.set_is_idempotent(true);
        for _ in &rows {
            batch.append_statement(statement.clone());
        }
        self.inner.session.batch(&batch, rows).await?;
        Ok(())
    }

    /// Opens a session on `config.contact_points`, applies the schema when
    /// `config.apply_schema_on_connect`, and prepares every statement.
    /// Fails (retriable) when no contact point answers.
    pub async fn connect(config: &CassandraConfig) -> Result<Self, CassandraError> {
        validate_keyspace_name(&config.keyspace)?;
        if config.contact_points.is_empty() {
            return Err(CassandraError::Config("no contact points".into()));
        }
        // The one place the consistency is set: statements and batches
        // inherit the session's profile.
        let profile = ExecutionProfile::builder()
            .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
            .consistency(config.consistency.to_driver())
            .serial_consistency(Some(config.serial_consistency.to_driver()))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&config.contact_points)
            .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await?;
        if config.apply_schema_on_connect {
            apply_schema_with(
                &session,
                &config.keyspace,
                &config.replication,
                on_replication_mismatch(config),
            )
            .await?;
        }
        let statements = Statements::prepare(&session, &config.keyspace).await?;
        tracing::info!(keyspace = %config.keyspace, contact_points = ?config.contact_points, consistency = %config.consistency, "cassandra connected");
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                config: config.clone(),
                statements,
            }),
        })
    }

    /// Applies the embedded schema to this store's keyspace (idempotent),
    /// with the configured replication.
    pub async fn apply_schema(&self) -> Result<SchemaReport, CassandraError> {
        let config = &self.inner.config;
        apply_schema_with(
            &self.inner.session,
            &config.keyspace,
            &config.replication,
            on_replication_mismatch(config),
        )
        .await
    }

    /// The driver session, for operations this adapter does not wrap
    /// (tests, administration).
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    pub fn config(&self) -> &CassandraConfig {
        &self.inner.config
    }

    /// Whether a trivial request succeeds now (for readiness checks).
    pub async fn ping(&self) -> Result<(), CassandraError> {
        self.inner
            .session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await?;
        Ok(())
    }
}
