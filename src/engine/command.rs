//! What the engine is asked to do, what it answers, and why it refuses.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::core::{
    AgentId, AgentName, FailureClass, IssueRef, Lease, Receipt, Task, TaskId, Timestamp, TransitionError,
};
use crate::store::StoreError;

/// An issue as Forgejo shows it, from a webhook or a poll: both go through the same code.
#[derive(Debug, Clone, PartialEq)]
pub struct IssueObservation {
    pub issue: IssueRef,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub open: bool,
    /// The issue's `updated_at`: a view older than one already seen is ignored.
    pub updated_at: Option<Timestamp>,
    /// Read from Forgejo's API just now. A webhook's view is not: what it would queue or cancel is confirmed
    /// by reading the issue first.
    pub fresh: bool,
    /// Forgejo's own id of the issue (global, never reused), when known: a task remembers it, so that nothing
    /// meant for it lands on a different issue that later has the same number.
    pub issue_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub name: AgentName,
    pub adapter: String,
    pub capabilities: BTreeSet<String>,
    pub max_concurrency: u32,
    pub version: String,
    pub token_hash: String,
    /// The hash of the agent token the registrant presented (`agent_token`), if any: a name that is online
    /// is taken over only with its current token.
    pub presented_token_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    ObserveIssue(IssueObservation),
    RegisterAgent(Registration),
    Heartbeat {
        agent: AgentId,
        running: Vec<TaskId>,
    },
    /// The next task that fits the agent, if any. A repeated `request_key` gets the lease it got before.
    NextAssignment {
        agent: AgentId,
        request_key: Option<String>,
    },
    /// Log lines from the agent working on a task; the newest few are kept.
    Progress {
        agent: AgentId,
        task: TaskId,
        attempt: u32,
        lines: Vec<String>,
    },
    StartTask {
        agent: AgentId,
        task: TaskId,
        attempt: u32,
    },
    FailTask {
        agent: AgentId,
        task: TaskId,
        attempt: u32,
        class: FailureClass,
        message: String,
        /// What the attempt spent, if the agent says.
        spent: Option<crate::core::Spent>,
        /// The attempt's branch, if the agent pushed it: it must be the assignment's branch.
        pushed_branch: Option<String>,
    },
    /// The agent cannot go on without a person's answer: the attempt ends and the task waits for `/answer`.
    BlockTask {
        agent: AgentId,
        task: TaskId,
        attempt: u32,
        question: String,
        /// The agent's CLI session, when its runner reported one.
        session_id: Option<String>,
    },
    SubmitReceipt {
        agent: AgentId,
        task: TaskId,
        attempt: u32,
        receipt: Receipt,
    },
    /// forgefleet's own checks of a receipt: all passed completes the task, any failed is a
    /// `verification_failed` attempt.
    FinishValidation {
        task: TaskId,
        attempt: u32,
        validation: crate::core::Validation,
    },
    /// The statuses on the head of a pull request whose task waits for CI, as the validator read them.
    FinishChecks {
        task: TaskId,
        attempt: u32,
        /// The commit the statuses are of: a verdict on another head is refused.
        head_sha: String,
        verdict: crate::core::ChecksVerdict,
    },
    /// A pull request as Forgejo has it now (read back after a webhook, or by reconciliation): when it is
    /// closed and a completed task's receipt names it, the task records how it ended; a task still waiting for
    /// its CI completes first (a person's merge or close is the verdict it waited for).
    ObservePull {
        repo: crate::core::RepoName,
        number: u64,
        closed: bool,
        merged: bool,
        /// Who merged it, as Forgejo says.
        by: Option<String>,
    },
    /// A pull request Forgejo said twice, a while apart, does not merge (`mergeable: false`) at head `head_sha`
    /// into `base_branch` at `base_sha`: when a completed task's receipt names it and that head was not decided
    /// yet, a round that merges the base in is queued (`auto_rebase`), or people are told.
    ObserveConflict {
        repo: crate::core::RepoName,
        number: u64,
        head_sha: String,
        base_branch: String,
        base_sha: String,
    },
    CancelTask {
        task: TaskId,
        reason: String,
    },
    /// Forgejo says the issue does not exist (deleted, or never was): its task, if live, is cancelled.
    IssueGone {
        issue: IssueRef,
    },
    RetryTask {
        task: TaskId,
        by: String,
    },
    DrainAgent {
        agent: AgentId,
    },
    DeregisterAgent {
        agent: AgentId,
    },
    /// The periodic checks: leases not started in time, tasks past their deadline, silent agents.
    Tick,
    /// A webhook's command, applied only the first time its content key is seen.
    FromWebhook {
        key: String,
        inner: Box<Command>,
    },
    /// A Matrix message was posted for `key` (a task's message, an agent's thread root) as `event_id`.
    MatrixPosted {
        key: String,
        room: String,
        event_id: String,
    },
    /// Commands a person wrote (parsed where they arrived), to run once the author's permission is checked.
    QueueCommands {
        origin: crate::core::CommandOrigin,
        author: String,
        commands: Vec<crate::core::commands::Parsed>,
    },
    /// A comment on an issue that holds no command. With `answer_any_comment`, one on a blocked task's issue
    /// answers its question: it is queued as an `/answer` that is answered only when it works.
    PlainComment {
        origin: crate::core::CommandOrigin,
        author: String,
        body: String,
    },
    /// One command that changes something, from a person whose permission was checked: applied once under
    /// `key`, in one round trip (the task is found, the command checked against its state and applied in one
    /// transaction). `issue` is the one the command is about.
    RunCommand {
        key: String,
        command: crate::core::commands::FleetCommand,
        issue: Option<IssueRef>,
        by: String,
    },
    /// A person with write permission asked for changes in a review of pull request `pull` (read back from
    /// Forgejo, never taken from a webhook): the completed task whose receipt names it gets a round of changes,
    /// once per review, when the review is of the head forgefleet verified.
    RequestChanges {
        pull: IssueRef,
        /// The reviewer's Forgejo login.
        by: String,
        review_id: i64,
        /// The commit the review is of.
        commit_id: String,
        /// The review's text: the round's instruction.
        body: String,
        notes: Vec<crate::core::ReviewNote>,
    },
    /// Any side effect a worker decided on (replies, reactions).
    Enqueue(crate::core::Effect),
    /// The outbox row was delivered.
    OutboxDelivered {
        id: i64,
    },
    /// The outbox row failed; try again after `retry_in`.
    OutboxFailed {
        id: i64,
        error: String,
        retry_in: std::time::Duration,
    },
    /// The outbox row can never succeed: a dead letter until an operator retries or drops it.
    OutboxDead {
        id: i64,
        error: String,
    },
    /// An operator's retry of a dead letter (answered `Reply::Outbox`).
    OutboxRetry {
        id: i64,
    },
    /// An operator gives up on an undelivered outbox row (answered `Reply::Outbox`).
    OutboxDrop {
        id: i64,
    },
    /// A small durable setting (a reconciliation cursor).
    SetMeta {
        key: String,
        value: String,
    },
    /// The Matrix bot synced: the text messages it saw (recorded once each, by event id) and the token the
    /// next sync starts from, in one transaction (answered `Reply::MatrixRecorded`).
    MatrixSynced {
        next_batch: String,
        messages: Vec<crate::store::InboxMessage>,
    },
    /// A repository's own settings (`.forgejo/fleet.yaml`) were read: they apply from now on.
    SetRepoSettings {
        repo: crate::core::RepoName,
        overrides: super::repo::RepoOverrides,
    },
}

