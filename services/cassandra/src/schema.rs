//! The CQL schema (`schemas/cql/chatpipe.cql`, embedded) and an idempotent
//! apply.
//!
//! The file is the source of truth and stays runnable with `cqlsh -f`; the
//! only rewrite is the keyspace name in `CREATE KEYSPACE` and `USE`. Every
//! statement is `IF NOT EXISTS`, and the apply compares `system_schema`
//! before and after, so it reports exactly what it created: a second apply
//! reports nothing. (It does not alter existing tables: schema evolution is
//! done with explicit `ALTER` migrations.)

use std::collections::BTreeSet;

use scylla::client::session::Session;

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
}

impl SchemaReport {
    pub fn changed_anything(&self) -> bool {
        self.created_keyspace || !self.created_tables.is_empty()
    }
}

/// One statement of the file, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemaStatement {
    CreateKeyspace(String),
    Use,
    CreateTable { name: String, cql: String },
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

/// Splits the file into statements (comments dropped) and classifies them.
fn parse_schema(cql: &str, keyspace: &str) -> Result<Vec<SchemaStatement>, CassandraError> {
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
            let options = &statement[statement.len() - rest.len()..];
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
        } else {
            return Err(CassandraError::Config(format!(
                "schema statement not understood (only CREATE KEYSPACE/TABLE IF NOT EXISTS and USE): {statement}"
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

/// Creates the keyspace and tables that are missing, and reports what it
/// created. Does not change the session's current keyspace.
pub async fn apply_schema(
    session: &Session,
    keyspace: &str,
) -> Result<SchemaReport, CassandraError> {
    validate_keyspace_name(keyspace)?;
    let statements = parse_schema(SCHEMA_CQL, keyspace)?;
    let (keyspace_existed, tables_before) = existing_schema(session, keyspace).await?;
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
        }
    }
    let (keyspace_exists, tables_after) = existing_schema(session, keyspace).await?;
    if !keyspace_exists {
        return Err(CassandraError::Decode(format!(
            "keyspace {keyspace} missing after apply"
        )));
    }
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
    };
    if report.changed_anything() {
        tracing::info!(keyspace, created_keyspace = report.created_keyspace, created_tables = ?report.created_tables, "cassandra schema applied");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_schema_parses_and_is_rewritten_for_the_keyspace() {
        let statements = parse_schema(SCHEMA_CQL, "other_ks").unwrap();
        let SchemaStatement::CreateKeyspace(keyspace) = &statements[0] else {
            panic!("first statement must create the keyspace: {statements:?}");
        };
        assert!(keyspace.starts_with("CREATE KEYSPACE IF NOT EXISTS other_ks WITH replication"));
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
                "message_relations"
            ]
        );
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert!(validate_keyspace_name("chatpipe_t1").is_ok());
        assert!(validate_keyspace_name("").is_err());
        assert!(validate_keyspace_name("x; DROP").is_err());
        assert!(validate_keyspace_name("1abc").is_err());
    }
}
