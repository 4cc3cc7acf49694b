//! The events of the append-only log: every change to a task or an agent is one of these.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::checks::AwaitedChecks;
use super::ids::{AgentId, AgentName, IssueRef, TaskId};
use super::labels::TaskSpec;
use super::policy::{FailureClass, RetryDecision};
use super::pull::{FollowUp, OnPullClosed, PullConflict, PullEnd};
use super::receipt::{Receipt, Validation};
use super::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An issue asked for work: creates the task, or queues a new attempt of a finished one.
    TaskQueued {
        task: TaskId,
        issue: IssueRef,
        title: String,
        body: String,
        labels: Vec<String>,
        spec: TaskSpec,
        at: Timestamp,
        /// Forgejo's id of the issue, when the observation had it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issue_id: Option<i64>,
    },
    /// The issue's title, body or labels changed while the task exists.
    TaskSpecChanged {
        task: TaskId,
        title: String,
        body: String,
        labels: Vec<String>,
        spec: TaskSpec,
        at: Timestamp,
    },
    /// Leased to an agent: it must start by `start_by` and finish by `deadline`. `request_key` is the
    /// agent's idempotency key for the request that got it, so a retried request gets the same lease.
    TaskAssigned {
        task: TaskId,
        attempt: u32,
        agent: AgentId,
        at: Timestamp,
        start_by: Timestamp,
        deadline: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_key: Option<String>,
    },
    TaskStarted {
        task: TaskId,
        attempt: u32,
        at: Timestamp,
    },
    ReceiptReceived {
        task: TaskId,
        attempt: u32,
        receipt: Receipt,
        at: Timestamp,
    },
    /// forgefleet checked the receipt itself: each check's outcome, and the files git says changed.
    ReceiptChecked {
        task: TaskId,
        attempt: u32,
        validation: Validation,
        at: Timestamp,
    },
    /// The receipt checked out and the repository requires CI: the agent's part is over (its slot is free)
    /// and the task waits, still `validating`, for the head commit's statuses until the deadline.
    ChecksAwaited {
        task: TaskId,
        attempt: u32,
        checks: AwaitedChecks,
        at: Timestamp,
    },
    /// A completed task's pull request ended: merged, or closed without merging, and then `then` (the
    /// repository's `on_pr_closed`): queued again as a fresh attempt, failed, or left completed.
    PullEnded {
        task: TaskId,
        attempt: u32,
        end: PullEnd,
        then: OnPullClosed,
        at: Timestamp,
    },
    /// A person asked for changes on the completed task's pull request: a follow-up round, a new attempt on the
    /// same branch and pull request.
    FollowUpRequested {
        task: TaskId,
        follow_up: FollowUp,
        at: Timestamp,
    },
    /// A completed task's pull request no longer merges (its base moved): recorded once per head, with what was
    /// done: a round of changes that merges the base in (`follow_up`, with `auto_rebase`), or people were told.
    PullConflicted {
        task: TaskId,
        attempt: u32,
        conflict: PullConflict,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        follow_up: Option<FollowUp>,
        at: Timestamp,
    },
    TaskCompleted {
        task: TaskId,
        attempt: u32,
        at: Timestamp,
    },
    /// The agent holding the lease vanished (heartbeats stopped, never started, or deregistered).
    TaskLost {
        task: TaskId,
        attempt: u32,
        agent: AgentId,
        at: Timestamp,
    },
    /// The attempt failed; the retry policy's decision is part of the fact.
    AttemptFailed {
        task: TaskId,
        attempt: u32,
        class: FailureClass,
        message: String,
        decision: RetryDecision,
        /// What the agent says the attempt spent before it failed (tokens, cost), when it says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spent: Option<super::receipt::Spent>,
        /// The attempt's branch, when the agent says it pushed it before failing: later attempts continue it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pushed_branch: Option<String>,
        at: Timestamp,
    },
    TaskCancelled {
        task: TaskId,
        attempt: u32,
        reason: String,
        /// What called the work off; decides what forgefleet still writes on the issue.
        #[serde(default, skip_serializing_if = "CancelledBy::is_person")]
        by: CancelledBy,
        at: Timestamp,
    },
    /// The agent cannot go on without a person's answer: the attempt ends, the lease with it, and the task
    /// waits (no timeout, no retry) until a person answers.
    TaskBlocked {
        task: TaskId,
        attempt: u32,
        question: String,
        /// The agent's CLI session that asked, when the runner reported it: the attempt after the answer
        /// resumes it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        at: Timestamp,
    },
    /// A person answered a blocked task's question: a new attempt is queued that is told both.
    TaskAnswered {
        task: TaskId,
        answer: String,
        by: String,
        at: Timestamp,
    },
    /// An operator asked for another go at a failed or cancelled task: a fresh retry budget.
    TaskRetried {
        task: TaskId,
        by: String,
        at: Timestamp,
    },
    AgentRegistered {
        agent: AgentId,
        name: AgentName,
        adapter: String,
        capabilities: BTreeSet<String>,
        max_concurrency: u32,
        version: String,
        token_hash: String,
        at: Timestamp,
    },
    AgentDraining {
        agent: AgentId,
        at: Timestamp,
    },
    AgentOffline {
        agent: AgentId,
        at: Timestamp,
    },
    AgentOnline {
        agent: AgentId,
        at: Timestamp,
    },
    AgentDeregistered {
        agent: AgentId,
        at: Timestamp,
    },
}

