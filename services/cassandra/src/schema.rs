//! The CQL schema (`schemas/cql/chatpipe.cql`, embedded) and an idempotent
//! apply.
//!
//! The file is the source of truth and stays runnable with `cqlsh -f`; the
//! only rewrites are the keyspace name in `CREATE KEYSPACE` and `USE`, and
//! the keyspace's replication map, which comes from configuration
//! ([`Replication`]; the file's `SimpleStrategy` RF 1 is the default). An
//! existing keyspace keeps its replication: when it differs from the
//! configured one the apply warns, and changes it only when asked
//! ([`OnReplicationMismatch::Alter`]). Every
//! statement is `IF NOT EXISTS`, and the apply compares `system_schema`
//! before and after, so it reports exactly what it created: a second apply
//! reports nothing. Schema evolution is explicit: the file's
//! `ALTER TABLE t ADD IF NOT EXISTS column type` migrations (a plain type,
//! or a list or set of one, optionally frozen) are run only
//! when `system_schema.columns` lacks the column (and issued without
//! `IF NOT EXISTS`, which not every engine version parses), so a deployment
//! created by an older version gains its columns with no manual step.

use std::collections::BTreeSet;

use scylla::client::session::Session;

use crate::config::Replication;
use crate::error::CassandraError;

/// The embedded schema file.
pub const SCHEMA_CQL: &str = include_str!("../../../schemas/cql/chatpipe.cql");

/// The keyspace name the file is written for.
const FILE_KEYSPACE: &str = "chatpipe";

/// What [`apply_schema`] created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaReport {
    pub keyspace: String,
    pub created_keyspace: bool,
    pub created_tables: Vec<String>,
    /// `table.column` of every column a migration added.
    pub added_columns: Vec<String>,
    /// The keyspace's replication after the apply, as `system_schema`
    /// says (`None`: a strategy chatpipe does not configure).
    pub replication: Option<Replication>,
    /// Whether the apply changed the replication of the existing keyspace
    /// ([`OnReplicationMismatch::Alter`]).
    pub altered_replication: bool,
}

impl SchemaReport {
    pub fn changed_anything(&self) -> bool {
        self.created_keyspace
            || !self.created_tables.is_empty()
            || !self.added_columns.is_empty()
            || self.altered_replication
    }
}

/// What the apply does when the keyspace exists with a replication other
/// than the configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReplicationMismatch {
    /// Keep the keyspace's, log a warning (an operator's choice is never
    /// undone by a deployment's default).
    #[default]
    Warn,
    /// `ALTER KEYSPACE` to the configured replication. Rows written
    /// before reach new replicas only through `nodetool repair`.
    Alter,
}

/// One statement of the file, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemaStatement {
    CreateKeyspace(String),
    Use,
    CreateTable {
        name: String,
        cql: String,
    },
    /// `ALTER TABLE table ADD IF NOT EXISTS column type`.
    AddColumn {
        table: String,
        column: String,
        cql_type: String,
    },
}

/// Whether `name` is a plain unquoted CQL identifier (safe to splice).
fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_')
}

/// Checks that `keyspace` is a plain unquoted CQL identifier, so it can be
/// spliced into DDL safely.
pub fn validate_keyspace_name(keyspace: &str) -> Result<(), CassandraError> {
    let valid = !keyspace.is_empty()
        && keyspace.len() <= 48
        && keyspace
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_')
        && keyspace
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic());
    if valid {
        Ok(())
    } else {
        Err(CassandraError::Config(format!(
            "keyspace {keyspace:?} must be 1-48 letters, digits or `_`, starting with a letter"
        )))
    }
}

/// `options` (what follows the keyspace name) with its replication map
/// replaced by `replication`'s.
fn with_replication(options: &str, replication: &Replication) -> Result<String, CassandraError> {
    let map_start = options.find('{');
    let map_end = options.find('}');
    match (map_start, map_end) {
        (Some(start), Some(end)) if start < end => Ok(format!(
            "{}{}{}",
            &options[..start],
            replication.cql_map(),
            &options[end + 1..]
        )),
        _ => Err(CassandraError::Config(format!(
            "schema keyspace options without a replication map: {options}"
        ))),
    }
}

/// Whether `cql_type` is a type a migration may add: a plain type name, or
/// a list or set of one, optionally frozen (`frozen<list<text>>`).
fn is_column_type(cql_type: &str) -> bool {
    let lower = cql_type.to_ascii_lowercase();
    let unfrozen = lower
        .strip_prefix("frozen<")
        .and_then(|inner| inner.strip_suffix('>'))
        .unwrap_or(&lower);
    let element = ["list<", "set<"].iter().find_map(|collection| {
        unfrozen
            .strip_prefix(collection)
            .and_then(|inner| inner.strip_suffix('>'))
    });
    match element {
        Some(element) => is_identifier(element),
        None => is_identifier(unfrozen) && unfrozen == lower,
    }
}

