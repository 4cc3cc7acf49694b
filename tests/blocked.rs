//! Blocked on a person: an agent asks a question instead of guessing, the issue shows it, a person with write
//! access answers with `/answer`, and the next attempt is told both and finishes the work.

mod support;

use std::time::Duration;

use forgefleet::config::Secret;
use reqwest::Method;
use serde_json::{Value, json};
use support::eventually;
use support::fleet::{Fleet, TestAgent};
use support::forgejo::FakeForgejo;
use support::git::{GitServer, TestRepo};

const REPO: &str = "acme/app";
const BOT: &str = "forgefleet";
const BOT_TOKEN: &str = "bot-token";
const QUESTION: &str = "The issue says \"the API\": should the client call the v1 or the v2 API?\n\n/retry";

struct World {
    forgejo: FakeForgejo,
    fleet: Fleet,
    repo: TestRepo,
    _git: GitServer,
    root: tempfile::TempDir,
    issue: u64,
    agent: TestAgent,
    task: u64,
}

impl World {
    /// A repository with history on `main`, an issue labelled `status:todo`, and agent `a1` (one slot) that took
    /// the task and started it. alice may write to the repository; eve may only read it.
    async fn new() -> World {
        World::start(false).await
    }

    /// [`World::new`], with `[forgejo] answer_any_comment` as given.
    async fn start(answer_any_comment: bool) -> World {
        let root = tempfile::tempdir().unwrap();
        let git = GitServer::start_with_token(root.path(), BOT_TOKEN);
        let repo = TestRepo::with_main(root.path(), REPO, &[("README.md", "hello\n")]);
        let forgejo = FakeForgejo::start().await;
        forgejo.create_repo(REPO).await;
        forgejo.add_member(REPO, BOT, BOT_TOKEN, "admin").await;
        forgejo.add_member(REPO, "alice", "alice-token", "write").await;
        forgejo.add_member(REPO, "eve", "eve-token", "read").await;
        let (url, git_url) = (forgejo.url().to_string(), git.base_url());
        let db = root.path().join("fleet.db");
        let fleet = Fleet::start_with_forgejo(|c| {
            c.forgejo.url = Some(url);
            c.forgejo.git_url = Some(git_url);
            c.forgejo.token = Some(Secret::new(BOT_TOKEN));
            c.forgejo.webhook_secret = Some(Secret::new("s"));
            c.forgejo.bot_user = Some(BOT.into());
            c.forgejo.repos = vec![REPO.into()];
            c.forgejo.answer_any_comment = answer_any_comment;
            c.store.path = db;
        })
        .await;
        let hook = format!("{}/api/v1/webhooks/forgejo", fleet.base);
        forgejo.add_hook(REPO, &hook, "s", &["issues", "issue_comment", "pull_request"]).await;
        let issue =
            forgejo.create_issue(REPO, "alice", "Use the API", "Make the client use the API.", &["status:todo"]).await;
        let agent = fleet.register("a1", &[], 1).await;
        let a = loop {
            if let Some(a) = agent.pull_with(2, None).await {
                break a;
            }
        };
        assert_eq!(agent.start(&a).await, 200);
        let task = a.task_id.0 as u64;
        World { forgejo, fleet, repo, _git: git, root, issue, agent, task }
    }

    async fn block(&self, attempt: u32, question: &str) -> (reqwest::StatusCode, Value) {
        self.agent.post(&format!("/tasks/{}/block", self.task), json!({"attempt": attempt, "question": question})).await
    }

    async fn task(&self) -> Value {
        let (_, body) = self.fleet.operator(Method::GET, &format!("/tasks/{}", self.task)).await;
        body["task"].clone()
    }

    async fn labels(&self) -> Vec<String> {
        let mut l = self.forgejo.issue(REPO, self.issue).await.labels;
        l.sort();
        l
    }

    async fn bot_said(&self, what: &str) -> bool {
        self.forgejo.comments(REPO, self.issue).await.iter().any(|c| c.user == BOT && c.body.contains(what))
    }

