//! How each command becomes events: the decisions, made through the core, written through the store.

use std::sync::Arc;
use std::time::Duration;

use super::command::{Assignment, Command, EngineError, IssueObservation, Registration, Reply, TickReport};
use crate::core::{
    AgentId, AgentState, CancelledBy, Effect, Event, FailureClass, LabelScheme, RetryDecision, RetryPolicy,
    StatusLabel, Task, TaskId, TaskState, Timestamp, TransitionError,
};
use crate::store::WriteTx;

/// The policy the engine decides with.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub retry: RetryPolicy,
    pub labels: LabelScheme,
    /// How long a task may run before it fails with `timeout`.
    pub task_timeout: Duration,
    /// How long an agent has to acknowledge an assignment.
    pub start_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Heartbeats an agent may miss before it is offline.
    pub missed_heartbeats: u32,
    /// Progress lines kept per task.
    pub progress_lines_kept: usize,
    /// How long a webhook's content key is remembered: a replay older than this is applied again (and meets
    /// the usual checks of a stale view). Keeps the table of seen deliveries bounded.
    pub seen_horizon: Duration,
    /// When the seen deliveries are next pruned (a periodic check does it at most hourly).
    pub(crate) next_seen_prune: Timestamp,
    /// When this engine started (set by `Engine::new`). Agents could not reach a server that was down, so
    /// none is judged silent, nor late to start a task, until a grace period from this moment has passed.
    pub started_at: Timestamp,
    /// `[forgejo] branch_prefix`: each attempt's fresh branch is `<prefix>issue-<N>-attempt-<A>`.
    pub branch_prefix: String,
    /// What repositories' own `fleet.yaml` files change.
    pub repos: std::collections::BTreeMap<crate::core::RepoName, super::repo::RepoOverrides>,
    /// Agents' progress lines batched for the chat room; `None` when no room wants them. The batches being
    /// gathered live in memory only: a crash loses at most one interval of lines from the chat (never from
    /// the task's progress, which the store keeps).
    pub chat_progress: Option<crate::core::logbatch::LogBatcher<AgentId>>,
    /// `[forgejo] require_checks`: the CI every repository requires unless its `fleet.yaml` says otherwise.
    pub require_checks: crate::core::ChecksSetting,
    /// `[forgejo] checks_timeout_mins`: how long a task waits for required checks.
    pub checks_timeout: Duration,
    /// `[forgejo] on_pr_closed`: what a task does when its pull request is closed without merging.
    pub on_pr_closed: crate::core::OnPullClosed,
    /// `[forgejo] review_rounds`: how many rounds of changes people may ask for on a task's pull request.
    pub review_rounds: u32,
    /// `[forgejo] answer_any_comment`: whether any comment on a blocked task's issue answers it.
    pub answer_any_comment: bool,
    /// `[forgejo] auto_rebase`: whether a pull request that stopped merging gets a round that merges its base in.
    pub auto_rebase: bool,
    /// `[agents] prefer_same_agent_secs`: how long a task that goes on from an agent's work (a round of
    /// changes, an answered question, a retry on its branch) is kept for that agent while it is online.
    pub prefer_same_agent: Duration,
}

