//! The real coding-agent CLIs for scenario tests: `claude` (`@anthropic-ai/claude-code`) and `codex`
//! (`@openai/codex`) at pinned versions, installed with npm into `<target dir>/agent-clis` the first time a test
//! asks for them, plus [`run`]: one CLI run with a wall-clock timeout whose processes all end with it.
//!
//! The install happens once per machine (until `cargo clean` or a version bump): a binary that is there and
//! answers `--version` with the pinned version is used as is. An OS file lock (`<target dir>/agent-clis.lock`)
//! makes parallel test binaries wait for one install, a `OnceLock` makes the threads of one binary check once.
//! One install of both takes ~15 s and ~640 MB. Point them at a scripted model server with
//! `support::model::ModelServer`.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The pinned versions (the ones checked in `../shared/agents`).
pub const CLAUDE_PACKAGE: &str = "@anthropic-ai/claude-code";
pub const CLAUDE_VERSION: &str = "2.1.197";
pub const CODEX_PACKAGE: &str = "@openai/codex";
pub const CODEX_VERSION: &str = "0.169.0";

/// `<target dir>/agent-clis/node_modules/.bin/claude`, installed if missing or of another version.
pub fn claude() -> PathBuf {
    installed().0.clone()
}

/// `<target dir>/agent-clis/node_modules/.bin/codex`, installed if missing or of another version.
pub fn codex() -> PathBuf {
    installed().1.clone()
}

/// The npm prefix both CLIs are installed under: `$CARGO_TARGET_DIR/agent-clis` or `<crate>/target/agent-clis`.
pub fn install_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => manifest.join(dir),
        _ => manifest.join("target"),
    };
    target.join("agent-clis")
}

fn installed() -> &'static (PathBuf, PathBuf) {
    static INSTALLED: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    match INSTALLED.get_or_init(install) {
        Ok(paths) => paths,
        Err(message) => panic!("{message}"),
    }
}

fn install() -> Result<(PathBuf, PathBuf), String> {
    let dir = install_dir();
    let bin = dir.join("node_modules").join(".bin");
    let (claude, codex) = (bin.join("claude"), bin.join("codex"));
    let ready = || has_version(&claude, CLAUDE_VERSION) && has_version(&codex, CODEX_VERSION);
    if ready() {
        return Ok((claude, codex));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
    // Held until `lock` is dropped at the end of this function (also when npm fails).
    lock.lock().map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if ready() {
        return Ok((claude, codex)); // another test binary installed them while we waited
    }
    let packages = [format!("{CLAUDE_PACKAGE}@{CLAUDE_VERSION}"), format!("{CODEX_PACKAGE}@{CODEX_VERSION}")];
    let help = format!(
        "the scenario tests run the real {} and {}; they need node and npm (Node.js 18 or later) \
         on PATH and access to the npm registry to install them into {} (`.ci/run` installs node and npm)",
        packages[0],
        packages[1],
        dir.display()
    );
    eprintln!("installing {} and {} into {} (once, ~15 s)", packages[0], packages[1], dir.display());
    let started = Instant::now();
    let output = Command::new("npm")
        .arg("install")
        .arg("--prefix")
        .arg(&dir)
        .args(["--no-audit", "--no-fund", "--save-exact"])
        .args(&packages)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run npm ({e}): {help}"))?;
    if !output.status.success() {
        return Err(format!(
            "`npm install {} {}` failed ({}): {help}\n--- npm stdout\n{}\n--- npm stderr\n{}",
            packages[0],
            packages[1],
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    for (binary, version) in [(&claude, CLAUDE_VERSION), (&codex, CODEX_VERSION)] {
        if !has_version(binary, version) {
            return Err(format!(
                "after npm install, {} does not answer --version with {version}: {help}",
                binary.display()
            ));
        }
    }
    eprintln!("installed the agent CLIs in {:.1} s", started.elapsed().as_secs_f64());
    Ok((claude, codex))
}

/// Whether `binary --version` runs and names `version` (`2.1.197 (Claude Code)`, `codex-cli 0.169.0`).
fn has_version(binary: &Path, version: &str) -> bool {
    if !binary.exists() {
        return false;
    }
    let output = Command::new(binary)
        .arg("--version")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).split_whitespace().any(|word| word == version)
        }
        _ => false,
    }
}

/// What one CLI run left behind.
#[derive(Debug)]
pub struct CliRun {
    /// `None` when the run was killed at its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CliRun {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The stdout lines that parse as JSON (stream-json, `--json` JSONL), in order.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout.lines().filter_map(|line| serde_json::from_str(line.trim()).ok()).collect()
    }

    /// The last JSON line of stdout; panics (showing the run) when there is none.
    pub fn last_json(&self) -> serde_json::Value {
        self.json_lines().pop().unwrap_or_else(|| panic!("no JSON line on stdout: {self}"))
    }
}

impl std::fmt::Display for CliRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status.map_or("killed at its timeout".to_owned(), |s| s.to_string());
        write!(
            f,
            "{status} after {:.1} s\n--- stdout\n{}\n--- stderr\n{}",
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `command` with stdin closed, stdout and stderr captured, in a process group of its own. Waits at most
/// `timeout`; then kills the whole group. Whatever the outcome, the group is killed before this returns (so no
/// tool process the agent left behind outlives the run), and also if this thread panics meanwhile.
pub fn run(command: &mut Command, timeout: Duration) -> CliRun {
    let started = Instant::now();
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let child = command.spawn().unwrap_or_else(|e| panic!("could not start {command:?}: {e}"));
    let mut group = Group { child, status: None };
    let stdout = drain(group.child.stdout.take().expect("piped stdout"));
    let stderr = drain(group.child.stderr.take().expect("piped stderr"));
    let deadline = started + timeout;
    let exited = loop {
        if group.exited() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let status = group.kill();
    let elapsed = started.elapsed();
    CliRun { status: exited.then_some(status), stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap(), elapsed }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A child leading its own process group; the group is killed (and the child reaped) at the latest on drop.
struct Group {
    child: Child,
    status: Option<ExitStatus>,
}

impl Group {
    /// Whether the child has exited, without reaping it: while it is a zombie its pid (the group's id) cannot be
    /// reused, so [`Group::kill`] cannot hit a stranger.
    fn exited(&self) -> bool {
        // SAFETY: waitid(2) with WNOWAIT only inspects our own child; `info` is a plain C struct it fills in.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            libc::waitid(libc::P_PID, self.child.id() as libc::id_t, &mut info, flags) == 0 && info.si_pid() != 0
        }
    }

    /// Kills every process left in the group, then reaps the child and returns how it ended.
    fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        // SAFETY: kill(2) on the process group this test started; the child (its leader) is not reaped yet.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let status = self.child.wait().expect("reaping the CLI");
        self.status = Some(status);
        status
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}
