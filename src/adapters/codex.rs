//! The `codex` adapter: `codex exec --json -C <worktree> <prompt>` with standard input closed (it waits for
//! input otherwise), one JSON event a line. Facts it relies on (../shared/agents/README.md, checked with
//! 0.169.0):
//! - success is a `turn.completed` (with the token usage); `turn.failed` or no `turn.completed` at all is a
//!   failure. A top-level `error` event is often only a warning ("Reconnecting... 1/5");
//! - there is no cost field;
//! - with the model server unreachable it retries for ever: the runner's deadline stops it;
//! - under `-s workspace-write` `.git` is read-only, so the agent cannot commit: the runner commits.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Adapter, AdapterKind, Finished, Job, Outcome, Tail, copy_state, describe, is_rate_limit, last_line, last_lines,
    one_line, plain_line, runner_home,
};
use crate::core::{FailureClass, Spent, Usage};

/// `[codex]` of the agent's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodexSection {
    /// The `codex` executable. Default: `"codex"` (found on `PATH`).
    pub program: String,
    /// `-m`. Default: unset (the CLI's own default).
    pub model: String,
    /// `-s`: `read-only`, `workspace-write` or `danger-full-access`; or `bypass` for
    /// `--dangerously-bypass-approvals-and-sandbox`. Default: `"workspace-write"`.
    pub sandbox: String,
    /// More arguments, appended as they are (before the prompt). Default: `[]`.
    pub extra_args: Vec<String>,
}

impl Default for CodexSection {
    fn default() -> Self {
        Self {
            program: "codex".into(),
            model: String::new(),
            sandbox: "workspace-write".into(),
            extra_args: Vec::new(),
        }
    }
}

/// The values `sandbox` takes.
pub const SANDBOXES: [&str; 4] = ["read-only", "workspace-write", "danger-full-access", "bypass"];

pub struct CodexAdapter {
    config: CodexSection,
}

impl CodexAdapter {
    pub fn new(config: CodexSection) -> CodexAdapter {
        CodexAdapter { config }
    }
}

impl Adapter for CodexAdapter {
    fn kind(&self) -> AdapterKind {
        AdapterKind::Codex
    }

    fn command(&self, job: &Job<'_>) -> tokio::process::Command {
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(&c.program);
        cmd.args(["exec", "--json", "--skip-git-repo-check", "-C"]).arg(job.worktree);
        if c.sandbox == "bypass" {
            cmd.arg("--dangerously-bypass-approvals-and-sandbox");
        } else {
            cmd.args(["-s", &c.sandbox, "-c", "approval_policy=\"never\""]);
        }
        if !c.model.is_empty() {
            cmd.args(["-m", &c.model]);
        }
        cmd.args(&c.extra_args);
        // `codex exec [options] resume <id> <prompt>`: the options above are `exec`'s, taken by the resumed
        // session too. Codex finds the session by its id in `CODEX_HOME`, which the runner keeps for the task.
        if let Some(session) = job.resume {
            cmd.args(["resume", session]);
        }
        // `-`: the prompt comes on standard input (then closed, or codex waits for more): an argument is limited
        // to 128 KiB, an issue body is not.
        cmd.arg("-");
        cmd
    }

