//! The engine's decisions, told as short stories with a hand-moved clock.

use std::time::Duration;

use super::logic::observation;
use super::*;
use crate::core::*;

struct Fleet {
    engine: Engine,
    clock: ManualClock,
}

fn fleet() -> Fleet {
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let engine = Engine::new(Store::open_in_memory().unwrap(), EngineSettings::default(), clock.clone());
    Fleet { engine, clock }
}

impl Fleet {
    fn label(&mut self, issue: &str, labels: &[&str]) -> Option<TaskId> {
        match self.engine.execute(Command::ObserveIssue(observation(issue, labels))).unwrap() {
            Reply::Observed(t) => t,
            other => panic!("{other:?}"),
        }
    }
    fn close(&mut self, issue: &str) {
        let mut o = observation(issue, &["status:todo"]);
        o.open = false;
        self.engine.execute(Command::ObserveIssue(o)).unwrap();
    }
    fn register(&mut self, name: &str, caps: &[&str], slots: u32) -> AgentId {
        let r = Registration {
            name: AgentName::parse(name).unwrap(),
            adapter: "command".into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            max_concurrency: slots,
            version: "1".into(),
            token_hash: format!("hash-{name}"),
            presented_token_hash: Some(format!("hash-{name}")),
        };
        match self.engine.execute(Command::RegisterAgent(r)).unwrap() {
            Reply::Registered(id) => id,
            other => panic!("{other:?}"),
        }
    }
    fn pull(&mut self, agent: AgentId) -> Option<Assignment> {
        match self.engine.execute(Command::NextAssignment { agent, request_key: None }).unwrap() {
            Reply::Assignment(a) => a.map(|a| *a),
            other => panic!("{other:?}"),
        }
    }
    fn start(&mut self, agent: AgentId, a: &Assignment) {
        self.engine.execute(Command::StartTask { agent, task: a.task.id, attempt: a.lease.attempt }).unwrap();
    }
    fn heartbeat(&mut self, agent: AgentId, running: &[TaskId]) -> Vec<TaskId> {
        match self.engine.execute(Command::Heartbeat { agent, running: running.to_vec() }).unwrap() {
            Reply::Heartbeat { cancel } => cancel,
            other => panic!("{other:?}"),
        }
    }
    fn tick(&mut self) -> TickReport {
        match self.engine.execute(Command::Tick).unwrap() {
            Reply::Ticked(r) => r,
            other => panic!("{other:?}"),
        }
    }
    fn later(&mut self, d: Duration) {
        self.clock.advance(d);
    }
    fn task(&self, id: TaskId) -> Task {
        self.engine.store.read().task(id).unwrap().unwrap()
    }
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

#[test]
fn labelling_an_issue_todo_queues_a_task_with_its_spec() {
    let mut f = fleet();
    let id = f.label("acme/app#7", &["status:todo", "priority:high", "needs:rust"]).unwrap();
    let t = f.task(id);
    assert_eq!((t.state, t.attempt, t.spec.priority), (TaskState::Queued, 1, Priority::High));
    assert!(f.label("acme/app#8", &["type:bug"]).is_none(), "no status:todo, no task");
    assert_eq!(
        f.label("acme/app#7", &["status:todo", "priority:high", "needs:rust"]),
        Some(id),
        "a replay changes nothing"
    );
    assert_eq!(f.engine.store.read().task_events(id).unwrap().len(), 1);
}

#[test]
fn an_agent_pulls_starts_and_the_issue_gets_doing() {
    let mut f = fleet();
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    let a = f.pull(a1).unwrap();
    assert_eq!((a.task.id, a.lease.attempt, a.task.state), (task, 1, TaskState::Assigned));
    assert_eq!(a.lease.deadline, a.lease.assigned_at + mins(60));
    f.start(a1, &a);
    assert_eq!(f.task(task).state, TaskState::Running);
    let outbox = f.engine.store.read().outbox_due(Timestamp(i64::MAX), 10).unwrap();
    let kinds: Vec<&str> = outbox.iter().map(|o| o.kind.as_str()).collect();
    assert_eq!(kinds, ["set_status_label", "set_assignee", "comment"], "doing, the assignee, and 'started'");
    assert!(outbox[0].payload.contains("\"status\":\"doing\""), "{}", outbox[0].payload);
    assert!(f.pull(a1).is_none(), "one slot, already used");
}

#[test]
fn lost_agent_task_is_requeued_with_next_attempt_for_another_agent() {
    let mut f = fleet();
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    let a = f.pull(a1).unwrap();
    f.start(a1, &a);
    let a2 = f.register("a2", &[], 1);
    f.later(Duration::from_secs(31));
    f.heartbeat(a2, &[]);
    let report = f.tick();
    assert_eq!((report.offline.as_slice(), report.lost.as_slice()), ([a1].as_slice(), [task].as_slice()));
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 2));
    assert_eq!(t.last_failure.as_ref().unwrap().class, FailureClass::AgentLost);
    assert!(f.pull(a2).is_none(), "the backoff has not passed");
    f.later(mins(1));
    f.heartbeat(a2, &[]);
    let b = f.pull(a2).unwrap();
    assert_eq!((b.task.id, b.lease.attempt), (task, 2));
    // The first agent comes back and still thinks it has the task: it is told to stop, and cannot report.
    assert_eq!(f.heartbeat(a1, &[task]), [task]);
    let err = f.engine.execute(Command::StartTask { agent: a1, task, attempt: 1 }).unwrap_err();
    assert!(matches!(err, EngineError::Conflict(TransitionError::StaleAttempt { current: 2, given: 1, .. })), "{err}");
}

