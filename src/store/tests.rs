use super::*;
use crate::core::*;

fn queued(task: i64, issue: u64, at: i64) -> Event {
    Event::TaskQueued {
        task: TaskId(task),
        issue: IssueRef { repo: RepoName::parse("acme/app").unwrap(), number: issue },
        title: format!("issue {issue}"),
        body: String::new(),
        labels: vec!["status:todo".into()],
        spec: TaskSpec::default(),
        at: Timestamp(at),
        issue_id: Some(1000 + issue as i64),
    }
}

fn registered(agent: i64, name: &str) -> Event {
    Event::AgentRegistered {
        agent: AgentId(agent),
        name: AgentName::parse(name).unwrap(),
        adapter: "command".into(),
        capabilities: Default::default(),
        max_concurrency: 2,
        version: "1".into(),
        token_hash: format!("hash-{name}"),
        at: Timestamp(0),
    }
}

#[test]
fn a_fresh_database_gets_every_migration_and_reopening_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/f.db");
    let s = Store::open(&path).unwrap();
    assert_eq!(schema::version(s.connection()).unwrap(), SCHEMA_VERSION);
    let mode: String = s.connection().pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(schema::version(s.connection()).unwrap(), SCHEMA_VERSION);
}

#[test]
fn every_migration_applies_to_data_from_the_one_before() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    for target in 1..=SCHEMA_VERSION {
        schema::migrate_to(&mut conn, target).unwrap();
        // Data written at each version must survive the next migration.
        conn.execute(
            "INSERT INTO events (at, kind, task_id, agent_id, payload) VALUES (?1, 'x', NULL, NULL, '{}')",
            [target],
        )
        .unwrap();
    }
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(n, SCHEMA_VERSION);
}

#[test]
fn events_cannot_be_updated_or_deleted() {
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    tx.append(&queued(1, 1, 0)).unwrap();
    tx.commit().unwrap();
    let c = s.connection();
    let e = c.execute("UPDATE events SET kind = 'forged'", []).unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = c.execute("DELETE FROM events", []).unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert_eq!(s.read().event_count().unwrap(), 1);
}

#[test]
fn appending_updates_the_projection_and_queues_effects_in_one_transaction() {
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    tx.append(&registered(1, "a1")).unwrap();
    tx.append(&queued(1, 7, 0)).unwrap();
    let assigned = Event::TaskAssigned {
        task: TaskId(1),
        attempt: 1,
        agent: AgentId(1),
        at: Timestamp(5),
        start_by: Timestamp(10),
        deadline: Timestamp(100),
        request_key: None,
    };
    let a = tx.append(&assigned).unwrap();
    assert_eq!(a.effects.len(), 2, "assigning sets status:doing and the assignee");
    tx.commit().unwrap();
    let r = s.read();
    let t = r.task(TaskId(1)).unwrap().unwrap();
    assert_eq!((t.state, t.lease.as_ref().map(|l| l.agent)), (TaskState::Assigned, Some(AgentId(1))));
    assert_eq!(r.running_count(AgentId(1)).unwrap(), 1);
    assert_eq!(r.leases_of(AgentId(1)).unwrap(), [(TaskId(1), 1)]);
    let due = r.outbox_due(Timestamp(5), 10).unwrap();
    assert_eq!(due.len(), 2);
    assert!(due[0].payload.contains("doing"), "{}", due[0].payload);
    assert_eq!(r.task_events(TaskId(1)).unwrap().len(), 2);
}

#[test]
fn an_event_that_does_not_apply_rolls_back_with_its_savepoint() {
    let mut s = Store::open_in_memory().unwrap();
    let mut tx = s.write().unwrap();
    tx.append(&queued(1, 7, 0)).unwrap();
    let bad = Event::TaskStarted { task: TaskId(1), attempt: 1, at: Timestamp(1) };
    let r: Result<Appended, StoreError> = tx.savepoint(|tx| tx.append(&bad));
    assert!(matches!(r, Err(StoreError::Transition(TransitionError::Task { from: TaskState::Queued, .. }))));
    tx.commit().unwrap();
    assert_eq!(s.read().event_count().unwrap(), 1, "the refused event is not in the log");
    assert_eq!(s.read().task(TaskId(1)).unwrap().unwrap().state, TaskState::Queued);
}