/// Splits the file into statements (comments dropped) and classifies them.
fn parse_schema(
    cql: &str,
    keyspace: &str,
    replication: &Replication,
) -> Result<Vec<SchemaStatement>, CassandraError> {
    let without_comments: String = cql
        .lines()
        .map(|line| match line.find("--") {
            Some(start) => &line[..start],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut statements = Vec::new();
    for raw in without_comments.split(';') {
        let statement = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if statement.is_empty() {
            continue;
        }
        let upper = statement.to_ascii_uppercase();
        let keyspace_prefix = format!(
            "CREATE KEYSPACE IF NOT EXISTS {} ",
            FILE_KEYSPACE.to_ascii_uppercase()
        );
        if let Some(rest) = upper.strip_prefix(&keyspace_prefix) {
            let options =
                with_replication(&statement[statement.len() - rest.len()..], replication)?;
            statements.push(SchemaStatement::CreateKeyspace(format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} {options}"
            )));
        } else if upper == format!("USE {}", FILE_KEYSPACE.to_ascii_uppercase()) {
            statements.push(SchemaStatement::Use);
        } else if let Some(rest) = upper.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
            let name_upper = rest
                .split(|c: char| c == '(' || c.is_whitespace())
                .next()
                .unwrap_or("");
            let name_start = statement.len() - rest.len();
            let name = statement[name_start..name_start + name_upper.len()].to_owned();
            let body = &statement[name_start + name_upper.len()..];
            if name.is_empty() || name.contains('.') {
                return Err(CassandraError::Config(format!(
                    "schema table name {name:?} must be unqualified"
                )));
            }
            statements.push(SchemaStatement::CreateTable {
                cql: format!("CREATE TABLE IF NOT EXISTS {keyspace}.{name}{body}"),
                name,
            });
        } else if upper.starts_with("ALTER TABLE ") {
            let words: Vec<&str> = statement.split(' ').collect();
            let shape_ok = words.len() == 9
                && words[3..7]
                    .iter()
                    .map(|word| word.to_ascii_uppercase())
                    .eq(["ADD", "IF", "NOT", "EXISTS"]);
            let (table, column, cql_type) = (words.get(2), words.get(7), words.get(8));
            match (shape_ok, table, column, cql_type) {
                (true, Some(table), Some(column), Some(cql_type))
                    if is_identifier(table)
                        && is_identifier(column)
                        && is_column_type(cql_type) =>
                {
                    statements.push(SchemaStatement::AddColumn {
                        table: (*table).to_owned(),
                        column: (*column).to_owned(),
                        cql_type: (*cql_type).to_owned(),
                    });
                }
                _ => {
                    return Err(CassandraError::Config(format!(
                        "schema migration not understood (only ALTER TABLE t ADD IF NOT EXISTS c type): {statement}"
                    )));
                }
            }
        } else {
            return Err(CassandraError::Config(format!(
                "schema statement not understood (only CREATE KEYSPACE/TABLE IF NOT EXISTS, ALTER TABLE … ADD IF NOT EXISTS and USE): {statement}"
            )));
        }
    }
    Ok(statements)
}

