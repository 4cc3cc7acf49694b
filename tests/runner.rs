//! `forgefleet agent`, the runner on an agent host, end to end: the real binary with the `command` adapter,
//! against an in-process forgefleet, the fake Forgejo (pull requests opened through its API) and real git
//! over smart HTTP. The runner clones, runs the command in a worktree, commits what it left, pushes, opens
//! the pull request and hands in the receipt; forgefleet checks it all before the task is completed.

mod support;

use std::process::Command;

use reqwest::Method;
use support::eventually;
use support::runner::{AGENT_USER, REPO, World, alive};

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
    // The worktree is gone once the work is handed in.
    eventually("the worktree is removed", || async {
        std::fs::read_dir(w.root.path().join("agent/work/worktrees")).map(|d| d.count() == 0).unwrap_or(true)
    })
    .await;
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
    let marks = w.root.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // Each waits until both have started, so the two really overlap (fetch, worktrees, pushes included).
    let script = format!(
        "touch {m}/$FORGEFLEET_ISSUE; while [ $(ls {m} | wc -l) -lt 2 ]; do sleep 0.05; done; \
         echo $FORGEFLEET_ISSUE > issue-$FORGEFLEET_ISSUE.txt; echo \"Did #$FORGEFLEET_ISSUE.\"",
        m = marks.display()
    );
    let sections = format!("max_concurrency = 2\n\n[command]\nrun = [\"sh\", \"-c\", {script:?}]\n");
    let _agent = w.agent_with(&sections, "command", &[]);
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
    let pids = w.root.path().join("pids");
    let _agent = w.agent(&format!("sleep 300 & echo $! > {p}.child; echo $$ > {p}; wait", p = pids.display()));
    eventually("the command runs", || async { std::fs::read_to_string(format!("{}.child", pids.display())).is_ok() })
        .await;
    let (status, body) = w.fleet.operator(Method::POST, &format!("/tasks/{task}/cancel")).await;
    assert_eq!(status, 200, "{body}");
    let shell: i32 = std::fs::read_to_string(&pids).unwrap().trim().parse().unwrap();
    let sleeper: i32 = std::fs::read_to_string(format!("{}.child", pids.display())).unwrap().trim().parse().unwrap();
    eventually("the shell and its sleep are gone", || async { !alive(shell) && !alive(sleeper) }).await;
    assert_eq!(w.state(task).await, "cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_silent_past_the_idle_timeout_is_stopped_and_fails() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (_, task) = w.queued("Hangs quietly").await;
    let pid = w.root.path().join("pid");
    // Keys before the first table header belong to [agent].
    let script =
        format!("echo $$ > {}; echo thinking; echo 'warning: Connection failed' >&2; sleep 300", pid.display());
    let sections = format!("idle_timeout_secs = 1\n\n[command]\nrun = [\"sh\", \"-c\", {script:?}]\n");
    let _agent = w.agent_with(&sections, "command", &[]);
    eventually("the task failed", || async { w.state(task).await == "failed" }).await;
    let t = w.task(task).await;
    let message = t["task"]["last_failure"]["message"].as_str().unwrap();
    assert!(message.contains("printed nothing for 1 s"), "{message}");
    assert!(
        message.ends_with("its last line: warning: Connection failed"),
        "the CLI's last warning is kept: {message}"
    );
    let shell: i32 = std::fs::read_to_string(&pid).unwrap().trim().parse().unwrap();
    eventually("the agent is gone", || async { !alive(shell) }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_agent_host_hands_its_task_back_at_once() {
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Interrupted").await;
    let started = w.root.path().join("started");
    let mut agent = w.agent(&format!("touch {}; sleep 300", started.display()));
    eventually("the command runs", || async { started.exists() }).await;
    assert_eq!(w.state(task).await, "running");
    let status = agent.terminate();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert_eq!(w.state(task).await, "queued", "deregistering re-queues the task");
    assert!(agent.log().contains("deregistered"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_killed_mid_task_gets_its_task_back_when_it_starts_again() {
    let w = World::new(|_| {}).await;
    let (_, task) = w.queued("Survive a crash").await;
    let started = w.root.path().join("started");
    // The first run hangs; after a restart the same command finds its marker and finishes the work.
    let script = format!(
        "if [ -e {m}.done ]; then echo fixed > fix.txt; echo 'Fixed after a restart.'; \
         else touch {m}.done; echo $$ > {m}; sleep 300; fi",
        m = started.display()
    );
    let mut first = w.agent(&script);
    eventually("the first run works on it", || async {
        std::fs::read_to_string(&started).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let orphan: i32 = std::fs::read_to_string(&started).unwrap().trim().parse().unwrap();
    // Whatever happens below, the orphaned agent does not outlive the test.
    let _reaper = Reaper(orphan);
    first.kill();
    assert!(alive(orphan), "a runner killed outright cannot stop its agent");
    let _second = w.agent(&script);
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let t = w.task(task).await;
    assert_eq!(t["task"]["attempt"], 2, "{t}");
    assert_eq!(t["task"]["last_failure"]["class"], "agent_lost", "{t}");
    eventually("the new runner stopped the agent the old one left", || async { !alive(orphan) }).await;
    let worktrees: Vec<_> = std::fs::read_dir(w.root.path().join("agent/work/worktrees")).unwrap().collect();
    assert!(worktrees.is_empty(), "{worktrees:?}");
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
