//! One command path for every place people command the fleet from. A command is parsed where it arrives (a
//! webhook's comment, a Matrix message); the outbox row keeps the parsed commands, their author and their
//! origin. The [`Runner`] takes them from there: reads are answered for anyone; a change needs the place's own
//! permission rule (a [`Permission`]), then runs once through the engine (one round trip: the engine finds the
//! task and checks the command against it in the same transaction), and every command is answered where it
//! came from.

pub mod answers;

use std::sync::Arc;

use crate::core::commands::{FleetCommand, Parsed, Place, help};
use crate::core::{CommandOrigin, Effect, IssueRef, RepoName};
use crate::engine::{Clock, Command, CommandOutcome, EngineHandle, Reply};
use crate::integrations::outbox::DeliveryError;
use crate::integrations::templates::{FailedReply, InvalidReply, TemplateContext, Templates};
use crate::store::{ReadPool, ReadView};

/// Whether an author may change things: each place has its own rule.
pub enum Verdict {
    Allowed,
    /// Not allowed: the whole answer, saying why and how to get the right.
    Refused(String),
}

/// A place's rule for who may change what.
pub trait Permission: Sync {
    /// May `author` run `line` (a change) on `repo`? `None`: the command is about the fleet itself (draining
    /// an agent), not one repository.
    fn check(
        &self,
        author: &str,
        repo: Option<&RepoName>,
        line: &str,
    ) -> impl Future<Output = Result<Verdict, DeliveryError>> + Send;
}

/// Runs the commands of one outbox row.
pub struct Runner<'a, P: Permission> {
    pub engine: &'a EngineHandle,
    pub templates: &'a Templates,
    pub permission: &'a P,
    pub clock: &'a Arc<dyn Clock>,
    pub reads: &'a ReadPool,
    /// `status:todo` as the repository calls it: what a "no task yet" answer tells people to add.
    pub todo_label: &'a str,
}

/// What one command gets back.
enum Answer {
    /// It worked: a reaction on a comment, a short confirmation in chat.
    Done(String),
    Text(String),
}

impl<P: Permission> Runner<'_, P> {
    /// Runs each command once (a key per command, recorded the first time) and answers each once. `quiet`: the
    /// commands were read from a plain comment, not written as commands; only what worked is answered.
    pub async fn run(
        &self,
        origin: &CommandOrigin,
        author: &str,
        commands: &[Parsed],
        quiet: bool,
    ) -> Result<(), DeliveryError> {
        for (i, parsed) in commands.iter().enumerate() {
            let key = format!("cmd:{}:{i}", origin.key());
            let answer = self.answer(origin, author, &key, parsed).await?;
            if quiet && matches!(answer, Answer::Text(_)) {
                continue;
            }
            let effect = answer_effect(origin, author, i, answer);
            // Recorded under its own key: running this delivery again answers nothing twice.
            let record =
                Command::FromWebhook { key: format!("{key}:answer"), inner: Box::new(Command::Enqueue(effect)) };
            self.engine.send(record).await?;
        }
        Ok(())
    }

    async fn answer(
        &self,
        origin: &CommandOrigin,
        author: &str,
        key: &str,
        parsed: &Parsed,
    ) -> Result<Answer, DeliveryError> {
        let cmd = match parsed {
            Parsed::Invalid { line, why } => {
                let invalid = InvalidReply { author: author.into(), line: line.clone(), why: why.clone() };
                return Ok(Answer::Text(self.render(&invalid)?));
            }
            Parsed::Valid(cmd) => cmd,
        };
        let line = written(cmd);
        let issue = cmd.issue().or(origin.issue()).cloned();
        let failed = |why: String| -> Result<Answer, DeliveryError> {
            Ok(Answer::Text(self.render(&FailedReply { author: author.into(), command: line.clone(), why })?))
        };
        if !cmd.changes() {
            return match self.read_answer(cmd, issue, origin.place()).await? {
                Ok(text) => Ok(Answer::Text(text)),
                Err(why) => failed(why),
            };
        }
        let repo = issue.as_ref().map(|i| &i.repo);
        if let Verdict::Refused(body) = self.permission.check(author, repo, &line).await? {
            return Ok(Answer::Text(body));
        }
        let by = match origin {
            CommandOrigin::Comment { .. } => format!("@{author}"),
            CommandOrigin::Matrix { .. } => author.to_string(),
        };
        let run = Command::RunCommand { key: key.to_string(), command: cmd.clone(), issue, by };
        match self.engine.send(run).await? {
            Reply::Ran(CommandOutcome::Applied | CommandOutcome::AlreadyRan) => Ok(Answer::Done(done_text(cmd))),
            Reply::Ran(CommandOutcome::NoTask(issue)) => {
                failed(format!("there is no task for {issue} yet; label it `{}` to queue one", self.todo_label))
            }
            Reply::Ran(CommandOutcome::UnknownAgent(agent)) => {
                failed(format!("there is no agent named `{agent}` (`/fleet agents` lists them)"))
            }
            Reply::Ran(CommandOutcome::NotApplicable(why)) => failed(why),
            other => Err(DeliveryError::Other(format!("the engine answered a command with {other:?}"))),
        }
    }

    /// The answer to a read; `Err(why)` when it cannot be answered (an issue without a task).
    async fn read_answer(
        &self,
        cmd: &FleetCommand,
        issue: Option<IssueRef>,
        place: Place,
    ) -> Result<Result<String, String>, DeliveryError> {
        let now = self.clock.now();
        let text = match cmd {
            FleetCommand::Status => self.read(move |s| answers::status_text(s, now)).await?,
            FleetCommand::Agents => self.read(move |s| answers::agents_text(s, now)).await?,
            FleetCommand::Queue => self.read(answers::queue_text).await?,
            FleetCommand::Show { .. } => {
                let Some(issue) = issue else { return Ok(Err("name the issue as `owner/repo#N`".into())) };
                let lookup = issue.clone();
                match self.read(move |s| answers::show_text(s, &lookup)).await? {
                    Some(text) => text,
                    None => return Ok(Err(format!("there is no task for {issue}"))),
                }
            }
            _ => help(place),
        };
        Ok(Ok(text))
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(ReadView<'_>) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T, DeliveryError> {
        Ok(self.reads.with(f).await?)
    }

    fn render<C: TemplateContext>(&self, ctx: &C) -> Result<String, DeliveryError> {
        self.templates.render(ctx).map_err(|e| DeliveryError::Other(e.to_string()))
    }
}

