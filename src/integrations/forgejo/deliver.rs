//! Delivers the outbox to Forgejo: labels, comments, assignees, and the commands people wrote.
//!
//! Every delivery is idempotent, because a crash between doing it and recording it means doing it again:
//! labels are set to a target, not toggled; comments carry a hidden marker that is looked for first;
//! commands run through the engine under a key that is recorded the first time. The commands' own part is in
//! `deliver/run_commands.rs`, closing a cancelled attempt's pull request in `deliver/close_pull.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{ForgejoClient, ForgejoError};
use crate::core::{AgentId, Effect, FailureClass, IssueRef, LabelScheme, Notice, TaskId, Timestamp};
use crate::engine::{Command, EngineError, EngineHandle, IssueObservation};
use crate::integrations::templates::{
    CancelledComment, CompletedComment, FailedComment, RetryingComment, StartedComment, TemplateContext, Templates,
};
use crate::store::{OutboxRow, Store};

/// What the deliverer needs besides the client.
pub struct Deliverer {
    pub client: ForgejoClient,
    /// The one path that creates labels.
    pub label_maker: super::labels::LabelMaker,
    pub engine: EngineHandle,
    pub db: PathBuf,
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

mod close_pull;
mod run_commands;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Forgejo(#[from] ForgejoError),
    /// The issue under the row's number is not the one it was written for (the repository was deleted and
    /// created again, or moved): delivering would tell strangers about work that is not theirs.
    #[error("{0}")]
    WrongIssue(String),
    /// The outbox row cannot be turned into a delivery (written by a newer forgefleet, or damaged).
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    Other(String),
}

impl From<EngineError> for DeliveryError {
    fn from(e: EngineError) -> Self {
        DeliveryError::Other(e.to_string())
    }
}

/// Tries before a delivery that fails for good (404, 410, 422) becomes a dead letter. A few, not one: a
/// Forgejo being restored from a backup, or a repository being moved, answers 404 for a while.
pub const DEAD_AFTER: u32 = 5;

impl DeliveryError {
    /// A failure that trying again will not change: the thing is gone (404, 410) or Forgejo refuses what was
    /// sent (422), or the row itself cannot be read.
    pub fn is_permanent(&self) -> bool {
        match self {
            DeliveryError::Forgejo(e) => e.status().is_some_and(|s| matches!(s.as_u16(), 404 | 410 | 422)),
            DeliveryError::Unreadable(_) | DeliveryError::WrongIssue(_) => true,
            DeliveryError::Other(_) => false,
        }
    }

    /// A permanent failure that is certain at once: trying again is pointless.
    pub fn is_final(&self) -> bool {
        matches!(self, DeliveryError::WrongIssue(_))
    }
}

/// The wait before the next try of a failed delivery: 2 s doubling, at most 10 min.
pub fn retry_wait(attempts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_mul(1 << attempts.min(9)).min(600))
}

/// Tries at posting one comment within one delivery, each after looking for it; then the outbox retries.
const COMMENT_TRIES: u32 = 3;

/// The hidden marker that makes a comment findable, so it is never posted twice.
pub fn marker(key: &str) -> String {
    format!("<!-- forgefleet:{key} -->")
}

