//! The security contract of issue 11 at a glance: each module is one
//! trust boundary, tested against the real running system (Kafka,
//! Cassandra, OpenSearch and chatpipe's roles, started in-process as the
//! binary starts them). Every test here failed on the behaviour the issue
//! reported and passes since.
//!
//! - [`membership`]: roles (owner, admin, member), the last owner, the
//!   member cap, history visibility for newcomers, and conversations made
//!   before roles existed.

#[path = "../common/mod.rs"]
mod common;

mod membership;
