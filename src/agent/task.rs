//! One assignment from acknowledgement to receipt: check, start, checkout, agent, commit, push, pull
//! request, receipt. Every way out reports to the server (or knows why it need not) and removes the checkout.
//! An agent that left a question in its checkout (`core::QUESTION_FILE`) hands the question back instead: the
//! task is blocked on it and nothing is pushed.
//!
//! The assignment is input from the network: every field the runner uses is checked before use (see
//! [`Checked`]), so a compromised or impersonated server cannot send the Forgejo token elsewhere or put an
//! option where git expects a URL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::Runner;
use super::process::{self, RunEnd};
use crate::adapters::{Finished, Job, Outcome, describe};
use crate::api::AssignmentView;
use crate::core::{FailureClass, MAX_QUESTION_BYTES, QUESTION_FILE, RepoName, Spent};
use crate::integrations::forgejo::client::RetryPolicy;
use crate::integrations::forgejo::{ForgejoClient, ForgejoError};

/// Progress lines sent in one request, and how often a batch goes out.
const BATCH_LINES: usize = 100;
const BATCH_EVERY: Duration = Duration::from_secs(2);
/// The server refuses longer lines.
const MAX_LINE_BYTES: usize = 4000;
/// The longest wait between two tries to open the pull request (for how long it is tried:
/// `agent.pull_request_patience_secs`).
const PULL_MAX_WAIT: Duration = Duration::from_secs(30);
/// Bounds on what the runner takes from an assignment.
const MAX_TITLE_BYTES: usize = 1024;
const MAX_PROMPT_BYTES: usize = 8 << 20;
const MAX_BRANCH_BYTES: usize = 200;

/// The fields of an assignment the runner acts on, checked.
pub struct Checked {
    pub repo: RepoName,
    /// On the Forgejo (or git server) of the runner's own configuration.
    pub clone_url: String,
}

/// Checks what the runner takes from the assignment before any of it is used: the repository's name before
/// a path is made of it, the clone URL's scheme, host and port against the runner's `forgejo_url` and
/// `git_url` (the token goes nowhere else), branch names (no option, nothing git would refuse), sizes.
pub fn check(a: &AssignmentView, origins: &[super::config::Origin]) -> Result<Checked, String> {
    let repo = RepoName::parse(&a.repo).map_err(|e| format!("its repository: {e}"))?;
    let Some(clone_url) = a.clone_url.as_deref() else {
        return Err("it has no clone URL: the server has no Forgejo URL configured ([forgejo] url)".into());
    };
    let shown: String = clone_url.chars().take(200).collect();
    match super::config::Origin::of(clone_url) {
        Some(o) if origins.contains(&o) => {}
        Some(o) => {
            let allowed: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
            return Err(format!(
                "its clone URL {shown:?} is on {o}, not on this runner's Forgejo ({}; agent.forgejo_url and \
                 agent.git_url): the token is sent nowhere else",
                allowed.join(", ")
            ));
        }
        None => return Err(format!("its clone URL {shown:?} is not a plain http(s) URL")),
    }
    for (what, name) in [("branch", &a.branch), ("base branch", &a.base_branch)] {
        branch_name(name)
            .map_err(|why| format!("its {what} {:?}: {why}", name.chars().take(100).collect::<String>()))?;
    }
    if a.title.len() > MAX_TITLE_BYTES {
        return Err(format!("its title is longer than {MAX_TITLE_BYTES} bytes"));
    }
    if a.prompt.len() > MAX_PROMPT_BYTES {
        return Err(format!("its prompt is longer than {} MiB", MAX_PROMPT_BYTES >> 20));
    }
    if a.issue == 0 {
        return Err("its issue number is 0".into());
    }
    // It goes on the agent's command line: a plain token, never an option or anything a shell would read.
    if let Some(session) = &a.resume_session
        && !crate::core::is_session_id(session)
    {
        return Err(format!(
            "its resume_session {:?} is not a session id (1 to {} letters, digits and '-', not beginning with '-')",
            session.chars().take(100).collect::<String>(),
            crate::core::MAX_SESSION_ID_BYTES
        ));
    }
    Ok(Checked { repo, clone_url: clone_url.to_string() })
}

