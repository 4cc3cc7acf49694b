//! The scripted model server (`support::model`) driving the real `claude` and `codex` CLIs (`support::clis`)
//! offline: each scenario runs a CLI in a fresh git repository against a script, and checks what the agent did
//! (files, commits), what the CLI printed and what reached the server.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::clis::{self, CliRun};
use support::git::git;
use support::model::{INPUT_TOKENS, ModelServer, OUTPUT_TOKENS, Script, Step, user_text};

/// Far above the 1-3 s a scripted run takes; a hang fails the test instead of blocking the suite.
const TIMEOUT: Duration = Duration::from_secs(60);
const PROMPT: &str = "Add hello.txt with a greeting and commit it (issue #7).";
const CONTENT: &str = "hello from the scripted model\n";
const COMMIT: &str = "git add -A && git commit -q -m 'Add hello.txt' && git log --oneline -1";
const COMMIT_FILE: &str = "echo b > b.txt && git add b.txt && git commit -q -m 'Add b.txt'";
const SUMMARY: &str = "Summary: added hello.txt with a greeting.";

/// A fresh repository (branch `main`, one commit) with a committer identity of its own, so the agent's
/// `git commit` works under a temporary HOME.
fn repository(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["config", "user.name", "Scripted Agent"]);
    git(dir, &["config", "user.email", "agent@example.test"]);
    std::fs::write(dir.join("README.md"), "# app\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "Initial commit"]);
}

/// A workspace: the repository and a home for the CLI, side by side in one temporary directory.
struct Workspace {
    _dir: tempfile::TempDir,
    repo: std::path::PathBuf,
    home: std::path::PathBuf,
}

fn workspace() -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    let (repo, home) = (dir.path().join("repo"), dir.path().join("home"));
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    repository(&repo);
    Workspace { _dir: dir, repo, home }
}

/// `claude -p PROMPT --output-format stream-json --verbose --permission-mode bypassPermissions EXTRA...` in
/// `ws.repo`, with nothing of this machine's environment but PATH. `IS_SANDBOX=1` lets bypassPermissions run as
/// root (`--permission-mode acceptEdits --allowedTools Bash` works as root without it).
fn run_claude(server: &ModelServer, ws: &Workspace, prompt: &str, extra: &[&str], timeout: Duration) -> CliRun {
    let mut command = Command::new(clis::claude());
    command
        .current_dir(&ws.repo)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(server.claude_env(&ws.home))
        .env("IS_SANDBOX", "1")
        .args(["-p", prompt, "--output-format", "stream-json", "--verbose", "--permission-mode", "bypassPermissions"])
        .args(extra);
    clis::run(&mut command, timeout)
}

/// `codex exec --json -C REPO --dangerously-bypass-approvals-and-sandbox [resume THREAD] PROMPT`, stdin closed.
fn run_codex(server: &ModelServer, ws: &Workspace, resume: Option<&str>, prompt: &str) -> CliRun {
    let mut command = Command::new(clis::codex());
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(server.codex_home(&ws.home))
        .args(["exec", "--json", "-C"])
        .arg(&ws.repo)
        .arg("--dangerously-bypass-approvals-and-sandbox");
    if let Some(thread) = resume {
        command.args(["resume", thread]);
    }
    command.arg(prompt);
    clis::run(&mut command, TIMEOUT)
}

fn write_commit_say() -> Script {
    Script::new(vec![Step::write("hello.txt", CONTENT), Step::shell(COMMIT), Step::say(SUMMARY)])
}

/// The file is in the commit on top of the initial one.
fn assert_committed(repo: &Path) {
    assert_eq!(std::fs::read_to_string(repo.join("hello.txt")).unwrap(), CONTENT);
    assert_eq!(git(repo, &["log", "--format=%s"]), "Add hello.txt\nInitial commit");
    assert_eq!(git(repo, &["show", "HEAD:hello.txt"]), CONTENT.trim_end());
    assert_eq!(git(repo, &["status", "--porcelain"]), "");
}

