//! # chatpipe-runtime
//!
//! The skeleton every chatpipe role runs on, so that a reader who knows one
//! service knows them all:
//!
//! - [`telemetry`]: `tracing` set-up (structured, `RUST_LOG`-filtered).
//! - [`metrics`]: a per-service Prometheus registry and helpers to build
//!   counters, gauges and histograms. Each service instance owns its registry,
//!   so several instances in one process (tests, the all-in-one mode) never
//!   mix their counts, and tests read counters directly instead of scraping.
//! - [`health`]: an explicit lifecycle per component (`Starting → Ready →
//!   Draining → Stopped`); `/readyz` is ready only when every component is.
//! - [`ops`]: the router of every role's ops listener: `/metrics`, `/healthz`,
//!   `/readyz`.
//! - [`shutdown`]: one cancellation tree and task tracker per process, wired
//!   to SIGINT/SIGTERM.
//!
//! Nothing here knows about Kafka, Cassandra or Elasticsearch.

pub mod health;
pub mod metrics;
pub mod ops;
pub mod shutdown;
pub mod telemetry;

pub use health::{ComponentState, Health};
pub use shutdown::Shutdown;
