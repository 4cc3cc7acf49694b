//! Receipts: an agent's word is a claim. forgefleet checks the pull request through the (fake) Forgejo API and
//! the commits with its own gix mirror, fetched over real smart HTTP from `git http-backend`.

mod support;

use std::time::Duration;

use forgefleet::config::Secret;
use reqwest::Method;
use serde_json::{Value, json};
use support::eventually;
use support::fleet::{Fleet, TestAgent};
use support::forgejo::{FakeCommit, FakeForgejo, NewReview};
use support::git::{GitServer, TestRepo};
use support::tls::{TestCa, TlsFront};

const REPO: &str = "acme/app";
const BOT: &str = "forgefleet";
const BOT_TOKEN: &str = "bot-token";

struct World {
    forgejo: FakeForgejo,
    fleet: Fleet,
    repo: TestRepo,
    _git: GitServer,
    _root: tempfile::TempDir,
    issue: u64,
    agent: TestAgent,
    task: u64,
    /// The branch the assignment named.
    branch: String,
    /// With HTTPS: the fronts of Forgejo and git, and the PEM file of the CA their certificates come from.
    tls: Option<(TlsFront, TlsFront, std::path::PathBuf)>,
}

impl World {
    /// A repository with history on `main`, an issue labelled `status:todo`, and an agent working on it.
    async fn new(db: Option<std::path::PathBuf>) -> World {
        Self::build(db, false, None).await
    }

    /// The same, the repository carrying `.forgejo/fleet.yaml` with `text` before forgefleet starts.
    async fn with_fleet_yaml(text: &str) -> World {
        Self::build(None, false, Some(text)).await
    }

    /// The same, with Forgejo and git served over HTTPS by certificates of a private CA that forgefleet is
    /// told to trust (`[forgejo] ca_file`).
    async fn over_https() -> World {
        Self::build(None, true, None).await
    }

    async fn build(db: Option<std::path::PathBuf>, https: bool, fleet_yaml: Option<&str>) -> World {
        let root = tempfile::tempdir().unwrap();
        let git = GitServer::start_with_token(root.path(), BOT_TOKEN);
        let repo = TestRepo::with_main(root.path(), REPO, &[("README.md", "hello\n"), ("src/lib.rs", "fn a() {}\n")]);
        let forgejo = FakeForgejo::start().await;
        forgejo.create_repo(REPO).await;
        forgejo.add_member(REPO, BOT, BOT_TOKEN, "admin").await;
        forgejo.add_member(REPO, "agent", "agent-token", "write").await;
        forgejo.add_member(REPO, "alice", "alice-token", "write").await;
        forgejo.add_member(REPO, "ci", "ci-token", "write").await;
        if let Some(text) = fleet_yaml {
            forgejo.set_file(REPO, ".forgejo/fleet.yaml", text).await;
        }
        let (mut url, mut git_url) = (forgejo.url().to_string(), git.base_url());
        let mut tls = None;
        if https {
            let ca = TestCa::new();
            let addr = |u: &str| u.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
            let api = TlsFront::start(&ca, addr(&url)).await;
            let git = TlsFront::start(&ca, addr(&git_url)).await;
            (url, git_url) = (api.url(), git.url());
            let pem = root.path().join("private-ca.pem");
            std::fs::write(&pem, ca.pem()).unwrap();
            tls = Some((api, git, pem));
        }
        let ca_file = tls.as_ref().map(|(_, _, pem)| pem.clone());
        let fleet = Fleet::start_with_forgejo(|c| {
            c.forgejo.url = Some(url);
            c.forgejo.git_url = Some(git_url);
            c.forgejo.ca_file = ca_file;
            c.forgejo.token = Some(Secret::new(BOT_TOKEN));
            c.forgejo.webhook_secret = Some(Secret::new("s"));
            c.forgejo.bot_user = Some(BOT.into());
            c.forgejo.repos = vec![REPO.into()];
            c.forgejo.agent_users = [("a1".to_string(), "agent".to_string())].into();
            if let Some(db) = db {
                c.store.path = db;
            }
        })
        .await;
        let issue = forgejo.create_issue(REPO, "agent", "Greet properly", "", &["status:todo"]).await;
        let task = fleet.label(&format!("{REPO}#{issue}"), &["status:todo"]).await.unwrap().0 as u64;
        let agent = fleet.register("a1", &[], 1).await;
        let a = agent.pull().await.unwrap();
        agent.start(&a).await;
        let branch = a.branch.clone();
        World { forgejo, fleet, repo, _git: git, _root: root, issue, agent, task, branch, tls }
    }

    /// The agent's work: the assignment's branch with one commit, pushed, and a pull request for it.
    async fn open_pull(&self, files: &[(&str, &str)], title: &str, body: &str) -> (u64, String) {
        self.open_pull_as("agent", &self.branch.clone(), files, title, body).await
    }

    /// `user`'s pull request from `branch` (made from `main`) with one commit.
    async fn open_pull_as(
        &self,
        user: &str,
        branch: &str,
        files: &[(&str, &str)],
        title: &str,
        body: &str,
    ) -> (u64, String) {
        self.repo.checkout("main");
        self.repo.checkout(branch);
        let sha = if files.is_empty() { self.repo.commit_empty("nothing") } else { self.repo.commit(files, "greet") };
        self.repo.push(branch);
        let n = self.forgejo.create_pull(REPO, user, title, body, branch, &sha, "main").await;
        self.repo.push_pull_head(n, &sha);
        (n, sha)
    }