    fn env_prefixes(&self) -> &'static [&'static str] {
        &["CODEX_", "OPENAI_", "AZURE_OPENAI_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]
    }

    /// Codex keeps its state in `CODEX_HOME` (default `~/.codex`): the attempt gets one of its own in its home,
    /// outside `/tmp` (Codex will not set up its sandbox's helpers under the temporary directory), with the
    /// runner user's `config.toml` and login (`auth.json`) copied in.
    fn prepare_home(&self, home: &Path) -> Vec<(String, PathBuf)> {
        let own = std::env::var_os("CODEX_HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| runner_home().map(|h| h.join(".codex")));
        let codex_home = home.join(".codex");
        let _ = std::fs::create_dir_all(&codex_home);
        if let Some(own) = own {
            copy_state(&own, &codex_home, &["config.toml", "auth.json"]);
        }
        vec![("CODEX_HOME".to_string(), codex_home)]
    }

    fn progress(&self, line: &str) -> Option<String> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return plain_line(line);
        };
        match v["type"].as_str()? {
            "thread.started" => Some("codex started".into()),
            "item.completed" => {
                let item = &v["item"];
                match item["type"].as_str()? {
                    "agent_message" => Some(one_line(item["text"].as_str()?)),
                    "command_execution" => Some(format!(
                        "$ {} (exit {})",
                        one_line(item["command"].as_str().unwrap_or("?")),
                        item["exit_code"].as_i64().map_or("?".to_string(), |c| c.to_string())
                    )),
                    // Only a completed change changed something; codex reports failed writes the same way.
                    "file_change" if item["status"] == "completed" => Some(format!("changed: {}", changes(item)?)),
                    "file_change" => {
                        Some(format!("change {}: {}", item["status"].as_str().unwrap_or("not made"), changes(item)?))
                    }
                    "error" => Some(format!("error: {}", one_line(item["message"].as_str().unwrap_or("?")))),
                    _ => None,
                }
            }
            "error" => Some(format!("codex: {}", one_line(v["message"].as_str().unwrap_or("?")))),
            "turn.completed" => Some("codex finished its turn".into()),
            "turn.failed" => Some(format!("codex failed: {}", one_line(&error_text(&v)))),
            _ => None,
        }
    }

    /// Its last warning (an `error` event such as "Reconnecting... (Connection failed: ...)"), else the last
    /// line of standard error.
    fn last_words(&self, tail: &Tail) -> Option<String> {
        let warning = tail
            .stdout
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["type"] == "error")
            .map(|e| one_line(&error_text(&e)));
        warning.or_else(|| last_line(&tail.stderr))
    }

    fn spent(&self, tail: &Tail) -> Option<Spent> {
        let done = tail
            .stdout
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["type"] == "turn.completed")?;
        Some(Spent { usage: turn_usage(&done["usage"]), cost_usd: None })
    }

    /// Codex 0.169.0 on `exec resume` of a thread it has no rollout for: nothing on standard output, exit 1,
    /// and "thread/resume failed: no rollout found for thread id ..." on standard error.
    fn resume_refused(&self, status: ExitStatus, tail: &Tail) -> bool {
        let started = tail.stdout.iter().any(|l| l.contains("\"turn.started\""));
        !status.success() && !started && tail.stderr.iter().any(|l| l.contains("no rollout found"))
    }

    fn outcome(&self, status: ExitStatus, tail: &Tail) -> Outcome {
        let events: Vec<Value> = tail.stdout.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let failed = events.iter().rev().find(|e| e["type"] == "turn.failed");
        let completed = events.iter().rev().find(|e| e["type"] == "turn.completed");
        let fail = |message: String| {
            let class = if is_rate_limit(&message) { FailureClass::RateLimited } else { FailureClass::AgentError };
            Outcome::Failed { class, message }
        };
        if let Some(f) = failed {
            return fail(format!("codex ended with {}: the turn failed: {}", describe(status), error_text(f)));
        }
        let Some(done) = completed.filter(|_| status.success()) else {
            let last_error = events.iter().rev().find(|e| e["type"] == "error").map(error_text);
            let why = last_error.unwrap_or_else(|| last_lines(&tail.stderr, 10));
            return fail(format!("codex ended with {} before completing its turn: {why}", describe(status)));
        };
        let summary = events
            .iter()
            .rev()
            .find(|e| e["type"] == "item.completed" && e["item"]["type"] == "agent_message")
            .and_then(|e| e["item"]["text"].as_str())
            .unwrap_or_default()
            .trim()
            .to_string();
        let usage = turn_usage(&done["usage"]);
        let session = events.iter().find(|e| e["type"] == "thread.started").and_then(|e| e["thread_id"].as_str());
        Outcome::Done(Finished {
            summary,
            usage,
            cost_usd: None,
            session_id: session.map(str::to_string),
            denied: troubles(&events, &tail.stderr),
        })
    }
}

