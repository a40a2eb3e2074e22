//! Lifecycle of `topology/engines.sh`, the script that runs the real engines
//! (Kafka, Cassandra, OpenSearch) on a developer's machine and in CI.
//!
//! It drives the script as a user would, as a subprocess, and checks what a
//! user relies on: `up` is idempotent (a second `up` restarts nothing),
//! `status` tells the truth (exit 0 iff every engine is healthy), `up` after
//! a `kill -9` of one engine restarts that engine only, and `down` then `up`
//! brings everything back.
//!
//! This test stops and restarts the *shared* engines that every other
//! integration test uses, so it is `#[ignore]`d in the normal run and
//! `topology/test.sh` runs it in its second phase, alone (`--ignored
//! --test-threads=1`). It honours `CHATPIPE_HOME` and the `CHATPIPE_*_PORT`
//! variables exactly like the script (they are inherited), which allows
//! running it against a private set of engines:
//!
//! ```text
//! CHATPIPE_HOME=/tmp/cp-alt CHATPIPE_KAFKA_PORT=19092 ... \
//!   cargo test -p chatpipe --test engines_script -- --ignored
//! ```
//!
//! Assertions are on exit codes, `status` lines and pids, never on timings.
//! If anything fails midway, a guard runs `engines.sh up` so that the engines
//! are left running for whoever comes next.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ENGINES: [&str; 3] = ["kafka", "cassandra", "opensearch"];

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../topology/engines.sh")
}

/// The script's state root: `$CHATPIPE_HOME`, default `~/.cache/chatpipe`.
fn chatpipe_home() -> PathBuf {
    match std::env::var_os("CHATPIPE_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/chatpipe"),
    }
}

/// The outcome of one `engines.sh` invocation, with its output kept for
/// assertion messages.
struct Run {
    args: String,
    output: Output,
}

impl Run {
    fn success(&self) -> bool {
        self.output.status.success()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "`engines.sh {}` exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args,
            self.output.status,
            self.stdout(),
            self.stderr()
        )
    }

    fn expect_success(self) -> Run {
        assert!(self.success(), "{}", self.describe());
        self
    }
}

fn engines_sh(args: &[&str]) -> Run {
    let output = Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs topology/engines.sh");
    let run = Run {
        args: args.join(" "),
        output,
    };
    // Shown by the test harness only when the test fails.
    eprintln!("{}", run.describe());
    run
}

/// One line of `engines.sh status`:
/// `kafka      healthy  pid=123      port=9092  rss=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatusLine {
    engine: String,
    state: String,
    pid: Option<u32>,
}

fn parse_status(stdout: &str) -> Vec<StatusLine> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let engine = fields.next()?.to_owned();
            let state = fields.next()?.to_owned();
            let pid = fields
                .next()
                .and_then(|field| field.strip_prefix("pid="))
                .and_then(|pid| pid.parse().ok());
            Some(StatusLine { engine, state, pid })
        })
        .collect()
}

struct Status {
    run: Run,
    lines: Vec<StatusLine>,
}

impl Status {
    fn state_of(&self, engine: &str) -> &str {
        self.lines
            .iter()
            .find(|line| line.engine == engine)
            .map(|line| line.state.as_str())
            .unwrap_or_else(|| panic!("no status line for {engine}\n{}", self.run.describe()))
    }
}

fn status() -> Status {
    let run = engines_sh(&["status"]);
    let lines = parse_status(&run.stdout());
    Status { run, lines }
}

/// `status` exits 0 and prints exactly one `healthy` line per engine, each
/// with the pid that the pid file holds.
fn assert_all_healthy() -> Status {
    let status = status();
    assert!(
        status.run.success(),
        "status must exit 0 when all are healthy\n{}",
        status.run.describe()
    );
    let engines: Vec<&str> = status
        .lines
        .iter()
        .map(|line| line.engine.as_str())
        .collect();
    assert_eq!(
        engines,
        ENGINES,
        "one line per engine\n{}",
        status.run.describe()
    );
    for line in &status.lines {
        assert_eq!(line.state, "healthy", "{}", status.run.describe());
        assert_eq!(
            line.pid,
            pid_file(&line.engine),
            "status pid = pid file pid\n{}",
            status.run.describe()
        );
    }
    status
}

fn pid_file(engine: &str) -> Option<u32> {
    let path = chatpipe_home().join("run").join(format!("{engine}.pid"));
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn pids() -> Vec<u32> {
    ENGINES
        .iter()
        .map(|engine| {
            pid_file(engine)
                .unwrap_or_else(|| panic!("{engine} has no pid file after a successful up"))
        })
        .collect()
}

fn process_alive(pid: u32) -> bool {
    // A zombie (killed, not yet reaped) has an empty cmdline: count it dead,
    // as the script does.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| !cmdline.is_empty())
}

fn kill_9(pid: u32) {
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "kill -9 {pid} failed");
}