    /// alice closes pull request `pr` without merging it, through the API (`PATCH` with `state: closed`).
    async fn close_pull(&self, pr: u64) {
        let r = reqwest::Client::new()
            .patch(format!("{}/api/v1/repos/{REPO}/pulls/{pr}", self.forgejo.url().trim_end_matches('/')))
            .header("Authorization", "token alice-token")
            .json(&json!({"state": "closed"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }

    async fn submit(&self, pr: u64, head: &str) -> (reqwest::StatusCode, Value) {
        self.submit_for(self.task, pr, head).await
    }

    async fn submit_for(&self, task: u64, pr: u64, head: &str) -> (reqwest::StatusCode, Value) {
        let body = json!({
            "task_id": task, "attempt": 1, "pr_number": pr, "head_sha": head,
            "summary": "Greets properly now.", "usage": {"input_tokens": 1200, "output_tokens": 340},
            "cost_usd": 0.05, "duration_secs": 42
        });
        self.agent.post("/receipts", body).await
    }

    async fn task(&self) -> Value {
        let (_, body) = self.fleet.operator(Method::GET, &format!("/tasks/{}", self.task)).await;
        body["task"].clone()
    }

    /// The round's work: a commit renaming the greeting on top of the branch, pushed and on pull request `pr`.
    async fn rename_on_top(&self, pr: u64) -> String {
        self.repo.checkout(&self.branch);
        let fixed = self.repo.commit(&[("a.txt", "greet_all\n")], "rename");
        self.repo.push(&self.branch);
        self.repo.push_pull_head(pr, &fixed);
        let commit = FakeCommit::new(&fixed, "rename").file("a.txt", "modified", 1, 1);
        self.forgejo.push_to_pull(REPO, pr, "agent", &[commit]).await;
        fixed
    }

    async fn settled(&self) -> Value {
        eventually("the receipt is checked", || async { self.task().await["state"] != "validating" }).await;
        self.task().await
    }
}

fn check(task: &Value, name: &str) -> Value {
    task["validation"]["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone()
}

fn failed_checks(task: &Value) -> Vec<String> {
    task["validation"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_receipt_completes_the_task_with_the_files_git_reports() {
    let w = World::new(None).await;
    let (pr, sha) = w
        .open_pull(
            &[("src/lib.rs", "fn a() {}\nfn greet() {}\n"), ("NOTES.md", "hi\n")],
            "Greet",
            &format!("Closes #{}", w.issue),
        )
        .await;
    let (status, ack) = w.submit(pr, &sha).await;
    assert_eq!(status, 202, "{ack}");
    assert_eq!(ack["state"], "validating");
    let task = w.settled().await;
    assert_eq!(task["state"], "completed", "{task}");
    let files: Vec<&str> =
        task["validation"]["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(files, ["NOTES.md", "src/lib.rs"]);
    eventually("the completion comment lists the checked files", || async {
        w.forgejo
            .comments(REPO, w.issue)
            .await
            .iter()
            .any(|c| c.body.contains("Done") && c.body.contains("`src/lib.rs` (+1 −0)"))
    })
    .await;
    eventually("status:done", || async { w.forgejo.issue(REPO, w.issue).await.labels == ["status:done"] }).await;
    // The pull request's head says so too, linking the issue.
    eventually("the head commit shows success", || async { !w.forgejo.statuses(REPO, &sha).await.is_empty() }).await;
    let statuses = w.forgejo.statuses(REPO, &sha).await;
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    let s = &statuses[0];
    assert_eq!((s.state.as_str(), s.context.as_str(), s.creator.as_str()), ("success", "forgefleet/receipt", BOT));
    assert!(s.target_url.ends_with(&format!("/{REPO}/issues/{}", w.issue)), "{statuses:?}");
    assert_eq!(s.description, "verified by forgefleet: 8 checks passed");
    // The same receipt again is a no-op; a different one for the same attempt is a conflict.
    assert_eq!(w.submit(pr, &sha).await.0, 202);
    assert_eq!(w.submit(pr + 1, &sha).await.0, 409);
    // Merging later does not undo anything.
    w.forgejo.merge_pull(REPO, pr, "agent").await;
    assert_eq!(w.task().await["state"], "completed");

    // An operator sees the receipt and each check.
    let config = w._root.path().join("cli.toml");
    std::fs::write(&config, format!("[store]\npath = {:?}\n", w.fleet.db)).unwrap();
    let task = w.task;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::binary())
            .args(["tasks", "show", &task.to_string(), "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = support::stdout(&out);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(text.contains(&format!("receipt:  pull request #{pr} at {sha}")), "{text}");
    assert!(text.contains("[ok] head_matches") && text.contains("[ok] commits_change_something"), "{text}");
    assert!(text.contains("added NOTES.md (+1 -0)"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_pull_request_fails_verification_and_is_retried() {
    let w = World::new(None).await;
    let (status, _) = w.submit(99, &"a".repeat(40)).await;
    assert_eq!(status, 202);
    let task = w.settled().await;
    assert_eq!((task["state"].as_str(), task["attempt"].as_u64()), (Some("queued"), Some(2)), "{task}");
    assert_eq!(task["last_failure"]["class"], "verification_failed");
    assert!(task["last_failure"]["message"].as_str().unwrap().contains("no pull request #99"), "{task}");
    eventually("the comment names the failed check and the claim", || async {
        w.forgejo
            .comments(REPO, w.issue)
            .await
            .iter()
            .any(|c| c.body.contains("verification_failed") && c.body.contains("#99"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_of_another_repository_does_not_count() {
    let w = World::new(None).await;
    w.forgejo.create_repo("acme/other").await;
    w.forgejo.set_permission("acme/other", "agent", "write").await;
    let other = w
        .forgejo
        .create_pull("acme/other", "agent", "Greet", &format!("Closes #{}", w.issue), "f", &"b".repeat(40), "main")
        .await;
    // In the task's repository that number is the issue itself, not a pull request.
    assert_eq!(other, 1);
    w.submit(other, &"b".repeat(40)).await;
    let task = w.settled().await;
    assert_eq!(failed_checks(&task), ["pull_request_exists"], "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_that_does_not_refer_to_the_issue_fails_that_check() {
    let w = World::new(None).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], "Some change", "No reference here").await;
    w.submit(pr, &sha).await;
    let task = w.settled().await;
    assert_eq!(failed_checks(&task), ["refers_to_issue"], "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receipt_naming_another_head_fails_head_matches() {
    let w = World::new(None).await;
    let (pr, _sha) = w.open_pull(&[("a.txt", "x\n")], &format!("Fix #{}", w.issue), "").await;
    w.submit(pr, &"c".repeat(40)).await;
    let task = w.settled().await;
    let failed = failed_checks(&task);
    assert!(failed.contains(&"head_matches".to_string()), "{task}");
    let detail = check(&task, "head_matches")["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("a commit that does not exist in the repository"), "{detail}");
    // A commit that is not the pull request's head gets no status (it may not even exist).
    eventually("the failure comment is posted", || async {
        w.forgejo.comments(REPO, w.issue).await.iter().any(|c| c.body.contains("head_matches"))
    })
    .await;
    assert!(w.forgejo.statuses(REPO, &"c".repeat(40)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn commits_that_change_nothing_fail_verification() {
    let w = World::new(None).await;
    let (pr, sha) = w.open_pull(&[], &format!("Fix #{}", w.issue), "").await;
    w.submit(pr, &sha).await;
    let task = w.settled().await;
    assert_eq!(failed_checks(&task), ["commits_change_something"], "{task}");
    let detail = &check(&task, "commits_change_something")["detail"];
    assert!(detail.as_str().unwrap().contains("empty diff"), "{detail}");
    eventually("the head commit shows the failed check", || async {
        w.forgejo.statuses(REPO, &sha).await.last().is_some_and(|s| {
            s.state == "failure" && s.description.contains("did not check out (commits_change_something)")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_branch_pushed_after_the_receipt_fails_head_matches_with_a_message_saying_so() {
    let w = World::new(None).await;
    // Forgejo is unreachable while the receipt comes in: validation waits.
    w.forgejo.fail_requests_until_healed(503).await;
    let (pr, sha) = {
        w.forgejo.heal().await;
        let r = w.open_pull(&[("a.txt", "x\n")], &format!("Fix #{}", w.issue), "").await;
        w.forgejo.fail_requests_until_healed(503).await;
        r
    };
    assert_eq!(w.submit(pr, &sha).await.0, 202);
    let newer = w.repo.commit(&[("a.txt", "y\n")], "more");
    w.repo.push(&w.branch);
    w.repo.push_pull_head(pr, &newer);
    w.forgejo.heal().await;
    w.forgejo.push_to_pull(REPO, pr, "agent", &[FakeCommit::new(&newer, "more").file("a.txt", "modified", 1, 1)]).await;
    let task = w.settled().await;
    let head = check(&task, "head_matches");
    assert_eq!(head["passed"], false, "{task}");
    assert!(
        head["detail"].as_str().unwrap().contains("an earlier commit of the branch: the branch was pushed to"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_leaseholder_may_submit() {
    let w = World::new(None).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], &format!("Fix #{}", w.issue), "").await;
    let stranger = w.fleet.register("a2", &[], 1).await;
    let body = json!({"task_id": w.task, "attempt": 1, "pr_number": pr, "head_sha": sha});
    let (status, err) = stranger.post("/receipts", body.clone()).await;
    assert_eq!(status, 403, "{err}");
    let (status, _) =
        w.agent.post("/receipts", json!({"task_id": w.task, "attempt": 2, "pr_number": pr, "head_sha": sha})).await;
    assert_eq!(status, 403, "an attempt it never held");
    let (status, err) =
        w.agent.post("/receipts", json!({"task_id": w.task, "attempt": 1, "pr_number": pr, "head_sha": "xyz"})).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(w.task().await["state"], "running", "refusals change nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_interrupted_by_a_restart_finishes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let w = World::new(Some(db.clone())).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], &format!("Fix #{}", w.issue), "").await;
    w.forgejo.fail_requests_until_healed(503).await;
    assert_eq!(w.submit(pr, &sha).await.0, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.task().await["state"], "validating", "Forgejo is down: nothing can be checked");
    // forgefleet dies here and comes back on the same database.
    let World { forgejo, fleet, repo: _repo, _git, _root, task, .. } = w;
    drop(fleet);
    forgejo.heal().await;
    let url = forgejo.url().to_string();
    let git_url = _git.base_url();
    let again = Fleet::start_with_forgejo(|c| {
        c.forgejo.url = Some(url);
        c.forgejo.git_url = Some(git_url);
        c.forgejo.token = Some(Secret::new(BOT_TOKEN));
        c.forgejo.repos = vec![REPO.into()];
        c.store.path = db;
    })
    .await;
    eventually("the restarted server completes the task", || async {
        let (_, body) = again.operator(Method::GET, &format!("/tasks/{task}")).await;
        body["task"]["state"] == "completed"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_a_private_ca_in_ca_file_is_trusted_by_the_api_client_and_the_mirror() {
    let w = World::over_https().await;
    let (pr, sha) =
        w.open_pull(&[("src/lib.rs", "fn a() {}\nfn greet() {}\n")], "Greet", &format!("Fixes #{}", w.issue)).await;
    assert_eq!(w.submit(pr, &sha).await.0, 202);
    // The pull request was read over the API and the commits fetched into the mirror, both over HTTPS.
    let task = w.settled().await;
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(task["validation"]["files"][0]["path"], "src/lib.rs", "{task}");
    eventually("the completion comment is posted over HTTPS", || async {
        w.forgejo.comments(REPO, w.issue).await.iter().any(|c| c.body.contains("`src/lib.rs` (+1 −0)"))
    })
    .await;

    // Without the CA, neither client gets past the handshake.
    let (api, git, pem) = w.tls.as_ref().unwrap();
    let repo: forgefleet::core::RepoName = REPO.parse().unwrap();
    let untrusting = forgefleet::integrations::forgejo::ForgejoClient::new(&api.url(), Secret::new(BOT_TOKEN), None);
    let err = untrusting.unwrap().repo_labels(&repo).await.unwrap_err().to_string();
    assert!(err.contains("invalid peer certificate"), "{err}");
    let ca = forgefleet::config::CaBundle::load(pem).unwrap();
    let trusting = forgefleet::integrations::forgejo::ForgejoClient::new(&api.url(), Secret::new(BOT_TOKEN), Some(&ca));
    assert!(trusting.unwrap().repo_labels(&repo).await.is_ok());
    let dir = w._root.path().join("untrusting-mirror.git");
    let url = format!("{}/{REPO}.git", git.url());
    let fetched = tokio::task::spawn_blocking(move || {
        let mirror = forgefleet::integrations::git::Mirror::open_or_init(&dir).unwrap();
        mirror.fetch(&url, Some(BOT_TOKEN), &["main"]).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    let err = fetched.unwrap_err();
    assert!(err.contains("invalid peer certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receipt_naming_the_base_commit_says_so() {
    let w = World::new(None).await;
    let (pr, _sha) = w.open_pull(&[("a.txt", "x\n")], &format!("Fix #{}", w.issue), "").await;
    let base = w.repo.remote_ref("refs/heads/main").unwrap();
    w.submit(pr, &base).await;
    let task = w.settled().await;
    let head = check(&task, "head_matches");
    assert_eq!(head["passed"], false, "{task}");
    assert!(head["detail"].as_str().unwrap().contains("a commit of the base branch `main`"), "{head}");
}

/// A lie that completed before: the agent edits another task's pull request (made by the same Forgejo user) to
/// mention its own issue, and hands it in.
#[tokio::test(flavor = "multi_thread")]
async fn a_receipt_for_another_tasks_pull_request_is_refused() {
    let w = World::new(None).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], "Greet", &format!("Closes #{}", w.issue)).await;
    w.submit(pr, &sha).await;
    assert_eq!(w.settled().await["state"], "completed");
    let second = w.forgejo.create_issue(REPO, "alice", "Say goodbye", "", &["status:todo"]).await;
    let task = w.fleet.label(&format!("{REPO}#{second}"), &["status:todo"]).await.unwrap().0 as u64;
    let a = w.agent.pull().await.unwrap();
    assert_eq!(a.task_id.0 as u64, task);
    w.agent.start(&a).await;
    w.forgejo.set_body(REPO, pr, "agent", &format!("Closes #{}, closes #{second}", w.issue)).await;
    assert_eq!(w.submit_for(task, pr, &sha).await.0, 202);
    let id = forgefleet::core::TaskId(task as i64);
    eventually("the receipt is checked", || async { w.fleet.task(id).await["state"] != "validating" }).await;
    let t = w.fleet.task(id).await;
    assert_ne!(t["state"], "completed", "{t}");
    assert_eq!(failed_checks(&t), ["head_branch", "not_claimed_before"], "{t}");
    let claimed = check(&t, "not_claimed_before")["detail"].as_str().unwrap().to_string();
    assert!(claimed.contains(&format!("task {} was already completed with pull request #{pr}", w.task)), "{claimed}");
    let branch = check(&t, "head_branch")["detail"].as_str().unwrap().to_string();
    assert!(branch.contains(&w.branch) && branch.contains(&a.branch), "{branch}");
    eventually("the comment names the failed checks", || async {
        w.forgejo.comments(REPO, second).await.iter().any(|c| c.body.contains("not_claimed_before"))
    })
    .await;
}

/// The other lie: a person's own pull request that mentions the issue.
#[tokio::test(flavor = "multi_thread")]
async fn a_receipt_for_a_persons_own_pull_request_is_refused() {
    let w = World::new(None).await;
    let body = format!("Fixes #{}", w.issue);
    let (pr, sha) = w.open_pull_as("alice", "alice/greeting", &[("greet.txt", "hello\n")], "Greet", &body).await;
    assert_eq!(w.submit(pr, &sha).await.0, 202);
    let task = w.settled().await;
    assert_ne!(task["state"], "completed", "{task}");
    assert_eq!(failed_checks(&task), ["head_branch", "opened_by_agent"], "{task}");
    let opened = check(&task, "opened_by_agent")["detail"].as_str().unwrap().to_string();
    assert!(opened.contains("opened by alice, not by agent"), "{opened}");
    eventually("the comment names the failed checks", || async {
        w.forgejo
            .comments(REPO, w.issue)
            .await
            .iter()
            .any(|c| c.body.contains("head_branch") && c.body.contains("opened_by_agent"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_against_another_base_branch_fails_that_check() {
    let w = World::new(None).await;
    w.repo.checkout("main");
    w.repo.checkout("release");
    w.repo.push("release");
    w.repo.checkout(&w.branch.clone());
    let sha = w.repo.commit(&[("a.txt", "x\n")], "greet");
    w.repo.push(&w.branch);
    let pr = w
        .forgejo
        .create_pull(REPO, "agent", "Greet", &format!("Closes #{}", w.issue), &w.branch, &sha, "release")
        .await;
    w.repo.push_pull_head(pr, &sha);
    w.submit(pr, &sha).await;
    let task = w.settled().await;
    assert_eq!(failed_checks(&task), ["base_branch"], "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_number_below_one_is_refused() {
    let w = World::new(None).await;
    for pr in [json!(0), json!(-3)] {
        let body = json!({"task_id": w.task, "attempt": 1, "pr_number": pr, "head_sha": "a".repeat(40)});
        let (status, err) = w.agent.post("/receipts", body).await;
        assert_eq!(status, 400, "{pr}: {err}");
    }
    let (_, err) = w
        .agent
        .post("/receipts", json!({"task_id": w.task, "attempt": 1, "pr_number": 0, "head_sha": "a".repeat(40)}))
        .await;
    assert!(err.to_string().contains("pr_number"), "{err}");
    assert_eq!(w.task().await["state"], "running", "refusals change nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receipt_for_an_attempt_that_was_never_started_is_refused() {
    let fleet = Fleet::start().await;
    let task = fleet.label("acme/app#7", &["status:todo"]).await.unwrap();
    let agent = fleet.register("a1", &[], 1).await;
    let a = agent.pull().await.unwrap();
    let receipt = json!({"task_id": a.task_id, "attempt": a.attempt, "pr_number": 3, "head_sha": "a".repeat(40)});
    let (status, err) = agent.post("/receipts", receipt.clone()).await;
    assert_eq!(status, 409, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("task {task} attempt 1 was never started")) && message.contains("/start"),
        "{err}"
    );
    assert_eq!(fleet.task(task).await["state"], "assigned", "the refusal changed nothing");
    assert_eq!(agent.start(&a).await, 200);
    assert_eq!(agent.post("/receipts", receipt).await.0, 202);
    assert_eq!(fleet.task(task).await["state"], "validating");
}

/// After a cancel, each report of the agent about that attempt says the task was cancelled and why (not a
/// stale attempt or a missing lease).
#[tokio::test(flavor = "multi_thread")]
async fn after_a_cancel_the_agents_reports_say_the_task_was_cancelled() {
    let fleet = Fleet::start().await;
    let task = fleet.label("acme/app#8", &["status:todo"]).await.unwrap();
    let agent = fleet.register("a1", &[], 1).await;
    let a = agent.pull().await.unwrap();
    assert_eq!(agent.start(&a).await, 200);
    let (status, body) = fleet.operator(Method::POST, &format!("/tasks/{task}/cancel")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(agent.heartbeat(&[a.task_id]).await, [a.task_id], "the heartbeat tells it to stop");
    let receipt = json!({"task_id": task, "attempt": 1, "pr_number": 3, "head_sha": "a".repeat(40)});
    let reports = [
        (format!("/tasks/{task}/progress"), json!({"attempt": 1, "lines": ["still going"]})),
        (format!("/tasks/{task}/fail"), json!({"attempt": 1, "class": "agent_error", "message": "stopped"})),
        ("/receipts".to_string(), receipt),
    ];
    for (path, body) in reports {
        let (status, err) = agent.post(&path, body).await;
        assert_eq!(status, 409, "{path}: {err}");
        let message = err.to_string();
        assert!(message.contains(&format!("task {task} was cancelled (cancelled by an operator)")), "{path}: {err}");
    }
    assert_eq!(fleet.task(task).await["state"], "cancelled");
}

/// "Done in ..." is the agent's time, from its start to its receipt: not the time forgefleet then waited for
/// Forgejo to check the receipt.
#[tokio::test(flavor = "multi_thread")]
async fn the_completion_comment_counts_the_agents_time_not_the_wait_for_forgejo() {
    let w = World::new(None).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], &format!("Fix #{}", w.issue), "").await;
    w.fleet.later(Duration::from_secs(35));
    w.forgejo.fail_requests_until_healed(503).await;
    assert_eq!(w.submit(pr, &sha).await.0, 202);
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.fleet.later(Duration::from_secs(600));
    w.forgejo.heal().await;
    assert_eq!(w.settled().await["state"], "completed");
    eventually("the completion comment is posted", || async {
        w.forgejo.comments(REPO, w.issue).await.iter().any(|c| c.body.contains("**Done**"))
    })
    .await;
    let comments = w.forgejo.comments(REPO, w.issue).await;
    let done = comments.iter().find(|c| c.body.contains("**Done**")).unwrap();
    assert!(done.body.contains("**Done** by **a1** in 35 s"), "{}", done.body);
    // The template always asked for the pull request's address; its context did not have it, and a lenient
    // template engine rendered the hole as nothing.
    let link = format!("{}/{REPO}/pulls/{pr}", w.forgejo.url().trim_end_matches('/'));
    assert!(done.body.contains(&link), "{link} missing from: {}", done.body);
}

/// Waits until forgefleet has read the repository's `fleet.yaml`.
async fn settings_read(w: &World) {
    eventually("the repository settings are read", || async {
        let store = forgefleet::store::Store::open_read_only(&w.fleet.db).unwrap();
        let repo = forgefleet::core::RepoName::parse(REPO).unwrap();
        forgefleet::engine::repo::RepoSettings::read(store.read(), &repo).unwrap().is_some()
    })
    .await;
}

/// CI reports on a commit as Forgejo Actions or any CI does: a commit status through the API.
async fn ci_reports(w: &World, sha: &str, state: &str, description: &str) {
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/api/v1/repos/{REPO}/statuses/{sha}", w.forgejo.url().trim_end_matches('/')))
        .header("Authorization", "token ci-token")
        .json(&json!({"state": state, "context": "ci/test", "description": description,
                      "target_url": format!("https://ci.example/{REPO}/runs/{sha}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// A repository that requires CI: the receipt checks out, the task waits for the head's statuses without
/// holding its agent, a red CI fails the attempt with `checks_failed` (what failed on the issue and in the
/// next prompt), the retry continues the same branch and pull request, and a green CI completes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_red_ci_round_is_retried_on_the_same_pull_request_and_a_green_one_completes_the_task() {
    let w = World::with_fleet_yaml("require_checks: [ci/test]\ntimeouts:\n  checks_mins: 30\n").await;
    settings_read(&w).await;
    let (pr, sha) =
        w.open_pull(&[("src/lib.rs", "fn a() {}\nfn greet() {}\n")], "Greet", &format!("Closes #{}", w.issue)).await;
    assert_eq!(w.submit(pr, &sha).await.0, 202);
    eventually("the receipt checks out and the task waits for CI", || async { !w.task().await["checks"].is_null() })
        .await;
    let task = w.task().await;
    assert_eq!(task["state"], "validating", "{task}");
    assert_eq!(task["checks"]["head_sha"], sha.as_str());
    assert_eq!(task["checks"]["required"], json!({"named": ["ci/test"]}));
    assert!(task["lease"]["released_at"].is_string(), "the agent's part is over: {task}");
    // Its slot is free: the one-slot agent gets the next task while CI runs.
    let second = w.forgejo.create_issue(REPO, "alice", "Another", "", &["status:todo"]).await;
    w.fleet.label(&format!("{REPO}#{second}"), &["status:todo"]).await.unwrap();
    let next = w.agent.pull().await.expect("waiting for CI holds no agent slot");
    assert_eq!(next.issue, second);

    // CI is running, then fails: forgefleet sees it (no webhook for statuses: it polls).
    ci_reports(&w, &sha, "pending", "running").await;
    eventually("forgefleet looked at the statuses", || async {
        w.forgejo.requests().await.iter().any(|r| r.path.ends_with(&format!("/commits/{sha}/status")))
    })
    .await;
    assert_eq!(w.task().await["state"], "validating", "pending keeps it validating");
    ci_reports(&w, &sha, "failure", "2 tests failed").await;
    eventually("the attempt fails with checks_failed", || async { w.task().await["attempt"] == 2 }).await;
    let task = w.task().await;
    assert_eq!(
        (task["state"].as_str(), task["last_failure"]["class"].as_str()),
        (Some("queued"), Some("checks_failed"))
    );
    let message = task["last_failure"]["message"].as_str().unwrap();
    assert!(
        message.contains("`ci/test` (failure): `2 tests failed`")
            && message.contains(&format!("https://ci.example/{REPO}/runs/{sha}")),
        "{message}"
    );
    assert_eq!(task["pushed_branch"], w.branch.as_str(), "the retry continues the same branch: {task}");
    eventually("the issue says which check failed, and why", || async {
        w.forgejo
            .comments(REPO, w.issue)
            .await
            .iter()
            .any(|c| c.body.contains("checks_failed") && c.body.contains("2 tests failed"))
    })
    .await;

    // The retry: the same branch, the failure in its prompt; the agent pushes on top, the same pull request.
    w.fleet.later(Duration::from_secs(120));
    w.fleet.tick().await;
    let agent2 = w.fleet.register("a2", &[], 1).await;
    let retry = agent2.pull().await.expect("the retry is queued");
    assert_eq!((retry.task_id.0 as u64, retry.attempt, retry.branch.as_str()), (w.task, 2, w.branch.as_str()));
    assert!(retry.prompt.contains("2 tests failed") && retry.prompt.contains("Fix that on top"), "{}", retry.prompt);
    agent2.start(&retry).await;
    let fixed = w.repo.commit(&[("src/lib.rs", "fn a() {}\nfn greet() { }\n")], "fix the tests");
    w.repo.push(&w.branch);
    w.repo.push_pull_head(pr, &fixed);
    w.forgejo
        .push_to_pull(
            REPO,
            pr,
            "agent",
            &[FakeCommit::new(&fixed, "fix the tests").file("src/lib.rs", "modified", 1, 1)],
        )
        .await;
    let body =
        json!({"task_id": w.task, "attempt": 2, "pr_number": pr, "head_sha": fixed, "summary": "Fixed the tests."});
    assert_eq!(agent2.post("/receipts", body).await.0, 202);
    eventually("the second round waits for CI on the new head", || async {
        w.task().await["checks"]["head_sha"] == fixed.as_str()
    })
    .await;
    ci_reports(&w, &fixed, "success", "all green").await;
    let task = w.settled().await;
    assert_eq!(task["state"], "completed", "{task}");
    let ci = check(&task, "ci_checks");
    assert_eq!(ci["passed"], true, "{task}");
    assert!(ci["detail"].as_str().unwrap().contains("`ci/test`"), "{ci}");
    eventually("the completion comment shows the CI check", || async {
        w.forgejo.comments(REPO, w.issue).await.iter().any(|c| c.body.contains("Done") && c.body.contains("CI passed"))
    })
    .await;
}

/// A completed task whose pull request a person merges records it (from the `pull_request` webhook, confirmed
/// against Forgejo), and the issue says so once, however often the delivery comes.
#[tokio::test(flavor = "multi_thread")]
async fn a_merged_pull_request_is_recorded_on_its_completed_task_once() {
    let w = World::new(None).await;
    w.forgejo.add_hook(REPO, &format!("{}/api/v1/webhooks/forgejo", w.fleet.base), "s", &["pull_request"]).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], "Greet", &format!("Closes #{}", w.issue)).await;
    w.submit(pr, &sha).await;
    assert_eq!(w.settled().await["state"], "completed");
    w.forgejo.merge_pull(REPO, pr, "alice").await;
    eventually("the merge is recorded", || async { !w.task().await["pull_end"].is_null() }).await;
    let task = w.task().await;
    assert_eq!(task["state"], "completed");
    assert_eq!((task["pull_end"]["merged"].as_bool(), task["pull_end"]["by"].as_str()), (Some(true), Some("alice")));
    eventually("the issue says who merged it", || async {
        w.forgejo
            .comments(REPO, w.issue)
            .await
            .iter()
            .any(|c| c.body.contains("Merged") && c.body.contains("merged by alice"))
    })
    .await;
    // The delivery replayed (a new delivery id), and once more with its action edited to `reopened`... only a
    // view read back from Forgejo counts: nothing new is recorded.
    let delivery =
        w.forgejo.deliveries().await.into_iter().find(|d| d.event == "pull_request" && d.action == "closed").unwrap();
    for body in [delivery.body.clone(), delivery.body.replace("\"action\":\"closed\"", "\"action\":\"reopened\"")] {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/webhooks/forgejo", w.fleet.base))
            .header("content-type", "application/json")
            .header("x-forgejo-event", "pull_request")
            .header("x-forgejo-delivery", support::forgejo::uuid_v4())
            .header("x-forgejo-signature", forgefleet::integrations::forgejo::webhook::sign("s", body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.task().await["pull_end"]["merged"], true);
    let merged: Vec<_> =
        w.forgejo.comments(REPO, w.issue).await.into_iter().filter(|c| c.body.contains("Merged")).collect();
    assert_eq!(merged.len(), 1, "{merged:?}");
}

/// A repository that wants a pull request closed without merging to be tried again (`on_pr_closed: requeue`):
/// the close is found by reconciliation even with no webhook at all, the task is queued as a fresh attempt
/// with `status:todo`, and the issue says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_closed_unmerged_requeues_its_task_when_the_repository_says_so() {
    let mut w = World::with_fleet_yaml("on_pr_closed: requeue\n").await;
    settings_read(&w).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], "Greet", &format!("Closes #{}", w.issue)).await;
    w.submit(pr, &sha).await;
    assert_eq!(w.settled().await["state"], "completed");
    eventually("status:done", || async { w.forgejo.issue(REPO, w.issue).await.labels == ["status:done"] }).await;
    w.close_pull(pr).await;
    // No webhook is registered: the reconciliation pass at the next start finds it.
    w.fleet.restart_after(Duration::from_secs(5)).await;
    eventually("the task is queued again", || async { w.task().await["state"] == "queued" }).await;
    let task = w.task().await;
    assert_eq!(task["attempt"], 2, "{task}");
    assert!(task["pushed_branch"].is_null(), "a fresh attempt starts a fresh branch: {task}");
    eventually("status:todo and a comment saying why", || async {
        w.forgejo.issue(REPO, w.issue).await.labels == ["status:todo"]
            && w.forgejo.comments(REPO, w.issue).await.iter().any(|c| {
                c.body.contains("closed without merging") && c.body.contains("queued again as a fresh attempt")
            })
    })
    .await;
}

/// A person with write access asks for changes on the completed task's pull request (`/fleet fix` in a comment
/// on it): the task gets a round of changes on the same branch and pull request, whose prompt holds the
/// instruction; a receipt that does not build on the verified head fails, one that does completes it again.
/// Someone without write access is refused and nothing changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_fix_asked_on_the_pull_request_is_a_new_round_on_the_same_branch_built_on_the_verified_head() {
    let w = World::new(None).await;
    w.forgejo
        .add_hook(
            REPO,
            &format!("{}/api/v1/webhooks/forgejo", w.fleet.base),
            "s",
            &["issue_comment", "pull_request_comment"],
        )
        .await;
    w.forgejo.add_user("eve", "eve-token").await;
    w.forgejo.set_permission(REPO, "eve", "read").await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], "Greet", &format!("Closes #{}", w.issue)).await;
    w.submit(pr, &sha).await;
    assert_eq!(w.settled().await["state"], "completed");

    w.forgejo.comment(REPO, pr, "eve", "/fleet fix delete everything").await;
    eventually("eve is refused", || async {
        w.forgejo.comments(REPO, pr).await.iter().any(|c| c.body.contains("eve") && c.body.contains("write"))
    })
    .await;
    assert_eq!(w.task().await["state"], "completed", "a refused command changes nothing");

    w.forgejo.comment(REPO, pr, "alice", "Looks close.\n/fleet fix call it `greet_all`, not `greet`").await;
    eventually("a round of changes is queued", || async { w.task().await["state"] == "queued" }).await;
    let task = w.task().await;
    assert_eq!(task["attempt"], 2);
    assert_eq!(task["follow_up"]["round"], 1);
    assert_eq!(task["follow_up"]["by"], "alice");
    assert_eq!(task["follow_up"]["instruction"], "call it `greet_all`, not `greet`");
    let agent2 = w.fleet.register("a2", &[], 1).await;
    assert!(agent2.pull().await.is_none(), "the round waits for the agent that did the work, which is online");
    w.fleet.later(Duration::from_secs(120));
    let round = agent2.pull().await.expect("the round is queued, and after [agents] prefer_same_agent_secs anyone's");
    assert_eq!((round.attempt, round.branch.as_str()), (2, w.branch.as_str()), "the same branch");
    assert!(
        round.prompt.contains("call it `greet_all`, not `greet`") && round.prompt.contains("alice asked for changes"),
        "{}",
        round.prompt
    );
    agent2.start(&round).await;
    // A receipt naming the verified head again adds nothing: it fails.
    let body = json!({"task_id": w.task, "attempt": 2, "pr_number": pr, "head_sha": sha});
    assert_eq!(agent2.post("/receipts", body).await.0, 202);
    let task = w.settled().await;
    assert_eq!(task["last_failure"]["class"], "verification_failed", "{task}");
    assert!(failed_checks(&task).contains(&"builds_on_verified_head".to_string()), "{task}");

    // The retry of the round pushes on top: it checks out.
    w.fleet.later(Duration::from_secs(120));
    w.fleet.tick().await;
    agent2.heartbeat(&[]).await;
    let retry = agent2.pull().await.expect("the round is retried");
    assert!(retry.prompt.contains("greet_all"), "every attempt of the round carries the request");
    agent2.start(&retry).await;
    let fixed = w.rename_on_top(pr).await;
    let body = json!({"task_id": w.task, "attempt": 3, "pr_number": pr, "head_sha": fixed});
    assert_eq!(agent2.post("/receipts", body).await.0, 202);
    let task = w.settled().await;
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(check(&task, "builds_on_verified_head")["passed"], true, "{task}");
    assert_eq!(check(&task, "same_pull_request")["passed"], true, "{task}");
}

/// A pull request closed without merging while its task waits for CI: CI no longer decides anything. The attempt
/// ends as if completed and its end is recorded, so the repository's `on_pr_closed` applies (here: a fresh
/// attempt); the statuses are no longer polled for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_closed_while_its_ci_runs_ends_the_wait_and_on_pr_closed_applies() {
    let w = World::with_fleet_yaml("require_checks: [ci/test]\non_pr_closed: requeue\n").await;
    w.forgejo.add_hook(REPO, &format!("{}/api/v1/webhooks/forgejo", w.fleet.base), "s", &["pull_request"]).await;
    settings_read(&w).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], "Greet", &format!("Closes #{}", w.issue)).await;
    assert_eq!(w.submit(pr, &sha).await.0, 202);
    eventually("the task waits for CI", || async { !w.task().await["checks"].is_null() }).await;
    w.close_pull(pr).await;
    eventually("the task is queued again", || async { w.task().await["state"] == "queued" }).await;
    let (_, detail) = w.fleet.operator(Method::GET, &format!("/tasks/{}", w.task)).await;
    let kinds: Vec<&str> = detail["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(kinds.ends_with(&["task_completed", "pull_ended"]), "{kinds:?}");
    let task = w.task().await;
    assert_eq!((task["attempt"].as_u64(), task["checks"].is_null()), (Some(2), true), "{task}");
    eventually("the issue says why", || async {
        w.forgejo.comments(REPO, w.issue).await.iter().any(|c| c.body.contains("closed without merging"))
    })
    .await;
}

/// Forgefleet's webhook on the fake Forgejo, delivering `events`.
async fn hook(w: &World, events: &[&str]) {
    w.forgejo.add_hook(REPO, &format!("{}/api/v1/webhooks/forgejo", w.fleet.base), "s", events).await;
}

/// Sends a recorded delivery again, as Forgejo's "replay" does (a new delivery id); forgefleet's answer.
async fn replay(w: &World, delivery: &support::forgejo::Delivery) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/webhooks/forgejo", w.fleet.base))
        .header("content-type", "application/json")
        .header("x-forgejo-event", &delivery.event)
        .header("x-forgejo-event-type", &delivery.event_type)
        .header("x-forgejo-delivery", support::forgejo::uuid_v4())
        .header("x-forgejo-signature", forgefleet::integrations::forgejo::webhook::sign("s", delivery.body.as_bytes()))
        .body(delivery.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// How often forgefleet listed pull request `pr`'s reviews.
async fn review_reads(w: &World, pr: u64) -> usize {
    let path = format!("/api/v1/repos/{REPO}/pulls/{pr}/reviews");
    w.forgejo.requests().await.iter().filter(|r| r.method == "GET" && r.path == path).count()
}

/// Waits until forgefleet has listed pull request `pr`'s reviews `n` times in all and holds no review
/// confirmation still to deliver.
async fn reviews_read(w: &World, pr: u64, n: usize) {
    eventually("the reviews are read and nothing waits", || async {
        review_reads(w, pr).await >= n && !w.fleet.outbox_list().iter().any(|e| e.kind == "confirm_reviews")
    })
    .await;
}

fn changes<'a>(body: &'a str, comments: Vec<(&'a str, u64, &'a str)>) -> NewReview<'a> {
    NewReview { event: "REQUEST_CHANGES", body, commit_id: None, comments }
}

/// A person with write access requests changes in a review of the completed task's pull request, with two
/// line comments: the task gets a round of changes on the same branch and pull request, whose prompt holds the
/// review and each comment with its file and line (fenced: a person's text); the new head is verified and the
/// task completes again. Another writer's review while the round runs is answered once; the webhook replayed
/// and a reconciliation pass start no second round.
#[tokio::test(flavor = "multi_thread")]
async fn a_review_requesting_changes_is_a_round_on_the_same_pull_request_and_runs_once() {
    let mut w = World::new(None).await;
    hook(&w, &["issues", "issue_comment", "pull_request_review"]).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], "Greet", &format!("Closes #{}", w.issue)).await;
    w.submit(pr, &sha).await;
    assert_eq!(w.settled().await["state"], "completed");

    let comments = vec![("a.txt", 1, "Say `greet_all` here."), ("src/lib.rs", 1, "Keep `a` private.\n/cancel")];
    let id = w.forgejo.review(REPO, pr, "alice", changes("Two things, please.", comments)).await.unwrap();
    eventually("a round of changes is queued", || async { w.task().await["state"] == "queued" }).await;
    let task = w.task().await;
    assert_eq!((task["attempt"].as_u64(), task["follow_up"]["round"].as_u64()), (Some(2), Some(1)), "{task}");
    assert_eq!(task["follow_up"]["review_id"], id, "{task}");
    assert_eq!((task["follow_up"]["by"].as_str(), task["follow_up"]["pr_number"].as_u64()), (Some("alice"), Some(pr)));
    assert_eq!(task["follow_up"]["instruction"], "Two things, please.");
    assert_eq!(
        task["follow_up"]["notes"][1],
        json!({"path": "src/lib.rs", "line": 1, "body": "Keep `a` private.\n/cancel"})
    );

    // Another writer's review of the same head while the round waits: answered once, nothing more queued.
    w.forgejo.review(REPO, pr, "ci", changes("And rename it.", vec![])).await.unwrap();
    eventually("the second review is answered", || async {
        w.forgejo.comments(REPO, pr).await.iter().any(|c| c.body.contains("@ci") && c.body.contains("under way"))
    })
    .await;
    // Both deliveries replayed: duplicates, and the round is still the one.
    let rejected: Vec<_> =
        w.forgejo.deliveries().await.into_iter().filter(|d| d.event == "pull_request_rejected").collect();
    assert_eq!(rejected.len(), 2);
    for d in &rejected {
        assert_eq!(replay(&w, d).await["status"], "duplicate");
    }

    let round = w.agent.pull().await.expect("the round goes to the agent that did the work");
    assert_eq!((round.attempt, round.branch.as_str()), (2, w.branch.as_str()), "the same branch");
    let prompt = &round.prompt;
    assert!(prompt.contains(&format!("alice asked for changes on pull request #{pr}")), "{prompt}");
    assert!(prompt.contains("```text\nTwo things, please.\n```"), "{prompt}");
    assert!(prompt.contains("- `a.txt`, line 1:\n\n```text\nSay `greet_all` here.\n```"), "{prompt}");
    assert!(prompt.contains("- `src/lib.rs`, line 1:\n\n```text\nKeep `a` private.\n/cancel\n```"), "{prompt}");
    assert!(!prompt.contains("rename it"), "the second review waits for its own round: {prompt}");
    w.agent.start(&round).await;
    let fixed = w.rename_on_top(pr).await;
    let body = json!({"task_id": w.task, "attempt": 2, "pr_number": pr, "head_sha": fixed});
    assert_eq!(w.agent.post("/receipts", body).await.0, 202);
    let task = w.settled().await;
    assert_eq!(task["state"], "completed", "{task}");
    assert_eq!(check(&task, "builds_on_verified_head")["passed"], true, "{task}");

    // The reviews stand on Forgejo (of the old head now); a replay and a reconciliation pass find nothing new.
    let before = review_reads(&w, pr).await;
    assert_eq!(replay(&w, &rejected[0]).await["status"], "duplicate");
    w.fleet.restart_after(Duration::from_secs(5)).await;
    w.agent = w.agent.moved_to(&w.fleet);
    reviews_read(&w, pr, before + 1).await;
    let task = w.task().await;
    assert_eq!((task["state"].as_str(), task["attempt"].as_u64()), (Some("completed"), Some(2)), "{task}");
    let answers = w.forgejo.comments(REPO, pr).await.into_iter().filter(|c| c.body.contains("under way")).count();
    assert_eq!(answers, 1, "answered once");
}

/// Reviews that ask for nothing forgefleet acts on start nothing, and nobody is told: one by a person
/// without write access, an approval, and one of an older commit than the verified head.
#[tokio::test(flavor = "multi_thread")]
async fn a_readers_review_an_approval_and_a_review_of_an_older_commit_start_nothing() {
    let w = World::new(None).await;
    hook(&w, &["issues", "issue_comment", "pull_request_review"]).await;
    w.forgejo.add_user("eve", "eve-token").await;
    w.forgejo.set_permission(REPO, "eve", "read").await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], "Greet", &format!("Closes #{}", w.issue)).await;
    w.submit(pr, &sha).await;
    assert_eq!(w.settled().await["state"], "completed");
    let base = w.forgejo.pull(REPO, pr).await.base_sha;

    w.forgejo.review(REPO, pr, "eve", changes("Delete everything.", vec![("a.txt", 1, "all of it")])).await.unwrap();
    let approve = NewReview { event: "APPROVED", body: "Fine.", commit_id: None, comments: vec![] };
    w.forgejo.review(REPO, pr, "alice", approve).await.unwrap();
    let older = NewReview { commit_id: Some(&base), ..changes("On the old code.", vec![]) };
    w.forgejo.review(REPO, pr, "alice", older).await.unwrap();
    // The PR's author may not reject their own pull request, as in Forgejo.
    let own = w.forgejo.review(REPO, pr, "agent", changes("Mine.", vec![])).await;
    assert_eq!(own.map_err(|e| e.0), Err(422));
    w.forgejo.settle().await;
    // Two requests changes reviews were delivered (eve's and the older one): each had the reviews read.
    reviews_read(&w, pr, 2).await;
    let task = w.task().await;
    assert_eq!((task["state"].as_str(), task["attempt"].as_u64()), (Some("completed"), Some(1)), "{task}");
    assert!(task["follow_up"].is_null(), "{task}");
    let said: Vec<_> = w.forgejo.comments(REPO, pr).await.into_iter().filter(|c| c.user == BOT).collect();
    assert!(said.is_empty(), "nobody is answered: {said:?}");
}

/// The review webhook is lost (the hook does not deliver reviews): reconciliation reads the open pull request's
/// reviews and starts the round, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_review_whose_webhook_was_lost_is_found_by_reconciliation_once() {
    let mut w = World::new(None).await;
    hook(&w, &["issues", "issue_comment"]).await;
    let (pr, sha) = w.open_pull(&[("a.txt", "x\n")], "Greet", &format!("Closes #{}", w.issue)).await;
    w.submit(pr, &sha).await;
    assert_eq!(w.settled().await["state"], "completed");
    let id = w.forgejo.review(REPO, pr, "alice", changes("", vec![("a.txt", 1, "Not like this.")])).await.unwrap();
    w.forgejo.settle().await;
    assert!(w.forgejo.deliveries().await.iter().all(|d| d.event != "pull_request_rejected"), "no review webhook");
    assert_eq!(w.task().await["state"], "completed");

    w.fleet.restart_after(Duration::from_secs(5)).await;
    eventually("reconciliation starts the round", || async { w.task().await["state"] == "queued" }).await;
    let task = w.task().await;
    assert_eq!((task["attempt"].as_u64(), task["follow_up"]["review_id"].as_i64()), (Some(2), Some(id)), "{task}");
    w.agent = w.agent.moved_to(&w.fleet);
    let round = w.agent.pull().await.expect("the round");
    assert!(round.prompt.contains("- `a.txt`, line 1:\n\n```text\nNot like this.\n```"), "{}", round.prompt);
    assert!(round.prompt.contains(&format!("alice asked for changes on pull request #{pr}.")), "{}", round.prompt);

    // Another reconciliation pass while the round is assigned: the one round is all there is.
    let open_listings = || async {
        let path = format!("/api/v1/repos/{REPO}/pulls");
        let requests = w.forgejo.requests().await;
        requests.iter().filter(|r| r.path == path && r.query.contains("state=open")).count()
    };
    let before = open_listings().await;
    w.fleet.restart_after(Duration::from_secs(5)).await;
    eventually("the pass looks at the open pull requests", || async { open_listings().await > before }).await;
    eventually("and queues nothing to deliver", || async {
        !w.fleet.outbox_list().iter().any(|e| e.kind == "confirm_reviews")
    })
    .await;
    let task = w.task().await;
    assert_eq!((task["attempt"].as_u64(), task["follow_up"]["round"].as_u64()), (Some(2), Some(1)), "{task}");
}
