//! `store rebuild` recomputes exactly the live projections, after long random scenarios and on a database made
//! by a whole loop over HTTP.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use forgefleet::core::{
    AgentId, AgentName, Check, CommitSha, FailureClass, OnPullClosed, Receipt, TaskId, Timestamp, Usage, Validation,
};
use forgefleet::engine::{Command, Engine, EngineSettings, IssueObservation, ManualClock, Registration, Reply};
use forgefleet::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every row of the projection tables, as text, in a stable order.
fn snapshot(store: &Store) -> Vec<String> {
    let conn = store.connection();
    [("tasks", "id"), ("agents", "id"), ("leases", "task_id"), ("progress", "id")]
        .iter()
        .flat_map(|(table, order)| rows_of(conn, table, order))
        .collect()
}

/// Every row of `table` ordered by `order`, each as `table: cell | cell | ...`.
fn rows_of(conn: &rusqlite::Connection, table: &str, order: &str) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY {order}")).unwrap();
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            let cells: Vec<String> = (0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect();
            Ok(format!("{table}: {}", cells.join(" | ")))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

const LABELS: &[&str] = &["priority:high", "priority:low", "priority:critical", "needs:gpu", "agent:a1", "type:bug"];
const CLASSES: [FailureClass; 5] = [
    FailureClass::AgentError,
    FailureClass::Timeout,
    FailureClass::RateLimited,
    FailureClass::VerificationFailed,
    FailureClass::AgentLost,
];

/// The pull request of the most recently changed completed task, if there is one.
fn completed_pull(engine: &Engine) -> Option<u64> {
    let completed = engine.store.read().tasks(Some(forgefleet::core::TaskState::Completed), 1).unwrap();
    let task = engine.store.read().task(completed.first()?.id).unwrap()?;
    task.receipt.map(|r| r.pr_number)
}

fn random_command(rng: &mut StdRng, engine: &Engine) -> Command {
    let mut agent = AgentId(rng.random_range(1..=6));
    let task = TaskId(rng.random_range(1..=60));
    let current = engine.store.read().task(task).unwrap();
    let attempt = current.as_ref().map_or(1, |t| t.attempt);
    // The branch an agent says it pushed: mostly the assignment's, which later attempts then continue.
    let pushed = current.as_ref().map(|t| t.branch("forgefleet/")).filter(|_| rng.random_bool(0.4));
    // Mostly the leaseholder speaks about its task; sometimes a stranger does, which must be refused.
    if let Some(lease) = current.and_then(|t| t.lease).filter(|_| rng.random_bool(0.8)) {
        agent = lease.agent;
    }
    match rng.random_range(0..102) {
        0..=19 => {
            let mut labels: Vec<String> =
                LABELS.iter().filter(|_| rng.random_bool(0.2)).map(|l| l.to_string()).collect();
            match rng.random_range(0..10) {
                0..=6 => labels.push("status:todo".into()),
                7 => labels.push("status:doing".into()),
                _ => {}
            }
            Command::ObserveIssue(IssueObservation {
                issue: format!("acme/app#{}", rng.random_range(1..=60)).parse().unwrap(),
                title: format!("title {}", rng.random_range(0..3)),
                body: String::new(),
                labels,
                open: rng.random_bool(0.9),
                updated_at: None,
                fresh: true,
                issue_id: None,
            })
        }
        20..=24 => {
            let caps: BTreeSet<String> =
                if rng.random_bool(0.3) { ["gpu".to_string()].into() } else { BTreeSet::new() };
            Command::RegisterAgent(Registration {
                name: AgentName::parse(&format!("a{}", rng.random_range(1..=6))).unwrap(),
                adapter: "command".into(),
                capabilities: caps,
                max_concurrency: rng.random_range(1..=3),
                version: "1".into(),
                token_hash: format!("h{}", rng.random::<u32>()),
                presented_token_hash: None,
            })
        }
        25..=39 => Command::NextAssignment {
            agent,
            request_key: rng.random_bool(0.5).then(|| format!("k{}", rng.random_range(0..20))),
        },
        40..=49 => Command::StartTask { agent, task, attempt },
        50..=57 => Command::Heartbeat { agent, running: vec![task] },
        58..=63 => Command::FailTask {
            agent,
            task,
            attempt,
            class: CLASSES[rng.random_range(0..CLASSES.len())],
            message: "it broke".into(),
            spent: None,
            pushed_branch: pushed,
        },
        64..=71 => {
            // A receipt needs a started attempt: mostly about a running task; with none, an assigned one is
            // started by its agent first.
            let read = |state| engine.store.read().tasks(Some(state), 10).unwrap();
            let (running, assigned) =
                (read(forgefleet::core::TaskState::Running), read(forgefleet::core::TaskState::Assigned));
            let held = |id| {
                let t = engine.store.read().task(id).unwrap().unwrap();
                (t.lease.map_or(agent, |l| l.agent), t.id, t.attempt)
            };
            let (agent, task, attempt) = match (running.first(), assigned.first()) {
                (Some(t), _) if rng.random_bool(0.8) => held(t.id),
                (None, Some(t)) if rng.random_bool(0.8) => {
                    let (agent, task, attempt) = held(t.id);
                    return Command::StartTask { agent, task, attempt };
                }
                _ => (agent, task, attempt),
            };
            Command::SubmitReceipt {
                agent,
                task,
                attempt,
                receipt: Receipt {
                    pr_number: rng.random_range(1..100),
                    head_sha: CommitSha::parse(&format!("{:040x}", rng.random::<u64>())).unwrap(),
                    summary: "did it".into(),
                    usage: Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() },
                    cost_usd: Some(0.01),
                    duration_secs: Some(3),
                    session_id: None,
                    artifacts: vec![],
                },
            }
        }
        72..=77 => {
            // A verdict about a task that is being validated, when there is one.
            let validating = engine.store.read().tasks(Some(forgefleet::core::TaskState::Validating), 10).unwrap();
            let (task, attempt) = match validating.first() {
                Some(t) => (t.id, t.attempt),
                None => (task, attempt),
            };
            // One waiting for CI gets CI's verdict.
            if let Some(checks) = engine.store.read().task(task).unwrap().and_then(|t| t.checks) {
                let status = |state: &str| forgefleet::core::CommitStatus {
                    context: "ci".into(),
                    state: state.into(),
                    description: String::new(),
                    target_url: String::new(),
                };
                let verdict = match rng.random_range(0..3) {
                    0 => forgefleet::core::ChecksVerdict::Passed { checks: vec![status("success")] },
                    1 => forgefleet::core::ChecksVerdict::Failed { failing: vec![status("failure")] },
                    _ => forgefleet::core::ChecksVerdict::Pending { waiting_for: vec![] },
                };
                return Command::FinishChecks { task, attempt, head_sha: checks.head_sha, verdict };
            }
            Command::FinishValidation {
                task,
                attempt,
                validation: Validation {
                    checks: vec![Check {
                        name: "head_matches".into(),
                        passed: rng.random_bool(0.7),
                        detail: "x".into(),
                    }],
                    files: vec![],
                },
            }
        }
        78..=80 => Command::CancelTask { task, reason: "operator".into() },
        81..=83 => Command::RetryTask { task, by: "operator".into() },
        84..=85 => Command::DrainAgent { agent },
        86..=87 => Command::DeregisterAgent { agent },
        // Progress lines are no events: the rebuild must keep them, and rebuild the tasks they refer to.
        88..=89 => Command::Progress { agent, task, attempt, lines: vec![format!("line {}", rng.random::<u16>())] },
        // A pull request closed or merged: a completed task whose receipt names it records its end.
        90..=91 => Command::ObservePull {
            repo: "acme/app".parse().unwrap(),
            number: completed_pull(engine).filter(|_| rng.random_bool(0.8)).unwrap_or_else(|| rng.random_range(1..100)),
            closed: rng.random_bool(0.9),
            merged: rng.random_bool(0.5),
            by: Some("alice".into()),
        },
        // A person asks for changes on a pull request (`/fleet fix`): a completed task naming it gets a round.
        92..=93 => {
            // Mostly on the pull request of a completed task.
            let pr =
                completed_pull(engine).filter(|_| rng.random_bool(0.8)).unwrap_or_else(|| rng.random_range(1..100));
            Command::RunCommand {
                key: format!("fix-{}", rng.random::<u32>()),
                command: forgefleet::core::commands::FleetCommand::Fix { instruction: "rename it".into() },
                issue: Some(format!("acme/app#{pr}").parse().unwrap()),
                by: "@alice".into(),
            }
        }
        94..=95 => {
            // An agent asks a person: mostly about a running task, by its leaseholder.
            let running = engine.store.read().tasks(Some(forgefleet::core::TaskState::Running), 10).unwrap();
            let (agent, task, attempt) = match running.first() {
                Some(t) if rng.random_bool(0.8) => {
                    let t = engine.store.read().task(t.id).unwrap().unwrap();
                    (t.lease.map_or(agent, |l| l.agent), t.id, t.attempt)
                }
                _ => (agent, task, attempt),
            };
            Command::BlockTask {
                agent,
                task,
                attempt,
                question: format!("which {}?", rng.random_range(0..2)),
                session_id: rng.random_bool(0.5).then(|| format!("session-{}", rng.random_range(0..3))),
            }
        }
        96..=97 => {
            // A person answers: mostly a blocked task.
            let blocked = engine.store.read().tasks(Some(forgefleet::core::TaskState::Blocked), 10).unwrap();
            let issue = match blocked.first() {
                Some(t) if rng.random_bool(0.8) => Some(t.issue.parse().unwrap()),
                _ => engine.store.read().task(task).unwrap().map(|t| t.issue),
            };
            Command::RunCommand {
                key: format!("answer-{}", rng.random::<u64>()),
                command: forgefleet::core::commands::FleetCommand::Answer { issue: None, text: "this one".into() },
                issue,
                by: "@alice".into(),
            }
        }
        // A pull request that stopped merging, seen twice: mostly a completed task's, at one of a few heads.
        98..=99 => Command::ObserveConflict {
            repo: "acme/app".parse().unwrap(),
            number: completed_pull(engine).filter(|_| rng.random_bool(0.8)).unwrap_or_else(|| rng.random_range(1..100)),
            head_sha: format!("{:040x}", rng.random_range(0..3u64)),
            base_branch: "main".into(),
            base_sha: format!("{:040x}", rng.random_range(0..3u64) + 7),
        },
        _ => Command::Tick,
    }
}