/// The tables (and whether the keyspace exists) as `system_schema` says.
async fn existing_schema(
    session: &Session,
    keyspace: &str,
) -> Result<(bool, BTreeSet<String>), CassandraError> {
    let keyspace_rows = session
        .query_unpaged(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await?
        .into_rows_result()?;
    let keyspace_exists = keyspace_rows.rows_num() > 0;
    let table_rows = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await?
        .into_rows_result()?;
    let mut tables = BTreeSet::new();
    for row in table_rows.rows::<(String,)>()? {
        tables.insert(row?.0);
    }
    Ok((keyspace_exists, tables))
}

/// The keyspace's replication as `system_schema` says; `None` when the
/// keyspace is missing or uses a strategy chatpipe does not configure.
async fn keyspace_replication(
    session: &Session,
    keyspace: &str,
) -> Result<Option<Replication>, CassandraError> {
    let rows = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await?
        .into_rows_result()?;
    let Some(row) = rows
        .rows::<(std::collections::HashMap<String, String>,)>()?
        .next()
    else {
        return Ok(None);
    };
    let (map,) = row?;
    Ok(Replication::from_schema_map(
        map.iter()
            .map(|(key, value)| (key.as_str(), value.as_str())),
    ))
}

/// Compares the keyspace's replication with the configured one and warns
/// about, or alters, a difference. Returns the replication now in effect
/// and whether it was altered.
async fn reconcile_replication(
    session: &Session,
    keyspace: &str,
    wanted: &Replication,
    on_mismatch: OnReplicationMismatch,
) -> Result<(Option<Replication>, bool), CassandraError> {
    let actual = keyspace_replication(session, keyspace).await?;
    if actual.as_ref() == Some(wanted) {
        return Ok((actual, false));
    }
    let actual_text = actual
        .as_ref()
        .map_or_else(|| "another strategy".to_owned(), ToString::to_string);
    match on_mismatch {
        OnReplicationMismatch::Warn => {
            tracing::warn!(
                keyspace,
                actual = %actual_text,
                configured = %wanted,
                "cassandra keyspace exists with another replication; kept as it is (set alter_replication / --cassandra-alter-replication to change it, then run nodetool repair)"
            );
            Ok((actual, false))
        }
        OnReplicationMismatch::Alter => {
            let cql = format!(
                "ALTER KEYSPACE {keyspace} WITH replication = {}",
                wanted.cql_map()
            );
            session.query_unpaged(cql.as_str(), ()).await?;
            tracing::warn!(
                keyspace,
                before = %actual_text,
                after = %wanted,
                "cassandra keyspace replication altered; run `nodetool repair {keyspace}` on every node so rows written before reach their new replicas"
            );
            Ok((keyspace_replication(session, keyspace).await?, true))
        }
    }
}

/// Whether `keyspace.table` has `column`.
async fn has_column(
    session: &Session,
    keyspace: &str,
    table: &str,
    column: &str,
) -> Result<bool, CassandraError> {
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns \
             WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (keyspace, table, column),
        )
        .await?
        .into_rows_result()?;
    Ok(rows.rows_num() > 0)
}

/// Adds `column` unless it exists; true when this call added it. Another
/// process applying the schema at the same moment may win the race: its
/// column is as good as ours.
async fn add_column(
    session: &Session,
    keyspace: &str,
    table: &str,
    column: &str,
    cql_type: &str,
) -> Result<bool, CassandraError> {
    if has_column(session, keyspace, table, column).await? {
        return Ok(false);
    }
    let cql = format!("ALTER TABLE {keyspace}.{table} ADD {column} {cql_type}");
    match session.query_unpaged(cql.as_str(), ()).await {
        Ok(_) => {
            tracing::info!(keyspace, table, column, cql_type, "cassandra column added");
            Ok(true)
        }
        Err(error) => {
            if has_column(session, keyspace, table, column).await? {
                Ok(false)
            } else {
                Err(error.into())
            }
        }
    }
}

/// [`apply_schema_with`] the file's replication (`SimpleStrategy`, RF 1)
/// and [`OnReplicationMismatch::Warn`].
pub async fn apply_schema(
    session: &Session,
    keyspace: &str,
) -> Result<SchemaReport, CassandraError> {
    apply_schema_with(
        session,
        keyspace,
        &Replication::default(),
        OnReplicationMismatch::Warn,
    )
    .await
}

