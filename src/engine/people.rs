//! A person's command that changes something (`/retry`, `/cancel`, `/answer`, `/assign`, `/fleet drain`), decided in one
//! transaction: the task or agent is found, the command is checked against it as it is now, and applied. A
//! command that does not apply changes nothing and says why.

use super::command::{CommandOutcome, EngineError};
use crate::core::commands::{FleetCommand, not_applicable};
use crate::core::{AgentState, CancelledBy, Effect, Event, IssueRef, Timestamp};
use crate::store::WriteTx;

type Result<T> = std::result::Result<T, EngineError>;

pub(super) fn run(
    tx: &WriteTx<'_>,
    command: FleetCommand,
    issue: Option<IssueRef>,
    by: String,
    now: Timestamp,
) -> Result<CommandOutcome> {
    let word = command.word();
    match command {
        FleetCommand::Retry { .. } | FleetCommand::Cancel { .. } => {
            let issue = issue.ok_or_else(|| EngineError::Invalid(format!("`/{word}` needs an issue")))?;
            let Some(task) = tx.read().task_by_issue(&issue)? else {
                return Ok(CommandOutcome::NoTask(issue));
            };
            if let Some(why) = not_applicable(word, &task) {
                return Ok(CommandOutcome::NotApplicable(why));
            }
            let event = match word {
                "retry" => Event::TaskRetried { task: task.id, by, at: now },
                _ => Event::TaskCancelled {
                    task: task.id,
                    attempt: task.attempt,
                    reason: format!("cancelled by {by}"),
                    by: CancelledBy::Person,
                    at: now,
                },
            };
            tx.append(&event)?;
            Ok(CommandOutcome::Applied)
        }
        FleetCommand::Answer { text, .. } => {
            let issue = issue.ok_or_else(|| EngineError::Invalid("`/answer` needs an issue".into()))?;
            let Some(task) = tx.read().task_by_issue(&issue)? else {
                return Ok(CommandOutcome::NoTask(issue));
            };
            if let Some(why) = not_applicable(word, &task) {
                return Ok(CommandOutcome::NotApplicable(why));
            }
            tx.append(&Event::TaskAnswered { task: task.id, answer: text, by, at: now })?;
            Ok(CommandOutcome::Applied)
        }
        FleetCommand::Assign { agent, .. } => {
            let issue = issue.ok_or_else(|| EngineError::Invalid("`/assign` needs an issue".into()))?;
            match tx.read().agent_by_name(&agent)? {
                Some(a) if a.state != AgentState::Deregistered => {
                    // The pin is the issue's `agent:` label: written to Forgejo through the outbox, and seen by
                    // the engine when the deliverer observes the issue after writing it.
                    tx.enqueue(&Effect::SetAgentLabel { issue, agent }, None, now)?;
                    Ok(CommandOutcome::Applied)
                }
                _ => Ok(CommandOutcome::UnknownAgent(agent)),
            }
        }
        FleetCommand::Drain { agent } => match tx.read().agent_by_name(&agent)? {
            Some(a) if a.state == AgentState::Deregistered => Ok(CommandOutcome::UnknownAgent(agent)),
            Some(a) if a.state == AgentState::Draining => {
                Ok(CommandOutcome::NotApplicable(format!("agent `{agent}` is already draining")))
            }
            Some(a) => {
                tx.append(&Event::AgentDraining { agent: a.id, at: now })?;
                Ok(CommandOutcome::Applied)
            }
            None => Ok(CommandOutcome::UnknownAgent(agent)),
        },
        FleetCommand::Status
        | FleetCommand::Agents
        | FleetCommand::Queue
        | FleetCommand::Show { .. }
        | FleetCommand::Help => Err(EngineError::Invalid(format!("`{word}` changes nothing: it is answered, not run"))),
    }
}
