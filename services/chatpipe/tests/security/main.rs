//! The security contract of issue 11 at a glance, against the real running
//! system (Kafka, Cassandra, OpenSearch and chatpipe's roles, started
//! in-process as the binary starts them): every probe here failed on the
//! behaviour it guards against, and passes now. One module per trust
//! boundary.
//!
//! - [`edge`]: the push service's authentication, token lifetime and
//!   refresh on live sockets, token verification options (kid rotation,
//!   issuer, audience), admission per client address (connection cap,
//!   failed authentications, trusted proxies), and unique edge and worker
//!   ids.
//! - [`membership`]: roles (owner, admin, member), the last owner, the
//!   member cap, history visibility for newcomers, and conversations made
//!   before roles existed.

#[path = "../common/mod.rs"]
mod common;

mod edge;
mod membership;