/// A branch name git takes (a conservative subset of `git check-ref-format --branch`), never an option.
fn branch_name(name: &str) -> Result<(), &'static str> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if name.is_empty() || name.len() > MAX_BRANCH_BYTES {
        return Err("must be 1 to 200 characters");
    }
    if name.starts_with('-') {
        return Err("must not begin with '-'");
    }
    if !ok_chars {
        return Err("may hold only letters, digits, '-', '_', '.' and '/'");
    }
    if name.contains("..") || name.ends_with('/') || name.ends_with(".lock") || name.ends_with('.') {
        return Err("is not a valid branch name");
    }
    if name.split('/').any(|p| p.is_empty() || p.starts_with('.')) {
        return Err("is not a valid branch name");
    }
    Ok(())
}

/// Why the work stopped short, as the server should hear it.
struct Failure {
    class: FailureClass,
    message: String,
    /// What the agent spent before it failed, when its output says: kept with the failure.
    spent: Option<Spent>,
    /// The assignment's branch, when the work was pushed to it before the failure: the server assigns it to
    /// the next attempt, which continues the work.
    pushed: Option<String>,
}

impl Failure {
    fn agent(message: impl Into<String>) -> Failure {
        Failure { class: FailureClass::AgentError, message: message.into(), spent: None, pushed: None }
    }

    /// A failure after the agent finished: what it spent is known.
    fn after(finished: &Finished) -> impl Fn(String) -> Failure + '_ {
        |message| Failure {
            spent: Some(Spent { usage: finished.usage.clone(), cost_usd: finished.cost_usd }),
            ..Failure::agent(message)
        }
    }
}

/// Does the assignment; returns when the server has been told how it went.
pub async fn work(runner: Arc<Runner>, a: AssignmentView, cancel: watch::Receiver<bool>) {
    let (task, attempt) = (a.task_id, a.attempt);
    let checked = check(&a, &runner.token_origins);
    if let Err(e) = runner.client.start(task, attempt).await {
        tracing::warn!(%task, attempt, error = %e, "the server did not let this attempt start; dropping it");
        return;
    }
    tracing::info!(%task, attempt, repo = ?a.repo, issue = a.issue, "working on a task");
    let started = Instant::now();
    let (checkout, result) = match checked {
        Ok(checked) => attempt_work(&runner, &a, &checked, cancel, started).await,
        Err(why) => (None, Err(Failure::agent(format!("the runner refused the assignment: {why}")))),
    };
    match result {
        Ok(Some(Handback::Question(question, session))) => {
            match runner.client.block(task, attempt, &question, session.as_deref()).await {
                Ok(()) => {
                    tracing::info!(%task, attempt, "the agent asked a person a question; the task waits for the answer")
                }
                Err(e) => tracing::warn!(%task, attempt, error = %e, "the server did not take the question"),
            }
        }
        Ok(Some(Handback::Receipt(receipt))) => match runner.client.receipt(&receipt).await {
            Ok(()) => tracing::info!(%task, attempt, pr = %receipt["pr_number"], "receipt submitted"),
            Err(e) => tracing::warn!(%task, attempt, error = %e, "the receipt was refused"),
        },
        Ok(None) => tracing::info!(%task, attempt, "stopped before the end; nothing to report"),
        Err(f) => {
            tracing::warn!(%task, attempt, class = f.class.as_str(), message = %f.message, "the attempt failed");
            let (class, pushed) = (f.class.as_str(), f.pushed.as_deref());
            if let Err(e) = runner.client.fail(task, attempt, class, &f.message, f.spent.as_ref(), pushed).await {
                tracing::warn!(%task, attempt, error = %e, "the server did not take the failure report");
            }
        }
    }
    if let Some(co) = checkout {
        runner.workspace.remove(&co).await;
    }
}