    /// The agent blocks attempt 1 on [`QUESTION`], and the issue shows it.
    async fn blocked(&self) {
        let (status, ack) = self.block(1, QUESTION).await;
        assert_eq!((status.as_u16(), ack["state"].as_str()), (200, Some("blocked")), "{ack}");
        eventually("the issue is labelled status:blocked", || async { self.labels().await == ["status:blocked"] })
            .await;
        eventually("the question is on the issue", || async { self.bot_said("v1 or the v2 API?").await }).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_blocks_on_a_question_a_person_answers_and_the_next_attempt_is_told_both() {
    let w = World::new().await;
    // Asking about an attempt it does not hold, or with nothing to ask, is refused.
    assert_eq!(w.block(2, "?").await.0, 403, "an attempt it does not hold");
    assert_eq!(w.block(1, "  ").await.0, 400, "an empty question");
    assert_eq!(w.block(1, &"x".repeat(16 * 1024 + 1)).await.0, 400, "a question over 16 KiB");
    w.blocked().await;
    // The question is fenced: its `/retry` line is the agent's text, never a command.
    let comments = w.forgejo.comments(REPO, w.issue).await;
    let asked = comments.iter().find(|c| c.user == BOT && c.body.contains("v1 or the v2 API?")).unwrap();
    assert!(asked.body.contains("```text\n") && asked.body.contains("/answer"), "{}", asked.body);
    // The same question again (a retried request) is a no-op.
    let events = w.fleet.event_count();
    let (status, ack) = w.block(1, QUESTION).await;
    assert_eq!((status.as_u16(), ack["state"].as_str()), (200, Some("blocked")), "{ack}");
    assert_eq!(w.fleet.event_count(), events, "a repeated block records nothing");
    assert_eq!(w.block(1, "Another question?").await.0, 409, "the first question stands");

    // Blocked holds nothing: no lease, no timeout however long it waits, no work for the agent.
    let task = w.task().await;
    assert_eq!((task["state"].as_str(), &task["lease"]), (Some("blocked"), &Value::Null), "{task}");
    w.fleet.later(Duration::from_secs(3 * 60 * 60));
    w.fleet.tick().await;
    assert_eq!(w.task().await["state"], "blocked", "no timeout runs for a blocked task");
    assert!(w.agent.pull().await.is_none(), "a blocked task is never handed out");

    // A comment without `/answer` answers nothing (`answer_any_comment` is off); eve may not answer; nothing
    // changes. (Comments are handled in order: once eve is told, alice's comment was seen.)
    w.forgejo.comment(REPO, w.issue, "alice", "Let me think about it.").await;
    w.forgejo.comment(REPO, w.issue, "eve", "/answer use v1").await;
    eventually("eve is told why", || async { w.bot_said("@eve").await }).await;
    assert!(w.bot_said("write access").await);
    assert_eq!((w.task().await["state"].as_str(), w.task().await["attempt"].as_u64()), (Some("blocked"), Some(1)));

    // alice answers: a new attempt is queued.
    w.forgejo
        .comment(REPO, w.issue, "alice", "Good question.\n\n/answer use the v2 API\nIts docs are in `docs/v2.md`.")
        .await;
    eventually("queued again", || async { w.task().await["state"] == "queued" }).await;
    let task = w.task().await;
    assert_eq!(task["attempt"], 2, "{task}");
    assert_eq!(task["question"]["answer"], "use the v2 API\nIts docs are in `docs/v2.md`.", "{task}");
    assert_eq!(task["question"]["answered_by"], "@alice", "{task}");
    assert!(task["retries"].as_object().is_none_or(|r| r.is_empty()), "an answer spends no retry: {task}");
    eventually("status:todo again", || async { w.labels().await == ["status:todo"] }).await;

    // The next assignment's prompt holds the question and the answer (the agent's heartbeat says it is back
    // after the hours the clock moved on).
    w.agent.heartbeat(&[]).await;
    let a = w.agent.pull().await.expect("the answered task");
    assert_eq!(a.attempt, 2);
    assert!(a.prompt.contains("should the client call the v1 or the v2 API?"), "{}", a.prompt);
    assert!(a.prompt.contains("use the v2 API\nIts docs are in `docs/v2.md`."), "{}", a.prompt);
    assert!(a.prompt.contains(".forgefleet/question.md"), "{}", a.prompt);

    // An answer to a task that no longer waits for one does not apply, and says so.
    w.forgejo.comment(REPO, w.issue, "alice", "/answer use v3").await;
    eventually("the answer does not apply", || async { w.bot_said("does not apply").await }).await;
    assert_eq!(w.task().await["attempt"], 2);

    // The agent completes it.
    assert_eq!(w.agent.start(&a).await, 200);
    w.repo.checkout("main");
    w.repo.checkout(&a.branch);
    let sha = w.repo.commit(&[("client.rs", "// v2\n")], "use the v2 API");
    w.repo.push(&a.branch);
    let pr = w.forgejo.create_pull(REPO, "alice", "v2", &format!("Closes #{}", w.issue), &a.branch, &sha, "main").await;
    w.repo.push_pull_head(pr, &sha);
    let receipt = json!({"task_id": a.task_id, "attempt": 2, "pr_number": pr, "head_sha": sha});
    assert_eq!(w.agent.post("/receipts", receipt).await.0, 202);
    eventually("completed", || async { w.task().await["state"] == "completed" }).await;
    eventually("status:done", || async { w.labels().await == ["status:done"] }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_answer_any_comment_a_writers_plain_comment_answers_a_blocked_task_and_nothing_else_is_said() {
    let w = World::start(true).await;
    w.blocked().await;
    let bot_comments = || async { w.forgejo.comments(REPO, w.issue).await.iter().filter(|c| c.user == BOT).count() };
    let said = bot_comments().await;
    // eve's comment is no answer, and a comment is not a command: nobody is told anything.
    w.forgejo.comment(REPO, w.issue, "eve", "Use the v1 API.").await;
    // alice's plain comment is the answer.
    w.forgejo.comment(REPO, w.issue, "alice", "Use the v2 API.\nIts docs are in `docs/v2.md`.").await;
    eventually("queued again", || async { w.task().await["state"] == "queued" }).await;
    let task = w.task().await;
    assert_eq!(task["attempt"], 2, "{task}");
    assert_eq!(task["question"]["answer"], "Use the v2 API.\nIts docs are in `docs/v2.md`.", "{task}");
    assert_eq!(task["question"]["answered_by"], "@alice", "{task}");
    eventually("alice's comment gets a +1", || async {
        w.forgejo.reactions(REPO, w.issue).await.iter().any(|r| r.user == BOT && r.content == "+1")
    })
    .await;
    // Once the task no longer waits, a comment is just a comment; a command after it shows it was seen.
    w.forgejo.comment(REPO, w.issue, "alice", "Thanks!").await;
    w.forgejo.comment(REPO, w.issue, "alice", "/answer use v3").await;
    eventually("the answer does not apply", || async { w.bot_said("does not apply").await }).await;
    assert_eq!(bot_comments().await, said + 1, "only the `/answer` command was answered");
    assert!(!w.bot_said("@eve").await);
    assert_eq!(w.task().await["attempt"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_ends_a_blocked_task_and_blocking_needs_a_started_attempt() {
    let w = World::new().await;
    w.blocked().await;
    w.forgejo.comment(REPO, w.issue, "alice", "/cancel").await;
    eventually("cancelled", || async { w.task().await["state"] == "cancelled" }).await;
    eventually("no status label", || async { !w.labels().await.iter().any(|l| l.starts_with("status:")) }).await;
    // Blocking what is not running is a conflict: the question cannot be asked twice, nor after the end.
    assert_eq!(w.block(1, "another?").await.0, 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_blocked_label_cancels_the_task() {
    let w = World::new().await;
    w.blocked().await;
    w.forgejo.remove_label(REPO, w.issue, "alice", "status:blocked").await;
    eventually("cancelled", || async { w.task().await["state"] == "cancelled" }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_task_survives_store_rebuild_with_every_row_unchanged() {
    let w = World::new().await;
    w.blocked().await;
    let db = w.fleet.db.clone();
    eventually("the outbox is empty", || async {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL", [], |r| r.get::<_, i64>(0)).unwrap()
            == 0
    })
    .await;
    let World { fleet, root: _root, .. } = w;
    drop(fleet);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tasks = |db: &std::path::Path| -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut stmt = conn.prepare("SELECT state, data FROM tasks ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let before = tasks(&db);
    assert_eq!(before[0].0, "blocked");
    assert!(before[0].1.contains("v1 or the v2 API?"), "{before:?}");
    support::rebuild_store(&db);
    assert_eq!(tasks(&db), before);
}
