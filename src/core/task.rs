//! Tasks and their state machine: every change is an event, and an event that does not apply is an error.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::agent::AgentState;
use super::checks::AwaitedChecks;
use super::event::Event;
use super::ids::{AgentId, IssueRef, TaskId};
use super::labels::{StatusLabel, TaskSpec};
use super::policy::{FailureClass, RetryDecision};
use super::pull::{FollowUp, OnPullClosed, PullConflict, PullEnd};
use super::receipt::{Receipt, Validation};
use super::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    /// Leased to an agent that has not acknowledged it yet.
    Assigned,
    /// The agent acknowledged it and is working.
    Running,
    /// A receipt arrived and is being checked.
    Validating,
    Completed,
    Failed,
    /// The agent vanished; the task waits for the retry decision.
    AgentLost,
    Cancelled,
    /// The agent asked a person a question and stopped: no lease, no timeout, no retry, until `/answer`.
    Blocked,
}

impl TaskState {
    pub const ALL: [TaskState; 9] = [
        TaskState::Queued,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Validating,
        TaskState::Completed,
        TaskState::Failed,
        TaskState::AgentLost,
        TaskState::Cancelled,
        TaskState::Blocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Validating => "validating",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::AgentLost => "agent_lost",
            TaskState::Cancelled => "cancelled",
            TaskState::Blocked => "blocked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Finished: nothing more happens unless someone queues it again.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed | TaskState::Cancelled)
    }

    /// An agent holds a lease in this state.
    pub fn is_leased(self) -> bool {
        matches!(self, TaskState::Assigned | TaskState::Running | TaskState::Validating)
    }

    /// The `status:*` label an issue in this state should carry. A cancelled task carries none: a person
    /// called it off, usually by removing the label, and should not find a new one.
    pub fn status_label(self) -> Option<StatusLabel> {
        match self {
            TaskState::Queued | TaskState::AgentLost => Some(StatusLabel::Todo),
            TaskState::Assigned | TaskState::Running | TaskState::Validating => Some(StatusLabel::Doing),
            TaskState::Completed => Some(StatusLabel::Done),
            TaskState::Failed => Some(StatusLabel::Failed),
            TaskState::Blocked => Some(StatusLabel::Blocked),
            TaskState::Cancelled => None,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a fresh branch for an attempt's work: `<prefix>issue-<N>-attempt-<A>`. What an attempt is
/// assigned is [`Task::branch`]: this, unless it continues a branch an earlier attempt pushed.
pub fn work_branch(prefix: &str, issue: u64, attempt: u32) -> String {
    format!("{prefix}issue-{issue}-attempt-{attempt}")
}

/// An agent's hold on one attempt of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub agent: AgentId,
    pub attempt: u32,
    pub assigned_at: Timestamp,
    /// The agent must acknowledge (`start`) before this, or the task is requeued.
    pub start_by: Timestamp,
    pub started_at: Option<Timestamp>,
    /// The task times out after this.
    pub deadline: Timestamp,
    /// The idempotency key of the request that was answered with this lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    /// When the agent handed in its receipt: the end of the agent's part (validation is forgefleet's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_at: Option<Timestamp>,
    /// When the agent's slot was freed while the task goes on without it (its receipt checked out and the task
    /// waits for CI). The lease is kept for the record (who did the work, when), but holds nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Timestamp>,
}

impl Lease {
    /// The agent still holds this attempt: it uses a slot, its heartbeats and the deadline count.
    pub fn holds(&self) -> bool {
        self.released_at.is_none()
    }
}

/// The longest question an agent may ask, and the longest answer a person may give, in bytes.
pub const MAX_QUESTION_BYTES: usize = 16 * 1024;

/// Where in its checkout an agent writes a question for a person, whatever its adapter: the runner looks for
/// it when the agent exits, and a non-empty one blocks the task on that question instead of pushing.
pub const QUESTION_FILE: &str = ".forgefleet/question.md";

/// A question an attempt asked a person (`blocked`), and the answer once one came. The attempts after the
/// answer are told both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// The attempt that asked.
    pub attempt: u32,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Who answered (`@login`, or a Matrix user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
}

/// The agent whose attempt last worked on the task and the CLI session it worked in (its receipt's or its
/// question's): a later attempt that goes on from that work (a round of changes, an answered question, a retry
/// on the same branch) prefers that agent for a while and resumes the session, or tells a fresh session what
/// it did. Kept until a person starts the task afresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSession {
    pub agent: AgentId,
    pub attempt: u32,
    /// The CLI's session (Claude Code's `session_id`, Codex's `thread_id`), when the agent reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// What that attempt said it did (its receipt's summary; empty after a question).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// When the task was queued again to go on from this work: the window in which that agent is preferred
    /// starts then (or when the retry's backoff ends, if later). Absent while an attempt holds the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeued_at: Option<Timestamp>,
}

/// The longest CLI session id the fleet passes on.
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// Whether `id` looks like a CLI session id (a UUID or the like: letters, digits and `-`, not beginning with
/// `-`, at most [`MAX_SESSION_ID_BYTES`]): the only kind that is ever put on an agent's command line.
pub fn is_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SESSION_ID_BYTES
        && !id.starts_with('-')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Why the last attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub attempt: u32,
    pub class: FailureClass,
    pub message: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub issue: IssueRef,
    /// Forgejo's id of the issue (global, never reused), when known: deliveries check it before they write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_id: Option<i64>,
    /// The store keeps the issue text in columns of its own, beside the rest of the task.
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub body: String,
    pub labels: Vec<String>,
    pub spec: TaskSpec,
    pub state: TaskState,
    /// 1 for the first attempt; every retry adds one.
    pub attempt: u32,
    /// Retries used so far, per failure class.
    pub retries: BTreeMap<FailureClass, u32>,
    /// A retried task waits in the queue until then.
    pub not_before: Option<Timestamp>,
    /// When it was last queued by a person (labelled, reopened, retried): the age the queue orders by.
    pub queued_at: Timestamp,
    pub updated_at: Timestamp,
    pub lease: Option<Lease>,
    pub last_failure: Option<Failure>,
    pub receipt: Option<Receipt>,
    /// What forgefleet found when it checked the receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// A branch an earlier attempt pushed before it failed (its agent said so): every later attempt is
    /// assigned it and continues its work, until a person queues the task again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_branch: Option<String>,
    /// The CI this attempt waits for, once its receipt checked out (the repository requires checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<AwaitedChecks>,
    /// How the completed attempt's pull request ended (merged, or closed without merging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_end: Option<PullEnd>,
    /// The round of changes a person asked for on the pull request, while the task works on it (and after,
    /// until the next round or a fresh start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<FollowUp>,
    /// The last time the pull request stopped merging (its base moved), and what was done about it: kept until
    /// a fresh start, so that the same head is never decided twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<PullConflict>,
    /// The question an attempt asked a person, and its answer once given: kept for the attempts after it,
    /// until a person queues the task again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<Question>,
    /// The agent and CLI session of the attempt that last handed in work or a question, for the attempts that
    /// go on from it, until a person queues the task again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_session: Option<LastSession>,
}