#[test]
fn the_queue_gives_the_most_urgent_oldest_fitting_task() {
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    tx.append(&registered(1, "a1")).unwrap();
    let mut low = queued(1, 1, 0);
    let mut urgent_gpu = queued(2, 2, 5);
    if let Event::TaskQueued { spec, .. } = &mut low {
        spec.priority = Priority::Low;
    }
    if let Event::TaskQueued { spec, .. } = &mut urgent_gpu {
        spec.priority = Priority::Critical;
        spec.needs.insert("gpu".into());
    }
    tx.append(&low).unwrap();
    tx.append(&urgent_gpu).unwrap();
    tx.append(&queued(3, 3, 9)).unwrap();
    tx.append(&queued(4, 4, 8)).unwrap();
    tx.commit().unwrap();
    let agent = s.read().agent(AgentId(1)).unwrap().unwrap();
    assert_eq!(s.read().next_for(&agent, 0, Timestamp(10), std::time::Duration::ZERO).unwrap(), Some(TaskId(4)));
    let mut gpu_agent = agent.clone();
    gpu_agent.capabilities.insert("gpu".into());
    assert_eq!(s.read().next_for(&gpu_agent, 0, Timestamp(10), std::time::Duration::ZERO).unwrap(), Some(TaskId(2)));
    assert_eq!(s.read().next_for(&agent, 2, Timestamp(10), std::time::Duration::ZERO).unwrap(), None, "no free slot");
}

#[test]
fn rebuild_restores_projections_wiped_by_hand() {
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    tx.append(&registered(1, "a1")).unwrap();
    tx.append(&queued(1, 1, 0)).unwrap();
    tx.append(&Event::TaskAssigned {
        task: TaskId(1),
        attempt: 1,
        agent: AgentId(1),
        at: Timestamp(1),
        start_by: Timestamp(2),
        deadline: Timestamp(3),
        request_key: None,
    })
    .unwrap();
    tx.touch_agent(AgentId(1), Timestamp(77)).unwrap();
    tx.commit().unwrap();
    let before = s.read().task(TaskId(1)).unwrap();
    s.connection().execute_batch("DELETE FROM leases; UPDATE tasks SET state = 'bogus'").unwrap();
    let report = s.rebuild().unwrap();
    assert_eq!((report.events, report.tasks, report.agents), (3, 1, 1));
    assert_eq!(s.read().task(TaskId(1)).unwrap(), before);
    assert_eq!(s.read().running_count(AgentId(1)).unwrap(), 1);
    assert_eq!(s.read().agents().unwrap()[0].last_heartbeat_at, Some(Timestamp(77)), "heartbeats are kept");
}

#[test]
fn a_file_that_is_not_a_database_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not a forgefleet database"), "{err}");
    assert!(matches!(Store::open_read_only(&path).unwrap_err(), StoreError::Corrupt { .. }));
}

#[test]
fn a_database_from_a_newer_forgefleet_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    drop(Store::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    drop(c);
    assert!(matches!(Store::open(&path).unwrap_err(), StoreError::TooNew { .. }));
}

#[test]
fn a_second_lock_on_the_same_database_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db");
    let first = StoreLock::acquire(&db, "forgefleet serve").unwrap();
    let err = StoreLock::acquire(&db, "forgefleet serve").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    assert!(msg.contains("in use"), "{msg}");
    drop(first);
    // Other tests in this process spawn `git` at any moment. Between fork and exec a child holds a copy of
    // every descriptor (close-on-exec closes it only at exec), and a flock belongs to the open file, so the
    // release can show a few milliseconds late. A lock that is never released still fails here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match StoreLock::acquire(&db, "forgefleet serve") {
            Ok(_) => break,
            Err(LockError::Held { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("not released when dropped: {e}"),
        }
    }
}