impl EngineSettings {
    /// How long agents are given after a start before any is judged lost: the missed heartbeats allowed, and
    /// never less than three intervals.
    pub fn start_grace(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats.max(3)
    }
    fn in_start_grace(&self, now: Timestamp) -> bool {
        now < self.started_at + self.start_grace()
    }
    pub fn labels_for(&self, repo: &crate::core::RepoName) -> &LabelScheme {
        self.repos.get(repo).and_then(|o| o.labels.as_ref()).unwrap_or(&self.labels)
    }
    pub fn retry_for(&self, repo: &crate::core::RepoName) -> RetryPolicy {
        self.repos.get(repo).map_or_else(|| self.retry.clone(), |o| o.retry_policy(&self.retry))
    }
    pub fn task_timeout_for(&self, repo: &crate::core::RepoName) -> Duration {
        self.repos.get(repo).and_then(|o| o.task_timeout_secs).map_or(self.task_timeout, Duration::from_secs)
    }
    /// The CI a repository requires on its pull requests' heads, and how long a task waits for it: the
    /// repository's `fleet.yaml`, else the server's `[forgejo] require_checks`.
    pub fn checks_for(&self, repo: &crate::core::RepoName) -> Option<(crate::core::RequiredChecks, Duration)> {
        let o = self.repos.get(repo);
        let setting = o.and_then(|o| o.require_checks.as_ref()).unwrap_or(&self.require_checks);
        let required = setting.required().ok().flatten()?;
        Some((required, o.and_then(|o| o.checks_timeout_secs).map_or(self.checks_timeout, Duration::from_secs)))
    }
    /// What a task does when its pull request is closed unmerged: the repository's `on_pr_closed`, else the
    /// server's.
    pub fn on_pr_closed_for(&self, repo: &crate::core::RepoName) -> crate::core::OnPullClosed {
        self.repos.get(repo).and_then(|o| o.on_pr_closed).unwrap_or(self.on_pr_closed)
    }
    /// How many rounds of changes a repository's tasks take: its `fleet.yaml`'s `review_rounds`, else the server's.
    pub fn review_rounds_for(&self, repo: &crate::core::RepoName) -> u32 {
        self.repos.get(repo).and_then(|o| o.review_rounds).unwrap_or(self.review_rounds)
    }
    /// Whether any comment on a blocked task's issue answers its question: the repository's
    /// `answer_any_comment`, else the server's.
    pub fn answer_any_comment_for(&self, repo: &crate::core::RepoName) -> bool {
        self.repos.get(repo).and_then(|o| o.answer_any_comment).unwrap_or(self.answer_any_comment)
    }
    /// Whether a completed task's pull request that no longer merges gets a round that merges its base branch
    /// in: the repository's `auto_rebase`, else the server's.
    pub fn auto_rebase_for(&self, repo: &crate::core::RepoName) -> bool {
        self.repos.get(repo).and_then(|o| o.auto_rebase).unwrap_or(self.auto_rebase)
    }
    pub fn start_timeout_for(&self, repo: &crate::core::RepoName) -> Duration {
        self.repos.get(repo).and_then(|o| o.start_timeout_secs).map_or(self.start_timeout, Duration::from_secs)
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            labels: LabelScheme::default(),
            task_timeout: Duration::from_secs(60 * 60),
            start_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            missed_heartbeats: 3,
            progress_lines_kept: 200,
            seen_horizon: Duration::from_secs(30 * 24 * 60 * 60),
            next_seen_prune: Timestamp(0),
            started_at: Timestamp(0),
            branch_prefix: "forgefleet/".into(),
            repos: Default::default(),
            chat_progress: None,
            require_checks: Default::default(),
            checks_timeout: Duration::from_secs(60 * 60),
            on_pr_closed: Default::default(),
            review_rounds: 3,
            answer_any_comment: false,
            auto_rebase: false,
            prefer_same_agent: Duration::from_secs(120),
        }
    }
}

type Result<T> = std::result::Result<T, EngineError>;

