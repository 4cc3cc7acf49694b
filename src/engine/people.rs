//! A person's command that changes something (`/retry`, `/cancel`, `/answer`, `/assign`, `/fleet drain`), and the
//! rounds of changes on a pull request (a person's `/fleet fix`, a review that requests changes, or a conflict's
//! merge), each decided in one transaction: the task or agent is found, the command is checked against it as it
//! is now, and applied. A command that does not apply changes nothing and says why.

use super::command::{CommandOutcome, EngineError};
use crate::core::commands::{FleetCommand, not_applicable};
use crate::core::{
    AgentState, CancelledBy, Effect, Event, FollowUp, IssueRef, ReviewNote, Task, TaskId, TaskState, Timestamp,
};
use crate::store::WriteTx;

type Result<T> = std::result::Result<T, EngineError>;

pub(super) fn run(
    s: &super::logic::EngineSettings,
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
        FleetCommand::Fix { instruction } => {
            let pull = issue.ok_or_else(|| EngineError::Invalid("`/fleet fix` needs a pull request".into()))?;
            follow_up(s, tx, &pull, by, instruction, Vec::new(), None, now)
        }
        FleetCommand::Status
        | FleetCommand::Agents
        | FleetCommand::Queue
        | FleetCommand::Show { .. }
        | FleetCommand::Help => Err(EngineError::Invalid(format!("`{word}` changes nothing: it is answered, not run"))),
    }
}

/// A review that requests changes, as Forgejo has it.
pub(super) struct Review {
    pub id: i64,
    /// The commit it is of.
    pub commit_id: String,
    pub body: String,
    pub notes: Vec<ReviewNote>,
}

/// A review asked for changes on pull request `pull`: a round of changes, once per review, and only for a
/// review of the head forgefleet verified (one of an older head was answered by the work since).
pub(super) fn request_changes(
    s: &super::logic::EngineSettings,
    tx: &WriteTx<'_>,
    pull: &IssueRef,
    by: String,
    review: Review,
    now: Timestamp,
) -> Result<CommandOutcome> {
    let read = tx.read();
    let id = match read.completed_with_pull(&pull.repo, pull.number, TaskId(0))? {
        Some(id) => Some(id),
        None => read.in_round_on_pull(&pull.repo, pull.number)?,
    };
    // Anyone's pull request gets reviews: one that is no task's is none of forgefleet's business.
    let Some(task) = id.map(|id| read.task(id)).transpose()?.flatten() else {
        return Ok(CommandOutcome::NoTask(pull.clone()));
    };
    // The round this review started (running, or done and awaiting the next): seen before.
    if task.follow_up.as_ref().is_some_and(|f| f.review_id == Some(review.id)) {
        return Ok(CommandOutcome::AlreadyRan);
    }
    if let Some(receipt) = task.receipt.as_ref().filter(|_| task.state == TaskState::Completed)
        && !receipt.head_sha.as_str().eq_ignore_ascii_case(review.commit_id.trim())
    {
        return Ok(CommandOutcome::Stale);
    }
    follow_up(s, tx, pull, by, review.body, review.notes, Some(review.id), now)
}

/// A person asked for changes on pull request `pull`: the completed task whose receipt names it gets a
/// follow-up round on the same branch and pull request, unless its rounds are spent or the pull request ended.
#[allow(clippy::too_many_arguments)]
pub(super) fn follow_up(
    s: &super::logic::EngineSettings,
    tx: &WriteTx<'_>,
    pull: &IssueRef,
    by: String,
    instruction: String,
    notes: Vec<ReviewNote>,
    review_id: Option<i64>,
    now: Timestamp,
) -> Result<CommandOutcome> {
    let (task, round) = match next_round(s, tx, pull)? {
        NextRound::Round { task, round } => (task, round),
        NextRound::Spent { task, rounds } => {
            return Ok(CommandOutcome::NotApplicable(format!(
                "task {} has had its {rounds} round(s) of changes (`review_rounds`): a person takes it from here",
                task.id
            )));
        }
        NextRound::None(why) => return Ok(CommandOutcome::NotApplicable(why)),
        NextRound::NoTask => return Ok(CommandOutcome::NoTask(pull.clone())),
    };
    let follow_up = round_of(s, &task, round, by.trim_start_matches('@'), instruction, notes, review_id);
    tx.append(&Event::FollowUpRequested { task: task.id, follow_up, at: now })?;
    Ok(CommandOutcome::Applied)
}