#[test]
fn an_assignment_not_started_in_time_goes_back_to_the_queue() {
    let mut f = fleet();
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    f.pull(a1).unwrap();
    f.later(Duration::from_secs(29));
    f.heartbeat(a1, &[]);
    assert!(f.tick().lost.is_empty());
    f.later(Duration::from_secs(2));
    f.heartbeat(a1, &[]);
    assert_eq!(f.tick().lost, [task]);
    assert_eq!(f.task(task).state, TaskState::Queued);
}

#[test]
fn a_task_past_its_deadline_times_out_and_the_policy_decides() {
    let mut f = fleet();
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    let a = f.pull(a1).unwrap();
    f.start(a1, &a);
    for _ in 0..6 {
        f.later(mins(10));
        f.heartbeat(a1, &[task]);
    }
    assert_eq!(f.tick().timed_out, [task]);
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 2), "timeout allows one retry by default");
    f.later(mins(5));
    f.heartbeat(a1, &[]);
    let b = f.pull(a1).unwrap();
    f.start(a1, &b);
    for _ in 0..6 {
        f.later(mins(10));
        f.heartbeat(a1, &[task]);
    }
    f.tick();
    assert_eq!(f.task(task).state, TaskState::Failed, "the timeout budget is spent");
    let outbox = f.engine.store.read().outbox_due(Timestamp(i64::MAX), 10).unwrap();
    assert!(outbox.last().unwrap().payload.contains("failed"));
}

#[test]
fn agent_errors_retry_until_their_budget_is_spent() {
    let mut f = fleet();
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    let mut attempts = Vec::new();
    loop {
        f.later(mins(120));
        f.heartbeat(a1, &[]);
        let Some(a) = f.pull(a1) else { break };
        attempts.push(a.lease.attempt);
        f.start(a1, &a);
        f.engine
            .execute(Command::FailTask {
                agent: a1,
                task,
                attempt: a.lease.attempt,
                class: FailureClass::AgentError,
                message: "exit status 1".into(),
                spent: None,
                pushed_branch: None,
            })
            .unwrap();
    }
    assert_eq!(attempts, [1, 2, 3], "two retries of agent_error by default");
    assert_eq!(f.task(task).state, TaskState::Failed);
    f.engine.execute(Command::RetryTask { task, by: "operator".into() }).unwrap();
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 4));
}

#[test]
fn only_the_leaseholder_may_report_and_cancelled_is_not_theirs_to_say() {
    let mut f = fleet();
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    let a2 = f.register("a2", &[], 1);
    let a = f.pull(a1).unwrap();
    let err = f.engine.execute(Command::StartTask { agent: a2, task, attempt: a.lease.attempt }).unwrap_err();
    assert!(matches!(err, EngineError::Forbidden(_)), "{err}");
    let err = f
        .engine
        .execute(Command::FailTask {
            agent: a1,
            task,
            attempt: 1,
            class: FailureClass::Cancelled,
            message: "".into(),
            spent: None,
            pushed_branch: None,
        })
        .unwrap_err();
    assert!(matches!(err, EngineError::Invalid(_)), "{err}");
    let err = f.engine.execute(Command::StartTask { agent: a1, task: TaskId(99), attempt: 1 }).unwrap_err();
    assert!(matches!(err, EngineError::NotFound(_)), "{err}");
    assert_eq!(f.task(task).state, TaskState::Assigned, "refusals change nothing");
}

#[test]
fn removing_todo_or_closing_cancels_and_the_agent_is_told_to_stop() {
    let mut f = fleet();
    let t1 = f.label("acme/app#1", &["status:todo"]).unwrap();
    let t2 = f.label("acme/app#2", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 2);
    let a = f.pull(a1).unwrap();
    f.start(a1, &a);
    // While running the issue carries status:doing (our own label): that is not a cancellation.
    f.label("acme/app#1", &["status:doing"]);
    assert_eq!(f.task(t1).state, TaskState::Running);
    f.label("acme/app#1", &["type:bug"]);
    assert_eq!(f.task(t1).state, TaskState::Cancelled);
    assert_eq!(f.heartbeat(a1, &[t1]), [t1]);
    f.close("acme/app#2");
    assert_eq!(f.task(t2).state, TaskState::Cancelled);
    let events = f.engine.store.read().task_events(t2).unwrap();
    assert!(matches!(&events.last().unwrap().1, Event::TaskCancelled { reason, .. } if reason.contains("closed")));
}