/// What an attempt that ran to its end hands back.
enum Handback {
    /// The receipt to submit: the work is pushed and its pull request open.
    Receipt(serde_json::Value),
    /// The agent's question for a person, and the CLI session that asked (resumed after the answer): nothing
    /// was committed or pushed.
    Question(String, Option<String>),
}

type Attempted = (Option<super::workspace::Checkout>, Result<Option<Handback>, Failure>);

async fn attempt_work(
    runner: &Runner,
    a: &AssignmentView,
    checked: &Checked,
    cancel: watch::Receiver<bool>,
    started: Instant,
) -> Attempted {
    let name = format!("task-{}-attempt-{}", a.task_id, a.attempt);
    let co = match runner.workspace.prepare(&checked.clone_url, &checked.repo, &a.base_branch, &a.branch, &name).await {
        Ok(co) => co,
        Err(e) => return (None, Err(Failure::agent(e.0))),
    };
    let result = run_agent(runner, a, checked, &co, cancel, started).await;
    (Some(co), result)
}

async fn run_agent(
    runner: &Runner,
    a: &AssignmentView,
    checked: &Checked,
    wt: &super::workspace::Checkout,
    cancel: watch::Receiver<bool>,
    started: Instant,
) -> Result<Option<Handback>, Failure> {
    let job = Job {
        prompt: &a.prompt,
        worktree: &wt.path,
        repo: &a.repo,
        issue: a.issue,
        task_id: a.task_id.0,
        attempt: a.attempt,
        branch: &a.branch,
        resume: a.resume_session.as_deref(),
    };
    let (tx, rx) = mpsc::channel(1024);
    let forward = tokio::spawn(forward_progress(runner.client.clone(), a.task_id, a.attempt, rx).in_current_span());
    let env = runner.workspace.author_env();
    let pid_file = runner.workspace.pid_file(wt);
    let idle = runner.idle_timeout;
    let run = async |job: &Job<'_>, tx: mpsc::Sender<String>| {
        let limit = time_left(&a.deadline);
        process::run(&runner.adapter, &runner.sandbox, job, &pid_file, &env, tx, cancel.clone(), limit, idle).await
    };
    let mut end = run(&job, tx.clone()).await;
    // A session the CLI cannot find (its home is gone, or it never was here) is no reason to fail: a fresh
    // session gets the whole prompt, which tells it what the earlier attempt did.
    if let (Some(session), RunEnd::Exited(status, tail)) = (job.resume, &end)
        && runner.adapter.resume_refused(*status, tail)
    {
        tracing::info!(session, "the agent's CLI does not have the session to resume; starting a fresh one");
        let _ = tx.try_send(format!("could not resume session {session}: starting a fresh session"));
        end = run(&Job { resume: None, ..job }, tx).await;
    } else {
        drop(tx);
    }
    let _ = forward.await;
    let finished = match end {
        RunEnd::Stopped => return Ok(None),
        RunEnd::TimedOut => {
            return Err(Failure {
                class: FailureClass::Timeout,
                message: format!("the agent was still running at the task's deadline ({})", a.deadline),
                spent: None,
                pushed: None,
            });
        }
        RunEnd::NotStarted(why) => return Err(Failure::agent(why)),
        RunEnd::Idle(quiet, tail) => {
            let last = runner.adapter.last_words(&tail).map(|l| format!("; its last line: {l}")).unwrap_or_default();
            return Err(Failure::agent(format!(
                "the agent printed nothing for {} s (agent.idle_timeout_secs) and was stopped{last}",
                quiet.as_secs()
            )));
        }
        // A question is the agent's own word that it cannot go on, whatever its exit status says.
        RunEnd::Exited(status, tail) if let Some(question) = read_question(&wt.path) => {
            let session = match runner.adapter.outcome(status, &tail) {
                Outcome::Done(f) => f.session_id.filter(|s| crate::core::is_session_id(s)),
                Outcome::Failed { .. } => None,
            };
            return Ok(Some(Handback::Question(question, session)));
        }
        RunEnd::Exited(status, tail) => match runner.adapter.outcome(status, &tail) {
            Outcome::Done(f) => f,
            Outcome::Failed { class, message } => {
                tracing::debug!(status = %describe(status), "the adapter judged the run a failure");
                return Err(Failure { class, message, spent: runner.adapter.spent(&tail), pushed: None });
            }
        },
    };
    let message = format!("{} (#{})\n\n{}", a.title, a.issue, finished.summary);
    let head = match runner.workspace.commit_rest(wt, message.trim()).await {
        Ok(Some(head)) => head,
        Ok(None) if finished.denied.is_empty() => {
            return Err(Failure::after(&finished)("the agent finished without changing anything".into()));
        }
        Ok(None) => {
            return Err(Failure::after(&finished)(format!(
                "the agent finished without changing anything; it was refused {}: {} (see the adapter's \
                 permission settings in docs/agent.md)",
                if finished.denied.len() == 1 { "this tool call" } else { "these tool calls" },
                finished.denied.join("; ")
            )));
        }
        Err(e) => return Err(Failure::after(&finished)(e.0)),
    };
    runner
        .workspace
        .push(wt, &checked.clone_url, &head, &a.branch)
        .await
        .map_err(|e| Failure::after(&finished)(e.0))?;
    // Pushed: a failure from here on hands the branch on, so the next attempt continues this work.
    let pr = open_pull(runner, &checked.repo, a, &finished)
        .await
        .map_err(|e| Failure { pushed: Some(a.branch.clone()), ..Failure::after(&finished)(e) })?;
    Ok(Some(Handback::Receipt(json!({
        "task_id": a.task_id,
        "attempt": a.attempt,
        "pr_number": pr,
        "head_sha": head,
        "summary": finished.summary,
        "usage": finished.usage,
        "cost_usd": finished.cost_usd,
        "duration_secs": started.elapsed().as_secs(),
        "session_id": finished.session_id,
    }))))
}

