//! Delivers the Forgejo destination of the outbox: labels, comments, assignees, commit statuses, and the
//! commands people wrote. The generic loop (polling, retries, dead letters, per-issue order) is
//! `integrations::outbox::Worker`; this is Forgejo's `Deliver`.
//!
//! Every delivery is idempotent, because a crash between doing it and recording it means doing it again:
//! labels are set to a target, not toggled (`deliver/labels.rs`); comments carry a hidden marker that is looked
//! for first (`deliver/notices.rs`); commands run through the engine under a key that is recorded the first
//! time (`deliver/run_commands.rs`); closing a cancelled attempt's pull request is `deliver/close_pull.rs`; a
//! pull request's reviews becoming a round of changes is `deliver/reviews.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ForgejoClient, ForgejoError};
use crate::core::{AgentId, Effect, IssueRef, LabelScheme, Timestamp};
use crate::engine::{EngineHandle, IssueObservation};
use crate::integrations::outbox::{Deliver, Delivery, DeliveryError};
use crate::integrations::templates::Templates;
use crate::store::{OutboxRow, ReadPool, ReadView};

mod close_pull;
mod labels;
mod notices;
mod reviews;
mod run_commands;

pub use notices::marker;

/// What the deliverer needs besides the client.
pub struct Deliverer {
    pub client: ForgejoClient,
    /// The one path that creates labels.
    pub label_maker: super::labels::LabelMaker,
    pub engine: EngineHandle,
    /// The store's read path, shared with the other workers.
    pub reads: ReadPool,
    pub labels: LabelScheme,
    pub templates: Arc<Templates>,
    pub agent_users: BTreeMap<String, String>,
    pub comment_on_start: bool,
    /// The bot's own login: its comments never run as commands, and none run until it is known.
    pub bot: super::identity::BotLogin,
    /// Where agents push: `<branch_prefix>issue-<N>-attempt-<A>` (`[forgejo] branch_prefix`).
    pub branch_prefix: String,
    pub clock: Arc<dyn crate::engine::Clock>,
    /// `[matrix] admins`: Matrix users who may run every command.
    pub matrix_admins: Vec<String>,
    /// `[matrix.users]`: Matrix user -> Forgejo login, whose permission a Matrix command is checked with.
    pub matrix_users: BTreeMap<String, String>,
}

/// Forgejo's answers as the outbox sees them: gone (404, 410) or refused (422) is a refusal that trying again
/// will not change; anything else (down, slow, 5xx) is tried again.
impl From<ForgejoError> for DeliveryError {
    fn from(e: ForgejoError) -> Self {
        if e.status().is_some_and(|s| matches!(s.as_u16(), 404 | 410 | 422)) {
            DeliveryError::Refused(e.to_string())
        } else {
            DeliveryError::Other(e.to_string())
        }
    }
}

impl Deliver for Deliverer {
    fn deliver<'a>(&'a self, row: &'a OutboxRow) -> Delivery<'a> {
        Box::pin(self.deliver_row(row))
    }
}

