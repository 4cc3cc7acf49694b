use super::*;
use crate::core::ids::{CommitSha, RepoName};
use crate::core::labels::Priority;
use crate::core::receipt::{Usage, Validation};

const T: TaskId = TaskId(7);
const A: AgentId = AgentId(3);

fn at(ms: i64) -> Timestamp {
    Timestamp(ms)
}

fn queued_event(ms: i64) -> Event {
    Event::TaskQueued {
        task: T,
        issue: IssueRef { repo: RepoName::parse("acme/app").unwrap(), number: 12 },
        title: "Fix it".into(),
        body: "".into(),
        labels: vec!["status:todo".into()],
        spec: TaskSpec { priority: Priority::High, ..TaskSpec::default() },
        at: at(ms),
        issue_id: Some(4012),
    }
}

fn receipt() -> Receipt {
    Receipt {
        pr_number: 5,
        head_sha: CommitSha::parse(&"a".repeat(40)).unwrap(),
        summary: "done".into(),
        usage: Usage::default(),
        cost_usd: None,
        duration_secs: None,
        session_id: None,
        artifacts: vec![],
    }
}

/// One event of each kind, for the task's current attempt.
fn awaited() -> crate::core::AwaitedChecks {
    crate::core::AwaitedChecks {
        pr_number: 3,
        head_sha: "a".repeat(40),
        required: crate::core::RequiredChecks::All,
        since: at(100),
        deadline: at(1900),
    }
}

fn event_of_kind(kind: &str, attempt: u32) -> Event {
    let t = T;
    match kind {
        "task_queued" => queued_event(100),
        "task_spec_changed" => Event::TaskSpecChanged {
            task: t,
            title: "New title".into(),
            body: "b".into(),
            labels: vec![],
            spec: TaskSpec::default(),
            at: at(100),
        },
        "task_assigned" => Event::TaskAssigned {
            task: t,
            attempt,
            agent: A,
            at: at(100),
            start_by: at(130),
            deadline: at(3700),
            request_key: None,
        },
        "task_started" => Event::TaskStarted { task: t, attempt, at: at(100) },
        "receipt_received" => Event::ReceiptReceived { task: t, attempt, receipt: receipt(), at: at(100) },
        "task_completed" => Event::TaskCompleted { task: t, attempt, at: at(100) },
        "receipt_checked" => Event::ReceiptChecked { task: t, attempt, validation: Validation::default(), at: at(100) },
        "task_lost" => Event::TaskLost { task: t, attempt, agent: A, at: at(100) },
        "attempt_failed" => Event::AttemptFailed {
            task: t,
            attempt,
            class: FailureClass::AgentError,
            message: "exit 1".into(),
            decision: RetryDecision::Retry { not_before: at(500), retries_left: 1 },
            spent: None,
            pushed_branch: None,
            at: at(100),
        },
        "task_cancelled" => Event::TaskCancelled {
            task: t,
            attempt,
            reason: "label removed".into(),
            by: Default::default(),
            at: at(100),
        },
        "task_retried" => Event::TaskRetried { task: t, by: "alice".into(), at: at(100) },
        "checks_awaited" => Event::ChecksAwaited { task: t, attempt, checks: awaited(), at: at(100) },
        "follow_up_requested" => Event::FollowUpRequested {
            task: t,
            follow_up: crate::core::FollowUp {
                round: 1,
                pr_number: 3,
                branch: "fleet/issue-7-attempt-1".into(),
                verified_head: "a".repeat(40),
                by: "alice".into(),
                instruction: "rename".into(),
                notes: vec![],
                review_id: None,
            },
            at: at(100),
        },
        "pull_ended" => Event::PullEnded {
            task: t,
            attempt,
            end: crate::core::PullEnd { pr_number: 3, merged: true, by: Some("alice".into()), at: at(100) },
            then: crate::core::OnPullClosed::Nothing,
            at: at(100),
        },
        "pull_conflicted" => Event::PullConflicted {
            task: t,
            attempt,
            conflict: crate::core::PullConflict {
                pr_number: 3,
                head_sha: "b".repeat(40),
                base_branch: "main".into(),
                base_sha: "c".repeat(40),
                then: crate::core::OnConflict::Tell,
            },
            follow_up: None,
            at: at(100),
        },
        "task_blocked" => {
            Event::TaskBlocked { task: t, attempt, question: "v1 or v2 API?".into(), session_id: None, at: at(100) }
        }
        "task_answered" => {
            Event::TaskAnswered { task: t, answer: "use the v2 API".into(), by: "@alice".into(), at: at(100) }
        }
        other => panic!("no such kind {other}"),
    }
}

