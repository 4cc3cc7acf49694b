//! Appending to the log and keeping the projections (tasks, agents, leases) in step, in one transaction.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Result, StoreError, WriteTx};
use crate::core::{Agent, AgentId, Effect, Event, Lease, Task, TaskId, Timestamp, agent_effects_of, effects_of};

/// What an operator's retry or drop of an outbox row found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxChange {
    /// Retried or dropped, as asked; the row goes to `destination` (as the row names it: an operator can drop a
    /// row from a newer forgefleet whose destination this one does not know).
    Done {
        destination: String,
    },
    NotFound,
    /// Delivered already: nothing to retry or drop.
    Delivered,
    /// Dropped already (a drop); a retry takes dropped rows too.
    Dropped,
    /// Not dead: it is tried on its own (a retry).
    Waiting,
}

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
        let mut effects = project(&self.tx, self.cache, event)?;
        effects.retain(|e| e.chat_kind().is_none_or(|kind| self.chat.is_some_and(|c| c.contains(kind))));
        for effect in &effects {
            self.enqueue(effect, Some(seq), event.at())?;
        }
        Ok(Appended { seq, effects })
    }

    /// Queues a side effect for delivery; `cause` is the event behind it, if any. The row keeps the Forgejo id
    /// of the issue as its task knows it now, so that it never lands on another issue with the same number.
    pub fn enqueue(&self, effect: &Effect, cause: Option<i64>, at: Timestamp) -> Result<i64> {
        let payload = encode(effect)?;
        self.tx
            .prepare_cached(
                "INSERT INTO outbox (event_seq, kind, payload, created_at, next_attempt_at, issue, issue_id, destination)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5,
                         (SELECT json_extract(data, '$.issue_id') FROM tasks WHERE repo = ?6 AND issue = ?7), ?8)",
            )?
            .execute(params![
                cause,
                effect.kind(),
                payload,
                at.0,
                effect.ordered_issue().map(ToString::to_string),
                effect.issue().map(|i| i.repo.as_str()),
                effect.issue().map(|i| i.number as i64),
                effect.destination().as_str()
            ])?;
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

    /// A delivery that can never succeed: it is not tried again until an operator says so, and no longer holds
    /// back later deliveries to its issue.
    pub fn outbox_dead(&self, id: i64, error: &str, at: Timestamp) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, dead_at = ?3
                 WHERE id = ?1 AND delivered_at IS NULL AND dead_at IS NULL",
            )?
            .execute(params![id, error, at.0])?;
        Ok(n == 1)
    }

    /// An operator's retry of a dead (or dropped) delivery: tried again now, with its count of tries reset.
    pub fn outbox_retry(&self, id: i64, at: Timestamp) -> Result<OutboxChange> {
        self.outbox_change(
            id,
            "UPDATE outbox SET dead_at = NULL, dropped_at = NULL, attempts = 0, next_attempt_at = ?2
             WHERE id = ?1 AND delivered_at IS NULL AND dead_at IS NOT NULL",
            at,
        )
    }

    /// An operator gives up on a delivery that waits or is dead: it is kept, marked, and never tried again.
    pub fn outbox_drop(&self, id: i64, at: Timestamp) -> Result<OutboxChange> {
        self.outbox_change(
            id,
            "UPDATE outbox SET dead_at = COALESCE(dead_at, ?2), dropped_at = ?2
             WHERE id = ?1 AND delivered_at IS NULL AND dropped_at IS NULL",
            at,
        )
    }

    fn outbox_change(&self, id: i64, sql: &str, at: Timestamp) -> Result<OutboxChange> {
        let changed = self.tx.prepare_cached(sql)?.execute(params![id, at.0])? == 1;
        type Found = (Option<i64>, Option<i64>, Option<i64>, String);
        let row: Option<Found> = self
            .tx
            .prepare_cached("SELECT delivered_at, dead_at, dropped_at, destination FROM outbox WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        Ok(match row {
            None => OutboxChange::NotFound,
            Some((.., destination)) if changed => OutboxChange::Done { destination },
            Some((Some(_), ..)) => OutboxChange::Delivered,
            Some((None, _, Some(_), _)) => OutboxChange::Dropped,
            Some((None, _, None, _)) => OutboxChange::Waiting,
        })
    }

    /// Records a webhook delivery's content key; false if it was seen before (a replay or a duplicate).
    pub fn first_sighting(&self, key: &str, at: Timestamp) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached("INSERT OR IGNORE INTO webhook_seen (key, at) VALUES (?1, ?2)")?
            .execute(params![key, at.0])?;
        Ok(n == 1)
    }

    /// Forgets the content keys first seen before `before`: the table would otherwise grow with every delivery
    /// for ever. Returns how many were forgotten.
    pub fn prune_seen(&self, before: Timestamp) -> Result<usize> {
        Ok(self.tx.prepare_cached("DELETE FROM webhook_seen WHERE at < ?1")?.execute([before.0])?)
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
    let payload = encode(event)?;
    conn.prepare_cached("INSERT INTO events (at, kind, task_id, agent_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![event.at().0, event.kind(), event.task().map(|t| t.0), event.agent().map(|a| a.0), payload])?;
    Ok(conn.last_insert_rowid())
}

/// Applies one event to the stored projection it belongs to; returns the effects of a task's change.
fn project(conn: &Connection, cache: &super::TxCache, event: &Event) -> Result<Vec<Effect>> {
    if let Some(id) = event.task() {
        let before = super::cached(Some(&cache.tasks), id, || load_task(conn, id))?;
        let after = match (&before, event) {
            (Some(t), _) => {
                let mut t = Task::clone(t);
                t.apply(event)?;
                t
            }
            (None, Event::TaskQueued { .. }) => Task::queued(event).expect("a TaskQueued event makes a task"),
            (None, _) => {
                return Err(StoreError::Decode(format!("`{}` for unknown task {id}", event.kind())));
            }
        };
        save_task(conn, &after, before.as_deref())?;
        let from = before.as_ref().map(|b| b.state);
        if from != Some(after.state) {
            let lease = after.lease.as_ref().or(before.as_ref().and_then(|b| b.lease.as_ref()));
            let agent = match lease {
                Some(l) => super::cached(Some(&cache.agents), l.agent, || load_agent(conn, l.agent))?
                    .map(|a| a.name.to_string()),
                None => None,
            };
            cache.transitions.borrow_mut().push(super::Transition {
                task: id,
                issue: after.issue.clone(),
                from,
                to: after.state,
                // The attempt the change is about: the lease's (a retry's new number comes with its assignment).
                attempt: lease.map_or(after.attempt, |l| l.attempt),
                agent,
            });
        }
        let effects = effects_of(before.as_deref(), &after, event);
        cache.tasks.borrow_mut().insert(id, Arc::new(after));
        return Ok(effects);
    }
    if let Some(id) = event.agent() {
        let agent = match super::cached(Some(&cache.agents), id, || load_agent(conn, id))? {
            Some(a) => {
                let mut a = Agent::clone(&a);
                a.apply(event)?;
                a
            }
            None => Agent::registered(event)
                .ok_or_else(|| StoreError::Decode(format!("`{}` for unknown agent {id}", event.kind())))?,
        };
        save_agent(conn, &agent, event.at())?;
        cache.agents.borrow_mut().insert(id, Arc::new(agent));
        return Ok(agent_effects_of(event));
    }
    Ok(Vec::new())
}

pub(super) fn load_task(conn: &Connection, id: TaskId) -> Result<Option<Task>> {
    conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?
        .query_row([id.0], |r| Ok(task_from_row(r, 0)))
        .optional()?
        .transpose()
}

/// The columns a whole task is read from, in the order `task_from_row` expects them.
pub(super) const TASK_COLUMNS: &str = "data, title, body";

/// A task from its row's `TASK_COLUMNS`, starting at column `at`.
pub(super) fn task_from_row(row: &rusqlite::Row<'_>, at: usize) -> Result<Task> {
    let data = row.get_ref(at)?.as_str().map_err(|e| StoreError::Decode(e.to_string()))?;
    let mut task: Task = decode(data)?;
    task.title = row.get(at + 1)?;
    task.body = row.get(at + 2)?;
    Ok(task)
}

/// A task as its row's `data` holds it: everything but the issue text, which has columns of its own.
/// Mirrors `Task` field by field (a test checks that they say the same).
#[derive(serde::Serialize)]
struct StoredTask<'a> {
    id: TaskId,
    issue: &'a crate::core::IssueRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    issue_id: Option<i64>,
    labels: &'a [String],
    spec: &'a crate::core::TaskSpec,
    state: crate::core::TaskState,
    attempt: u32,
    retries: &'a std::collections::BTreeMap<crate::core::FailureClass, u32>,
    not_before: Option<Timestamp>,
    queued_at: Timestamp,
    updated_at: Timestamp,
    lease: &'a Option<Lease>,
    last_failure: &'a Option<crate::core::task::Failure>,
    receipt: &'a Option<crate::core::Receipt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    validation: Option<&'a crate::core::Validation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pushed_branch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<&'a crate::core::AwaitedChecks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pull_end: Option<&'a crate::core::PullEnd>,
    #[serde(skip_serializing_if = "Option::is_none")]
    follow_up: Option<&'a crate::core::FollowUp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conflict: Option<&'a crate::core::PullConflict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    question: Option<&'a crate::core::Question>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_session: Option<&'a crate::core::LastSession>,
}

