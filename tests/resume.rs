//! A round that goes on from earlier work, with the real Claude Code (2.1.197) through the runner: given to the
//! agent that ran the earlier round, it resumes that CLI session (`--resume`, in the task's kept home and at the
//! checkout path the sandbox keeps for the task); given to another agent, a fresh session is told the history in
//! its prompt; and a session the CLI no longer has falls back to a fresh one instead of failing.

mod support;

use serde_json::Value;
use support::clis;
use support::eventually;
use support::model::{ModelServer, Script, Step, user_text};
use support::runner::{AgentHost, REPO, WEBHOOK_SECRET, World};

/// The first round writes `greeting.txt`; a resumed session goes on with the script's next steps.
fn two_rounds() -> Script {
    Script::new(vec![
        Step::write("greeting.txt", "hello\n"),
        Step::say("Added greeting.txt with a greeting."),
        Step::write("farewell.txt", "bye\n"),
        Step::say("Added farewell.txt as asked."),
    ])
}

/// A fresh session doing the round of changes from its start.
const FRESH_SUMMARY: &str = "Added farewell.txt in a fresh session.";
fn fresh_round() -> Script {
    Script::new(vec![Step::write("farewell.txt", "bye\n"), Step::say(FRESH_SUMMARY)])
}

fn claude(w: &World, name: &str, model: &ModelServer) -> AgentHost {
    let sections = format!("[claude]\nprogram = {:?}\n", clis::claude());
    let env = model.claude_env(&w.agent_dir(name).join("claude-home"));
    w.agent_named(name, &sections, "claude-code", &env)
}

/// A task done once by `a1`, then a round of changes asked on its pull request by alice (after `a1` went away,
/// deregistering, when `a1_leaves`): (task, the first round's session, `a1` if it stays).
async fn done_then_changes_asked(w: &World, model: &ModelServer, a1_leaves: bool) -> (u64, String, Option<AgentHost>) {
    let hook = format!("{}/api/v1/webhooks/forgejo", w.fleet.base);
    w.forgejo.add_hook(REPO, &hook, WEBHOOK_SECRET, &["pull_request_comment"]).await;
    let (_, task) = w.queued("Greet the world").await;
    let mut a1 = claude(w, "a1", model);
    eventually("the first round is completed", || async { w.state(task).await == "completed" }).await;
    if a1_leaves {
        assert!(a1.terminate().success());
    }
    let receipt = w.task(task).await["task"]["receipt"].clone();
    let session = receipt["session_id"].as_str().expect("Claude Code reports its session").to_string();
    let pr = receipt["pr_number"].as_u64().unwrap();
    w.forgejo.comment(REPO, pr, "alice", "/fleet fix add a farewell too").await;
    eventually("the round of changes is queued", || async { w.task(task).await["task"]["attempt"] == 2 }).await;
    (task, session, (!a1_leaves).then_some(a1))
}

/// The receipt the given attempt handed in, once it did.
async fn receipt_of(w: &World, task: u64, attempt: u64) -> Value {
    let find = async || {
        let events = w.task(task).await["events"].clone();
        events
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "receipt_received" && e["attempt"] == attempt)
            .map(|e| e["receipt"].clone())
    };
    eventually(&format!("attempt {attempt} hands in its receipt"), || async { find().await.is_some() }).await;
    find().await.unwrap()
}