const KINDS: [&str; 17] = [
    "follow_up_requested",
    "pull_conflicted",
    "receipt_checked",
    "checks_awaited",
    "pull_ended",
    "task_queued",
    "task_spec_changed",
    "task_assigned",
    "task_started",
    "receipt_received",
    "task_completed",
    "task_lost",
    "attempt_failed",
    "task_cancelled",
    "task_retried",
    "task_blocked",
    "task_answered",
];

/// A task brought into `state` by legal events.
fn task_in(state: TaskState) -> Task {
    let mut t = Task::queued(&queued_event(0)).unwrap();
    let path: &[&str] = match state {
        TaskState::Queued => &[],
        TaskState::Assigned => &["task_assigned"],
        TaskState::Running => &["task_assigned", "task_started"],
        TaskState::Validating => &["task_assigned", "task_started", "receipt_received"],
        TaskState::Completed => &["task_assigned", "task_started", "receipt_received", "task_completed"],
        TaskState::AgentLost => &["task_assigned", "task_lost"],
        TaskState::Cancelled => &["task_cancelled"],
        TaskState::Failed => &["task_assigned"],
        TaskState::Blocked => &["task_assigned", "task_started", "task_blocked"],
    };
    for kind in path {
        t.apply(&event_of_kind(kind, t.attempt)).unwrap();
    }
    if state == TaskState::Failed {
        t.apply(&Event::AttemptFailed {
            task: T,
            attempt: 1,
            class: FailureClass::Timeout,
            message: "too slow".into(),
            decision: RetryDecision::GiveUp,
            spent: None,
            pushed_branch: None,
            at: at(50),
        })
        .unwrap();
    }
    assert_eq!(t.state, state);
    t
}

fn legal_from(kind: &str) -> &'static [TaskState] {
    use TaskState::*;
    match kind {
        "task_queued" => &[Completed, Failed, Cancelled],
        "task_spec_changed" => &TaskState::ALL,
        "task_assigned" => &[Queued],
        "task_started" => &[Assigned],
        "receipt_received" => &[Assigned, Running],
        "task_completed" => &[Validating],
        "receipt_checked" => &[Validating],
        "checks_awaited" => &[Validating],
        "pull_ended" => &[Completed],
        "follow_up_requested" => &[Completed],
        "pull_conflicted" => &[Completed],
        "task_lost" => &[Assigned, Running],
        "attempt_failed" => &[Assigned, Running, Validating, AgentLost],
        "task_cancelled" => &[Queued, Assigned, Running, Validating, AgentLost, Blocked],
        "task_retried" => &[Failed, Cancelled],
        "task_blocked" => &[Running],
        "task_answered" => &[Blocked],
        _ => unreachable!(),
    }
}

#[test]
fn every_event_applies_exactly_in_the_states_the_machine_allows() {
    for state in TaskState::ALL {
        for kind in KINDS {
            let mut t = task_in(state);
            let before = t.clone();
            let result = t.apply(&event_of_kind(kind, t.attempt));
            if legal_from(kind).contains(&state) {
                assert!(result.is_ok(), "{kind} from {state}: {result:?}");
            } else {
                assert_eq!(
                    result,
                    Err(TransitionError::Task { task: T, from: state, event: event_of_kind(kind, 1).kind() }),
                    "{kind} from {state} must be refused"
                );
                assert_eq!(t, before, "a refused {kind} from {state} changed the task");
            }
        }
    }
}