/// The `data` column of a task's row: the task without its title and body. Public so that benchmarks write
/// exactly the bytes the store writes.
pub fn encode_task(t: &Task) -> String {
    let stored = StoredTask {
        id: t.id,
        issue: &t.issue,
        issue_id: t.issue_id,
        labels: &t.labels,
        spec: &t.spec,
        state: t.state,
        attempt: t.attempt,
        retries: &t.retries,
        not_before: t.not_before,
        queued_at: t.queued_at,
        updated_at: t.updated_at,
        lease: &t.lease,
        last_failure: &t.last_failure,
        receipt: &t.receipt,
        validation: t.validation.as_ref(),
        pushed_branch: t.pushed_branch.as_deref(),
        checks: t.checks.as_ref(),
        pull_end: t.pull_end.as_ref(),
        follow_up: t.follow_up.as_ref(),
        conflict: t.conflict.as_ref(),
        question: t.question.as_ref(),
        last_session: t.last_session.as_ref(),
    };
    encode(&stored).expect("a task always serialises")
}

pub(super) fn load_agent(conn: &Connection, id: AgentId) -> Result<Option<Agent>> {
    let data: Option<String> =
        conn.prepare_cached("SELECT data FROM agents WHERE id = ?1")?.query_row([id.0], |r| r.get(0)).optional()?;
    data.map(|d| decode(&d)).transpose()
}