/// The token counts of a `turn.completed`.
fn turn_usage(u: &Value) -> Usage {
    let mut usage = Usage {
        input_tokens: u["input_tokens"].as_u64().unwrap_or(0),
        output_tokens: u["output_tokens"].as_u64().unwrap_or(0),
        ..Default::default()
    };
    for key in ["cached_input_tokens", "reasoning_output_tokens"] {
        usage.other.insert(key.to_string(), u[key].as_u64().unwrap_or(0));
    }
    usage
}

/// `add src/a.rs, update src/b.rs`: the changes of a `file_change` item.
fn changes(item: &Value) -> Option<String> {
    let changes: Vec<String> = item["changes"]
        .as_array()?
        .iter()
        .map(|c| format!("{} {}", c["kind"].as_str().unwrap_or("?"), c["path"].as_str().unwrap_or("?")))
        .collect();
    Some(changes.join(", "))
}

/// What went wrong in a turn that still completed: file changes and commands that failed or were declined,
/// error items, and the last distinct error lines (events and standard error). The runner says them when
/// the worktree did not change, as it says Claude's refused calls.
fn troubles(events: &[Value], stderr: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events.iter().filter(|e| e["type"] == "item.completed") {
        let item = &e["item"];
        let status = item["status"].as_str().unwrap_or_default();
        let failed = matches!(status, "failed" | "declined");
        match item["type"].as_str().unwrap_or_default() {
            "file_change" if failed => {
                out.push(format!("file change {status}: {}", changes(item).unwrap_or_default()));
            }
            "command_execution" if failed => {
                out.push(format!("command {status}: {}", one_line(item["command"].as_str().unwrap_or("?"))));
            }
            "mcp_tool_call" if failed => {
                out.push(format!("tool call {status}: {}", item["tool"].as_str().unwrap_or("?")));
            }
            "error" => out.push(format!("error: {}", one_line(item["message"].as_str().unwrap_or("?")))),
            _ => {}
        }
    }
    let warnings = events.iter().filter(|e| e["type"] == "error").map(|e| one_line(&error_text(e)));
    let errors = stderr.iter().filter(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("error") || l.contains("failed")
    });
    let mut lines: Vec<String> = Vec::new();
    for line in warnings.chain(errors.map(|l| one_line(l))).rev() {
        if lines.len() < 3 && !lines.contains(&line) {
            lines.push(line);
        }
    }
    out.extend(lines.into_iter().rev());
    out
}

