//! Adapters: how the runner starts one kind of coding agent and how it reads what the agent did.
//!
//! The runner owns everything around the agent (the worktree, the branch, the pull request, the receipt);
//! an adapter only says which process to start in the worktree and judges the run from its exit status and
//! the last lines it printed.

pub mod claude;
pub mod codex;
mod command;

use std::path::Path;
use std::process::ExitStatus;

use serde::{Deserialize, Serialize};

pub use claude::ClaudeAdapter;
pub use codex::CodexAdapter;
pub use command::CommandAdapter;

use crate::core::{FailureClass, Spent, Usage};

/// The adapters this build has, by their name in the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterKind {
    /// Any program: the prompt on its standard input and in `FORGEFLEET_PROMPT`.
    Command,
    /// Claude Code (`claude -p ... --output-format stream-json`).
    ClaudeCode,
    /// Codex CLI (`codex exec --json`).
    Codex,
}

impl AdapterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Command => "command",
            AdapterKind::ClaudeCode => "claude-code",
            AdapterKind::Codex => "codex",
        }
    }
}

/// One run of an agent.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub prompt: &'a str,
    pub worktree: &'a Path,
    pub repo: &'a str,
    pub issue: u64,
    pub task_id: i64,
    pub attempt: u32,
    pub branch: &'a str,
    /// The CLI session to resume (checked: `core::is_session_id`), when the assignment carries one.
    pub resume: Option<&'a str>,
}

/// What a successful run reports for the receipt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Finished {
    pub summary: String,
    pub usage: Usage,
    pub cost_usd: Option<f64>,
    pub session_id: Option<String>,
    /// What went wrong in a run that still ended well: tool calls the agent was refused (Claude Code's
    /// `permission_denials`), or changes and commands that failed and error lines (Codex). Said when nothing
    /// changed.
    pub denied: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done(Finished),
    Failed { class: FailureClass, message: String },
}

/// The last lines of what the process printed, for judging the run.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

pub trait Adapter: Send + Sync {
    fn kind(&self) -> AdapterKind;
    /// The process to start, with its program, arguments and environment; the runner sets the working
    /// directory, the standard streams and the variables every adapter gets.
    fn command(&self, job: &Job<'_>) -> tokio::process::Command;
    /// What to write to the process's standard input before closing it.
    /// Every adapter here takes the prompt this way: a command-line argument may hold only 128 KiB on Linux.
    fn stdin(&self, job: &Job<'_>) -> Option<String> {
        Some(job.prompt.to_string())
    }
    /// The runner's environment variables this adapter's CLI reads (by prefix): they reach the agent, where
    /// everything else of the runner's environment does not (see `agent::sandbox`).
    fn env_prefixes(&self) -> &'static [&'static str];
    /// Sets up the CLI's state in the attempt's fresh `home` (copying what it needs from the runner's user,
    /// e.g. its configuration and login) and returns variables that point the CLI there.
    fn prepare_home(&self, _home: &Path) -> Vec<(String, std::path::PathBuf)> {
        Vec::new()
    }
    /// A line of standard output as operators should see it in the task's progress, if at all.
    fn progress(&self, line: &str) -> Option<String>;
    /// Judges a run that ended by itself.
    fn outcome(&self, status: ExitStatus, tail: &Tail) -> Outcome;
    /// The last thing a run that went silent said, for the failure message: by default the last line of
    /// standard error, else of standard output.
    fn last_words(&self, tail: &Tail) -> Option<String> {
        last_line(&tail.stderr).or_else(|| last_line(&tail.stdout))
    }
    /// What a run that failed had spent (tokens, cost), if its output says: sent with the failure report.
    fn spent(&self, _tail: &Tail) -> Option<Spent> {
        None
    }
    /// Whether a run asked to resume a session ended because the CLI could not find that session (its home
    /// was lost, or the session was never there): the runner then starts a fresh session instead of failing.
    fn resume_refused(&self, _status: ExitStatus, _tail: &Tail) -> bool {
        false
    }
}

/// The adapter for `kind`, set up from the agent's configuration.
pub fn build(config: &crate::agent::config::AgentConfig) -> std::sync::Arc<dyn Adapter> {
    match config.agent.adapter {
        AdapterKind::Command => std::sync::Arc::new(CommandAdapter::new(config.command.run.clone())),
        AdapterKind::ClaudeCode => std::sync::Arc::new(ClaudeAdapter::new(config.claude.clone())),
        AdapterKind::Codex => std::sync::Arc::new(CodexAdapter::new(config.codex.clone())),
    }
}

/// A line of output shown as it is (trailing space cut), unless it is blank.
pub(crate) fn plain_line(line: &str) -> Option<String> {
    let line = line.trim_end();
    (!line.trim().is_empty()).then(|| line.to_string())
}

/// The last non-blank line of `lines`, shortened to one line.
pub(crate) fn last_line(lines: &[String]) -> Option<String> {
    lines.iter().rev().find(|l| !l.trim().is_empty()).map(|l| one_line(l))
}

/// The last `n` of `lines`, one a line, for a failure message.
pub(crate) fn last_lines(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The first line of `text`, at most 300 characters, for a progress line.
pub(crate) fn one_line(text: &str) -> String {
    let first = text.trim().lines().next().unwrap_or_default();
    match first.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &first[..cut]),
        None => first.to_string(),
    }
}

/// Whether a provider's error message says the request was rate limited.
pub(crate) fn is_rate_limit(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("rate limit") || m.contains("rate_limit") || m.contains("429") || m.contains("too many requests")
}

/// Copies `names` (those that exist) from `from` into `to`, made if missing; quiet about the rest: a CLI
/// without its configuration says so itself.
pub(crate) fn copy_state(from: &Path, to: &Path, names: &[&str]) {
    for name in names {
        let source = from.join(name);
        if source.is_file()
            && std::fs::create_dir_all(to).is_ok()
            && let Err(e) = std::fs::copy(&source, to.join(name))
        {
            tracing::warn!(file = %source.display(), error = %e, "cannot copy the CLI's state into the agent's home");
        }
    }
}

/// The runner's own home, where a CLI's login and configuration are found.
pub(crate) fn runner_home() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(std::path::PathBuf::from)
}

/// "exit status 3" or "killed by signal 9", for messages.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}