/// Applies one command inside the caller's transaction.
pub fn handle(s: &mut EngineSettings, tx: &WriteTx<'_>, cmd: Command, now: Timestamp) -> Result<Reply> {
    match cmd {
        Command::ObserveIssue(o) => observe_issue(s, tx, o, now).map(Reply::Observed),
        Command::RegisterAgent(r) => register(s, tx, r, now).map(Reply::Registered),
        Command::Heartbeat { agent, running } => heartbeat(tx, agent, running, now),
        Command::NextAssignment { agent, request_key } => next_assignment(s, tx, agent, request_key, now),
        Command::Progress { agent, task, attempt, lines } => {
            leased(tx, agent, task, attempt)?;
            tx.add_progress(task, attempt, &lines, now, s.progress_lines_kept)?;
            if let Some(batch) = s.chat_progress.as_mut().and_then(|b| b.push(agent, lines, now)) {
                chat_progress(tx, batch, now)?;
            }
            Ok(Reply::Done)
        }
        Command::StartTask { agent, task, attempt } => {
            leased(tx, agent, task, attempt)?;
            append(tx, Event::TaskStarted { task, attempt, at: now })
        }
        Command::FailTask { agent, task, attempt, class, message, spent, pushed_branch } => {
            if class == FailureClass::Cancelled {
                return Err(EngineError::Invalid(
                    "an agent cannot report class `cancelled`; cancellations come from people".into(),
                ));
            }
            if class == FailureClass::ChecksFailed {
                return Err(EngineError::Invalid(
                    "an agent cannot report class `checks_failed`; forgefleet reads the pull request's CI itself"
                        .into(),
                ));
            }
            let t = leased(tx, agent, task, attempt)?;
            if let Some(b) = &pushed_branch {
                let assigned = t.branch(&s.branch_prefix);
                if *b != assigned {
                    let shown: String = b.chars().take(200).collect();
                    return Err(EngineError::Invalid(format!(
                        "`pushed_branch` {shown:?} is not the branch of attempt {attempt}, {assigned:?}: only the \
                         assignment's branch is continued"
                    )));
                }
            }
            let decision = s.retry_for(&t.issue.repo).decide(class, t.retries_used(class), now);
            append(tx, Event::AttemptFailed { task, attempt, class, message, decision, spent, pushed_branch, at: now })
        }
        Command::BlockTask { agent, task, attempt, question, session_id } => {
            let t = find_task(tx, task)?;
            // The same question again (a retried request whose answer was lost) changes nothing.
            let asked = t.question.as_ref().is_some_and(|q| q.attempt == attempt && q.text == question);
            if t.state == TaskState::Blocked && t.attempt == attempt && tx.read().ever_held(task, agent, attempt)? {
                if asked {
                    return Ok(Reply::Duplicate);
                }
                // Another question for an attempt already blocked on one: the first stands.
                return Err(TransitionError::Task { task, from: t.state, event: "task_blocked" }.into());
            }
            leased(tx, agent, task, attempt)?;
            append(tx, Event::TaskBlocked { task, attempt, question, session_id, at: now })
        }
        Command::SubmitReceipt { agent, task, attempt, receipt } => {
            submit_receipt(tx, agent, task, attempt, receipt, now)
        }
        Command::FinishValidation { task, attempt, validation } => {
            let t = find_task(tx, task)?;
            if t.attempt != attempt {
                return Err(TransitionError::StaleAttempt { task, current: t.attempt, given: attempt }.into());
            }
            let passed = validation.passed();
            let failures = validation.failures();
            tx.append(&Event::ReceiptChecked { task, attempt, validation, at: now })?;
            if passed {
                match (s.checks_for(&t.issue.repo), &t.receipt) {
                    // The receipt checks out and the repository wants its CI green too: the agent is done, the
                    // task waits for the head commit's statuses.
                    (Some((required, wait)), Some(receipt)) => {
                        let checks = crate::core::AwaitedChecks {
                            pr_number: receipt.pr_number,
                            head_sha: receipt.head_sha.as_str().to_string(),
                            required,
                            since: now,
                            deadline: now + wait,
                        };
                        append(tx, Event::ChecksAwaited { task, attempt, checks, at: now })
                    }
                    _ => append(tx, Event::TaskCompleted { task, attempt, at: now }),
                }
            } else {
                let t = find_task(tx, task)?;
                let message = format!("the receipt did not check out: {failures}");
                fail(s, tx, &t, FailureClass::VerificationFailed, message, now)
            }
        }
        Command::FinishChecks { task, attempt, head_sha, verdict } => {
            finish_checks(s, tx, task, attempt, &head_sha, verdict, now)
        }
        Command::ObservePull { repo, number, closed, merged, by } => {
            if !closed {
                return Ok(Reply::Done);
            }
            // Only a completed task's pull request has an end to record; one already recorded stays as it is.
            let id = match tx.read().completed_with_pull(&repo, number, TaskId(0))? {
                Some(id) => id,
                // Merged or closed by a person while its CI ran: that is the verdict the task was waiting for, and
                // CI no longer decides anything. The attempt completes (its receipt checked out), and then its end
                // is recorded as for any completed task: merged, or closed and `on_pr_closed`.
                None => match tx.read().awaiting_checks_of_pull(&repo, number)? {
                    Some(id) => {
                        let attempt = find_task(tx, id)?.attempt;
                        tx.append(&Event::TaskCompleted { task: id, attempt, at: now })?;
                        id
                    }
                    None => return Ok(Reply::Done),
                },
            };
            let t = find_task(tx, id)?;
            if t.pull_end.is_some() {
                return Ok(Reply::Done);
            }
            let end = crate::core::PullEnd { pr_number: number, merged, by, at: now };
            let then = if merged { crate::core::OnPullClosed::Nothing } else { s.on_pr_closed_for(&repo) };
            append(tx, Event::PullEnded { task: id, attempt: t.attempt, end, then, at: now })
        }
        Command::ObserveConflict { repo, number, head_sha, base_branch, base_sha } => {
            let pull = crate::core::IssueRef { repo, number };
            super::people::conflict(s, tx, &pull, head_sha, base_branch, base_sha, now)
        }
        Command::CancelTask { task, reason } => {
            let t = find_task(tx, task)?;
            append(tx, Event::TaskCancelled { task, attempt: t.attempt, reason, by: CancelledBy::Person, at: now })
        }
        Command::IssueGone { issue } => match tx.read().task_by_issue(&issue)? {
            Some(t) if !t.state.is_terminal() => {
                let reason = "the issue no longer exists".to_string();
                append(
                    tx,
                    Event::TaskCancelled {
                        task: t.id,
                        attempt: t.attempt,
                        reason,
                        by: CancelledBy::IssueGone,
                        at: now,
                    },
                )
            }
            _ => Ok(Reply::Done),
        },
        Command::RetryTask { task, by } => {
            find_task(tx, task)?;
            append(tx, Event::TaskRetried { task, by, at: now })
        }
        Command::DrainAgent { agent } => {
            find_agent(tx, agent)?;
            append(tx, Event::AgentDraining { agent, at: now })
        }
        Command::DeregisterAgent { agent } => {
            if find_agent(tx, agent)?.state == AgentState::Deregistered {
                // Already gone (an operator's `forget` repeated): nothing held, nothing to do.
                return Ok(Reply::Requeued(Vec::new()));
            }
            append(tx, Event::AgentDeregistered { agent, at: now })?;
            // Its work goes back to the queue at once: the agent said goodbye, there is nothing to wait for.
            lose_leases_of(s, tx, agent, now, Loss::Deregistered).map(Reply::Requeued)
        }
        Command::Tick => {
            if now >= s.next_seen_prune {
                tx.prune_seen(now - s.seen_horizon)?;
                s.next_seen_prune = now + Duration::from_secs(60 * 60);
            }
            for batch in s.chat_progress.as_mut().map(|b| b.due(now)).unwrap_or_default() {
                chat_progress(tx, batch, now)?;
            }
            tick(s, tx, now).map(Reply::Ticked)
        }
        Command::FromWebhook { key, inner } => {
            if !tx.first_sighting(&key, now)? {
                return Ok(Reply::Duplicate);
            }
            handle(s, tx, *inner, now)
        }
        Command::QueueCommands { origin, author, commands } => {
            tx.enqueue(&Effect::RunCommands { origin, author, commands, quiet: false }, None, now)?;
            Ok(Reply::Done)
        }
        Command::PlainComment { origin, author, body } => {
            let Some(issue) = origin.issue() else { return Ok(Reply::Done) };
            let blocked = tx.read().task_by_issue(issue)?.is_some_and(|t| t.state == TaskState::Blocked);
            if blocked && s.answer_any_comment_for(&issue.repo) {
                let commands = vec![crate::core::commands::comment_as_answer(&body)];
                tx.enqueue(&Effect::RunCommands { origin, author, commands, quiet: true }, None, now)?;
            }
            Ok(Reply::Done)
        }
        Command::RunCommand { key, command, issue, by } => {
            if !tx.first_sighting(&key, now)? {
                return Ok(Reply::Ran(super::command::CommandOutcome::AlreadyRan));
            }
            super::people::run(s, tx, command, issue, by, now).map(Reply::Ran)
        }
        Command::RequestChanges { pull, by, review_id, commit_id, body, notes } => {
            let review = super::people::Review { id: review_id, commit_id, body, notes };
            super::people::request_changes(s, tx, &pull, by, review, now).map(Reply::Ran)
        }
        Command::Enqueue(effect) => {
            tx.enqueue(&effect, None, now)?;
            Ok(Reply::Done)
        }
        Command::OutboxDelivered { id } => {
            tx.outbox_delivered(id, now)?;
            Ok(Reply::Done)
        }
        Command::OutboxFailed { id, error, retry_in } => {
            tx.outbox_failed(id, &error, now + retry_in)?;
            Ok(Reply::Done)
        }
        Command::OutboxDead { id, error } => {
            tx.outbox_dead(id, &error, now)?;
            Ok(Reply::Done)
        }
        Command::OutboxRetry { id } => Ok(Reply::Outbox(tx.outbox_retry(id, now)?)),
        Command::OutboxDrop { id } => Ok(Reply::Outbox(tx.outbox_drop(id, now)?)),
        Command::SetMeta { key, value } => {
            tx.set_meta(&key, &value)?;
            Ok(Reply::Done)
        }
        Command::MatrixSynced { next_batch, messages } => {
            let new = tx.record_matrix_sync(&next_batch, &messages, now)?;
            // Each new message's commands are queued in the transaction that records it: a command event is
            // handled exactly once, across restarts and crashes.
            for m in &new {
                let commands = crate::core::commands::parse(&m.body, crate::core::commands::Place::Chat);
                if !commands.is_empty() {
                    let origin =
                        crate::core::CommandOrigin::Matrix { room: m.room.clone(), event_id: m.event_id.clone() };
                    tx.enqueue(
                        &Effect::RunCommands { origin, author: m.sender.clone(), commands, quiet: false },
                        None,
                        now,
                    )?;
                }
                tx.matrix_handled(&m.event_id, now)?;
            }
            Ok(Reply::MatrixRecorded(new.len()))
        }
        Command::MatrixPosted { key, room, event_id } => {
            tx.set_matrix_message(&key, &room, &event_id, now)?;
            Ok(Reply::Done)
        }
        Command::SetRepoSettings { repo, overrides } => {
            let json = serde_json::to_string(&overrides).map_err(|e| EngineError::Invalid(e.to_string()))?;
            tx.set_meta(&super::repo::RepoSettings::key(&repo), &json)?;
            s.repos.insert(repo, overrides);
            Ok(Reply::Done)
        }
    }
}

