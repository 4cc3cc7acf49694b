//! Reads over the projections: what the engine decides with and what operators look at.

use std::sync::Arc;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::projection::{TASK_COLUMNS, decode, load_agent, load_task, task_from_row};
use super::{ReadView, Result, cached};
use crate::core::queue::{Candidate, Preference, QueueKey, pick_next, preferred_until};
use crate::core::{
    Agent, AgentId, AgentName, AgentState, Destination, Event, IssueRef, Priority, RepoName, Task, TaskId, TaskSpec,
    TaskState, Timestamp,
};

/// A task as listed: enough to show a table without its body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSummary {
    pub id: TaskId,
    pub issue: String,
    pub title: String,
    pub state: TaskState,
    pub priority: Priority,
    pub attempt: u32,
    pub agent: Option<String>,
    pub not_before: Option<String>,
    pub updated_at: String,
}

/// An agent with what is derived from other tables.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub agent: Agent,
    pub running: u32,
    pub last_heartbeat_at: Option<Timestamp>,
}

/// A side effect waiting to be delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub destination: Destination,
    pub event_seq: Option<i64>,
    pub kind: String,
    pub payload: String,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    /// Forgejo's id of the issue it is for, when its task knew it.
    pub issue_id: Option<i64>,
}

/// The outbox as an operator needs to see it: deliveries that wait (Forgejo down, a permission missing) are
/// otherwise only in the logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxHealth {
    /// Side effects not delivered yet.
    pub waiting: u64,
    /// Of those, how many each destination has (`destination` as the outbox writes it); only those that have any.
    pub waiting_by_destination: std::collections::BTreeMap<String, u64>,
    /// Of those, the ones that failed at least once.
    pub failing: u64,
    /// When the oldest waiting one was written.
    pub oldest: Option<Timestamp>,
    /// The waiting delivery that failed most often.
    pub worst: Option<FailingDelivery>,
    /// Dead letters: deliveries that can never succeed, stopped until an operator retries or drops them
    /// (`forgefleet outbox`). Not counted in `waiting`.
    pub dead: u64,
    /// The dead letters of each destination (`destination` as the outbox writes it); only those that have any.
    pub dead_by_destination: std::collections::BTreeMap<String, u64>,
}

/// One undelivered side effect, as `forgefleet outbox list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    /// Where it goes (`forgejo`, `matrix`), as the row says: a row from a newer forgefleet shows what it names.
    pub destination: String,
    pub kind: String,
    /// `owner/name#number`.
    pub issue: Option<String>,
    pub attempts: u32,
    pub created_at: Timestamp,
    /// When it is tried next (a waiting one).
    pub next_attempt_at: Timestamp,
    /// When it was given up on (a dead letter).
    pub dead_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailingDelivery {
    pub id: i64,
    pub destination: String,
    pub kind: String,
    pub attempts: u32,
    pub last_error: String,
}

/// A lease that ran out: the agent never acknowledged in time, or the task passed its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredLease {
    pub task: TaskId,
    pub attempt: u32,
    pub agent: AgentId,
    pub started: bool,
}