#[test]
fn legal_events_lead_to_the_documented_state() {
    use TaskState::*;
    let cases: &[(TaskState, &str, TaskState)] = &[
        (Queued, "task_assigned", Assigned),
        (Assigned, "task_started", Running),
        (Assigned, "receipt_received", Validating),
        (Running, "receipt_received", Validating),
        (Validating, "task_completed", Completed),
        (Assigned, "task_lost", AgentLost),
        (Running, "task_lost", AgentLost),
        (Running, "attempt_failed", Queued),
        (AgentLost, "attempt_failed", Queued),
        (Validating, "attempt_failed", Queued),
        (Running, "task_cancelled", Cancelled),
        (Queued, "task_cancelled", Cancelled),
        (Failed, "task_retried", Queued),
        (Cancelled, "task_retried", Queued),
        (Completed, "task_queued", Queued),
        (Running, "task_spec_changed", Running),
        (Running, "task_blocked", Blocked),
        (Blocked, "task_answered", Queued),
        (Blocked, "task_cancelled", Cancelled),
        (Blocked, "task_spec_changed", Blocked),
    ];
    for (from, kind, to) in cases {
        let mut t = task_in(*from);
        t.apply(&event_of_kind(kind, t.attempt)).unwrap();
        assert_eq!(t.state, *to, "{kind} from {from}");
        assert_eq!(t.lease.is_some(), to.is_leased(), "{kind} from {from}: lease held iff leased state");
    }
}

#[test]
fn a_stale_attempt_is_refused_and_changes_nothing() {
    for (state, kind) in [
        (TaskState::Queued, "task_assigned"),
        (TaskState::Assigned, "task_started"),
        (TaskState::Running, "receipt_received"),
        (TaskState::Validating, "task_completed"),
        (TaskState::Running, "task_lost"),
        (TaskState::Running, "attempt_failed"),
        (TaskState::Running, "task_cancelled"),
        (TaskState::Running, "task_blocked"),
    ] {
        let mut t = task_in(state);
        let before = t.clone();
        let err = t.apply(&event_of_kind(kind, t.attempt + 1)).unwrap_err();
        assert_eq!(err, TransitionError::StaleAttempt { task: T, current: 1, given: 2 }, "{kind}");
        assert_eq!(t, before);
    }
}

#[test]
fn a_retryable_failure_queues_the_next_attempt_after_the_backoff() {
    let mut t = task_in(TaskState::Running);
    t.apply(&event_of_kind("attempt_failed", 1)).unwrap();
    assert_eq!((t.state, t.attempt, t.not_before), (TaskState::Queued, 2, Some(at(500))));
    assert_eq!(t.retries_used(FailureClass::AgentError), 1);
    assert_eq!(t.last_failure.as_ref().map(|f| f.class), Some(FailureClass::AgentError));
    assert_eq!(t.queued_at, at(0), "an automatic retry keeps its place by age");
    t.apply(&event_of_kind("task_assigned", 2)).unwrap();
    assert_eq!(t.not_before, None);
}

#[test]
fn giving_up_fails_the_task_and_a_person_can_retry_it_with_a_fresh_budget() {
    let mut t = task_in(TaskState::Running);
    t.apply(&event_of_kind("attempt_failed", 1)).unwrap();
    t.apply(&event_of_kind("task_assigned", 2)).unwrap();
    t.apply(&Event::AttemptFailed {
        task: T,
        attempt: 2,
        class: FailureClass::AgentError,
        message: "again".into(),
        decision: RetryDecision::GiveUp,
        spent: None,
        pushed_branch: None,
        at: at(900),
    })
    .unwrap();
    assert_eq!((t.state, t.attempt), (TaskState::Failed, 2));
    t.apply(&Event::TaskRetried { task: T, by: "bob".into(), at: at(1000) }).unwrap();
    assert_eq!((t.state, t.attempt, t.retries_used(FailureClass::AgentError)), (TaskState::Queued, 3, 0));
    assert_eq!(t.queued_at, at(1000));
}

