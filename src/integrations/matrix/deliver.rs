//! Delivers the Matrix destination of the outbox: what happens to tasks and agents, agents' progress, and
//! answers to commands.
//!
//! Not a flood: a task has one top-level message, edited in place (`m.replace`) as it moves; only what needs a
//! person (a task failed for good, an agent lost) gets a message of its own. Each agent has a thread, under a
//! root message kept in the store, where its news and its batched progress go. Every message is sent under a
//! transaction id made from its outbox row, so a crash between the send and its record sends nothing twice
//! (the homeserver answers the same transaction id with the same event).

use std::sync::Arc;

use tokio::sync::watch;

use super::{Bot, MessageRelation, OutgoingMessage, SendError};
use crate::config::MatrixConfig;
use crate::core::{AgentId, AgentNews, Effect, IssueRef, Notice, TaskId};
use crate::engine::repo::RepoSettings;
use crate::engine::{Command, EngineHandle};
use crate::integrations::outbox::{Deliver, Delivery, DeliveryError};
use crate::integrations::templates::{
    ChatAgent, ChatMessage, ChatProgress, ChatTask, ChatTaskBlocked, ChatTaskFailed, TemplateContext, Templates,
};
use crate::store::{OutboxRow, ReadPool, ReadView};

/// How long a delivery waits for the bot to log in before it counts as a failed try.
const LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct MatrixDeliverer {
    /// The bot once it has logged in (`MatrixHandle::watch`).
    pub bot: watch::Receiver<Option<Bot>>,
    pub engine: EngineHandle,
    pub reads: ReadPool,
    pub templates: Arc<Templates>,
    pub config: MatrixConfig,
    /// Forgejo's web address, for links to issues and pull requests.
    pub forgejo_url: Option<String>,
}

impl Deliver for MatrixDeliverer {
    fn deliver<'a>(&'a self, row: &'a OutboxRow) -> Delivery<'a> {
        Box::pin(self.deliver_row(row))
    }

    /// A room is read as things happen: after an outage, news should arrive within a minute of the homeserver
    /// being back, not after Forgejo's ten-minute backoff.
    fn backoff(&self, attempts: u32) -> std::time::Duration {
        crate::integrations::outbox::retry_wait(attempts).min(std::time::Duration::from_secs(60))
    }
}

impl From<SendError> for DeliveryError {
    fn from(e: SendError) -> Self {
        if e.is_permanent() { DeliveryError::Refused(e.to_string()) } else { DeliveryError::Other(e.to_string()) }
    }
}

impl MatrixDeliverer {
    async fn deliver_row(&self, row: &OutboxRow) -> Result<(), DeliveryError> {
        let effect = Effect::from_json(&row.payload)
            .map_err(|e| DeliveryError::Unreadable(format!("outbox row {} cannot be read: {e}", row.id)))?;
        // At start the bot is still logging in: wait for it a while rather than count a failed try (whose
        // backoff would hold the room's messages back long after it is in).
        let mut watch = self.bot.clone();
        let bot = match tokio::time::timeout(LOGIN_WAIT, watch.wait_for(Option::is_some)).await {
            Ok(Ok(bot)) => bot.clone().expect("waited for Some"),
            _ => {
                return Err(DeliveryError::Other(
                    "the Matrix bot has not logged in yet (see the log for why): messages wait".into(),
                ));
            }
        };
        let txn = |part: &str| format!("forgefleet-outbox-{}-{part}", row.id);
        let state = effect.chat_kind().unwrap_or_default().to_string();
        match effect {
            Effect::ChatTask { issue, task, attempt, notice } => {
                self.task_news(&bot, &txn, &issue, task, attempt, &notice, &state).await
            }
            Effect::ChatAgent { agent, news } => self.agent_news(&bot, &txn, agent, &news).await,
            Effect::ChatProgress { agent, lines, skipped } => {
                let name = self.agent_name(agent).await?;
                let message = self.render(&ChatProgress { agent: name, lines, skipped })?;
                let root = self.agent_root(&bot, agent).await?;
                let room = self.config.default_room().unwrap_or_default().to_string();
                self.send(&bot, &room, txn("progress"), message, Some(MessageRelation::Thread { root })).await?;
                Ok(())
            }
            Effect::MatrixReply { room, in_reply_to, body, .. } => {
                let message = ChatMessage::from_markdown(body);
                let relation = Some(MessageRelation::Thread { root: in_reply_to });
                self.send(&bot, &room, txn("reply"), message, relation).await?;
                Ok(())
            }
            other => Err(DeliveryError::Unreadable(format!(
                "outbox row {} ({}) is not a Matrix message: the Matrix deliverer does not send it",
                row.id,
                other.kind()
            ))),
        }
    }

