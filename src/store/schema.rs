//! Versioned migrations, tracked in SQLite's `user_version`.

use rusqlite::Connection;

/// Each entry takes the schema from version `i` to `i + 1`. Never edit one that has shipped: add another.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the log, the projections, the outbox.
    r#"
    CREATE TABLE events (
        seq      INTEGER PRIMARY KEY,
        at       INTEGER NOT NULL,
        kind     TEXT    NOT NULL,
        task_id  INTEGER,
        agent_id INTEGER,
        payload  TEXT    NOT NULL
    );
    CREATE INDEX events_by_task ON events(task_id, seq) WHERE task_id IS NOT NULL;
    CREATE INDEX events_by_agent ON events(agent_id, seq) WHERE agent_id IS NOT NULL;
    -- The log is the truth the projections are rebuilt from: SQLite itself refuses to rewrite history.
    CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only: they cannot be updated'); END;
    CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only: they cannot be deleted'); END;

    CREATE TABLE tasks (
        id         INTEGER PRIMARY KEY,
        repo       TEXT    NOT NULL,
        issue      INTEGER NOT NULL,
        state      TEXT    NOT NULL,
        priority   INTEGER NOT NULL,
        queued_at  INTEGER NOT NULL,
        not_before INTEGER,
        attempt    INTEGER NOT NULL,
        needs      TEXT    NOT NULL,
        pin        TEXT,
        updated_at INTEGER NOT NULL,
        data       TEXT    NOT NULL,
        UNIQUE (repo, issue)
    );
    -- Only queued tasks are ever picked: the partial index stays as small as the queue.
    CREATE INDEX tasks_queue ON tasks(priority, queued_at, id) WHERE state = 'queued';
    CREATE INDEX tasks_by_state ON tasks(state);

    CREATE TABLE agents (
        id                INTEGER PRIMARY KEY,
        name              TEXT    NOT NULL UNIQUE,
        state             TEXT    NOT NULL,
        token_hash        TEXT    NOT NULL,
        updated_at        INTEGER NOT NULL,
        data              TEXT    NOT NULL,
        -- Volatile: heartbeats are too frequent to log; a rebuild keeps what is here.
        last_heartbeat_at INTEGER
    );
    CREATE INDEX agents_by_token ON agents(token_hash);

    CREATE TABLE leases (
        task_id     INTEGER PRIMARY KEY REFERENCES tasks(id),
        agent_id    INTEGER NOT NULL REFERENCES agents(id),
        attempt     INTEGER NOT NULL,
        assigned_at INTEGER NOT NULL,
        start_by    INTEGER NOT NULL,
        started_at  INTEGER,
        deadline    INTEGER NOT NULL
    );
    CREATE INDEX leases_by_agent ON leases(agent_id);
    CREATE INDEX leases_by_deadline ON leases(deadline);

    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY,
        -- The event that caused it; NULL for work that no event caused (answers to a person's command).
        event_seq       INTEGER REFERENCES events(seq),
        kind            TEXT    NOT NULL,
        payload         TEXT    NOT NULL,
        created_at      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        delivered_at    INTEGER,
        last_error      TEXT
    );
    CREATE INDEX outbox_pending ON outbox(next_attempt_at) WHERE delivered_at IS NULL;
    "#,
    // 2: idempotent assignments, and the agents' progress lines.
    r#"
    ALTER TABLE leases ADD COLUMN request_key TEXT;
    -- An agent's retried request (same key) finds the lease it was answered with.
    CREATE UNIQUE INDEX leases_by_request ON leases(agent_id, request_key) WHERE request_key IS NOT NULL;

    -- Volatile like heartbeats: log lines are too chatty for the event log; the last N per task are kept.
    CREATE TABLE progress (
        id      INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL REFERENCES tasks(id),
        attempt INTEGER NOT NULL,
        at      INTEGER NOT NULL,
        line    TEXT    NOT NULL
    );
    CREATE INDEX progress_by_task ON progress(task_id, id);
    "#,
    // 3: webhook deduplication and small durable settings (reconciliation cursors).
    r#"
    -- A replayed delivery has a new id but the same content: its key says it was seen.
    CREATE TABLE webhook_seen (
        key TEXT PRIMARY KEY,
        at  INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 4: the issue text in columns of its own. It changes only when the issue is edited, while the rest of a
    // task changes with every step: `data` no longer carries (and rewrites) the title and body each time.
    r#"
    ALTER TABLE tasks ADD COLUMN title TEXT NOT NULL DEFAULT '';
    ALTER TABLE tasks ADD COLUMN body  TEXT NOT NULL DEFAULT '';
    UPDATE tasks SET title = COALESCE(json_extract(data, '$.title'), ''),
                     body  = COALESCE(json_extract(data, '$.body'), ''),
                     data  = json_remove(data, '$.title', '$.body');
    "#,
    // 5: the issue each side effect is for, so deliveries to one issue go out in the order they were written
    // (`repo#number`, as `IssueRef` prints it; a test ties the two together).
    r#"
    ALTER TABLE outbox ADD COLUMN issue TEXT;
    UPDATE outbox SET issue = json_extract(payload, '$.issue.repo') || '#' || json_extract(payload, '$.issue.number');
    CREATE INDEX outbox_pending_by_issue ON outbox(issue, id) WHERE delivered_at IS NULL;
    "#,
    // 6: dead letters, and the issue's Forgejo id. A delivery that can never succeed stops at `dead_at` until an operator retries it
    // (the column is cleared) or drops it (`dropped_at`: it stays, for the record, and is never tried again).
    r#"
    ALTER TABLE outbox ADD COLUMN dead_at INTEGER;
    ALTER TABLE outbox ADD COLUMN dropped_at INTEGER;
    -- Forgejo's id of the issue, as its task knew it when the row was written: checked before delivery.
    ALTER TABLE outbox ADD COLUMN issue_id INTEGER;
    "#,
    // 7: the Matrix bot's inbox: text messages seen in its rooms, each once (its event id), recorded in the same
    // transaction as the sync token that moves past it. `handled_at` is set once a command runner took it.
    r#"
    CREATE TABLE matrix_inbox (
        event_id         TEXT    PRIMARY KEY,
        room             TEXT    NOT NULL,
        sender           TEXT    NOT NULL,
        body             TEXT    NOT NULL,
        origin_server_ts INTEGER NOT NULL,
        received_at      INTEGER NOT NULL,
        handled_at       INTEGER
    );
    CREATE INDEX matrix_inbox_unhandled ON matrix_inbox(received_at) WHERE handled_at IS NULL;
    "#,
    // 8: where a row goes (`Destination::as_str`). Each destination has its own worker, and an issue's rows keep
    // their order within one destination only, so a homeserver that is down never holds back a label write.
    r#"
    ALTER TABLE outbox ADD COLUMN destination TEXT NOT NULL DEFAULT 'forgejo';
    CREATE INDEX outbox_pending_by_destination ON outbox(destination, issue, id) WHERE delivered_at IS NULL;
    "#,
    // 9: the Matrix messages forgefleet keeps coming back to: a task's one message (edited as it moves) and
    // each agent's thread root, by key (`task:12`, `agent:3`).
    r#"
    CREATE TABLE matrix_messages (
        key      TEXT    PRIMARY KEY,
        room     TEXT    NOT NULL,
        event_id TEXT    NOT NULL,
        at       INTEGER NOT NULL
    );
    "#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Applies every migration the database has not seen, each in its own transaction.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    migrate_to(conn, SCHEMA_VERSION)
}

pub(super) fn migrate_to(conn: &mut Connection, target: i64) -> rusqlite::Result<()> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let v = version(&tx)?;
        if v >= target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[v as usize])?;
        tx.pragma_update(None, "user_version", v + 1)?;
        tx.commit()?;
    }
}
