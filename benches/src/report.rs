//! `bench-report`: turns the JSON results of one `benches/run.sh` into
//! `benches/RESULTS.md` (every figure next to its baseline and the ratio)
//! and PNG plots in `benches/results/`. The analysis (what bounds each
//! figure, how it extrapolates) is hand-written in `benches/NOTES.md` and
//! appended verbatim.
//!
//! Inputs, all JSON: the load generator's `<scenario>.json` (latency,
//! rates, verification, CPU per process), `idle-cpu.json` (the stack with
//! no client), `kafka-produce.json`, the role examples'
//! `persist.json` and `index.json` (their stdout), `timings.json` (how long
//! each step of `run.sh` took), the fuzzing passes' `fuzz.json`
//! (`benches/fuzz.sh`) and `fuzz-api.json` (`benches/fuzz-api.sh`) and
//! criterion's estimates.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Deserialize;

use crate::coordinator::{PhaseResult, ScenarioResult, TargetResult};
use crate::cpu::{CpuWindow, ProcessCpu, ProcessKind};
use crate::idle::IdleCpuResults;

/// The Kafka produce comparison (`kafka-produce-bench`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KafkaProduce {
    pub record_bytes: usize,
    pub records: usize,
    pub settings: String,
    pub chatpipe_median_records_per_s: f64,
    pub perf_tool_median_records_per_s: f64,
    pub ratio: f64,
}

/// The persist example's output (`cargo run -p chatpipe-persist --example
/// persist_throughput`, stdout).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PersistRun {
    pub records: u64,
    pub conversations: u64,
    pub partitions: u32,
    pub max_batch_records: u64,
    pub produce_records_per_s: f64,
    pub drain_seconds: f64,
    pub drain_rows_per_s: f64,
    /// After the first write (the group join excluded): the role's figure.
    pub steady_rows_per_s: f64,
    pub batches: u64,
    pub write_requests: u64,
    /// One `INSERT` per row, 64 in flight: the baseline.
    pub plain_insert_rows_per_s: f64,
    /// The writer's grouping without Kafka.
    pub grouped_write_rows_per_s: f64,
    /// Chat-shaped rounds (50 rows over 50 conversations), every
    /// partition its own request, side by side with `…_packed_…`: small
    /// partitions sharing a replica packed into one request. Absent from
    /// runs before the packing existed.
    #[serde(default)]
    pub chat_rounds_unpacked_rows_per_s: Option<f64>,
    #[serde(default)]
    pub chat_rounds_unpacked_requests: Option<u64>,
    #[serde(default)]
    pub chat_rounds_unpacked_cassandra_cpu_ms_per_1000_rows: Option<f64>,
    #[serde(default)]
    pub chat_rounds_packed_rows_per_s: Option<f64>,
    #[serde(default)]
    pub chat_rounds_packed_requests: Option<u64>,
    #[serde(default)]
    pub chat_rounds_packed_cassandra_cpu_ms_per_1000_rows: Option<f64>,
}

/// The index example's output (`cargo run -p chatpipe-index --example
/// index_throughput`, stdout).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IndexRun {
    pub records: u64,
    pub batch_size: u64,
    pub produce_records_per_s: f64,
    /// The same documents straight to `_bulk`: the baseline.
    pub bulk_baseline_docs_per_s: f64,
    pub indexer_seconds: f64,
    pub indexer_docs_per_s: f64,
    pub batches: u64,
    pub startup_seconds: f64,
    pub startup_docs: u64,
    /// After start-up (group join, first batch): the role's figure.
    pub steady_docs_per_s: f64,
    pub searches: u64,
    pub search_median_ms: f64,
    pub search_p95_ms: f64,
}

/// How long one step of `run.sh` took (`timings.json`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StepTiming {
    pub step: String,
    pub seconds: f64,
    /// The step's exit status (0: it succeeded).
    #[serde(default)]
    pub status: i32,
}

/// `timings.json`, written by `run.sh`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunTimings {
    /// `full` or `quick`.
    #[serde(default)]
    pub mode: String,
    pub steps: Vec<StepTiming>,
    pub total_seconds: f64,
}

/// One crate's properties in the long fuzzing pass (`fuzz.json`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FuzzTarget {
    #[serde(rename = "crate")]
    pub crate_name: String,
    /// What its properties cover.
    pub what: String,
    /// The properties that held for every case.
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// Inputs run: passed properties × cases per property.
    pub cases: u64,
    pub seconds: f64,
}

/// The long property-test pass (`benches/fuzz.sh`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FuzzRun {
    pub cases_per_property: u64,
    /// Cargo profile the properties ran in.
    pub profile: String,
    pub targets: Vec<FuzzTarget>,
    pub total_cases: u64,
    pub total_seconds: f64,
}

/// One `st run` of the API fuzzing (`fuzz-api.json`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiFuzzRunPart {
    pub name: String,
    /// `st run`'s exit status.
    pub status: i32,
    pub seconds: f64,
    pub operations_tested: Option<u64>,
    pub test_cases: Option<u64>,
    pub unique_failures: Option<u64>,
    #[serde(default)]
    pub failures: Vec<String>,
    #[serde(default)]
    pub errors: Vec<String>,
}

/// The HTTP API fuzzed against its OpenAPI document (`benches/fuzz-api.sh`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiFuzzRun {
    /// The schemathesis version.
    pub schemathesis: String,
    pub seed: u64,
    pub max_examples: u64,
    pub checks: String,
    pub seconds: f64,
    pub runs: Vec<ApiFuzzRunPart>,
}

/// One run of the fault runner (`benches/faults.sh`): a fault schedule
/// applied under load, and what the load generator verified afterwards.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FaultRun {
    pub run: String,
    #[serde(default)]
    pub faults: Vec<String>,
    /// Every fault was applied for real: the process was gone before its
    /// restart, and the restarted role reported ready.
    #[serde(default)]
    pub all_applied: bool,
    /// Seconds from each restart until the role reported ready.
    #[serde(default)]
    pub ready_after_s: Vec<f64>,
    #[serde(default)]
    pub acked: u64,
    #[serde(default)]
    pub delivered_by_catch_up: u64,
    /// Acked messages delivered neither live nor by catch-up.
    #[serde(default)]
    pub lost_live: u64,
    /// Conversations whose history was not every acked message exactly
    /// once, in the order recipients saw live.
    #[serde(default)]
    pub history_failures: u64,
    #[serde(default)]
    pub search_checked: u64,
    #[serde(default)]
    pub search_missing: u64,
    #[serde(default)]
    pub deliver_p99_ms: Option<f64>,
    #[serde(default)]
    pub passed: bool,
    /// Acked messages missing from history, and ids history holds twice.
    #[serde(default)]
    pub history_missing: u64,
    #[serde(default)]
    pub history_duplicated: u64,
    /// Sampled messages search returned more than once.
    #[serde(default)]
    pub search_duplicated: u64,
    /// Recipients whose live order of a conversation was not message-id
    /// order, and recipients whose live order differed from history's.
    #[serde(default)]
    pub id_order_violations: u64,
    #[serde(default)]
    pub live_order_mismatches: u64,
    /// Per fault (a rolling restart counts once): seconds from the fault
    /// until latency and throughput were normal again (None: not before
    /// the load ended).
    #[serde(default)]
    pub back_to_normal_s: Vec<Option<f64>>,
    /// Edges of the deployment, and reconnects of clients to another edge
    /// (of which after a stuck edge).
    #[serde(default)]
    pub edges: u64,
    #[serde(default)]
    pub edge_switches: u64,
    #[serde(default)]
    pub stalls: u64,
    /// The day the run was made (`faults.sh` keeps earlier rows of runs it
    /// did not repeat).
    #[serde(default)]
    pub date: Option<String>,
    /// Set when the run left no result to read.
    #[serde(default)]
    pub error: Option<String>,
    /// What each engine fault or clock skew of the run did (the broker or
    /// node killed, the ISRs, the skew seen).
    #[serde(default)]
    pub engine_faults: Vec<EngineFault>,
}

/// One engine fault (or clock skew) of a fault run, as `faults.sh` sums
/// it up.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EngineFault {
    pub fault: String,
    /// The broker or node killed (`kafka-2`, `cassandra-2`).
    #[serde(default)]
    pub killed: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    /// What the killed broker led of chat.messages when it was picked.
    #[serde(default)]
    pub led: Option<Led>,
    /// The killed broker leaving every ISR, and rejoining them all.
    #[serde(default)]
    pub isr_left: Option<IsrSeen>,
    #[serde(default)]
    pub isr_back: Option<IsrSeen>,
    #[serde(default)]
    pub acks_per_s_while_down: Option<AcksWhileDown>,
    /// A clock skew: the role, the offset asked and the one seen.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub skew_s: Option<i64>,
    #[serde(default)]
    pub skew_seen_s: Option<i64>,
}

/// What a killed broker led of chat.messages when the fault picked it.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Led {
    pub partitions_led: u64,
    pub partitions: u64,
    pub messages_led: u64,
    pub messages: u64,
}

/// One ISR watch of `chatpipe-loadgen kafka-isr` (its JSON, in part).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct IsrSeen {
    #[serde(default)]
    pub reached: bool,
    #[serde(default)]
    pub after_s: Option<f64>,
    #[serde(default)]
    pub smallest_isr_seen: Option<u64>,
    #[serde(default)]
    pub most_under_replicated_seen: u64,
    #[serde(default)]
    pub most_without_leader_seen: u64,
}

/// Acks per second of the load's timeline from the kill until the engine
/// was back.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct AcksWhileDown {
    pub seconds: u64,
    pub min: f64,
    pub median: f64,
}

/// `benches/results/faults.json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FaultRuns {
    pub runs: Vec<FaultRun>,
}