#[test]
fn reading_a_missing_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_read_only(&dir.path().join("nope.db")).unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
}

/// A task with every optional part filled in, and issue text that needs escaping.
fn full_task() -> Task {
    let mut t = Task::queued(&queued(7, 70, 1_000)).unwrap();
    t.title = "Fix \"quoted\" title ✓".into();
    t.body = "line one\nline two\t\\ end".into();
    t.spec.needs.insert("rust".into());
    t.spec.kind = Some("bug".into());
    t.spec.agent = Some(AgentName::parse("worker-1").unwrap());
    t.retries.insert(FailureClass::AgentLost, 1);
    t.not_before = Some(Timestamp(5_000));
    t.attempt = 2;
    t.lease = Some(Lease {
        agent: AgentId(3),
        attempt: 2,
        assigned_at: Timestamp(6_000),
        start_by: Timestamp(36_000),
        started_at: Some(Timestamp(7_000)),
        deadline: Timestamp(3_606_000),
        request_key: Some("req-1".into()),
        receipt_at: None,
        released_at: None,
    });
    t.last_failure = Some(crate::core::task::Failure {
        attempt: 1,
        class: FailureClass::AgentLost,
        message: "gone".into(),
        at: Timestamp(4_000),
    });
    t.receipt = Some(Receipt {
        pr_number: 12,
        head_sha: CommitSha::parse(&"ab".repeat(20)).unwrap(),
        summary: "done".into(),
        usage: Usage::default(),
        cost_usd: Some(0.5),
        duration_secs: Some(60),
        session_id: Some("s-1".into()),
        artifacts: Vec::new(),
    });
    t.validation = Some(Validation {
        checks: vec![Check { name: "head_matches".into(), passed: true, detail: "ok".into() }],
        files: Vec::new(),
    });
    // Every optional field set, so that one the stored form lacks shows.
    t.pushed_branch = Some("forgefleet/issue-7-attempt-1".into());
    t.checks = Some(crate::core::AwaitedChecks {
        pr_number: 12,
        head_sha: "ab".repeat(20),
        required: crate::core::RequiredChecks::All,
        since: Timestamp(8_000),
        deadline: Timestamp(9_000),
    });
    t.pull_end =
        Some(crate::core::PullEnd { pr_number: 12, merged: true, by: Some("alice".into()), at: Timestamp(9_500) });
    t
}

#[test]
fn a_task_row_holds_the_task_without_its_text_and_reads_back_whole() {
    let t = full_task();
    // The row's data says exactly what the task's own serialisation says, less the title and body: a field
    // added to `Task` and not to the stored form fails here.
    let mut whole = serde_json::to_value(&t).unwrap();
    let map = whole.as_object_mut().unwrap();
    assert!(map.remove("title").is_some() && map.remove("body").is_some());
    let stored: serde_json::Value = serde_json::from_str(&encode_task(&t)).unwrap();
    assert_eq!(stored, whole);

    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    tx.append(&registered(3, "worker-1")).unwrap();
    tx.commit().unwrap();
    projection::save_task(s.connection(), &t, None).unwrap();
    assert_eq!(s.read().task(t.id).unwrap(), Some(t.clone()));
    assert_eq!(s.read().task_by_issue(&t.issue).unwrap(), Some(t.clone()));
    assert_eq!(s.read().tasks(None, 10).unwrap()[0].title, t.title);

    // A later step rewrites the row but not the text; an edited issue rewrites the text too.
    let mut later = t.clone();
    later.state = TaskState::Validating;
    projection::save_task(s.connection(), &later, Some(&t)).unwrap();
    assert_eq!(s.read().task(t.id).unwrap(), Some(later.clone()));
    let mut edited = later.clone();
    edited.body = "new body".into();
    projection::save_task(s.connection(), &edited, Some(&later)).unwrap();
    assert_eq!(s.read().task(t.id).unwrap(), Some(edited));
}

