//! What forgefleet tells people on an issue: a task's notices rendered into comments, and every comment posted
//! once (a hidden marker, looked for among forgefleet's own comments before each send).

use std::time::Duration;

use super::{Deliverer, DeliveryError};
use crate::core::{IssueRef, Notice, TaskId};
use crate::integrations::templates::{
    BlockedComment, CancelledComment, CompletedComment, FailedComment, PullEndedComment, RetryingComment,
    StartedComment, TemplateContext,
};

/// The comment on a pull request that no longer merges. The branch name and the sha are forgefleet's own
/// (checked when the receipt was verified, or read from Forgejo's API), shown as code.
fn conflicted_text(pr: u64, head: &str, base: &str, then: crate::core::OnConflict, todo: &str) -> String {
    use crate::core::OnConflict;
    let head = head.get(..12).unwrap_or(head);
    let what = format!(
        "⚠️ **Conflicts**: the base branch `{base}` moved and pull request #{pr} (at `{head}`) no longer merges."
    );
    match then {
        OnConflict::Merge { round } => format!(
            "{what} Round {round} of changes is queued (`auto_rebase`): an agent merges `{base}` into the branch and \
             resolves the conflicts, on the same branch and pull request."
        ),
        OnConflict::Tell => format!(
            "{what} Merge `{base}` into the branch and resolve the conflicts, or set `auto_rebase: true` in the \
             repository's `.forgejo/fleet.yaml` to have an agent do it; label the issue `{todo}` for a fresh attempt."
        ),
        OnConflict::RoundsSpent { rounds } => format!(
            "{what} Its {rounds} round(s) of changes (`review_rounds`) are spent: a person merges `{base}` into the \
             branch and resolves the conflicts."
        ),
    }
}

/// Tries at posting one comment within one delivery, each after looking for it; then the outbox retries.
const COMMENT_TRIES: u32 = 3;

/// The hidden marker that makes a comment findable, so it is never posted twice.
pub fn marker(key: &str) -> String {
    format!("<!-- forgefleet:{key} -->")
}

impl Deliverer {
    pub(super) fn render<C: TemplateContext>(&self, ctx: &C) -> Result<String, DeliveryError> {
        self.templates.render(ctx).map_err(|e| DeliveryError::Other(e.to_string()))
    }

    pub(super) async fn comment(
        &self,
        issue: &IssueRef,
        task: TaskId,
        attempt: u32,
        notice: &Notice,
    ) -> Result<(), DeliveryError> {
        if matches!(notice, Notice::Started { .. }) && !self.comment_on_start {
            return Ok(());
        }
        let body = self.notice_body(issue, attempt, notice).await?;
        self.reply(issue, &format!("task-{task}:attempt-{attempt}:{}", notice.marker_kind()), &body).await
    }