/// The question the agent left at [`QUESTION_FILE`] in its checkout, if it left a non-empty one. The checkout
/// is the agent's: the file and its folder are read only if they are a plain file in a plain folder (never
/// through a link, which could point at the runner's own files), and at most [`MAX_QUESTION_BYTES`] of it.
pub fn read_question(checkout: &std::path::Path) -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = checkout.join(QUESTION_FILE);
    let dir = path.parent()?;
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path);
    let mut bytes = Vec::new();
    file.ok()?.take(MAX_QUESTION_BYTES as u64 + 1).read_to_end(&mut bytes).ok()?;
    let mut text = String::from_utf8_lossy(&bytes).trim().to_string();
    if text.len() > MAX_QUESTION_BYTES {
        let mut end = MAX_QUESTION_BYTES - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    (!text.is_empty()).then_some(text)
}

/// Opens the pull request, or finds the one an earlier try opened. The work is pushed by then, so a Forgejo
/// that fails (5xx, 429, unreachable) is tried again with backoff for `agent.pull_request_patience_secs`, each new try
/// first looking for a pull request from the branch (a try whose answer was lost may have opened it).
async fn open_pull(runner: &Runner, repo: &RepoName, a: &AssignmentView, f: &Finished) -> Result<u64, String> {
    // The runner's own Forgejo, never the assignment's `forgejo_url`; one request per try (retries are here).
    let client = ForgejoClient::new(&runner.forgejo_url, runner.forgejo_token.clone(), runner.ca.as_ref())
        .map_err(|e| format!("cannot build the Forgejo client: {e}"))?
        .with_retry(RetryPolicy { attempts: 1, first_wait: Duration::ZERO });
    let summary = if f.summary.trim().is_empty() { "The agent gave no summary." } else { f.summary.trim() };
    let body =
        format!("{summary}\n\nFixes #{}\n\n<!-- forgefleet:task-{}:attempt-{}:pull -->", a.issue, a.task_id, a.attempt);
    let find = async || -> Result<Option<u64>, ForgejoError> {
        let open = client.open_pulls(repo).await?;
        Ok(open.iter().find(|p| p.head.name == a.branch && p.base.name == a.base_branch).map(|p| p.number))
    };
    let give_up = Instant::now() + runner.pull_patience;
    let mut wait = Duration::from_secs(1);
    let mut tries = 0u32;
    loop {
        tries += 1;
        let earlier = if tries > 1 { find().await } else { Ok(None) };
        let outcome = match earlier {
            Ok(Some(n)) => return Ok(n),
            Ok(None) => client.create_pull(repo, &a.branch, &a.base_branch, &a.title, &body).await.map(|p| p.number),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(n) => return Ok(n),
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 409) => {
                return find()
                    .await
                    .map_err(|e| format!("listing pull requests: {e}"))?
                    .ok_or_else(|| format!("Forgejo says a pull request from {} exists, but none is open", a.branch));
            }
            Err(e) if transient(&e) && Instant::now() + wait < give_up => {
                tracing::warn!(task = %a.task_id, error = %e, retry_in_s = wait.as_secs(), "cannot open the pull request yet; the work is pushed, trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(PULL_MAX_WAIT);
            }
            Err(e) => return Err(format!("opening the pull request ({tries} tries; {} is pushed): {e}", a.branch)),
        }
    }
}

