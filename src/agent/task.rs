//! One assignment from acknowledgement to receipt: start, worktree, agent, commit, push, pull request,
//! receipt. Every way out reports to the server (or knows why it need not) and removes the worktree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::Runner;
use super::process::{self, RunEnd};
use crate::adapters::{Finished, Job, Outcome, describe};
use crate::api::AssignmentView;
use crate::core::{FailureClass, RepoName, Spent};
use crate::integrations::forgejo::{ForgejoClient, ForgejoError};

/// Progress lines sent in one request, and how often a batch goes out.
const BATCH_LINES: usize = 100;
const BATCH_EVERY: Duration = Duration::from_secs(2);
/// The server refuses longer lines.
const MAX_LINE_BYTES: usize = 4000;

/// Why the work stopped short, as the server should hear it.
struct Failure {
    class: FailureClass,
    message: String,
    /// What the agent spent before it failed, when its output says: kept with the failure.
    spent: Option<Spent>,
}

impl Failure {
    fn agent(message: impl Into<String>) -> Failure {
        Failure { class: FailureClass::AgentError, message: message.into(), spent: None }
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
    if let Err(e) = runner.client.start(task, attempt).await {
        tracing::warn!(%task, attempt, error = %e, "the server did not let this attempt start; dropping it");
        return;
    }
    tracing::info!(%task, attempt, repo = %a.repo, issue = a.issue, "working on a task");
    let started = Instant::now();
    let (worktree, result) = attempt_work(&runner, &a, cancel, started).await;
    match result {
        Ok(Some(receipt)) => match runner.client.receipt(&receipt).await {
            Ok(()) => tracing::info!(%task, attempt, pr = %receipt["pr_number"], "receipt submitted"),
            Err(e) => tracing::warn!(%task, attempt, error = %e, "the receipt was refused"),
        },
        Ok(None) => tracing::info!(%task, attempt, "stopped before the end; nothing to report"),
        Err(f) => {
            tracing::warn!(%task, attempt, class = f.class.as_str(), message = %f.message, "the attempt failed");
            if let Err(e) = runner.client.fail(task, attempt, f.class.as_str(), &f.message, f.spent.as_ref()).await {
                tracing::warn!(%task, attempt, error = %e, "the server did not take the failure report");
            }
        }
    }
    if let Some(wt) = worktree {
        runner.workspace.remove(&wt.cache, &wt.path).await;
    }
}

type Attempted = (Option<super::workspace::Worktree>, Result<Option<serde_json::Value>, Failure>);

async fn attempt_work(
    runner: &Runner,
    a: &AssignmentView,
    cancel: watch::Receiver<bool>,
    started: Instant,
) -> Attempted {
    let (Some(clone_url), Some(forgejo_url)) = (a.clone_url.as_deref(), a.forgejo_url.as_deref()) else {
        return (None, Err(Failure::agent("the server has no Forgejo URL configured ([forgejo] url)")));
    };
    let name = format!("task-{}-attempt-{}", a.task_id, a.attempt);
    let wt = match runner.workspace.prepare(clone_url, &a.repo, &a.base_branch, &a.branch, &name).await {
        Ok(wt) => wt,
        Err(e) => return (None, Err(Failure::agent(e.0))),
    };
    let result = run_agent(runner, a, &wt, cancel, started, clone_url, forgejo_url).await;
    (Some(wt), result)
}

#[allow(clippy::too_many_arguments)]
async fn run_agent(
    runner: &Runner,
    a: &AssignmentView,
    wt: &super::workspace::Worktree,
    cancel: watch::Receiver<bool>,
    started: Instant,
    clone_url: &str,
    forgejo_url: &str,
) -> Result<Option<serde_json::Value>, Failure> {
    let job = Job {
        prompt: &a.prompt,
        worktree: &wt.path,
        repo: &a.repo,
        issue: a.issue,
        task_id: a.task_id.0,
        attempt: a.attempt,
        branch: &a.branch,
    };
    let limit = time_left(&a.deadline);
    let (tx, rx) = mpsc::channel(1024);
    let forward = tokio::spawn(forward_progress(runner.client.clone(), a.task_id, a.attempt, rx));
    let env = runner.workspace.author_env();
    let pid_file = runner.workspace.pid_file(&wt.path);
    let idle = runner.idle_timeout;
    let end = process::run(&runner.adapter, &job, &pid_file, &env, tx, cancel, limit, idle).await;
    let _ = forward.await;
    let finished = match end {
        RunEnd::Stopped => return Ok(None),
        RunEnd::TimedOut => {
            return Err(Failure {
                class: FailureClass::Timeout,
                message: format!("the agent was still running at the task's deadline ({})", a.deadline),
                spent: None,
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
        RunEnd::Exited(status, tail) => match runner.adapter.outcome(status, &tail) {
            Outcome::Done(f) => f,
            Outcome::Failed { class, message } => {
                tracing::debug!(status = %describe(status), "the adapter judged the run a failure");
                return Err(Failure { class, message, spent: runner.adapter.spent(&tail) });
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
    runner.workspace.push(wt, clone_url, &a.branch).await.map_err(|e| Failure::after(&finished)(e.0))?;
    let pr = open_pull(runner, forgejo_url, a, &finished).await.map_err(Failure::after(&finished))?;
    Ok(Some(json!({
        "task_id": a.task_id,
        "attempt": a.attempt,
        "pr_number": pr,
        "head_sha": head,
        "summary": finished.summary,
        "usage": finished.usage,
        "cost_usd": finished.cost_usd,
        "duration_secs": started.elapsed().as_secs(),
        "session_id": finished.session_id,
    })))
}

/// Opens the pull request, or finds the one an earlier try of the same request already opened.
async fn open_pull(runner: &Runner, forgejo_url: &str, a: &AssignmentView, f: &Finished) -> Result<u64, String> {
    let repo = RepoName::parse(&a.repo).map_err(|e| format!("the assignment's repository: {e}"))?;
    let client = ForgejoClient::new(forgejo_url, runner.forgejo_token.clone(), runner.ca.as_ref())
        .map_err(|e| format!("cannot build the Forgejo client: {e}"))?;
    let summary = if f.summary.trim().is_empty() { "The agent gave no summary." } else { f.summary.trim() };
    let body =
        format!("{summary}\n\nFixes #{}\n\n<!-- forgefleet:task-{}:attempt-{}:pull -->", a.issue, a.task_id, a.attempt);
    match client.create_pull(&repo, &a.branch, &a.base_branch, &a.title, &body).await {
        Ok(pr) => Ok(pr.number),
        Err(ForgejoError::Http { status, .. }) if status.as_u16() == 409 => {
            let open = client.open_pulls(&repo).await.map_err(|e| format!("listing pull requests: {e}"))?;
            open.iter()
                .find(|p| p.head.name == a.branch && p.base.name == a.base_branch)
                .map(|p| p.number)
                .ok_or_else(|| format!("Forgejo says a pull request from {} exists, but none is open", a.branch))
        }
        Err(e) => Err(format!("opening the pull request: {e}")),
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
