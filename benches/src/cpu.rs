//! CPU time of named processes, read from `/proc/<pid>/stat` (Linux).
//!
//! The benchmark charges every process of the stack — the engines' JVMs,
//! each chatpipe role — and, separately, the load generator with the CPU
//! seconds it used in a measured window: `utime + stime` (fields 14 and 15
//! of `/proc/<pid>/stat`, in clock ticks, `getconf CLK_TCK`) read at the
//! start and at the end of the window. Two layers:
//!
//! - [`parse_stat`] is pure (unit-tested on sample lines);
//! - [`CpuSampler`] tracks a set of named pids and takes [`CpuSnapshot`]s;
//!   [`CpuSnapshot::window_since`] turns two snapshots into a [`CpuWindow`]
//!   (what the results JSON holds).
//!
//! A process that was not running at both ends of a window, or whose pid was
//! reused in between (its start time differs), has no figure for that
//! window rather than a wrong one.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What `/proc/<pid>/stat` says about CPU time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// The executable's name (field 2, without the parentheses).
    pub comm: String,
    /// User-mode CPU time, clock ticks (field 14).
    pub utime_ticks: u64,
    /// Kernel-mode CPU time, clock ticks (field 15).
    pub stime_ticks: u64,
    /// When the process started, clock ticks after boot (field 22); tells a
    /// reused pid from the process first seen.
    pub start_time_ticks: u64,
}

impl ProcStat {
    /// User plus kernel time, clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime_ticks + self.stime_ticks
    }
}

/// Why a `/proc/<pid>/stat` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StatError {
    /// The process is gone (or `/proc` is not there).
    #[error("reading /proc/{pid}/stat: {source}")]
    Read {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    /// The line does not have the expected shape.
    #[error("malformed /proc/<pid>/stat: {0}")]
    Malformed(&'static str),
}

/// Parses one `/proc/<pid>/stat` line.
///
/// The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so the fields after it are counted from the
/// *last* `)`.
pub fn parse_stat(line: &str) -> Result<ProcStat, StatError> {
    let open = line
        .find('(')
        .ok_or(StatError::Malformed("no '(' before the command name"))?;
    let close = line
        .rfind(')')
        .ok_or(StatError::Malformed("no ')' after the command name"))?;
    if close < open {
        return Err(StatError::Malformed("')' before '('"));
    }
    let comm = line[open + 1..close].to_owned();
    // Index 0 is field 3 (state), so field N is at index N - 3.
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let field = |number: usize, what: &'static str| -> Result<u64, StatError> {
        rest.get(number - 3)
            .ok_or(StatError::Malformed(what))?
            .parse::<u64>()
            .map_err(|_| StatError::Malformed(what))
    };
    Ok(ProcStat {
        comm,
        utime_ticks: field(14, "utime (field 14) missing or not a number")?,
        stime_ticks: field(15, "stime (field 15) missing or not a number")?,
        start_time_ticks: field(22, "starttime (field 22) missing or not a number")?,
    })
}

/// Reads and parses `/proc/<pid>/stat`.
pub fn read_stat(pid: u32) -> Result<ProcStat, StatError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| StatError::Read { pid, source })?;
    parse_stat(&text)
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100, the
/// value on every common Linux build, when `getconf` is unavailable).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// Which part of the measurement a process belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessKind {
    /// Kafka, Cassandra, OpenSearch: part of the stack.
    Engine,
    /// A chatpipe process (one role, or `chatpipe all`): part of the stack.
    Chatpipe,
    /// A baseline server (bare-ws, Centrifugo), in its own target's figures.
    Baseline,
    /// The load generator's processes: reported apart, never in the stack.
    LoadGenerator,
}

impl ProcessKind {
    /// Counted in the whole-stack figure (engines and the system under test).
    pub fn in_stack(self) -> bool {
        !matches!(self, Self::LoadGenerator)
    }
}