#[test]
fn a_finished_task_is_queued_again_only_when_a_person_relabels_it() {
    let mut f = fleet();
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    f.engine.execute(Command::CancelTask { task, reason: "test".into() }).unwrap();
    f.label("acme/app#1", &["status:todo"]);
    assert_eq!(f.task(task).state, TaskState::Cancelled, "the same labels again are an echo, not a request");
    f.label("acme/app#1", &["status:failed"]);
    f.label("acme/app#1", &["status:todo", "priority:low"]);
    let t = f.task(task);
    assert_eq!((t.state, t.attempt, t.spec.priority), (TaskState::Queued, 2, Priority::Low));
}

#[test]
fn routing_respects_capabilities_pins_and_slots() {
    let mut f = fleet();
    let gpu = f.label("acme/app#1", &["status:todo", "needs:gpu"]).unwrap();
    let pinned = f.label("acme/app#2", &["status:todo", "agent:b"]).unwrap();
    let any = f.label("acme/app#3", &["status:todo"]).unwrap();
    let a = f.register("a", &[], 1);
    let b = f.register("b", &["gpu"], 2);
    assert_eq!(f.pull(a).unwrap().task.id, any);
    assert!(f.pull(a).is_none());
    assert_eq!(f.pull(b).unwrap().task.id, gpu);
    assert_eq!(f.pull(b).unwrap().task.id, pinned);
    assert!(f.pull(b).is_none());
}

#[test]
fn draining_agents_get_no_new_work_and_deregistering_requeues_at_once() {
    let mut f = fleet();
    let t1 = f.label("acme/app#1", &["status:todo"]).unwrap();
    f.label("acme/app#2", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 2);
    let a = f.pull(a1).unwrap();
    f.start(a1, &a);
    f.engine.execute(Command::DrainAgent { agent: a1 }).unwrap();
    assert!(f.pull(a1).is_none());
    f.engine.execute(Command::DeregisterAgent { agent: a1 }).unwrap();
    let t = f.task(t1);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 2));
    let a2 = f.register("a2", &[], 2);
    assert_eq!(f.pull(a2).unwrap().task.id, t1, "no backoff after a deregistration");
}

#[test]
fn an_agent_that_registers_again_has_restarted_and_its_tasks_go_back_at_once() {
    let mut f = fleet();
    let t1 = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    let a = f.pull(a1).unwrap();
    f.start(a1, &a);
    // The runner was killed and started again: same name, new token.
    let again = f.register("a1", &[], 1);
    assert_eq!(again, a1, "the same agent");
    let t = f.task(t1);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 2));
    let failure = t.last_failure.unwrap();
    assert_eq!(failure.class, FailureClass::AgentLost);
    assert!(failure.message.contains("registered again"), "{}", failure.message);
    assert_eq!(f.pull(a1).unwrap().task.id, t1, "no backoff: the agent said its old process is gone");
}

#[test]
fn a_batch_commits_good_commands_and_refuses_bad_ones_alone() {
    let mut f = fleet();
    let replies = f.engine.execute_batch(vec![
        Command::ObserveIssue(observation("acme/app#1", &["status:todo"])),
        Command::CancelTask { task: TaskId(42), reason: "x".into() },
        Command::ObserveIssue(observation("acme/app#2", &["status:todo"])),
    ]);
    assert!(replies[0].is_ok() && replies[2].is_ok());
    assert!(matches!(replies[1], Err(EngineError::NotFound(_))));
    assert_eq!(f.engine.store.read().event_count().unwrap(), 2);
}

#[test]
fn re_registering_keeps_the_agent_id() {
    let mut f = fleet();
    let a = f.register("a1", &[], 1);
    assert_eq!(f.register("a1", &["x"], 3), a);
    assert_ne!(f.register("a2", &[], 1), a);
}

#[test]
fn a_receipt_moves_to_validating_and_the_verdict_completes_or_retries() {
    let mut f = fleet();
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    let a = f.pull(a1).unwrap();
    f.start(a1, &a);
    let receipt = Receipt {
        pr_number: 3,
        head_sha: CommitSha::parse(&"b".repeat(40)).unwrap(),
        summary: "fixed".into(),
        usage: Usage::default(),
        cost_usd: Some(0.12),
        duration_secs: Some(30),
        session_id: None,
        artifacts: vec![],
    };
    let submit = |attempt| Command::SubmitReceipt { agent: a1, task, attempt, receipt: receipt.clone() };
    f.engine.execute(submit(1)).unwrap();
    assert_eq!(f.task(task).state, TaskState::Validating);
    let check = |name: &str, passed: bool| Check { name: name.into(), passed, detail: "seen".into() };
    let failed =
        Validation { checks: vec![check("pull_request_exists", true), check("refers_to_issue", false)], files: vec![] };
    f.engine.execute(Command::FinishValidation { task, attempt: 1, validation: failed }).unwrap();
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 2));
    let failure = t.last_failure.unwrap();
    assert_eq!(failure.class, FailureClass::VerificationFailed);
    assert!(failure.message.contains("refers_to_issue: seen"), "{}", failure.message);
    f.later(mins(2));
    f.heartbeat(a1, &[]);
    let b = f.pull(a1).unwrap();
    f.start(a1, &b);
    f.engine.execute(submit(2)).unwrap();
    let passed = Validation { checks: vec![check("refers_to_issue", true)], files: vec![] };
    f.engine.execute(Command::FinishValidation { task, attempt: 2, validation: passed }).unwrap();
    assert_eq!(f.task(task).state, TaskState::Completed);
    assert_eq!(f.engine.store.read().running_count(a1).unwrap(), 0, "the lease ends with the task");
}

