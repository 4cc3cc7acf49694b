//! The `claude-code` adapter: Claude Code in print mode, `claude -p <prompt> --output-format stream-json
//! --verbose`, one JSON object a line. Facts it relies on (../shared/agents/README.md, checked with 2.1.197):
//! - the last line is the `result` object; judge by `is_error` and the exit status together, since an API
//!   failure still says `subtype: "success"` with `is_error: true`;
//! - `modelUsage` counts side calls too, so usage comes from there, and the cost from `total_cost_usd`;
//! - denied permissions do not fail a run: they are listed in `permission_denials` and the runner reports
//!   them when the worktree did not change.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Adapter, AdapterKind, Finished, Job, Outcome, Tail, copy_state, describe, is_rate_limit, last_lines, one_line,
    plain_line, runner_home,
};
use crate::core::{FailureClass, Spent, Usage};

/// `[claude]` of the agent's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaudeSection {
    /// The `claude` executable. Default: `"claude"` (found on `PATH`).
    pub program: String,
    /// `--model`. Default: unset (the CLI's own default).
    pub model: String,
    /// `--max-turns`; 0 leaves it to the CLI. Default: `0`.
    pub max_turns: u32,
    /// `--max-budget-usd`; 0 leaves it to the CLI. Default: `0`.
    pub max_budget_usd: f64,
    /// `--permission-mode`: `acceptEdits` lets it edit files but asks (and so, unattended, denies) for shell
    /// commands; `bypassPermissions` allows everything. Default: `"acceptEdits"`.
    pub permission_mode: String,
    /// `--allowedTools`, e.g. `["Bash(cargo test:*)"]`. Default: `[]`.
    pub allowed_tools: Vec<String>,
    /// More arguments, appended as they are. Default: `[]`.
    pub extra_args: Vec<String>,
}