/// A receipt is accepted once per attempt, from the agent that held it, after it started the attempt. The same
/// receipt again (a retried request) is a no-op; a different one for an attempt already received is a conflict.
fn submit_receipt(
    tx: &WriteTx<'_>,
    agent: AgentId,
    task: TaskId,
    attempt: u32,
    receipt: crate::core::Receipt,
    now: Timestamp,
) -> Result<Reply> {
    let t = find_task(tx, task)?;
    if t.attempt == attempt && t.receipt.is_some() {
        if !tx.read().ever_held(task, agent, attempt)? {
            return Err(EngineError::Forbidden(format!("agent {agent} did not hold task {task} attempt {attempt}")));
        }
        if t.receipt.as_ref() == Some(&receipt) {
            return Ok(Reply::Duplicate);
        }
        if let Some(reason) = cancellation(tx, task, attempt)? {
            return Err(EngineError::Conflict(TransitionError::Cancelled { task, attempt, reason }));
        }
        return Err(EngineError::Conflict(TransitionError::Task { task, from: t.state, event: "receipt_received" }));
    }
    let t = leased(tx, agent, task, attempt)?;
    // The state machine would take a receipt in `assigned` (old logs have such receipts and must replay), but
    // an agent that never said it started has not done the work forgefleet knows of.
    if t.state == TaskState::Assigned {
        return Err(EngineError::Conflict(TransitionError::NotStarted { task, attempt }));
    }
    append(tx, Event::ReceiptReceived { task, attempt, receipt, at: now })
}