#[test]
fn a_task_waiting_for_ci_fails_with_checks_failed_at_its_deadline_and_a_stale_verdict_changes_nothing() {
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let settings = EngineSettings {
        require_checks: ChecksSetting::Flag(true),
        checks_timeout: mins(30),
        ..EngineSettings::default()
    };
    let mut f = Fleet { engine: Engine::new(Store::open_in_memory().unwrap(), settings, clock.clone()), clock };
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    let a = f.pull(a1).unwrap();
    f.start(a1, &a);
    let head = "c".repeat(40);
    let receipt = Receipt {
        pr_number: 3,
        head_sha: CommitSha::parse(&head).unwrap(),
        summary: String::new(),
        usage: Usage::default(),
        cost_usd: None,
        duration_secs: None,
        session_id: None,
        artifacts: vec![],
    };
    f.engine.execute(Command::SubmitReceipt { agent: a1, task, attempt: 1, receipt }).unwrap();
    let passed = Validation {
        checks: vec![Check { name: "head_matches".into(), passed: true, detail: "ok".into() }],
        files: vec![],
    };
    f.engine.execute(Command::FinishValidation { task, attempt: 1, validation: passed }).unwrap();
    let t = f.task(task);
    assert_eq!(t.state, TaskState::Validating);
    assert_eq!(t.checks.as_ref().map(|c| c.required.clone()), Some(RequiredChecks::All));
    assert_eq!(f.engine.store.read().running_count(a1).unwrap(), 0, "waiting for CI holds no slot");
    assert!(f.heartbeat(a1, &[]).is_empty());
    // A verdict on another head (the branch moved since) or still pending changes nothing.
    let failed = ChecksVerdict::Failed {
        failing: vec![CommitStatus {
            context: "ci".into(),
            state: "failure".into(),
            description: String::new(),
            target_url: String::new(),
        }],
    };
    let other = Command::FinishChecks { task, attempt: 1, head_sha: "d".repeat(40), verdict: failed.clone() };
    assert!(f.engine.execute(other).is_err());
    let pending = Command::FinishChecks {
        task,
        attempt: 1,
        head_sha: head.clone(),
        verdict: ChecksVerdict::Pending { waiting_for: vec![] },
    };
    f.engine.execute(pending).unwrap();
    assert_eq!(f.task(task).state, TaskState::Validating);
    // Past the deadline with nothing decided: `checks_failed`, and the retry continues the branch.
    f.later(mins(29));
    f.tick();
    assert_eq!(f.task(task).state, TaskState::Validating);
    f.later(mins(2));
    f.tick();
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 2));
    let failure = t.last_failure.unwrap();
    assert_eq!(failure.class, FailureClass::ChecksFailed);
    assert!(failure.message.contains("did not finish within 30 min"), "{}", failure.message);
    assert_eq!(t.pushed_branch.as_deref(), Some("forgefleet/issue-1-attempt-1"));
    // The verdict arriving late is about an attempt that is over.
    let late = Command::FinishChecks { task, attempt: 1, head_sha: head, verdict: failed };
    assert!(f.engine.execute(late).is_err());
    // An agent cannot claim CI failed: that is forgefleet's to read.
    f.later(mins(2));
    f.heartbeat(a1, &[]);
    let b = f.pull(a1).unwrap();
    f.start(a1, &b);
    let claim = Command::FailTask {
        agent: a1,
        task,
        attempt: 2,
        class: FailureClass::ChecksFailed,
        message: "ci".into(),
        spent: None,
        pushed_branch: None,
    };
    assert!(matches!(f.engine.execute(claim), Err(EngineError::Invalid(_))));
}

#[test]
fn a_command_refused_after_it_wrote_is_undone_alone() {
    let mut f = fleet();
    let replies = f.engine.execute_batch(vec![
        Command::ObserveIssue(observation("acme/app#1", &["status:todo"])),
        // Records its key, then fails: the key must not stay recorded, or a retry would be taken for a replay.
        Command::FromWebhook {
            key: "k".into(),
            inner: Box::new(Command::CancelTask { task: TaskId(42), reason: "x".into() }),
        },
        Command::ObserveIssue(observation("acme/app#2", &["status:todo"])),
    ]);
    assert!(replies[0].is_ok() && replies[2].is_ok(), "{replies:?}");
    assert!(matches!(replies[1], Err(EngineError::NotFound(_))));
    assert_eq!(f.engine.store.read().event_count().unwrap(), 2);
    let again = Command::FromWebhook { key: "k".into(), inner: Box::new(Command::Tick) };
    assert!(matches!(f.engine.execute(again), Ok(Reply::Ticked(_))), "the key was rolled back with its command");
}

