//! A completed task's pull request that stops merging because its base branch moved: reconciliation reads
//! Forgejo's `mergeable` (the fake computes it with `git merge-tree` on the linked repository), twice, and the
//! engine decides once per head: with `auto_rebase` a round in which the agent merges the base in, else a
//! comment on the issue. The runner is the real `forgefleet agent` with a script for an agent.

mod support;

use std::sync::Arc;

use forgefleet::config::Secret;
use forgefleet::core::RepoName;
use forgefleet::integrations::forgejo::ForgejoClient;
use forgefleet::integrations::forgejo::mergeable::{MergeWatch, RECHECK_AFTER};
use serde_json::Value;
use support::eventually;
use support::runner::{BOT_TOKEN, REPO, World};

/// The agent: a first attempt adds `greeting.txt`; a checkout whose `origin/main` is not in its history (a
/// round after the base moved) merges it, keeping its own side of any conflict, and commits the merge.
const AGENT: &str = "if git merge-base --is-ancestor origin/main HEAD; then \
       echo hello > greeting.txt; echo 'Added a greeting.'; \
     else \
       git merge -q --no-edit origin/main >/dev/null 2>&1 || { git checkout --ours greeting.txt && git add greeting.txt && git commit -q --no-edit; }; \
       echo \"merged: $(git log -1 --format=%P | wc -w) parents\"; echo 'Merged main, kept the greeting.'; \
     fi";

/// Reconciliation's look at the open pull requests, as `serve` runs it, on the test's clock.
struct Look {
    watch: MergeWatch,
    client: ForgejoClient,
    reads: forgefleet::store::ReadPool,
}

impl Look {
    fn new(w: &World) -> Look {
        Look {
            watch: MergeWatch::new(Arc::new(w.fleet.clock.clone())),
            client: ForgejoClient::new(w.forgejo.url(), Secret::new(BOT_TOKEN), None).unwrap(),
            reads: forgefleet::store::ReadPool::new(w.fleet.db.clone()),
        }
    }

    /// Two reads, [`RECHECK_AFTER`] apart on the clock: how many pull requests were handed to the engine.
    async fn twice(&self, w: &World) -> usize {
        let repo = RepoName::parse(REPO).unwrap();
        let first = self.watch.look(&self.client, &w.fleet.engine, &self.reads, &repo).await.unwrap();
        w.fleet.later(RECHECK_AFTER);
        first + self.watch.look(&self.client, &w.fleet.engine, &self.reads, &repo).await.unwrap()
    }
}

/// The task completed once by the script agent; answers (task, issue, pull request, verified head).
async fn completed(w: &World) -> (u64, u64, u64, String) {
    let (issue, task) = w.queued("Greet the world").await;
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let receipt = w.task(task).await["task"]["receipt"].clone();
    (task, issue, receipt["pr_number"].as_u64().unwrap(), receipt["head_sha"].as_str().unwrap().to_string())
}

/// Someone pushes to `main` a greeting of their own (and a file besides): the pull request conflicts.
fn conflicting_push_to_main(w: &World) {
    w.repo.checkout("main");
    w.repo.commit(&[("greeting.txt", "good morning\n"), ("NEWS.md", "news\n")], "Another greeting");
    w.repo.push("main");
}