/// The pull request's CI has spoken on a task that waits for it: the verdict joins the validation, and the
/// task completes, or its attempt fails with `checks_failed` and the retry continues the same branch (and so
/// the same pull request). A verdict about another attempt or another head changes nothing.
fn finish_checks(
    s: &EngineSettings,
    tx: &WriteTx<'_>,
    task: TaskId,
    attempt: u32,
    head_sha: &str,
    verdict: crate::core::ChecksVerdict,
    now: Timestamp,
) -> Result<Reply> {
    use crate::core::ChecksVerdict;
    let t = find_task(tx, task)?;
    if t.attempt != attempt {
        return Err(TransitionError::StaleAttempt { task, current: t.attempt, given: attempt }.into());
    }
    if !t.checks.as_ref().is_some_and(|c| c.head_sha.eq_ignore_ascii_case(head_sha)) {
        return Err(EngineError::Conflict(TransitionError::Task { task, from: t.state, event: "checks_finished" }));
    }
    let (passed, detail) = match &verdict {
        ChecksVerdict::Pending { .. } => return Ok(Reply::Done),
        ChecksVerdict::Passed { .. } => (true, verdict.explain()),
        ChecksVerdict::Failed { .. } => (false, verdict.explain()),
    };
    let mut validation = t.validation.clone().unwrap_or_default();
    validation.checks.retain(|c| c.name != CI_CHECK);
    validation.checks.push(crate::core::Check { name: CI_CHECK.into(), passed, detail: detail.clone() });
    tx.append(&Event::ReceiptChecked { task, attempt, validation, at: now })?;
    if passed {
        return append(tx, Event::TaskCompleted { task, attempt, at: now });
    }
    checks_failed(s, tx, &t, detail, now)
}

/// The check a verdict on the pull request's CI adds to the task's validation.
pub const CI_CHECK: &str = "ci_checks";

/// Fails the attempt with `checks_failed`, handing its branch (and with it the pull request) to the retry.
fn checks_failed(s: &EngineSettings, tx: &WriteTx<'_>, t: &Task, message: String, now: Timestamp) -> Result<Reply> {
    let class = FailureClass::ChecksFailed;
    let decision = s.retry_for(&t.issue.repo).decide(class, t.retries_used(class), now);
    let pushed_branch = Some(t.branch(&s.branch_prefix));
    append(
        tx,
        Event::AttemptFailed {
            task: t.id,
            attempt: t.attempt,
            class,
            message,
            decision,
            spent: None,
            pushed_branch,
            at: now,
        },
    )
}

fn chat_progress(tx: &WriteTx<'_>, b: crate::core::logbatch::Batch<AgentId>, now: Timestamp) -> Result<()> {
    tx.enqueue(&Effect::ChatProgress { agent: b.key, lines: b.lines, skipped: b.skipped }, None, now)?;
    Ok(())
}

fn append(tx: &WriteTx<'_>, e: Event) -> Result<Reply> {
    tx.append(&e)?;
    Ok(Reply::Done)
}

fn find_task(tx: &WriteTx<'_>, id: TaskId) -> Result<Arc<Task>> {
    tx.read().task_shared(id)?.ok_or_else(|| EngineError::NotFound(format!("task {id}")))
}

fn find_agent(tx: &WriteTx<'_>, id: AgentId) -> Result<Arc<crate::core::Agent>> {
    tx.read().agent_shared(id)?.ok_or_else(|| EngineError::NotFound(format!("agent {id}")))
}

/// The task, if `agent` holds the lease of this `attempt`. An agent reporting on an attempt it held once but
/// lost since gets a conflict (its news is stale); an agent that never held it is forbidden.
/// An attempt that was cancelled says so, with the reason.
fn leased(tx: &WriteTx<'_>, agent: AgentId, task: TaskId, attempt: u32) -> Result<Arc<Task>> {
    let t = find_task(tx, task)?;
    let forbidden =
        || EngineError::Forbidden(format!("agent {agent} does not hold the lease of task {task} attempt {attempt}"));
    match &t.lease {
        Some(l) if l.agent == agent && l.attempt == attempt => Ok(t),
        _ if tx.read().ever_held(task, agent, attempt)? => {
            if let Some(reason) = cancellation(tx, task, attempt)? {
                return Err(EngineError::Conflict(TransitionError::Cancelled { task, attempt, reason }));
            }
            if attempt != t.attempt {
                return Err(EngineError::Conflict(TransitionError::StaleAttempt {
                    task,
                    current: t.attempt,
                    given: attempt,
                }));
            }
            Err(forbidden())
        }
        _ => Err(forbidden()),
    }
}

/// Why `attempt` of `task` was cancelled, if it was. Read from the log, only when a report is refused.
fn cancellation(tx: &WriteTx<'_>, task: TaskId, attempt: u32) -> Result<Option<String>> {
    Ok(tx.read().task_events(task)?.into_iter().rev().find_map(|(_, e)| match e {
        Event::TaskCancelled { attempt: a, reason, .. } if a == attempt => Some(reason),
        _ => None,
    }))
}

