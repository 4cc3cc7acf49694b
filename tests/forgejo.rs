//! Forgejo and forgefleet together, over real HTTP: a fake Forgejo that holds state and sends signed webhooks
//! exactly as Forgejo does, and forgefleet with its webhook endpoint, outbox delivery and reconciliation.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use forgefleet::config::Secret;
use forgefleet::core::RepoName;
use forgefleet::integrations::forgejo::{ForgejoClient, reconcile};
use forgefleet::integrations::outbox::{Deliver, Delivery, DeliveryError};
use forgefleet::store::OutboxRow;
use reqwest::Method;
use serde_json::json;
use support::eventually;
use support::fleet::Fleet;
use support::forgejo::{FakeForgejo, sign};

const REPO: &str = "acme/app";
const SECRET: &str = "webhook-secret";
const BOT: &str = "forgefleet";
const BOT_TOKEN: &str = "bot-token";

struct World {
    forgejo: FakeForgejo,
    fleet: Fleet,
}

impl World {
    async fn new() -> World {
        Self::with_fleet_file(None).await
    }

    /// A world whose repository carries `.forgejo/fleet.yaml` with `text` before forgefleet starts.
    async fn with_fleet_file(text: Option<&str>) -> World {
        Self::build(text, |_| {}).await
    }

    async fn build(text: Option<&str>, tune: impl FnOnce(&mut forgefleet::config::Config)) -> World {
        Self::build_on(FakeForgejo::start().await, text, tune).await
    }

    /// The same on a fake Forgejo the test prepared (faults armed before forgefleet starts).
    async fn build_on(
        forgejo: FakeForgejo,
        text: Option<&str>,
        tune: impl FnOnce(&mut forgefleet::config::Config),
    ) -> World {
        Self::build_full(forgejo, text, tune, None).await
    }

    /// A world whose forgefleet also runs a Matrix outbox worker delivering through `matrix`.
    async fn with_matrix(matrix: Arc<dyn Deliver>) -> World {
        Self::build_full(FakeForgejo::start().await, None, |_| {}, Some(matrix)).await
    }

    async fn build_full(
        forgejo: FakeForgejo,
        text: Option<&str>,
        tune: impl FnOnce(&mut forgefleet::config::Config),
        matrix: Option<Arc<dyn Deliver>>,
    ) -> World {
        forgejo.create_repo(REPO).await;
        if let Some(t) = text {
            forgejo.set_file(REPO, ".forgejo/fleet.yaml", t).await;
        }
        forgejo.add_user(BOT, BOT_TOKEN).await;
        // Reading other people's permission takes admin access in Forgejo.
        forgejo.set_permission(REPO, BOT, "admin").await;
        forgejo.add_member(REPO, "alice", "alice-token", "write").await;
        forgejo.add_user("eve", "eve-token").await;
        let url = forgejo.url().to_string();
        let configure = |c: &mut forgefleet::config::Config| {
            c.forgejo.url = Some(url);
            c.forgejo.token = Some(Secret::new(BOT_TOKEN));
            c.forgejo.webhook_secret = Some(Secret::new(SECRET));
            c.forgejo.bot_user = Some(BOT.into());
            c.forgejo.repos = vec![REPO.into()];
            tune(c);
        };
        let fleet = match matrix {
            Some(m) => Fleet::start_with_forgejo_and_matrix(m, configure).await,
            None => Fleet::start_with_forgejo(configure).await,
        };
        forgejo
            .add_hook(
                REPO,
                &format!("{}/api/v1/webhooks/forgejo", fleet.base),
                SECRET,
                &["issues", "issue_comment", "pull_request"],
            )
            .await;
        World { forgejo, fleet }
    }