#[test]
fn seen_webhooks_are_forgotten_after_the_horizon_and_not_before() {
    let mut f = fleet();
    let delivery = || Command::FromWebhook {
        key: "issue:acme/app#1:opened".into(),
        inner: Box::new(Command::ObserveIssue(observation("acme/app#1", &["status:todo"]))),
    };
    assert!(matches!(f.engine.execute(delivery()), Ok(Reply::Observed(_))));
    f.later(Duration::from_secs(29 * 24 * 3600));
    f.tick();
    assert!(matches!(f.engine.execute(delivery()), Ok(Reply::Duplicate)), "within the horizon: a replay");
    f.later(Duration::from_secs(2 * 24 * 3600));
    f.tick();
    assert!(
        matches!(f.engine.execute(delivery()), Ok(Reply::Observed(_))),
        "past the horizon the key is gone: the table does not grow for ever"
    );
}

#[test]
fn a_webhook_view_queues_and_cancels_only_once_confirmed_and_an_older_view_changes_nothing() {
    let mut f = fleet();
    let seen = |labels: &[&str], at: i64, fresh: bool| {
        let mut o = observation("acme/app#1", labels);
        (o.updated_at, o.fresh) = (Some(Timestamp(at)), fresh);
        Command::ObserveIssue(o)
    };
    let confirms = |f: &Fleet| {
        let rows = f.engine.store.read().outbox_due(Timestamp(i64::MAX), 100).unwrap();
        rows.iter().filter(|r| r.kind == "confirm_issue").count()
    };
    f.engine.execute(seen(&["status:todo"], 2_000, false)).unwrap();
    assert!(f.engine.store.read().task_by_issue(&"acme/app#1".parse().unwrap()).unwrap().is_none());
    assert_eq!(confirms(&f), 1, "the issue is read back before a task exists");
    f.engine.execute(seen(&["status:todo"], 2_000, true)).unwrap();
    let task = f.engine.store.read().task_by_issue(&"acme/app#1".parse().unwrap()).unwrap().unwrap().id;
    // Same time, no label: only a confirmation.
    f.engine.execute(seen(&[], 2_000, false)).unwrap();
    assert_eq!((f.task(task).state, confirms(&f)), (TaskState::Queued, 2));
    // Older, even read from the API: ignored.
    f.engine.execute(seen(&[], 1_000, true)).unwrap();
    assert_eq!(f.task(task).state, TaskState::Queued);
    // The issue deleted: the task is cancelled, and nothing is written on an issue that is gone.
    f.engine.execute(Command::IssueGone { issue: "acme/app#1".parse().unwrap() }).unwrap();
    assert_eq!(f.task(task).state, TaskState::Cancelled);
    let rows = f.engine.store.read().outbox_due(Timestamp(i64::MAX), 100).unwrap();
    assert!(rows.iter().all(|r| r.kind == "confirm_issue"), "{rows:?}");
}

/// A person's command is decided in one round trip: found, checked against the task as it is, applied; the
/// same key again changes nothing; what does not apply says why and changes nothing.
#[test]
fn a_persons_command_runs_once_and_what_does_not_apply_changes_nothing() {
    use crate::core::commands::FleetCommand;
    let mut f = fleet();
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let issue: IssueRef = "acme/app#1".parse().unwrap();
    fn run(f: &mut Fleet, key: &str, command: FleetCommand, issue: Option<IssueRef>) -> CommandOutcome {
        match f.engine.execute(Command::RunCommand { key: key.into(), command, issue, by: "@alice".into() }).unwrap() {
            Reply::Ran(outcome) => outcome,
            other => panic!("{other:?}"),
        }
    }
    let retry = FleetCommand::Retry { issue: None };
    match run(&mut f, "k1", retry.clone(), Some(issue.clone())) {
        CommandOutcome::NotApplicable(why) => assert!(why.contains("task 1 is queued"), "{why}"),
        other => panic!("{other:?}"),
    }
    let cancel = FleetCommand::Cancel { issue: None };
    assert_eq!(run(&mut f, "k2", cancel.clone(), Some(issue.clone())), CommandOutcome::Applied);
    assert_eq!(run(&mut f, "k2", cancel, Some(issue.clone())), CommandOutcome::AlreadyRan);
    assert_eq!(run(&mut f, "k3", retry.clone(), Some(issue.clone())), CommandOutcome::Applied);
    let other: IssueRef = "acme/app#9".parse().unwrap();
    assert_eq!(run(&mut f, "k4", retry, Some(other.clone())), CommandOutcome::NoTask(other));
    let ghost = AgentName::parse("ghost").unwrap();
    let assign = FleetCommand::Assign { agent: ghost.clone(), issue: None };
    assert_eq!(run(&mut f, "k5", assign, Some(issue.clone())), CommandOutcome::UnknownAgent(ghost));
    let drain = FleetCommand::Drain { agent: AgentName::parse("a1").unwrap() };
    assert!(matches!(run(&mut f, "k6", drain.clone(), None), CommandOutcome::UnknownAgent(_)));
    let a1 = f.register("a1", &[], 1);
    assert_eq!(run(&mut f, "k7", drain.clone(), None), CommandOutcome::Applied);
    assert!(
        matches!(run(&mut f, "k8", drain, None), CommandOutcome::NotApplicable(w) if w.contains("already draining"))
    );
    assert_eq!(f.engine.store.read().agent(a1).unwrap().unwrap().state, AgentState::Draining);
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 2), "cancelled once, retried once");
}

