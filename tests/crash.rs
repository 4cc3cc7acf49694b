//! `forgefleet serve` killed with SIGKILL while agents pull work. After the restart every agent retries the
//! request it had in flight with the same key: nothing committed is lost, no task is handed out twice, and
//! the projections still equal what the log says.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::fleet::TestAgent;
use support::forgejo::{FakeCommit, FakeForgejo};
use support::git::{GitServer, TestRepo};
use support::{Home, eventually, stderr, stdout};

const REGISTRATION: &str = "crash-test-registration";
const TASKS: usize = 120;
const AGENTS: usize = 6;
/// Enough slots for every task, so the queue empties and each agent ends on a 204.
const SLOTS: usize = 25;
/// The server is killed once this many assignments have been answered.
const KILL_AFTER: usize = 40;

/// What one agent was answered: (request key, task id, attempt) in order.
type Answers = Vec<(String, u64, u64)>;

/// Asks for work until there is none, each request with a fresh key; a request that gets no answer (the server
/// is down) is sent again with the same key until one comes.
async fn pull_until_empty(base: String, token: String, name: String, answered: Arc<AtomicUsize>) -> Answers {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut answers = Vec::new();
    for n in 0.. {
        let key = format!("{name}-{n:04}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let reply = loop {
            assert!(tokio::time::Instant::now() < deadline, "{name}: no answer to {key} within 60 s");
            let sent = client
                .post(format!("{base}/api/v1/assignments/next"))
                .bearer_auth(&token)
                .json(&json!({"wait_secs": 0, "request_key": key}))
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 200 => break Some(r.json::<Value>().await.unwrap()),
                Ok(r) if r.status() == 204 => break None,
                Ok(r) => panic!("{name}: {key} answered {}: {}", r.status(), r.text().await.unwrap_or_default()),
                // Down, or going down: the same request again.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        match reply {
            Some(a) => {
                answers.push((key, a["task_id"].as_u64().unwrap(), a["attempt"].as_u64().unwrap()));
                answered.fetch_add(1, Ordering::SeqCst);
            }
            None => return answers,
        }
    }
    unreachable!()
}