/// Creates the keyspace (with `replication`) and tables that are missing,
/// adds the columns the migrations name, reconciles the replication of an
/// existing keyspace as `on_mismatch` says, and reports what it did. Does
/// not change the session's current keyspace.
pub async fn apply_schema_with(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
    on_mismatch: OnReplicationMismatch,
) -> Result<SchemaReport, CassandraError> {
    validate_keyspace_name(keyspace)?;
    let statements = parse_schema(SCHEMA_CQL, keyspace, replication)?;
    let (keyspace_existed, tables_before) = existing_schema(session, keyspace).await?;
    let mut added_columns = Vec::new();
    for statement in &statements {
        match statement {
            SchemaStatement::CreateKeyspace(cql) => {
                session.query_unpaged(cql.as_str(), ()).await?;
            }
            // Tables are qualified with the keyspace instead, so applying
            // never changes which keyspace the session uses.
            SchemaStatement::Use => {}
            SchemaStatement::CreateTable { cql, .. } => {
                session.query_unpaged(cql.as_str(), ()).await?;
            }
            SchemaStatement::AddColumn {
                table,
                column,
                cql_type,
            } => {
                if add_column(session, keyspace, table, column, cql_type).await? {
                    added_columns.push(format!("{table}.{column}"));
                }
            }
        }
    }
    let (keyspace_exists, tables_after) = existing_schema(session, keyspace).await?;
    if !keyspace_exists {
        return Err(CassandraError::Decode(format!(
            "keyspace {keyspace} missing after apply"
        )));
    }
    let (replication_now, altered_replication) =
        reconcile_replication(session, keyspace, replication, on_mismatch).await?;
    let expected: Vec<&str> = statements
        .iter()
        .filter_map(|statement| match statement {
            SchemaStatement::CreateTable { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if let Some(missing) = expected.iter().find(|name| !tables_after.contains(**name)) {
        return Err(CassandraError::Decode(format!(
            "table {keyspace}.{missing} missing after apply"
        )));
    }
    let report = SchemaReport {
        keyspace: keyspace.to_owned(),
        created_keyspace: !keyspace_existed,
        created_tables: expected
            .iter()
            .filter(|name| !tables_before.contains(**name))
            .map(|name| (*name).to_owned())
            .collect(),
        added_columns,
        replication: replication_now,
        altered_replication,
    };
    if report.changed_anything() {
        tracing::info!(keyspace, created_keyspace = report.created_keyspace, created_tables = ?report.created_tables, added_columns = ?report.added_columns, replication = ?report.replication, altered_replication, "cassandra schema applied");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_schema_parses_and_is_rewritten_for_the_keyspace() {
        let statements = parse_schema(SCHEMA_CQL, "other_ks", &Replication::default()).unwrap();
        let SchemaStatement::CreateKeyspace(keyspace) = &statements[0] else {
            panic!("first statement must create the keyspace: {statements:?}");
        };
        // The default replication is the file's, word for word.
        assert_eq!(
            keyspace,
            "CREATE KEYSPACE IF NOT EXISTS other_ks WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1} AND durable_writes = true"
        );
        assert_eq!(statements[1], SchemaStatement::Use);
        let tables: Vec<&str> = statements
            .iter()
            .filter_map(|statement| match statement {
                SchemaStatement::CreateTable { name, cql } => {
                    assert!(
                        cql.starts_with(&format!("CREATE TABLE IF NOT EXISTS other_ks.{name} (")),
                        "{cql}"
                    );
                    Some(name.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            tables,
            [
                "conversations",
                "members_by_conversation",
                "conversations_by_user",
                "messages",
                "message_relations",
                "read_markers",
                "mentions",
                "conversation_activity"
            ]
        );
        let migrations: Vec<(&str, &str, &str)> = statements
            .iter()
            .filter_map(|statement| match statement {
                SchemaStatement::AddColumn {
                    table,
                    column,
                    cql_type,
                } => Some((table.as_str(), column.as_str(), cql_type.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            migrations,
            [
                ("conversations", "history_visibility", "text"),
                ("members_by_conversation", "role", "text"),
                ("messages", "mentions", "frozen<list<text>>")
            ]
        );
    }

    #[test]
    fn migrations_must_be_plain_column_additions() {
        for bad in [
            "ALTER TABLE t DROP c;",
            "ALTER TABLE t ADD c text;",
            "ALTER TABLE t ADD IF NOT EXISTS c text, d text;",
            "ALTER TABLE other.t ADD IF NOT EXISTS c text;",
            "ALTER TABLE t ADD IF NOT EXISTS c map<text,text>;",
            "ALTER TABLE t ADD IF NOT EXISTS c list<list<text>>;",
            "ALTER TABLE t ADD IF NOT EXISTS c frozen<text>;",
            "ALTER TABLE t ADD IF NOT EXISTS c list<text>>;",
        ] {
            assert!(
                parse_schema(bad, "ks", &Replication::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn migrations_may_add_lists_and_sets_of_plain_types() {
        for good in [
            "text",
            "bigint",
            "list<text>",
            "set<bigint>",
            "frozen<list<text>>",
            "frozen<set<text>>",
        ] {
            assert!(is_column_type(good), "{good}");
        }
        for bad in [
            "",
            "map<text,text>",
            "frozen<text>",
            "list<list<text>>",
            "list<text>>",
            "list<>",
            "text;drop",
        ] {
            assert!(!is_column_type(bad), "{bad}");
        }
    }

    #[test]
    fn the_configured_replication_replaces_the_files() {
        let replication: Replication = "NetworkTopologyStrategy:datacenter1=3".parse().unwrap();
        let statements = parse_schema(SCHEMA_CQL, "ks", &replication).unwrap();
        assert_eq!(
            statements[0],
            SchemaStatement::CreateKeyspace(
                "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = \
                 {'class': 'NetworkTopologyStrategy', 'datacenter1': 3} AND durable_writes = true"
                    .to_owned()
            )
        );
        assert!(with_replication("WITH durable_writes = true", &replication).is_err());
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert!(validate_keyspace_name("chatpipe_t1").is_ok());
        assert!(validate_keyspace_name("").is_err());
        assert!(validate_keyspace_name("x; DROP").is_err());
        assert!(validate_keyspace_name("1abc").is_err());
    }
}
