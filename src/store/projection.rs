//! Appending to the log and keeping the projections (tasks, agents, leases) in step, in one transaction.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Result, StoreError, WriteTx};
use crate::core::{Agent, AgentId, Effect, Event, Task, TaskId, Timestamp, effects_of};

/// What one appended event did.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub seq: i64,
    /// The side effects it asked for, already written to the outbox.
    pub effects: Vec<Effect>,
}

impl WriteTx<'_> {
    /// Appends `event` to the log, applies it to its projection, and queues the effects it causes.
    /// An event that does not apply fails with the typed transition error; the caller's savepoint or
    /// transaction undoes the insert.
    pub fn append(&self, event: &Event) -> Result<Appended> {
        let seq = insert_event(&self.tx, event)?;
        let effects = project(&self.tx, self.cache, event)?;
        for effect in &effects {
            self.enqueue(effect, Some(seq), event.at())?;
        }
        Ok(Appended { seq, effects })
    }

    /// Queues a side effect for delivery; `cause` is the event behind it, if any.
    pub fn enqueue(&self, effect: &Effect, cause: Option<i64>, at: Timestamp) -> Result<i64> {
        let payload = serde_json::to_string(effect).map_err(|e| StoreError::Decode(e.to_string()))?;
        self.tx
            .prepare_cached(
                "INSERT INTO outbox (event_seq, kind, payload, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            )?
            .execute(params![cause, effect.kind(), payload, at.0])?;
        Ok(self.tx.last_insert_rowid())
    }

    /// A side effect was delivered: it is kept, marked, for the record.
    pub fn outbox_delivered(&self, id: i64, at: Timestamp) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1 WHERE id = ?1 AND delivered_at IS NULL",
            )?
            .execute(params![id, at.0])?;
        Ok(n == 1)
    }

    /// A delivery failed: try again at `retry_at`.
    pub fn outbox_failed(&self, id: i64, error: &str, retry_at: Timestamp) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3
                 WHERE id = ?1 AND delivered_at IS NULL",
            )?
            .execute(params![id, error, retry_at.0])?;
        Ok(n == 1)
    }

    /// Records a webhook delivery's content key; false if it was seen before (a replay or a duplicate).
    pub fn first_sighting(&self, key: &str, at: Timestamp) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached("INSERT OR IGNORE INTO webhook_seen (key, at) VALUES (?1, ?2)")?
            .execute(params![key, at.0])?;
        Ok(n == 1)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.tx
            .prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2")?
            .execute(params![key, value])?;
        Ok(())
    }

    /// Keeps an agent's progress lines for a task, and only the newest `keep` of them.
    pub fn add_progress(
        &self,
        task: crate::core::TaskId,
        attempt: u32,
        lines: &[String],
        at: Timestamp,
        keep: usize,
    ) -> Result<()> {
        let mut insert =
            self.tx.prepare_cached("INSERT INTO progress (task_id, attempt, at, line) VALUES (?1, ?2, ?3, ?4)")?;
        for line in lines {
            insert.execute(params![task.0, attempt, at.0, line])?;
        }
        self.tx
            .prepare_cached(
                "DELETE FROM progress WHERE task_id = ?1 AND id <= (SELECT id FROM progress WHERE task_id = ?1
                 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![task.0, keep as i64])?;
        Ok(())
    }

    /// Records an agent's heartbeat. Not an event: too frequent to log, and only liveness depends on it.
    pub fn touch_agent(&self, agent: AgentId, at: Timestamp) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached("UPDATE agents SET last_heartbeat_at = ?2 WHERE id = ?1")?
            .execute(params![agent.0, at.0])?;
        Ok(n == 1)
    }
}