impl Default for ClaudeSection {
    fn default() -> Self {
        Self {
            program: "claude".into(),
            model: String::new(),
            max_turns: 0,
            max_budget_usd: 0.0,
            permission_mode: "acceptEdits".into(),
            allowed_tools: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

pub struct ClaudeAdapter {
    config: ClaudeSection,
}

impl ClaudeAdapter {
    pub fn new(config: ClaudeSection) -> ClaudeAdapter {
        ClaudeAdapter { config }
    }
}

impl Adapter for ClaudeAdapter {
    fn kind(&self) -> AdapterKind {
        AdapterKind::ClaudeCode
    }

    fn command(&self, job: &Job<'_>) -> tokio::process::Command {
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(&c.program);
        // The prompt comes on standard input: an argument is limited to 128 KiB, an issue body is not.
        cmd.arg("-p").args(["--output-format", "stream-json", "--verbose"]);
        // Claude Code finds the session among those of the working directory, which the sandbox keeps the
        // same for every attempt of a task.
        if let Some(session) = job.resume {
            cmd.args(["--resume", session]);
        }
        cmd.args(["--permission-mode", &c.permission_mode]);
        if !c.model.is_empty() {
            cmd.args(["--model", &c.model]);
        }
        if c.max_turns > 0 {
            cmd.args(["--max-turns", &c.max_turns.to_string()]);
        }
        if c.max_budget_usd > 0.0 {
            cmd.args(["--max-budget-usd", &c.max_budget_usd.to_string()]);
        }
        if !c.allowed_tools.is_empty() {
            cmd.arg("--allowedTools").args(&c.allowed_tools);
        }
        cmd.args(&c.extra_args);
        cmd
    }

    fn env_prefixes(&self) -> &'static [&'static str] {
        &["ANTHROPIC_", "CLAUDE_", "DISABLE_", "AWS_", "GOOGLE_", "VERTEX_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]
    }

    /// Claude Code keeps its state under `$HOME` (`.claude.json`, `.claude/`): the attempt's home gets the
    /// runner user's settings and login (`.claude/settings.json`, `.claude/.credentials.json`), nothing else.
    fn prepare_home(&self, home: &Path) -> Vec<(String, PathBuf)> {
        if let Some(own) = runner_home() {
            copy_state(&own.join(".claude"), &home.join(".claude"), &["settings.json", ".credentials.json"]);
        }
        Vec::new()
    }

    fn progress(&self, line: &str) -> Option<String> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return plain_line(line);
        };
        match v["type"].as_str()? {
            "system" if v["subtype"] == "init" => {
                Some(format!("claude started (model {})", v["model"].as_str().unwrap_or("default")))
            }
            "assistant" => {
                let shown: Vec<String> = v["message"]["content"]
                    .as_array()?
                    .iter()
                    .filter_map(|block| match block["type"].as_str()? {
                        "text" => Some(one_line(block["text"].as_str()?)),
                        "tool_use" => Some(format!("→ {}", tool_call(block))),
                        _ => None,
                    })
                    .filter(|s| !s.is_empty())
                    .collect();
                (!shown.is_empty()).then(|| shown.join(" | "))
            }
            "result" => Some(format!(
                "claude finished: {}, {} turns, ${:.4}",
                if v["is_error"] == true {
                    what_went_wrong(&v)
                } else {
                    v["subtype"].as_str().unwrap_or("?").to_string()
                },
                v["num_turns"].as_u64().unwrap_or(0),
                v["total_cost_usd"].as_f64().unwrap_or(0.0)
            )),
            _ => None,
        }
    }

    fn spent(&self, tail: &Tail) -> Option<Spent> {
        let r = result_line(tail)?;
        Some(Spent { usage: usage(&r), cost_usd: r["total_cost_usd"].as_f64() })
    }

    fn outcome(&self, status: ExitStatus, tail: &Tail) -> Outcome {
        let Some(r) = result_line(tail) else {
            return Outcome::Failed {
                class: FailureClass::AgentError,
                message: format!(
                    "claude ended with {} and gave no result:\n{}",
                    describe(status),
                    last_lines(&tail.stderr, 10)
                ),
            };
        };
        let text = r["result"].as_str().unwrap_or_default().trim().to_string();
        if r["is_error"] == true || !status.success() {
            let errors: Vec<&str> = r["errors"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let detail = [text.as_str()].into_iter().chain(errors).filter(|s| !s.is_empty()).collect::<Vec<_>>();
            let message = format!(
                "claude failed ({}): {}: {}",
                describe(status),
                what_went_wrong(&r),
                if detail.is_empty() { "no message".to_string() } else { detail.join("; ") }
            );
            let rate_limited = r["api_error_status"].as_u64() == Some(429) || is_rate_limit(&message);
            let class = if rate_limited { FailureClass::RateLimited } else { FailureClass::AgentError };
            return Outcome::Failed { class, message };
        }
        Outcome::Done(Finished {
            summary: text,
            usage: usage(&r),
            cost_usd: r["total_cost_usd"].as_f64(),
            session_id: r["session_id"].as_str().map(str::to_string),
            denied: r["permission_denials"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let call = serde_json::json!({"name": d["tool_name"], "input": d["tool_input"]});
                    tool_call(&call)
                })
                .collect(),
        })
    }

    fn resume_refused(&self, status: ExitStatus, tail: &Tail) -> bool {
        let Some(r) = result_line(tail) else { return false };
        let errors = r["errors"].as_array().into_iter().flatten().filter_map(Value::as_str);
        !status.success() && r["num_turns"].as_u64() == Some(0) && errors.into_iter().any(|e| e.contains(NO_SESSION))
    }
}

/// Claude Code's words for a `--resume` of a session it does not have (2.1.197): a result with no turn, exit 1.
const NO_SESSION: &str = "No conversation found";

/// The last `result` line of the output.
fn result_line(tail: &Tail) -> Option<Value> {
    tail.stdout.iter().rev().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| v["type"] == "result")
}

/// A failed result's kind in words: its `subtype` says `success` even when the API call failed.
fn what_went_wrong(r: &Value) -> String {
    match (r["subtype"].as_str().unwrap_or_default(), r["api_error_status"].as_u64()) {
        (_, Some(status)) => format!("the model API answered HTTP {status}"),
        ("success" | "", None) => "the model API call failed".to_string(),
        ("error_max_turns", None) => "it used up its turns (error_max_turns)".to_string(),
        ("error_max_budget_usd", None) => "it used up its budget (error_max_budget_usd)".to_string(),
        ("error_during_execution", None) => "an error during the run (error_during_execution)".to_string(),
        (other, None) => other.to_string(),
    }
}

/// `Bash: cargo test`, `Write: src/lib.rs`, or the tool's name and its input in short.
fn tool_call(block: &Value) -> String {
    let name = block["name"].as_str().unwrap_or("tool");
    let input = &block["input"];
    let what = ["command", "file_path", "path", "pattern", "url"].iter().find_map(|k| input[*k].as_str());
    match what {
        Some(w) => format!("{name}: {}", one_line(w)),
        None => format!("{name}: {}", one_line(&input.to_string())),
    }
}

