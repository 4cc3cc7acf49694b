//! Reconciliation: the safety net for lost webhooks. Forgejo is the truth; what it says now is fed through
//! the same engine command as a webhook, and the engine's diff does the rest (queue, cancel, repair labels).

use super::deliver::observation;
use super::{ForgejoClient, ForgejoError, IssueFilter};
use crate::core::{IssueRef, LabelScheme, RepoName, Timestamp};
use crate::engine::repo::{RepoOverrides, RepoSettings};
use crate::engine::{Command, EngineHandle};
use crate::store::{ReadPool, StoreError};

/// What one pass saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub listed: usize,
    /// Active tasks whose issue the listing did not show, looked up one by one (full sweeps).
    pub looked_up: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Forgejo(#[from] ForgejoError),
    #[error("{0}")]
    Local(String),
}

impl From<StoreError> for ReconcileError {
    fn from(e: StoreError) -> Self {
        ReconcileError::Local(e.to_string())
    }
}

fn cursor_key(repo: &RepoName) -> String {
    format!("reconcile.cursor:{repo}")
}

/// One pass over one repository. Incremental (`full = false`): the issues updated since the last pass,
/// open or closed, usually one listing request. Full: every open issue, plus each task still active whose
/// issue was not among them (closed, or relabelled while webhooks were lost).
pub async fn pass(
    client: &ForgejoClient,
    engine: &EngineHandle,
    reads: &ReadPool,
    repo: &RepoName,
    full: bool,
) -> Result<PassReport, ReconcileError> {
    let key = cursor_key(repo);
    let read_key = key.clone();
    let cursor = reads.with(move |r| r.meta(&read_key)).await?;
    let full = full || cursor.is_none();
    let filter = if full {
        IssueFilter { state: Some("open"), ..IssueFilter::default() }
    } else {
        IssueFilter { state: Some("all"), since: cursor.clone(), ..IssueFilter::default() }
    };
    let issues = client.list_issues(repo, &filter).await?;
    let mut newest = cursor.clone();
    for issue in issues.iter().filter(|i| !i.is_pull()) {
        engine
            .send(Command::ObserveIssue(observation(repo, issue)))
            .await
            .map_err(|e| ReconcileError::Local(e.to_string()))?;
        if newest.as_deref().is_none_or(|n| later(&issue.updated_at, n)) {
            newest = Some(issue.updated_at.clone());
        }
    }
    let mut report = PassReport { listed: issues.len(), looked_up: 0 };
    if full {
        let seen: Vec<u64> = issues.iter().map(|i| i.number).collect();
        let repo_name = repo.clone();
        let active = reads.with(move |r| r.active_issues(&repo_name)).await?;
        for number in active.into_iter().filter(|n| !seen.contains(n)) {
            let command = match client.issue(repo, number).await {
                Ok(issue) if !issue.is_pull() => Command::ObserveIssue(observation(repo, &issue)),
                // Deleted since: its task has nothing left to work on.
                Ok(_) => Command::IssueGone { issue: IssueRef { repo: repo.clone(), number } },
                Err(e) if e.is_not_found() => Command::IssueGone { issue: IssueRef { repo: repo.clone(), number } },
                Err(e) => return Err(e.into()),
            };
            engine.send(command).await.map_err(|e| ReconcileError::Local(e.to_string()))?;
            report.looked_up += 1;
        }
        // A full sweep starts the incremental ones from now on.
        if newest.is_none() {
            newest = Some(Timestamp(chrono::Utc::now().timestamp_millis()).to_rfc3339());
        }
    }
    if let Some(value) = newest.filter(|n| Some(n) != cursor.as_ref()) {
        engine.send(Command::SetMeta { key, value }).await.map_err(|e| ReconcileError::Local(e.to_string()))?;
    }
    Ok(report)
}

/// Whether RFC 3339 time `a` is after `b` (falls back to text order if either does not parse).
fn later(a: &str, b: &str) -> bool {
    match (Timestamp::parse_rfc3339(a), Timestamp::parse_rfc3339(b)) {
        (Some(x), Some(y)) => x > y,
        _ => a > b,
    }
}

/// Where a repository keeps its own settings.
pub const FLEET_FILE: &str = ".forgejo/fleet.yaml";

/// Reads the repository's `fleet.yaml` when it changed since the last read (its blob id tells) and hands the
/// result to the engine. A file that cannot be used is recorded with the reason: the defaults apply, the
/// log says so, and the next task queued in the repository gets a comment.
pub async fn refresh_settings(
    client: &ForgejoClient,
    engine: &EngineHandle,
    reads: &ReadPool,
    repo: &RepoName,
    base_labels: &LabelScheme,
    rooms: Option<&[&str]>,
) -> Result<bool, ReconcileError> {
    let lookup = repo.clone();
    let stored = reads.with(move |r| RepoSettings::read(r, &lookup)).await?;
    let file = client.file(repo, FLEET_FILE, None).await?;
    let overrides = match (&file, &stored) {
        (None, None) => return Ok(false),
        (None, Some(_)) => RepoOverrides::default(),
        (Some((_, sha)), Some(s)) if s.source_sha.as_deref() == Some(sha.as_str()) => return Ok(false),
        (Some((text, sha)), _) => {
            let mut o = match crate::engine::repo::parse_fleet_yaml(text, base_labels, rooms) {
                Ok(o) => o,
                Err(problem) => {
                    tracing::warn!(%repo, %problem, "{FLEET_FILE} cannot be used; the defaults apply");
                    RepoOverrides { problem: Some(problem), ..Default::default() }
                }
            };
            o.source_sha = Some(sha.clone());
            o
        }
    };
    engine
        .send(Command::SetRepoSettings { repo: repo.clone(), overrides })
        .await
        .map_err(|e| ReconcileError::Local(e.to_string()))?;
    Ok(true)
}