    /// Moves the clock on, 10 minutes a step for at most `steps` steps, until `n` deliveries are dead letters.
    async fn until_dead_letters(&self, n: u64, steps: u32) {
        for _ in 0..steps {
            if self.outbox().dead == n {
                return;
            }
            self.fleet.later(Duration::from_secs(600));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn client(&self) -> ForgejoClient {
        ForgejoClient::new(self.forgejo.url(), Secret::new(BOT_TOKEN), None).unwrap()
    }

    async fn reconcile(&self, full: bool) -> reconcile::PassReport {
        let repo = RepoName::parse(REPO).unwrap();
        let reads = forgefleet::store::ReadPool::new(self.fleet.db.clone());
        reconcile::pass(&self.client(), &self.fleet.engine, &reads, &repo, full).await.unwrap()
    }

    /// An issue labelled `status:todo`, once forgefleet has queued its task (the only task).
    async fn queued_issue(&self, title: &str) -> u64 {
        let n = self.forgejo.create_issue(REPO, "alice", title, "", &["status:todo"]).await;
        eventually("the task is queued", || async { self.tasks().await.len() == 1 }).await;
        n
    }

    /// Agent `a1` registers, takes the queued task and starts it.
    async fn agent_starts(&self) -> (support::fleet::TestAgent, forgefleet::api::AssignmentView) {
        let agent = self.fleet.register("a1", &[], 1).await;
        let a = agent.pull().await.unwrap();
        agent.start(&a).await;
        (agent, a)
    }

    /// A delivery posted to forgefleet's webhook endpoint as Forgejo would, with the given signature header.
    async fn post_webhook(
        &self,
        event: &str,
        body: impl Into<reqwest::Body>,
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .fleet
            .http
            .post(format!("{}/api/v1/webhooks/forgejo", self.fleet.base))
            .header("content-type", "application/json")
            .header("x-forgejo-event", event)
            .header("x-forgejo-delivery", support::forgejo::uuid_v4());
        if let Some(sig) = signature {
            req = req.header("x-forgejo-signature", sig);
        }
        req.body(body).send().await.unwrap()
    }

    async fn tasks(&self) -> Vec<serde_json::Value> {
        let (_, body) = self.fleet.operator(Method::GET, "/tasks").await;
        body["tasks"].as_array().cloned().unwrap_or_default()
    }

    /// The outbox as `forgefleet status` shows it.
    fn outbox(&self) -> forgefleet::store::OutboxHealth {
        forgefleet::store::Store::open_read_only(&self.fleet.db).unwrap().read().outbox_health().unwrap()
    }

    async fn labels(&self, n: u64) -> Vec<String> {
        let mut l = self.forgejo.issue(REPO, n).await.labels;
        l.sort();
        l
    }
}

/// Waits (up to 10 s) until `check` holds: deliveries and the outbox work in the background.
#[tokio::test(flavor = "multi_thread")]
async fn labelling_an_issue_queues_a_task_and_an_agent_taking_it_shows_on_the_issue() {
    let w = World::new().await;
    let n = w
        .forgejo
        .create_issue(REPO, "alice", "Fix the login page", "It 500s.", &["status:todo", "priority:high"])
        .await;
    eventually("the task is queued", || async { w.tasks().await.len() == 1 }).await;
    let task = &w.tasks().await[0];
    assert_eq!(
        (task["issue"].as_str(), task["state"].as_str(), task["priority"].as_str()),
        (Some("acme/app#1"), Some("queued"), Some("high"))
    );

    let agent = w.fleet.register("a1", &[], 1).await;
    let a = agent.pull().await.unwrap();
    assert_eq!((a.title.as_str(), a.body.as_str()), ("Fix the login page", "It 500s."));
    agent.start(&a).await;
    eventually("the issue shows status:doing only", || async {
        w.labels(n).await == ["priority:high", "status:doing"]
    })
    .await;
    eventually("a started comment", || async {
        w.forgejo
            .comments(REPO, n)
            .await
            .iter()
            .any(|c| c.user == BOT && c.body.contains("a1") && c.body.contains("started"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_missing_signature_is_refused_and_stores_nothing() {
    let w = World::new().await;
    let before = w.fleet.event_count();
    let body = json!({"action": "opened", "issue": {"number": 1}}).to_string();
    for signature in [None, Some("deadbeef".to_string()), Some(sign("wrong-secret", body.as_bytes()))] {
        let r = w.post_webhook("issues", body.clone(), signature.as_deref()).await;
        assert_eq!(r.status(), 401, "{signature:?}");
        let err: serde_json::Value = r.json().await.unwrap();
        assert!(err["error"]["message"].as_str().unwrap().contains("signature"), "{err}");
    }
    // Signed but malformed: 400, still nothing stored.
    let bad = b"{not json";
    let r = w.post_webhook("issues", bad.to_vec(), Some(&sign(SECRET, bad))).await;
    assert_eq!(r.status(), 400);
    assert_eq!(w.fleet.event_count(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_delivery_changes_nothing() {
    let w = World::new().await;
    w.queued_issue("Replay me").await;
    w.forgejo.settle().await;
    let events = w.fleet.event_count();
    let delivery = w.forgejo.deliveries().await.into_iter().find(|d| d.event == "issues").unwrap();
    // A manual replay in Forgejo's UI: the same body, a new delivery id.
    let signature = sign(SECRET, delivery.body.as_bytes());
    let r = w.post_webhook("issues", delivery.body.clone(), Some(&signature)).await;
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["status"], "duplicate");
    assert_eq!(w.fleet.event_count(), events);
    assert_eq!(w.tasks().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_webhook_is_picked_up_by_reconciliation_with_one_listing_request() {
    let w = World::new().await;
    // The start-up sweep runs in the background: let it finish, so only the pass below can see the issue.
    eventually("the start-up sweep is done", || async {
        let store = forgefleet::store::Store::open_read_only(&w.fleet.db).unwrap();
        store.read().meta(&format!("reconcile.cursor:{REPO}")).unwrap().is_some()
    })
    .await;
    w.forgejo.drop_next_webhooks(1).await;
    w.forgejo.create_issue(REPO, "alice", "Lost delivery", "", &["status:todo"]).await;
    w.forgejo.settle().await;
    assert!(w.tasks().await.is_empty(), "the webhook was lost");
    w.forgejo.clear_requests().await;
    let report = w.reconcile(false).await;
    assert_eq!(report.listed, 1);
    assert_eq!(w.tasks().await.len(), 1);
    let listings =
        w.forgejo.requests().await.into_iter().filter(|r| r.method == "GET" && r.path.ends_with("/issues")).count();
    assert!(listings <= 2, "{listings} listing requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn forgejo_failing_for_a_while_delays_labels_and_comments_but_loses_none() {
    let w = World::new().await;
    let n = w.queued_issue("Flaky forge").await;
    w.forgejo.fail_requests_until_healed(500).await;
    w.agent_starts().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.labels(n).await, ["status:todo"], "nothing could be written yet");
    w.forgejo.heal().await;
    eventually("doing is set and the comment posted", || async {
        w.labels(n).await == ["status:doing"] && w.forgejo.comments(REPO, n).await.iter().any(|c| c.user == BOT)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_comment_posted_before_a_crash_is_not_posted_again() {
    let w = World::new().await;
    let n = w.queued_issue("Crash").await;
    // forgefleet posted the "started" comment, then died before recording it: the comment is there, the
    // outbox row is not marked. The next delivery must find it by its marker.
    w.forgejo.fail_requests_until_healed(503).await;
    let (_agent, a) = w.agent_starts().await;
    let task = a.task_id;
    w.forgejo
        .comment(REPO, n, BOT, &format!("posted before the crash\n\n<!-- forgefleet:task-{task}:attempt-1:started -->"))
        .await;
    w.forgejo.heal().await;
    eventually("the labels are written", || async { w.labels(n).await == ["status:doing"] }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started =
        w.forgejo.comments(REPO, n).await.into_iter().filter(|c| c.body.contains("attempt-1:started")).count();
    assert_eq!(started, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_from_people_without_write_access_are_refused_with_a_reply() {
    let w = World::new().await;
    let n = w.queued_issue("Refuse eve").await;
    w.forgejo.comment(REPO, n, "eve", "/cancel").await;
    eventually("eve is told why", || async {
        w.forgejo
            .comments(REPO, n)
            .await
            .iter()
            .any(|c| c.user == BOT && c.body.contains("@eve") && c.body.contains("write access"))
    })
    .await;
    assert_eq!(w.tasks().await[0]["state"], "queued", "nothing ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_retry_from_a_collaborator_run_once_and_are_acknowledged() {
    let w = World::new().await;
    let n = w.queued_issue("Steer me").await;
    w.forgejo.comment(REPO, n, "alice", "Stop please:\n\n/cancel\n\n```\n/retry\n```").await;
    eventually("cancelled", || async { w.tasks().await[0]["state"] == "cancelled" }).await;
    eventually("a 👍", || async {
        w.forgejo.reactions(REPO, n).await.iter().any(|r| r.user == BOT && r.content == "+1")
    })
    .await;
    eventually("the status label is gone", || async { !w.labels(n).await.iter().any(|l| l.starts_with("status:")) })
        .await;
    w.forgejo.comment(REPO, n, "alice", "/retry").await;
    eventually("queued again", || async { w.tasks().await[0]["state"] == "queued" }).await;
    assert_eq!(w.tasks().await[0]["attempt"], 2);
    // A mistake gets a reply that says how to write it.
    w.forgejo.comment(REPO, n, "alice", "/assign").await;
    eventually("the usage reply", || async {
        w.forgejo.comments(REPO, n).await.iter().any(|c| c.user == BOT && c.body.contains("/assign <agent>"))
    })
    .await;
}

/// A comment's command that names an issue elsewhere (`/cancel acme/lib#2`) is about that issue: the author's
/// permission is read there, and it acts there, never on the issue the comment is on.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_naming_another_repository_is_checked_and_applied_there() {
    const LIB: &str = "acme/lib";
    let forgejo = FakeForgejo::start().await;
    forgejo.create_repo(LIB).await;
    forgejo.add_user(BOT, BOT_TOKEN).await;
    forgejo.set_permission(LIB, BOT, "admin").await;
    let w = World::build_on(forgejo, None, |c| c.forgejo.repos.push(LIB.into())).await;
    forgejo_hook(&w, LIB).await;
    let here = w.queued_issue("Here").await;
    let there = w.forgejo.create_issue(LIB, "alice", "There", "", &["status:todo"]).await;
    eventually("both tasks are queued", || async { w.tasks().await.len() == 2 }).await;
    let state = |repo: &'static str, n: u64| {
        let w = &w;
        async move {
            let tasks = w.tasks().await;
            let t = tasks.iter().find(|t| t["issue"] == format!("{repo}#{n}")).unwrap();
            t["state"].as_str().unwrap().to_string()
        }
    };

    // alice may write to acme/app, where she comments, but only read acme/lib.
    w.forgejo.set_permission(LIB, "alice", "read").await;
    w.forgejo.comment(REPO, here, "alice", &format!("/cancel {LIB}#{there}")).await;
    let reply = bot_reply(&w, here, "write access").await;
    assert!(reply.contains(LIB) && reply.contains("`read`"), "{reply}");
    assert_eq!(state(REPO, here).await, "queued", "the comment's own issue is not what the command named");
    assert_eq!(state(LIB, there).await, "queued", "refused: nothing changed");

    w.forgejo.set_permission(LIB, "alice", "write").await;
    w.forgejo.comment(REPO, here, "alice", &format!("/cancel {LIB}#{there}")).await;
    eventually("acme/lib's task is cancelled", || async { state(LIB, there).await == "cancelled" }).await;
    assert_eq!(state(REPO, here).await, "queued");
}

async fn forgejo_hook(w: &World, repo: &str) {
    w.forgejo
        .add_hook(repo, &format!("{}/api/v1/webhooks/forgejo", w.fleet.base), SECRET, &["issues", "issue_comment"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_issue_cancels_the_task_and_the_agent_is_told() {
    let w = World::new().await;
    let n = w.queued_issue("Close me").await;
    let (agent, a) = w.agent_starts().await;
    w.forgejo.close_issue(REPO, n, "alice").await;
    eventually("cancelled", || async { w.tasks().await[0]["state"] == "cancelled" }).await;
    assert_eq!(agent.heartbeat(&[a.task_id]).await, [a.task_id]);
    eventually("a comment says why", || async {
        w.forgejo.comments(REPO, n).await.iter().any(|c| c.body.contains("Cancelled") && c.body.contains("closed"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn label_drift_is_repaired() {
    let w = World::new().await;
    let n = w.queued_issue("Drift").await;
    w.agent_starts().await;
    eventually("doing", || async { w.labels(n).await == ["status:doing"] }).await;
    // Someone adds a second status label by hand.
    w.forgejo.add_labels(REPO, n, "alice", &["status:done"]).await;
    eventually("back to exactly one status label", || async { w.labels(n).await == ["status:doing"] }).await;
    assert_eq!(w.tasks().await[0]["state"], "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_labels_are_created_at_start() {
    let w = World::new().await;
    eventually("the status and priority labels exist", || async {
        let names: Vec<String> = w.forgejo.labels(REPO).await.into_iter().map(|l| l.name).collect();
        [
            "status:todo",
            "status:doing",
            "status:done",
            "status:failed",
            "status:blocked",
            "priority:critical",
            "priority:low",
        ]
        .iter()
        .all(|l| names.iter().any(|n| n == l))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forgejo_setup_creates_the_labels_and_the_webhook_once() {
    let forgejo = FakeForgejo::start().await;
    forgejo.create_repo(REPO).await;
    forgejo.add_member(REPO, BOT, BOT_TOKEN, "admin").await;
    let home = support::Home::with_config(&format!(
        "[forgejo]\nurl = \"{}\"\ntoken = \"{BOT_TOKEN}\"\nwebhook_secret = \"{SECRET}\"\nrepos = [\"{REPO}\"]\n",
        forgejo.url()
    ));
    let run = |args: Vec<String>| {
        let home_config = home.config();
        let dir = home.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(support::binary())
                .args(&args)
                .arg("--config")
                .arg(home_config)
                .current_dir(dir)
                .output()
                .unwrap()
        })
    };
    let hook = "http://127.0.0.1:9/api/v1/webhooks/forgejo".to_string();
    let args =
        vec!["forgejo".into(), "setup".into(), "--repo".into(), REPO.into(), "--webhook-url".into(), hook.clone()];
    let out = run(args.clone()).await.unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let text = support::stdout(&out);
    assert!(text.contains("labels: created") && text.contains("webhook: created"), "{text}");
    let hooks = forgejo.hooks(REPO).await;
    assert_eq!(hooks.len(), 1);
    assert_eq!((hooks[0].url.as_str(), hooks[0].secret.as_str(), hooks[0].active), (hook.as_str(), SECRET, true));
    assert!(hooks[0].events.iter().any(|e| e == "issue_comment"));

    let again = run(args).await.unwrap();
    let text = support::stdout(&again);
    assert!(text.contains("all present") && text.contains("already"), "{text}");
    assert_eq!(forgejo.hooks(REPO).await.len(), 1, "not created twice");
    assert!(forgejo.hooks(REPO).await[0].events.iter().any(|e| e == "pull_request_review_rejected"));

    // forgefleet's hook made before reviews counted (or by hand, with push too): the review events are added,
    // the others kept.
    let older = "acme/older";
    forgejo.create_repo(older).await;
    forgejo.add_member(older, BOT, BOT_TOKEN, "admin").await;
    forgejo.add_hook(older, &hook, SECRET, &["issues", "issue_comment", "pull_request_comment", "push"]).await;
    let args =
        vec!["forgejo".into(), "setup".into(), "--repo".into(), older.into(), "--webhook-url".into(), hook.clone()];
    let out = run(args.clone()).await.unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(support::stdout(&out).contains("added pull_request_review"), "{}", support::stdout(&out));
    let hooks = forgejo.hooks(older).await;
    assert_eq!(hooks.len(), 1, "the hook is edited, not made again");
    for kind in ["pull_request_review_rejected", "push", "issue_comment", "pull_request_comment"] {
        assert!(hooks[0].events.iter().any(|e| e == kind), "{kind}: {:?}", hooks[0].events);
    }
    let again = run(args).await.unwrap();
    assert!(support::stdout(&again).contains("already delivers to forgefleet\n"), "{}", support::stdout(&again));

    let bad = run(vec!["forgejo".into(), "setup".into(), "--repo".into(), "nope".into()]).await.unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(support::stderr(&bad).contains("--repo"), "{}", support::stderr(&bad));
}

/// Waits until forgefleet has read the repository's `fleet.yaml`.
async fn settings_read(w: &World) {
    eventually("the repository settings are read", || async {
        let store = forgefleet::store::Store::open_read_only(&w.fleet.db).unwrap();
        let repo = RepoName::parse(REPO).unwrap();
        forgefleet::engine::repo::RepoSettings::read(store.read(), &repo).unwrap().is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_can_rename_its_labels_in_fleet_yaml() {
    let w = World::with_fleet_file(Some("labels:\n  todo: fleet/todo\n  doing: fleet/doing\n")).await;
    settings_read(&w).await;
    w.forgejo.create_issue(REPO, "alice", "Ignored", "", &["status:todo"]).await;
    let n = w.forgejo.create_issue(REPO, "alice", "Mine", "", &["fleet/todo"]).await;
    eventually("only the fleet/todo issue is queued", || async {
        let t = w.tasks().await;
        t.len() == 1 && t[0]["issue"] == format!("{REPO}#{n}")
    })
    .await;
    w.agent_starts().await;
    eventually("the repository's own doing label", || async { w.labels(n).await == ["fleet/doing"] }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_repositorys_prompt_and_the_issue_reach_the_agent_in_its_assignment() {
    let w = World::with_fleet_file(Some("prompt: |\n  Keep changes small and run `make check`.\n")).await;
    settings_read(&w).await;
    let n = w.forgejo.create_issue(REPO, "alice", "Fix the redirect", "It loops.", &["status:todo"]).await;
    w.forgejo.add_labels(REPO, n, "alice", &["priority:high"]).await;
    eventually("queued", || async { w.tasks().await.len() == 1 }).await;
    let (_agent, a) = w.agent_starts().await;
    assert!(
        a.prompt.starts_with(&format!("Resolve issue #{n} of {REPO}: Fix the redirect\n\nIt loops.")),
        "{}",
        a.prompt
    );
    assert!(a.prompt.contains("Keep changes small and run `make check`."), "{}", a.prompt);
    assert!(a.prompt.contains(&format!("on branch `{}`", a.branch)), "{}", a.prompt);
    assert_eq!(a.forgejo_url.as_deref(), Some(w.forgejo.url()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_fleet_yaml_is_reported_on_the_next_task_and_the_defaults_apply() {
    let w = World::with_fleet_file(Some("lables:\n  todo: x\n")).await;
    settings_read(&w).await;
    let n = w.forgejo.create_issue(REPO, "alice", "Still works", "", &["status:todo"]).await;
    eventually("queued with the default labels", || async { w.tasks().await.len() == 1 }).await;
    eventually("a comment explains the problem", || async {
        w.forgejo
            .comments(REPO, n)
            .await
            .iter()
            .any(|c| c.user == BOT && c.body.contains("fleet.yaml") && c.body.contains("lables"))
    })
    .await;
    let m = w.forgejo.create_issue(REPO, "alice", "Second", "", &["status:todo"]).await;
    eventually("the second is queued", || async { w.tasks().await.len() == 2 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!w.forgejo.comments(REPO, m).await.iter().any(|c| c.body.contains("fleet.yaml")), "reported once");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_a_forgejo_user_is_the_assignee_while_it_works() {
    let w = World::build(None, |c| {
        c.forgejo.agent_users.insert("a1".into(), "fleet-a1".into());
    })
    .await;
    w.forgejo.add_user("fleet-a1", "a1-token").await;
    let n = w.forgejo.create_issue(REPO, "alice", "Assign me", "", &["status:todo"]).await;
    w.forgejo.set_assignees(REPO, n, "alice", &["alice"]).await;
    eventually("the task is queued", || async { w.tasks().await.len() == 1 }).await;
    w.agent_starts().await;
    eventually("the agent's user is assigned next to alice", || async {
        let mut a = w.forgejo.issue(REPO, n).await.assignees;
        a.sort();
        a == ["alice", "fleet-a1"]
    })
    .await;
    w.forgejo.comment(REPO, n, "alice", "/cancel").await;
    eventually("only alice is left", || async { w.forgejo.issue(REPO, n).await.assignees == ["alice"] }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_delivery_is_413_in_json() {
    let w = World::new().await;
    let body = format!("{{\"action\": \"opened\", \"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let signature = sign(SECRET, body.as_bytes());
    let r = w.post_webhook("issues", body, Some(&signature)).await;
    assert_eq!(r.status(), 413);
    let text = r.text().await.unwrap();
    let err: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(err["error"]["code"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_pages_through_long_lists_and_rides_out_server_errors() {
    let w = World::new().await;
    for i in 0..120 {
        w.forgejo.create_issue(REPO, "alice", &format!("issue {i}"), "", &[]).await;
    }
    let client = w.client().with_retry(forgefleet::integrations::forgejo::client::RetryPolicy {
        attempts: 4,
        first_wait: Duration::from_millis(10),
    });
    let repo = RepoName::parse(REPO).unwrap();
    w.forgejo.clear_requests().await;
    let all = client.list_issues(&repo, &Default::default()).await.unwrap();
    assert_eq!(all.len(), 120);
    let pages = w
        .forgejo
        .requests()
        .await
        .into_iter()
        .filter(|r| r.path == "/api/v1/repos/acme/app/issues" && !r.query.contains("state="))
        .count();
    assert_eq!(pages, 3, "50 + 50 + 20");
    w.forgejo.fail_next_requests(2, 502).await;
    assert_eq!(client.issue(&repo, 7).await.unwrap().number, 7, "two 502s, then success");
    // Every try fails (by path: the fleet's own workers talk to the same Forgejo meanwhile).
    w.forgejo.fail_path_until_healed("/api/v1/repos/acme/app/issues/7", 500).await;
    let err = client.issue(&repo, 7).await.unwrap_err();
    w.forgejo.heal().await;
    assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
    assert!(err.to_string().contains("GET /repos/acme/app/issues/7"), "{err}");
    let missing = client.issue(&repo, 999).await.unwrap_err();
    assert!(missing.is_not_found());
}

#[tokio::test(flavor = "multi_thread")]
async fn assign_pins_the_task_to_the_named_agent() {
    let w = World::new().await;
    let n = w.queued_issue("Pin me").await;
    let other = w.fleet.register("other", &[], 1).await;
    let chosen = w.fleet.register("chosen", &[], 1).await;
    w.forgejo.comment(REPO, n, "alice", "/assign chosen").await;
    eventually("the agent label is set", || async { w.labels(n).await.contains(&"agent:chosen".to_string()) }).await;
    eventually("the task is pinned", || async {
        let (_, body) = w.fleet.operator(Method::GET, "/tasks/1").await;
        body["task"]["spec"]["agent"] == "chosen"
    })
    .await;
    assert!(other.pull().await.is_none(), "pinned to another agent");
    assert_eq!(chosen.pull().await.unwrap().issue, n);
    w.forgejo.comment(REPO, n, "alice", "/assign nobody").await;
    eventually("an unknown agent is answered", || async {
        w.forgejo.comments(REPO, n).await.iter().any(|c| c.user == BOT && c.body.contains("no agent named `nobody`"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issue_labelled_todo_again_after_its_label_was_removed_is_queued_again() {
    let w = World::new().await;
    let n = w.queued_issue("Requeue me").await;
    w.forgejo.remove_label(REPO, n, "alice", "status:todo").await;
    eventually("cancelled", || async { w.tasks().await[0]["state"] == "cancelled" }).await;
    w.forgejo.settle().await;
    w.forgejo.add_labels(REPO, n, "alice", &["status:todo"]).await;
    eventually("queued again", || async { w.tasks().await[0]["state"] == "queued" }).await;
    assert_eq!(w.labels(n).await, ["status:todo"]);
    // Reconciliation agrees, and a restart's full sweep does too: nothing changes.
    w.reconcile(true).await;
    assert_eq!(w.tasks().await[0]["state"], "queued");
}

/// The bodies of the `issues` deliveries made for issue `n`, in the order Forgejo made them.
async fn issue_deliveries(w: &World, n: u64) -> Vec<(String, serde_json::Value)> {
    w.forgejo
        .deliveries()
        .await
        .into_iter()
        .filter(|d| d.event == "issues")
        .map(|d| (d.action.clone(), serde_json::from_str::<serde_json::Value>(&d.body).unwrap()))
        .filter(|(_, b)| b["issue"]["number"] == n)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_or_same_time_view_of_an_issue_never_cancels_its_task() {
    let w = World::new().await;
    // Lost on the way: forgefleet sees these two only when they are posted below, in reverse order.
    w.forgejo.drop_next_webhooks(2).await;
    let n = w.forgejo.create_issue(REPO, "alice", "Out of order", "", &[]).await;
    w.forgejo.add_labels(REPO, n, "alice", &["status:todo"]).await;
    w.forgejo.settle().await;
    let deliveries = issue_deliveries(&w, n).await;
    let (_, opened) = deliveries.iter().find(|(a, _)| a == "opened").unwrap().clone();
    let (_, labelled) = deliveries.iter().find(|(a, _)| a == "label_updated").unwrap().clone();
    let w = &w;
    let post = |body: serde_json::Value| async move {
        let body = body.to_string();
        let r = w.post_webhook("issues", body.clone(), Some(&sign(SECRET, body.as_bytes()))).await;
        assert_eq!(r.status(), 200);
    };
    post(labelled.clone()).await;
    eventually("queued", || async { w.tasks().await.len() == 1 }).await;
    // Forgejo stamps both with the same second: the same-time view without the label comes last.
    let mut same_time = opened.clone();
    same_time["issue"]["updated_at"] = labelled["issue"]["updated_at"].clone();
    post(same_time).await;
    // And the older one, replayed.
    post(opened).await;
    w.forgejo.settle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.tasks().await[0]["state"], "queued");
    assert_eq!(w.labels(n).await, ["status:todo"], "the person's label stays");
    assert!(!w.forgejo.comments(REPO, n).await.iter().any(|c| c.body.contains("Cancelled")));
    // A removal that did happen is confirmed and acted on.
    w.forgejo.remove_label(REPO, n, "alice", "status:todo").await;
    eventually("cancelled", || async { w.tasks().await[0]["state"] == "cancelled" }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issue_that_does_not_exist_gets_no_task_and_no_agent() {
    let w = World::new().await;
    let agent = w.fleet.register("a1", &[], 1).await;
    // The start-up reconciliation lists the issues first: one that saw the issue before it was deleted would
    // make its view newer than the replayed webhook's (which is then rightly ignored).
    let listing = format!("/api/v1/repos/{REPO}/issues");
    eventually("the start-up reconciliation listed the issues", || async {
        w.forgejo.requests().await.iter().any(|r| r.method == "GET" && r.path == listing && r.status == 200)
    })
    .await;
    // Deleted after its webhook was made: the delivery arrives when the issue is gone.
    w.forgejo.drop_next_webhooks(1).await;
    let n = w.forgejo.create_issue(REPO, "alice", "Deleted soon", "", &["status:todo"]).await;
    w.forgejo.settle().await;
    let (_, opened) = issue_deliveries(&w, n).await.into_iter().find(|(a, _)| a == "opened").unwrap();
    w.forgejo.delete_issue(REPO, n).await;
    // And a payload for a number that never existed.
    let mut never = opened.clone();
    never["issue"]["number"] = json!(9999);
    for body in [opened, never] {
        let body = body.to_string();
        let r = w.post_webhook("issues", body.clone(), Some(&sign(SECRET, body.as_bytes()))).await;
        assert_eq!(r.status(), 200);
    }
    eventually("both issues were read back", || async {
        let gets = w.forgejo.requests().await;
        [n, 9999]
            .iter()
            .all(|k| gets.iter().any(|r| r.method == "GET" && r.path == format!("/api/v1/repos/{REPO}/issues/{k}")))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.tasks().await.is_empty());
    assert!(agent.pull().await.is_none(), "no agent works on an issue that does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bots_own_comments_never_run_as_commands_even_without_bot_user() {
    let w = World::build(None, |c| c.forgejo.bot_user = None).await;
    let n = w.queued_issue("Hostile agent").await;
    let (agent, a) = w.agent_starts().await;
    // The agent's failure message ends in a paragraph that reads as a command, and tries to mention and embed.
    let message = "exit status 1\n\n@alice ![x](http://127.0.0.1:9/x.png) ``` fence\n\n/cancel";
    let (status, body) = agent
        .post(&format!("/tasks/{}/fail", a.task_id), json!({"attempt": 1, "class": "agent_error", "message": message}))
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("the retrying comment is posted", || async {
        w.forgejo.comments(REPO, n).await.iter().any(|c| c.user == BOT && c.body.contains("exit status 1"))
    })
    .await;
    w.forgejo.settle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.forgejo.settle().await;
    let task = &w.tasks().await[0];
    assert_eq!((task["state"].as_str(), task["attempt"].as_u64()), (Some("queued"), Some(2)), "{task}");
    let comment = w.forgejo.comments(REPO, n).await.into_iter().find(|c| c.body.contains("exit status 1")).unwrap();
    // The agent's text is code: a fence longer than any run of backticks in it.
    assert!(comment.body.contains("````text\nexit status 1\n"), "{}", comment.body);
    assert!(!w.forgejo.reactions(REPO, n).await.iter().any(|r| r.user == BOT), "no command ran");
    // A person's comment that copies a forgefleet marker is not a command either.
    w.forgejo.comment(REPO, n, "alice", "/cancel\n\n<!-- forgefleet:task-1:attempt-1:retrying -->").await;
    w.forgejo.settle().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.tasks().await[0]["state"], "queued");
}

/// The newest reply of the bot on issue `n` that contains `needle`, once it is there.
async fn bot_reply(w: &World, n: u64, needle: &str) -> String {
    eventually(&format!("a reply with {needle:?}"), || async {
        w.forgejo.comments(REPO, n).await.iter().any(|c| c.user == BOT && c.body.contains(needle))
    })
    .await;
    w.forgejo.comments(REPO, n).await.into_iter().rev().find(|c| c.body.contains(needle)).unwrap().body
}

#[tokio::test(flavor = "multi_thread")]
async fn command_replies_say_in_words_what_is_wrong_and_status_answers_with_the_status() {
    let w = World::new().await;
    let n = w.queued_issue("Talk to me").await;
    w.forgejo.comment(REPO, n, "alice", "/retry").await;
    let reply = bot_reply(&w, n, "`/retry` only applies").await;
    assert!(reply.contains("task 1 is queued; `/retry` only applies to failed or cancelled tasks"), "{reply}");
    assert!(!reply.contains("task_retried"), "{reply}");
    w.forgejo.comment(REPO, n, "alice", "/assign bad name!").await;
    let reply = bot_reply(&w, n, "not an agent name").await;
    assert!(reply.contains("`bad name!` is not an agent name"), "{reply}");
    w.forgejo.comment(REPO, n, "alice", "/fleet status").await;
    let reply = bot_reply(&w, n, "Fleet status").await;
    assert!(reply.contains("queued 1") && reply.contains("agents:"), "{reply}");
    assert!(reply.contains("failures in the last 24 h: none") && reply.contains("none registered"), "{reply}");
    w.forgejo.comment(REPO, n, "alice", "/fleet stauts").await;
    let reply = bot_reply(&w, n, "unknown command").await;
    assert!(reply.contains("did you mean `status`?"), "{reply}");
    // Taking forgefleet's `status:doing` off is reported as that.
    w.agent_starts().await;
    eventually("doing", || async { w.labels(n).await == ["status:doing"] }).await;
    w.forgejo.comment(REPO, n, "alice", "/fleet agents").await;
    let reply = bot_reply(&w, n, "running acme/app").await;
    assert!(reply.contains("`a1`") && reply.contains(&format!("running {REPO}#{n} (task 1, attempt 1)")), "{reply}");
    assert!(reply.contains("last heartbeat"), "{reply}");
    w.forgejo.comment(REPO, n, "alice", "/fleet show").await;
    let reply = bot_reply(&w, n, "Task 1 for").await;
    assert!(reply.contains("state: running, attempt 1") && reply.contains("held by `a1`"), "{reply}");
    w.forgejo.remove_label(REPO, n, "alice", "status:doing").await;
    let reply = bot_reply(&w, n, "Cancelled").await;
    assert!(reply.contains("the `status:doing` label was removed"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_bots_own_comments_count_as_an_earlier_delivery() {
    // The configured login differs from Forgejo's only in case: it is still the bot.
    let w = World::build(None, |c| c.forgejo.bot_user = Some("ForgeFleet".into())).await;
    let n = w.queued_issue("Silence me").await;
    let task = w.tasks().await[0]["id"].as_u64().unwrap();
    // Eve knows the marker format and how ids are counted: she posts the "started" marker before forgefleet.
    w.forgejo.comment(REPO, n, "eve", &format!("shh <!-- forgefleet:task-{task}:attempt-1:started -->")).await;
    w.agent_starts().await;
    eventually("forgefleet posts its own started comment all the same", || async {
        w.forgejo.comments(REPO, n).await.iter().any(|c| c.user == BOT && c.body.contains("attempt-1:started"))
    })
    .await;
    eventually("doing", || async { w.labels(n).await == ["status:doing"] }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let own = w.forgejo.comments(REPO, n).await.into_iter().filter(|c| c.user == BOT).count();
    assert_eq!(own, 1, "the bot's own comment is found by its marker: posted once");
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_to_one_issue_keep_their_order_after_an_outage() {
    let w = World::new().await;
    let n = w.queued_issue("Order").await;
    // Forgejo is down while the agent starts: "doing" and "started" fail and wait for their retry.
    w.forgejo.fail_requests_until_healed(503).await;
    let (_agent, a) = w.agent_starts().await;
    eventually("the first delivery failed", || async { w.outbox().failing > 0 }).await;
    w.forgejo.heal().await;
    // The task is cancelled while the earlier deliveries still wait: its comment must not overtake them.
    let (status, body) = w.fleet.operator(Method::POST, &format!("/tasks/{}/cancel", a.task_id)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !w.forgejo.comments(REPO, n).await.iter().any(|c| c.body.contains(":cancelled -->")),
        "the cancellation waits for the start it follows"
    );
    w.fleet.later(Duration::from_secs(600));
    eventually("both comments are posted", || async {
        w.forgejo.comments(REPO, n).await.iter().filter(|c| c.user == BOT).count() == 2
    })
    .await;
    let order: Vec<bool> = w.forgejo.comments(REPO, n).await.iter().map(|c| c.body.contains(":started -->")).collect();
    assert_eq!(order, [true, false], "started first, then cancelled");
    eventually("no status label once cancelled", || async {
        !w.labels(n).await.iter().any(|l| l.starts_with("status:"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_comment_whose_answer_was_lost_is_looked_for_and_never_posted_twice() {
    let w = World::build(None, |c| c.forgejo.request_timeout_secs = 1).await;
    let n = w.queued_issue("Slow answers").await;
    eventually("the labels made at start exist", || async { w.forgejo.labels(REPO).await.len() >= 8 }).await;
    // Forgejo applies every POST but answers after the client gave up waiting.
    w.forgejo.answer_posts_late(10, Duration::from_secs(2)).await;
    w.agent_starts().await;
    eventually("the started comment is there", || async {
        w.forgejo.comments(REPO, n).await.iter().any(|c| c.user == BOT && c.body.contains(":started -->"))
    })
    .await;
    // Time for every retry the client would make, then for the outbox's.
    tokio::time::sleep(Duration::from_secs(4)).await;
    w.fleet.later(Duration::from_secs(600));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = w.forgejo.comments(REPO, n).await.into_iter().filter(|c| c.body.contains(":started -->")).count();
    assert_eq!(started, 1, "posted once, though its answer never came in time");
    assert_eq!(w.outbox().waiting, 0, "and the delivery is recorded as done");
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_are_created_once_by_one_path_that_looks_first() {
    let forgejo = FakeForgejo::start().await;
    forgejo.create_repo(REPO).await;
    forgejo.add_member(REPO, BOT, BOT_TOKEN, "admin").await;
    forgejo.add_member(REPO, "alice", "alice-token", "write").await;
    // People made `priority:high` twice before forgefleet came: no third is made.
    forgejo.create_label(REPO, "priority:high", "#d93f0b", "", false).await;
    forgejo.create_label(REPO, "priority:high", "#d93f0b", "", false).await;
    // forgefleet's first label creation at start is slow to answer: meanwhile a task needs `status:doing`,
    // and a person makes one of the labels forgefleet is about to make.
    forgejo.answer_posts_late(1, Duration::from_secs(3)).await;
    let url = forgejo.url().to_string();
    let fleet = Fleet::start_with_forgejo(|c| {
        c.forgejo.url = Some(url);
        c.forgejo.token = Some(Secret::new(BOT_TOKEN));
        c.forgejo.webhook_secret = Some(Secret::new(SECRET));
        c.forgejo.bot_user = Some(BOT.into());
        c.forgejo.repos = vec![REPO.into()];
    })
    .await;
    forgejo.add_hook(REPO, &format!("{}/api/v1/webhooks/forgejo", fleet.base), SECRET, &["issues"]).await;
    eventually("the first creation is under way", || async {
        forgejo.count_requests("POST", &format!("/api/v1/repos/{REPO}/labels")).await == 1
    })
    .await;
    forgejo.create_label(REPO, "status:failed", "#d73a4a", "", false).await;
    let w = World { forgejo, fleet };
    let n = w.queued_issue("Label me").await;
    w.agent_starts().await;
    eventually("doing", || async { w.labels(n).await == ["status:doing"] }).await;
    eventually("every label forgefleet uses exists", || async { w.forgejo.labels(REPO).await.len() >= 9 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let labels = w.forgejo.labels(REPO).await;
    let count = |name: &str| labels.iter().filter(|l| l.name == name).count();
    for name in ["status:todo", "status:doing", "status:done", "status:failed", "priority:critical", "priority:low"] {
        assert_eq!(count(name), 1, "{name}: {labels:?}");
    }
    assert_eq!(count("priority:high"), 2, "the people's two, none more");
}

/// Runs the `forgefleet` binary against `w`'s database and server, as an operator on the same machine would.
fn operator_cli(w: &World, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("forgefleet.toml");
    let text = format!("[store]\npath = {:?}\n\n[api]\noperator_token = {:?}\n", w.fleet.db, support::fleet::OPERATOR);
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(support::binary())
        .args(args)
        .arg("--config")
        .arg(&config)
        .arg("--server")
        .arg(&w.fleet.base)
        .env_remove("FORGEFLEET_SERVER")
        .env_remove("FORGEFLEET_API_OPERATOR_TOKEN")
        .env_remove("FORGEFLEET_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_that_can_never_succeed_becomes_a_dead_letter_the_operator_retries_or_drops() {
    let w = World::new().await;
    let n = w.queued_issue("Gone").await;
    eventually("the labels made at start exist", || async { w.forgejo.labels(REPO).await.len() >= 8 }).await;
    // The repository answers 404 to everything (moved, or deleted and not yet restored).
    w.forgejo.fail_requests_until_healed(404).await;
    w.agent_starts().await;
    w.until_dead_letters(2, 200).await;
    let health = w.outbox();
    assert_eq!((health.dead, health.waiting), (2, 0), "the label and the comment stop trying: {health:?}");
    let tries = w.forgejo.count_requests("GET", &format!("/api/v1/repos/{REPO}/issues/{n}")).await;
    w.fleet.later(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        w.forgejo.count_requests("GET", &format!("/api/v1/repos/{REPO}/issues/{n}")).await,
        tries,
        "a dead letter is not tried again"
    );

    // The operator sees them: `status`, `/metrics`, `outbox list`.
    let status = operator_cli(&w, &["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("2 dead"), "{}", String::from_utf8_lossy(&status.stdout));
    let metrics = w.fleet.http.get(format!("{}/metrics", w.fleet.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("forgefleet_outbox_dead{destination=\"forgejo\"} 2\n"), "{metrics}");
    let listed: serde_json::Value =
        serde_json::from_slice(&operator_cli(&w, &["outbox", "list", "--json"]).stdout).unwrap();
    let rows = listed["outbox"].as_array().unwrap();
    let id_of = |kind: &str| rows.iter().find(|r| r["kind"] == kind).unwrap()["id"].as_i64().unwrap();
    let (label, comment) = (id_of("set_status_label"), id_of("comment"));
    assert!(rows.iter().all(|r| r["dead_at"].is_string() && r["last_error"].as_str().unwrap().contains("404")));
    assert!(rows.iter().all(|r| r["destination"] == "forgejo"), "{listed}");
    let table = String::from_utf8_lossy(&operator_cli(&w, &["outbox", "list"]).stdout).to_string();
    assert!(table.lines().next().unwrap().contains("TO") && table.contains("dead    forgejo"), "{table}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("2 dead (forgejo 2;"));

    // Forgejo is back: the label is retried and goes out; the comment is dropped and never posted.
    w.forgejo.heal().await;
    let retried = operator_cli(&w, &["outbox", "retry", &label.to_string()]);
    assert!(String::from_utf8_lossy(&retried.stdout).contains("(forgejo) is tried again"));
    eventually("doing", || async { w.labels(n).await == ["status:doing"] }).await;
    operator_cli(&w, &["outbox", "drop", &comment.to_string()]);
    let health = w.outbox();
    assert_eq!((health.dead, health.waiting), (0, 0), "{health:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.forgejo.comments(REPO, n).await.is_empty(), "a dropped comment is never posted");

    // What does not apply is refused, with the reason.
    for (path, want) in [
        (format!("/outbox/{label}/retry"), 409),
        (format!("/outbox/{comment}/drop"), 409),
        ("/outbox/999999/retry".to_string(), 404),
        ("/outbox/zero/drop".to_string(), 400),
    ] {
        assert_eq!(w.fleet.operator(Method::POST, &path).await.0.as_u16(), want, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_cancelled_after_its_agent_opened_a_pull_request_gets_it_closed_with_a_comment() {
    let w = World::new().await;
    let n = w.queued_issue("Cancel my pull").await;
    let (_agent, a) = w.agent_starts().await;
    w.forgejo.set_branch(REPO, "main", &"1".repeat(40)).await;
    w.forgejo.set_branch(REPO, &a.branch, &"2".repeat(40)).await;
    w.forgejo.set_branch(REPO, "alice-fix", &"3".repeat(40)).await;
    let agents_pull =
        w.forgejo.create_pull(REPO, BOT, "Fix it", &format!("Fixes #{n}"), &a.branch, &"2".repeat(40), "main").await;
    let persons_pull = w
        .forgejo
        .create_pull(REPO, "alice", "My own", &format!("For #{n}"), "alice-fix", &"3".repeat(40), "main")
        .await;
    w.forgejo.comment(REPO, n, "alice", "/cancel").await;
    eventually("the agent's pull request is closed", || async {
        w.forgejo.pull(REPO, agents_pull).await.state == "closed"
    })
    .await;
    let said = w.forgejo.comments(REPO, agents_pull).await;
    assert!(
        said.iter().any(|c| c.user == BOT && c.body.contains("cancelled") && c.body.contains(&format!("#{n}"))),
        "{said:?}"
    );
    assert_eq!(w.forgejo.pull(REPO, persons_pull).await.state, "open", "a person's pull request stays open");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_attempt_that_continued_an_earlier_branch_gets_that_branchs_pull_request_closed() {
    let w = World::new().await;
    let n = w.queued_issue("Cancel the continued pull").await;
    let (agent, a) = w.agent_starts().await;
    // Attempt 1 pushed, then failed: attempt 2 is assigned its branch and opens the pull request from it.
    let (status, body) = agent
        .post(
            &format!("/tasks/{}/fail", a.task_id),
            json!({"attempt": 1, "class": "agent_error", "pushed_branch": a.branch}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    w.fleet.clock.advance(Duration::from_secs(4000));
    agent.heartbeat(&[]).await;
    let b = agent.pull().await.unwrap();
    assert_eq!((b.attempt, b.branch.as_str()), (2, a.branch.as_str()));
    agent.start(&b).await;
    w.forgejo.set_branch(REPO, "main", &"1".repeat(40)).await;
    w.forgejo.set_branch(REPO, &b.branch, &"2".repeat(40)).await;
    let pull =
        w.forgejo.create_pull(REPO, BOT, "Fix it", &format!("Fixes #{n}"), &b.branch, &"2".repeat(40), "main").await;
    w.forgejo.comment(REPO, n, "alice", "/cancel").await;
    eventually("the continued branch's pull request is closed", || async {
        w.forgejo.pull(REPO, pull).await.state == "closed"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn comment_commands_wait_until_the_bots_login_is_known() {
    // Forgejo cannot say who the bot is when forgefleet starts: serve starts all the same.
    let forgejo = FakeForgejo::start().await;
    forgejo.fail_path_until_healed("/api/v1/user", 503).await;
    let w = World::build_on(forgejo, None, |c| c.forgejo.bot_user = None).await;
    let n = w.queued_issue("Who am I").await;
    // The bot's own comment comes back with a command in it while its login is unknown: it waits, then never runs.
    w.forgejo.comment(REPO, n, BOT, "Attempt 1 did not succeed.\n\n/cancel").await;
    w.forgejo.settle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.tasks().await[0]["state"], "queued");
    w.forgejo.heal().await;
    w.forgejo.comment(REPO, n, "alice", "/fleet status").await;
    eventually("forgefleet knows its login", || async {
        w.forgejo.requests().await.iter().any(|r| r.path == "/api/v1/user" && r.status == 200)
    })
    .await;
    // The held commands are tried again when their wait is over.
    w.fleet.clock.advance(Duration::from_secs(60));
    bot_reply(&w, n, "Fleet status").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.tasks().await[0]["state"], "queued", "the bot's own /cancel never ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_delivery_never_lands_on_a_different_issue_with_the_same_number() {
    let w = World::new().await;
    let n = w.queued_issue("The first #1").await;
    let old_id = w.client().issue(&RepoName::parse(REPO).unwrap(), n).await.unwrap().id;
    // Forgejo is down while the agent starts: "doing" and "started" are held.
    w.forgejo.fail_requests_until_healed(503).await;
    w.agent_starts().await;
    eventually("the first delivery failed", || async { w.outbox().failing > 0 }).await;
    // Meanwhile the repository is deleted and made again, and someone opens a new #1 in it.
    w.forgejo.recreate_repo(REPO).await;
    w.forgejo.set_permission(REPO, BOT, "admin").await;
    w.forgejo.create_label(REPO, "status:doing", "#fbca04", "", false).await;
    let again = w.forgejo.create_issue(REPO, "alice", "Someone else's #1", "", &[]).await;
    assert_eq!(again, n);
    // Back up; the held deliveries come due only when the clock moves on.
    w.forgejo.heal().await;
    let new_id = w.client().issue(&RepoName::parse(REPO).unwrap(), n).await.unwrap().id;
    assert_ne!(old_id, new_id, "Forgejo ids are never reused");
    w.until_dead_letters(2, 100).await;
    let health = w.outbox();
    assert_eq!((health.dead, health.waiting), (2, 0), "both held deliveries are dead letters: {health:?}");
    let listed = forgefleet::store::Store::open_read_only(&w.fleet.db).unwrap().read().outbox_list(10).unwrap();
    assert!(listed.iter().all(|r| r.last_error.as_deref().unwrap_or("").contains("different issue")), "{listed:?}");
    assert!(w.forgejo.comments(REPO, n).await.is_empty(), "no comment on the stranger's issue");
    assert!(w.labels(n).await.is_empty(), "no label on the stranger's issue");
}

/// A Matrix deliverer that sends each row as a real `PUT /send` to `url`, and records which rows it was asked
/// to deliver, in order. Its own backoff is a fixed 30 s, unlike Forgejo's doubling one.
struct TestHomeserver {
    http: reqwest::Client,
    url: String,
    tried: Mutex<Vec<i64>>,
}

impl TestHomeserver {
    fn at(url: String) -> Arc<TestHomeserver> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        Arc::new(TestHomeserver { http, url, tried: Mutex::default() })
    }

    /// A homeserver that is down: a port that was free a moment ago and is closed now refuses connections.
    fn down() -> Arc<TestHomeserver> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::at(format!("http://127.0.0.1:{port}"))
    }

    /// A homeserver that rate-limits every send, as Synapse does: 429 with `retry_after_ms`.
    async fn busy(retry_after_ms: u64) -> Arc<TestHomeserver> {
        let limited = axum::Router::new().fallback(move || async move {
            let body =
                json!({"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests", "retry_after_ms": retry_after_ms});
            (axum::http::StatusCode::TOO_MANY_REQUESTS, axum::Json(body))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, limited).await.unwrap() });
        Self::at(url)
    }

    fn tried(&self) -> Vec<i64> {
        self.tried.lock().unwrap().clone()
    }
}

impl Deliver for TestHomeserver {
    fn deliver<'a>(&'a self, row: &'a OutboxRow) -> Delivery<'a> {
        Box::pin(async move {
            self.tried.lock().unwrap().push(row.id);
            let url = format!("{}/_matrix/client/v3/rooms/!fleet:test/send/m.room.message/ff-{}", self.url, row.id);
            let answer = self.http.put(url).body(row.payload.clone()).send().await;
            match answer {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    match body["retry_after_ms"].as_u64() {
                        Some(ms) => Err(DeliveryError::Throttled {
                            message: "the homeserver is rate-limiting".into(),
                            retry_after: Duration::from_millis(ms),
                        }),
                        None => Err(DeliveryError::Other("the homeserver answered 429".into())),
                    }
                }
                Ok(r) => Err(DeliveryError::Other(format!("the homeserver answered {}", r.status()))),
                Err(e) => Err(DeliveryError::Other(format!("the homeserver is unreachable: {e}"))),
            }
        })
    }

    fn backoff(&self, _attempts: u32) -> Duration {
        Duration::from_secs(30)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_homeserver_that_is_down_never_holds_back_a_label_write_and_each_destination_keeps_its_order() {
    let homeserver = TestHomeserver::down();
    let w = World::with_matrix(homeserver.clone()).await;
    let n = w.queued_issue("Notify the room").await;
    let issue = format!("{REPO}#{n}");
    // Two messages about the issue, written before anything Forgejo gets about it.
    let first = w.fleet.enqueue_for_matrix(&issue, "assigned");
    let second = w.fleet.enqueue_for_matrix(&issue, "started");
    eventually("the homeserver is tried", || async { homeserver.tried().contains(&first) }).await;

    w.agent_starts().await;
    eventually("the label moves to doing", || async { w.labels(n).await == ["status:doing"] }).await;
    let matrix = |id: i64| w.fleet.outbox_list().into_iter().find(|e| e.id == id).unwrap();
    eventually("every Forgejo write is delivered", || async {
        w.fleet.outbox_list().iter().all(|e| e.destination == "matrix")
    })
    .await;

    // Time passes: the first message is tried again every 30 s (its destination's own backoff), and the second
    // waits behind it.
    for _ in 0..6 {
        let before = matrix(first).attempts;
        w.fleet.later(Duration::from_secs(30));
        eventually("the first message is retried", || async { matrix(first).attempts > before }).await;
    }
    let (a, b) = (matrix(first), matrix(second));
    assert!(a.attempts >= 7 && a.dead_at.is_none(), "a homeserver that is down is waited for, never given up: {a:?}");
    let now = forgefleet::engine::Clock::now(&w.fleet.clock);
    assert_eq!(a.next_attempt_at.0 - now.0, 30_000, "the Matrix worker's own backoff");
    assert!(a.last_error.as_deref().unwrap().contains("unreachable"), "{a:?}");
    assert_eq!((b.attempts, b.last_error.as_deref()), (0, None), "the second message keeps its place: {b:?}");
    assert!(!homeserver.tried().contains(&second), "never sent before the first: {:?}", homeserver.tried());
    assert!(w.outbox().worst.is_some_and(|d| d.id == first && d.destination == "matrix"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_matrix_worker_matrix_rows_wait_untouched_and_forgejo_is_delivered() {
    let w = World::new().await;
    let n = w.queued_issue("No room configured").await;
    let message = w.fleet.enqueue_for_matrix(&format!("{REPO}#{n}"), "assigned");
    w.agent_starts().await;
    eventually("the label moves to doing", || async { w.labels(n).await == ["status:doing"] }).await;
    w.fleet.later(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = w.fleet.outbox_list();
    assert_eq!(rows.len(), 1, "only the message waits: {rows:?}");
    let row = &rows[0];
    assert_eq!((row.id, row.destination.as_str()), (message, "matrix"));
    assert_eq!((row.attempts, row.last_error.as_deref(), row.dead_at), (0, None, None), "nobody took it: {row:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_homeserver_that_asks_to_wait_is_tried_again_after_the_wait_it_asked_for() {
    let homeserver = TestHomeserver::busy(7_000).await;
    let w = World::with_matrix(homeserver.clone()).await;
    let n = w.queued_issue("A busy room").await;
    let message = w.fleet.enqueue_for_matrix(&format!("{REPO}#{n}"), "assigned");
    let row = || w.fleet.outbox_list().into_iter().find(|e| e.id == message).unwrap();
    eventually("the homeserver is tried", || async { row().attempts == 1 }).await;
    let (row, now) = (row(), forgefleet::engine::Clock::now(&w.fleet.clock));
    assert_eq!(
        row.next_attempt_at.0 - now.0,
        7_000,
        "the wait the homeserver asked for, not the 30 s backoff: {row:?}"
    );
    assert!(row.last_error.as_deref().unwrap().contains("asked to wait 7000 ms"), "{row:?}");
    assert_eq!(homeserver.tried(), [message]);
}