/// Everything one report is made of.
#[derive(Debug, Default)]
pub struct Inputs {
    pub scenarios: Vec<ScenarioResult>,
    pub kafka: Option<KafkaProduce>,
    pub persist: Option<PersistRun>,
    pub index: Option<IndexRun>,
    pub idle_cpu: Option<IdleCpuResults>,
    pub timings: Option<RunTimings>,
    pub fuzz: Option<FuzzRun>,
    pub fuzz_api: Option<ApiFuzzRun>,
    pub faults: Option<FaultRuns>,
    /// `(benchmark, median ns)` from criterion.
    pub criterion: Vec<(String, f64)>,
    pub notes: String,
}

/// The JSON object an example printed: its last stdout line that parses
/// (anything a library printed to stdout before it is skipped).
pub fn parse_example_output<T: serde::de::DeserializeOwned>(stdout: &str) -> Option<T> {
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .filter(|line| line.starts_with('{'))
        .find_map(|line| serde_json::from_str(line).ok())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Reads `results_dir` (and criterion's estimates under `criterion_dir`).
pub fn load(results_dir: &Path, criterion_dir: Option<&Path>, notes: Option<&Path>) -> Inputs {
    let mut inputs = Inputs::default();
    for name in ["idle", "chat", "broadcast", "storm", "chat-lifecycle"] {
        if let Ok(bytes) = std::fs::read(results_dir.join(format!("{name}.json")))
            && let Ok(result) = serde_json::from_slice::<ScenarioResult>(&bytes)
        {
            inputs.scenarios.push(result);
        }
    }
    inputs.kafka = read_json(&results_dir.join("kafka-produce.json"));
    inputs.persist = std::fs::read_to_string(results_dir.join("persist.json"))
        .ok()
        .and_then(|text| parse_example_output(&text));
    inputs.index = std::fs::read_to_string(results_dir.join("index.json"))
        .ok()
        .and_then(|text| parse_example_output(&text));
    inputs.idle_cpu = read_json(&results_dir.join("idle-cpu.json"));
    inputs.timings = read_json(&results_dir.join("timings.json"));
    inputs.fuzz = read_json(&results_dir.join("fuzz.json"));
    inputs.fuzz_api = read_json(&results_dir.join("fuzz-api.json"));
    inputs.faults = read_json(&results_dir.join("faults.json"));
    if let Some(dir) = criterion_dir {
        inputs.criterion = criterion_estimates(dir);
    }
    if let Some(path) = notes {
        inputs.notes = std::fs::read_to_string(path).unwrap_or_default();
    }
    inputs
}

fn criterion_estimates(dir: &Path) -> Vec<(String, f64)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let child = entry.path();
            if child.is_dir() {
                stack.push(child);
            } else if child.ends_with("new/estimates.json") {
                let name = child
                    .parent()
                    .and_then(Path::parent)
                    .and_then(|bench| bench.strip_prefix(dir).ok())
                    .map(|relative| relative.display().to_string())
                    .unwrap_or_default();
                let Some(benchmark) = std::fs::read(child.parent().unwrap().join("benchmark.json"))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                else {
                    continue;
                };
                let full = benchmark["full_id"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or(name);
                if let Ok(bytes) = std::fs::read(&child)
                    && let Ok(estimates) = serde_json::from_slice::<serde_json::Value>(&bytes)
                    && let Some(median) = estimates["median"]["point_estimate"].as_f64()
                {
                    found.push((full, median));
                }
            }
        }
    }
    found.sort_by(|left, right| left.0.cmp(&right.0));
    found
}

fn scenario<'a>(inputs: &'a Inputs, name: &str) -> Option<&'a ScenarioResult> {
    inputs
        .scenarios
        .iter()
        .find(|result| result.scenario == name)
}

fn target<'a>(result: Option<&'a ScenarioResult>, prefix: &str) -> Option<&'a TargetResult> {
    result?
        .targets
        .iter()
        .find(|target| target.target.starts_with(prefix))
}

