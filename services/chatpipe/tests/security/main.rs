//! The security contract against the real running system (issue 11), in
//! one place: every probe here failed on the behaviour it guards against,
//! and passes now. One module per trust boundary.
//!
//! - [`edge`]: the push service's authentication, token lifetime and
//!   refresh on live sockets, token verification options (kid rotation,
//!   issuer, audience), admission per client address (connection cap,
//!   failed authentications, trusted proxies), and unique edge and worker
//!   ids.

#[path = "../common/mod.rs"]
mod common;

mod edge;