#[test]
fn migration_4_moves_the_issue_text_of_existing_tasks_into_its_columns() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    schema::migrate_to(&mut conn, 3).unwrap();
    let t = full_task();
    // Version 3 kept the whole task, text included, in `data`.
    conn.execute(
        "INSERT INTO tasks (id, repo, issue, state, priority, queued_at, attempt, needs, updated_at, data)
         VALUES (?1, ?2, ?3, 'queued', 1, 0, 2, '', 0, ?4)",
        rusqlite::params![t.id.0, t.issue.repo.as_str(), t.issue.number as i64, serde_json::to_string(&t).unwrap()],
    )
    .unwrap();
    schema::migrate_to(&mut conn, 4).unwrap();
    let (data, title, body): (String, String, String) =
        conn.query_row("SELECT data, title, body FROM tasks", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
    assert_eq!((title.as_str(), body.as_str()), (t.title.as_str(), t.body.as_str()));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&data).unwrap(),
        serde_json::from_str::<serde_json::Value>(&encode_task(&t)).unwrap()
    );
    assert_eq!(projection::load_task(&conn, t.id).unwrap(), Some(t));
}

#[test]
fn migration_5_gives_waiting_deliveries_their_issue_as_new_rows_get_it() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    schema::migrate_to(&mut conn, 4).unwrap();
    let issue: IssueRef = "acme/app#7".parse().unwrap();
    let effect = Effect::SetStatusLabel { issue: issue.clone(), status: None };
    conn.execute(
        "INSERT INTO outbox (kind, payload, created_at, next_attempt_at) VALUES (?1, ?2, 0, 0)",
        rusqlite::params![effect.kind(), serde_json::to_string(&effect).unwrap()],
    )
    .unwrap();
    schema::migrate_to(&mut conn, 5).unwrap();
    let migrated: String = conn.query_row("SELECT issue FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(migrated, issue.to_string(), "the SQL and `IssueRef`'s display agree");
}

#[test]
fn a_later_delivery_to_an_issue_waits_for_an_earlier_one_that_failed() {
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    let on = |n: u64| Effect::SetStatusLabel { issue: format!("acme/app#{n}").parse().unwrap(), status: None };
    let first = tx.enqueue(&on(1), None, Timestamp(0)).unwrap();
    tx.enqueue(&on(2), None, Timestamp(0)).unwrap();
    let later = tx.enqueue(&on(1), None, Timestamp(1)).unwrap();
    tx.outbox_failed(first, "503", Timestamp(100)).unwrap();
    tx.commit().unwrap();
    let ids = |now: i64| -> Vec<i64> {
        s.read().outbox_next(Destination::Forgejo, Timestamp(now), 10).unwrap().iter().map(|r| r.id).collect()
    };
    assert_eq!(ids(5), [2], "issue 1 waits for its first delivery's retry");
    assert_eq!(ids(100), [first, 2], "one row per issue at a time, oldest first");
    assert!(!ids(100).contains(&later));
}

#[test]
fn reading_an_issue_back_never_waits_behind_a_write_to_it() {
    // A label write to an issue that was deleted fails until it is a dead letter; the read that finds out the
    // issue is gone must not wait for that.
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    let issue: crate::core::IssueRef = "acme/app#1".parse().unwrap();
    let write = tx.enqueue(&Effect::SetStatusLabel { issue: issue.clone(), status: None }, None, Timestamp(0)).unwrap();
    let read = tx.enqueue(&Effect::ConfirmIssue { issue }, None, Timestamp(1)).unwrap();
    tx.outbox_failed(write, "404", Timestamp(100)).unwrap();
    tx.commit().unwrap();
    let ids: Vec<i64> =
        s.read().outbox_next(Destination::Forgejo, Timestamp(5), 10).unwrap().iter().map(|r| r.id).collect();
    assert_eq!(ids, [read]);
}

