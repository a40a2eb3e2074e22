//! # chatpipe-benches
//!
//! Tools that tell chatpipe's limits on a given machine, each next to a
//! baseline measured in the same run:
//!
//! - `chatpipe-loadgen` ([`coordinator`], [`worker`], [`client`]): puts a
//!   realistic chat load on a running chatpipe (WebSocket edge + HTTP API),
//!   spread over several worker processes and loopback source addresses,
//!   measures connect rate, latencies (HdrHistogram), deliveries per second,
//!   errors, the edge's memory per connection and the consumer groups' lag,
//!   and **verifies** at the end that every acknowledged message reached
//!   every member that was online for it, history (exactly once, in order)
//!   and search. The same workers drive the baselines: the bare
//!   tokio-tungstenite server (`bare-ws`) and Centrifugo. Clients speak
//!   the contract through `chatpipe-client` (connect, hello, frames, the
//!   HTTP API), the Rust client the integration tests use too.
//! - `bare-ws`: the bare broadcast server baseline ([`bare`]).
//! - `kafka-produce-bench`: chatpipe's producer next to Kafka's own perf tool.
//! - CPU of every process of the stack (engines, each chatpipe role) and,
//!   apart, of the load generator, from `/proc/<pid>/stat` ([`cpu`]), per
//!   phase and per 1,000 acked messages; and with no client at all
//!   (`chatpipe-loadgen idle-cpu`, [`idle`]).
//! - the fault runner's Kafka probes (`chatpipe-loadgen kafka-leader`,
//!   `kafka-isr`, [`kafka_watch`]): the broker leading the busiest
//!   partitions, and when a killed broker left the ISRs and came back.
//! - `bench-report`: turns the JSON results into `RESULTS.md` and PNG plots
//!   ([`report`]).
//!
//! Delivery semantics under test are the contract's: acked means durable,
//! at-least-once delivery de-duplicated by `message_id`, per-conversation
//! order, nothing lost across reconnects (resume, or history catch-up on
//! `resumed:false`).

pub mod api;
pub mod bare;
pub mod client;
pub mod coordinator;
pub mod cpu;
pub mod idle;
pub mod kafka_watch;
pub mod plan;
pub mod prom;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod sys;
pub mod verify;
pub mod wire;
pub mod worker;

/// Unix time in microseconds (the clock every process on the host shares,
/// used to measure send → deliver across worker processes).
pub fn now_unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}
