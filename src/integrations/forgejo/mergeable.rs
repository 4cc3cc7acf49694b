//! Conflicted pull requests: Forgejo sends no webhook when a pull request stops merging (a push to its base
//! branch; it computes mergeability asynchronously), so reconciliation reads the open pull requests of completed
//! tasks and tells the engine of one that said `mergeable: false` twice, for the same head and base, at least
//! [`RECHECK_AFTER`] apart. The engine decides once per head.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::types::PullRequest;
use super::{ForgejoClient, ForgejoError};
use crate::core::{RepoName, TaskId, Timestamp};
use crate::engine::{Clock, Command, EngineHandle};
use crate::store::ReadPool;

/// How long a `mergeable: false` must last before it counts: Forgejo says `false` while it is still checking
/// a pull request after a push to its base, and that check takes seconds.
pub const RECHECK_AFTER: Duration = Duration::from_secs(30);

/// Forgejo's default `[repository.pull-request] WORK_IN_PROGRESS_PREFIXES`: such a pull request is never
/// mergeable, conflict or not, so it is left alone.
const WIP_PREFIXES: [&str; 2] = ["WIP:", "[WIP]"];

/// The first `mergeable: false` seen of each pull request, for the second read to confirm. In memory only:
/// after a restart the first read is simply made again.
#[derive(Clone)]
pub struct MergeWatch {
    clock: Arc<dyn Clock>,
    first_seen: Arc<Mutex<HashMap<(RepoName, u64), Suspect>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Suspect {
    head: String,
    base: String,
    at: Timestamp,
}

impl MergeWatch {
    pub fn new(clock: Arc<dyn Clock>) -> MergeWatch {
        MergeWatch { clock, first_seen: Arc::default() }
    }

    /// One look at `repo`'s open pull requests: each of a completed task whose end is not recorded and whose
    /// head is not decided yet, unmergeable now and at a first read [`RECHECK_AFTER`] ago with the same head and
    /// base, is handed to the engine. Answers how many were.
    pub async fn look(
        &self,
        client: &ForgejoClient,
        engine: &EngineHandle,
        reads: &ReadPool,
        repo: &RepoName,
    ) -> Result<usize, ForgejoError> {
        let open = client.open_pulls(repo).await?;
        Ok(self.look_at(engine, reads, repo, &open).await)
    }

    /// [`MergeWatch::look`] at `open`, the open pull requests of `repo` as just listed.
    pub async fn look_at(
        &self,
        engine: &EngineHandle,
        reads: &ReadPool,
        repo: &RepoName,
        open: &[PullRequest],
    ) -> usize {
        let mut told = 0;
        for pr in open {
            if !self.undecided(reads, repo, pr).await {
                self.forget(repo, pr.number);
                continue;
            }
            if pr.mergeable != Some(false) || WIP_PREFIXES.iter().any(|p| pr.title.trim_start().starts_with(p)) {
                self.forget(repo, pr.number);
                continue;
            }
            if !self.confirmed(repo, pr) {
                continue;
            }
            let command = Command::ObserveConflict {
                repo: repo.clone(),
                number: pr.number,
                head_sha: pr.head.sha.clone(),
                base_branch: pr.base.name.clone(),
                base_sha: pr.base.sha.clone(),
            };
            match engine.send(command).await {
                Ok(_) => {
                    self.forget(repo, pr.number);
                    told += 1;
                }
                Err(e) => {
                    tracing::warn!(%repo, pull = pr.number, error = %e, "recording a conflicted pull request failed")
                }
            }
        }
        told
    }

    /// Whether `pr` is the pull request of a completed task, not ended, whose conflict at this head is not
    /// recorded yet (a store that cannot be read says no: the next pass looks again).
    async fn undecided(&self, reads: &ReadPool, repo: &RepoName, pr: &PullRequest) -> bool {
        let (r, n, head) = (repo.clone(), pr.number, pr.head.sha.clone());
        reads
            .with(move |v| -> crate::store::Result<bool> {
                let Some(id) = v.completed_with_pull(&r, n, TaskId(0))? else { return Ok(false) };
                Ok(v.task(id)?.is_some_and(|t| {
                    t.pull_end.is_none() && !t.conflict.is_some_and(|c| c.head_sha.eq_ignore_ascii_case(&head))
                }))
            })
            .await
            .unwrap_or(false)
    }

    /// Records this read of an unmergeable `pr`; true when an earlier read of the same head and base was at
    /// least [`RECHECK_AFTER`] ago.
    fn confirmed(&self, repo: &RepoName, pr: &PullRequest) -> bool {
        let now = self.clock.now();
        let seen = Suspect { head: pr.head.sha.clone(), base: pr.base.sha.clone(), at: now };
        let mut first = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        match first.get(&(repo.clone(), pr.number)) {
            Some(s) if s.head == seen.head && s.base == seen.base => s.at + RECHECK_AFTER <= now,
            _ => {
                first.insert((repo.clone(), pr.number), seen);
                false
            }
        }
    }

    fn forget(&self, repo: &RepoName, number: u64) {
        self.first_seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&(repo.clone(), number));
    }
}
