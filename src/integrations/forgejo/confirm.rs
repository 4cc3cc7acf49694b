//! Confirming what a webhook showed: the issue as Forgejo has it now decides whether a task is queued or
//! cancelled, never a delivery that may be stale, out of order, or about an issue that is gone.

use super::ForgejoClient;
use super::deliver::observation;
use crate::core::IssueRef;
use crate::engine::{Command, EngineHandle};
use crate::integrations::outbox::DeliveryError;

/// Reads the issue and has the engine observe it (fresh); an issue that does not exist (or is a pull request
/// under that number) cancels its task, if it has a live one.
pub async fn confirm_issue(
    client: &ForgejoClient,
    engine: &EngineHandle,
    issue: &IssueRef,
) -> Result<(), DeliveryError> {
    let command = match client.issue(&issue.repo, issue.number).await {
        Ok(now) if !now.is_pull() => Command::ObserveIssue(observation(&issue.repo, &now)),
        Ok(_) => Command::IssueGone { issue: issue.clone() },
        Err(e) if e.is_not_found() || e.status().is_some_and(|s| s.as_u16() == 410) => {
            Command::IssueGone { issue: issue.clone() }
        }
        Err(e) => return Err(e.into()),
    };
    engine.send(command).await?;
    Ok(())
}

/// Reads the pull request and has the engine observe how it is now: closed (merged or not) records the end of
/// its completed task. One that does not exist (any more) says nothing.
pub async fn confirm_pull(client: &ForgejoClient, engine: &EngineHandle, pull: &IssueRef) -> Result<(), DeliveryError> {
    let pr = match client.pull_request(&pull.repo, pull.number).await {
        Ok(pr) => pr,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    engine.send(observe_pull(&pull.repo, &pr)).await?;
    Ok(())
}

/// The engine's view of a pull request as Forgejo has it.
pub fn observe_pull(repo: &crate::core::RepoName, pr: &super::types::PullRequest) -> Command {
    Command::ObservePull {
        repo: repo.clone(),
        number: pr.number,
        closed: pr.state == "closed" || pr.merged,
        merged: pr.merged,
        by: pr.merged_by.as_ref().map(|u| u.login.clone()),
    }
}
