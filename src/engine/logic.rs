//! How each command becomes events: the decisions, made through the core, written through the store.

use std::sync::Arc;
use std::time::Duration;

use super::command::{Assignment, Command, EngineError, IssueObservation, Registration, Reply, TickReport};
use crate::core::{
    AgentId, AgentState, Effect, Event, FailureClass, LabelScheme, RetryDecision, RetryPolicy, StatusLabel, Task,
    TaskId, TaskState, Timestamp, TransitionError,
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
    /// What repositories' own `fleet.yaml` files change.
    pub repos: std::collections::BTreeMap<crate::core::RepoName, super::repo::RepoOverrides>,
}

impl EngineSettings {
    pub fn labels_for(&self, repo: &crate::core::RepoName) -> &LabelScheme {
        self.repos.get(repo).and_then(|o| o.labels.as_ref()).unwrap_or(&self.labels)
    }
    pub fn retry_for(&self, repo: &crate::core::RepoName) -> RetryPolicy {
        self.repos.get(repo).map_or_else(|| self.retry.clone(), |o| o.retry_policy(&self.retry))
    }
    pub fn task_timeout_for(&self, repo: &crate::core::RepoName) -> Duration {
        self.repos.get(repo).and_then(|o| o.task_timeout_secs).map_or(self.task_timeout, Duration::from_secs)
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
            repos: Default::default(),
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
            Ok(Reply::Done)
        }
        Command::StartTask { agent, task, attempt } => {
            leased(tx, agent, task, attempt)?;
            append(tx, Event::TaskStarted { task, attempt, at: now })
        }
        Command::FailTask { agent, task, attempt, class, message } => {
            if class == FailureClass::Cancelled {
                return Err(EngineError::Invalid(
                    "an agent cannot report class `cancelled`; cancellations come from people".into(),
                ));
            }
            let t = leased(tx, agent, task, attempt)?;
            fail(s, tx, &t, class, message, now)
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
                append(tx, Event::TaskCompleted { task, attempt, at: now })
            } else {
                let t = find_task(tx, task)?;
                let message = format!("the receipt did not check out: {failures}");
                fail(s, tx, &t, FailureClass::VerificationFailed, message, now)
            }
        }
        Command::CancelTask { task, reason } => {
            let t = find_task(tx, task)?;
            append(tx, Event::TaskCancelled { task, attempt: t.attempt, reason, at: now })
        }
        Command::RetryTask { task, by } => {
            find_task(tx, task)?;
            append(tx, Event::TaskRetried { task, by, at: now })
        }
        Command::DrainAgent { agent } => {
            find_agent(tx, agent)?;
            append(tx, Event::AgentDraining { agent, at: now })
        }
        Command::DeregisterAgent { agent } => {
            find_agent(tx, agent)?;
            append(tx, Event::AgentDeregistered { agent, at: now })?;
            // Its work goes back to the queue at once: the agent said goodbye, there is nothing to wait for.
            lose_leases_of(s, tx, agent, now, Loss::Deregistered).map(Reply::Requeued)
        }
        Command::Tick => tick(s, tx, now).map(Reply::Ticked),
        Command::FromWebhook { key, inner } => {
            if !tx.first_sighting(&key, now)? {
                return Ok(Reply::Duplicate);
            }
            handle(s, tx, *inner, now)
        }
        Command::QueueCommands { issue, comment_id, author, lines } => {
            tx.enqueue(&Effect::RunCommands { issue, comment_id, author, lines }, None, now)?;
            Ok(Reply::Done)
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
        Command::SetRepoSettings { repo, overrides } => {
            let json = serde_json::to_string(&overrides).map_err(|e| EngineError::Invalid(e.to_string()))?;
            tx.set_meta(&format!("{REPO_SETTINGS}{repo}"), &json)?;
            s.repos.insert(repo, overrides);
            Ok(Reply::Done)
        }
    }
}