/// A process the sampler follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedProcess {
    /// Short name shown in the results (`kafka`, `edge`, `loadgen-worker-0`).
    pub name: String,
    pub kind: ProcessKind,
    pub pid: u32,
}

/// Follows a set of named pids.
#[derive(Debug, Clone)]
pub struct CpuSampler {
    processes: Vec<TrackedProcess>,
    ticks_per_s: u64,
}

impl CpuSampler {
    /// A sampler with no process yet.
    pub fn new(ticks_per_s: u64) -> Self {
        Self {
            processes: Vec::new(),
            ticks_per_s: ticks_per_s.max(1),
        }
    }

    /// Adds a process; a name already tracked is replaced (a restarted role).
    pub fn track(&mut self, name: impl Into<String>, kind: ProcessKind, pid: u32) {
        let name = name.into();
        self.processes.retain(|process| process.name != name);
        self.processes.push(TrackedProcess { name, kind, pid });
    }

    /// The tracked processes, in the order they were added.
    pub fn processes(&self) -> &[TrackedProcess] {
        &self.processes
    }

    pub fn ticks_per_s(&self) -> u64 {
        self.ticks_per_s
    }

    /// Reads every tracked process now. A process that cannot be read is
    /// recorded as absent (it has no figure in windows that include it).
    pub fn sample(&self) -> CpuSnapshot {
        let readings = self
            .processes
            .iter()
            .map(|process| Reading {
                process: process.clone(),
                stat: read_stat(process.pid).ok(),
            })
            .collect();
        CpuSnapshot {
            taken: Instant::now(),
            ticks_per_s: self.ticks_per_s,
            readings,
        }
    }
}

/// One process's reading in a snapshot.
#[derive(Debug, Clone)]
pub struct Reading {
    pub process: TrackedProcess,
    /// None when the process could not be read.
    pub stat: Option<ProcStat>,
}

/// Every tracked process read at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    pub taken: Instant,
    pub ticks_per_s: u64,
    pub readings: Vec<Reading>,
}

impl CpuSnapshot {
    /// CPU used by each process between `earlier` and this snapshot.
    pub fn window_since(&self, earlier: &CpuSnapshot) -> CpuWindow {
        let seconds = self.taken.duration_since(earlier.taken).as_secs_f64();
        window_between(&earlier.readings, &self.readings, seconds, self.ticks_per_s)
    }
}

/// CPU used by each process between two sets of readings `seconds` apart
/// (pure: the arithmetic of [`CpuSnapshot::window_since`]). Processes are
/// matched by name; a process read at only one end, or with another start
/// time at the end (pid reused), gets `cpu_seconds: None`.
pub fn window_between(
    start: &[Reading],
    end: &[Reading],
    seconds: f64,
    ticks_per_s: u64,
) -> CpuWindow {
    let ticks_per_s = ticks_per_s.max(1) as f64;
    let processes = end
        .iter()
        .map(|last| {
            let first = start
                .iter()
                .find(|reading| reading.process.name == last.process.name);
            let cpu_seconds = match (first.and_then(|r| r.stat.as_ref()), last.stat.as_ref()) {
                (Some(before), Some(after))
                    if before.start_time_ticks == after.start_time_ticks
                        && after.cpu_ticks() >= before.cpu_ticks() =>
                {
                    Some((after.cpu_ticks() - before.cpu_ticks()) as f64 / ticks_per_s)
                }
                _ => None,
            };
            ProcessCpu {
                name: last.process.name.clone(),
                kind: last.process.kind,
                pid: last.process.pid,
                cpu_seconds,
            }
        })
        .collect();
    CpuWindow { seconds, processes }
}

/// One process's CPU in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessCpu {
    pub name: String,
    pub kind: ProcessKind,
    pub pid: u32,
    /// User + kernel CPU seconds in the window; None when the process was
    /// not running (as the same process) at both ends.
    pub cpu_seconds: Option<f64>,
}

