//! # chatpipe
//!
//! The one binary of chatpipe. Each role of the pipeline is a subcommand
//! (`edge`, `fanout`, `persist`, `index`, `api`), `all` runs every role in
//! one process (the Quickstart), `topology apply` creates the Kafka topics,
//! the Cassandra keyspace and the search index template, `token` signs a
//! bearer token with the configured secret and `secret init` creates that
//! secret. Roles are composed by the `chatpipe` library (`src/lib.rs`),
//! which the integration tests use too.
//!
//! This crate is the only place that uses `anyhow`: libraries return typed
//! errors, and here they become exit codes and messages.

mod cli;
mod commands;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    chatpipe_runtime::telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(commands::run(cli))
}