impl Deliverer {
    /// Reads from the database on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T, DeliveryError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let store = Store::open_read_only(&db)?;
            f(&store)
        })
        .await
        .map_err(|e| DeliveryError::Other(e.to_string()))?
        .map_err(|e| DeliveryError::Other(e.to_string()))
    }

    /// Delivers what is due, each issue's rows in the order they were written; returns how many rows it tried.
    pub async fn deliver_due(&self, now: Timestamp) -> Result<usize, DeliveryError> {
        let rows = self.read(move |s| s.read().outbox_next(now, 50)).await?;
        for row in &rows {
            match self.deliver_row(row).await {
                Ok(()) => {
                    self.engine.send(Command::OutboxDelivered { id: row.id }).await?;
                }
                Err(e) if e.is_final() || (e.is_permanent() && row.attempts + 1 >= DEAD_AFTER) => {
                    tracing::error!(outbox = row.id, kind = %row.kind, attempts = row.attempts + 1, error = %e,
                        "delivery can never succeed; kept as a dead letter (`forgefleet outbox list`)");
                    self.engine.send(Command::OutboxDead { id: row.id, error: e.to_string() }).await?;
                }
                Err(e) => {
                    tracing::warn!(outbox = row.id, kind = %row.kind, attempts = row.attempts + 1, error = %e, "delivery failed; will retry");
                    let retry_in = retry_wait(row.attempts);
                    self.engine.send(Command::OutboxFailed { id: row.id, error: e.to_string(), retry_in }).await?;
                }
            }
        }
        Ok(rows.len())
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
            Effect::RunCommands { origin, author, commands } => self.run_commands(&origin, &author, &commands).await,
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

    /// Leaves exactly the status label the task's state calls for *now*: deliveries that arrive out of
    /// order or twice end in the same place.
    async fn set_status_label(
        &self,
        issue: &IssueRef,
        fallback: Option<crate::core::StatusLabel>,
    ) -> Result<(), DeliveryError> {
        let lookup = issue.clone();
        let task = self.read(move |s| s.read().task_by_issue(&lookup)).await?;
        let want = task.map_or(fallback, |t| t.state.status_label());
        let current = self.client.issue_labels(&issue.repo, issue.number).await?;
        let names: Vec<String> = current.iter().map(|l| l.name.clone()).collect();
        let scheme = super::repo_labels(&self.db, &issue.repo, &self.labels).await;
        let change = scheme.status_change(&names, want);
        if change.is_empty() {
            return Ok(());
        }
        // One replace, so the issue goes from its old labels to the new ones in a single step: webhooks never
        // show it with two status labels, nor with none in between (which would read as a person calling the
        // work off).
        let mut ids: Vec<i64> = current.iter().filter(|l| !change.remove.contains(&l.name)).map(|l| l.id).collect();
        ids.extend(self.label_ids(issue, &change.add).await?);
        self.client.replace_labels(&issue.repo, issue.number, &ids).await?;
        Ok(())
    }

    /// The ids of the named repository labels (the lowest of duplicates), creating the ones that are missing.
    async fn label_ids(&self, issue: &IssueRef, names: &[String]) -> Result<Vec<i64>, DeliveryError> {
        Ok(self.label_maker.ids(&issue.repo, names).await?)
    }

    async fn agent_name(&self, agent: AgentId) -> Result<String, DeliveryError> {
        let found = self.read(move |s| s.read().agent(agent)).await?;
        Ok(found.map(|a| a.name.to_string()).unwrap_or_else(|| format!("agent {agent}")))
    }

    async fn comment(
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
        self.reply(issue, &format!("task-{task}:attempt-{attempt}:{}", notice.kind()), &body).await
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
                    duration: started_at.map(|s| human_duration(s.until(*finished_at))),
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
                explanation: explain(*class).into(),
                retries_left: *retries_left,
                not_before: not_before.to_rfc3339(),
            }),
            Notice::Failed { class, message } => self.render(&FailedComment {
                attempt,
                class: class.as_str().into(),
                message: message.clone(),
                explanation: explain(*class).into(),
            }),
            Notice::Cancelled { reason, was_running } => self.render(&CancelledComment {
                attempt,
                reason: reason.clone(),
                todo_label: self.labels.todo.clone(),
                was_running: *was_running,
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
    async fn reply(&self, issue: &IssueRef, key: &str, body: &str) -> Result<(), DeliveryError> {
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

    fn render<C: TemplateContext>(&self, ctx: &C) -> Result<String, DeliveryError> {
        self.templates.render(ctx).map_err(|e| DeliveryError::Other(e.to_string()))
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

/// A sentence for people about what a failure class means.
fn explain(class: FailureClass) -> &'static str {
    match class {
        FailureClass::AgentLost => "The agent stopped answering (no heartbeats), so its work was taken back.",
        FailureClass::Timeout => "The task ran past its time limit.",
        FailureClass::AgentError => "The agent's command failed.",
        FailureClass::VerificationFailed => "The pull request the agent reported did not check out.",
        FailureClass::RateLimited => "The model provider asked to slow down.",
        FailureClass::Cancelled => "It was cancelled.",
    }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "under a second".to_string(),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// Colours for the labels forgefleet creates.
pub fn label_color(name: &str) -> &'static str {
    match name.rsplit(':').next().unwrap_or(name) {
        "todo" => "#0075ca",
        "doing" => "#fbca04",
        "done" => "#0e8a16",
        "failed" => "#d73a4a",
        "critical" => "#b60205",
        "high" => "#d93f0b",
        "medium" => "#fbca04",
        "low" => "#c2e0c6",
        _ => "#ededed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_double_up_to_ten_minutes() {
        let waits: Vec<u64> = (0..12).map(|n| retry_wait(n).as_secs()).collect();
        assert_eq!(&waits[..5], &[2, 4, 8, 16, 32]);
        assert_eq!(waits[11], 600);
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(Duration::from_secs(42)), "42 s");
        assert_eq!(human_duration(Duration::from_millis(400)), "under a second", "never \"0 s\"");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 min");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1 h 2 min");
    }

    #[test]
    fn every_class_has_an_explanation_and_every_status_a_colour() {
        for c in FailureClass::ALL {
            assert!(!explain(c).is_empty());
        }
        assert_eq!(label_color("status:done"), "#0e8a16");
        assert_eq!(marker("task-1:attempt-2:completed"), "<!-- forgefleet:task-1:attempt-2:completed -->");
    }
}