/// JSON text of a row's value. Sized for a typical row up front: growing the buffer step by step cost more
/// than writing it.
fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    let mut buf = Vec::with_capacity(1024);
    serde_json::to_writer(&mut buf, value).map_err(|e| StoreError::Decode(e.to_string()))?;
    // serde_json writes UTF-8 only.
    String::from_utf8(buf).map_err(|e| StoreError::Decode(e.to_string()))
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(data: &str) -> Result<T> {
    serde_json::from_str(data).map_err(|e| StoreError::Decode(e.to_string()))
}

/// Writes a task's row and its lease row (or removes the lease) so both say the same thing. `before` is the
/// task as stored (None: it has no row yet): it decides between insert and update, and spares the lease
/// row's write when the lease did not change.
pub(super) fn save_task(conn: &Connection, t: &Task, before: Option<&Task>) -> Result<()> {
    use rusqlite::ToSql;
    let data = encode_task(t);
    let needs = t.spec.needs.iter().map(String::as_str).collect::<Vec<_>>().join("\n");
    let (state, priority, queued_at, not_before) =
        (t.state.as_str(), t.spec.priority.rank(), t.queued_at.0, t.not_before.map(|n| n.0));
    let pin = t.spec.agent.as_ref().map(|a| a.as_str());
    // What every step may change, as ?1..?10 of both statements.
    let changing: [&dyn ToSql; 10] =
        [&t.id.0, &state, &priority, &queued_at, &not_before, &t.attempt, &needs, &pin, &t.updated_at.0, &data];
    match before {
        None => {
            let (repo, number) = (t.issue.repo.as_str(), t.issue.number as i64);
            let fixed: [&dyn ToSql; 4] = [&repo, &number, &t.title, &t.body];
            conn.prepare_cached(
                "INSERT INTO tasks (id, state, priority, queued_at, not_before, attempt, needs, pin, updated_at, data,
                     repo, issue, title, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?
            .execute(&[&changing[..], &fixed[..]].concat()[..])?
        }
        // The issue a task is for never changes: its columns (and their unique index) are left alone, and the
        // text is written only when the issue was edited.
        Some(b) => {
            if b.title != t.title || b.body != t.body {
                conn.prepare_cached("UPDATE tasks SET title = ?2, body = ?3 WHERE id = ?1")?
                    .execute(params![t.id.0, t.title, t.body])?;
            }
            conn.prepare_cached(
                "UPDATE tasks SET state = ?2, priority = ?3, queued_at = ?4, not_before = ?5, attempt = ?6,
                     needs = ?7, pin = ?8, updated_at = ?9, data = ?10
                 WHERE id = ?1",
            )?
            .execute(&changing[..])?
        }
    };
    // The leases table holds the slots agents use: a lease released while the task goes on (it waits for CI)
    // stays on the task for the record, but has no row.
    let stored = before.and_then(|b| b.lease.as_ref()).filter(|l| l.holds());
    let lease = t.lease.as_ref().filter(|l| l.holds());
    if stored == lease {
        return Ok(());
    }
    match (lease, stored) {
        (Some(l), None) => conn
            .prepare_cached(
                "INSERT INTO leases (task_id, agent_id, attempt, assigned_at, start_by, started_at, deadline, request_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(lease_params(t.id, l))?,
        (Some(l), Some(_)) => conn
            .prepare_cached(
                "UPDATE leases SET agent_id = ?2, attempt = ?3, assigned_at = ?4, start_by = ?5, started_at = ?6,
                     deadline = ?7, request_key = ?8
                 WHERE task_id = ?1",
            )?
            .execute(lease_params(t.id, l))?,
        (None, _) => conn.prepare_cached("DELETE FROM leases WHERE task_id = ?1")?.execute([t.id.0])?,
    };
    Ok(())
}

fn lease_params(task: TaskId, l: &Lease) -> impl rusqlite::Params + '_ {
    (
        task.0,
        l.agent.0,
        l.attempt,
        l.assigned_at.0,
        l.start_by.0,
        l.started_at.map(|s| s.0),
        l.deadline.0,
        l.request_key.as_deref(),
    )
}

/// Writes an agent's row; a new agent's first heartbeat is its registration.
pub(super) fn save_agent(conn: &Connection, a: &Agent, at: Timestamp) -> Result<()> {
    let data = encode(a)?;
    conn.prepare_cached(
        "INSERT INTO agents (id, name, state, token_hash, updated_at, data, last_heartbeat_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(id) DO UPDATE SET name = ?2, state = ?3, token_hash = ?4, updated_at = ?5, data = ?6",
    )?
    .execute(params![a.id.0, a.name.as_str(), a.state.as_str(), a.token_hash, a.updated_at.0, data, at.0])?;
    Ok(())
}