    /// The comment for `notice`, from its template.
    async fn notice_body(&self, issue: &IssueRef, attempt: u32, notice: &Notice) -> Result<String, DeliveryError> {
        match notice {
            // The issue shows its assignee; only chat rooms are told of an assignment.
            Notice::Assigned { agent } => Ok(format!("Assigned to {}.", self.agent_name(*agent).await?)),
            Notice::Started { agent } => {
                self.render(&StartedComment { agent: self.agent_name(*agent).await?, attempt })
            }
            Notice::Completed { agent, receipt, validation, started_at, finished_at } => {
                let agent = match agent {
                    Some(a) => self.agent_name(*a).await?,
                    None => "an agent".into(),
                };
                let receipt = receipt.as_ref();
                self.render(&CompletedComment {
                    agent,
                    attempt,
                    repo: issue.repo.to_string(),
                    duration: started_at.map(|s| crate::core::time::human_duration(s.until(*finished_at))),
                    pr_number: receipt.map(|r| r.pr_number),
                    pr_url: receipt.map(|r| self.client.pull_url(&issue.repo, r.pr_number)),
                    summary: receipt.map(|r| r.summary.clone()).unwrap_or_default(),
                    tokens: receipt.map(|r| format!("{} in / {} out", r.usage.input_tokens, r.usage.output_tokens)),
                    cost: receipt.and_then(|r| r.cost_usd).map(|c| format!("{c:.2}")),
                    files: validation.as_ref().map(|v| v.files.clone()).unwrap_or_default(),
                    checks: validation
                        .as_ref()
                        .map(|v| v.checks.iter().map(|c| c.detail.clone()).collect())
                        .unwrap_or_default(),
                })
            }
            Notice::Retrying { class, message, retries_left, not_before } => self.render(&RetryingComment {
                attempt,
                class: class.as_str().into(),
                message: message.clone(),
                explanation: class.explain().into(),
                retries_left: *retries_left,
                not_before: not_before.to_rfc3339(),
            }),
            Notice::Failed { class, message } => self.render(&FailedComment {
                attempt,
                class: class.as_str().into(),
                message: message.clone(),
                explanation: class.explain().into(),
            }),
            Notice::Cancelled { reason, was_running } => self.render(&CancelledComment {
                attempt,
                reason: reason.clone(),
                todo_label: self.labels.todo.clone(),
                was_running: *was_running,
            }),
            // The login is Forgejo's (letters, digits, `-`, `_`, `.`): shown as code, it mentions no one.
            Notice::FollowUp { round, pr_number, by } => Ok(format!(
                "🔁 **Changes requested** on #{pr_number} by `{by}`: round {round} of changes is queued (attempt \
                 {attempt}), on the same branch and pull request."
            )),
            Notice::PullEnded { pr_number, merged, by, then } => self.render(&PullEndedComment {
                pr_number: *pr_number,
                merged: *merged,
                by: by.clone(),
                then: then.as_str().into(),
                todo_label: self.labels.todo.clone(),
            }),
            Notice::Conflicted { pr_number, head_sha, base_branch, then } => {
                Ok(conflicted_text(*pr_number, head_sha, base_branch, *then, &self.labels.todo))
            }
            Notice::Blocked { question } => self.render(&BlockedComment {
                attempt,
                question: question.clone(),
                todo_label: self.labels.todo.clone(),
            }),
        }
    }

    /// forgefleet's own login: the one place that says whose comments are forgefleet's.
    async fn bot_login(&self) -> Result<String, DeliveryError> {
        if let Some(login) = self.bot.get() {
            return Ok(login);
        }
        let login = self.client.current_user().await?.login;
        self.bot.set(login.clone());
        Ok(login)
    }

    /// Whether forgefleet already posted the comment `key` marks. Only its own comments count: anyone who may
    /// comment can write the marker too, and must not be able to silence forgefleet with it.
    async fn already_posted(&self, issue: &IssueRef, key: &str) -> Result<bool, DeliveryError> {
        let mark = marker(key);
        let bot = self.bot_login().await?;
        let existing = self.client.comments(&issue.repo, issue.number).await?;
        Ok(existing.iter().any(|c| c.user.login.eq_ignore_ascii_case(&bot) && c.body.contains(&mark)))
    }

    /// Posts `body` once: the marker for `key` is looked for among forgefleet's own comments before every
    /// send, the first and each retry, because a `POST` whose answer was lost may have been applied.
    pub(super) async fn reply(&self, issue: &IssueRef, key: &str, body: &str) -> Result<(), DeliveryError> {
        let text = format!("{body}\n\n{}", marker(key));
        let mut wait = Duration::from_millis(250);
        for attempt in 1..=COMMENT_TRIES {
            if self.already_posted(issue, key).await? {
                return Ok(());
            }
            match self.client.create_comment(&issue.repo, issue.number, &text).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_transient() && attempt < COMMENT_TRIES => {
                    tracing::info!(%issue, key, error = %e, "a comment may not have been posted; looking before trying again");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the last try returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_an_explanation_and_comments_a_marker() {
        for c in crate::core::FailureClass::ALL {
            assert!(!c.explain().is_empty());
        }
        assert_eq!(marker("task-1:attempt-2:completed"), "<!-- forgefleet:task-1:attempt-2:completed -->");
    }
}