/// An event that does not apply to the task or agent in its current state. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("task {task} is {from}: `{event}` does not apply")]
    Task { task: TaskId, from: TaskState, event: &'static str },
    #[error("task {task} is on attempt {current}, not {given}")]
    StaleAttempt { task: TaskId, current: u32, given: u32 },
    #[error("agent {agent} is {}: `{event}` does not apply", from.as_str())]
    Agent { agent: AgentId, from: AgentState, event: &'static str },
    #[error("event `{event}` is not about task {task}")]
    WrongTask { task: TaskId, event: &'static str },
    #[error("`{class}` failures are recorded as cancellations, not failed attempts")]
    CancelledIsNotAFailure { class: FailureClass },
    /// A receipt for an attempt its agent never acknowledged.
    #[error(
        "task {task} attempt {attempt} was never started: acknowledge it with `POST /api/v1/tasks/{task}/start` \
         before handing in a receipt"
    )]
    NotStarted { task: TaskId, attempt: u32 },
    /// A report about an attempt that was cancelled: the agent should stop.
    #[error("task {task} was cancelled ({reason}): stop working on attempt {attempt}")]
    Cancelled { task: TaskId, attempt: u32, reason: String },
}

impl Task {
    /// A new task from its first `TaskQueued` event.
    pub fn queued(e: &Event) -> Option<Task> {
        match e {
            Event::TaskQueued { task, issue, title, body, labels, spec, at, issue_id } => Some(Task {
                id: *task,
                issue: issue.clone(),
                issue_id: *issue_id,
                title: title.clone(),
                body: body.clone(),
                labels: labels.clone(),
                spec: spec.clone(),
                state: TaskState::Queued,
                attempt: 1,
                retries: BTreeMap::new(),
                not_before: None,
                queued_at: *at,
                updated_at: *at,
                lease: None,
                last_failure: None,
                receipt: None,
                validation: None,
                pushed_branch: None,
                checks: None,
                pull_end: None,
                follow_up: None,
                conflict: None,
                question: None,
                last_session: None,
            }),
            _ => None,
        }
    }