#[test]
fn cancelled_is_never_a_failed_attempt() {
    let mut t = task_in(TaskState::Running);
    let e = Event::AttemptFailed {
        task: T,
        attempt: 1,
        class: FailureClass::Cancelled,
        message: "".into(),
        decision: RetryDecision::GiveUp,
        spent: None,
        pushed_branch: None,
        at: at(1),
    };
    assert!(matches!(t.apply(&e), Err(TransitionError::CancelledIsNotAFailure { .. })));
    assert_eq!(t.state, TaskState::Running);
}

#[test]
fn events_of_other_tasks_and_agents_are_refused() {
    let mut t = task_in(TaskState::Queued);
    let other = Event::TaskStarted { task: TaskId(99), attempt: 1, at: at(1) };
    assert!(matches!(t.apply(&other), Err(TransitionError::WrongTask { .. })));
    let agent_event = Event::AgentOnline { agent: A, at: at(1) };
    assert!(t.apply(&agent_event).is_err());
}

#[test]
fn each_state_maps_to_one_status_label() {
    use StatusLabel::*;
    let labels: Vec<_> = TaskState::ALL.iter().map(|s| s.status_label()).collect();
    assert_eq!(
        labels,
        [Some(Todo), Some(Doing), Some(Doing), Some(Doing), Some(Done), Some(Failed), Some(Todo), None, Some(Blocked)]
    );
    for s in TaskState::ALL {
        assert_eq!(TaskState::parse(s.as_str()), Some(s));
    }
}

#[test]
fn a_pushed_branch_is_continued_by_every_later_attempt_until_a_person_queues_again() {
    let mut t = task_in(TaskState::Running);
    assert_eq!(t.branch("ff/"), format!("ff/issue-{}-attempt-1", t.issue.number));
    let failed = |attempt: u32, pushed: Option<&str>, decision: RetryDecision| Event::AttemptFailed {
        task: T,
        attempt,
        class: FailureClass::AgentError,
        message: "no pull request".into(),
        decision,
        spent: None,
        pushed_branch: pushed.map(String::from),
        at: at(200),
    };
    let retry = RetryDecision::Retry { not_before: at(500), retries_left: 1 };
    let first = t.branch("ff/");
    t.apply(&failed(1, Some(&first), retry)).unwrap();
    assert_eq!((t.attempt, t.branch("ff/")), (2, first.clone()), "attempt 2 continues attempt 1's branch");
    // Attempt 2 fails before pushing anything: attempt 1's work is still there to continue.
    t.apply(&event_of_kind("task_assigned", 2)).unwrap();
    t.apply(&failed(2, None, RetryDecision::GiveUp)).unwrap();
    assert_eq!(t.branch("ff/"), first);
    t.apply(&Event::TaskRetried { task: T, by: "bob".into(), at: at(1000) }).unwrap();
    assert_eq!(t.branch("ff/"), format!("ff/issue-{}-attempt-3", t.issue.number), "a person's retry starts afresh");
}

#[test]
fn waiting_for_ci_frees_the_agents_slot_but_keeps_who_did_the_work() {
    let mut t = task_in(TaskState::Validating);
    t.apply(&event_of_kind("checks_awaited", 1)).unwrap();
    assert_eq!(t.state, TaskState::Validating, "waiting for CI is still validating");
    let lease = t.lease.clone().expect("the lease stays for the record");
    assert!(!lease.holds(), "but it holds no slot");
    assert_eq!(t.checks, Some(awaited()));
    assert!(t.apply(&event_of_kind("checks_awaited", 1)).is_err(), "it waits once per attempt");
    let mut failed = t.clone();
    failed
        .apply(&Event::AttemptFailed {
            task: T,
            attempt: 1,
            class: FailureClass::ChecksFailed,
            message: "CI failed".into(),
            decision: RetryDecision::Retry { not_before: at(500), retries_left: 1 },
            spent: None,
            pushed_branch: Some("fleet/issue-7-attempt-1".into()),
            at: at(200),
        })
        .unwrap();
    assert_eq!((failed.state, failed.attempt, failed.checks.clone()), (TaskState::Queued, 2, None));
    assert_eq!(failed.pushed_branch.as_deref(), Some("fleet/issue-7-attempt-1"), "the retry continues the branch");
    t.apply(&event_of_kind("task_completed", 1)).unwrap();
    assert_eq!((t.state, t.checks.clone(), t.lease.clone()), (TaskState::Completed, None, None));
}

