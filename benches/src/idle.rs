//! The idle figure: CPU of the stack while no client is connected, as a
//! share of one core per process (`chatpipe-loadgen idle-cpu`).
//! `benches/run.sh` takes it twice — the engines alone, before any chatpipe
//! process runs, and the whole stack started but with no client — into
//! `benches/results/idle-cpu.json`, which `bench-report` reads.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cpu::{CpuSampler, CpuWindow, TrackedProcess};

/// Every idle measurement of one run, by label.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleCpuResults {
    pub machine: String,
    pub measurements: Vec<IdleMeasurement>,
}

/// One idle window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleMeasurement {
    /// What was running (`engines alone`, `stack, no client`).
    pub label: String,
    pub window: CpuWindow,
}

impl IdleCpuResults {
    /// Adds `measurement`, replacing one with the same label.
    pub fn upsert(&mut self, measurement: IdleMeasurement) {
        self.measurements
            .retain(|known| known.label != measurement.label);
        self.measurements.push(measurement);
    }
}

/// Samples `processes` over `seconds` of wall time (blocking).
pub fn measure(label: &str, processes: &[TrackedProcess], seconds: f64) -> IdleMeasurement {
    let mut sampler = CpuSampler::new(crate::cpu::clock_ticks_per_second());
    for process in processes {
        sampler.track(process.name.clone(), process.kind, process.pid);
    }
    let start = sampler.sample();
    std::thread::sleep(Duration::from_secs_f64(seconds.max(0.1)));
    IdleMeasurement {
        label: label.to_owned(),
        window: sampler.sample().window_since(&start),
    }
}

/// Adds `measurement` to the results in `path` (created when absent).
pub fn record(path: &Path, measurement: IdleMeasurement) -> anyhow::Result<()> {
    let mut results = std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<IdleCpuResults>(&bytes).ok())
        .unwrap_or_default();
    results.machine = crate::sys::machine_summary();
    results.upsert(measurement);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_is_recorded_once() {
        let mut results = IdleCpuResults::default();
        for seconds in [1.0, 2.0] {
            results.upsert(IdleMeasurement {
                label: "engines alone".into(),
                window: CpuWindow {
                    seconds,
                    processes: Vec::new(),
                },
            });
        }
        results.upsert(IdleMeasurement {
            label: "stack, no client".into(),
            window: CpuWindow::default(),
        });
        assert_eq!(results.measurements.len(), 2);
        assert_eq!(results.measurements[0].window.seconds, 2.0);
    }
}