fn best_deliveries(target: &TargetResult) -> f64 {
    target
        .phases
        .iter()
        .map(|phase| phase.deliveries_per_s)
        .fold(0.0, f64::max)
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}", ours / theirs)
    } else {
        "—".into()
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// Writes RESULTS.md and the plots; returns the Markdown.
pub fn write(inputs: &Inputs, results_dir: &Path, markdown_path: &Path) -> anyhow::Result<String> {
    register_font();
    let mut plots = Vec::new();
    if let Some(path) = plot_memory(inputs, results_dir)? {
        plots.push(path);
    }
    if let Some(path) = plot_broadcast(inputs, results_dir)? {
        plots.push(path);
    }
    if let Some(path) = plot_latency(inputs, results_dir)? {
        plots.push(path);
    }
    if let Some(path) = plot_cpu(inputs, results_dir)? {
        plots.push(path);
    }
    let markdown = markdown(
        inputs,
        &plots,
        markdown_path.parent().unwrap_or(Path::new(".")),
    );
    std::fs::write(markdown_path, &markdown)?;
    Ok(markdown)
}

fn markdown(inputs: &Inputs, plots: &[PathBuf], base: &Path) -> String {
    let mut out = String::new();
    let machine = inputs
        .scenarios
        .first()
        .map(|result| result.machine.clone())
        .unwrap_or_default();
    let _ = writeln!(out, "# chatpipe benchmark results\n");
    let _ = writeln!(
        out,
        "Written by `benches/run.sh` (`bench-report`) from the JSON in `benches/results/`. Every figure was measured next to its baseline **in the same run**, on the same machine, with the same client (`chatpipe-loadgen`). Machine: {machine}. The engines (Kafka, Cassandra, OpenSearch) share those two cores.\n"
    );
    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(
        out,
        "| figure | chatpipe | baseline(s) | ratio | target | |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let idle = scenario(inputs, "idle");
    if let Some(ours) = target(idle, "chatpipe") {
        let bare4 = target(idle, "bare-ws (4 KiB");
        let bare1 = target(idle, "bare-ws (1 KiB");
        let bare_default = target(idle, "bare-ws (default");
        let centrifugo = target(idle, "centrifugo");
        let mut baselines = Vec::new();
        for (name, base) in [
            ("bare 1 KiB", bare1),
            ("bare 4 KiB", bare4),
            ("bare default", bare_default),
            ("Centrifugo", centrifugo),
        ] {
            if let Some(base) = base {
                baselines.push(format!("{name} {:.2} KiB", base.kib_per_connection));
            }
        }
        let _ = writeln!(
            out,
            "| idle memory per connection, {} connections on one edge | {:.2} KiB | {} | {} vs bare 1 KiB (the edge's default read buffer); {} vs bare 4 KiB; {} vs Centrifugo | < 6 KiB | {} |",
            ours.connections,
            ours.kib_per_connection,
            baselines.join("; "),
            ratio(
                ours.kib_per_connection,
                bare1.map(|t| t.kib_per_connection).unwrap_or(0.0)
            ),
            ratio(
                ours.kib_per_connection,
                bare4.map(|t| t.kib_per_connection).unwrap_or(0.0)
            ),
            ratio(
                ours.kib_per_connection,
                centrifugo.map(|t| t.kib_per_connection).unwrap_or(0.0)
            ),
            verdict(ours.kib_per_connection < 6.0 && ours.connections >= 15_000)
        );
        let _ = writeln!(
            out,
            "| connect rate (idle, edge limit 2,000/s) | {:.0}/s | bare 4 KiB {:.0}/s | {} | — | |",
            ours.connect_rate_per_s,
            bare4.map(|t| t.connect_rate_per_s).unwrap_or(0.0),
            ratio(
                ours.connect_rate_per_s,
                bare4.map(|t| t.connect_rate_per_s).unwrap_or(0.0)
            ),
        );
    }
    let broadcast = scenario(inputs, "broadcast");
    if let Some(ours) = target(broadcast, "chatpipe") {
        let bare = target(broadcast, "bare-ws");
        let centrifugo = target(broadcast, "centrifugo");
        let ours_best = best_deliveries(ours);
        let bare_best = bare.map(best_deliveries).unwrap_or(0.0);
        let centrifugo_best = centrifugo.map(best_deliveries).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "| broadcast deliveries/s to a {}-member group (best phase) | {:.0}/s | bare {:.0}/s; Centrifugo {:.0}/s | {} of bare; {} of Centrifugo | ≥ 0.75 of bare, ≥ 1.5× Centrifugo | {} |",
            ours.connections,
            ours_best,
            bare_best,
            centrifugo_best,
            ratio(ours_best, bare_best),
            ratio(ours_best, centrifugo_best),
            verdict(
                bare_best > 0.0
                    && ours_best >= 0.75 * bare_best
                    && centrifugo_best > 0.0
                    && ours_best >= 1.5 * centrifugo_best
            )
        );
    }
    let chat = scenario(inputs, "chat");
    if let Some(ours) = target(chat, "chatpipe")
        && let Some(top) = ours
            .phases
            .iter()
            .max_by(|a, b| a.rate_per_s.total_cmp(&b.rate_per_s))
    {
        {
            // Issue 10's targets, each read from one phase's own window.
            if let Some(at_1000) = ours
                .phases
                .iter()
                .find(|phase| (phase.rate_per_s - 1_000.0).abs() < 0.5)
            {
                let cpu = phase_cpu_per_thousand(at_1000);
                let _ = writeln!(
                    out,
                    "| chat at 1,000 msg/s offered: acks/s, send→deliver p99 (median of 1 s windows), whole-stack CPU per 1,000 acked | {:.0} acked/s, p99 {:.1} ms, {} CPU s | — | — | p99 ≤ 50 ms, CPU ≤ 1.0 s | {} |",
                    at_1000.acks_per_s,
                    at_1000.deliver_p99_ms_median,
                    cpu.map(|value| format!("{value:.2}"))
                        .unwrap_or_else(|| "?".into()),
                    verdict(
                        at_1000.deliver_p99_ms_median > 0.0
                            && at_1000.deliver_p99_ms_median <= 50.0
                            && cpu.is_some_and(|value| value <= 1.0)
                    )
                );
            }
            match ours
                .phases
                .iter()
                .filter(|phase| {
                    phase.acks_per_s >= 0.95 * phase.rate_per_s
                        && phase.deliver_p99_ms_median > 0.0
                        && phase.deliver_p99_ms_median <= 250.0
                })
                .max_by(|a, b| a.rate_per_s.total_cmp(&b.rate_per_s))
            {
                Some(sustained) => {
                    let cpu = phase_cpu_per_thousand(sustained);
                    let _ = writeln!(
                        out,
                        "| highest chat rate sustained (acks ≥ 95 % of offered, send→deliver p99 ≤ 250 ms) and its CPU per 1,000 acked | {:.0} msg/s (p99 {:.1} ms), {} CPU s | — | — | ≥ 2,500 msg/s, CPU ≤ 0.5 s | {} |",
                        sustained.rate_per_s,
                        sustained.deliver_p99_ms_median,
                        cpu.map(|value| format!("{value:.2}"))
                            .unwrap_or_else(|| "?".into()),
                        verdict(
                            sustained.rate_per_s >= 2_500.0
                                && cpu.is_some_and(|value| value <= 0.5)
                        )
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "| highest chat rate sustained (acks ≥ 95 % of offered, send→deliver p99 ≤ 250 ms) | no phase | — | — | ≥ 2,500 msg/s, CPU ≤ 0.5 s | {} |",
                        verdict(false)
                    );
                }
            }
            let _ = writeln!(
                out,
                "| chat, highest offered rate (saturation) | offered {:.0}/s: {:.0} acked/s, {:.0} deliveries/s, send→deliver p99 {:.1} ms, {} CPU s per 1,000 acked | — | {} of offered | — | |",
                top.rate_per_s,
                top.acks_per_s,
                top.deliveries_per_s,
                top.deliver_p99_ms_median,
                phase_cpu_per_thousand(top)
                    .map(|value| format!("{value:.2}"))
                    .unwrap_or_else(|| "?".into()),
                ratio(top.acks_per_s, top.rate_per_s),
            );
            let lag_max: Vec<String> = ours
                .lag_max_during
                .iter()
                .map(|(g, l)| format!("{g} {l:.0}"))
                .collect();
            let lag_end: Vec<String> = ours
                .lag_after
                .iter()
                .map(|(g, l)| format!("{g} {l:.0}"))
                .collect();
            let _ = writeln!(
                out,
                "| consumer lag (records), max during / after the run | {} / {} | — | — | keeping up | |",
                lag_max.join(", "),
                lag_end.join(", ")
            );
        }
    }
    if let Some(kafka) = &inputs.kafka {
        let _ = writeln!(
            out,
            "| Kafka produce path, {}-byte records | {:.0} records/s | ProducerPerformance {:.0} records/s | {:.2} | — | |",
            kafka.record_bytes,
            kafka.chatpipe_median_records_per_s,
            kafka.perf_tool_median_records_per_s,
            kafka.ratio
        );
    }
    if let Some(persist) = &inputs.persist {
        let (role, base) = (persist.steady_rows_per_s, persist.plain_insert_rows_per_s);
        let _ = writeln!(
            out,
            "| Cassandra writer (persist role, Kafka → Cassandra) | {role:.0} rows/s | plain concurrent INSERTs {base:.0} rows/s | {} | ≥ 0.80 | {} |",
            ratio(role, base),
            verdict(base > 0.0 && role / base >= 0.8)
        );
    }
    if let Some(index) = &inputs.index {
        let (role, base) = (index.steady_docs_per_s, index.bulk_baseline_docs_per_s);
        let _ = writeln!(
            out,
            "| indexer (index role, Kafka → `_bulk`) | {role:.0} docs/s | raw `_bulk` {base:.0} docs/s | {} | ≥ 0.80 | {} |",
            ratio(role, base),
            verdict(base > 0.0 && role / base >= 0.8)
        );
    }
    summary_cpu_rows(&mut out, inputs);
    let storm = scenario(inputs, "storm");
    if let Some(ours) = target(storm, "chatpipe")
        && let Some(result) = &ours.storm
    {
        let _ = writeln!(
            out,
            "| mass reconnect of {} connections within 2 s | back in {} s; {} resumed, {} resume refused, {} refusals (1013) | — | — | nothing lost | {} |",
            result.dropped,
            result
                .recovered_s
                .map(|s| format!("{s:.1}"))
                .unwrap_or_else(|| "—".into()),
            result.resumed,
            result.resume_refused,
            result.refused_try_later,
            verdict(ours.verification.as_ref().is_some_and(|v| v.passed))
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Verification (every acknowledged message delivered to every member online for it, in history exactly once and in order, found by search):\n"
    );
    for result in &inputs.scenarios {
        for target in &result.targets {
            if let Some(verification) = &target.verification {
                let deliveries = &verification.deliveries;
                let _ = writeln!(
                    out,
                    "- **{}**: {} — {} acked messages, {} member deliveries expected ({} live, {} by history catch-up, {} missing), {} order violations; history of {} conversations ({} failed); search {}/{} found.",
                    result.scenario,
                    if verification.passed {
                        "PASSED"
                    } else {
                        "FAILED"
                    },
                    deliveries.acked_messages,
                    deliveries.expected,
                    deliveries.delivered_live,
                    deliveries.delivered_by_catch_up,
                    deliveries
                        .missing_total
                        .max(deliveries.missing.len() as u64),
                    deliveries.order_violations.len(),
                    verification.history_conversations,
                    verification.history_failures.len(),
                    verification.search_checked - verification.search_missing.len() as u64,
                    verification.search_checked
                );
                if let Some(lifecycle) = &verification.lifecycle {
                    let frames = &lifecycle.frames;
                    let _ = writeln!(
                        out,
                        "  - life after send: {} edits, {} deletes, {} reactions acked ({} refused on deleted messages, {} refused otherwise); {} member frames expected ({} missing); history: {} changed messages, {} in a wrong state; search: {}/{} changed messages as expected.",
                        frames.edits,
                        frames.deletes,
                        frames.reactions,
                        frames.refused_deleted,
                        frames.unexpected_refusals.len(),
                        frames.expected,
                        frames.missing_total,
                        lifecycle.history_checked,
                        lifecycle.history_wrong_total,
                        lifecycle.search_checked - lifecycle.search_wrong.len() as u64,
                        lifecycle.search_checked
                    );
                }
            }
        }
    }
    let _ = writeln!(out);
    if !plots.is_empty() {
        let _ = writeln!(out, "## Plots\n");
        for plot in plots {
            let relative = plot.strip_prefix(base).unwrap_or(plot);
            let _ = writeln!(out, "![{}]({})\n", relative.display(), relative.display());
        }
    }
    for result in &inputs.scenarios {
        let _ = writeln!(
            out,
            "## Scenario `{}`\n\n{}\n",
            result.scenario, result.description
        );
        let _ = writeln!(
            out,
            "| target | connections | connect/s | KiB/conn | send→ack p50 / p99 / p99.9 / max (ms) | send→deliver p50 / p99 / p99.9 / max (ms) | errors |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for target in &result.targets {
            let errors: Vec<String> = target
                .totals
                .errors
                .iter()
                .map(|(code, count)| format!("{code}: {count}"))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} / {:.1} | {} |",
                target.target,
                target.connections,
                target.connect_rate_per_s,
                target.kib_per_connection,
                target.ack_latency.p50_ms,
                target.ack_latency.p99_ms,
                target.ack_latency.p999_ms,
                target.ack_latency.max_ms,
                target.deliver_latency.p50_ms,
                target.deliver_latency.p99_ms,
                target.deliver_latency.p999_ms,
                target.deliver_latency.max_ms,
                if errors.is_empty() {
                    "none".to_owned()
                } else {
                    errors.join(", ")
                }
            );
        }
        let with_phases: Vec<&TargetResult> = result
            .targets
            .iter()
            .filter(|t| !t.phases.is_empty())
            .collect();
        if !with_phases.is_empty() {
            let _ = writeln!(
                out,
                "\n| target | offered msg/s | sends/s | acks/s | deliveries/s | p99 ack (ms) | p99 deliver (ms) | stack CPU s per 1,000 acked | stack CPU, cores | load generator CPU, cores |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
            for target in with_phases {
                for phase in &target.phases {
                    let (per_thousand, stack_cores, loadgen_cores) = match &phase.cpu {
                        Some(cpu) => (
                            CpuWindow::per_thousand(cpu.stack_cpu_seconds(), phase.acks)
                                .map(|value| format!("{value:.2}"))
                                .unwrap_or_else(|| "—".into()),
                            format!("{:.2}", cpu.share_of_core(cpu.stack_cpu_seconds())),
                            format!("{:.2}", cpu.share_of_core(cpu.load_generator_cpu_seconds())),
                        ),
                        None => ("—".into(), "—".into(), "—".into()),
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {per_thousand} | {stack_cores} | {loadgen_cores} |",
                        target.target,
                        phase.rate_per_s,
                        phase.sends_per_s,
                        phase.acks_per_s,
                        phase.deliveries_per_s,
                        phase.ack_p99_ms_median,
                        phase.deliver_p99_ms_median
                    );
                }
            }
        }
        for target in &result.targets {
            lifecycle_table(&mut out, target);
            cpu_table(&mut out, target);
        }
        let _ = writeln!(out);
    }
    idle_cpu_section(&mut out, inputs);
    if let Some(kafka) = &inputs.kafka {
        let _ = writeln!(
            out,
            "## Kafka produce path\n\n{} records of {} bytes per round; {}.\n",
            kafka.records, kafka.record_bytes, kafka.settings
        );
    }
    if let Some(persist) = &inputs.persist {
        let _ = writeln!(
            out,
            "## Cassandra writer (persist example)\n\n{} records in {} conversations, {} partitions, `max_batch_records` {}.\n\n| measurement | rows/s |\n|---|---|\n| pre-produce (acks=all, 2,000 in flight) | {:.0} |\n| persist role drain, group join included ({:.1} s) | {:.0} |\n| persist role after the first write ({} batches, {} Cassandra requests) | {:.0} |\n| baseline: one INSERT per row, 64 in flight | {:.0} |\n| the writer's grouping without Kafka, 64 in flight | {:.0} |\n",
            persist.records,
            persist.conversations,
            persist.partitions,
            persist.max_batch_records,
            persist.produce_records_per_s,
            persist.drain_seconds,
            persist.drain_rows_per_s,
            persist.batches,
            persist.write_requests,
            persist.steady_rows_per_s,
            persist.plain_insert_rows_per_s,
            persist.grouped_write_rows_per_s
        );
        if let (Some(unpacked), Some(packed)) = (
            persist.chat_rounds_unpacked_rows_per_s,
            persist.chat_rounds_packed_rows_per_s,
        ) {
            let cpu = |ms: Option<f64>| ms.map_or("–".to_owned(), |ms| format!("{ms:.0}"));
            let _ = writeln!(
                out,
                "Chat-shaped write rounds (what persist sees under chat traffic: 50 rows over 50 conversations, 8 rounds in flight), side by side, medians of three passes each:\n\n| requests | rows/s | Cassandra CPU ms per 1,000 rows |\n|---|---|---|\n| one per partition ({}) | {unpacked:.0} | {} |\n| small partitions packed per replica ({}) | {packed:.0} | {} |\n",
                persist.chat_rounds_unpacked_requests.unwrap_or(0),
                cpu(persist.chat_rounds_unpacked_cassandra_cpu_ms_per_1000_rows),
                persist.chat_rounds_packed_requests.unwrap_or(0),
                cpu(persist.chat_rounds_packed_cassandra_cpu_ms_per_1000_rows),
            );
        }
    }
    if let Some(index) = &inputs.index {
        let _ = writeln!(
            out,
            "## Indexer (index example)\n\n{} records, batch size {}.\n\n| measurement | docs/s |\n|---|---|\n| pre-produce | {:.0} |\n| baseline: direct `_bulk` | {:.0} |\n| indexer, Kafka → `_bulk`, start-up included ({:.1} s, {} batches) | {:.0} |\n| indexer after start-up ({:.1} s, first {} docs) | {:.0} |\n\nSearch latency over {} searches: median {:.1} ms, p95 {:.1} ms.\n",
            index.records,
            index.batch_size,
            index.produce_records_per_s,
            index.bulk_baseline_docs_per_s,
            index.indexer_seconds,
            index.batches,
            index.indexer_docs_per_s,
            index.startup_seconds,
            index.startup_docs,
            index.steady_docs_per_s,
            index.searches,
            index.search_median_ms,
            index.search_p95_ms
        );
    }
    if !inputs.criterion.is_empty() {
        let _ = writeln!(
            out,
            "## Micro-benchmarks (criterion, median)\n\n| benchmark | median |\n|---|---|"
        );
        for (name, nanos) in &inputs.criterion {
            let shown = if *nanos >= 1e6 {
                format!("{:.2} ms", nanos / 1e6)
            } else if *nanos >= 1e3 {
                format!("{:.2} µs", nanos / 1e3)
            } else {
                format!("{nanos:.0} ns")
            };
            let _ = writeln!(out, "| {name} | {shown} |");
        }
        let _ = writeln!(out);
    }
    fuzz_section(&mut out, inputs);
    faults_section(&mut out, inputs);
    timings_section(&mut out, inputs);
    if !inputs.notes.is_empty() {
        let _ = writeln!(out, "{}", inputs.notes.trim());
    }
    out
}

/// The stack's CPU seconds per 1,000 messages acked in one phase.
fn phase_cpu_per_thousand(phase: &PhaseResult) -> Option<f64> {
    let window = phase.cpu.as_ref()?;
    CpuWindow::per_thousand(window.stack_cpu_seconds(), phase.acks)
}

/// The stack's CPU per 1,000 acked messages, and with no client at all.
fn summary_cpu_rows(out: &mut String, inputs: &Inputs) {
    for result in &inputs.scenarios {
        let Some(ours) = target(Some(result), "chatpipe") else {
            continue;
        };
        let Some(measured) = &ours.cpu.measured else {
            continue;
        };
        let Some(per_thousand) =
            CpuWindow::per_thousand(measured.stack_cpu_seconds(), ours.cpu.measured_acks)
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "| whole-stack CPU per 1,000 acked messages, {} (all phases and the drain; engines + chatpipe, load generator apart) | {per_thousand:.2} CPU s | load generator {:.2} CPU s | — | — | |",
            result.scenario,
            CpuWindow::per_thousand(
                measured.load_generator_cpu_seconds(),
                ours.cpu.measured_acks
            )
            .unwrap_or(0.0),
        );
        let lifecycle = &ours.cpu.measured_lifecycle;
        if let Some(per_operation) = CpuWindow::per_thousand(
            measured.stack_cpu_seconds(),
            ours.cpu.measured_acks + lifecycle.operations(),
        )
        .filter(|_| lifecycle.operations() > 0)
        {
            let _ = writeln!(
                out,
                "| whole-stack CPU per 1,000 operations, {} (acked messages plus their {} edits, deletes, reactions and reads) | {per_operation:.2} CPU s | — | — | — | |",
                result.scenario,
                lifecycle.operations()
            );
        }
    }
    let Some(idle) = &inputs.idle_cpu else {
        return;
    };
    // Kafka's share with nothing of chatpipe running: the floor the "stack,
    // no client" window is held to (at most twice it).
    let kafka_share = |window: &CpuWindow| {
        window
            .processes
            .iter()
            .find(|process| process.kind == ProcessKind::Engine && process.name == "kafka")
            .and_then(|process| process.cpu_seconds)
            .map(|seconds| window.share_of_core(seconds))
    };
    let kafka_alone = idle
        .measurements
        .iter()
        .find(|measurement| {
            !measurement
                .window
                .processes
                .iter()
                .any(|process| process.kind == ProcessKind::Chatpipe)
        })
        .and_then(|measurement| kafka_share(&measurement.window));
    for measurement in &idle.measurements {
        let window = &measurement.window;
        let chatpipe = window.cpu_seconds_where(|kind| kind == ProcessKind::Chatpipe);
        let engines: Vec<String> = window
            .processes
            .iter()
            .filter(|process| process.kind == ProcessKind::Engine)
            .map(|process| {
                format!(
                    "{} {}",
                    process.name,
                    percent_of_core(window, process.cpu_seconds)
                )
            })
            .collect();
        let has_chatpipe = window
            .processes
            .iter()
            .any(|process| process.kind == ProcessKind::Chatpipe);
        let _ = writeln!(
            out,
            "| idle CPU, {} ({:.0} s) | {} | {} | {} | chatpipe ≤ 1 % of a core; Kafka ≤ 2× its share alone | {} |",
            measurement.label,
            window.seconds,
            if has_chatpipe {
                format!(
                    "chatpipe {:.1} % of a core",
                    window.share_of_core(chatpipe) * 100.0
                )
            } else {
                "—".into()
            },
            engines.join(", "),
            match (has_chatpipe, kafka_share(window), kafka_alone) {
                (true, Some(with), Some(alone)) if alone > 0.0 =>
                    format!("Kafka {:.1}× alone", with / alone),
                _ => "—".into(),
            },
            if has_chatpipe {
                verdict(
                    window.share_of_core(chatpipe) <= 0.01
                        && match (kafka_share(window), kafka_alone) {
                            (Some(with), Some(alone)) => with <= 2.0 * alone,
                            _ => false,
                        },
                )
            } else {
                ""
            }
        );
    }
}