/// The meta key prefix under which the newest `updated_at` seen of each issue is kept.
pub const ISSUE_SEEN: &str = "issue.seen:";

fn observe_issue(s: &EngineSettings, tx: &WriteTx<'_>, o: IssueObservation, now: Timestamp) -> Result<Option<TaskId>> {
    let labels = s.labels_for(&o.issue.repo);
    let reading = labels.read(&o.labels);
    let existing = tx.read().task_by_issue(&o.issue)?;
    // An older view never undoes a newer one: deliveries arrive out of order, and a replay may be old.
    if let Some(at) = o.updated_at {
        let key = format!("{ISSUE_SEEN}{}", o.issue);
        let newest = tx.read().meta(&key)?.and_then(|v| v.parse::<i64>().ok());
        if newest.is_some_and(|n| at.0 < n) {
            return Ok(existing.map(|t| t.id));
        }
        if newest.is_none_or(|n| at.0 > n) {
            tx.set_meta(&key, &at.0.to_string())?;
        }
    }
    let wants_work = o.open && reading.wants_work();
    // A finished task starts again only when a person changed its labels back to `todo`: the same labels
    // seen again (a replay, a poll racing our own label write) must not redo finished work.
    let queue_as = match &existing {
        None if wants_work => Some(tx.read().next_task_id()?),
        Some(t) if t.state.is_terminal() && wants_work && o.labels != t.labels => Some(t.id),
        _ => None,
    };
    // A webhook's view may be a same-time one, or show an issue that is gone by now: queueing and cancelling
    // wait for the issue as Forgejo has it now (read by the deliverer, observed again, fresh).
    let still_wanted = o.open
        && [StatusLabel::Todo, StatusLabel::Doing, StatusLabel::Blocked].iter().any(|s| reading.statuses.contains(s));
    let called_off = existing.as_ref().is_some_and(|t| !t.state.is_terminal() && !still_wanted);
    if !o.fresh && (queue_as.is_some() || called_off) {
        tx.enqueue(&Effect::ConfirmIssue { issue: o.issue.clone() }, None, now)?;
        return Ok(existing.map(|t| t.id));
    }
    if let Some(task) = queue_as {
        report_settings_problem(s, tx, &o.issue, now)?;
        tx.append(&Event::TaskQueued {
            task,
            issue: o.issue,
            title: o.title,
            body: o.body,
            labels: o.labels,
            spec: reading.spec,
            at: now,
            issue_id: o.issue_id,
        })?;
        return Ok(Some(task));
    }
    let Some(t) = existing else { return Ok(None) };
    let changed = o.title != t.title || o.body != t.body || o.labels != t.labels || reading.spec != t.spec;
    // While active, the issue carries `todo`, or (once we labelled it) `doing` or `blocked` (`called_off` above). None,
    // or a closed issue, means a person called the work off. Said with forgefleet's label for the task's state.
    let removed = labels.status_name(t.state.status_label().unwrap_or(StatusLabel::Todo)).to_string();
    if changed {
        // Finished tasks record what people see too, so that a later relabel to `todo` is recognised; so do
        // tasks called off by their labels, or the label put back would look like the one taken away.
        tx.append(&Event::TaskSpecChanged {
            task: t.id,
            title: o.title,
            body: o.body,
            labels: o.labels,
            spec: reading.spec,
            at: now,
        })?;
    }
    if called_off {
        let (reason, by) = if o.open {
            (format!("the `{removed}` label was removed"), CancelledBy::LabelRemoved)
        } else {
            ("the issue was closed".to_string(), CancelledBy::IssueClosed)
        };
        tx.append(&Event::TaskCancelled { task: t.id, attempt: t.attempt, reason, by, at: now })?;
        return Ok(Some(t.id));
    }
    repair_status_label(tx, &t, &o.issue, &reading.statuses, now)?;
    Ok(Some(t.id))
}

/// A repository whose `fleet.yaml` is broken hears about it once, on the next task queued there.
fn report_settings_problem(
    s: &EngineSettings,
    tx: &WriteTx<'_>,
    issue: &crate::core::IssueRef,
    now: Timestamp,
) -> Result<()> {
    let Some(o) = s.repos.get(&issue.repo) else { return Ok(()) };
    let Some(problem) = &o.problem else { return Ok(()) };
    let key = format!("fleet-yaml:{}:{}", issue.repo, o.source_sha.as_deref().unwrap_or("-"));
    if tx.first_sighting(&key, now)? {
        let body = format!(
            "⚠️ This repository's `.forgejo/fleet.yaml` cannot be used, so forgefleet's defaults apply until it is \
             fixed:\n\n> {problem}"
        );
        tx.enqueue(&Effect::Reply { issue: issue.clone(), key, body }, None, now)?;
    }
    Ok(())
}