/// Tokens from `modelUsage` (every model the run used, side calls included).
fn usage(r: &Value) -> Usage {
    let mut u = Usage::default();
    let models = r["modelUsage"].as_object().into_iter().flat_map(|m| m.values());
    for m in models {
        u.input_tokens += m["inputTokens"].as_u64().unwrap_or(0);
        u.output_tokens += m["outputTokens"].as_u64().unwrap_or(0);
        for (from, to) in [
            ("cacheReadInputTokens", "cache_read_input_tokens"),
            ("cacheCreationInputTokens", "cache_creation_input_tokens"),
        ] {
            *u.other.entry(to.to_string()).or_default() += m[from].as_u64().unwrap_or(0);
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn sample(name: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/agents/samples").join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (../shared is beside the checkout)", path.display()))
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn judge(name: &str, code: i32) -> Outcome {
        let tail = Tail { stdout: sample(name), stderr: Vec::new() };
        ClaudeAdapter::new(ClaudeSection::default()).outcome(ExitStatus::from_raw(code << 8), &tail)
    }

    #[test]
    fn a_successful_stream_gives_the_summary_usage_cost_and_session() {
        let Outcome::Done(f) = judge("claude-stream-json.jsonl", 0) else { panic!() };
        assert!(f.summary.starts_with("Done. I created hello.txt"), "{}", f.summary);
        assert_eq!((f.usage.input_tokens, f.usage.output_tokens), (3600, 126));
        assert_eq!(f.session_id.as_deref(), Some("fb3732d0-0f06-4571-9394-cc1d411be519"));
        assert!(f.cost_usd.unwrap() > 0.02);
        assert!(f.denied.is_empty());
    }

    #[test]
    fn an_api_error_that_says_success_is_a_failure() {
        let Outcome::Failed { class, message } = judge("claude-http400.json", 1) else { panic!() };
        assert_eq!(class, FailureClass::AgentError);
        assert!(message.contains("API Error: 400"), "{message}");
        let Outcome::Failed { message, .. } = judge("claude-server-down.json", 1) else { panic!() };
        assert!(message.contains("Unable to connect"), "{message}");
        let Outcome::Failed { message, .. } = judge("claude-error-max-turns.json", 1) else { panic!() };
        assert!(message.contains("error_max_turns") && message.contains("maximum number of turns"), "{message}");
    }

    #[test]
    fn a_failure_never_reads_as_success() {
        for (name, says) in [
            ("claude-http400.json", "claude failed (exit status 1): the model API answered HTTP 400: API Error: 400"),
            ("claude-server-down.json", "claude failed (exit status 1): the model API call failed: API Error: Unable"),
            ("claude-error-max-turns.json", "claude failed (exit status 1): it used up its turns (error_max_turns)"),
        ] {
            let Outcome::Failed { message, .. } = judge(name, 1) else { panic!("{name}") };
            assert!(message.starts_with(says), "{name}: {message}");
            assert!(!message.contains("success"), "{name}: {message}");
            let a = ClaudeAdapter::new(ClaudeSection::default());
            let progress: Vec<String> = sample(name).iter().filter_map(|l| a.progress(l)).collect();
            assert!(progress.iter().all(|l| !l.contains("success")), "{name}: {progress:?}");
        }
    }

    #[test]
    fn a_failed_run_reports_what_it_spent() {
        let a = ClaudeAdapter::new(ClaudeSection::default());
        let tail = Tail { stdout: sample("claude-error-max-turns.json"), stderr: Vec::new() };
        let spent = a.spent(&tail).expect("the result line says");
        assert!((spent.cost_usd.unwrap() - 0.00705).abs() < 1e-9, "{spent:?}");
        assert!(spent.usage.input_tokens > 0, "{spent:?}");
        assert_eq!(a.spent(&Tail { stdout: vec!["not json".into()], stderr: Vec::new() }), None);
    }

    #[test]
    fn denied_permissions_are_kept_for_the_runner() {
        let Outcome::Done(f) = judge("claude-permission-denied.json", 0) else { panic!() };
        assert_eq!(
            f.denied,
            [
                "Write: /srv/work/repo/hello.txt",
                "Bash: git add -A && git commit -q -m 'mock: add hello.txt' && git log --oneline -1"
            ]
        );
    }

    #[test]
    fn no_result_line_is_a_failure_with_stderr() {
        let tail = Tail { stdout: vec!["not json".into()], stderr: vec!["Error: bad flag".into()] };
        let out = ClaudeAdapter::new(ClaudeSection::default()).outcome(ExitStatus::from_raw(1 << 8), &tail);
        assert!(
            matches!(out, Outcome::Failed { message, .. } if message.contains("gave no result") && message.contains("bad flag"))
        );
    }

    #[test]
    fn the_stream_reads_as_progress() {
        let a = ClaudeAdapter::new(ClaudeSection::default());
        let lines: Vec<String> = sample("claude-stream-json.jsonl").iter().filter_map(|l| a.progress(l)).collect();
        assert_eq!(lines[1], "I'll create the file.");
        assert_eq!(lines[2], "→ Write: /srv/work/repo/hello.txt");
        assert!(lines.iter().any(|l| l.starts_with("→ Bash: git add -A")), "{lines:?}");
        assert!(lines.last().unwrap().starts_with("claude finished: success, 3 turns, $0.02"), "{lines:?}");
    }
}