fn percent_of_core(window: &CpuWindow, cpu_seconds: Option<f64>) -> String {
    cpu_seconds
        .map(|seconds| format!("{:.1} %", window.share_of_core(seconds) * 100.0))
        .unwrap_or_else(|| "?".into())
}

fn kind_name(kind: ProcessKind) -> &'static str {
    match kind {
        ProcessKind::Engine => "engine",
        ProcessKind::Chatpipe => "chatpipe",
        ProcessKind::Baseline => "baseline server",
        ProcessKind::LoadGenerator => "load generator",
    }
}

/// What a scenario with `[lifecycle]` did besides sending, and the
/// stack's CPU per 1,000 acked messages (their edits, deletes, reactions
/// and reads included) and per 1,000 operations of any kind.
fn lifecycle_table(out: &mut String, target: &TargetResult) {
    let lifecycle = &target.cpu.measured_lifecycle;
    let Some(window) = &target.cpu.measured else {
        return;
    };
    if lifecycle.operations() == 0 {
        return;
    }
    let rate = |count: u64| count as f64 / window.seconds.max(f64::EPSILON);
    let changes = lifecycle.edits + lifecycle.deletes + lifecycle.reactions;
    let operations = target.cpu.measured_acks + lifecycle.operations();
    let per_thousand = |count: u64| {
        CpuWindow::per_thousand(window.stack_cpu_seconds(), count)
            .map(|value| format!("{value:.3}"))
            .unwrap_or_else(|| "—".into())
    };
    let _ = writeln!(
        out,
        "
Messages and their life after send, **{}**, phases and drain ({:.0} s):

| operation | count | per second |
|---|---|---|",
        target.target, window.seconds
    );
    for (label, count) in [
        ("messages acked", target.cpu.measured_acks),
        ("edits acked", lifecycle.edits),
        ("deletes acked", lifecycle.deletes),
        ("reactions acked", lifecycle.reactions),
        ("reads sent", lifecycle.reads),
        ("edits, deletes and reactions refused", lifecycle.refused),
        (
            "edit, delete and reaction frames received",
            lifecycle.frames,
        ),
    ] {
        let _ = writeln!(out, "| {label} | {count} | {:.1} |", rate(count));
    }
    let _ = writeln!(
        out,
        "
Whole-stack CPU (engines + chatpipe): {} CPU s per 1,000 acked messages (with their {changes} changes and {} reads), {} CPU s per 1,000 operations ({operations} messages, changes and reads).",
        per_thousand(target.cpu.measured_acks),
        lifecycle.reads,
        per_thousand(operations)
    );
}