/// Forgejo could not answer now: a 5xx, a 429, or no answer at all.
fn transient(e: &ForgejoError) -> bool {
    match e {
        ForgejoError::Http { status, .. } => status.is_server_error() || status.as_u16() == 429,
        ForgejoError::Network { .. } => true,
        ForgejoError::Decode { .. } => false,
    }
}

/// Sends progress in batches; ends when the agent's output ends.
async fn forward_progress(
    client: Arc<super::client::FleetClient>,
    task: crate::core::TaskId,
    attempt: u32,
    mut rx: mpsc::Receiver<String>,
) {
    let mut batch: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(BATCH_EVERY);
    loop {
        let open = tokio::select! {
            line = rx.recv() => match line {
                Some(l) => {
                    batch.push(cut(l));
                    if batch.len() < BATCH_LINES {
                        continue;
                    }
                    true
                }
                None => false,
            },
            _ = tick.tick() => true,
        };
        while !batch.is_empty() {
            let lines: Vec<String> = batch.drain(..batch.len().min(BATCH_LINES)).collect();
            if let Err(e) = client.progress(task, attempt, &lines).await {
                tracing::debug!(%task, error = %e, "progress not taken");
            }
        }
        if !open {
            return;
        }
    }
}

fn cut(mut line: String) -> String {
    if line.len() > MAX_LINE_BYTES {
        let mut end = MAX_LINE_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

/// Time until `deadline` (RFC 3339); an unreadable deadline gives the runner's own cap.
fn time_left(deadline: &str) -> Duration {
    match chrono::DateTime::parse_from_rfc3339(deadline) {
        Ok(d) => (d.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO),
        Err(_) => Duration::from_secs(6 * 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::Origin;

    fn assignment() -> AssignmentView {
        AssignmentView {
            task_id: crate::core::TaskId(7),
            attempt: 1,
            repo: "acme/app".into(),
            issue: 3,
            title: "Fix it".into(),
            body: String::new(),
            labels: Vec::new(),
            clone_url: Some("https://git.example.com/acme/app.git".into()),
            forgejo_url: Some("https://forgejo.example.com".into()),
            base_branch: "main".into(),
            branch: "forgefleet/issue-3-attempt-1".into(),
            start_by: String::new(),
            deadline: String::new(),
            prompt: "Resolve it".into(),
            resume_session: None,
        }
    }

    fn origins() -> Vec<Origin> {
        ["https://forgejo.example.com", "https://git.example.com/"].iter().filter_map(|u| Origin::of(u)).collect()
    }

    #[test]
    fn a_question_is_read_only_from_a_plain_file_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let (co, outside) = (dir.path().join("checkout"), dir.path().join("secret"));
        std::fs::create_dir_all(co.join(".forgefleet")).unwrap();
        std::fs::write(&outside, "the runner's token").unwrap();
        assert_eq!(read_question(&co), None, "no file, no question");
        std::fs::write(co.join(QUESTION_FILE), " \n").unwrap();
        assert_eq!(read_question(&co), None, "an empty file is no question");
        std::fs::write(co.join(QUESTION_FILE), "v1 or v2?\n").unwrap();
        assert_eq!(read_question(&co).as_deref(), Some("v1 or v2?"));
        std::fs::write(co.join(QUESTION_FILE), "é".repeat(MAX_QUESTION_BYTES)).unwrap();
        let long = read_question(&co).unwrap();
        assert!(long.len() <= MAX_QUESTION_BYTES && long.ends_with('…'), "{}", long.len());
        std::fs::remove_file(co.join(QUESTION_FILE)).unwrap();
        std::os::unix::fs::symlink(&outside, co.join(QUESTION_FILE)).unwrap();
        assert_eq!(read_question(&co), None, "a link to the runner's files is not read");
        std::fs::remove_dir_all(co.join(".forgefleet")).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("question.md"), "through a linked folder").unwrap();
        std::os::unix::fs::symlink(&elsewhere, co.join(".forgefleet")).unwrap();
        assert_eq!(read_question(&co), None, "a linked folder is not followed");
    }

    #[test]
    fn an_assignment_on_the_runners_own_forgejo_passes() {
        let c = check(&assignment(), &origins()).unwrap();
        assert_eq!(c.repo.as_str(), "acme/app");
        assert_eq!(c.clone_url, "https://git.example.com/acme/app.git");
    }

    #[test]
    fn every_field_the_runner_uses_is_checked() {
        let refused = |change: &dyn Fn(&mut AssignmentView), says: &str| {
            let mut a = assignment();
            change(&mut a);
            let why = check(&a, &origins()).err().unwrap_or_else(|| panic!("accepted; expected {says:?}"));
            assert!(why.contains(says), "{why:?} does not say {says:?}");
        };
        refused(&|a| a.clone_url = Some("https://git.example.com:8443/acme/app.git".into()), "not on this runner's");
        refused(&|a| a.clone_url = Some("http://git.example.com/acme/app.git".into()), "not on this runner's");
        refused(&|a| a.clone_url = Some("https://evil.example/acme/app.git".into()), "not on this runner's");
        refused(&|a| a.clone_url = Some("--upload-pack=touch x".into()), "not a plain http(s) URL");
        refused(&|a| a.clone_url = Some("https://tok:en@git.example.com/acme/app.git".into()), "not a plain");
        refused(&|a| a.clone_url = None, "no clone URL");
        refused(&|a| a.repo = "../../etc".into(), "its repository");
        refused(&|a| a.repo = "acme/app/../../x".into(), "its repository");
        refused(&|a| a.branch = "--force".into(), "must not begin with '-'");
        refused(&|a| a.branch = "a/../b".into(), "not a valid branch name");
        refused(&|a| a.branch = "a b".into(), "may hold only");
        refused(&|a| a.base_branch = "main.lock".into(), "base branch");
        refused(&|a| a.title = "x".repeat(2000), "title");
        refused(&|a| a.prompt = "x".repeat(9 << 20), "prompt");
        // The session to resume goes on the agent's command line: an option, a shell word or a path is refused.
        for hostile in ["--dangerously-skip-permissions", "$(touch x)", "../../sessions/x", "a b", "", "x\n-p"] {
            refused(&|a| a.resume_session = Some(hostile.into()), "its resume_session");
        }
        refused(&|a| a.resume_session = Some("a".repeat(129)), "its resume_session");
        let mut a = assignment();
        a.resume_session = Some("4f1c2a9e-0b7d-4c11-9a6e-2f0d3b5c7e81".into());
        assert!(check(&a, &origins()).is_ok(), "a UUID is a session id");
    }
}
