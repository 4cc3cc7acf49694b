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