/// One target's CPU per process: over phases and drain when it sent
/// anything, else over the idle connections' settle pause.
fn cpu_table(out: &mut String, target: &TargetResult) {
    let (window, acks, what) = match (&target.cpu.measured, &target.cpu.settle) {
        (Some(measured), _) => (measured, target.cpu.measured_acks, "phases and drain"),
        (None, Some(settle)) => (settle, 0, "connections open, nothing sent"),
        (None, None) => return,
    };
    let _ = writeln!(
        out,
        "\nCPU of **{}**, {what} ({:.0} s, {acks} acked messages; `/proc/<pid>/stat` utime + stime):\n",
        target.target, window.seconds
    );
    let _ = writeln!(
        out,
        "| process | kind | CPU s | % of a core | CPU s per 1,000 acked |\n|---|---|---|---|---|"
    );
    let per_thousand = |cpu: f64| {
        CpuWindow::per_thousand(cpu, acks)
            .map(|value| format!("{value:.3}"))
            .unwrap_or_else(|| "—".into())
    };
    for process in &window.processes {
        let cpu = process
            .cpu_seconds
            .map(|value| format!("{value:.1}"))
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "| {} | {} | {cpu} | {} | {} |",
            process.name,
            kind_name(process.kind),
            percent_of_core(window, process.cpu_seconds),
            process
                .cpu_seconds
                .map(per_thousand)
                .unwrap_or_else(|| "?".into())
        );
    }
    // Several edges (edge-1, edge-2, …): their sum too, as a sub-total (the
    // stack's total below counts each process once).
    let edges: Vec<&ProcessCpu> = window
        .processes
        .iter()
        .filter(|process| is_numbered_edge(&process.name))
        .collect();
    if edges.len() > 1 {
        let known: Vec<f64> = edges.iter().filter_map(|edge| edge.cpu_seconds).collect();
        let cpu: f64 = known.iter().sum();
        let _ = writeln!(
            out,
            "| edges together ({} processes{}) | chatpipe | {cpu:.1} | {:.1} % | {} |",
            edges.len(),
            if known.len() < edges.len() {
                ", restarted ones not counted"
            } else {
                ""
            },
            window.share_of_core(cpu) * 100.0,
            per_thousand(cpu)
        );
    }
    for (label, cpu) in [
        (
            "**stack** (engines + chatpipe or the baseline server)",
            window.stack_cpu_seconds(),
        ),
        (
            "load generator (all its processes)",
            window.load_generator_cpu_seconds(),
        ),
    ] {
        let _ = writeln!(
            out,
            "| {label} | | {cpu:.1} | {:.1} % | {} |",
            window.share_of_core(cpu) * 100.0,
            per_thousand(cpu)
        );
    }
}

/// `edge-1`, `edge-2`, …: one of several edges (`benches/run.sh` names them so).
fn is_numbered_edge(name: &str) -> bool {
    name.strip_prefix("edge-")
        .is_some_and(|number| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
}

/// The stack with no client: % of a core per process, one column per
/// measurement.
fn idle_cpu_section(out: &mut String, inputs: &Inputs) {
    let Some(idle) = &inputs.idle_cpu else {
        return;
    };
    if idle.measurements.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Idle CPU (no client connected)\n\nShare of one core per process over a window with nothing connected (`chatpipe-loadgen idle-cpu`): the engines alone before any chatpipe process runs, then the whole stack started with no client.\n"
    );
    let mut names: Vec<(String, ProcessKind)> = Vec::new();
    for measurement in &idle.measurements {
        for process in &measurement.window.processes {
            if !names.iter().any(|(name, _)| name == &process.name) {
                names.push((process.name.clone(), process.kind));
            }
        }
    }
    let header: Vec<String> = idle
        .measurements
        .iter()
        .map(|m| format!("{} ({:.0} s)", m.label, m.window.seconds))
        .collect();
    let _ = writeln!(
        out,
        "| process | {} |\n|---|{}",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for (name, _) in &names {
        let cells: Vec<String> = idle
            .measurements
            .iter()
            .map(|measurement| {
                measurement
                    .window
                    .processes
                    .iter()
                    .find(|process| &process.name == name)
                    .map(|process| percent_of_core(&measurement.window, process.cpu_seconds))
                    .unwrap_or_else(|| "—".into())
            })
            .collect();
        let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
    }
    for (label, kind) in [
        ("all chatpipe processes", ProcessKind::Chatpipe),
        ("all engines", ProcessKind::Engine),
    ] {
        let cells: Vec<String> = idle
            .measurements
            .iter()
            .map(|measurement| {
                let window = &measurement.window;
                format!(
                    "{:.1} %",
                    window.share_of_core(window.cpu_seconds_where(|k| k == kind)) * 100.0
                )
            })
            .collect();
        let _ = writeln!(out, "| **{label}** | {} |", cells.join(" | "));
    }
    let _ = writeln!(out);
}

/// Thousands separators, for counts of inputs.
fn grouped(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The fuzzing passes: inputs run per target, and the API's schemathesis runs.
fn fuzz_section(out: &mut String, inputs: &Inputs) {
    if inputs.fuzz.is_none() && inputs.fuzz_api.is_none() {
        return;
    }
    let _ = writeln!(out, "## Fuzzing\n");
    if let Some(fuzz) = &inputs.fuzz {
        let _ = writeln!(
            out,
            "Property tests (`proptest`, stable Rust) run by `benches/fuzz.sh` with {} cases per property ({} profile); every `cargo test` runs the same properties with 256 cases each.\n\n| crate | what | properties held | failed | inputs run | seconds |\n|---|---|---|---|---|---|",
            grouped(fuzz.cases_per_property),
            fuzz.profile
        );
        for target in &fuzz.targets {
            let failed = if target.failed.is_empty() {
                "none".to_owned()
            } else {
                target.failed.join(", ")
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {failed} | {} | {:.0} |",
                target.crate_name,
                target.what,
                target.passed.len(),
                grouped(target.cases),
                target.seconds
            );
        }
        let _ = writeln!(
            out,
            "| **total** | | | | {} | {:.0} |\n",
            grouped(fuzz.total_cases),
            fuzz.total_seconds
        );
    }
    if let Some(api) = &inputs.fuzz_api {
        let _ = writeln!(
            out,
            "The HTTP API against its own OpenAPI document: schemathesis {} (`benches/fuzz-api.sh`, seed {}, up to {} examples per operation and phase, positive and negative data), checks `{}`.\n\n| run | operations | test cases | unique failures | seconds | result |\n|---|---|---|---|---|---|",
            api.schemathesis, api.seed, api.max_examples, api.checks
        );
        let shown = |count: Option<u64>| count.map_or_else(|| "—".to_owned(), grouped);
        for run in &api.runs {
            let mut result = if run.status == 0 {
                "passed".to_owned()
            } else {
                format!("exit {}", run.status)
            };
            for problem in run.failures.iter().chain(&run.errors) {
                let _ = write!(result, "; {problem}");
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {result} |",
                run.name,
                shown(run.operations_tested),
                shown(run.test_cases),
                shown(run.unique_failures),
                run.seconds
            );
        }
        let _ = writeln!(out);
    }
}

/// The fault runner's table: one row per fault schedule.
fn faults_section(out: &mut String, inputs: &Inputs) {
    let Some(faults) = &inputs.faults else {
        return;
    };
    let _ = writeln!(
        out,
        "## Faults\n\n`benches/faults.sh`: `benches/scenarios/faults.toml` (3,000 clients, 300 msg/s for 90 s, each role its own process) with one fault schedule per run, on two edges (each conversation's members spread over both; a client whose edge fails resumes on the other, or catches up from history). `kill9`: the role is checked gone, restarted 2 s later with the same arguments, and must report ready again; `rolling`: each edge in turn gets SIGTERM, drains, is checked gone, restarted and ready before the next; `sigstop`: the edge is seen stopped for longer than its 10 s lease, then resumed. Then the load generator's full verification. Target: zero loss in every row. *Back to normal*: seconds from the fault until send→deliver and send→ack p99 were within 2× (or +20 ms of) their level before the first fault, and acks/s at 80 % of it, for 5 s in a row, no earlier than the fault's end (restart ready, SIGCONT).\n\n| run | faults | applied | messages acked | lost live (neither live nor by catch-up) | by catch-up | history: conversations not exactly once in live order | search: missing of checked | role ready after restart | send→deliver p99 | verdict | history: messages missing / duplicated | search: duplicated | live order not id order / not history's (recipients) | back to normal | edges: clients moved (after a stall) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for run in &faults.runs {
        if let Some(error) = &run.error {
            let _ = writeln!(out, "| {} | | | | | | | | | | {error} | | | | | |", run.run);
            continue;
        }
        let ready: Vec<String> = run
            .ready_after_s
            .iter()
            .map(|s| format!("{s:.1} s"))
            .collect();
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {} | {} | {} | {} of {} | {} | {} | {} | {} / {} | {} | {} / {} | {} | {} |",
            run.date
                .as_ref()
                .map_or_else(|| run.run.clone(), |date| format!("{} ({date})", run.run)),
            run.faults.join(" "),
            if run.all_applied { "yes" } else { "**no**" },
            grouped(run.acked),
            run.lost_live,
            run.delivered_by_catch_up,
            run.history_failures,
            run.search_missing,
            run.search_checked,
            ready.join(", "),
            run.deliver_p99_ms
                .map_or_else(|| "—".to_owned(), |ms| format!("{ms:.0} ms")),
            if run.passed && run.all_applied {
                "passed"
            } else {
                "**failed**"
            },
            run.history_missing,
            run.history_duplicated,
            run.search_duplicated,
            run.id_order_violations,
            run.live_order_mismatches,
            back_to_normal(&run.back_to_normal_s),
            match run.edges {
                0 | 1 => "one edge".to_owned(),
                edges => format!("{edges}: {} ({})", grouped(run.edge_switches), run.stalls),
            }
        );
    }
    let details: Vec<String> = faults
        .runs
        .iter()
        .flat_map(|run| {
            run.engine_faults
                .iter()
                .map(move |fault| format!("- {}: {}", run.run, engine_fault_line(fault)))
        })
        .collect();
    if !details.is_empty() {
        let _ = writeln!(out, "\nWhat the engine faults and the clock skew did:\n");
        for line in details {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out);
}

/// One engine fault (or clock skew) in words.
fn engine_fault_line(fault: &EngineFault) -> String {
    let mut line = format!("`{}`", fault.fault);
    if let Some(skew) = fault.skew_s {
        let _ = write!(
            line,
            " ran {} with its clock {skew:+} s off (libfaketime); seen {}",
            fault.role.as_deref().unwrap_or("?"),
            fault.skew_seen_s.map_or_else(
                || "nothing".to_owned(),
                |seen| format!("{seen:+} s (HTTP Date)")
            ),
        );
        return line;
    }
    let _ = write!(line, " killed {}", fault.killed.as_deref().unwrap_or("?"));
    if let Some(address) = &fault.address {
        let _ = write!(line, " ({address})");
    }
    if let Some(led) = fault.led {
        let _ = write!(
            line,
            ", the leader of {} of {} partitions of chat.messages ({} of {} messages)",
            led.partitions_led,
            led.partitions,
            grouped(led.messages_led),
            grouped(led.messages)
        );
    }
    let isr = |seen: &IsrSeen, what: &str| match (seen.reached, seen.after_s) {
        (true, Some(after)) => format!("{what} after {after:.1} s"),
        _ => format!("**not {what}**"),
    };
    if let Some(left) = &fault.isr_left {
        let _ = write!(
            line,
            "; {} (smallest ISR seen {}, at most {} partitions under-replicated and {} without a leader)",
            isr(left, "out of every ISR"),
            left.smallest_isr_seen
                .map_or_else(|| "—".to_owned(), |size| size.to_string()),
            left.most_under_replicated_seen,
            left.most_without_leader_seen
        );
    }
    if let Some(back) = &fault.isr_back {
        match (back.reached, back.after_s) {
            (true, Some(after)) => {
                let _ = write!(
                    line,
                    "; back in every ISR (none under-replicated) {after:.1} s after it answered again"
                );
            }
            _ => line.push_str("; **not back in every ISR**"),
        }
    }
    if let Some(acks) = fault.acks_per_s_while_down {
        let _ = write!(
            line,
            "; acks/s until it was back: median {:.0}, lowest {:.0} ({} s)",
            acks.median, acks.min, acks.seconds
        );
    }
    line
}

/// The "back to normal" cell: one figure per fault.
fn back_to_normal(seconds: &[Option<f64>]) -> String {
    if seconds.is_empty() {
        return "—".to_owned();
    }
    seconds
        .iter()
        .map(|s| s.map_or_else(|| "not before the end".to_owned(), |s| format!("{s:.0} s")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long each step of `run.sh` took.
fn timings_section(out: &mut String, inputs: &Inputs) {
    let Some(timings) = &inputs.timings else {
        return;
    };
    let _ = writeln!(
        out,
        "## Run time ({} mode)\n\n| step | seconds | status |\n|---|---|---|",
        if timings.mode.is_empty() {
            "full"
        } else {
            &timings.mode
        }
    );
    for step in &timings.steps {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} |",
            step.step,
            step.seconds,
            if step.status == 0 {
                "ok".to_owned()
            } else {
                format!("exit {}", step.status)
            }
        );
    }
    let _ = writeln!(
        out,
        "| **total** | {:.0} ({:.1} min) | |\n",
        timings.total_seconds,
        timings.total_seconds / 60.0
    );
}

fn register_font() {
    for path in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ] {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return;
            }
        }
    }
    eprintln!(
        "bench-report: no TrueType font found (install fonts-dejavu-core); plots will lack text"
    );
}