/// A receipt is accepted once per attempt, from the agent that held it. The same receipt again (a retried
/// request) is a no-op; a different one for an attempt already received is a conflict.
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
        return Err(EngineError::Conflict(TransitionError::Task { task, from: t.state, event: "receipt_received" }));
    }
    leased(tx, agent, task, attempt)?;
    append(tx, Event::ReceiptReceived { task, attempt, receipt, at: now })
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
fn leased(tx: &WriteTx<'_>, agent: AgentId, task: TaskId, attempt: u32) -> Result<Arc<Task>> {
    let t = find_task(tx, task)?;
    match &t.lease {
        Some(l) if l.agent == agent && l.attempt == attempt => Ok(t),
        _ if attempt != t.attempt && tx.read().ever_held(task, agent, attempt)? => {
            Err(EngineError::Conflict(TransitionError::StaleAttempt { task, current: t.attempt, given: attempt }))
        }
        _ => Err(EngineError::Forbidden(format!(
            "agent {agent} does not hold the lease of task {task} attempt {attempt}"
        ))),
    }
}

fn observe_issue(s: &EngineSettings, tx: &WriteTx<'_>, o: IssueObservation, now: Timestamp) -> Result<Option<TaskId>> {
    let labels = s.labels_for(&o.issue.repo);
    let reading = labels.read(&o.labels);
    let existing = tx.read().task_by_issue(&o.issue)?;
    let wants_work = o.open && reading.wants_work();
    // A finished task starts again only when a person changed its labels back to `todo`: the same labels
    // seen again (a replay, a poll racing our own label write) must not redo finished work.
    let queue_as = match &existing {
        None if wants_work => Some(tx.read().next_task_id()?),
        Some(t) if t.state.is_terminal() && wants_work && o.labels != t.labels => Some(t.id),
        _ => None,
    };
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
    // While active, the issue carries `todo` or (once we labelled it) `doing`. Neither, or a closed issue,
    // means a person called the work off.
    let called_off = !t.state.is_terminal()
        && !(o.open
            && (reading.statuses.contains(&StatusLabel::Todo) || reading.statuses.contains(&StatusLabel::Doing)));
    if called_off {
        let reason = if o.open {
            format!("the `{}` label was removed", labels.todo)
        } else {
            "the issue was closed".to_string()
        };
        tx.append(&Event::TaskCancelled { task: t.id, attempt: t.attempt, reason, at: now })?;
        return Ok(Some(t.id));
    }
    if changed {
        // Finished tasks record what people see too, so that a later relabel to `todo` is recognised.
        tx.append(&Event::TaskSpecChanged {
            task: t.id,
            title: o.title,
            body: o.body,
            labels: o.labels,
            spec: reading.spec,
            at: now,
        })?;
    }
    repair_status_label(tx, &t, &o.issue, &reading.statuses, now)?;
    Ok(Some(t.id))
}

/// The meta key prefix under which each repository's settings are kept.
pub const REPO_SETTINGS: &str = "repo.settings:";

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
            let Some(id) = tx.read().next_for(&a, running, now)? else {
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
    append(tx, Event::AttemptFailed { task: t.id, attempt: t.attempt, class, message, decision, at: now })
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
            Loss::Silent => format!("agent {agent} stopped sending heartbeats"),
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
        at: now,
    })?;
    Ok(())
}

fn tick(s: &EngineSettings, tx: &WriteTx<'_>, now: Timestamp) -> Result<TickReport> {
    let mut report = TickReport::default();
    for expired in tx.read().expired_leases(now)? {
        let t = find_task(tx, expired.task)?;
        if !expired.started && t.state == TaskState::Assigned {
            let message = format!(
                "agent {} did not start the task within {} s of taking it",
                expired.agent,
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
    let silence = s.heartbeat_interval * s.missed_heartbeats;
    for agent in tx.read().silent_agents(now - silence)? {
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
        issue_id: None,
    }
}