/// The pull request `pull` no longer merges at `head_sha` into `base_branch` (at `base_sha`), as Forgejo said
/// twice: the completed task whose receipt names it records it once per head, and gets a round that merges the
/// base in (`auto_rebase`, while rounds are left) or has people told. Anything else about it changes nothing.
pub(super) fn conflict(
    s: &super::logic::EngineSettings,
    tx: &WriteTx<'_>,
    pull: &IssueRef,
    head_sha: String,
    base_branch: String,
    base_sha: String,
    now: Timestamp,
) -> Result<super::command::Reply> {
    use crate::core::{OnConflict, PullConflict};
    // Both go into a comment and the agent's prompt: only a commit id and a plain branch name do.
    let bad = |value: &str, what: &str| {
        EngineError::Invalid(format!(
            "{value:?} is not {what}: nothing was recorded about pull request #{}",
            pull.number
        ))
    };
    let head_sha = crate::core::CommitSha::parse(&head_sha).map_err(|_| bad(&head_sha, "a commit id"))?;
    let head_sha = head_sha.as_str().to_string();
    if !PullConflict::plain_branch(&base_branch) {
        return Err(bad(&base_branch, "a plain branch name (letters, digits, `-_./`)"));
    }
    let base_sha = crate::core::CommitSha::parse(&base_sha).map_err(|_| bad(&base_sha, "a commit id"))?;
    let base_sha = base_sha.as_str().to_string();
    let (task, then) = match next_round(s, tx, pull)? {
        NextRound::Round { task, round } if s.auto_rebase_for(&pull.repo) => (task, OnConflict::Merge { round }),
        NextRound::Round { task, .. } => (task, OnConflict::Tell),
        NextRound::Spent { task, rounds } if s.auto_rebase_for(&pull.repo) => {
            (task, OnConflict::RoundsSpent { rounds })
        }
        NextRound::Spent { task, .. } => (task, OnConflict::Tell),
        NextRound::None(_) | NextRound::NoTask => return Ok(super::command::Reply::Done),
    };
    if task.conflict.as_ref().is_some_and(|c| c.head_sha.eq_ignore_ascii_case(&head_sha)) {
        return Ok(super::command::Reply::Duplicate);
    }
    let conflict = PullConflict { pr_number: pull.number, head_sha, base_branch, base_sha, then };
    let follow_up = match then {
        OnConflict::Merge { round } => {
            Some(round_of(s, &task, round, BOT_ROUNDS_BY, conflict.merge_instruction(), Vec::new(), None))
        }
        OnConflict::Tell | OnConflict::RoundsSpent { .. } => None,
    };
    tx.append(&Event::PullConflicted { task: task.id, attempt: task.attempt, conflict, follow_up, at: now })?;
    Ok(super::command::Reply::Done)
}

/// Who asks for the rounds forgefleet queues itself (a conflict's merge).
const BOT_ROUNDS_BY: &str = "forgefleet";

/// Where the rounds of changes of pull request `pull` stand.
enum NextRound {
    /// The completed task whose receipt names it, and the number of its next round.
    Round {
        task: Box<Task>,
        round: u32,
    },
    /// The same task, with its `rounds` rounds spent.
    Spent {
        task: Box<Task>,
        rounds: u32,
    },
    /// No round applies; why, in words.
    None(String),
    NoTask,
}

fn next_round(s: &super::logic::EngineSettings, tx: &WriteTx<'_>, pull: &IssueRef) -> Result<NextRound> {
    let n = pull.number;
    let Some(id) = tx.read().completed_with_pull(&pull.repo, n, TaskId(0))? else {
        if let Some(id) = tx.read().in_round_on_pull(&pull.repo, n)? {
            return Ok(NextRound::None(format!(
                "a round of changes is under way on #{n} (task {id}): ask again once it is done"
            )));
        }
        return Ok(NextRound::None(format!("#{n} is not the pull request of a completed task")));
    };
    let Some(task) = tx.read().task(id)? else { return Ok(NextRound::NoTask) };
    if let Some(end) = &task.pull_end {
        let how = if end.merged { "merged" } else { "closed" };
        return Ok(NextRound::None(format!("pull request #{n} is {how}: there is nothing to change")));
    }
    if task.receipt.is_none() {
        return Ok(NextRound::None(format!("task {id} has no verified receipt")));
    }
    let (done, rounds) = (task.follow_up.as_ref().map_or(0, |f| f.round), s.review_rounds_for(&pull.repo));
    Ok(if done >= rounds {
        NextRound::Spent { task: Box::new(task), rounds }
    } else {
        NextRound::Round { task: Box::new(task), round: done + 1 }
    })
}

/// Round `round` of changes on `task`'s pull request, on its branch and on top of its verified head.
fn round_of(
    s: &super::logic::EngineSettings,
    task: &Task,
    round: u32,
    by: &str,
    instruction: String,
    notes: Vec<ReviewNote>,
    review_id: Option<i64>,
) -> FollowUp {
    let receipt = task.receipt.as_ref();
    FollowUp {
        by: by.to_string(),
        round,
        pr_number: receipt.map_or(0, |r| r.pr_number),
        branch: task.branch(&s.branch_prefix),
        verified_head: receipt.map(|r| r.head_sha.as_str().to_string()).unwrap_or_default(),
        instruction,
        notes,
        review_id,
    }
}