impl Deliverer {
    /// Reads through the shared read pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(ReadView<'_>) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T, DeliveryError> {
        Ok(self.reads.with(f).await?)
    }

    /// The label scheme of the issue's repository (its `fleet.yaml`'s, or the server's).
    async fn scheme(&self, issue: &IssueRef) -> LabelScheme {
        super::repo_labels(&self.reads, &issue.repo, &self.labels).await
    }

    async fn deliver_row(&self, row: &OutboxRow) -> Result<(), DeliveryError> {
        let effect = Effect::from_json(&row.payload)
            .map_err(|e| DeliveryError::Unreadable(format!("outbox row {} cannot be read: {e}", row.id)))?;
        // A commit status belongs to a commit, and commands to the comment that holds them, not to a task; an
        // assignee is written only for agents with a Forgejo user.
        let for_issue = match effect {
            // A confirmation reads the issue itself, and finds out when it is gone.
            Effect::SetCommitStatus { .. }
            | Effect::RunCommands { .. }
            | Effect::ConfirmIssue { .. }
            | Effect::ConfirmPull { .. }
            | Effect::ConfirmReviews { .. }
            | Effect::MatrixReply { .. }
            | Effect::ChatTask { .. }
            | Effect::ChatAgent { .. }
            | Effect::ChatProgress { .. } => false,
            Effect::SetAssignee { .. } => !self.agent_users.is_empty(),
            _ => true,
        };
        if let Some(id) = row.issue_id
            && for_issue
            && let Some(issue) = effect.issue()
        {
            self.same_issue(issue, id).await?;
        }
        match effect {
            Effect::SetStatusLabel { issue, status } => self.set_status_label(&issue, status).await,
            Effect::Comment { issue, task, attempt, notice } => self.comment(&issue, task, attempt, &notice).await,
            Effect::SetAssignee { issue, agent } => self.set_assignee(&issue, agent).await,
            Effect::RunCommands { origin, author, commands, quiet } => {
                self.run_commands(&origin, &author, &commands, quiet).await
            }
            Effect::SetAgentLabel { issue, agent } => self.set_agent_label(&issue, &agent).await,
            Effect::MatrixReply { .. }
            | Effect::ChatTask { .. }
            | Effect::ChatAgent { .. }
            | Effect::ChatProgress { .. } => Err(DeliveryError::Unreadable(format!(
                "outbox row {} is a Matrix message: the Forgejo deliverer does not send those",
                row.id
            ))),
            Effect::Reply { issue, key, body } => self.reply(&issue, &key, &body).await,
            Effect::React { issue, comment_id, content } => {
                Ok(self.client.react_to_comment(&issue.repo, comment_id, &content).await?)
            }
            Effect::SetCommitStatus { issue, sha, state, description, .. } => {
                self.commit_status(&issue, &sha, state, &description).await
            }
            Effect::ConfirmIssue { issue } => super::confirm::confirm_issue(&self.client, &self.engine, &issue).await,
            Effect::ConfirmPull { pull } => super::confirm::confirm_pull(&self.client, &self.engine, &pull).await,
            Effect::ConfirmReviews { pull } => self.confirm_reviews(&pull).await,
            Effect::ClosePull { issue, task, attempt, pr_number, reason, branch } => {
                self.close_pull(&issue, task, attempt, pr_number, &reason, branch).await
            }
        }
    }

    /// Fails unless the issue under `issue`'s number is still the one with Forgejo id `id`.
    async fn same_issue(&self, issue: &IssueRef, id: i64) -> Result<(), DeliveryError> {
        let now = self.client.issue(&issue.repo, issue.number).await?;
        if now.id == id {
            return Ok(());
        }
        Err(DeliveryError::WrongIssue(format!(
            "{issue} is now a different issue (Forgejo id {}, the task's was {id}): the repository was recreated or \
             the issue replaced; nothing is written to it",
            now.id
        )))
    }

    /// Marks the receipt's head commit on Forgejo. Statuses are kept per context and the newest wins, so a
    /// repeated delivery changes nothing people see. A commit the repository does not have (a receipt naming
    /// a made-up head: its check says so) has nothing to mark.
    async fn commit_status(
        &self,
        issue: &IssueRef,
        sha: &crate::core::CommitSha,
        state: crate::core::CommitState,
        description: &str,
    ) -> Result<(), DeliveryError> {
        let url = self.client.issue_url(&issue.repo, issue.number);
        // Forgejo keeps at most 255 characters of a description.
        let description: String = description.chars().take(255).collect();
        let result = self
            .client
            .create_status(&issue.repo, sha.as_str(), state.as_str(), crate::core::STATUS_CONTEXT, &description, &url)
            .await;
        match result {
            Err(e) if e.is_not_found() => {
                tracing::info!(repo = %issue.repo, sha = %sha, "no commit status: the repository does not have this commit");
                Ok(())
            }
            other => Ok(other?),
        }
    }

    async fn agent_name(&self, agent: AgentId) -> Result<String, DeliveryError> {
        let found = self.read(move |r| r.agent(agent)).await?;
        Ok(found.map(|a| a.name.to_string()).unwrap_or_else(|| format!("agent {agent}")))
    }

    /// Assigns the agent's Forgejo user while it works, and takes it off again; people's assignments stay.
    async fn set_assignee(&self, issue: &IssueRef, agent: Option<AgentId>) -> Result<(), DeliveryError> {
        let login = match agent {
            Some(a) => {
                let name = self.agent_name(a).await?;
                match self.agent_users.get(&name) {
                    Some(login) => Some(login.clone()),
                    None => return Ok(()),
                }
            }
            None => None,
        };
        if login.is_none() && self.agent_users.is_empty() {
            return Ok(());
        }
        let current = self.client.issue(&issue.repo, issue.number).await?;
        let mut logins: Vec<String> = current.assignees.unwrap_or_default().into_iter().map(|u| u.login).collect();
        let before = logins.clone();
        logins.retain(|l| !self.agent_users.values().any(|a| a == l));
        if let Some(l) = login {
            logins.push(l);
        }
        if logins != before {
            self.client.set_assignees(&issue.repo, issue.number, &logins).await?;
        }
        Ok(())
    }
}

/// An issue as the engine sees it, read from the API just now (a webhook's view sets `fresh: false`).
pub fn observation(repo: &crate::core::RepoName, issue: &super::types::Issue) -> IssueObservation {
    IssueObservation {
        issue: IssueRef { repo: repo.clone(), number: issue.number },
        title: issue.title.clone(),
        body: issue.body.clone(),
        labels: issue.label_names(),
        open: issue.is_open(),
        updated_at: Timestamp::parse_rfc3339(&issue.updated_at),
        fresh: true,
        issue_id: Some(issue.id),
    }
}