#[test]
fn claude_writes_commits_and_reports_a_result() {
    let server = ModelServer::start(write_commit_say());
    let ws = workspace();
    let run = run_claude(&server, &ws, PROMPT, &[], TIMEOUT);
    assert!(run.success(), "claude failed: {run}");

    let result = run.last_json();
    assert_eq!(result["type"], "result", "{run}");
    assert_eq!(result["is_error"], false, "{run}");
    assert_eq!(result["num_turns"], 3, "{run}");
    assert_eq!(result["result"], SUMMARY);
    assert_eq!(result["usage"]["input_tokens"], 3 * INPUT_TOKENS, "{run}");
    assert_eq!(result["usage"]["output_tokens"], 3 * OUTPUT_TOKENS, "{run}");
    assert_eq!(result["permission_denials"], Value::Array(vec![]), "{run}");
    let tools: Vec<String> = run
        .json_lines()
        .iter()
        .filter(|e| e["type"] == "assistant")
        .flat_map(|e| e["message"]["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|block| block["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(tools, ["Write", "Bash"], "{run}");
    assert_committed(&ws.repo);

    let requests = server.requests();
    assert_eq!(requests.len(), 3, "one request a turn: {:?}", server.other_requests());
    assert!(user_text(&requests[0]).contains(PROMPT), "the prompt did not reach the model: {}", requests[0]);
    assert_eq!(requests[0]["stream"], true);
}

#[test]
fn claude_reports_an_api_error() {
    let server = ModelServer::start(vec![Step::http_error(400, "scripted bad request")]);
    let ws = workspace();
    let run = run_claude(&server, &ws, PROMPT, &[], TIMEOUT);
    assert!(!run.timed_out() && !run.success(), "claude should fail: {run}");

    let result = run.last_json();
    assert_eq!(result["type"], "result", "{run}");
    assert_eq!(result["is_error"], true, "{run}");
    assert_eq!(result["api_error_status"], 400, "{run}");
    assert!(result["result"].as_str().unwrap().contains("scripted bad request"), "{run}");
    assert_eq!(server.requests().len(), 1, "a 400 is not retried");
    assert_eq!(git(&ws.repo, &["rev-list", "--count", "HEAD"]), "1");
}

#[test]
fn a_hanging_model_is_cut_off_by_the_timeout() {
    let server = ModelServer::start(vec![Step::Hang]);
    let ws = workspace();
    let run = run_claude(&server, &ws, PROMPT, &[], Duration::from_secs(5));
    assert!(run.timed_out(), "claude should still wait for the model: {run}");
    assert!(run.elapsed < Duration::from_secs(15), "{run}");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn codex_writes_commits_and_completes_the_turn() {
    let server = ModelServer::start(write_commit_say());
    let ws = workspace();
    let run = run_codex(&server, &ws, None, PROMPT);
    assert!(run.success(), "codex failed: {run}");

    let events = run.json_lines();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "turn.completed", "{run}");
    assert_eq!(last["usage"]["input_tokens"], 3 * INPUT_TOKENS, "{run}");
    assert_eq!(last["usage"]["output_tokens"], 3 * OUTPUT_TOKENS, "{run}");
    assert_eq!(last["usage"]["cached_input_tokens"], 0, "{run}");
    let completed: Vec<&Value> = events.iter().filter(|e| e["type"] == "item.completed").map(|e| &e["item"]).collect();
    let kinds: Vec<&str> = completed.iter().filter_map(|item| item["type"].as_str()).collect();
    assert_eq!(kinds, ["file_change", "command_execution", "agent_message"], "{run}");
    assert_eq!(completed[1]["exit_code"], 0, "{run}");
    assert_eq!(completed[2]["text"], SUMMARY, "{run}");
    assert_committed(&ws.repo);

    let requests = server.requests();
    assert_eq!(requests.len(), 3, "one request a model call: {:?}", server.other_requests());
    assert!(user_text(&requests[0]).contains(PROMPT), "the prompt did not reach the model: {}", requests[0]);
    assert_eq!(requests[0]["model"], "gpt-5.5");
}

#[test]
fn codex_fails_the_turn_on_an_api_error() {
    let server = ModelServer::start(vec![Step::http_error(400, "scripted bad request")]);
    let ws = workspace();
    let run = run_codex(&server, &ws, None, PROMPT);
    assert!(!run.timed_out() && !run.success(), "codex should fail: {run}");

    let events = run.json_lines();
    assert!(!events.iter().any(|e| e["type"] == "turn.completed"), "{run}");
    let failed = events.iter().find(|e| e["type"] == "turn.failed").unwrap_or_else(|| panic!("no turn.failed: {run}"));
    assert!(failed["error"]["message"].as_str().unwrap().contains("scripted bad request"), "{run}");
    assert_eq!(server.requests().len(), 1, "a 400 is not retried");
}

/// A resumed session continues the script where the last turn ended (the server counts earlier final answers).
#[test]
fn claude_resume_continues_the_script() {
    let server = ModelServer::start(vec![Step::say("Planned."), Step::shell(COMMIT_FILE), Step::say(SUMMARY)]);
    let ws = workspace();
    let first = run_claude(&server, &ws, PROMPT, &[], TIMEOUT);
    assert!(first.success(), "{first}");
    let session = first.last_json()["session_id"].as_str().unwrap().to_owned();
    let second = run_claude(&server, &ws, "Go on.", &["--resume", &session], TIMEOUT);
    assert!(second.success(), "{second}");
    let result = second.last_json();
    assert_eq!((result["result"].as_str(), result["num_turns"].as_u64()), (Some(SUMMARY), Some(2)), "{second}");
    assert_eq!(result["session_id"], session.as_str());
    // Claude Code counts the usage of this invocation only.
    assert_eq!(result["usage"]["input_tokens"], 2 * INPUT_TOKENS, "{second}");
    assert_eq!(git(&ws.repo, &["log", "-1", "--format=%s"]), "Add b.txt");
    assert!(user_text(&server.requests()[1]).contains("Go on."));
}

#[test]
fn codex_resume_continues_the_script() {
    let server = ModelServer::start(vec![Step::say("Planned."), Step::shell(COMMIT_FILE), Step::say(SUMMARY)]);
    let ws = workspace();
    let first = run_codex(&server, &ws, None, PROMPT);
    assert!(first.success(), "{first}");
    let thread = first.json_lines()[0]["thread_id"].as_str().unwrap().to_owned();
    let second = run_codex(&server, &ws, Some(&thread), "Go on.");
    assert!(second.success(), "{second}");
    let events = second.json_lines();
    assert_eq!(events[0]["thread_id"], thread.as_str(), "{second}");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "turn.completed", "{second}");
    // Surprise: a resumed thread's turn.completed counts the usage of the whole thread (1 + 2 model calls).
    assert_eq!(last["usage"]["input_tokens"], 3 * INPUT_TOKENS, "{second}");
    assert_eq!(git(&ws.repo, &["log", "-1", "--format=%s"]), "Add b.txt");
    assert!(user_text(&server.requests()[1]).contains("Go on."));
}