/// Exactly one `status:*` label, the one the task's state calls for. An active task's issue is brought back
/// in line whenever it drifts; a finished one only when it carries several (a person may remove ours).
fn repair_status_label(
    tx: &WriteTx<'_>,
    t: &Task,
    issue: &crate::core::IssueRef,
    seen: &[StatusLabel],
    now: Timestamp,
) -> Result<()> {
    let want = t.state.status_label();
    let drifted = if t.state.is_terminal() { seen.len() > 1 && want.is_some() } else { seen != want.as_slice() };
    // A label write still on its way explains what was seen; another would only repeat it.
    if drifted && !tx.read().label_write_pending(issue)? {
        tx.enqueue(&Effect::SetStatusLabel { issue: issue.clone(), status: want }, None, now)?;
    }
    Ok(())
}

fn register(s: &EngineSettings, tx: &WriteTx<'_>, r: Registration, now: Timestamp) -> Result<AgentId> {
    if r.max_concurrency == 0 {
        return Err(EngineError::Invalid("max_concurrency must be at least 1".into()));
    }
    let known = tx.read().agent_by_name(&r.name)?;
    // A live agent's name is taken over only by the process that holds its token (a runner restarting);
    // the registration token alone must not evict a running agent, re-queue its work and inherit its pins.
    if let Some(a) = &known
        && matches!(a.state, AgentState::Online | AgentState::Draining)
        && r.presented_token_hash.as_deref() != Some(a.token_hash.as_str())
    {
        let why = if r.presented_token_hash.is_some() {
            "the agent token presented is not its current one"
        } else {
            "no agent token was presented"
        };
        return Err(EngineError::NameInUse(format!(
            "agent {name} is online ({why}): registering under its name needs its current agent token in \
             `agent_token`; if that agent is gone for good, an operator frees the name with \
             `forgefleet agents forget {name}`, or it is free once the agent has missed its heartbeats",
            name = a.name
        )));
    }
    let id = match &known {
        Some(a) => a.id,
        None => tx.read().next_agent_id()?,
    };
    // A new token means a new process: whatever the old one held would otherwise wait for its deadline.
    if known.is_some() {
        lose_leases_of(s, tx, id, now, Loss::Reregistered)?;
    }
    tx.append(&Event::AgentRegistered {
        agent: id,
        name: r.name,
        adapter: r.adapter,
        capabilities: r.capabilities,
        max_concurrency: r.max_concurrency,
        version: r.version,
        token_hash: r.token_hash,
        at: now,
    })?;
    tx.touch_agent(id, now)?;
    Ok(id)
}

fn heartbeat(tx: &WriteTx<'_>, agent: AgentId, running: Vec<TaskId>, now: Timestamp) -> Result<Reply> {
    let a = find_agent(tx, agent)?;
    if a.state == AgentState::Deregistered {
        return Err(EngineError::Forbidden(format!("agent {} has deregistered; register again", a.name)));
    }
    if a.state == AgentState::Offline {
        tx.append(&Event::AgentOnline { agent, at: now })?;
    }
    tx.touch_agent(agent, now)?;
    // Anything it runs without holding the lease (cancelled, lost, or given to another) must stop.
    let held = tx.read().leases_of(agent)?;
    let cancel = running.into_iter().filter(|t| !held.iter().any(|(h, _)| h == t)).collect();
    Ok(Reply::Heartbeat { cancel })
}

fn next_assignment(
    s: &EngineSettings,
    tx: &WriteTx<'_>,
    agent: AgentId,
    request_key: Option<String>,
    now: Timestamp,
) -> Result<Reply> {
    let a = find_agent(tx, agent)?;
    if a.state == AgentState::Deregistered {
        return Err(EngineError::Forbidden(format!("agent {} has deregistered; register again", a.name)));
    }
    // The same request again (its answer was lost): the same lease, never a second task.
    let repeated = match &request_key {
        Some(key) => tx.read().lease_by_request(agent, key)?,
        None => None,
    };
    let id = match repeated {
        Some(id) => id,
        None => {
            let running = tx.read().running_count(agent)?;
            let Some(id) = tx.read().next_for(&a, running, now, s.prefer_same_agent)? else {
                return Ok(Reply::Assignment(None));
            };
            let t = find_task(tx, id)?;
            tx.append(&Event::TaskAssigned {
                task: id,
                attempt: t.attempt,
                agent,
                at: now,
                start_by: now + s.start_timeout_for(&t.issue.repo),
                deadline: now + s.task_timeout_for(&t.issue.repo),
                request_key,
            })?;
            id
        }
    };
    let task = find_task(tx, id)?;
    let lease = task.lease.clone().ok_or_else(|| EngineError::Invalid("assigned task has no lease".into()))?;
    let instructions = s.repos.get(&task.issue.repo).and_then(|o| o.prompt.clone());
    Ok(Reply::Assignment(Some(Box::new(Assignment { task: Task::clone(&task), lease, instructions }))))
}

/// Records a failed attempt with the retry policy's decision.
fn fail(
    s: &EngineSettings,
    tx: &WriteTx<'_>,
    t: &Task,
    class: FailureClass,
    message: String,
    now: Timestamp,
) -> Result<Reply> {
    let decision = s.retry_for(&t.issue.repo).decide(class, t.retries_used(class), now);
    let (task, attempt) = (t.id, t.attempt);
    append(
        tx,
        Event::AttemptFailed { task, attempt, class, message, decision, spent: None, pushed_branch: None, at: now },
    )
}

