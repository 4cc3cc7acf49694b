//! `forgefleet agent`, the runner on an agent host, end to end: the real binary with the `command` adapter,
//! against an in-process forgefleet, the fake Forgejo (pull requests opened through its API) and real git
//! over smart HTTP. The runner clones, runs the command in a worktree, commits what it left, pushes, opens
//! the pull request and hands in the receipt; forgefleet checks it all before the task is completed.

mod support;

use std::process::Command;

use reqwest::Method;
use support::eventually;
use support::runner::{AGENT_USER, REPO, World, alive, pids_with};

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_host_turns_a_labelled_issue_into_a_checked_pull_request() {
    let w = World::new(|_| {}).await;
    let (issue, task) = w.queued("Greet the world").await;
    // The command reads its prompt, leaves a new file uncommitted, and ends with its summary.
    let agent = w.agent(
        "read -r first; echo \"prompt: $first\"; echo hello > greeting.txt; echo \"issue $FORGEFLEET_ISSUE\"; \
         echo \"token: ${FORGEFLEET_AGENT_FORGEJO_TOKEN:-none}\"; \
         echo 'Added a greeting.'",
    );
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;

    let detail = w.task(task).await;
    let t = &detail["task"];
    let pr = t["receipt"]["pr_number"].as_u64().unwrap();
    let head = t["receipt"]["head_sha"].as_str().unwrap().to_string();
    assert_eq!(t["receipt"]["summary"], "Added a greeting.");
    assert!(t["validation"]["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true), "{t}");
    let files: Vec<&str> =
        t["validation"]["files"].as_array().unwrap().iter().filter_map(|f| f["path"].as_str()).collect();
    assert_eq!(files, ["greeting.txt"]);

    // The pull request: opened by the agent's Forgejo user from the attempt's branch, pointing at the issue.
    let pull = w.forgejo.pull(REPO, pr).await;
    assert_eq!(pull.head_ref, format!("forgefleet/issue-{issue}-attempt-1"));
    assert_eq!(pull.head_sha, head);
    assert_eq!(w.repo.remote_ref(&format!("refs/heads/forgefleet/issue-{issue}-attempt-1")), Some(head.clone()));
    let pr_issue = w.forgejo.issue(REPO, pr).await;
    assert!(pr_issue.body.contains(&format!("Fixes #{issue}")), "{}", pr_issue.body);
    assert_eq!(pr_issue.user, AGENT_USER);

    // The runner's commit holds what the command left, with the issue in its message.
    let bare = w.root.path().join("git").join(format!("{REPO}.git"));
    let message = support::git::git(&bare, &["log", "-1", "--format=%an <%ae>%n%B", &head]);
    assert!(message.starts_with("forgefleet agent a1 <a1@agents.forgefleet.invalid>"), "{message}");
    assert!(message.contains(&format!("Greet the world (#{issue})")), "{message}");

    // The prompt reached the command, and its output came back as progress.
    let progress: Vec<&str> =
        detail["progress"].as_array().unwrap().iter().filter_map(|p| p["line"].as_str()).collect();
    assert!(
        progress.contains(&format!("prompt: Resolve issue #{issue} of {REPO}: Greet the world").as_str()),
        "{progress:?}"
    );
    assert!(progress.contains(&format!("issue {issue}").as_str()), "{progress:?}");
    assert!(progress.contains(&"token: none"), "the Forgejo token leaked to the agent: {progress:?}");
    // The attempt's checkout is gone once the work is handed in.
    eventually("the checkout is removed", || async {
        std::fs::read_dir(w.root.path().join("agent/work/attempts")).unwrap().count() == 0
    })
    .await;
    // Every line the runner logged, its tasks' included, carries its name: a host may run several runners.
    let log = support::strip_ansi(&agent.log());
    let line = log.lines().find(|l| l.contains("receipt submitted")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("runner{agent=a1}"), "{line}");
    let unnamed: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty() && !l.contains("runner{agent=a1}")).collect();
    assert!(unnamed.is_empty(), "lines without the runner's name: {unnamed:#?}");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receipt_check_and_the_issue_updates_do_not_wait_for_a_poll() {
    // An hour between polls: only being woken by the new events lets forgefleet act within the test's time.
    let w = World::polling(std::time::Duration::from_secs(3600), |_| {}).await;
    let (issue, task) = w.queued("No waiting").await;
    let _agent = w.agent("echo hi > hi.txt; echo 'Said hi.'");
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    eventually("the issue says so", || async {
        w.forgejo.issue(REPO, issue).await.labels.iter().any(|l| l == "status:done")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_slots_work_on_two_issues_of_one_repository_at_once() {
    let w = World::new(|_| {}).await;
    let (first, one) = w.queued("First").await;
    let (second, two) = w.queued("Second").await;
    // Each waits (in its own sandbox, which sees nothing of the other) until the test has seen both start, so
    // the two really overlap (fetch, worktrees, pushes included).
    let script = "touch started; while [ ! -e go ]; do sleep 0.05; done; rm -f started go; \
                  echo $FORGEFLEET_ISSUE > issue-$FORGEFLEET_ISSUE.txt; echo \"Did #$FORGEFLEET_ISSUE.\"";
    let sections = format!("max_concurrency = 2\n\n[command]\nrun = [\"sh\", \"-c\", {script:?}]\n");
    let _agent = w.agent_with(&sections, "command", &[]);
    eventually("both agents run at once", || async { w.checkouts_with("started").len() == 2 }).await;
    for checkout in w.checkouts() {
        std::fs::write(checkout.join("go"), "").unwrap();
    }
    for task in [one, two] {
        eventually("both tasks are completed", || async { w.state(task).await == "completed" }).await;
    }
    for (issue, task) in [(first, one), (second, two)] {
        let t = w.task(task).await;
        let files: Vec<&str> =
            t["task"]["validation"]["files"].as_array().unwrap().iter().filter_map(|f| f["path"].as_str()).collect();
        assert_eq!(files, [format!("issue-{issue}.txt")], "each pull request has its own work only");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_command_fails_the_attempt_with_its_last_words() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (_, task) = w.queued("Break").await;
    let _agent = w.agent("echo working; echo 'cargo: no such subcommand' >&2; exit 3");
    eventually("the task failed", || async { w.state(task).await == "failed" }).await;
    let t = w.task(task).await;
    let failure = &t["task"]["last_failure"];
    assert_eq!(failure["class"], "agent_error", "{failure}");
    let message = failure["message"].as_str().unwrap();
    assert!(message.contains("exit status 3") && message.contains("cargo: no such subcommand"), "{message}");
    assert!(w.forgejo.count_requests("POST", &format!("/api/v1/repos/{REPO}/pulls")).await == 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_changes_nothing_opens_no_pull_request() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (_, task) = w.queued("Nothing to do").await;
    let _agent = w.agent("echo 'All good already.'");
    eventually("the task failed", || async { w.state(task).await == "failed" }).await;
    let t = w.task(task).await;
    assert!(t["task"]["last_failure"]["message"].as_str().unwrap().contains("without changing anything"), "{t}");
    assert_eq!(w.forgejo.count_requests("POST", &format!("/api/v1/repos/{REPO}/pulls")).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_task_stops_the_agent_and_everything_it_started() {
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Long job").await;
    // A background job, a double-forked daemon (no longer a child of the shell) and the shell itself.
    let _agent = w.agent("sleep 3011 & (sleep 3011 &) ; touch started; wait");
    eventually("the command runs", || async { w.checkouts_with("started").len() == 1 }).await;
    let before = pids_with("sleep 3011");
    assert!(before.len() >= 3, "the shell, its job and the daemon: {before:?}");
    let (status, body) = w.fleet.operator(Method::POST, &format!("/tasks/{task}/cancel")).await;
    assert_eq!(status, 200, "{body}");
    eventually("the shell, its sleeps and the sandbox are gone", || async { pids_with("sleep 3011").is_empty() }).await;
    assert_eq!(w.state(task).await, "cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_silent_past_the_idle_timeout_is_stopped_and_fails() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (_, task) = w.queued("Hangs quietly").await;
    // Keys before the first table header belong to [agent].
    let script = "echo thinking; echo 'warning: Connection failed' >&2; sleep 3012";
    let sections = format!("idle_timeout_secs = 2\n\n[command]\nrun = [\"sh\", \"-c\", {script:?}]\n");
    let _agent = w.agent_with(&sections, "command", &[]);
    eventually("the agent runs", || async { !pids_with("sleep 3012").is_empty() }).await;
    eventually("the task failed", || async { w.state(task).await == "failed" }).await;
    let t = w.task(task).await;
    let message = t["task"]["last_failure"]["message"].as_str().unwrap();
    assert!(message.contains("printed nothing for 2 s"), "{message}");
    assert!(
        message.ends_with("its last line: warning: Connection failed"),
        "the CLI's last warning is kept: {message}"
    );
    eventually("the agent is gone", || async { pids_with("sleep 3012").is_empty() }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_agent_host_hands_its_task_back_at_once() {
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Interrupted").await;
    let mut agent = w.agent("touch started; sleep 3013");
    eventually("the command runs", || async { w.checkouts_with("started").len() == 1 }).await;
    assert_eq!(w.state(task).await, "running");
    let status = agent.terminate();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert_eq!(w.state(task).await, "queued", "deregistering re-queues the task");
    assert!(agent.log().contains("deregistered"), "{}", agent.log());
    assert!(pids_with("sleep 3013").is_empty(), "the agent outlived its runner");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_killed_mid_task_takes_its_sandboxed_agent_with_it_and_gets_the_task_back() {
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Survive a crash").await;
    let mut first = w.agent("touch started; sleep 3014");
    eventually("the first run works on it", || async { w.checkouts_with("started").len() == 1 }).await;
    first.kill();
    // bubblewrap's --die-with-parent: nothing of the sandbox outlives the runner that started it.
    eventually("the agent died with its runner", || async { pids_with("sleep 3014").is_empty() }).await;
    let _second = w.agent("echo fixed > fix.txt; echo 'Fixed after a restart.'");
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let t = w.task(task).await;
    assert_eq!(t["task"]["attempt"], 2, "{t}");
    assert_eq!(t["task"]["last_failure"]["class"], "agent_lost", "{t}");
    eventually("the old worktree is removed", || async { w.checkouts().is_empty() }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_sandbox_a_restarted_runner_stops_the_agent_its_killed_predecessor_left() {
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Survive a crash").await;
    let started = w.root.path().join("started");
    // The first run hangs; after a restart the same command finds its marker and finishes the work.
    let script = format!(
        "if [ -e {m}.done ]; then echo fixed > fix.txt; echo 'Fixed after a restart.'; \
         else touch {m}.done; echo $$ > {m}; sleep 300; fi",
        m = started.display()
    );
    let sections = format!("sandbox = \"none\"\n\n[command]\nrun = [\"sh\", \"-c\", {script:?}]\n");
    let mut first = w.agent_with(&sections, "command", &[]);
    eventually("the first run works on it", || async {
        std::fs::read_to_string(&started).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    assert!(first.log().contains("sandbox = \"none\""), "the start warns: {}", first.log());
    let orphan: i32 = std::fs::read_to_string(&started).unwrap().trim().parse().unwrap();
    // Whatever happens below, the orphaned agent does not outlive the test.
    let _reaper = Reaper(orphan);
    // The runner records the agent's process group just after it starts it; a kill in between (a window a
    // busy machine can stretch) leaves nothing for the next runner to find.
    let pids = w.root.path().join("agent/work/pids");
    eventually("the runner recorded the agent's process group", || async {
        std::fs::read_dir(&pids)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|s| s.trim().parse::<i32>() == Ok(orphan)))
    })
    .await;
    first.kill();
    assert!(alive(orphan), "a runner killed outright cannot stop an unsandboxed agent");
    let _second = w.agent_with(&sections, "command", &[]);
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let t = w.task(task).await;
    assert_eq!(t["task"]["attempt"], 2, "{t}");
    assert_eq!(t["task"]["last_failure"]["class"], "agent_lost", "{t}");
    eventually("the new runner stopped the agent the old one left", || async { !alive(orphan) }).await;
    // The runner removes the checkout after handing in the receipt, which may complete the task first.
    eventually("the checkouts are removed", || async {
        std::fs::read_dir(w.root.path().join("agent/work/attempts")).unwrap().count() == 0
    })
    .await;
}

/// Kills a process group when dropped.
struct Reaper(i32);

impl Drop for Reaper {
    fn drop(&mut self) {
        unsafe { libc::killpg(self.0, libc::SIGKILL) };
    }
}

#[test]
fn a_broken_agent_configuration_names_each_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[agent]\nname = \"a 1\"\nserver = \"fleet:8080\"\nmax_concurrency = 0\n").unwrap();
    let out = Command::new(support::binary())
        .args(["agent", "--config"])
        .arg(&config)
        .env_remove("FORGEFLEET_AGENT_REGISTRATION_TOKEN")
        .env_remove("FORGEFLEET_AGENT_FORGEJO_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "agent.name",
        "agent.server",
        "agent.registration_token",
        "agent.forgejo_token",
        "agent.max_concurrency",
        "command.run",
    ] {
        assert!(err.contains(key), "{key} not in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgejo_outage_when_opening_the_pull_request_does_not_lose_the_pushed_work() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (issue, task) = w.queued("Outage").await;
    // The agent sees only its checkout (the sandbox): it signals there, and waits there for the go.
    let _agent = w.agent(
        "touch started; while [ ! -e go ]; do sleep 0.05; done; rm -f started go; echo done > done.txt; \
         echo 'Done despite Forgejo.'",
    );
    eventually("the agent runs", || async { w.checkouts_with("started").len() == 1 }).await;
    // Forgejo's API fails (git still works) from before the push until 3 s after it refused the pull request:
    // longer than the Forgejo client's own few quick retries.
    w.forgejo.fail_requests_until_healed(503).await;
    std::fs::write(w.checkouts_with("started")[0].join("go"), "").unwrap();
    let pulls = format!("/api/v1/repos/{REPO}/pulls");
    let refused = || async {
        w.forgejo.requests().await.iter().filter(|r| r.method == "POST" && r.path == pulls && r.status == 503).count()
    };
    eventually("the runner was refused", || async { refused().await >= 1 }).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    w.forgejo.heal().await;
    eventually("the task ends", || async { matches!(w.state(task).await.as_str(), "completed" | "failed") }).await;
    let t = w.task(task).await;
    assert_eq!(t["task"]["state"], "completed", "{t}");
    assert_eq!(t["task"]["attempt"], 1, "no retry was spent: {t}");
    let pr = t["task"]["receipt"]["pr_number"].as_u64().unwrap();
    assert_eq!(w.forgejo.pull(REPO, pr).await.head_ref, format!("forgefleet/issue-{issue}-attempt-1"));
    let opened =
        w.forgejo.requests().await.iter().filter(|r| r.method == "POST" && r.path == pulls && r.status < 300).count();
    assert_eq!(opened, 1, "one pull request opened");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_whose_branch_was_pushed_before_builds_on_it() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (issue, task) = w.queued("Pushed before").await;
    // The assigned branch already holds work (an earlier run of this attempt pushed it, then lost the answer).
    let branch = format!("forgefleet/issue-{issue}-attempt-1");
    w.repo.git(&["checkout", "-q", "-b", &branch]);
    let earlier = w.repo.commit(&[("earlier.txt", "pushed before\n")], "Earlier work");
    w.repo.push(&branch);
    w.repo.git(&["checkout", "-q", "main"]);
    let _agent = w.agent("test -e earlier.txt && echo more > more.txt; echo 'Continued.'");
    eventually("the task ends", || async { matches!(w.state(task).await.as_str(), "completed" | "failed") }).await;
    let t = w.task(task).await;
    assert_eq!(t["task"]["state"], "completed", "{t}");
    let head = t["task"]["receipt"]["head_sha"].as_str().unwrap().to_string();
    let bare = w.root.path().join("git").join(format!("{REPO}.git"));
    let parent = support::git::git(&bare, &["rev-parse", &format!("{head}^")]);
    assert_eq!(parent.trim(), earlier, "the earlier push is kept, not overwritten");
    let files = support::git::git(&bare, &["diff", "--name-only", "main", &head]);
    assert_eq!(files.lines().collect::<Vec<_>>(), ["earlier.txt", "more.txt"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_next_attempt_continues_the_branch_a_failed_attempt_pushed() {
    let w = World::new(|c| {
        c.retry.agent_error.max_retries = 1;
        c.retry.agent_error.base_secs = 1;
    })
    .await;
    let (issue, task) = w.queued("Pushed, then Forgejo went away").await;
    let pulls = format!("/api/v1/repos/{REPO}/pulls");
    // Opening (and listing) pull requests fails for longer than the runner's patience; git still works.
    w.forgejo.fail_path_until_healed(&pulls, 503).await;
    let script = "if [ -e first.txt ]; then echo second > second.txt; echo 'Continued.'; \
                  else echo first > first.txt; echo 'First go.'; fi";
    let sections = format!("pull_request_patience_secs = 1\n\n[command]\nrun = [\"sh\", \"-c\", {script:?}]\n");
    let agent = w.agent_with(&sections, "command", &[]);
    eventually("attempt 1 gives up on the pull request", || async { w.task(task).await["task"]["attempt"] == 2 }).await;
    let first_branch = format!("forgefleet/issue-{issue}-attempt-1");
    let pushed = w.repo.remote_ref(&format!("refs/heads/{first_branch}")).expect("attempt 1 pushed its work");
    let t = w.task(task).await;
    assert_eq!(t["task"]["pushed_branch"], first_branch.as_str(), "{t}");
    let failed = t["events"].as_array().unwrap().iter().find(|e| e["type"] == "attempt_failed").unwrap().clone();
    assert_eq!(failed["pushed_branch"], first_branch.as_str(), "{failed}");
    assert!(failed["message"].as_str().unwrap().contains("opening the pull request"), "{failed}");
    w.forgejo.heal().await;
    // Past the retry's backoff (forgefleet's clock is the test's).
    w.fleet.later(std::time::Duration::from_secs(2));

    eventually("the task ends", || async { matches!(w.state(task).await.as_str(), "completed" | "failed") }).await;
    let t = w.task(task).await;
    assert_eq!(t["task"]["state"], "completed", "{t}\n{}", agent.log());
    assert_eq!(t["task"]["attempt"], 2, "{t}");
    let pr = t["task"]["receipt"]["pr_number"].as_u64().unwrap();
    assert_eq!(w.forgejo.pull(REPO, pr).await.head_ref, first_branch, "attempt 2 worked on attempt 1's branch");
    let head = t["task"]["receipt"]["head_sha"].as_str().unwrap().to_string();
    let bare = w.root.path().join("git").join(format!("{REPO}.git"));
    let parent = support::git::git(&bare, &["rev-parse", &format!("{head}^")]);
    assert_eq!(parent.trim(), pushed, "attempt 2 builds on attempt 1's commit");
    let files = support::git::git(&bare, &["diff", "--name-only", "main", &head]);
    assert_eq!(files.lines().collect::<Vec<_>>(), ["first.txt", "second.txt"]);
    assert_eq!(w.repo.remote_ref(&format!("refs/heads/forgefleet/issue-{issue}-attempt-2")), None, "no fresh branch");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_question_the_agent_leaves_blocks_the_task_and_nothing_is_pushed() {
    let w = World::new(|_| {}).await;
    let (issue, task) = w.queued("Use the API").await;
    // The command does some work, then finds it cannot go on without a person: it writes its question.
    let agent = w.agent(
        "echo half > half.txt; mkdir -p .forgefleet; \
         printf 'Should the client call the v1 or the v2 API?\\n' > .forgefleet/question.md; echo 'Stuck.'",
    );
    eventually("the task is blocked", || async { w.state(task).await == "blocked" }).await;
    let t = w.task(task).await["task"].clone();
    assert_eq!(t["question"]["text"], "Should the client call the v1 or the v2 API?", "{t}");
    assert_eq!((t["question"]["attempt"].as_u64(), &t["receipt"]), (Some(1), &serde_json::Value::Null), "{t}");
    // Nothing was pushed and no pull request opened: the work waits for the answer.
    assert_eq!(w.repo.remote_ref(&format!("refs/heads/forgefleet/issue-{issue}-attempt-1")), None);
    assert_eq!(w.forgejo.count_requests("POST", &format!("/api/v1/repos/{REPO}/pulls")).await, 0);
    eventually("the issue says status:blocked", || async {
        w.forgejo.issue(REPO, issue).await.labels == ["status:blocked"]
    })
    .await;
    eventually("the checkout is removed", || async {
        std::fs::read_dir(w.root.path().join("agent/work/attempts")).unwrap().count() == 0
    })
    .await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_question_file_is_no_question_and_is_never_committed() {
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Greet").await;
    let _agent = w.agent("echo hi > hi.txt; mkdir -p .forgefleet; : > .forgefleet/question.md; echo 'Said hi.'");
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let t = w.task(task).await["task"].clone();
    let files: Vec<&str> =
        t["validation"]["files"].as_array().unwrap().iter().filter_map(|f| f["path"].as_str()).collect();
    assert_eq!(files, ["hi.txt"], "the question file is the runner's, never part of the work");
}