type PlotResult = anyhow::Result<Option<PathBuf>>;

fn plot_err<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {error:?}")
}

const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

fn plot_memory(inputs: &Inputs, dir: &Path) -> PlotResult {
    let Some(idle) = scenario(inputs, "idle") else {
        return Ok(None);
    };
    let bars: Vec<(String, f64)> = idle
        .targets
        .iter()
        .filter(|target| target.kib_per_connection > 0.0)
        .map(|target| {
            (
                target
                    .target
                    .replace("bare-ws ", "bare ")
                    .replace(" read buffer", ""),
                target.kib_per_connection,
            )
        })
        .collect();
    if bars.is_empty() {
        return Ok(None);
    }
    let path = dir.join("memory-per-connection.png");
    let connections = idle.targets.first().map(|t| t.connections).unwrap_or(0);
    let root = BitMapBackend::new(&path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max = bars.iter().map(|(_, value)| *value).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Resident memory per idle WebSocket connection ({connections} connections)"),
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((0..bars.len()).into_segmented(), (0.5f64..max).log_scale())
        .map_err(plot_err)?;
    let labels: Vec<String> = bars.iter().map(|(name, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len())
        .x_label_formatter(&|value| match value {
            SegmentValue::CenterOf(index) => labels.get(*index).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc("KiB per connection (log scale)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(index, (_, value))| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(index), 0.5),
                    (SegmentValue::Exact(index + 1), *value),
                ],
                PALETTE[index % PALETTE.len()].filled(),
            );
            bar.set_margin(0, 0, 25, 25);
            bar
        }))
        .map_err(plot_err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(index, (_, value))| {
            Text::new(
                format!("{value:.1} KiB"),
                (SegmentValue::CenterOf(index), value * 1.15),
                ("sans-serif", 16),
            )
        }))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    drop(chart);
    drop(root);
    Ok(Some(path))
}

fn plot_broadcast(inputs: &Inputs, dir: &Path) -> PlotResult {
    let Some(broadcast) = scenario(inputs, "broadcast") else {
        return Ok(None);
    };
    let series: Vec<(&TargetResult, Vec<(f64, f64)>)> = broadcast
        .targets
        .iter()
        .filter(|target| !target.phases.is_empty())
        .map(|target| {
            let members = target.connections.max(1) as f64;
            (
                target,
                target
                    .phases
                    .iter()
                    .map(|phase| (phase.rate_per_s * members, phase.deliveries_per_s))
                    .collect(),
            )
        })
        .collect();
    if series.is_empty() {
        return Ok(None);
    }
    let path = dir.join("broadcast-deliveries.png");
    let max_x = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.05;
    let max_y = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        .max(max_x * 0.3)
        * 1.1;
    let root = BitMapBackend::new(&path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Broadcast to one 15,000-member group: deliveries/s achieved vs offered",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("offered deliveries/s (messages/s × members)")
        .y_desc("deliveries/s received")
        .x_label_formatter(&|value| format!("{:.0}k", value / 1000.0))
        .y_label_formatter(&|value| format!("{:.0}k", value / 1000.0))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 0.0), (max_x.min(max_y), max_x.min(max_y))],
            BLACK.mix(0.3),
        ))
        .map_err(plot_err)?
        .label("offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    for (index, (target, points)) in series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(plot_err)?
            .label(target.target.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                points
                    .iter()
                    .map(|point| Circle::new(*point, 4, color.filled())),
            )
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    drop(chart);
    drop(root);
    Ok(Some(path))
}

/// One stacked bar: its label and `(process, value)` segments.
type StackedBar = (String, Vec<(String, f64)>);

/// Colours of the CPU plot's processes, by name, so that a process has the
/// same colour in every panel.
const CPU_PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The CPU bars of one scenario's chatpipe run: CPU s per 1,000 acked per
/// stack process, one bar per phase and one for phases and drain together.
fn cpu_bars(target: &TargetResult) -> Vec<StackedBar> {
    let segments = |window: &CpuWindow, acks: u64| -> Vec<(String, f64)> {
        window
            .processes
            .iter()
            .filter(|process| process.kind.in_stack())
            .map(|process| {
                (
                    process.name.clone(),
                    process
                        .cpu_seconds
                        .and_then(|cpu| CpuWindow::per_thousand(cpu, acks))
                        .unwrap_or(0.0),
                )
            })
            .collect()
    };
    let mut bars: Vec<StackedBar> = target
        .phases
        .iter()
        .filter(|phase| phase.acks > 0)
        .filter_map(|phase| {
            let cpu = phase.cpu.as_ref()?;
            Some((
                format!("{:.0}/s", phase.rate_per_s),
                segments(cpu, phase.acks),
            ))
        })
        .collect();
    if let Some(measured) = &target.cpu.measured
        && target.cpu.measured_acks > 0
    {
        bars.push(("run".into(), segments(measured, target.cpu.measured_acks)));
    }
    bars
}