#[test]
fn a_dead_letter_holds_nothing_back_and_comes_back_only_when_retried() {
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    let effect = Effect::SetStatusLabel { issue: "acme/app#1".parse().unwrap(), status: None };
    let dead = tx.enqueue(&effect, None, Timestamp(0)).unwrap();
    let later = tx.enqueue(&effect, None, Timestamp(1)).unwrap();
    assert!(tx.outbox_dead(dead, "404", Timestamp(2)).unwrap());
    assert_eq!(tx.outbox_drop(999, Timestamp(2)).unwrap(), OutboxChange::NotFound);
    assert_eq!(tx.outbox_retry(later, Timestamp(2)).unwrap(), OutboxChange::Waiting, "not dead");
    tx.commit().unwrap();
    let next = |s: &Store| -> Vec<i64> {
        s.read().outbox_next(Destination::Forgejo, Timestamp(10), 10).unwrap().iter().map(|r| r.id).collect()
    };
    assert_eq!(next(&s), [later], "the dead one no longer holds its issue");
    let health = s.read().outbox_health().unwrap();
    assert_eq!((health.waiting, health.dead), (1, 1));
    let tx = s.write().unwrap();
    assert_eq!(tx.outbox_retry(dead, Timestamp(3)).unwrap(), OutboxChange::Done { destination: "forgejo".into() });
    tx.commit().unwrap();
    assert_eq!(next(&s), [dead], "retried: first in line again");
    let tx = s.write().unwrap();
    assert_eq!(tx.outbox_drop(dead, Timestamp(4)).unwrap(), OutboxChange::Done { destination: "forgejo".into() });
    assert_eq!(tx.outbox_drop(dead, Timestamp(4)).unwrap(), OutboxChange::Dropped);
    tx.commit().unwrap();
    assert_eq!(next(&s), [later]);
    assert_eq!(s.read().outbox_health().unwrap().dead, 0, "a dropped one is not a dead letter to act on");
    assert_eq!(s.read().outbox_list(10).unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), [later]);
}

/// Chat news is queued only for a room that wants its kind, and never with Matrix off (nothing would deliver
/// it, and the outbox would fill).
#[test]
fn chat_notifications_are_queued_only_for_the_kinds_a_room_wants() {
    let mut s = Store::open_in_memory().unwrap();
    let chat_rows = |s: &Store| -> Vec<String> {
        let mut stmt =
            s.connection().prepare("SELECT payload FROM outbox WHERE kind LIKE 'chat_%' ORDER BY id").unwrap();
        stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
    };
    let assigned = |task: i64| Event::TaskAssigned {
        task: TaskId(task),
        attempt: 1,
        agent: AgentId(1),
        at: Timestamp(10),
        start_by: Timestamp(20),
        deadline: Timestamp(30),
        request_key: None,
    };
    let tx = s.write().unwrap();
    tx.append(&registered(1, "a1")).unwrap();
    tx.append(&queued(1, 1, 0)).unwrap();
    tx.append(&assigned(1)).unwrap();
    tx.commit().unwrap();
    assert!(chat_rows(&s).is_empty(), "Matrix off: no chat rows");

    s.set_chat(Some(["assigned".to_string(), "agent_draining".to_string()].into()));
    let tx = s.write().unwrap();
    tx.append(&queued(2, 2, 0)).unwrap();
    tx.append(&assigned(2)).unwrap();
    tx.append(&Event::TaskStarted { task: TaskId(2), attempt: 1, at: Timestamp(11) }).unwrap();
    tx.append(&Event::AgentDraining { agent: AgentId(1), at: Timestamp(12) }).unwrap();
    tx.commit().unwrap();
    let rows = chat_rows(&s);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].contains("\"assigned\"") && rows[1].contains("\"draining\""), "{rows:?}");
}

