//! A private set of engines for the tests that fault them (a broker or a
//! node killed with `kill -9`): `topology/engines.sh` run with a
//! `CHATPIPE_HOME` of its own under the temp dir, the shared engines' jars
//! linked in so that nothing is downloaded again, and the ports and node
//! counts the test passes. Dropping it stops everything it started
//! (`down --wipe`) and removes the home, on failure too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Engines of one test, run by `topology/engines.sh`.
pub struct PrivateEngines {
    home: PathBuf,
    env: Vec<(String, String)>,
}

impl PrivateEngines {
    /// A fresh home `<temp>/<prefix>-<unique>` with the shared jars linked
    /// in; `env` (`CHATPIPE_*` settings: ports, node counts) goes to every
    /// `engines.sh` call. Nothing is started yet: see [`run`](Self::run).
    pub fn new(prefix: &str, env: &[(&str, String)]) -> Self {
        let home = std::env::temp_dir().join(format!("{prefix}-{}", crate::unique()));
        std::fs::create_dir_all(&home).expect("a private CHATPIPE_HOME");
        let shared_lib = shared_home().join("lib");
        if shared_lib.is_dir() {
            std::os::unix::fs::symlink(&shared_lib, home.join("lib")).expect("lib linked");
        }
        Self {
            home,
            env: env
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect(),
        }
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Runs `engines.sh ARGS` on these engines; panics with its output
    /// unless it succeeded, else returns the output.
    pub fn run(&self, args: &[&str]) -> String {
        let output = self
            .command(args)
            .output()
            .expect("bash runs topology/engines.sh");
        let text = format!(
            "`engines.sh {}` exited with {}\n--- stdout ---\n{}--- stderr ---\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("{text}");
        assert!(output.status.success(), "{text}");
        text
    }

    /// The pid `engines.sh` keeps for `unit` (`kafka-2`, `cassandra-3`).
    pub fn pid_of(&self, unit: &str) -> u32 {
        let file = self.home.join(format!("run/{unit}.pid"));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
            .trim()
            .parse()
            .expect("a pid")
    }

    /// `engines.sh kill UNIT` (kill -9), then checks the process is gone;
    /// returns its pid.
    pub fn kill_9(&self, unit: &str) -> u32 {
        let pid = self.pid_of(unit);
        self.run(&["kill", unit]);
        assert!(!process_alive(pid), "{unit} (pid {pid}) survived kill -9");
        pid
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../topology/engines.sh"))
            .args(args)
            .env("CHATPIPE_HOME", &self.home)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null());
        command
    }
}

impl Drop for PrivateEngines {
    fn drop(&mut self) {
        // Never panic here: a panic while panicking aborts without the
        // test's message.
        match self.command(&["down", "--wipe"]).output() {
            Ok(output) if output.status.success() => {
                let _ = std::fs::remove_file(self.home.join("lib"));
                let _ = std::fs::remove_dir_all(&self.home);
            }
            Ok(output) => eprintln!(
                "stopping the private engines in {} failed: {}",
                self.home.display(),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("engines.sh down did not run: {error}"),
        }
    }
}

/// The shared engines' state root (`CHATPIPE_HOME`, default
/// `~/.cache/chatpipe`), whose jars private engines borrow.
pub fn shared_home() -> PathBuf {
    match std::env::var_os("CHATPIPE_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/chatpipe"),
    }
}

/// Whether `pid` runs (a zombie, killed and not yet reaped, has an empty
/// cmdline: it does not).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| !cmdline.is_empty())
}