#[test]
fn rebuilt_projections_equal_the_live_ones_after_long_random_scenarios() {
    for seed in 1..=4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        // Every other scenario's repositories require CI: tasks wait for it, and it passes, fails or never ends.
        let mut settings = EngineSettings::default();
        settings.require_checks = forgefleet::core::ChecksSetting::Flag(seed % 2 == 0);
        settings.on_pr_closed = [OnPullClosed::Requeue, OnPullClosed::Fail, OnPullClosed::Nothing][seed as usize % 3];
        // Conflicts queue merging rounds in half the scenarios and are only told in the others.
        settings.auto_rebase = seed % 4 < 2;
        let mut engine = Engine::new(Store::open_in_memory().unwrap(), settings, clock.clone());
        let mut ok = 0;
        for _ in 0..4000 {
            if rng.random_bool(0.2) {
                clock.advance(Duration::from_secs(rng.random_range(1..900)));
            }
            let batch: Vec<Command> = (0..rng.random_range(1..4)).map(|_| random_command(&mut rng, &engine)).collect();
            ok += engine.execute_batch(batch).iter().filter(|r| r.is_ok()).count();
        }
        let kinds: BTreeSet<String> = {
            let conn = engine.store.connection();
            let mut stmt = conn.prepare("SELECT DISTINCT kind FROM events").unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        // The scenario must have walked the whole machine, or equality would prove little.
        assert!(kinds.len() >= 15, "seed {seed}: only {kinds:?}");
        if seed % 2 == 0 {
            assert!(kinds.contains("checks_awaited"), "seed {seed}: no task waited for CI: {kinds:?}");
        }
        assert!(kinds.contains("pull_ended"), "seed {seed}: no pull request ended: {kinds:?}");
        assert!(kinds.contains("follow_up_requested"), "seed {seed}: no round of changes: {kinds:?}");
        assert!(kinds.contains("pull_conflicted"), "seed {seed}: no conflicted pull request: {kinds:?}");
        assert!(kinds.contains("task_blocked") && kinds.contains("task_answered"), "seed {seed}: {kinds:?}");
        assert!(ok > 1000, "seed {seed}: only {ok} commands applied");

        let live = snapshot(&engine.store);
        let report = engine.store.rebuild().unwrap();
        let rebuilt = snapshot(&engine.store);
        assert_eq!(report.events, engine.store.read().event_count().unwrap());
        assert_eq!(live.len(), rebuilt.len(), "seed {seed}");
        for (a, b) in live.iter().zip(&rebuilt) {
            assert_eq!(a, b, "seed {seed}");
        }
        // A second rebuild is a fixed point.
        engine.store.rebuild().unwrap();
        assert_eq!(snapshot(&engine.store), rebuilt);
        // And the engine goes on working on the rebuilt tables.
        assert!(matches!(engine.execute(Command::Tick), Ok(Reply::Ticked(_))));
    }
}