/// CPU seconds per process over a measured window of wall time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuWindow {
    /// Wall-clock length of the window.
    pub seconds: f64,
    pub processes: Vec<ProcessCpu>,
}

impl CpuWindow {
    /// CPU seconds of every process of `kind`s matching `pick` (absent
    /// processes count as zero).
    pub fn cpu_seconds_where(&self, pick: impl Fn(ProcessKind) -> bool) -> f64 {
        self.processes
            .iter()
            .filter(|process| pick(process.kind))
            .filter_map(|process| process.cpu_seconds)
            .sum()
    }

    /// Engines and the system under test, without the load generator.
    pub fn stack_cpu_seconds(&self) -> f64 {
        self.cpu_seconds_where(ProcessKind::in_stack)
    }

    /// The load generator's processes together.
    pub fn load_generator_cpu_seconds(&self) -> f64 {
        self.cpu_seconds_where(|kind| kind == ProcessKind::LoadGenerator)
    }

    /// `cpu_seconds` as a share of one core over the window (1.0 = a core).
    pub fn share_of_core(&self, cpu_seconds: f64) -> f64 {
        if self.seconds > 0.0 {
            cpu_seconds / self.seconds
        } else {
            0.0
        }
    }

    /// `cpu_seconds` per 1,000 of `messages` (None without messages).
    pub fn per_thousand(cpu_seconds: f64, messages: u64) -> Option<f64> {
        (messages > 0).then(|| cpu_seconds * 1000.0 / messages as f64)
    }
}

