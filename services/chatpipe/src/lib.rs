//! # chatpipe (library)
//!
//! How chatpipe's roles are put together, shared by the `chatpipe` binary,
//! the integration tests and the benches, so that none of them wires a role
//! by hand:
//!
//! - [`roles`]: one [`roles::spawn`]`(config, deps, context) ->`
//!   [`roles::RoleHandle`] for every role (edge, fan-out, persist, index,
//!   API): the role's own branch of the shutdown tree, its health, its
//!   metrics registry and its **ops listener** (`/metrics`, `/healthz`,
//!   `/readyz`, loopback by default, never on the public port), the same
//!   way for each. [`roles::defaults`] holds every default address once.
//! - [`supervise`]: running a set of roles until a signal or the first
//!   failure, then waiting for all of them to drain (`chatpipe all` and
//!   `chatpipe <role>`).
//! - [`secret`]: where the token secret comes from (there is no built-in
//!   one) and the private file the Quickstart keeps it in.
//! - [`jwks`]: token keys from a JWKS URL, fetched at start and kept
//!   current while running.
//!
//! Layering: this crate sits on top of the role crates; nothing below
//! depends on it.

pub mod jwks;
pub mod roles;
pub mod secret;
pub mod supervise;