#[test]
fn migration_8_sends_every_existing_row_to_forgejo_and_new_rows_say_where_they_go() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    schema::migrate_to(&mut conn, 7).unwrap();
    let effect = Effect::SetStatusLabel { issue: "acme/app#7".parse().unwrap(), status: None };
    conn.execute(
        "INSERT INTO outbox (kind, payload, created_at, next_attempt_at, issue) VALUES (?1, ?2, 0, 0, 'acme/app#7')",
        rusqlite::params![effect.kind(), serde_json::to_string(&effect).unwrap()],
    )
    .unwrap();
    schema::migrate_to(&mut conn, 8).unwrap();
    let migrated: String = conn.query_row("SELECT destination FROM outbox", [], |r| r.get(0)).unwrap();
    assert_eq!(migrated, Destination::Forgejo.as_str());

    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    tx.enqueue(&effect, None, Timestamp(0)).unwrap();
    tx.commit().unwrap();
    let rows = s.read().outbox_due(Timestamp(0), 10).unwrap();
    assert_eq!(rows[0].destination, effect.destination());
}

/// A row for `destination` on `issue`, as a destination with no effect of its own yet (Matrix) would write it.
fn enqueue_to(tx: &WriteTx<'_>, destination: &str, issue: &str, at: i64) -> i64 {
    tx.tx
        .execute(
            "INSERT INTO outbox (kind, payload, created_at, next_attempt_at, issue, destination)
             VALUES ('message', '{}', ?1, ?1, ?2, ?3)",
            rusqlite::params![at, issue, destination],
        )
        .unwrap();
    tx.tx.last_insert_rowid()
}

#[test]
fn each_destination_keeps_its_own_order_and_never_waits_for_another() {
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    let issue = "acme/app#1";
    let message = enqueue_to(&tx, "matrix", issue, 0);
    let second_message = enqueue_to(&tx, "matrix", issue, 1);
    let label = tx
        .enqueue(&Effect::SetStatusLabel { issue: issue.parse().unwrap(), status: None }, None, Timestamp(2))
        .unwrap();
    tx.outbox_failed(message, "homeserver down", Timestamp(100)).unwrap();
    tx.commit().unwrap();
    let ids = |d: Destination, now: i64| -> Vec<i64> {
        s.read().outbox_next(d, Timestamp(now), 10).unwrap().iter().map(|r| r.id).collect()
    };
    assert_eq!(ids(Destination::Forgejo, 5), [label], "a failing message does not hold back the label");
    assert_eq!(ids(Destination::Matrix, 5), Vec::<i64>::new(), "the second message waits for the first");
    assert_eq!(ids(Destination::Matrix, 100), [message]);
    assert!(!ids(Destination::Matrix, 100).contains(&second_message), "one row per issue at a time");
    let matrix = s.read().outbox_next(Destination::Matrix, Timestamp(100), 10).unwrap();
    assert!(matrix.iter().all(|r| r.destination == Destination::Matrix));
}

#[test]
fn a_dead_letter_is_counted_and_listed_under_its_destination() {
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.write().unwrap();
    let message = enqueue_to(&tx, "matrix", "acme/app#1", 0);
    assert!(tx.outbox_dead(message, "room gone", Timestamp(1)).unwrap());
    assert_eq!(tx.outbox_retry(message, Timestamp(2)).unwrap(), OutboxChange::Done { destination: "matrix".into() });
    assert!(tx.outbox_dead(message, "room gone", Timestamp(3)).unwrap());
    // A row from a newer forgefleet, for a destination this one does not know: listed as it is, never taken.
    let unknown = enqueue_to(&tx, "irc", "acme/app#2", 0);
    tx.commit().unwrap();
    let health = s.read().outbox_health().unwrap();
    assert_eq!(health.dead, 1);
    assert_eq!(health.dead_by_destination.get("matrix"), Some(&1), "{health:?}");
    assert_eq!((health.waiting, health.waiting_by_destination.get("irc")), (1, Some(&1)), "{health:?}");
    let listed = s.read().outbox_list(10).unwrap();
    let of = |id: i64| listed.iter().find(|e| e.id == id).unwrap().destination.clone();
    assert_eq!((of(message), of(unknown)), ("matrix".to_string(), "irc".to_string()));
    for d in Destination::ALL {
        assert!(s.read().outbox_next(d, Timestamp(10), 10).unwrap().is_empty());
    }
    let err = s.read().outbox_due(Timestamp(10), 10).unwrap_err().to_string();
    assert!(err.contains("unknown outbox destination \"irc\""), "{err}");
}