/// 10,000 progress lines from one agent in a minute reach the chat room as a bounded number of batches, each
/// bounded, and every line is either in a batch or counted as skipped.
#[test]
fn a_chatty_agents_progress_reaches_the_chat_in_bounded_batches() {
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let mut store = Store::open_in_memory().unwrap();
    store.set_chat(Some(["progress".to_string()].into()));
    let settings = EngineSettings {
        chat_progress: Some(crate::core::logbatch::LogBatcher::new(Duration::from_secs(5), 20)),
        ..EngineSettings::default()
    };
    let mut f = Fleet { engine: Engine::new(store, settings, clock.clone()), clock };
    f.label("acme/app#1", &["status:todo"]).unwrap();
    let agent = f.register("a1", &[], 1);
    let a = f.pull(agent).unwrap();
    f.start(agent, &a);
    for i in 0..1_000u64 {
        let lines = (0..10).map(|j| format!("line {}", i * 10 + j)).collect();
        f.engine.execute(Command::Progress { agent, task: a.task.id, attempt: a.lease.attempt, lines }).unwrap();
        f.later(Duration::from_millis(60));
        if i % 50 == 0 {
            f.heartbeat(agent, &[a.task.id]);
            f.tick();
        }
    }
    f.later(Duration::from_secs(10));
    f.tick();
    let rows: Vec<String> = f
        .engine
        .store
        .connection()
        .prepare("SELECT payload FROM outbox WHERE kind = 'chat_progress'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!((2..=14).contains(&rows.len()), "{} batches", rows.len());
    let mut total = 0;
    for row in &rows {
        let Effect::ChatProgress { lines, skipped, .. } = Effect::from_json(row).unwrap() else { panic!("{row}") };
        assert!(lines.len() <= 20);
        total += lines.len() as u64 + skipped;
    }
    assert_eq!(total, 10_000);
}

#[test]
fn a_replayed_matrix_sync_records_each_message_once_and_keeps_the_newest_token() {
    let mut f = fleet();
    let msg = |id: &str, body: &str| crate::store::InboxMessage {
        event_id: id.into(),
        room: "!room".into(),
        sender: "@alice:x".into(),
        body: body.into(),
        origin_server_ts: 1,
    };
    let sync = |token: &str, msgs: Vec<crate::store::InboxMessage>| Command::MatrixSynced {
        next_batch: token.into(),
        messages: msgs,
    };
    let first = f.engine.execute(sync("s1", vec![msg("$a", "/fleet status"), msg("$b", "hi")])).unwrap();
    assert_eq!(first, Reply::MatrixRecorded(2));
    // The same sync again (a crash after the commit, before the bot knew) and one that overlaps it.
    assert_eq!(f.engine.execute(sync("s1", vec![msg("$a", "/fleet status")])).unwrap(), Reply::MatrixRecorded(0));
    assert_eq!(f.engine.execute(sync("s2", vec![msg("$b", "hi"), msg("$c", "x")])).unwrap(), Reply::MatrixRecorded(1));
    let read = f.engine.store.read();
    let inbox = read.matrix_inbox(10).unwrap();
    let ids: Vec<&str> = inbox.iter().map(|r| r.message.event_id.as_str()).collect();
    assert_eq!(ids, ["$a", "$b", "$c"]);
    assert!(inbox.iter().all(|r| r.handled_at.is_some()), "each was taken by the command path");
    let queued: i64 = f
        .engine
        .store
        .connection()
        .query_row("SELECT count(*) FROM outbox WHERE kind = 'run_commands'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 1, "only `/fleet status` is a command, queued once");
    assert_eq!(read.matrix_next_batch().unwrap().as_deref(), Some("s2"));
}

/// A task blocked on a question that `a1` asked in session `s-1`, then answered: queued again to go on from
/// a1's work.
fn answered_after_a1_asked(f: &mut Fleet) -> (TaskId, AgentId, AgentId) {
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    let a = f.pull(a1).unwrap();
    f.start(a1, &a);
    let a2 = f.register("a2", &[], 1);
    let block = Command::BlockTask {
        agent: a1,
        task,
        attempt: 1,
        question: "v1 or v2?".into(),
        session_id: Some("s-1".into()),
    };
    f.engine.execute(block).unwrap();
    let answer = Command::RunCommand {
        key: "answer-1".into(),
        command: crate::core::commands::FleetCommand::Answer { issue: None, text: "v2".into() },
        issue: Some("acme/app#1".parse().unwrap()),
        by: "@alice".into(),
    };
    f.engine.execute(answer).unwrap();
    assert_eq!(f.task(task).state, TaskState::Queued);
    (task, a1, a2)
}

#[test]
fn work_that_goes_on_from_an_agents_session_waits_for_that_agent_until_the_window_ends() {
    let mut f = fleet();
    let (task, a1, a2) = answered_after_a1_asked(&mut f);
    let session = f.task(task).last_session.unwrap();
    assert_eq!((session.agent, session.attempt, session.session_id.as_deref()), (a1, 1, Some("s-1")));
    assert!(f.pull(a2).is_none(), "kept for a1, which asked the question");
    f.later(Duration::from_secs(119));
    assert!(f.pull(a2).is_none(), "still within the 120 s");
    f.later(Duration::from_secs(1));
    let a = f.pull(a2).expect("the window ended: anyone may take it");
    assert_eq!((a.task.id, a.lease.attempt, a.lease.agent), (task, 2, a2));
    assert_eq!(f.task(task).last_session.map(|s| s.requeued_at), Some(None), "no window once assigned");
}

#[test]
fn the_agent_that_ran_the_earlier_attempt_takes_it_at_once_and_another_does_when_it_drains() {
    let mut f = fleet();
    let (task, a1, _) = answered_after_a1_asked(&mut f);
    assert_eq!(f.pull(a1).map(|a| (a.task.id, a.lease.attempt)), Some((task, 2)), "its own agent");

    let mut f = fleet();
    let (task, a1, a2) = answered_after_a1_asked(&mut f);
    f.engine.execute(Command::DrainAgent { agent: a1 }).unwrap();
    assert_eq!(f.pull(a2).map(|a| a.task.id), Some(task), "a draining agent takes no new work: not kept for it");
}

/// A task completed with a verified receipt for pull request #3 at head `b…b`, by agent `a1`.
fn completed_with_pull(f: &mut Fleet) -> (TaskId, AgentId) {
    let task = f.label("acme/app#1", &["status:todo"]).unwrap();
    let a1 = f.register("a1", &[], 1);
    hand_in_verified(f, a1, task, 'b');
    assert_eq!(f.task(task).state, TaskState::Completed);
    (task, a1)
}

/// `agent` takes the task's next attempt and hands in a receipt for pull request #3 at head `head…head`, which
/// checks out (the task completes, or waits for CI where that is required).
fn hand_in_verified(f: &mut Fleet, agent: AgentId, task: TaskId, head: char) {
    let a = f.pull(agent).unwrap();
    f.start(agent, &a);
    let attempt = a.lease.attempt;
    let receipt = Receipt {
        pr_number: 3,
        head_sha: CommitSha::parse(&head.to_string().repeat(40)).unwrap(),
        summary: "fixed".into(),
        usage: Usage::default(),
        cost_usd: None,
        duration_secs: None,
        session_id: None,
        artifacts: vec![],
    };
    f.engine.execute(Command::SubmitReceipt { agent, task, attempt, receipt }).unwrap();
    let validation = Validation {
        checks: vec![Check { name: "refers_to_issue".into(), passed: true, detail: "seen".into() }],
        files: vec![],
    };
    f.engine.execute(Command::FinishValidation { task, attempt, validation }).unwrap();
}

fn conflict_at(head: char) -> Command {
    Command::ObserveConflict {
        repo: "acme/app".parse().unwrap(),
        number: 3,
        head_sha: head.to_string().repeat(40),
        base_branch: "main".into(),
        base_sha: "c".repeat(40),
    }
}

/// The conflict notices waiting in the outbox for the issue; each must have its chat message beside it.
fn conflict_comments(f: &Fleet) -> Vec<Notice> {
    let rows = f.engine.store.read().outbox_due(Timestamp(i64::MAX), 1000).unwrap();
    let effects: Vec<Effect> = rows.iter().map(|r| Effect::from_json(&r.payload).unwrap()).collect();
    let notices = |chat: bool| -> Vec<Notice> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Comment { notice: n @ Notice::Conflicted { .. }, .. } if !chat => Some(n.clone()),
                Effect::ChatTask { notice: n @ Notice::Conflicted { .. }, .. } if chat => Some(n.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(notices(false), notices(true), "the room is told what the issue is");
    notices(false)
}

fn fleet_with_chat() -> Fleet {
    let mut f = fleet();
    f.engine.store.set_chat(Some(CHAT_KINDS.iter().map(|k| k.to_string()).collect()));
    f
}

#[test]
fn a_conflicted_pull_request_is_told_once_per_head_without_auto_rebase() {
    let mut f = fleet_with_chat();
    let (task, _) = completed_with_pull(&mut f);
    assert_eq!(f.engine.execute(conflict_at('b')).unwrap(), Reply::Done);
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Completed, 1), "told only: the task stays completed");
    assert_eq!(t.conflict.as_ref().map(|c| c.then), Some(OnConflict::Tell));
    assert_eq!(conflict_comments(&f).len(), 1);
    // The same head again (the next pass, or the base moved on): decided already.
    let events = f.engine.store.read().event_count().unwrap();
    assert_eq!(f.engine.execute(conflict_at('b')).unwrap(), Reply::Duplicate);
    assert_eq!((f.engine.store.read().event_count().unwrap(), conflict_comments(&f).len()), (events, 1));
    // A later head (a person pushed) that conflicts again is told again.
    f.engine.execute(conflict_at('d')).unwrap();
    assert_eq!(conflict_comments(&f).len(), 2);
    // A pull request no completed task names changes nothing.
    let mut other = conflict_at('e');
    if let Command::ObserveConflict { number, .. } = &mut other {
        *number = 4;
    }
    let events = f.engine.store.read().event_count().unwrap();
    assert_eq!(f.engine.execute(other).unwrap(), Reply::Done);
    assert_eq!(f.engine.store.read().event_count().unwrap(), events);
}

#[test]
fn with_auto_rebase_a_conflict_queues_one_merging_round_until_the_rounds_are_spent() {
    let mut f = fleet_with_chat();
    f.engine.settings.auto_rebase = true;
    f.engine.settings.review_rounds = 1;
    let (task, a1) = completed_with_pull(&mut f);
    f.engine.execute(conflict_at('b')).unwrap();
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 2), "a round of changes");
    let round = t.follow_up.clone().unwrap();
    assert_eq!((round.round, round.by.as_str(), round.pr_number), (1, "forgefleet", 3));
    assert_eq!(round.verified_head, "b".repeat(40), "it builds on the verified head");
    assert!(round.instruction.contains("git merge origin/main") && round.instruction.contains("Do not rebase"));
    assert_eq!(t.conflict.as_ref().map(|c| c.then), Some(OnConflict::Merge { round: 1 }));
    // While the round runs, the pull request is not a completed task's: nothing more is decided.
    assert_eq!(f.engine.execute(conflict_at('b')).unwrap(), Reply::Done);
    assert_eq!(f.task(task).attempt, 2);

    // The round completes at a new head; it conflicts again, but the one round is spent: people are told.
    f.later(mins(3));
    hand_in_verified(&mut f, a1, task, 'd');
    f.engine.execute(conflict_at('d')).unwrap();
    let t = f.task(task);
    assert_eq!((t.state, t.attempt), (TaskState::Completed, 2));
    assert_eq!(t.conflict.as_ref().map(|c| c.then), Some(OnConflict::RoundsSpent { rounds: 1 }));
    let notices = conflict_comments(&f);
    assert_eq!(notices.len(), 2, "{notices:?}");
}