/// The message of an `error` or `turn.failed` event; codex often wraps the provider's JSON error in it.
fn error_text(e: &Value) -> String {
    let raw = e["error"]["message"].as_str().or(e["message"].as_str()).unwrap_or("no message");
    serde_json::from_str::<Value>(raw)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| raw.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn judge(name: &str, code: i32) -> Outcome {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/agents/samples").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tail = Tail { stdout: text.lines().map(str::to_string).collect(), stderr: Vec::new() };
        CodexAdapter::new(CodexSection::default()).outcome(ExitStatus::from_raw(code << 8), &tail)
    }

    #[test]
    fn a_completed_turn_gives_the_last_message_usage_and_thread() {
        let Outcome::Done(f) = judge("codex-exec-json.jsonl", 0) else { panic!() };
        assert!(f.summary.starts_with("Done. I created hello.txt"), "{}", f.summary);
        assert_eq!((f.usage.input_tokens, f.usage.output_tokens), (4500, 180));
        assert_eq!(f.usage.other["cached_input_tokens"], 900);
        assert_eq!(f.session_id.as_deref(), Some("01a20b62-db90-7340-8385-48d46a344812"));
        assert_eq!(f.cost_usd, None);
    }

    #[test]
    fn a_failed_turn_says_the_providers_message() {
        let Outcome::Failed { class, message } = judge("codex-http400.jsonl", 1) else { panic!() };
        assert_eq!(class, FailureClass::AgentError);
        assert!(message.ends_with("the turn failed: mock injected HTTP 400"), "{message}");
        let Outcome::Failed { message, .. } = judge("codex-response-failed.jsonl", 1) else { panic!() };
        assert!(message.contains("stream disconnected"), "{message}");
    }

    #[test]
    fn a_run_stopped_while_reconnecting_is_a_failure_with_the_last_warning() {
        let Outcome::Failed { message, .. } = judge("codex-server-down-truncated.jsonl", 0) else { panic!() };
        assert!(message.contains("before completing its turn") && message.contains("Connection failed"), "{message}");
    }

    /// The real sample, with its file change reported as codex reports a write it could not make.
    fn failed_write_sample() -> Vec<String> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/agents/samples/codex-exec-json.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| {
                if l.contains(r#""type":"item.completed""#) && l.contains(r#""type":"file_change""#) {
                    l.replace(r#""status":"completed""#, r#""status":"failed""#)
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert!(lines.iter().any(|l| l.contains(r#""status":"failed""#)), "the sample has a completed file change");
        let at = lines.len() - 1;
        lines.insert(at, r#"{"type":"error","message":"Failed to write file /srv/work/repo/hello.txt"}"#.into());
        lines
    }

    #[test]
    fn a_failed_file_change_is_not_listed_as_changed() {
        let a = CodexAdapter::new(CodexSection::default());
        let shown: Vec<String> = failed_write_sample().iter().filter_map(|l| a.progress(l)).collect();
        assert!(!shown.iter().any(|l| l.starts_with("changed:")), "{shown:?}");
        assert!(shown.contains(&"change failed: add /srv/work/repo/hello.txt".to_string()), "{shown:?}");
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/agents/samples/codex-exec-json.jsonl"),
        )
        .unwrap();
        let shown: Vec<String> = text.lines().filter_map(|l| a.progress(l)).collect();
        assert!(shown.contains(&"changed: add /srv/work/repo/hello.txt".to_string()), "{shown:?}");
    }

    #[test]
    fn a_completed_turn_with_failed_writes_names_them_for_the_nothing_changed_message() {
        let tail =
            Tail { stdout: failed_write_sample(), stderr: vec!["ERROR codex_core: sandbox setup refused".into()] };
        let Outcome::Done(f) = CodexAdapter::new(CodexSection::default()).outcome(ExitStatus::from_raw(0), &tail)
        else {
            panic!()
        };
        assert_eq!(
            f.denied,
            [
                "file change failed: add /srv/work/repo/hello.txt",
                "Failed to write file /srv/work/repo/hello.txt",
                "ERROR codex_core: sandbox setup refused",
            ]
        );
        let Outcome::Done(f) = judge("codex-exec-json.jsonl", 0) else { panic!() };
        assert!(f.denied.is_empty(), "a clean run has nothing to say: {:?}", f.denied);
    }

    #[test]
    fn a_run_that_went_silent_keeps_its_last_warning() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/agents/samples/codex-server-down-truncated.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let tail = Tail { stdout: text.lines().map(str::to_string).collect(), stderr: Vec::new() };
        let words = CodexAdapter::new(CodexSection::default()).last_words(&tail).unwrap();
        assert!(words.contains("Connection failed"), "{words}");
    }

    #[test]
    fn rate_limits_are_their_own_class() {
        let tail = Tail {
            stdout: vec![
                r#"{"type":"turn.failed","error":{"message":"429 Too Many Requests: rate limit reached"}}"#.into(),
            ],
            stderr: Vec::new(),
        };
        let out = CodexAdapter::new(CodexSection::default()).outcome(ExitStatus::from_raw(1 << 8), &tail);
        assert!(matches!(out, Outcome::Failed { class: FailureClass::RateLimited, .. }), "{out:?}");
    }

    #[test]
    fn events_read_as_progress() {
        let a = CodexAdapter::new(CodexSection::default());
        let line = r#"{"type":"item.completed","item":{"type":"command_execution","command":"/bin/bash -lc \"cargo test\"","aggregated_output":"ok","exit_code":0,"status":"completed"}}"#;
        assert_eq!(a.progress(line).as_deref(), Some("$ /bin/bash -lc \"cargo test\" (exit 0)"));
        assert_eq!(a.progress(r#"{"type":"turn.started"}"#), None);
    }
}