    /// A task's news: its one message, posted the first time and edited in place after; a failure for good is
    /// also a message of its own, because it needs a person.
    #[allow(clippy::too_many_arguments)]
    async fn task_news(
        &self,
        bot: &Bot,
        txn: &impl Fn(&str) -> String,
        issue: &IssueRef,
        task: TaskId,
        attempt: u32,
        notice: &Notice,
        state: &str,
    ) -> Result<(), DeliveryError> {
        if let Notice::PullEnded { .. } | Notice::FollowUp { .. } | Notice::Conflicted { .. } = notice {
            return self.pull_news(bot, txn, issue, task, notice).await;
        }
        let ctx = self.task_context(issue, task, attempt, notice, state).await?;
        let message = self.render(&ctx)?;
        let key = format!("task:{task}");
        let lookup = key.clone();
        let room = match self.read(move |r| r.matrix_message(&lookup)).await? {
            // Edits go where the message is, even if the configuration has moved the repository since.
            Some((room, event_id)) => {
                self.send(bot, &room, txn("edit"), message, Some(MessageRelation::Replace { event_id })).await?;
                room
            }
            None => {
                let room = self.room_for(issue).await?;
                let event_id = self.send(bot, &room, txn("task"), message, None).await?;
                self.remember(key, room.clone(), event_id).await?;
                room
            }
        };
        match notice {
            Notice::Failed { .. } => {
                let failed = self.render(&ChatTaskFailed(ctx))?;
                self.send(bot, &room, txn("failed"), failed, None).await?;
            }
            Notice::Blocked { .. } => {
                let blocked = self.render(&ChatTaskBlocked(ctx))?;
                self.send(bot, &room, txn("blocked"), blocked, None).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The end of a completed task's pull request: a line in the thread of the task's message (the completed
    /// message itself stays as it was), or in the room when there is none.
    async fn pull_news(
        &self,
        bot: &Bot,
        txn: &impl Fn(&str) -> String,
        issue: &IssueRef,
        task: TaskId,
        notice: &Notice,
    ) -> Result<(), DeliveryError> {
        if let Notice::FollowUp { round, pr_number, by } = notice {
            let by: String = by.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
            let text = format!(
                "🔁 {}#{}: {by} asked for changes on #{pr_number}; round {round} is queued.",
                issue.repo, issue.number
            );
            return self.line_in_thread(bot, txn, issue, task, text).await;
        }
        if let Notice::Conflicted { pr_number, base_branch, then, .. } = notice {
            // A branch name forgefleet checked is shown as code; what is done about it, in forgefleet's words.
            let base: String = base_branch.chars().filter(|c| !c.is_control() && *c != '`').collect();
            let next = match then {
                crate::core::OnConflict::Merge { round } => format!("round {round} merges `{base}` in"),
                crate::core::OnConflict::Tell => "a person resolves the conflicts".into(),
                crate::core::OnConflict::RoundsSpent { .. } => {
                    "its rounds of changes are spent: a person resolves the conflicts".into()
                }
            };
            let text = format!(
                "⚠️ {}#{}: pull request #{pr_number} no longer merges into `{base}`; {next}.",
                issue.repo, issue.number
            );
            return self.line_in_thread(bot, txn, issue, task, text).await;
        }
        let Notice::PullEnded { pr_number, merged, by, then } = notice else { return Ok(()) };
        let pr = format!("[#{pr_number}]({})", self.web(&format!("{}/pulls/{pr_number}", issue.repo)));
        // A Forgejo login: letters, digits, `-`, `_` and `.`; anything else is left out rather than rendered.
        let by: Option<String> = by
            .as_deref()
            .filter(|b| b.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
            .map(|b| format!(" by {b}"));
        let by = by.unwrap_or_default();
        let text = if *merged {
            format!("🟣 {}#{}: pull request {pr} was merged{by}.", issue.repo, issue.number)
        } else {
            let next = match then {
                crate::core::OnPullClosed::Requeue => "the task is queued again",
                crate::core::OnPullClosed::Fail => "the task is marked failed",
                crate::core::OnPullClosed::Nothing => "the task stays completed",
            };
            format!("⚫ {}#{}: pull request {pr} was closed without merging{by}; {next}.", issue.repo, issue.number)
        };
        self.line_in_thread(bot, txn, issue, task, text).await
    }

    /// `text` in the thread of the task's message, or in the room when the task has none.
    async fn line_in_thread(
        &self,
        bot: &Bot,
        txn: &impl Fn(&str) -> String,
        issue: &IssueRef,
        task: TaskId,
        text: String,
    ) -> Result<(), DeliveryError> {
        let lookup = format!("task:{task}");
        let (room, relation) = match self.read(move |r| r.matrix_message(&lookup)).await? {
            Some((room, root)) => (room, Some(MessageRelation::Thread { root })),
            None => (self.room_for(issue).await?, None),
        };
        self.send(bot, &room, txn("line"), ChatMessage::from_markdown(text), relation).await?;
        Ok(())
    }

    async fn agent_news(
        &self,
        bot: &Bot,
        txn: &impl Fn(&str) -> String,
        agent: AgentId,
        news: &AgentNews,
    ) -> Result<(), DeliveryError> {
        let name = self.agent_name(agent).await?;
        let (word, issue) = match news {
            AgentNews::Online => ("online", None),
            AgentNews::Draining => ("draining", None),
            AgentNews::Offline => ("offline", None),
            AgentNews::Lost { issue, .. } => ("lost", Some(issue)),
        };
        let ctx = ChatAgent {
            agent: name,
            news: word.into(),
            repo: issue.map(|i| i.repo.to_string()),
            issue: issue.map(|i| i.number),
            issue_url: issue.map(|i| self.web(&format!("{}/issues/{}", i.repo, i.number))),
        };
        let message = self.render(&ctx)?;
        let room = self.config.default_room().unwrap_or_default().to_string();
        let root = self.agent_root(bot, agent).await?;
        self.send(bot, &room, txn("agent"), message.clone(), Some(MessageRelation::Thread { root })).await?;
        if let AgentNews::Lost { .. } = news {
            // A lost agent needs a person: said in the room itself, not only in the agent's thread.
            self.send(bot, &room, txn("lost"), message, None).await?;
        }
        Ok(())
    }

    /// The event the agent's thread hangs from, posted the first time it is needed.
    async fn agent_root(&self, bot: &Bot, agent: AgentId) -> Result<String, DeliveryError> {
        let key = format!("agent:{agent}");
        let lookup = key.clone();
        if let Some((_, event_id)) = self.read(move |r| r.matrix_message(&lookup)).await? {
            return Ok(event_id);
        }
        let name = self.agent_name(agent).await?;
        let text = format!(
            "🤖 Agent **{}**: its news and progress, in this thread.",
            crate::integrations::templates::chat::text(&name)
        );
        let room = self.config.default_room().unwrap_or_default().to_string();
        // The same transaction id for every try: a root posted before a crash is found again, not posted twice.
        let event_id = self
            .send(bot, &room, format!("forgefleet-agent-root-{agent}"), ChatMessage::from_markdown(text), None)
            .await?;
        self.remember(key, room, event_id.clone()).await?;
        Ok(event_id)
    }

    async fn task_context(
        &self,
        issue: &IssueRef,
        task: TaskId,
        attempt: u32,
        notice: &Notice,
        state: &str,
    ) -> Result<ChatTask, DeliveryError> {
        let title = self.read(move |r| Ok(r.task(task)?.map(|t| t.title))).await?.unwrap_or_default();
        let mut ctx = ChatTask {
            repo: issue.repo.to_string(),
            issue: issue.number,
            issue_url: self.web(&format!("{}/issues/{}", issue.repo, issue.number)),
            title,
            task: task.0 as u64,
            attempt,
            state: state.to_string(),
            agent: String::new(),
            duration: None,
            pr_number: None,
            pr_url: None,
            files: Vec::new(),
            tokens: None,
            cost: None,
            class: None,
            message: None,
            explanation: None,
            retries_left: None,
            not_before: None,
            reason: None,
        };
        match notice {
            Notice::Assigned { agent } | Notice::Started { agent } => ctx.agent = self.agent_name(*agent).await?,
            Notice::Completed { agent, receipt, validation, started_at, finished_at } => {
                ctx.agent = match agent {
                    Some(a) => self.agent_name(*a).await?,
                    None => "an agent".into(),
                };
                ctx.duration = started_at.map(|s| crate::core::time::human_duration(s.until(*finished_at)));
                if let Some(r) = receipt {
                    ctx.pr_number = Some(r.pr_number);
                    ctx.pr_url = Some(self.web(&format!("{}/pulls/{}", issue.repo, r.pr_number)));
                    ctx.tokens = Some(format!("{} in / {} out", r.usage.input_tokens, r.usage.output_tokens));
                    ctx.cost = r.cost_usd.map(|c| format!("{c:.2}"));
                }
                ctx.files = validation.as_ref().map(|v| v.files.clone()).unwrap_or_default();
            }
            Notice::Retrying { class, message, retries_left, not_before } => {
                ctx.class = Some(class.as_str().into());
                ctx.message = Some(message.clone());
                ctx.explanation = Some(class.explain().into());
                ctx.retries_left = Some(*retries_left);
                ctx.not_before = Some(not_before.to_rfc3339());
            }
            Notice::Failed { class, message } => {
                ctx.class = Some(class.as_str().into());
                ctx.message = Some(message.clone());
                ctx.explanation = Some(class.explain().into());
            }
            Notice::Cancelled { reason, .. } => ctx.reason = Some(reason.clone()),
            Notice::PullEnded { .. } | Notice::FollowUp { .. } | Notice::Conflicted { .. } => {}
            Notice::Blocked { question } => ctx.message = Some(question.clone()),
        }
        Ok(ctx)
    }

    /// The room a task's message goes to: the one its repository's `fleet.yaml` chose (`matrix.room`), if
    /// the configuration still allows it; else the repository's first room (`[matrix.repos]`), else the default.
    async fn room_for(&self, issue: &IssueRef) -> Result<String, DeliveryError> {
        let allowed = self.config.rooms_for(&issue.repo);
        let repo = issue.repo.clone();
        let chosen = self.read(move |r| Ok(RepoSettings::read(r, &repo)?.and_then(|o| o.matrix_room))).await?;
        if let Some(room) = chosen.filter(|c| allowed.contains(&c.as_str())) {
            return Ok(room);
        }
        allowed
            .first()
            .map(|r| r.to_string())
            .ok_or_else(|| DeliveryError::Refused("matrix.rooms is empty: there is no room to post to".into()))
    }

    async fn agent_name(&self, agent: AgentId) -> Result<String, DeliveryError> {
        let found = self.read(move |r| r.agent(agent)).await?;
        Ok(found.map(|a| a.name.to_string()).unwrap_or_else(|| format!("agent {agent}")))
    }

    async fn remember(&self, key: String, room: String, event_id: String) -> Result<(), DeliveryError> {
        self.engine.send(Command::MatrixPosted { key, room, event_id }).await?;
        Ok(())
    }

    async fn send(
        &self,
        bot: &Bot,
        room: &str,
        txn_id: String,
        message: ChatMessage,
        relation: Option<MessageRelation>,
    ) -> Result<String, DeliveryError> {
        let out = OutgoingMessage {
            room: room.to_string(),
            txn_id,
            body: message.body,
            html: Some(message.formatted_body),
            // Nobody is pinged: every name in these messages comes from agents, issues or the fleet itself.
            mentions: Vec::new(),
            relation,
        };
        Ok(bot.send(&out).await?.to_string())
    }

    fn render<C: TemplateContext>(&self, ctx: &C) -> Result<ChatMessage, DeliveryError> {
        self.templates.render_chat(ctx).map_err(|e| DeliveryError::Other(e.to_string()))
    }

    fn web(&self, path: &str) -> String {
        match &self.forgejo_url {
            Some(base) => format!("{}/{path}", base.trim_end_matches('/')),
            None => path.to_string(),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(ReadView<'_>) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T, DeliveryError> {
        Ok(self.reads.with(f).await?)
    }
}