/// Whether a model request carries, as history, the first round's call of the Write tool for `greeting.txt`:
/// only a resumed session sends it (a fresh one starts from its prompt).
fn carries_the_first_rounds_tool_call(request: &Value) -> bool {
    request["messages"].as_array().into_iter().flatten().filter(|m| m["role"] == "assistant").any(|m| {
        m["content"].as_array().into_iter().flatten().any(|b| {
            b["type"] == "tool_use"
                && b["name"] == "Write"
                && b["input"]["file_path"].as_str().is_some_and(|p| p.ends_with("greeting.txt"))
        })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_round_of_changes_for_the_same_agent_resumes_its_claude_code_session() {
    let w = World::new(|_| {}).await;
    let model = ModelServer::start(two_rounds());
    let (task, session, _a1) = done_then_changes_asked(&w, &model, false).await;
    let first_round = model.requests().len();

    let receipt = receipt_of(&w, task, 2).await;
    assert_eq!(receipt["summary"], "Added farewell.txt as asked.", "the resumed script went on: {receipt}");
    assert_eq!(receipt["session_id"], session.as_str(), "the same session");
    let round = &model.requests()[first_round..];
    assert!(!round.is_empty() && round.iter().all(carries_the_first_rounds_tool_call), "{round:#?}");
    assert!(user_text(&round[0]).contains("add a farewell too"), "the round's request reached the model");
    let events = w.task(task).await["events"].clone();
    let assigned: Vec<&Value> =
        events.as_array().unwrap().iter().filter(|e| e["type"] == "task_assigned").map(|e| &e["agent"]).collect();
    assert_eq!(assigned.len(), 2);
    assert_eq!(assigned[0], assigned[1], "both rounds went to a1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_round_of_changes_for_another_agent_starts_fresh_and_is_told_the_history() {
    let w = World::new(|_| {}).await;
    let model = ModelServer::start(two_rounds());
    // a1 goes away (it deregisters): the round is anyone's at once.
    let (task, _, _) = done_then_changes_asked(&w, &model, true).await;
    let fresh = ModelServer::start(fresh_round());
    let _a2 = claude(&w, "a2", &fresh);

    let receipt = receipt_of(&w, task, 2).await;
    assert_eq!(receipt["summary"], FRESH_SUMMARY, "{receipt}");
    let first = &fresh.requests()[0];
    assert!(!carries_the_first_rounds_tool_call(first), "a fresh session: {first}");
    let asked = user_text(first);
    assert!(
        asked.contains("Attempt 1 of this task did the work")
            && asked.contains("Added greeting.txt with a greeting.")
            && asked.contains("add a farewell too"),
        "the history and the request are in the prompt: {asked}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_the_cli_no_longer_has_falls_back_to_a_fresh_session() {
    let w = World::new(|_| {}).await;
    let model = ModelServer::start(two_rounds());
    let (_, task) = w.queued("Greet the world").await;
    let mut a1 = claude(&w, "a1", &model);
    eventually("the first round is completed", || async { w.state(task).await == "completed" }).await;
    let pr = w.task(task).await["task"]["receipt"]["pr_number"].as_u64().unwrap();
    // The host loses the task's home (and with it Claude Code's transcript) while the runner is down.
    assert!(a1.terminate().success());
    let homes = w.agent_dir("a1").join("work").join("homes");
    let kept: Vec<_> = std::fs::read_dir(&homes).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(kept, [std::ffi::OsString::from(format!("task-{task}"))], "the task's home was kept");
    std::fs::remove_dir_all(&homes).unwrap();
    let hook = format!("{}/api/v1/webhooks/forgejo", w.fleet.base);
    w.forgejo.add_hook(REPO, &hook, WEBHOOK_SECRET, &["pull_request_comment"]).await;
    w.forgejo.comment(REPO, pr, "alice", "/fleet fix add a farewell too").await;
    eventually("the round of changes is queued", || async { w.task(task).await["task"]["attempt"] == 2 }).await;
    let fresh = ModelServer::start(fresh_round());
    let _a1 = claude(&w, "a1", &fresh);

    let receipt = receipt_of(&w, task, 2).await;
    assert_eq!(receipt["summary"], FRESH_SUMMARY, "{receipt}");
    let progress = w.task(task).await["progress"].clone();
    let lines: Vec<&str> = progress.as_array().unwrap().iter().filter_map(|p| p["line"].as_str()).collect();
    assert!(lines.iter().any(|l| l.starts_with("could not resume session")), "{lines:?}");
}