fn plot_cpu(inputs: &Inputs, dir: &Path) -> PlotResult {
    let mut panels: Vec<(String, String, Vec<StackedBar>)> = Vec::new();
    for result in &inputs.scenarios {
        if let Some(ours) = target(Some(result), "chatpipe") {
            let bars = cpu_bars(ours);
            if !bars.is_empty() {
                panels.push((
                    format!(
                        "{}: whole-stack CPU per 1,000 acked, by phase",
                        result.scenario
                    ),
                    "CPU seconds per 1,000 acked messages".into(),
                    bars,
                ));
            }
        }
    }
    if let Some(idle) = &inputs.idle_cpu {
        let bars: Vec<StackedBar> = idle
            .measurements
            .iter()
            .map(|measurement| {
                let window = &measurement.window;
                (
                    measurement.label.clone(),
                    window
                        .processes
                        .iter()
                        .filter(|process| process.kind.in_stack())
                        .map(|process| {
                            (
                                process.name.clone(),
                                process
                                    .cpu_seconds
                                    .map(|cpu| window.share_of_core(cpu) * 100.0)
                                    .unwrap_or(0.0),
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        if !bars.is_empty() {
            panels.push((
                "idle: no client connected".into(),
                "% of one core".into(),
                bars,
            ));
        }
    }
    if panels.is_empty() {
        return Ok(None);
    }
    let mut names: Vec<String> = Vec::new();
    for (_, _, bars) in &panels {
        for (_, segments) in bars {
            for (name, _) in segments {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
    }
    let colour = |name: &str| {
        let index = names.iter().position(|known| known == name).unwrap_or(0);
        CPU_PALETTE[index % CPU_PALETTE.len()]
    };
    let path = dir.join("cpu.png");
    let rows = panels.len().div_ceil(2);
    let root = BitMapBackend::new(&path, (1200, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let areas = root.split_evenly((rows, 2));
    for ((title, y_desc, bars), area) in panels.iter().zip(areas.iter()) {
        draw_stacked(area, title, y_desc, bars, &colour)?;
    }
    root.present().map_err(plot_err)?;
    drop(areas);
    drop(root);
    Ok(Some(path))
}

fn draw_stacked(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    bars: &[StackedBar],
    colour: &dyn Fn(&str) -> RGBColor,
) -> anyhow::Result<()> {
    let totals: Vec<f64> = bars
        .iter()
        .map(|(_, segments)| segments.iter().map(|(_, value)| value).sum())
        .collect();
    // Head room above the tallest bar for its total and the legend.
    let max = totals.iter().copied().fold(0.0, f64::max).max(1e-6) * 1.8;
    let labels: Vec<String> = bars.iter().map(|(label, _)| label.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..bars.len() as f64, 0f64..max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&|value| {
            let index = value.floor() as usize;
            if (value - index as f64 - 0.5).abs() < 0.01 {
                labels.get(index).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(plot_err)?;
    let mut series: Vec<&str> = Vec::new();
    for (_, segments) in bars {
        for (name, _) in segments {
            if !series.contains(&name.as_str()) {
                series.push(name);
            }
        }
    }
    for name in series {
        let fill = colour(name);
        let rectangles: Vec<Rectangle<(f64, f64)>> = bars
            .iter()
            .enumerate()
            .filter_map(|(index, (_, segments))| {
                let position = segments.iter().position(|(known, _)| known == name)?;
                let below: f64 = segments[..position].iter().map(|(_, value)| value).sum();
                let value = segments[position].1;
                let left = index as f64 + 0.2;
                Some(Rectangle::new(
                    [(left, below), (left + 0.6, below + value)],
                    fill.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(rectangles)
            .map_err(plot_err)?
            .label(name.to_owned())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], fill.filled()));
    }
    chart
        .draw_series(totals.iter().enumerate().map(|(index, total)| {
            Text::new(
                format!("{total:.2}"),
                (index as f64 + 0.35, total + max * 0.06),
                ("sans-serif", 13),
            )
        }))
        .map_err(plot_err)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn plot_latency(inputs: &Inputs, dir: &Path) -> PlotResult {
    let mut rows: Vec<(String, [f64; 4])> = Vec::new();
    for name in ["chat", "broadcast", "storm"] {
        for target in scenario(inputs, name)
            .map(|result| result.targets.as_slice())
            .unwrap_or(&[])
        {
            if !target.target.starts_with("chatpipe") {
                continue;
            }
            let summary = &target.ack_latency;
            if summary.count > 0 {
                rows.push((
                    format!("{name}: send→ack"),
                    [
                        summary.p50_ms,
                        summary.p99_ms,
                        summary.p999_ms,
                        summary.max_ms,
                    ],
                ));
            }
            let summary = &target.deliver_latency;
            if summary.count > 0 {
                rows.push((
                    format!("{name}: send→deliver"),
                    [
                        summary.p50_ms,
                        summary.p99_ms,
                        summary.p999_ms,
                        summary.max_ms,
                    ],
                ));
            }
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let path = dir.join("latency-percentiles.png");
    let root = BitMapBackend::new(&path, (1100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max = rows
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .fold(1.0, f64::max)
        * 60.0;
    let groups = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "chatpipe latency percentiles per scenario (whole run, HdrHistogram)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups as f64, (0.1f64..max).log_scale())
        .map_err(plot_err)?;
    let labels: Vec<String> = rows.iter().map(|(name, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&|value| {
            let index = value.floor() as usize;
            if (value - index as f64 - 0.5).abs() < 0.01 {
                labels.get(index).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("milliseconds (log scale)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 50.0), (groups as f64, 50.0)],
            RED.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("send→deliver p99 target, 50 ms")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    let names = ["p50", "p99", "p99.9", "max"];
    for (percentile, name) in names.iter().enumerate() {
        let color = PALETTE[percentile % PALETTE.len()];
        chart
            .draw_series(rows.iter().enumerate().map(|(index, (_, values))| {
                let left = index as f64 + 0.1 + percentile as f64 * 0.2;
                Rectangle::new(
                    [(left, 0.1), (left + 0.18, values[percentile].max(0.11))],
                    color.filled(),
                )
            }))
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    drop(chart);
    drop(root);
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(seconds: f64, processes: &[(&str, ProcessKind, f64)]) -> CpuWindow {
        CpuWindow {
            seconds,
            processes: processes
                .iter()
                .map(|(name, kind, cpu)| crate::cpu::ProcessCpu {
                    name: (*name).into(),
                    kind: *kind,
                    pid: 1,
                    cpu_seconds: Some(*cpu),
                })
                .collect(),
        }
    }

    fn cpu_inputs() -> Inputs {
        use crate::coordinator::{CpuResult, PhaseResult};
        use crate::idle::IdleMeasurement;
        use crate::worker::LifecycleCounts;
        let busy = [
            ("kafka", ProcessKind::Engine, 3.0),
            ("edge", ProcessKind::Chatpipe, 2.0),
            ("loadgen-worker-0", ProcessKind::LoadGenerator, 4.0),
        ];
        let chatpipe = TargetResult {
            target: "chatpipe".into(),
            phases: vec![PhaseResult {
                rate_per_s: 500.0,
                duration_s: 10,
                acks_per_s: 500.0,
                acks: 5_000,
                cpu: Some(window(10.0, &busy)),
                ..PhaseResult::default()
            }],
            cpu: CpuResult {
                ticks_per_s: 100,
                settle: Some(window(5.0, &busy)),
                measured: Some(window(20.0, &busy)),
                measured_acks: 10_000,
                measured_deliveries: 20_000,
                measured_lifecycle: LifecycleCounts {
                    edits: 500,
                    deletes: 200,
                    reactions: 1_000,
                    reads: 8_300,
                    refused: 3,
                    frames: 4_000,
                },
            },
            ..TargetResult::default()
        };
        Inputs {
            scenarios: vec![ScenarioResult {
                scenario: "chat".into(),
                targets: vec![chatpipe],
                ..ScenarioResult::default()
            }],
            idle_cpu: Some(IdleCpuResults {
                machine: String::new(),
                measurements: vec![
                    IdleMeasurement {
                        label: "engines alone".into(),
                        window: window(10.0, &[("kafka", ProcessKind::Engine, 0.5)]),
                    },
                    IdleMeasurement {
                        label: "stack, no client".into(),
                        window: window(
                            10.0,
                            &[
                                ("kafka", ProcessKind::Engine, 1.0),
                                ("edge", ProcessKind::Chatpipe, 0.05),
                            ],
                        ),
                    },
                ],
            }),
            ..Inputs::default()
        }
    }

    #[test]
    fn reports_cpu_per_thousand_acked_and_idle() {
        let inputs = cpu_inputs();
        let text = markdown(&inputs, &[], Path::new("."));
        // Phases and drain: 5 stack CPU s for 10,000 acks; the load
        // generator's 4 s apart.
        assert!(
            text.contains("| whole-stack CPU per 1,000 acked messages, chat (all phases and the drain; engines + chatpipe, load generator apart) | 0.50 CPU s | load generator 0.40 CPU s |"),
            "{text}"
        );
        // The phase: 5 stack CPU s over 10 s for 5,000 acks.
        assert!(text.contains("| 1.00 | 0.50 | 0.40 |"), "{text}");
        // Per process over the measured window (20 s).
        assert!(
            text.contains("| kafka | engine | 3.0 | 15.0 % | 0.300 |"),
            "{text}"
        );
        assert!(
            text.contains("| loadgen-worker-0 | load generator | 4.0 | 20.0 % | 0.400 |"),
            "{text}"
        );
        // Lifecycle: 10,000 operations besides the 10,000 messages.
        assert!(text.contains("| edits acked | 500 | 25.0 |"), "{text}");
        assert!(
            text.contains("0.500 CPU s per 1,000 acked messages (with their 1700 changes and 8300 reads), 0.250 CPU s per 1,000 operations (20000 messages, changes and reads)"),
            "{text}"
        );
        assert!(
            text.contains("| whole-stack CPU per 1,000 operations, chat (acked messages plus their 10000 edits, deletes, reactions and reads) | 0.25 CPU s |"),
            "{text}"
        );
        // Idle: one column per measurement; chatpipe 0.5 % of a core meets ≤ 1 %.
        assert!(text.contains("| kafka | 5.0 % | 10.0 % |"), "{text}");
        assert!(text.contains("| edge | — | 0.5 % |"), "{text}");
        assert!(text.contains("chatpipe 0.5 % of a core"), "{text}");
    }

    #[test]
    fn draws_the_cpu_plot() {
        let dir = std::env::temp_dir().join(format!("chatpipe-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        register_font();
        let path = plot_cpu(&cpu_inputs(), &dir).unwrap().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1_000);
        assert!(plot_cpu(&Inputs::default(), &dir).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reports_the_fault_runs_one_row_each() {
        let faults: FaultRuns = serde_json::from_str(
            r#"{"runs":[{"run":"fanout","faults":["kill9:fanout@40"],"all_applied":true,"ready_after_s":[3.2],"acked":26000,"delivered_live":90000,"delivered_by_catch_up":0,"lost_live":0,"duplicate_acked_ids":0,"history_failures":0,"search_checked":500,"search_missing":0,"deliver_p99_ms":80.5,"passed":true},{"run":"edge","error":"no result"}]}"#,
        )
        .unwrap();
        let inputs = Inputs {
            faults: Some(faults),
            ..Inputs::default()
        };
        let mut out = String::new();
        faults_section(&mut out, &inputs);
        assert!(out.contains("| fanout | `kill9:fanout@40` | yes | 26,000 | 0 | 0 | 0 | 0 of 500 | 3.2 s | 80 ms | passed |"), "{out}");
        assert!(
            out.contains("| edge | | | | | | | | | | no result |"),
            "{out}"
        );
        // The issue-14 columns: history and search duplicates, the live
        // order checks, the time back to normal, the edges.
        let faults: FaultRuns = serde_json::from_str(
            r#"{"runs":[{"run":"sigstop","faults":["sigstop:edge@30+20"],"all_applied":true,"ready_after_s":[0.1],"acked":2000,"lost_live":0,"history_failures":0,"search_checked":50,"search_missing":0,"passed":true,"history_missing":0,"history_duplicated":1,"search_duplicated":0,"id_order_violations":2,"live_order_mismatches":3,"back_to_normal_s":[24.0,null],"edges":2,"edge_switches":1500,"stalls":40}]}"#,
        )
        .unwrap();
        let mut out = String::new();
        faults_section(
            &mut out,
            &Inputs {
                faults: Some(faults),
                ..Inputs::default()
            },
        );
        assert!(
            out.contains(
                "| passed | 0 / 1 | 0 | 2 / 3 | 24 s, not before the end | 2: 1,500 (40) |"
            ),
            "{out}"
        );
    }

    #[test]
    fn engine_faults_name_the_broker_killed_and_the_isr_seen() {
        let faults: FaultRuns = serde_json::from_str(
            r#"{"runs":[{"run":"kafka3-leader","faults":["kill9:kafka-leader@30"],"all_applied":true,"passed":true,"engine_faults":[{"fault":"kill9:kafka-leader@30","killed":"kafka-2","led":{"partitions_led":3,"partitions":6,"messages_led":4100,"messages":8000},"isr_left":{"reached":true,"after_s":9.4,"smallest_isr_seen":2,"most_under_replicated_seen":4,"most_without_leader_seen":0},"isr_back":{"reached":false,"after_s":null},"acks_per_s_while_down":{"seconds":20,"min":250,"median":300}}]},{"run":"clock-skew","faults":["skew:edge-2=+3"],"engine_faults":[{"fault":"skew:edge-2=+3","role":"edge-2","skew_s":3,"skew_seen_s":3}]}]}"#,
        )
        .unwrap();
        let mut out = String::new();
        faults_section(
            &mut out,
            &Inputs {
                faults: Some(faults),
                ..Inputs::default()
            },
        );
        assert!(
            out.contains("- kafka3-leader: `kill9:kafka-leader@30` killed kafka-2, the leader of 3 of 6 partitions of chat.messages (4,100 of 8,000 messages); out of every ISR after 9.4 s (smallest ISR seen 2, at most 4 partitions under-replicated and 0 without a leader); **not back in every ISR**; acks/s until it was back: median 300, lowest 250 (20 s)"),
            "{out}"
        );
        assert!(
            out.contains("- clock-skew: `skew:edge-2=+3` ran edge-2 with its clock +3 s off (libfaketime); seen +3 s (HTTP Date)"),
            "{out}"
        );
    }

    #[test]
    fn several_edges_get_a_row_each_and_a_sub_total() {
        use crate::coordinator::CpuResult;
        let target = TargetResult {
            target: "chatpipe".into(),
            cpu: CpuResult {
                ticks_per_s: 100,
                measured: Some(window(
                    10.0,
                    &[
                        ("kafka", ProcessKind::Engine, 3.0),
                        ("edge-1", ProcessKind::Chatpipe, 2.0),
                        ("edge-2", ProcessKind::Chatpipe, 1.0),
                        ("fanout", ProcessKind::Chatpipe, 0.5),
                    ],
                )),
                measured_acks: 1_000,
                ..CpuResult::default()
            },
            ..TargetResult::default()
        };
        let mut out = String::new();
        cpu_table(&mut out, &target);
        assert!(out.contains("| edge-1 | chatpipe | 2.0 |"), "{out}");
        assert!(out.contains("| edge-2 | chatpipe | 1.0 |"), "{out}");
        assert!(
            out.contains("| edges together (2 processes) | chatpipe | 3.0 | 30.0 % | 3.000 |"),
            "{out}"
        );
        // The stack counts each process once: 3 + 2 + 1 + 0.5.
        assert!(out.contains("| 6.5 | 65.0 % | 6.500 |"), "{out}");
        assert!(
            is_numbered_edge("edge-12") && !is_numbered_edge("edge") && !is_numbered_edge("edge-")
        );
    }

    #[test]
    fn reports_the_fuzzing_passes() {
        let fuzz: FuzzRun = serde_json::from_str(
            r#"{"cases_per_property":1000000,"profile":"debug","targets":[{"crate":"chatpipe-core","what":"frames","passed":["properties::a","properties::b"],"failed":[],"cases":2000000,"seconds":61,"status":0}],"total_cases":2000000,"total_seconds":70,"finished_unix_s":1}"#,
        )
        .unwrap();
        let api: ApiFuzzRun = serde_json::from_str(
            r#"{"schemathesis":"4.32.5","seed":7,"max_examples":100,"checks":"not_a_server_error","seconds":300,"runs":[{"name":"all-operations","status":0,"seconds":250,"operations_tested":6,"test_cases":1234,"unique_failures":0,"errored":0,"failures":[],"errors":[],"phases":{}}],"finished_unix_s":1}"#,
        )
        .unwrap();
        let inputs = Inputs {
            fuzz: Some(fuzz),
            fuzz_api: Some(api),
            ..Inputs::default()
        };
        let text = markdown(&inputs, &[], Path::new("."));
        assert!(text.contains("## Fuzzing"), "{text}");
        assert!(
            text.contains("| chatpipe-core | frames | 2 | none | 2,000,000 | 61 |"),
            "{text}"
        );
        assert!(text.contains("with 1,000,000 cases per property"), "{text}");
        assert!(
            text.contains("| all-operations | 6 | 1,234 | 0 | 250 | passed |"),
            "{text}"
        );
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
    }

    #[test]
    fn reads_the_role_examples_json() {
        let persist = "{\"bench\":\"persist\",\"records\":50000,\"conversations\":200,\"partitions\":3,\"max_batch_records\":1000,\"produce_seconds\":1.2,\"produce_records_per_s\":41790.0,\"drain_seconds\":0.9,\"drain_rows_per_s\":54161.0,\"steady_rows_per_s\":68215.0,\"batches\":50,\"write_requests\":3478,\"plain_insert_seconds\":1.2,\"plain_insert_rows_per_s\":40762.0,\"grouped_write_seconds\":0.5,\"grouped_write_rows_per_s\":96034.0}\n";
        let run: PersistRun = parse_example_output(persist).unwrap();
        assert_eq!(run.steady_rows_per_s, 68215.0);
        assert_eq!(run.plain_insert_rows_per_s, 40762.0);
        assert_eq!(run.write_requests, 3478);
        // A stray line printed before the object is skipped.
        let index = "some library noise\n{\"bench\":\"index\",\"records\":50000,\"batch_size\":1000,\"produce_records_per_s\":231285.0,\"bulk_baseline_docs_per_s\":49136.0,\"indexer_seconds\":1.5,\"indexer_docs_per_s\":32830.0,\"batches\":50,\"startup_seconds\":0.4,\"startup_docs\":4000,\"steady_docs_per_s\":41222.0,\"searches\":200,\"search_median_ms\":6.3,\"search_p95_ms\":13.2}\n";
        let run: IndexRun = parse_example_output(index).unwrap();
        assert_eq!(run.steady_docs_per_s, 41222.0);
        assert_eq!(run.bulk_baseline_docs_per_s, 49136.0);
        // Prose is not accepted any more.
        assert!(
            parse_example_output::<IndexRun>("direct _bulk baseline: 1.0 s = 49136 docs/s")
                .is_none()
        );
    }
}