/// Why an agent's leases are taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// It said goodbye.
    Deregistered,
    /// It registered again with a new token: the process that held the leases is gone.
    Reregistered,
    /// Its heartbeats stopped.
    Silent,
}

/// Every lease the agent holds is lost, for the reason `why`.
fn lose_leases_of(
    s: &EngineSettings,
    tx: &WriteTx<'_>,
    agent: AgentId,
    now: Timestamp,
    why: Loss,
) -> Result<Vec<TaskId>> {
    let mut lost = Vec::new();
    for (task, attempt) in tx.read().leases_of(agent)? {
        let t = find_task(tx, task)?;
        let message = match why {
            Loss::Deregistered => "the agent deregistered while holding the task".to_string(),
            Loss::Reregistered => {
                "the agent registered again (it restarted): the process that held the task is gone".to_string()
            }
            Loss::Silent => format!("agent {} stopped sending heartbeats", agent_name(tx, agent)),
        };
        // Only silence is waited out (the backoff); an agent that says it is gone frees the task at once.
        lose(s, tx, &t, attempt, agent, message, now, why != Loss::Silent)?;
        lost.push(task);
    }
    Ok(lost)
}

#[allow(clippy::too_many_arguments)]
fn lose(
    s: &EngineSettings,
    tx: &WriteTx<'_>,
    t: &Task,
    attempt: u32,
    agent: AgentId,
    message: String,
    now: Timestamp,
    at_once: bool,
) -> Result<()> {
    // A task mid-validation is past the agent's part: losing the agent does not lose the work.
    if !matches!(t.state, TaskState::Assigned | TaskState::Running) {
        return Ok(());
    }
    tx.append(&Event::TaskLost { task: t.id, attempt, agent, at: now })?;
    let mut decision =
        s.retry_for(&t.issue.repo).decide(FailureClass::AgentLost, t.retries_used(FailureClass::AgentLost), now);
    if let (true, RetryDecision::Retry { not_before, .. }) = (at_once, &mut decision) {
        *not_before = now;
    }
    tx.append(&Event::AttemptFailed {
        task: t.id,
        attempt,
        class: FailureClass::AgentLost,
        message,
        decision,
        spent: None,
        pushed_branch: None,
        at: now,
    })?;
    Ok(())
}

/// The agent's name for messages people read (its number only if it is unknown).
fn agent_name(tx: &WriteTx<'_>, agent: AgentId) -> String {
    match tx.read().agent_shared(agent) {
        Ok(Some(a)) => a.name.to_string(),
        _ => format!("#{agent}"),
    }
}

fn tick(s: &EngineSettings, tx: &WriteTx<'_>, now: Timestamp) -> Result<TickReport> {
    let mut report = TickReport::default();
    // Right after a start, the server's own downtime would count against every agent: wait for them first.
    let grace = s.in_start_grace(now);
    for expired in tx.read().expired_leases(now)? {
        let t = find_task(tx, expired.task)?;
        if !expired.started && t.state == TaskState::Assigned {
            if grace {
                continue;
            }
            let message = format!(
                "agent {} did not start the task within {} s of taking it",
                agent_name(tx, expired.agent),
                s.start_timeout_for(&t.issue.repo).as_secs()
            );
            lose(s, tx, &t, expired.attempt, expired.agent, message, now, false)?;
            report.lost.push(t.id);
        } else if t.lease.as_ref().is_some_and(|l| l.deadline <= now) && t.state != TaskState::Validating {
            let limit = s.task_timeout_for(&t.issue.repo).as_secs() / 60;
            let message = format!("the task ran past its time limit of {limit} min");
            fail(s, tx, &t, FailureClass::Timeout, message, now)?;
            report.timed_out.push(t.id);
        }
    }
    for id in tx.read().checks_overdue(now)? {
        let t = find_task(tx, id)?;
        let Some(c) = &t.checks else { continue };
        let waited = crate::core::time::human_duration(c.since.until(c.deadline));
        let message = format!("CI did not finish within {waited}: still waiting for {}", c.required);
        checks_failed(s, tx, &t, message, now)?;
        report.timed_out.push(t.id);
    }
    let silence = s.heartbeat_interval * s.missed_heartbeats;
    let silent = if grace { Vec::new() } else { tx.read().silent_agents(now - silence)? };
    for agent in silent {
        tx.append(&Event::AgentOffline { agent, at: now })?;
        report.lost.extend(lose_leases_of(s, tx, agent, now, Loss::Silent)?);
        report.offline.push(agent);
    }
    report.next_release = tx.read().next_release(now)?;
    Ok(report)
}

#[cfg(test)]
pub(crate) fn observation(issue: &str, labels: &[&str]) -> IssueObservation {
    IssueObservation {
        issue: issue.parse().unwrap(),
        title: format!("Work on {issue}"),
        body: String::new(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        open: true,
        updated_at: None,
        fresh: true,
        issue_id: None,
    }
}