/// `forgefleet tasks --json`: every task with its state and the agent holding it.
fn task_table(home: &Home) -> Vec<Value> {
    let out = home.run(&["tasks", "--json", "--limit", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut tasks = v["tasks"].as_array().unwrap().clone();
    tasks.sort_by_key(|t| t["id"].as_u64());
    tasks
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_while_agents_pull_loses_nothing_and_hands_out_nothing_twice() {
    let home = Home::with_config(&format!("[agents]\nregistration_token = \"{REGISTRATION}\"\n"));
    let issues: Vec<String> = (1..=TASKS).map(|i| format!("acme/app#{i}")).collect();
    let seeded: Vec<(&str, &[&str])> = issues.iter().map(|i| (i.as_str(), &["status:todo"][..])).collect();
    support::seed(&home.db(), &seeded);
    let server = home.serve();
    let base = format!("http://{}", home.addr);

    let client = reqwest::Client::new();
    let mut agents = Vec::new();
    let answered = Arc::new(AtomicUsize::new(0));
    for k in 0..AGENTS {
        let name = format!("worker-{k}");
        let body = json!({"name": name, "adapter": "command", "max_concurrency": SLOTS, "version": "test"});
        let r = client
            .post(format!("{base}/api/v1/agents/register"))
            .bearer_auth(REGISTRATION)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
        agents.push((name.clone(), tokio::spawn(pull_until_empty(base.clone(), token, name, answered.clone()))));
    }

    // Kill it in the middle of the rush, without warning, and start it again on the same database.
    while answered.load(Ordering::SeqCst) < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut killed = server;
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let at_kill = answered.load(Ordering::SeqCst);
    drop(killed);
    let server = home.serve();

    let mut held: BTreeMap<u64, String> = BTreeMap::new();
    for (name, agent) in agents {
        let answers = agent.await.unwrap();
        let keys: BTreeSet<&String> = answers.iter().map(|(k, _, _)| k).collect();
        assert_eq!(keys.len(), answers.len(), "{name} recorded one answer per request");
        for (key, task, attempt) in &answers {
            assert_eq!(*attempt, 1, "{name} {key}: task {task} should be on its first attempt");
            if let Some(other) = held.insert(*task, name.clone()) {
                panic!("task {task} was handed to {other} and again to {name} ({key})");
            }
        }
    }
    assert!(at_kill < TASKS, "the kill came after the last assignment ({at_kill})");
    assert_eq!(held.len(), TASKS, "every queued task was handed out exactly once");
    assert!(server.stop().success());

    // What the database says matches what the agents were told: each task assigned to the agent that has it.
    let tasks = task_table(&home);
    assert_eq!(tasks.len(), TASKS);
    for t in &tasks {
        let id = t["id"].as_u64().unwrap();
        assert_eq!(t["state"], "assigned", "{t}");
        assert_eq!(t["agent"].as_str(), held.get(&id).map(String::as_str), "{t}");
    }
    // And the projections equal the log: a rebuild from the events changes nothing.
    let out = home.run(&["store", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("rebuilt {TASKS} tasks and {AGENTS} agents")), "{}", stdout(&out));
    assert_eq!(task_table(&home), tasks);
}

/// The operator's view of task `id` on the server at `base`.
async fn task_view(base: &str, id: u64) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/tasks/{id}"))
        .bearer_auth(support::OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["task"].clone()
}

/// The task's stored row, as the projection keeps it.
fn task_row(db: &std::path::Path, id: u64) -> (String, String) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("SELECT state, data FROM tasks WHERE id = ?1", [id as i64], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
}

/// Kills `server` with SIGKILL and starts `serve` again on the same database; the task's row is what it was.
fn kill_and_restart(home: &Home, server: support::Server, task: u64) -> support::Server {
    let before = task_row(&home.db(), task);
    let mut killed = server;
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    drop(killed);
    assert_eq!(task_row(&home.db(), task), before, "what was committed before the kill is kept");
    home.serve()
}

/// CI reports `state` for `sha` (context `ci/test`).
async fn ci_reports(forgejo: &FakeForgejo, sha: &str, state: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/repos/{PULL_REPO}/statuses/{sha}", forgejo.url().trim_end_matches('/')))
        .header("Authorization", "token ci-token")
        .json(&json!({"state": state, "context": "ci/test", "description": state}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

const PULL_REPO: &str = "acme/app";

/// Every state of a pull request's life that issue #12 added survives `forgefleet serve` killed with SIGKILL
/// and goes on after the restart: blocked on a question (answered after it), validating while CI runs (the
/// poller picks it up again), a round of changes asked for on the pull request (run after it), and the
/// merge. The projections then equal the log (`store rebuild`).
#[tokio::test(flavor = "multi_thread")]
async fn every_state_of_a_pull_requests_life_survives_sigkill_and_store_rebuild() {
    let root = tempfile::tempdir().unwrap();
    let git = GitServer::start_with_token(root.path(), "bot-token");
    let repo = TestRepo::with_main(root.path(), PULL_REPO, &[("README.md", "hello\n")]);
    let forgejo = FakeForgejo::start().await;
    forgejo.create_repo(PULL_REPO).await;
    forgejo.add_member(PULL_REPO, "forgefleet", "bot-token", "admin").await;
    for user in ["agent", "alice", "ci"] {
        forgejo.add_member(PULL_REPO, user, &format!("{user}-token"), "write").await;
    }
    let home = Home::with_config(&format!(
        "[agents]\nregistration_token = \"{REGISTRATION}\"\n\n[forgejo]\nurl = \"{}\"\ngit_url = \"{}\"\n\
         token = \"bot-token\"\nwebhook_secret = \"s\"\nbot_user = \"forgefleet\"\nrepos = [\"{PULL_REPO}\"]\n\
         require_checks = [\"ci/test\"]\n",
        forgejo.url(),
        git.base_url()
    ));
    let base = format!("http://{}", home.addr);
    let hook = format!("{base}/api/v1/webhooks/forgejo");
    forgejo.add_hook(PULL_REPO, &hook, "s", &["issues", "issue_comment", "pull_request", "pull_request_comment"]).await;
    let server = home.serve();
    let issue = forgejo.create_issue(PULL_REPO, "alice", "Greet", "Say hello.", &["status:todo"]).await;
    let agent = TestAgent::register_at(&base, REGISTRATION, "a1").await;
    let a = loop {
        if let Some(a) = agent.pull_with(1, None).await {
            break a;
        }
    };
    let task = a.task_id.0 as u64;
    assert_eq!(agent.start(&a).await, 200);

    // Blocked on a question.
    let question = json!({"attempt": 1, "question": "Hello in which language?"});
    assert_eq!(agent.post(&format!("/tasks/{task}/block"), question).await.0, 200);
    let server = kill_and_restart(&home, server, task);
    let t = task_view(&base, task).await;
    assert_eq!(
        (t["state"].as_str(), t["question"]["text"].as_str()),
        (Some("blocked"), Some("Hello in which language?")),
        "{t}"
    );
    forgejo.comment(PULL_REPO, issue, "alice", "/answer English").await;
    eventually("the answer queues attempt 2", || async { task_view(&base, task).await["attempt"] == 2 }).await;
    agent.heartbeat(&[]).await;
    let a = agent.pull_with(2, None).await.expect("the answered task");
    assert!(a.prompt.contains("Hello in which language?") && a.prompt.contains("English"), "{}", a.prompt);
    assert_eq!(agent.start(&a).await, 200);

    // Validating while CI runs.
    repo.checkout("main");
    repo.checkout(&a.branch);
    let sha = repo.commit(&[("hello.txt", "hello\n")], "greet");
    repo.push(&a.branch);
    let pr =
        forgejo.create_pull(PULL_REPO, "agent", "Greet", &format!("Fixes #{issue}"), &a.branch, &sha, "main").await;
    repo.push_pull_head(pr, &sha);
    forgejo.set_pull_commits(PULL_REPO, pr, &[FakeCommit::new(&sha, "greet").file("hello.txt", "added", 1, 0)]).await;
    ci_reports(&forgejo, &sha, "pending").await;
    let receipt = json!({"task_id": task, "attempt": 2, "pr_number": pr, "head_sha": sha});
    assert_eq!(agent.post("/receipts", receipt).await.0, 202);
    eventually("the task waits for CI", || async { !task_view(&base, task).await["checks"].is_null() }).await;
    let server = kill_and_restart(&home, server, task);
    assert_eq!(task_view(&base, task).await["state"], "validating");
    ci_reports(&forgejo, &sha, "success").await;
    eventually("green CI completes it after the restart", || async {
        task_view(&base, task).await["state"] == "completed"
    })
    .await;

    // A round of changes asked for on the pull request.
    forgejo.comment(PULL_REPO, pr, "alice", "/fleet fix say hello twice").await;
    eventually("a round of changes is queued", || async { task_view(&base, task).await["state"] == "queued" }).await;
    let server = kill_and_restart(&home, server, task);
    let t = task_view(&base, task).await;
    assert_eq!(
        (t["follow_up"]["round"].as_u64(), t["follow_up"]["instruction"].as_str()),
        (Some(1), Some("say hello twice")),
        "{t}"
    );
    agent.heartbeat(&[]).await;
    let round = agent.pull_with(2, None).await.expect("the round");
    assert_eq!((round.attempt, round.branch.as_str()), (3, a.branch.as_str()));
    assert!(round.prompt.contains("say hello twice"), "{}", round.prompt);
    assert_eq!(agent.start(&round).await, 200);
    repo.checkout(&a.branch);
    let twice = repo.commit(&[("hello.txt", "hello\nhello\n")], "twice");
    repo.push(&a.branch);
    repo.push_pull_head(pr, &twice);
    forgejo
        .push_to_pull(PULL_REPO, pr, "agent", &[FakeCommit::new(&twice, "twice").file("hello.txt", "modified", 1, 0)])
        .await;
    ci_reports(&forgejo, &twice, "success").await;
    let receipt = json!({"task_id": task, "attempt": 3, "pr_number": pr, "head_sha": twice});
    assert_eq!(agent.post("/receipts", receipt).await.0, 202);
    eventually("the round completes", || async { task_view(&base, task).await["state"] == "completed" }).await;

    // The merge.
    forgejo.merge_pull(PULL_REPO, pr, "alice").await;
    eventually("the merge is recorded", || async { task_view(&base, task).await["pull_end"]["merged"] == true }).await;
    let server = kill_and_restart(&home, server, task);
    let t = task_view(&base, task).await;
    assert_eq!((t["state"].as_str(), t["pull_end"]["by"].as_str()), (Some("completed"), Some("alice")), "{t}");
    assert!(server.stop().success());

    let tasks = task_table(&home);
    let out = home.run(&["store", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(task_table(&home), tasks);
}