/// The command as a person would have typed it, for answers.
fn written(cmd: &FleetCommand) -> String {
    let issue = cmd.issue().map(|i| format!(" {i}")).unwrap_or_default();
    match cmd {
        // The answer's text is the person's own: shown back to nobody.
        FleetCommand::Retry { .. } | FleetCommand::Cancel { .. } | FleetCommand::Answer { .. } => {
            format!("/{}{issue}", cmd.word())
        }
        FleetCommand::Assign { agent, .. } => format!("/assign {agent}{issue}"),
        FleetCommand::Drain { agent } => format!("/fleet drain {agent}"),
        other => format!("/fleet {}{issue}", other.word()),
    }
}

/// What a change that worked did, in a few words.
fn done_text(cmd: &FleetCommand) -> String {
    let issue = cmd.issue().map(ToString::to_string).unwrap_or_else(|| "the task".into());
    match cmd {
        FleetCommand::Retry { .. } => format!("{issue} is queued again, with a fresh retry budget."),
        FleetCommand::Cancel { .. } => format!("{issue} is cancelled; its agent is told at its next heartbeat."),
        FleetCommand::Answer { .. } => format!("{issue} is answered: a new attempt is queued with the answer."),
        FleetCommand::Assign { agent, .. } => format!("{issue} is pinned to `{agent}`."),
        FleetCommand::Drain { agent } => format!("`{agent}` gets no new work; it finishes what it holds."),
        FleetCommand::Fix { .. } => "A round of changes is queued, on the same branch and pull request.".into(),
        other => format!("`{}` done.", other.word()),
    }
}

/// The outbox effect that carries an answer back to where the command came from.
fn answer_effect(origin: &CommandOrigin, author: &str, i: usize, answer: Answer) -> Effect {
    match (origin, answer) {
        (CommandOrigin::Comment { issue, comment_id }, Answer::Done(_)) => {
            Effect::React { issue: issue.clone(), comment_id: *comment_id, content: "+1".into() }
        }
        (CommandOrigin::Comment { issue, comment_id }, Answer::Text(body)) => {
            // Read answers are built without a mention; a person is told who they answer.
            let body = if body.starts_with('@') { body } else { format!("@{author} {body}") };
            Effect::Reply { issue: issue.clone(), key: format!("reply:{comment_id}:{i}"), body }
        }
        (CommandOrigin::Matrix { room, event_id }, Answer::Done(body) | Answer::Text(body)) => Effect::MatrixReply {
            room: room.clone(),
            in_reply_to: event_id.clone(),
            key: format!("{event_id}:{i}"),
            body,
        },
    }
}
