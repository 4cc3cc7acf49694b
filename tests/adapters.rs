//! The real coding-agent CLIs through the runner: `forgefleet agent` with the `claude-code` and `codex`
//! adapters runs Claude Code 2.1.197 and Codex 0.169.0 (installed by `support::clis`) against the scripted
//! model server on 127.0.0.1, on a task from an in-process forgefleet with the fake Forgejo and real git.
//! What reaches the receipt (summary, tokens, session) comes from the CLIs' own output.

mod support;

use support::clis;
use support::eventually;
use support::model::{INPUT_TOKENS, ModelServer, OUTPUT_TOKENS, Script, Step, user_text};
use support::runner::World;

/// The scripted provider's key variable is not one of Codex's own (`OPENAI_*`, `CODEX_*`): the runner passes it
/// on only when told to.
const CODEX_KEY: &str = "env_passthrough = [\"FORGEFLEET_TEST_MODEL_KEY\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_resolves_an_issue_through_the_runner() {
    let w = World::new(|_| {}).await;
    let (issue, task) = w.queued("Greet the world").await;
    let model = ModelServer::start(Script::new(vec![
        Step::write("greeting.txt", "hello\n"),
        Step::say("Added greeting.txt with a greeting."),
    ]));
    let sections = format!("[claude]\nprogram = {:?}\n", clis::claude());
    let _agent = w.agent_with(&sections, "claude-code", &model.claude_env(&w.root.path().join("claude-home")));
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;

    let detail = w.task(task).await;
    let r = &detail["task"]["receipt"];
    assert_eq!(r["summary"], "Added greeting.txt with a greeting.");
    assert_eq!(r["usage"]["input_tokens"], 2 * INPUT_TOKENS, "two model calls: {r}");
    assert_eq!(r["usage"]["output_tokens"], 2 * OUTPUT_TOKENS, "{r}");
    assert!(r["session_id"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    let files: Vec<&str> =
        detail["task"]["validation"]["files"].as_array().unwrap().iter().filter_map(|f| f["path"].as_str()).collect();
    assert_eq!(files, ["greeting.txt"]);
    // The server's prompt reached the model (on Claude Code's standard input); the tool call came back as
    // progress.
    let asked = user_text(&model.requests()[0]);
    assert!(asked.contains(&format!("Resolve issue #{issue} of acme/app: Greet the world")), "{asked}");
    let progress: Vec<&str> =
        detail["progress"].as_array().unwrap().iter().filter_map(|p| p["line"].as_str()).collect();
    assert!(progress.iter().any(|l| l.starts_with("→ Write: ") && l.ends_with("greeting.txt")), "{progress:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issue_text_past_the_command_line_limit_reaches_the_model_whole() {
    let w = World::new(|_| {}).await;
    // One command-line argument may hold 128 KiB on Linux; the prompt goes on standard input instead.
    let body = format!("{}\nTHE END OF THE ISSUE", "A long stack trace line that goes on. ".repeat(5_000));
    assert!(body.len() > 190_000);
    let (_, task) = w.queued_with_body("Read all of it", &body).await;
    let model = ModelServer::start(Script::new(vec![Step::write("read.txt", "read\n"), Step::say("Read it all.")]));
    let sections = format!("[claude]\nprogram = {:?}\n", clis::claude());
    let _agent = w.agent_with(&sections, "claude-code", &model.claude_env(&w.root.path().join("claude-home")));
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let asked = user_text(&model.requests()[0]);
    assert!(asked.contains("THE END OF THE ISSUE") && asked.len() > body.len(), "{} bytes", asked.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_refused_its_tools_fails_the_attempt_and_says_which() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (_, task) = w.queued("Needs a shell").await;
    // `default` asks before running commands; unattended, that is a refusal, and Claude Code still exits 0.
    let model = ModelServer::start(Script::new(vec![Step::shell("echo hi > hi.txt"), Step::say("Done.")]));
    let sections = format!("[claude]\nprogram = {:?}\npermission_mode = \"default\"\n", clis::claude());
    let _agent = w.agent_with(&sections, "claude-code", &model.claude_env(&w.root.path().join("claude-home")));
    eventually("the task failed", || async { w.state(task).await == "failed" }).await;
    let t = w.task(task).await;
    let message = t["task"]["last_failure"]["message"].as_str().unwrap();
    assert!(message.contains("refused") && message.contains("Bash: echo hi > hi.txt"), "{message}");
    // What the run spent is kept with the failure.
    let failed = t["events"].as_array().unwrap().iter().find(|e| e["type"] == "attempt_failed").unwrap();
    assert!(failed["spent"]["usage"]["input_tokens"].as_u64().is_some_and(|n| n > 0), "{failed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_api_errors_fail_the_attempt_with_the_providers_words() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (_, task) = w.queued("Unlucky").await;
    let model = ModelServer::start(Script::new(vec![Step::http_error(400, "the scripted model refuses")]));
    let sections = format!("[claude]\nprogram = {:?}\n", clis::claude());
    let _agent = w.agent_with(&sections, "claude-code", &model.claude_env(&w.root.path().join("claude-home")));
    eventually("the task failed", || async { w.state(task).await == "failed" }).await;
    let t = w.task(task).await;
    let failure = &t["task"]["last_failure"];
    assert_eq!(failure["class"], "agent_error", "{failure}");
    assert!(failure["message"].as_str().unwrap().contains("the scripted model refuses"), "{failure}");
    assert!(failure["message"].as_str().unwrap().contains("the model API answered HTTP 400"), "{failure}");
    assert!(!failure["message"].as_str().unwrap().contains("success"), "{failure}");
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_resolves_an_issue_through_the_runner_which_commits_for_it() {
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Greet in codex").await;
    let model =
        ModelServer::start(Script::new(vec![Step::write("greeting.txt", "hello\n"), Step::say("Added greeting.txt.")]));
    // workspace-write: codex may not write .git, so the runner makes the commit.
    let sections = format!("{CODEX_KEY}\n[codex]\nprogram = {:?}\nsandbox = \"workspace-write\"\n", clis::codex());
    let _agent = w.agent_with(&sections, "codex", &model.codex_home(&w.root.path().join("codex-home")));
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let detail = w.task(task).await;
    let r = &detail["task"]["receipt"];
    assert_eq!(r["summary"], "Added greeting.txt.");
    assert_eq!(r["usage"]["input_tokens"], 2 * INPUT_TOKENS, "{r}");
    assert!(r["session_id"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    assert!(r["cost_usd"].is_null(), "codex reports no cost: {r}");
    // The prompt went in on standard input (`codex exec ... -`), and reached the model whole.
    let asked = user_text(&model.requests()[0]);
    assert!(asked.contains("Resolve issue #") && asked.contains("Greet in codex"), "{asked}");
    let files: Vec<&str> =
        detail["task"]["validation"]["files"].as_array().unwrap().iter().filter_map(|f| f["path"].as_str()).collect();
    assert_eq!(files, ["greeting.txt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_errors_fail_the_attempt_with_the_providers_words() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (_, task) = w.queued("Unlucky codex").await;
    let model = ModelServer::start(Script::new(vec![Step::http_error(400, "the scripted model refuses")]));
    let sections = format!("{CODEX_KEY}\n[codex]\nprogram = {:?}\n", clis::codex());
    let _agent = w.agent_with(&sections, "codex", &model.codex_home(&w.root.path().join("codex-home")));
    eventually("the task failed", || async { w.state(task).await == "failed" }).await;
    let t = w.task(task).await;
    let message = t["task"]["last_failure"]["message"].as_str().unwrap();
    assert!(message.contains("the scripted model refuses"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_may_bypass_its_permissions_inside_the_sandbox_where_it_is_not_root() {
    // The runner here may be root: Claude Code refuses bypassPermissions to root, and runs it for the sandbox's
    // unprivileged user (no IS_SANDBOX needed).
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Run a shell").await;
    let model = ModelServer::start(Script::new(vec![Step::shell("echo hi > hi.txt"), Step::say("Said hi.")]));
    let sections = format!("[claude]\nprogram = {:?}\npermission_mode = \"bypassPermissions\"\n", clis::claude());
    let _agent = w.agent_with(&sections, "claude-code", &model.claude_env(&w.root.path().join("claude-home")));
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let t = w.task(task).await;
    let files: Vec<&str> =
        t["task"]["validation"]["files"].as_array().unwrap().iter().filter_map(|f| f["path"].as_str()).collect();
    assert_eq!(files, ["hi.txt"], "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_in_bypass_mode_works_inside_forgefleets_sandbox() {
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Bypass").await;
    let model = ModelServer::start(Script::new(vec![Step::write("bypass.txt", "free\n"), Step::say("Wrote it.")]));
    let sections = format!("{CODEX_KEY}\n[codex]\nprogram = {:?}\nsandbox = \"bypass\"\n", clis::codex());
    let _agent = w.agent_with(&sections, "codex", &model.codex_home(&w.root.path().join("codex-home")));
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let t = w.task(task).await;
    let files: Vec<&str> =
        t["task"]["validation"]["files"].as_array().unwrap().iter().filter_map(|f| f["path"].as_str()).collect();
    assert_eq!(files, ["bypass.txt"], "{t}");
}
