//! The commands people write in comments, as the outbox delivers them: the author's permission first (the bot's
//! own comments never run), then each command once through the engine, under a key recorded the first time;
//! the answer is a reaction or a reply on the issue.

use serde_json::json;

use super::observation;
use super::{Deliverer, DeliveryError};
use crate::core::commands::{FleetCommand, Parsed, Place, help, parse_line};
use crate::core::{Effect, IssueRef};
use crate::engine::{Command, EngineError};
use crate::integrations::forgejo::commands;
use crate::integrations::forgejo::types::Permission;

impl Deliverer {
    /// Runs the commands of one comment: the author's permission first, then each command once.
    pub(super) async fn run_commands(
        &self,
        issue: &IssueRef,
        comment_id: i64,
        author: &str,
        lines: &[String],
    ) -> Result<(), DeliveryError> {
        match self.bot.is(author) {
            None => {
                return Err(DeliveryError::Other(
                    "forgefleet does not know its own Forgejo login yet (GET /user): commands wait".into(),
                ));
            }
            Some(true) => return Ok(()),
            Some(false) => {}
        }
        let permission = match self.client.permission(&issue.repo, author).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => Permission { permission: "none".into() },
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 403) => {
                // Forgejo shows other people's permission only to repository admins: without it, nobody's
                // command can be checked, and guessing would let anyone steer the fleet.
                tracing::error!(repo = %issue.repo, "forgefleet's Forgejo account needs admin access to read permissions");
                let body = format!(
                    "@{author} I cannot check who may command me in {}: my account needs admin access to the \
                     repository. Nothing was run.",
                    issue.repo
                );
                let effect =
                    Effect::Reply { issue: issue.clone(), key: format!("reply:{comment_id}:permission"), body };
                let record = Command::FromWebhook {
                    key: format!("cmd:{}:{comment_id}:permission", issue.repo),
                    inner: Box::new(Command::Enqueue(effect)),
                };
                self.engine.send(record).await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for (i, line) in lines.iter().enumerate() {
            let key = format!("cmd:{}:{comment_id}:{i}", issue.repo);
            let Some(parsed) = parse_line(line, Place::Issue) else { continue };
            let answer = match parsed {
                Parsed::Invalid { line, why } => Answer::Reply(self.render("reply_invalid.md", json!({"author": author, "line": line, "why": why}))?),
                Parsed::Valid(_) if !permission.can_write() => Answer::Reply(self.render(
                    "reply_refused.md",
                    json!({"author": author, "repo": issue.repo.as_str(), "permission": permission.permission, "command": line.trim()}),
                )?),
                Parsed::Valid(cmd) => self.execute(issue, &key, author, line.trim(), cmd).await?,
            };
            let effect = match answer {
                Answer::React => Effect::React { issue: issue.clone(), comment_id, content: "+1".into() },
                Answer::Reply(body) => {
                    Effect::Reply { issue: issue.clone(), key: format!("reply:{comment_id}:{i}"), body }
                }
            };
            // Recorded under its own key: running this delivery again answers nothing twice.
            let record =
                Command::FromWebhook { key: format!("{key}:answer"), inner: Box::new(Command::Enqueue(effect)) };
            self.engine.send(record).await?;
        }
        Ok(())
    }

    async fn execute(
        &self,
        issue: &IssueRef,
        key: &str,
        author: &str,
        line: &str,
        cmd: FleetCommand,
    ) -> Result<Answer, DeliveryError> {
        let lookup = issue.clone();
        let task = self.read(move |r| r.task_by_issue(&lookup)).await?;
        let no_task = || {
            self.render(
                "reply_failed.md",
                json!({"author": author, "command": line, "why": format!("there is no task for this issue yet; label it `{}` to queue one", self.labels.todo)}),
            )
            .map(Answer::Reply)
        };
        let failed = |why: String| {
            self.render("reply_failed.md", json!({"author": author, "command": line, "why": why})).map(Answer::Reply)
        };
        let word = match &cmd {
            FleetCommand::Retry { .. } => "retry",
            FleetCommand::Cancel { .. } => "cancel",
            _ => "",
        };
        if let Some(why) = task.as_ref().and_then(|t| commands::not_applicable(word, t)) {
            return failed(why);
        }
        let inner = match cmd {
            FleetCommand::Retry { .. } => match &task {
                Some(t) => Command::RetryTask { task: t.id, by: author.to_string() },
                None => return no_task(),
            },
            FleetCommand::Cancel { .. } => match &task {
                Some(t) => Command::CancelTask { task: t.id, reason: format!("cancelled by @{author}") },
                None => return no_task(),
            },
            FleetCommand::Assign { agent, .. } => {
                let name = agent.clone();
                let known = self.read(move |r| r.agent_by_name(&name)).await?;
                if known.is_none() {
                    let why = format!("there is no agent named `{agent}` (`forgefleet agents` lists them)");
                    return Ok(Answer::Reply(
                        self.render("reply_failed.md", json!({"author": author, "command": line, "why": why}))?,
                    ));
                }
                self.pin(issue, &agent.to_string()).await?;
                return Ok(Answer::React);
            }
            FleetCommand::Status => {
                let status = self.read(commands::status_text).await?;
                return Ok(Answer::Reply(format!("@{author} {status}")));
            }
            FleetCommand::Help => {
                return Ok(Answer::Reply(format!("@{author}\n\n{}", help(Place::Issue))));
            }
        };
        match self.engine.send(Command::FromWebhook { key: key.to_string(), inner: Box::new(inner) }).await {
            Ok(_) => Ok(Answer::React),
            // The task changed in between: say what it is now.
            Err(EngineError::Conflict(_)) => {
                let lookup = issue.clone();
                let now = self.read(move |r| r.task_by_issue(&lookup)).await?;
                let why = now.as_ref().and_then(|t| commands::not_applicable(word, t)).unwrap_or_else(|| {
                    format!("the task changed while `/{word}` ran; `/retry` applies to failed or cancelled tasks, `/cancel` to the others")
                });
                failed(why)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Pins the issue to one agent: its `agent:` labels become just this one, and the engine sees the issue
    /// as it now is.
    async fn pin(&self, issue: &IssueRef, agent: &str) -> Result<(), DeliveryError> {
        let scheme = self.scheme(issue).await;
        let want = format!("{}{agent}", scheme.agent_prefix);
        let current = self.client.issue_labels(&issue.repo, issue.number).await?;
        for l in current.iter().filter(|l| l.name.starts_with(&scheme.agent_prefix) && l.name != want) {
            self.client.remove_label(&issue.repo, issue.number, l.id).await?;
        }
        if !current.iter().any(|l| l.name == want) {
            let ids = self.label_ids(issue, std::slice::from_ref(&want)).await?;
            self.client.add_labels(&issue.repo, issue.number, &ids).await?;
        }
        let now = self.client.issue(&issue.repo, issue.number).await?;
        self.engine.send(Command::ObserveIssue(observation(&issue.repo, &now))).await?;
        Ok(())
    }
}

enum Answer {
    React,
    Reply(String),
}