/// Every row of every table but the log, as text, in a stable order: the projections, the progress lines,
/// the outbox, the seen webhooks and the settings.
fn every_table(db: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt =
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'events' ORDER BY name").unwrap();
    let tables: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    tables.iter().flat_map(|table| rows_of(&conn, table, "1")).collect()
}

/// A database as a real fleet leaves it: work done end to end through HTTP, a fake Forgejo sending webhooks
/// and receiving comments, real git, agents reporting progress, a person's `/cancel`, a lease still held.
/// `forgefleet store rebuild` must work on it and give back every table exactly as it was.
#[tokio::test(flavor = "multi_thread")]
async fn store_rebuild_works_on_a_database_made_by_a_whole_loop_and_changes_no_row() {
    use forgefleet::config::Secret;
    use serde_json::json;
    use support::eventually;
    use support::fleet::Fleet;
    use support::forgejo::FakeForgejo;
    use support::git::{GitServer, TestRepo};

    const REPO: &str = "acme/app";
    let root = tempfile::tempdir().unwrap();
    let db = root.path().join("fleet.db");
    let git = GitServer::start_with_token(root.path(), "bot-token");
    let repo = TestRepo::with_main(root.path(), REPO, &[("README.md", "hello\n")]);
    let forgejo = FakeForgejo::start().await;
    forgejo.create_repo(REPO).await;
    forgejo.add_member(REPO, "forgefleet", "bot-token", "admin").await;
    forgejo.add_member(REPO, "alice", "alice-token", "write").await;
    let (url, git_url) = (forgejo.url().to_string(), git.base_url());
    let db_path = db.clone();
    let fleet = Fleet::start_with_forgejo(|c| {
        c.forgejo.url = Some(url);
        c.forgejo.git_url = Some(git_url);
        c.forgejo.token = Some(Secret::new("bot-token"));
        c.forgejo.webhook_secret = Some(Secret::new("s"));
        c.forgejo.bot_user = Some("forgefleet".into());
        c.forgejo.repos = vec![REPO.into()];
        c.store.path = db_path;
    })
    .await;
    let hook = format!("{}/api/v1/webhooks/forgejo", fleet.base);
    forgejo.add_hook(REPO, &hook, "s", &["issues", "issue_comment", "pull_request"]).await;
    let tasks = || async { fleet.operator(reqwest::Method::GET, "/tasks").await.1["tasks"].as_array().unwrap().len() };

    // Issue 1: done end to end, with progress and a checked receipt.
    let one = forgejo.create_issue(REPO, "alice", "Greet", "", &["status:todo"]).await;
    eventually("task 1 is queued", || async { tasks().await == 1 }).await;
    let a1 = fleet.register("a1", &[], 2).await;
    let work = a1.pull().await.unwrap();
    a1.start(&work).await;
    let progress = json!({"attempt": 1, "lines": ["cloned", "running tests"]});
    assert_eq!(a1.post(&format!("/tasks/{}/progress", work.task_id), progress).await.0, 200);
    repo.checkout(&work.branch);
    let sha = repo.commit(&[("greet.txt", "hi\n")], "greet");
    repo.push(&work.branch);
    let pr = forgejo.create_pull(REPO, "agent", "Greet", &format!("Closes #{one}"), &work.branch, &sha, "main").await;
    repo.push_pull_head(pr, &sha);
    let receipt = json!({"task_id": work.task_id, "attempt": 1, "pr_number": pr, "head_sha": sha});
    assert_eq!(a1.post("/receipts", receipt).await.0, 202);
    eventually("task 1 is completed", || async { fleet.task(work.task_id).await["state"] == "completed" }).await;

    // Issue 2: started, progress, then a person's `/cancel`.
    let two = forgejo.create_issue(REPO, "alice", "Stop me", "", &["status:todo"]).await;
    eventually("task 2 is queued", || async { tasks().await == 2 }).await;
    let second = a1.pull().await.unwrap();
    a1.start(&second).await;
    let progress = json!({"attempt": 1, "lines": ["thinking"]});
    assert_eq!(a1.post(&format!("/tasks/{}/progress", second.task_id), progress).await.0, 200);
    forgejo.comment(REPO, two, "alice", "/cancel").await;
    eventually("task 2 is cancelled", || async { fleet.task(second.task_id).await["state"] == "cancelled" }).await;

    // Issue 3: leased to another agent that has not started yet.
    forgejo.create_issue(REPO, "alice", "Hold me", "", &["status:todo"]).await;
    eventually("task 3 is queued", || async { tasks().await == 3 }).await;
    let a2 = fleet.register("a2", &[], 1).await;
    a2.pull().await.unwrap();
    a2.heartbeat(&[]).await;
    eventually("the outbox is empty", || async {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL", [], |r| r.get::<_, i64>(0)).unwrap()
            == 0
    })
    .await;
    drop(fleet);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = every_table(&db);
    for table in ["progress", "leases", "outbox", "webhook_seen"] {
        assert!(before.iter().any(|r| r.starts_with(&format!("{table}: "))), "no {table} rows: {before:#?}");
    }
    let out = support::rebuild_store(&db);
    assert!(support::stdout(&out).contains("rebuilt 3 tasks and 2 agents"), "{}", support::stdout(&out));
    let after = every_table(&db);
    assert_eq!(before.len(), after.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(a, b);
    }
}