fn events_of(task: &Value, kind: &str) -> usize {
    task["events"].as_array().unwrap().iter().filter(|e| e["type"] == kind).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auto_rebase_a_conflicted_pull_request_gets_one_round_that_merges_the_base_in() {
    let w = World::new(|c| c.forgejo.auto_rebase = true).await;
    let _agent = w.agent(AGENT);
    let (task, _, pr, verified) = completed(&w).await;
    let look = Look::new(&w);
    assert_eq!(look.twice(&w).await, 0, "a pull request that merges is left alone");

    conflicting_push_to_main(&w);
    assert!(!w.forgejo.pull(REPO, pr).await.mergeable, "the fake sees the conflict");
    let repo = RepoName::parse(REPO).unwrap();
    assert_eq!(
        look.watch.look(&look.client, &w.fleet.engine, &look.reads, &repo).await.unwrap(),
        0,
        "one read is not enough"
    );
    assert_eq!(w.state(task).await, "completed");
    w.fleet.later(RECHECK_AFTER);
    assert_eq!(look.watch.look(&look.client, &w.fleet.engine, &look.reads, &repo).await.unwrap(), 1);

    let detail = w.task(task).await;
    let t = &detail["task"];
    assert_eq!(t["conflict"]["then"]["merge"]["round"], 1, "{t}");
    assert_eq!(t["follow_up"]["by"], "forgefleet");
    assert_eq!(t["follow_up"]["verified_head"], verified.as_str());
    eventually("the merging round is completed", || async {
        let t = w.task(task).await["task"].clone();
        t["state"] == "completed" && t["attempt"] == 2
    })
    .await;
    let detail = w.task(task).await;
    let t = &detail["task"];
    assert_eq!(t["receipt"]["pr_number"], pr, "the same pull request");
    let checks = t["validation"]["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["passed"] == true), "{t}");
    assert!(checks.iter().any(|c| c["name"] == "builds_on_verified_head"), "{t}");
    let progress: Vec<&str> =
        detail["progress"].as_array().unwrap().iter().filter_map(|p| p["line"].as_str()).collect();
    assert!(progress.contains(&"merged: 2 parents"), "a merge, not a rebase: {progress:?}");
    let pull = w.forgejo.pull(REPO, pr).await;
    assert_eq!(pull.head_sha, t["receipt"]["head_sha"].as_str().unwrap());
    assert!(pull.mergeable, "the pull request merges again");

    // The next passes find nothing to do: no second round.
    assert_eq!(look.twice(&w).await, 0);
    let detail = w.task(task).await;
    assert_eq!((detail["task"]["attempt"].as_u64(), events_of(&detail, "pull_conflicted")), (Some(2), 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auto_rebase_a_conflicted_pull_request_is_told_once_and_the_decision_survives_a_restart_and_a_rebuild()
{
    let mut w = World::new(|_| {}).await;
    let _agent = w.agent(AGENT);
    let (task, issue, pr, _) = completed(&w).await;
    conflicting_push_to_main(&w);
    let look = Look::new(&w);
    assert_eq!(look.twice(&w).await, 1);
    let conflict_comments = async || {
        let comments = w.forgejo.comments(REPO, issue).await;
        comments.iter().filter(|c| c.body.contains("no longer merges")).map(|c| c.body.clone()).collect::<Vec<_>>()
    };
    eventually("the issue is told", || async { !conflict_comments().await.is_empty() }).await;
    let told = conflict_comments().await;
    assert!(told[0].contains(&format!("#{pr}")) && told[0].contains("auto_rebase"), "{told:?}");
    let detail = w.task(task).await;
    assert_eq!((detail["task"]["state"].as_str(), detail["task"]["attempt"].as_u64()), (Some("completed"), Some(1)));
    assert_eq!(detail["task"]["conflict"]["then"], "tell");

    // Later passes see the same conflicting head: nothing more is said.
    assert_eq!(look.twice(&w).await, 0);
    assert_eq!(look.twice(&w).await, 0);
    assert_eq!(events_of(&w.task(task).await, "pull_conflicted"), 1, "decided once");
    assert_eq!(conflict_comments().await.len(), 1);

    // The server goes down (its workers and engine stopped mid-flight), the store is rebuilt from the log with
    // every task row unchanged, and a new server, whose reconciliation remembers no earlier read, starts.
    w.fleet.stop_serving().await;
    let db = w.fleet.db.clone();
    let rows = || -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut stmt = conn.prepare("SELECT state, data FROM tasks ORDER BY id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let before = rows();
    assert!(before[0].1.contains("\"conflict\""), "{before:?}");
    support::rebuild_store(&db);
    assert_eq!(rows(), before);
    w.fleet.start_again().await;
    let look = Look::new(&w);
    assert_eq!(look.twice(&w).await, 0, "the head was decided before the restart");
    let detail = w.task(task).await;
    assert_eq!((events_of(&detail, "pull_conflicted"), detail["task"]["conflict"]["then"].as_str()), (1, Some("tell")));
    assert_eq!(conflict_comments().await.len(), 1);
}
