//! CI as a receipt check: tasks whose receipt checked out wait, still `validating` but holding no agent, for
//! the statuses on their pull request's head. Forgejo sends no webhook for a commit status, so they are
//! polled, each with its own backoff; a `pull_request` webhook about the pull request makes it look again at
//! once. The deadline of the wait is the engine's (its tick fails an attempt whose checks never finish).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::ForgejoClient;
use crate::core::{RepoName, Task, TaskId, TaskState, judge_checks};
use crate::engine::{Command, EngineHandle};
use crate::store::ReadPool;

/// The longest wait between two looks at a pending pull request's statuses: the first is twice the workers'
/// poll interval (2 s in `serve`), and each next one doubles, up to this.
pub const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// News of pull requests from webhooks: the pull requests to look at again at once. Shared by the webhook
/// route, which tells, and the checks poller, which listens.
#[derive(Clone, Default)]
pub struct PullNews(Arc<PullNewsInner>);

#[derive(Default)]
struct PullNewsInner {
    changed: Mutex<HashSet<(RepoName, u64)>>,
    wake: tokio::sync::Notify,
}

impl PullNews {
    /// Something happened to pull request `number` of `repo` (pushed, reviewed, edited...).
    pub fn tell(&self, repo: RepoName, number: u64) {
        self.0.changed.lock().unwrap_or_else(|e| e.into_inner()).insert((repo, number));
        self.0.wake.notify_one();
    }

    fn take(&self) -> HashSet<(RepoName, u64)> {
        std::mem::take(&mut *self.0.changed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until something is told (returns at once if something was told since the last wait).
    pub async fn told(&self) {
        self.0.wake.notified().await
    }
}

/// When each waiting attempt is looked at next, and how long the wait after that is.
#[derive(Debug, Clone, Copy)]
struct Next {
    at: Instant,
    wait: Duration,
}

pub struct ChecksPoller {
    pub client: ForgejoClient,
    pub engine: EngineHandle,
    pub reads: ReadPool,
    pub news: PullNews,
    first_wait: Duration,
    next: Mutex<HashMap<(TaskId, u32), Next>>,
}

impl ChecksPoller {
    /// `poll` is the workers' poll interval: the first wait is twice that.
    pub fn new(client: ForgejoClient, engine: EngineHandle, reads: ReadPool, news: PullNews, poll: Duration) -> Self {
        let first_wait = (poll * 2).min(LONGEST_WAIT);
        Self { client, engine, reads, news, first_wait, next: Mutex::new(HashMap::new()) }
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, HashMap<(TaskId, u32), Next>> {
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks at the statuses of every waiting task that is due (or whose pull request a webhook mentioned);
    /// returns how many got a verdict.
    pub async fn poll_due(&self) -> usize {
        let waiting = match self
            .reads
            .with(|r| -> crate::store::Result<Vec<Task>> {
                let mut out = Vec::new();
                for s in r.tasks(Some(TaskState::Validating), 1000)? {
                    if let Some(t) = r.task(s.id)?
                        && t.checks.is_some()
                    {
                        out.push(t);
                    }
                }
                Ok(out)
            })
            .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the tasks waiting for CI");
                return 0;
            }
        };
        let told = self.news.take();
        let now = Instant::now();
        {
            // Forget attempts that no longer wait.
            let keys: HashSet<(TaskId, u32)> = waiting.iter().map(|t| (t.id, t.attempt)).collect();
            self.schedule().retain(|k, _| keys.contains(k));
        }
        let mut decided = 0;
        for task in waiting {
            let Some(checks) = &task.checks else { continue };
            let key = (task.id, task.attempt);
            let mentioned = told.contains(&(task.issue.repo.clone(), checks.pr_number));
            let due = self.schedule().get(&key).is_none_or(|n| n.at <= now);
            if !(due || mentioned) {
                continue;
            }
            let verdict = match self.client.combined_status(&task.issue.repo, &checks.head_sha).await {
                Ok(status) => judge_checks(&checks.required, &status.statuses()),
                Err(e) => {
                    tracing::warn!(task = %task.id, error = %e, "cannot read the pull request's CI; will look again");
                    self.later(key, now);
                    continue;
                }
            };
            if matches!(verdict, crate::core::ChecksVerdict::Pending { .. }) {
                tracing::debug!(task = %task.id, what = %verdict.explain(), "CI still running");
                self.later(key, now);
                continue;
            }
            let cmd = Command::FinishChecks {
                task: task.id,
                attempt: task.attempt,
                head_sha: checks.head_sha.clone(),
                verdict,
            };
            match self.engine.send(cmd).await {
                Ok(_) => {
                    decided += 1;
                    self.schedule().remove(&key);
                }
                Err(e) => {
                    tracing::warn!(task = %task.id, error = %e, "recording the CI verdict failed");
                    self.later(key, now);
                }
            }
        }
        decided
    }

    /// The next look at `key`: after the wait, which then doubles.
    fn later(&self, key: (TaskId, u32), now: Instant) {
        let mut s = self.schedule();
        let wait = s.get(&key).map_or(self.first_wait, |n| n.wait);
        s.insert(key, Next { at: now + wait, wait: (wait * 2).min(LONGEST_WAIT) });
    }
}