#[test]
fn a_closed_pull_request_requeues_fails_or_leaves_the_completed_task_as_configured_and_is_recorded_once() {
    let closed = |then| Event::PullEnded {
        task: T,
        attempt: 1,
        end: crate::core::PullEnd { pr_number: 3, merged: false, by: None, at: at(300) },
        then,
        at: at(300),
    };
    let mut t = task_in(TaskState::Completed);
    t.apply(&closed(crate::core::OnPullClosed::Requeue)).unwrap();
    assert_eq!((t.state, t.attempt, t.pull_end.clone()), (TaskState::Queued, 2, None), "a fresh attempt");
    let mut t = task_in(TaskState::Completed);
    t.apply(&closed(crate::core::OnPullClosed::Fail)).unwrap();
    assert_eq!(t.state, TaskState::Failed);
    let mut t = task_in(TaskState::Completed);
    t.apply(&closed(crate::core::OnPullClosed::Nothing)).unwrap();
    assert_eq!(t.state, TaskState::Completed);
    assert!(t.pull_end.as_ref().is_some_and(|e| !e.merged));
    assert!(t.apply(&event_of_kind("pull_ended", 1)).is_err(), "an end is recorded once");
}

#[test]
fn a_running_attempt_blocks_on_a_question_and_holds_nothing_while_it_waits() {
    let mut t = task_in(TaskState::Running);
    t.apply(&event_of_kind("task_blocked", 1)).unwrap();
    assert_eq!(t.state, TaskState::Blocked);
    assert!(!t.state.is_terminal() && !t.state.is_leased());
    assert_eq!((t.lease.as_ref(), t.not_before), (None, None), "no lease: no slot, no deadline, no timeout");
    let q = t.question.clone().unwrap();
    assert_eq!((q.attempt, q.text.as_str(), q.answer), (1, "v1 or v2 API?", None));
}

#[test]
fn an_answer_queues_the_next_attempt_with_the_question_and_the_answer_and_spends_no_retry() {
    let mut t = task_in(TaskState::Blocked);
    t.apply(&event_of_kind("task_answered", 1)).unwrap();
    assert_eq!((t.state, t.attempt, t.not_before), (TaskState::Queued, 2, None));
    assert!(t.retries.is_empty(), "a question is not a failure: {:?}", t.retries);
    let q = t.question.clone().unwrap();
    assert_eq!(q.text, "v1 or v2 API?");
    assert_eq!((q.answer.as_deref(), q.answered_by.as_deref()), (Some("use the v2 API"), Some("@alice")));
    t.apply(&event_of_kind("task_assigned", 2)).unwrap();
    assert!(t.question.is_some(), "the next attempt is told both");
    // A person's new queueing starts afresh, without the old question.
    t.apply(&event_of_kind("task_cancelled", 2)).unwrap();
    t.apply(&Event::TaskRetried { task: T, by: "bob".into(), at: at(1000) }).unwrap();
    assert_eq!(t.question, None);
}

#[test]
fn blocking_a_queued_task_is_an_error_and_a_blocked_task_is_cancelled_by_a_person() {
    let mut t = task_in(TaskState::Queued);
    let before = t.clone();
    let err = t.apply(&event_of_kind("task_blocked", 1)).unwrap_err();
    assert_eq!(err, TransitionError::Task { task: T, from: TaskState::Queued, event: "task_blocked" });
    assert_eq!(t, before);
    let mut t = task_in(TaskState::Blocked);
    t.apply(&event_of_kind("task_cancelled", 1)).unwrap();
    assert_eq!(t.state, TaskState::Cancelled);
    // An answer to a task that is no longer blocked does not apply.
    let err = t.apply(&event_of_kind("task_answered", 1)).unwrap_err();
    assert!(matches!(err, TransitionError::Task { from: TaskState::Cancelled, .. }), "{err:?}");
}