impl ReadView<'_> {
    pub fn task(&self, id: TaskId) -> Result<Option<Task>> {
        Ok(self.task_shared(id)?.map(Arc::unwrap_or_clone))
    }

    /// The task, shared with the write transaction's cache: no copy when it was read before.
    pub fn task_shared(&self, id: TaskId) -> Result<Option<Arc<Task>>> {
        cached(self.cache.map(|c| &c.tasks), id, || load_task(self.conn, id))
    }

    pub fn task_by_issue(&self, issue: &IssueRef) -> Result<Option<Task>> {
        self.conn
            .prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE repo = ?1 AND issue = ?2"))?
            .query_row(params![issue.repo.as_str(), issue.number as i64], |r| Ok(task_from_row(r, 0)))
            .optional()?
            .transpose()
    }

    /// Tasks, newest change first, optionally of one state. `agent` is the lease holder's name, or for a
    /// finished task the agent its last attempt was given to.
    pub fn tasks(&self, state: Option<TaskState>, limit: u32) -> Result<Vec<TaskSummary>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.name, t.data, t.title, '' FROM tasks t
             LEFT JOIN leases l ON l.task_id = t.id LEFT JOIN agents a ON a.id = l.agent_id
             WHERE ?1 IS NULL OR t.state = ?1 ORDER BY t.updated_at DESC, t.id DESC LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![state.map(|s| s.as_str()), limit])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            // A list shows no bodies: the body column is not read.
            let (mut agent, t): (Option<String>, Task) = (row.get(0)?, task_from_row(row, 1)?);
            if let (None, Some(l)) = (&agent, &t.lease) {
                // A lease released while the task waits for CI: the agent did the work all the same.
                agent = self.agent(l.agent)?.map(|a| a.name.to_string());
            }
            if agent.is_none() && t.state.is_terminal() {
                agent = self.did_attempt(t.id, t.attempt)?.map(|a| a.name.to_string());
            }
            out.push(TaskSummary {
                id: t.id,
                issue: t.issue.to_string(),
                title: t.title,
                state: t.state,
                priority: t.spec.priority,
                attempt: t.attempt,
                agent,
                not_before: t.not_before.map(|n| n.to_rfc3339()),
                updated_at: t.updated_at.to_rfc3339(),
            });
        }
        Ok(out)
    }

    /// Attempts that failed since `since`, by failure class (most first): what `/fleet status` reports.
    pub fn failures_since(&self, since: Timestamp) -> Result<Vec<(String, u64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT json_extract(payload, '$.class') AS class, count(*) FROM events
             WHERE kind = 'attempt_failed' AND at >= ?1 GROUP BY class ORDER BY count(*) DESC, class",
        )?;
        let rows = stmt.query_map(params![since.0], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The log of one task, oldest first, with sequence numbers.
    pub fn task_events(&self, id: TaskId) -> Result<Vec<(i64, Event)>> {
        let mut stmt = self.conn.prepare_cached("SELECT seq, payload FROM events WHERE task_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([id.0], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|r| {
            let (seq, payload) = r?;
            Ok((seq, decode(&payload)?))
        })
        .collect()
    }

    /// The agent an attempt was given to (the last one, if it was given more than once): who did a finished
    /// task, when its lease is gone.
    pub fn did_attempt(&self, task: TaskId, attempt: u32) -> Result<Option<Agent>> {
        let id: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT json_extract(payload, '$.agent') FROM events WHERE task_id = ?1 AND kind = 'task_assigned'
                 AND json_extract(payload, '$.attempt') = ?2 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![task.0, attempt], |r| r.get(0))
            .optional()?;
        match id {
            Some(id) => self.agent(AgentId(id)),
            None => Ok(None),
        }
    }

    /// Another completed task of `repo` whose receipt names pull request `pr`, if any. Reads the projection (one
    /// pass over that repository's task rows; the log would cost a pass over all their events): a task queued
    /// again after its completion starts afresh and no longer counts.
    pub fn completed_with_pull(&self, repo: &RepoName, pr: u64, except: TaskId) -> Result<Option<TaskId>> {
        let id: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT id FROM tasks WHERE repo = ?1 AND id != ?3 AND state = 'completed'
                 AND json_extract(data, '$.receipt.pr_number') = ?2 ORDER BY id LIMIT 1",
            )?
            .query_row(params![repo.as_str(), pr as i64, except.0], |r| r.get(0))
            .optional()?;
        Ok(id.map(TaskId))
    }

    /// The task still `validating`, its receipt checked, that waits for the CI of pull request `pr` of `repo`.
    pub fn awaiting_checks_of_pull(&self, repo: &RepoName, pr: u64) -> Result<Option<TaskId>> {
        self.task_of_pull("state = 'validating' AND json_extract(data, '$.checks.pr_number') = ?2", repo, pr)
    }

    /// The task of `repo` working a round of changes on pull request `pr` right now (not completed, failed or
    /// cancelled: `TaskState::is_terminal`'s states, as `active_issues` spells them too), if any.
    pub fn in_round_on_pull(&self, repo: &RepoName, pr: u64) -> Result<Option<TaskId>> {
        self.task_of_pull(
            "state NOT IN ('completed', 'failed', 'cancelled') AND json_extract(data, '$.follow_up.pr_number') = ?2",
            repo,
            pr,
        )
    }

    /// The first task of `repo` that `condition` (on `?2`, the pull request's number) picks.
    fn task_of_pull(&self, condition: &str, repo: &RepoName, pr: u64) -> Result<Option<TaskId>> {
        let sql = format!("SELECT id FROM tasks WHERE repo = ?1 AND {condition} ORDER BY id LIMIT 1");
        let id: Option<i64> =
            self.conn.prepare_cached(&sql)?.query_row(params![repo.as_str(), pr as i64], |r| r.get(0)).optional()?;
        Ok(id.map(TaskId))
    }

    pub fn agent(&self, id: AgentId) -> Result<Option<Agent>> {
        Ok(self.agent_shared(id)?.map(Arc::unwrap_or_clone))
    }

    /// The agent, shared with the write transaction's cache: no copy when it was read before.
    pub fn agent_shared(&self, id: AgentId) -> Result<Option<Arc<Agent>>> {
        cached(self.cache.map(|c| &c.agents), id, || load_agent(self.conn, id))
    }

    pub fn agent_by_name(&self, name: &AgentName) -> Result<Option<Agent>> {
        self.agent_where("name", name.as_str())
    }

    pub fn agent_by_token_hash(&self, hash: &str) -> Result<Option<Agent>> {
        self.agent_where("token_hash", hash)
    }

    fn agent_where(&self, column: &str, value: &str) -> Result<Option<Agent>> {
        let sql = format!("SELECT data FROM agents WHERE {column} = ?1");
        let data: Option<String> = self.conn.prepare_cached(&sql)?.query_row([value], |r| r.get(0)).optional()?;
        data.map(|d| decode(&d)).transpose()
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT a.data, a.last_heartbeat_at, (SELECT COUNT(*) FROM leases l WHERE l.agent_id = a.id)
             FROM agents a ORDER BY a.name",
        )?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, u32>(2)?)))?;
        rows.map(|r| {
            let (data, hb, running) = r?;
            Ok(AgentRow { agent: decode(&data)?, running, last_heartbeat_at: hb.map(Timestamp) })
        })
        .collect()
    }

    /// How many tasks an agent holds leases on: the slots it uses.
    pub fn running_count(&self, agent: AgentId) -> Result<u32> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM leases WHERE agent_id = ?1")?
            .query_row([agent.0], |r| r.get(0))?)
    }

    /// The tasks an agent holds leases on, with the attempt of each.
    pub fn leases_of(&self, agent: AgentId) -> Result<Vec<(TaskId, u32)>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT task_id, attempt FROM leases WHERE agent_id = ?1 ORDER BY task_id")?;
        let rows = stmt.query_map([agent.0], |r| Ok((TaskId(r.get(0)?), r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The task an agent was given in answer to the request with this idempotency key, if it still holds it.
    pub fn lease_by_request(&self, agent: AgentId, key: &str) -> Result<Option<TaskId>> {
        Ok(self
            .conn
            .prepare_cached("SELECT task_id FROM leases WHERE agent_id = ?1 AND request_key = ?2")?
            .query_row(params![agent.0, key], |r| Ok(TaskId(r.get(0)?)))
            .optional()?)
    }

    /// The newest progress lines of a task, oldest first: (attempt, at, line).
    pub fn progress(&self, task: TaskId, limit: u32) -> Result<Vec<(u32, Timestamp, String)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT attempt, at, line FROM (SELECT id, attempt, at, line FROM progress WHERE task_id = ?1
             ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![task.0, limit], |r| Ok((r.get(0)?, Timestamp(r.get(1)?), r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether any queued task's backoff has passed: if not, no waiting agent can be served.
    pub fn any_ready(&self, now: Timestamp) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE state = 'queued' AND (not_before IS NULL OR not_before <= ?1))",
            )?
            .query_row([now.0], |r| r.get(0))?)
    }

    /// Whether the log shows `agent` was once assigned this attempt of the task.
    pub fn ever_held(&self, task: TaskId, agent: AgentId, attempt: u32) -> Result<bool> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM events WHERE task_id = ?1 AND kind = 'task_assigned'
                 AND json_extract(payload, '$.agent') = ?2 AND json_extract(payload, '$.attempt') = ?3",
            )?
            .query_row(params![task.0, agent.0, attempt], |r| r.get(0))?;
        Ok(n > 0)
    }

    /// The first queued task, in queue order, that `agent` may take now. A task that goes on from another
    /// agent's work is kept for that agent for `prefer_window` while it is online (`LastSession`).
    pub fn next_for(
        &self,
        agent: &Agent,
        running: u32,
        now: Timestamp,
        prefer_window: std::time::Duration,
    ) -> Result<Option<TaskId>> {
        let mut stmt = self.conn.prepare_cached(
            // INDEXED BY: left to itself SQLite picks `tasks_by_state` and sorts the whole queue on every call;
            // walking the queue index in order lets the walk stop at the first fit.
            "SELECT id, priority, queued_at, not_before, needs, pin,
                    json_extract(data, '$.last_session.agent'), json_extract(data, '$.last_session.requeued_at')
             FROM tasks INDEXED BY tasks_queue
             WHERE state = 'queued' ORDER BY priority, queued_at, id",
        )?;
        let mut rows = stmt.query([])?;
        // Rows are decoded one at a time and the walk stops at the first fit, so a deep queue costs
        // only as much as the tasks this agent has to skip.
        let mut failure = None;
        let read = |r: &rusqlite::Row<'_>| candidate_from_row(r, prefer_window);
        let candidates = std::iter::from_fn(|| match rows.next().and_then(|r| r.map(read).transpose()) {
            Ok(c) => c,
            Err(e) => {
                failure = Some(e);
                None
            }
        });
        // Only asked for a task kept for another agent, while its window runs.
        let present = |id: AgentId| matches!(self.agent(id), Ok(Some(a)) if a.state == AgentState::Online);
        let picked = pick_next(candidates, agent, running, now, present);
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(picked),
        }
    }

    /// Leases whose agent did not start in time, or whose task passed its deadline.
    pub fn expired_leases(&self, now: Timestamp) -> Result<Vec<ExpiredLease>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT task_id, attempt, agent_id, started_at IS NOT NULL FROM leases
             WHERE deadline <= ?1 OR (started_at IS NULL AND start_by <= ?1) ORDER BY task_id",
        )?;
        let rows = stmt.query_map([now.0], |r| {
            Ok(ExpiredLease {
                task: TaskId(r.get(0)?),
                attempt: r.get(1)?,
                agent: AgentId(r.get(2)?),
                started: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Online or draining agents not heard from since `cutoff`.
    pub fn silent_agents(&self, cutoff: Timestamp) -> Result<Vec<AgentId>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM agents WHERE state IN ('online', 'draining') AND COALESCE(last_heartbeat_at, 0) < ?1",
        )?;
        let rows = stmt.query_map([cutoff.0], |r| Ok(AgentId(r.get(0)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The earliest moment a queued task's backoff ends after `now`: when waiting agents should look again.
    /// Tasks waiting for their pull request's CI past the deadline of that wait. Few tasks are ever
    /// `validating`, so they are read and looked at.
    pub fn checks_overdue(&self, now: Timestamp) -> Result<Vec<TaskId>> {
        let ids: Vec<TaskId> = {
            let mut stmt = self.conn.prepare_cached("SELECT id FROM tasks WHERE state = 'validating' ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok(TaskId(r.get(0)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::new();
        for id in ids {
            if self.task_shared(id)?.and_then(|t| t.checks.as_ref().map(|c| c.deadline <= now)).unwrap_or(false) {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn next_release(&self, now: Timestamp) -> Result<Option<Timestamp>> {
        let t: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(not_before) FROM tasks WHERE state = 'queued' AND not_before > ?1")?
            .query_row([now.0], |r| r.get(0))?;
        Ok(t.map(Timestamp))
    }

    pub fn counts_by_state(&self) -> Result<Vec<(TaskState, u64)>> {
        let mut stmt = self.conn.prepare_cached("SELECT state, COUNT(*) FROM tasks GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (s, n) = r?;
            if let Some(s) = TaskState::parse(&s) {
                out.push((s, n));
            }
        }
        Ok(out)
    }

    pub fn queue_depth_by_priority(&self) -> Result<Vec<(Priority, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT priority, COUNT(*) FROM tasks WHERE state = 'queued' GROUP BY priority")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, u64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (p, n) = r?;
            if let Some(p) = Priority::from_rank(p) {
                out.push((p, n));
            }
        }
        Ok(out)
    }

    /// The id of the newest outbox row (0 for none): the engine tells the workers when it grows.
    pub fn outbox_last_id(&self) -> Result<i64> {
        Ok(self.conn.prepare_cached("SELECT COALESCE(MAX(id), 0) FROM outbox")?.query_row([], |r| r.get(0))?)
    }

    pub fn event_count(&self) -> Result<u64> {
        Ok(self.conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")?.query_row([], |r| r.get(0))?)
    }

    pub fn next_task_id(&self) -> Result<TaskId> {
        Ok(TaskId(self.conn.prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM tasks")?.query_row([], |r| r.get(0))?))
    }

    pub fn next_agent_id(&self) -> Result<AgentId> {
        Ok(AgentId(
            self.conn.prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM agents")?.query_row([], |r| r.get(0))?,
        ))
    }

    /// A small durable setting, such as a reconciliation cursor.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// Whether a status label change for this issue waits in the outbox.
    pub fn label_write_pending(&self, issue: &IssueRef) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL
                 AND kind = 'set_status_label'
                 AND json_extract(payload, '$.issue.repo') = ?1 AND json_extract(payload, '$.issue.number') = ?2)",
            )?
            .query_row(params![issue.repo.as_str(), issue.number as i64], |r| r.get(0))?)
    }

    /// The issues of a repository whose tasks are not finished.
    pub fn active_issues(&self, repo: &RepoName) -> Result<Vec<u64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT issue FROM tasks WHERE repo = ?1 AND state NOT IN ('completed', 'failed', 'cancelled') ORDER BY issue",
        )?;
        let rows = stmt.query_map([repo.as_str()], |r| r.get::<_, i64>(0))?;
        Ok(rows.map(|r| r.map(|n| n as u64)).collect::<rusqlite::Result<_>>()?)
    }

    /// Every durable setting whose key starts with `prefix`.
    pub fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, value FROM meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key")?;
        let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// What waits in the outbox, what keeps failing, and the delivery that failed most often.
    pub fn outbox_health(&self) -> Result<OutboxHealth> {
        let (waiting, failing, oldest): (u64, Option<u64>, Option<i64>) = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*), SUM(attempts > 0), MIN(created_at) FROM outbox
                 WHERE delivered_at IS NULL AND dead_at IS NULL",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let worst = self
            .conn
            .prepare_cached(
                "SELECT id, destination, kind, attempts, COALESCE(last_error, '') FROM outbox
                 WHERE delivered_at IS NULL AND dead_at IS NULL AND attempts > 0 ORDER BY attempts DESC, id LIMIT 1",
            )?
            .query_row([], |r| {
                Ok(FailingDelivery {
                    id: r.get(0)?,
                    destination: r.get(1)?,
                    kind: r.get(2)?,
                    attempts: r.get(3)?,
                    last_error: r.get(4)?,
                })
            })
            .optional()?;
        let waiting_by_destination = self.count_by_destination(
            "SELECT destination, COUNT(*) FROM outbox
             WHERE delivered_at IS NULL AND dead_at IS NULL GROUP BY destination",
        )?;
        let dead_by_destination = self.count_by_destination(
            "SELECT destination, COUNT(*) FROM outbox
             WHERE delivered_at IS NULL AND dead_at IS NOT NULL AND dropped_at IS NULL GROUP BY destination",
        )?;
        let dead = dead_by_destination.values().sum();
        Ok(OutboxHealth {
            waiting,
            waiting_by_destination,
            failing: failing.unwrap_or(0),
            oldest: oldest.map(Timestamp),
            worst,
            dead,
            dead_by_destination,
        })
    }

    /// `(destination, count)` rows as a map.
    fn count_by_destination(&self, sql: &str) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        Ok(stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?)
    }

    /// Undelivered side effects, dead letters first, then by id; dropped ones are left out.
    pub fn outbox_list(&self, limit: u32) -> Result<Vec<OutboxEntry>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, destination, kind, issue, attempts, created_at, next_attempt_at, dead_at, last_error FROM outbox
             WHERE delivered_at IS NULL AND dropped_at IS NULL ORDER BY dead_at IS NULL, id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(OutboxEntry {
                id: r.get(0)?,
                destination: r.get(1)?,
                kind: r.get(2)?,
                issue: r.get(3)?,
                attempts: r.get(4)?,
                created_at: Timestamp(r.get(5)?),
                next_attempt_at: Timestamp(r.get(6)?),
                dead_at: r.get::<_, Option<i64>>(7)?.map(Timestamp),
                last_error: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Undelivered side effects that are due, oldest first (what waits, whatever the order rule says).
    pub fn outbox_due(&self, now: Timestamp, limit: u32) -> Result<Vec<OutboxRow>> {
        self.outbox_rows(
            "SELECT id, destination, event_seq, kind, payload, attempts, next_attempt_at, issue_id FROM outbox
             WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
            params![now.0, limit],
        )
    }

    /// The side effects for `destination` that may be delivered now, oldest first: due, and the oldest
    /// undelivered one of their issue *in that destination*. A later row for an issue never goes before an
    /// earlier one that waits for its retry, so people read what happened in the order it happened; another
    /// destination's rows hold nothing back (a homeserver that is down never delays a label). A dead letter
    /// holds nothing back either: it may never go.
    pub fn outbox_next(&self, destination: Destination, now: Timestamp, limit: u32) -> Result<Vec<OutboxRow>> {
        self.outbox_rows(
            "SELECT o.id, o.destination, o.event_seq, o.kind, o.payload, o.attempts, o.next_attempt_at, o.issue_id
             FROM outbox o
             WHERE o.destination = ?3 AND o.delivered_at IS NULL AND o.dead_at IS NULL AND o.next_attempt_at <= ?1
               AND NOT EXISTS (SELECT 1 FROM outbox e
                               WHERE e.destination = o.destination AND e.issue = o.issue AND e.id < o.id
                                 AND e.delivered_at IS NULL AND e.dead_at IS NULL)
             ORDER BY o.id LIMIT ?2",
            params![now.0, limit, destination.as_str()],
        )
    }

    fn outbox_rows(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<OutboxRow>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(args, |r| {
            Ok(OutboxRow {
                id: r.get(0)?,
                destination: r.get(1)?,
                event_seq: r.get(2)?,
                kind: r.get(3)?,
                payload: r.get(4)?,
                attempts: r.get(5)?,
                next_attempt_at: Timestamp(r.get(6)?),
                issue_id: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// A destination as the outbox stores it; one this forgefleet does not know is a clear error, not a guess.
impl rusqlite::types::FromSql for Destination {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = value.as_str()?;
        Destination::parse(text).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(
                format!("unknown outbox destination {text:?} (written by a newer forgefleet?)").into(),
            )
        })
    }
}

fn candidate_from_row(r: &rusqlite::Row<'_>, prefer_window: std::time::Duration) -> rusqlite::Result<Candidate> {
    let needs: String = r.get(4)?;
    let pin: Option<String> = r.get(5)?;
    let spec = TaskSpec {
        priority: Priority::from_rank(r.get(1)?).unwrap_or_default(),
        kind: None,
        needs: needs.split('\n').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        agent: pin.and_then(|p| AgentName::parse(&p).ok()),
    };
    let key = QueueKey { priority: spec.priority, queued_at: Timestamp(r.get(2)?), task: TaskId(r.get(0)?) };
    let not_before = r.get::<_, Option<i64>>(3)?.map(Timestamp);
    // `last_session.agent` and `.requeued_at` of the row's task.
    let prefer = match (r.get::<_, Option<i64>>(6)?, r.get::<_, Option<String>>(7)?) {
        (Some(agent), Some(requeued)) => Timestamp::parse_rfc3339(&requeued)
            .and_then(|requeued_at| preferred_until(requeued_at, not_before, prefer_window))
            .map(|until| Preference { agent: AgentId(agent), until }),
        _ => None,
    };
    Ok(Candidate { key, spec, not_before, prefer })
}
