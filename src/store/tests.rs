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
    assert_eq!(s.read().next_for(&agent, 0, Timestamp(10)).unwrap(), Some(TaskId(4)));
    let mut gpu_agent = agent.clone();
    gpu_agent.capabilities.insert("gpu".into());
    assert_eq!(s.read().next_for(&gpu_agent, 0, Timestamp(10)).unwrap(), Some(TaskId(2)));
    assert_eq!(s.read().next_for(&agent, 2, Timestamp(10)).unwrap(), None, "no free slot");
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
    StoreLock::acquire(&db, "forgefleet serve").expect("released when dropped");
}

#[test]
fn reading_a_missing_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_read_only(&dir.path().join("nope.db")).unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
}