#[test]
fn an_answered_task_continues_the_branch_an_earlier_attempt_pushed() {
    let mut t = task_in(TaskState::Running);
    let first = t.branch("ff/");
    t.apply(&Event::AttemptFailed {
        task: T,
        attempt: 1,
        class: FailureClass::AgentError,
        message: "no pull request".into(),
        decision: RetryDecision::Retry { not_before: at(150), retries_left: 1 },
        spent: None,
        pushed_branch: Some(first.clone()),
        at: at(120),
    })
    .unwrap();
    t.apply(&event_of_kind("task_assigned", 2)).unwrap();
    t.apply(&event_of_kind("task_started", 2)).unwrap();
    t.apply(&event_of_kind("task_blocked", 2)).unwrap();
    t.apply(&event_of_kind("task_answered", 2)).unwrap();
    assert_eq!((t.attempt, t.branch("ff/")), (3, first));
}

#[test]
fn the_last_session_is_kept_through_every_round_that_goes_on_from_it_and_dropped_by_a_fresh_start() {
    let mut t = task_in(TaskState::Completed);
    let s = t.last_session.clone().expect("the receipt's agent and session");
    assert_eq!((s.agent, s.attempt, s.summary.as_str(), s.requeued_at), (A, 1, "done", None));
    t.apply(&event_of_kind("follow_up_requested", 1)).unwrap();
    assert_eq!(t.last_session.as_ref().and_then(|s| s.requeued_at), Some(at(100)), "the window starts");
    t.apply(&event_of_kind("task_assigned", 2)).unwrap();
    assert_eq!(t.last_session.as_ref().map(|s| (s.attempt, s.requeued_at)), Some((1, None)), "no window while held");
    t.apply(&event_of_kind("attempt_failed", 2)).unwrap();
    assert_eq!(t.last_session.as_ref().and_then(|s| s.requeued_at), Some(at(100)), "a retry goes on from it too");
    t.apply(&Event::TaskCancelled {
        task: T,
        attempt: 3,
        reason: "x".into(),
        by: crate::core::CancelledBy::Person,
        at: at(200),
    })
    .unwrap();
    t.apply(&Event::TaskRetried { task: T, by: "bob".into(), at: at(300) }).unwrap();
    assert_eq!(t.last_session, None, "a person started it afresh");
}

#[test]
fn a_conflict_is_recorded_on_the_completed_task_and_a_merging_round_goes_on_its_branch() {
    // Told only: the task stays completed, the conflict is kept.
    let mut t = task_in(TaskState::Completed);
    t.apply(&event_of_kind("pull_conflicted", 1)).unwrap();
    assert_eq!((t.state, t.attempt), (TaskState::Completed, 1));
    assert_eq!(t.conflict.as_ref().map(|c| c.head_sha.as_str()), Some("b".repeat(40).as_str()));
    assert!(t.apply(&event_of_kind("pull_conflicted", 2)).is_err(), "about another attempt: refused");

    // With a round: queued on the pull request's branch, the conflict kept for the rounds after.
    let mut t = task_in(TaskState::Completed);
    let branch = t.branch("ff/");
    let Event::FollowUpRequested { follow_up, .. } = event_of_kind("follow_up_requested", 1) else { unreachable!() };
    let follow_up = crate::core::FollowUp { branch: branch.clone(), by: "forgefleet".into(), ..follow_up };
    let Event::PullConflicted { conflict, .. } = event_of_kind("pull_conflicted", 1) else { unreachable!() };
    let conflict = crate::core::PullConflict { then: crate::core::OnConflict::Merge { round: 1 }, ..conflict };
    t.apply(&Event::PullConflicted { task: T, attempt: 1, conflict, follow_up: Some(follow_up), at: at(200) }).unwrap();
    assert_eq!((t.state, t.attempt, t.branch("ff/")), (TaskState::Queued, 2, branch));
    assert_eq!(t.follow_up.as_ref().map(|f| (f.round, f.by.as_str())), Some((1, "forgefleet")));
    assert!(t.conflict.is_some());
    // A fresh start forgets it.
    t.apply(&event_of_kind("task_cancelled", 2)).unwrap();
    t.apply(&event_of_kind("task_retried", 2)).unwrap();
    assert!(t.conflict.is_none());
}