    /// The branch the current attempt pushes its work to, as its assignment names it and as its pull
    /// request's head must be: the branch an earlier attempt pushed, or a fresh one of this attempt.
    pub fn branch(&self, prefix: &str) -> String {
        self.pushed_branch.clone().unwrap_or_else(|| work_branch(prefix, self.issue.number, self.attempt))
    }

    pub fn retries_used(&self, class: FailureClass) -> u32 {
        self.retries.get(&class).copied().unwrap_or(0)
    }

    /// Applies one event, or says why it does not apply and leaves the task as it was.
    pub fn apply(&mut self, e: &Event) -> Result<(), TransitionError> {
        use TaskState::*;
        if e.task() != Some(self.id) {
            return Err(TransitionError::WrongTask { task: self.id, event: e.kind() });
        }
        let illegal = TransitionError::Task { task: self.id, from: self.state, event: e.kind() };
        let check_attempt = |given: u32| {
            if given == self.attempt {
                Ok(())
            } else {
                Err(TransitionError::StaleAttempt { task: self.id, current: self.attempt, given })
            }
        };
        match e {
            Event::TaskQueued { title, body, labels, spec, at, issue_id, .. } => {
                if !self.state.is_terminal() {
                    return Err(illegal);
                }
                if issue_id.is_some() {
                    self.issue_id = *issue_id;
                }
                self.title = title.clone();
                self.body = body.clone();
                self.labels = labels.clone();
                self.spec = spec.clone();
                self.fresh_attempt(*at);
            }
            Event::TaskSpecChanged { title, body, labels, spec, .. } => {
                self.title = title.clone();
                self.body = body.clone();
                self.labels = labels.clone();
                self.spec = spec.clone();
            }
            Event::TaskAssigned { attempt, agent, at, start_by, deadline, request_key, .. } => {
                if self.state != Queued {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.state = Assigned;
                self.not_before = None;
                if let Some(s) = &mut self.last_session {
                    s.requeued_at = None;
                }
                self.lease = Some(Lease {
                    agent: *agent,
                    attempt: *attempt,
                    assigned_at: *at,
                    start_by: *start_by,
                    started_at: None,
                    deadline: *deadline,
                    request_key: request_key.clone(),
                    receipt_at: None,
                    released_at: None,
                });
            }
            Event::TaskStarted { attempt, at, .. } => {
                if self.state != Assigned {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.state = Running;
                if let Some(lease) = &mut self.lease {
                    lease.started_at = Some(*at);
                }
            }
            Event::ReceiptReceived { attempt, receipt, at, .. } => {
                if !matches!(self.state, Assigned | Running) {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.state = Validating;
                if let Some(lease) = &mut self.lease {
                    lease.receipt_at = Some(*at);
                    self.last_session = Some(LastSession {
                        agent: lease.agent,
                        attempt: *attempt,
                        session_id: receipt.session_id.clone(),
                        summary: receipt.summary.clone(),
                        requeued_at: None,
                    });
                }
                self.receipt = Some(receipt.clone());
                self.validation = None;
                self.checks = None;
            }
            Event::ReceiptChecked { attempt, validation, .. } => {
                if self.state != Validating {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.validation = Some(validation.clone());
            }
            Event::ChecksAwaited { attempt, checks, at, .. } => {
                if self.state != Validating || self.checks.is_some() {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                if let Some(lease) = &mut self.lease {
                    lease.released_at = Some(*at);
                }
                self.checks = Some(checks.clone());
            }
            Event::PullEnded { attempt, end, then, .. } => {
                if self.state != Completed || self.pull_end.is_some() {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.pull_end = Some(end.clone());
                if !end.merged {
                    match then {
                        OnPullClosed::Requeue => self.fresh_attempt(e.at()),
                        OnPullClosed::Fail => self.state = Failed,
                        OnPullClosed::Nothing => {}
                    }
                }
            }
            Event::FollowUpRequested { follow_up, at, .. } => {
                if self.state != Completed || self.pull_end.is_some() {
                    return Err(illegal);
                }
                self.round_of_changes(follow_up, *at);
            }
            Event::PullConflicted { attempt, conflict, follow_up, at, .. } => {
                if self.state != Completed || self.pull_end.is_some() {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.conflict = Some(conflict.clone());
                if let Some(f) = follow_up {
                    self.round_of_changes(f, *at);
                }
            }
            Event::TaskCompleted { attempt, .. } => {
                if self.state != Validating {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.state = Completed;
                self.lease = None;
                self.checks = None;
            }
            Event::TaskLost { attempt, .. } => {
                if !matches!(self.state, Assigned | Running) {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.state = AgentLost;
                self.lease = None;
            }
            Event::AttemptFailed { attempt, class, message, decision, pushed_branch, at, .. } => {
                if *class == FailureClass::Cancelled {
                    return Err(TransitionError::CancelledIsNotAFailure { class: *class });
                }
                if !matches!(self.state, Assigned | Running | Validating | AgentLost) {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.lease = None;
                self.checks = None;
                self.last_failure =
                    Some(Failure { attempt: *attempt, class: *class, message: message.clone(), at: *at });
                // A failure before any push keeps what an earlier attempt pushed (this attempt was assigned it).
                if pushed_branch.is_some() {
                    self.pushed_branch = pushed_branch.clone();
                }
                match decision {
                    RetryDecision::Retry { not_before, .. } => {
                        *self.retries.entry(*class).or_default() += 1;
                        self.attempt += 1;
                        self.state = Queued;
                        self.not_before = Some(*not_before);
                        // The failed attempt's validation stays visible until the next receipt replaces it.
                        self.receipt = None;
                        self.requeue_session(*at);
                    }
                    RetryDecision::GiveUp => self.state = Failed,
                }
            }
            Event::TaskCancelled { attempt, .. } => {
                if self.state.is_terminal() {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                self.state = Cancelled;
                self.lease = None;
                self.checks = None;
                self.not_before = None;
            }
            Event::TaskBlocked { attempt, question, session_id, .. } => {
                if self.state != Running {
                    return Err(illegal);
                }
                check_attempt(*attempt)?;
                if let Some(lease) = &self.lease {
                    self.last_session = Some(LastSession {
                        agent: lease.agent,
                        attempt: *attempt,
                        session_id: session_id.clone(),
                        summary: String::new(),
                        requeued_at: None,
                    });
                }
                self.state = Blocked;
                self.lease = None;
                self.not_before = None;
                self.question =
                    Some(Question { attempt: *attempt, text: question.clone(), answer: None, answered_by: None });
            }
            Event::TaskAnswered { answer, by, .. } => {
                if self.state != Blocked {
                    return Err(illegal);
                }
                // Not a retry: the budget stays as it was, and the work continues where the attempt left it.
                self.attempt += 1;
                self.state = Queued;
                self.not_before = None;
                if let Some(q) = &mut self.question {
                    q.answer = Some(answer.clone());
                    q.answered_by = Some(by.clone());
                }
                self.requeue_session(e.at());
            }
            Event::TaskRetried { at, .. } => {
                if !matches!(self.state, Failed | Cancelled) {
                    return Err(illegal);
                }
                self.fresh_attempt(*at);
            }
            _ => return Err(illegal),
        }
        self.updated_at = e.at();
        Ok(())
    }

    /// A round of changes on the pull request: a new attempt on its branch, with a fresh retry budget.
    fn round_of_changes(&mut self, follow_up: &FollowUp, at: Timestamp) {
        self.next_attempt_queued(at);
        self.pushed_branch = Some(follow_up.branch.clone());
        self.follow_up = Some(follow_up.clone());
        self.requeue_session(at);
    }

    /// Queued again to go on from the last session's work: its agent's preference window starts now.
    fn requeue_session(&mut self, at: Timestamp) {
        if let Some(s) = &mut self.last_session {
            s.requeued_at = Some(at);
        }
    }

    /// A person asked for the task again: a new attempt with a fresh retry budget, on a fresh branch.
    fn fresh_attempt(&mut self, at: Timestamp) {
        self.pushed_branch = None;
        self.last_session = None;
        self.question = None;
        self.next_attempt_queued(at);
        self.pull_end = None;
        self.follow_up = None;
        self.conflict = None;
    }

    /// The next attempt waits in the queue from `at`, with a fresh retry budget and nothing of the last one's.
    fn next_attempt_queued(&mut self, at: Timestamp) {
        self.state = TaskState::Queued;
        self.attempt += 1;
        self.retries.clear();
        self.not_before = None;
        self.queued_at = at;
        self.lease = None;
        self.receipt = None;
        self.validation = None;
        self.checks = None;
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