fn insert_event(conn: &Connection, event: &Event) -> Result<i64> {
    let payload = serde_json::to_string(event).map_err(|e| StoreError::Decode(e.to_string()))?;
    conn.prepare_cached("INSERT INTO events (at, kind, task_id, agent_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![event.at().0, event.kind(), event.task().map(|t| t.0), event.agent().map(|a| a.0), payload])?;
    Ok(conn.last_insert_rowid())
}

/// Applies one event to the stored projection it belongs to; returns the effects of a task's change.
fn project(conn: &Connection, cache: &super::TaskCache, event: &Event) -> Result<Vec<Effect>> {
    if let Some(id) = event.task() {
        let cached = cache.borrow().get(&id).cloned();
        let before = match cached {
            Some(t) => Some(t),
            None => load_task(conn, id)?,
        };
        let after = match (&before, event) {
            (Some(t), _) => {
                let mut t = t.clone();
                t.apply(event)?;
                t
            }
            (None, Event::TaskQueued { .. }) => Task::queued(event).expect("a TaskQueued event makes a task"),
            (None, _) => {
                return Err(StoreError::Decode(format!("`{}` for unknown task {id}", event.kind())));
            }
        };
        // A task new to the table has no lease row yet.
        let no_lease = None;
        save_task(conn, &after, Some(before.as_ref().map_or(&no_lease, |b| &b.lease)))?;
        let effects = effects_of(before.as_ref(), &after, event);
        cache.borrow_mut().insert(id, after);
        return Ok(effects);
    }
    if let Some(id) = event.agent() {
        let agent = match load_agent(conn, id)? {
            Some(mut a) => {
                a.apply(event)?;
                a
            }
            None => Agent::registered(event)
                .ok_or_else(|| StoreError::Decode(format!("`{}` for unknown agent {id}", event.kind())))?,
        };
        save_agent(conn, &agent, event.at())?;
    }
    Ok(Vec::new())
}

pub(super) fn load_task(conn: &Connection, id: TaskId) -> Result<Option<Task>> {
    let data: Option<String> =
        conn.prepare_cached("SELECT data FROM tasks WHERE id = ?1")?.query_row([id.0], |r| r.get(0)).optional()?;
    data.map(|d| decode(&d)).transpose()
}

pub(super) fn load_agent(conn: &Connection, id: AgentId) -> Result<Option<Agent>> {
    let data: Option<String> =
        conn.prepare_cached("SELECT data FROM agents WHERE id = ?1")?.query_row([id.0], |r| r.get(0)).optional()?;
    data.map(|d| decode(&d)).transpose()
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(data: &str) -> Result<T> {
    serde_json::from_str(data).map_err(|e| StoreError::Decode(e.to_string()))
}

/// Writes a task's row and its lease row (or removes the lease) so both say the same thing.
/// `lease_before` (the lease as stored, if known) spares the lease row's write when it did not change.
pub(super) fn save_task(conn: &Connection, t: &Task, lease_before: Option<&Option<crate::core::Lease>>) -> Result<()> {
    let data = serde_json::to_string(t).map_err(|e| StoreError::Decode(e.to_string()))?;
    let needs: Vec<&str> = t.spec.needs.iter().map(String::as_str).collect();
    conn.prepare_cached(
        "INSERT INTO tasks (id, repo, issue, state, priority, queued_at, not_before, attempt, needs, pin, updated_at, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT(id) DO UPDATE SET state = ?4, priority = ?5, queued_at = ?6, not_before = ?7, attempt = ?8,
             needs = ?9, pin = ?10, updated_at = ?11, data = ?12",
    )?
    .execute(params![
        t.id.0,
        t.issue.repo.as_str(),
        t.issue.number as i64,
        t.state.as_str(),
        t.spec.priority.rank(),
        t.queued_at.0,
        t.not_before.map(|n| n.0),
        t.attempt,
        needs.join("\n"),
        t.spec.agent.as_ref().map(|a| a.as_str()),
        t.updated_at.0,
        data,
    ])?;
    if lease_before == Some(&t.lease) {
        return Ok(());
    }
    match &t.lease {
        Some(l) => conn
            .prepare_cached(
                "INSERT INTO leases (task_id, agent_id, attempt, assigned_at, start_by, started_at, deadline, request_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(task_id) DO UPDATE SET agent_id = ?2, attempt = ?3, assigned_at = ?4, start_by = ?5,
                     started_at = ?6, deadline = ?7, request_key = ?8",
            )?
            .execute(params![
                t.id.0,
                l.agent.0,
                l.attempt,
                l.assigned_at.0,
                l.start_by.0,
                l.started_at.map(|s| s.0),
                l.deadline.0,
                l.request_key.as_deref(),
            ])?,
        None => conn.prepare_cached("DELETE FROM leases WHERE task_id = ?1")?.execute([t.id.0])?,
    };
    Ok(())
}

/// Writes an agent's row; a new agent's first heartbeat is its registration.
pub(super) fn save_agent(conn: &Connection, a: &Agent, at: Timestamp) -> Result<()> {
    let data = serde_json::to_string(a).map_err(|e| StoreError::Decode(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO agents (id, name, state, token_hash, updated_at, data, last_heartbeat_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(id) DO UPDATE SET name = ?2, state = ?3, token_hash = ?4, updated_at = ?5, data = ?6",
    )?
    .execute(params![a.id.0, a.name.as_str(), a.state.as_str(), a.token_hash, a.updated_at.0, data, at.0])?;
    Ok(())
}
