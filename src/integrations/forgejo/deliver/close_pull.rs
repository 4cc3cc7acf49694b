//! Closing the pull request of a cancelled attempt, with a comment on it saying why (posted once: its marker
//! is looked for first). The pull request is the receipt's, or the open one from the attempt's branch.

use super::{Deliverer, DeliveryError};
use crate::core::{IssueRef, TaskId};

impl Deliverer {
    pub(super) async fn close_pull(
        &self,
        issue: &IssueRef,
        task: TaskId,
        attempt: u32,
        pr_number: Option<u64>,
        reason: &str,
        branch: Option<String>,
    ) -> Result<(), DeliveryError> {
        // The branch the attempt was assigned: an earlier attempt's it continued, or its own.
        let branch = branch.unwrap_or_else(|| crate::core::work_branch(&self.branch_prefix, issue.number, attempt));
        let open = self.client.open_pulls(&issue.repo).await?;
        // Only an open pull request of this attempt: a receipt may name any number, and a person's own pull
        // request is never closed.
        let Some(pull) = open.iter().find(|p| match pr_number {
            Some(n) => p.number == n && p.head.name == branch,
            None => p.head.name == branch,
        }) else {
            return Ok(());
        };
        let on_pull = IssueRef { repo: issue.repo.clone(), number: pull.number };
        let body = format!(
            "🛑 The task for #{} was cancelled ({reason}), so this pull request of attempt {attempt} is closed. Its \
             branch `{branch}` is kept.",
            issue.number
        );
        self.reply(&on_pull, &format!("task-{task}:attempt-{attempt}:pull-closed"), &body).await?;
        self.client.close_pull(&issue.repo, pull.number).await?;
        Ok(())
    }
}