/// Parses a `NAME=PID` command-line argument.
pub fn parse_named_pid(argument: &str) -> Result<(String, u32), String> {
    let (name, pid) = argument
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got {argument:?}"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("no name in {argument:?}"));
    }
    let pid = pid
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("not a pid in {argument:?}"))?;
    Ok((name.to_owned(), pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line of the Kafka JVM on the benchmark machine.
    const KAFKA: &str = "3154 (java) S 1 3154 3154 0 -1 4194304 91406 0 3 0 813 161 0 0 20 0 94 0 11735 3289456640 88545 18446744073709551615 94026961215488 94026961216373 140727121043280 0 0 0 0 3 16800972 0 0 0 17 0 0 0 0 0 0 94026961227072 94026961227800 94027174924288 140727121045727 140727121046211 140727121046211 140727121047530 0\n";

    #[test]
    fn parses_utime_stime_and_start_time() {
        let stat = parse_stat(KAFKA).unwrap();
        assert_eq!(stat.comm, "java");
        assert_eq!(stat.utime_ticks, 813);
        assert_eq!(stat.stime_ticks, 161);
        assert_eq!(stat.start_time_ticks, 11_735);
        assert_eq!(stat.cpu_ticks(), 974);
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_fields() {
        let line = "42 (tokio (rt) worker 1) R 1 42 42 0 -1 4194304 10 0 0 0 7 3 0 0 20 0 4 0 999 1000 10 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, "tokio (rt) worker 1");
        assert_eq!((stat.utime_ticks, stat.stime_ticks), (7, 3));
        assert_eq!(stat.start_time_ticks, 999);
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(matches!(
            parse_stat("42 java S 1"),
            Err(StatError::Malformed(_))
        ));
        // Cut before stime.
        assert!(matches!(
            parse_stat("42 (java) S 1 42 42 0 -1 4194304 10 0 0 0 7"),
            Err(StatError::Malformed(_))
        ));
        // utime not a number.
        assert!(matches!(
            parse_stat("42 (java) S 1 42 42 0 -1 4194304 10 0 0 0 x 3 0 0 20 0 4 0 999 1000 10 0"),
            Err(StatError::Malformed(_))
        ));
        assert!(matches!(
            parse_stat("42 )java( S"),
            Err(StatError::Malformed(_))
        ));
    }

    #[test]
    fn named_pids_parse() {
        assert_eq!(parse_named_pid("edge=42"), Ok(("edge".into(), 42)));
        assert!(parse_named_pid("edge").is_err());
        assert!(parse_named_pid("=42").is_err());
        assert!(parse_named_pid("edge=x").is_err());
    }

    fn reading(name: &str, kind: ProcessKind, ticks: Option<(u64, u64, u64)>) -> Reading {
        Reading {
            process: TrackedProcess {
                name: name.into(),
                kind,
                pid: 1,
            },
            stat: ticks.map(|(utime, stime, start)| ProcStat {
                comm: name.into(),
                utime_ticks: utime,
                stime_ticks: stime,
                start_time_ticks: start,
            }),
        }
    }

    #[test]
    fn a_window_charges_each_process_its_ticks() {
        let start = [
            reading("kafka", ProcessKind::Engine, Some((100, 50, 7))),
            reading("edge", ProcessKind::Chatpipe, Some((10, 10, 9))),
            reading("loadgen", ProcessKind::LoadGenerator, Some((0, 0, 11))),
            reading("restarted", ProcessKind::Chatpipe, Some((500, 0, 12))),
            reading("gone", ProcessKind::Chatpipe, Some((5, 5, 13))),
        ];
        let end = [
            reading("kafka", ProcessKind::Engine, Some((250, 100, 7))),
            reading("edge", ProcessKind::Chatpipe, Some((60, 10, 9))),
            reading("loadgen", ProcessKind::LoadGenerator, Some((300, 100, 11))),
            // Same name, another process (pid reused): no figure.
            reading("restarted", ProcessKind::Chatpipe, Some((1, 0, 99))),
            reading("gone", ProcessKind::Chatpipe, None),
            // Only seen at the end.
            reading("late", ProcessKind::Engine, Some((9, 9, 14))),
        ];
        let window = window_between(&start, &end, 10.0, 100);
        let cpu = |name: &str| {
            window
                .processes
                .iter()
                .find(|process| process.name == name)
                .unwrap()
                .cpu_seconds
        };
        assert_eq!(cpu("kafka"), Some(2.0));
        assert_eq!(cpu("edge"), Some(0.5));
        assert_eq!(cpu("loadgen"), Some(4.0));
        assert_eq!(cpu("restarted"), None);
        assert_eq!(cpu("gone"), None);
        assert_eq!(cpu("late"), None);
        // The load generator is not part of the stack.
        assert_eq!(window.stack_cpu_seconds(), 2.5);
        assert_eq!(window.load_generator_cpu_seconds(), 4.0);
        assert_eq!(window.share_of_core(2.5), 0.25);
        assert_eq!(CpuWindow::per_thousand(2.5, 5_000), Some(0.5));
        assert_eq!(CpuWindow::per_thousand(2.5, 0), None);
    }

    #[test]
    fn samples_this_process() {
        let ticks = clock_ticks_per_second();
        assert!(ticks > 0);
        let mut sampler = CpuSampler::new(ticks);
        sampler.track("me", ProcessKind::LoadGenerator, std::process::id());
        sampler.track("me", ProcessKind::LoadGenerator, std::process::id());
        assert_eq!(sampler.processes().len(), 1, "a name is tracked once");
        let first = sampler.sample();
        // Burn CPU until the kernel has charged a few ticks (on a busy
        // machine a fixed wall time might not be enough).
        let before = read_stat(std::process::id()).unwrap().cpu_ticks();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut spin = 0u64;
        while read_stat(std::process::id()).unwrap().cpu_ticks() < before + 3
            && Instant::now() < deadline
        {
            for _ in 0..100_000 {
                spin = std::hint::black_box(spin.wrapping_add(1));
            }
        }
        let second = sampler.sample();
        let window = second.window_since(&first);
        let used = window.processes[0].cpu_seconds.unwrap();
        assert!(used > 0.0 && used <= window.seconds + 0.05, "{window:?}");
    }
}