impl Event {
    /// The name stored in the log's `kind` column (the serde tag).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TaskQueued { .. } => "task_queued",
            Event::TaskSpecChanged { .. } => "task_spec_changed",
            Event::TaskAssigned { .. } => "task_assigned",
            Event::TaskStarted { .. } => "task_started",
            Event::ReceiptReceived { .. } => "receipt_received",
            Event::ReceiptChecked { .. } => "receipt_checked",
            Event::ChecksAwaited { .. } => "checks_awaited",
            Event::PullEnded { .. } => "pull_ended",
            Event::FollowUpRequested { .. } => "follow_up_requested",
            Event::PullConflicted { .. } => "pull_conflicted",
            Event::TaskCompleted { .. } => "task_completed",
            Event::TaskLost { .. } => "task_lost",
            Event::AttemptFailed { .. } => "attempt_failed",
            Event::TaskCancelled { .. } => "task_cancelled",
            Event::TaskBlocked { .. } => "task_blocked",
            Event::TaskAnswered { .. } => "task_answered",
            Event::TaskRetried { .. } => "task_retried",
            Event::AgentRegistered { .. } => "agent_registered",
            Event::AgentDraining { .. } => "agent_draining",
            Event::AgentOffline { .. } => "agent_offline",
            Event::AgentOnline { .. } => "agent_online",
            Event::AgentDeregistered { .. } => "agent_deregistered",
        }
    }

    /// The task this event belongs to, if it is a task event.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            Event::TaskQueued { task, .. }
            | Event::TaskSpecChanged { task, .. }
            | Event::TaskAssigned { task, .. }
            | Event::TaskStarted { task, .. }
            | Event::ReceiptReceived { task, .. }
            | Event::ReceiptChecked { task, .. }
            | Event::ChecksAwaited { task, .. }
            | Event::PullEnded { task, .. }
            | Event::FollowUpRequested { task, .. }
            | Event::PullConflicted { task, .. }
            | Event::TaskCompleted { task, .. }
            | Event::TaskLost { task, .. }
            | Event::AttemptFailed { task, .. }
            | Event::TaskCancelled { task, .. }
            | Event::TaskBlocked { task, .. }
            | Event::TaskAnswered { task, .. }
            | Event::TaskRetried { task, .. } => Some(*task),
            _ => None,
        }
    }

    /// The agent this event belongs to, if it is an agent event.
    pub fn agent(&self) -> Option<AgentId> {
        match self {
            Event::AgentRegistered { agent, .. }
            | Event::AgentDraining { agent, .. }
            | Event::AgentOffline { agent, .. }
            | Event::AgentOnline { agent, .. }
            | Event::AgentDeregistered { agent, .. } => Some(*agent),
            _ => None,
        }
    }

    pub fn at(&self) -> Timestamp {
        match self {
            Event::TaskQueued { at, .. }
            | Event::TaskSpecChanged { at, .. }
            | Event::TaskAssigned { at, .. }
            | Event::TaskStarted { at, .. }
            | Event::ReceiptReceived { at, .. }
            | Event::ReceiptChecked { at, .. }
            | Event::ChecksAwaited { at, .. }
            | Event::PullEnded { at, .. }
            | Event::FollowUpRequested { at, .. }
            | Event::PullConflicted { at, .. }
            | Event::TaskCompleted { at, .. }
            | Event::TaskLost { at, .. }
            | Event::AttemptFailed { at, .. }
            | Event::TaskCancelled { at, .. }
            | Event::TaskBlocked { at, .. }
            | Event::TaskAnswered { at, .. }
            | Event::TaskRetried { at, .. }
            | Event::AgentRegistered { at, .. }
            | Event::AgentDraining { at, .. }
            | Event::AgentOffline { at, .. }
            | Event::AgentOnline { at, .. }
            | Event::AgentDeregistered { at, .. } => *at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_the_serde_tag() {
        let events = [
            Event::TaskStarted { task: TaskId(1), attempt: 1, at: Timestamp(0) },
            Event::AgentOnline { agent: AgentId(1), at: Timestamp(0) },
            Event::AttemptFailed {
                task: TaskId(1),
                attempt: 1,
                class: FailureClass::Timeout,
                message: "slow".into(),
                decision: RetryDecision::GiveUp,
                spent: None,
                pushed_branch: Some("forgefleet/issue-1-attempt-1".into()),
                at: Timestamp(0),
            },
        ];
        for e in events {
            let v = serde_json::to_value(&e).unwrap();
            assert_eq!(v["type"], e.kind());
            assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        }
    }
}

/// What called a task off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    /// A command (`/cancel`, the operator): forgefleet takes its status label off and says so.
    #[default]
    Person,
    /// The issue lost its status label: the labels are the person's now, forgefleet leaves them as they are.
    LabelRemoved,
    /// The issue was closed: forgefleet takes its own status label off and says so.
    IssueClosed,
    /// The issue no longer exists (deleted, or never was): there is nothing to write on.
    IssueGone,
}

impl CancelledBy {
    pub fn is_person(&self) -> bool {
        *self == CancelledBy::Person
    }
}