impl Command {
    /// Whether this command may make a task available or free an agent's slot, so waiting agents should
    /// be matched again.
    pub fn may_free_work(&self) -> bool {
        matches!(
            self,
            Command::ObserveIssue(_)
                | Command::FromWebhook { .. }
                | Command::FailTask { .. }
                | Command::BlockTask { .. }
                | Command::FinishValidation { .. }
                | Command::FinishChecks { .. }
                | Command::ObservePull { .. }
                | Command::ObserveConflict { .. }
                | Command::CancelTask { .. }
                | Command::IssueGone { .. }
                | Command::RetryTask { .. }
                | Command::RunCommand { .. }
                | Command::RequestChanges { .. }
                | Command::DeregisterAgent { .. }
                | Command::Tick
        )
    }
}

/// A task leased to an agent: what it needs to do the work.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub task: Task,
    pub lease: Lease,
    /// The repository's own instructions for agents (`prompt` in its `.forgejo/fleet.yaml`).
    pub instructions: Option<String>,
}

/// What happened at the periodic checks.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TickReport {
    pub lost: Vec<TaskId>,
    pub timed_out: Vec<TaskId>,
    pub offline: Vec<AgentId>,
    /// The next moment something becomes due (a backoff ends); the timer may sleep until then.
    pub next_release: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The task the observation concerns, if any.
    Observed(Option<TaskId>),
    Registered(AgentId),
    Heartbeat {
        cancel: Vec<TaskId>,
    },
    Assignment(Option<Box<Assignment>>),
    /// Tasks that went back to the queue.
    Requeued(Vec<TaskId>),
    /// A webhook whose content was seen before: nothing was done.
    Duplicate,
    Done,
    Ticked(TickReport),
    /// What an operator's retry or drop of an outbox row found.
    Outbox(crate::store::OutboxChange),
    /// What became of a person's command.
    Ran(CommandOutcome),
    /// How many of a Matrix sync's messages were new to the inbox.
    MatrixRecorded(usize),
}

/// What became of a command a person gave (`Command::RunCommand`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    Applied,
    /// The same command (its key) ran before: nothing was done again.
    AlreadyRan,
    /// There is no task for the issue.
    NoTask(IssueRef),
    /// No agent has that name.
    UnknownAgent(crate::core::AgentName),
    /// It does not apply to the task as it is; why, in words.
    NotApplicable(String),
    /// It is about a commit that is no longer the one forgefleet verified (a review of an older head): there
    /// is nothing to do and nobody to tell.
    Stale,
}

/// Why the engine refused a command. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Conflict(#[from] TransitionError),
    #[error("{0}")]
    Invalid(String),
    /// Another live agent has this name; the message says how to proceed.
    #[error("{0}")]
    NameInUse(String),
    #[error("the engine has stopped")]
    Stopped,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    /// An event refused by the state machine is the caller's conflict, not a storage failure.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Transition(t) => EngineError::Conflict(t),
            other => EngineError::Store(other),
        }
    }
}

impl From<rusqlite::Error> for EngineError {
    fn from(e: rusqlite::Error) -> Self {
        EngineError::Store(StoreError::Sqlite(e))
    }
}