#[test]
fn a_conflict_with_a_head_or_base_that_is_not_plain_is_refused_and_changes_nothing() {
    let mut f = fleet();
    let (task, _) = completed_with_pull(&mut f);
    let events = f.engine.store.read().event_count().unwrap();
    let with = |head: &str, base: &str| Command::ObserveConflict {
        repo: "acme/app".parse().unwrap(),
        number: 3,
        head_sha: head.into(),
        base_branch: base.into(),
        base_sha: "c".repeat(40),
    };
    for bad in [with("not-a-sha", "main"), with(&"d".repeat(40), "main`; rm -rf"), with(&"d".repeat(40), "")] {
        let err = f.engine.execute(bad).unwrap_err();
        assert!(matches!(err, EngineError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("nothing was recorded"), "{err}");
    }
    assert_eq!(f.engine.store.read().event_count().unwrap(), events);
    assert!(f.task(task).conflict.is_none());
    assert!(f.engine.execute(with(&"D".repeat(40), "release/2.x")).is_ok(), "a plain name and any-case hex do");
}

#[test]
fn a_pull_request_merged_or_closed_while_its_ci_runs_ends_the_wait_as_for_a_completed_task() {
    use OnPullClosed::*;
    for (merged, on_closed, state, attempt) in [
        (true, Fail, TaskState::Completed, 1),
        (false, Nothing, TaskState::Completed, 1),
        (false, Fail, TaskState::Failed, 1),
        (false, Requeue, TaskState::Queued, 2),
    ] {
        let mut f = fleet();
        f.engine.settings.require_checks = ChecksSetting::Flag(true);
        f.engine.settings.on_pr_closed = on_closed;
        let task = f.label("acme/app#1", &["status:todo"]).unwrap();
        let a1 = f.register("a1", &[], 1);
        hand_in_verified(&mut f, a1, task, 'b');
        assert!(f.task(task).checks.is_some(), "it waits for CI");
        let observe = Command::ObservePull {
            repo: "acme/app".parse().unwrap(),
            number: 3,
            closed: true,
            merged,
            by: Some("alice".into()),
        };
        f.engine.execute(observe.clone()).unwrap();
        let t = f.task(task);
        assert_eq!((t.state, t.attempt), (state, attempt), "merged {merged}, {on_closed}");
        assert!(t.checks.is_none(), "CI is no longer waited for");
        if on_closed != Requeue {
            assert_eq!(t.pull_end.map(|e| e.merged), Some(merged));
        }
        let events = f.engine.store.read().event_count().unwrap();
        f.engine.execute(observe).unwrap();
        assert_eq!(f.engine.store.read().event_count().unwrap(), events, "recorded once");
    }
}

#[path = "review_tests.rs"]
mod reviews;