fn wait_until_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still alive 30 s after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Leaves the engines up if the test fails midway, so that the tests that
/// run after this one still find them.
struct RestoreEngines;

impl Drop for RestoreEngines {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "engines_script failed: running `engines.sh up` to leave the engines running"
            );
            let _ = engines_sh(&["up"]);
        }
    }
}

#[test]
#[ignore = "restarts the shared engines; run alone via topology/test.sh"]
fn up_is_idempotent_status_tells_the_truth_and_up_heals_a_killed_engine() {
    let _restore = RestoreEngines;

    // 1. up: everything healthy.
    engines_sh(&["up"]).expect_success();
    assert_all_healthy();
    let first_pids = pids();

    // 2. A second up restarts nothing: it reports each engine as already
    //    healthy and the pids stay the same.
    let second_up = engines_sh(&["up"]).expect_success();
    for engine in ENGINES {
        assert!(
            second_up
                .stderr()
                .contains(&format!("{engine}: already healthy")),
            "second up must find {engine} already healthy\n{}",
            second_up.describe()
        );
        assert!(
            !second_up
                .stderr()
                .contains(&format!("{engine}: started pid")),
            "second up must not start {engine} again\n{}",
            second_up.describe()
        );
    }
    assert_eq!(pids(), first_pids, "a second up must not restart anything");

    // 3. status: exit 0, three healthy lines.
    assert_all_healthy();

    // 4. kill -9 Kafka (the pid from its pid file): status reports it down
    //    and exits non-zero; the other two stay healthy.
    let kafka_pid = pid_file("kafka").expect("kafka pid file");
    kill_9(kafka_pid);
    wait_until_dead(kafka_pid);
    let after_kill = status();
    assert!(
        !after_kill.run.success(),
        "status must fail when kafka is down\n{}",
        after_kill.run.describe()
    );
    assert_ne!(
        after_kill.state_of("kafka"),
        "healthy",
        "{}",
        after_kill.run.describe()
    );
    assert_eq!(
        after_kill.state_of("cassandra"),
        "healthy",
        "{}",
        after_kill.run.describe()
    );
    assert_eq!(
        after_kill.state_of("opensearch"),
        "healthy",
        "{}",
        after_kill.run.describe()
    );

    // 5. up restarts Kafka only.
    let heal = engines_sh(&["up"]).expect_success();
    assert!(
        heal.stderr().contains("kafka: started pid"),
        "up must restart kafka\n{}",
        heal.describe()
    );
    for engine in ["cassandra", "opensearch"] {
        assert!(
            heal.stderr()
                .contains(&format!("{engine}: already healthy")),
            "up must leave {engine} alone\n{}",
            heal.describe()
        );
    }
    assert_all_healthy();
    let healed_pids = pids();
    assert_ne!(healed_pids[0], kafka_pid, "kafka must run under a new pid");
    assert_eq!(
        healed_pids[1..],
        first_pids[1..],
        "cassandra and opensearch must keep their pids"
    );

    // 6. down stops everything: status fails, every engine is stopped, the
    //    processes are gone and so are the pid files.
    engines_sh(&["down"]).expect_success();
    let after_down = status();
    assert!(
        !after_down.run.success(),
        "status must fail after down\n{}",
        after_down.run.describe()
    );
    for engine in ENGINES {
        assert_eq!(
            after_down.state_of(engine),
            "stopped",
            "{}",
            after_down.run.describe()
        );
        assert_eq!(
            pid_file(engine),
            None,
            "down must remove {engine}'s pid file"
        );
    }
    for pid in &healed_pids {
        assert!(!process_alive(*pid), "pid {pid} must be gone after down");
    }

    // 7. up after down: everything healthy again, under new pids.
    engines_sh(&["up"]).expect_success();
    assert_all_healthy();
    for (engine, (old, new)) in ENGINES.iter().zip(healed_pids.iter().zip(pids())) {
        assert_ne!(
            *old, new,
            "{engine} must run under a new pid after down + up"
        );
    }
}

#[test]
fn parses_status_lines() {
    let lines = parse_status(
        "kafka      healthy  pid=26434    port=9092  rss=351MiB   up=138s     (brokers 1)\n\
         cassandra  stopped  pid=-        port=9042  rss=-        up=-        \n",
    );
    assert_eq!(
        lines,
        vec![
            StatusLine {
                engine: "kafka".into(),
                state: "healthy".into(),
                pid: Some(26434)
            },
            StatusLine {
                engine: "cassandra".into(),
                state: "stopped".into(),
                pid: None
            },
        ]
    );
}
