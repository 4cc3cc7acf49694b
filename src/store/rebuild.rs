//! `store rebuild`: recompute every projection from the log alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::projection::{decode, save_agent, save_task};
use super::{Result, Store, StoreError};
use crate::core::{Agent, AgentId, Event, Task, TaskId};

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub events: u64,
    pub tasks: u64,
    pub agents: u64,
    pub elapsed: Duration,
}

impl Store {
    /// Replaces the tasks, agents and leases tables with what the event log says, in one transaction.
    /// The log is folded in memory through the same `apply` the engine uses, then written once per row, so a
    /// rebuild costs one pass over the log. Heartbeat times and progress lines are not in the log: they are
    /// carried over as they are (progress rows refer to tasks, which the rebuild gives back under the same ids).
    pub fn rebuild(&mut self) -> Result<RebuildReport> {
        let started = Instant::now();
        self.cache.clear();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // The tasks are deleted and written again while `progress` refers to them: the references are checked
        // at the commit, when every task is back (SQLite turns this off again when the transaction ends).
        tx.pragma_update(None, "defer_foreign_keys", "ON")?;
        let mut tasks: BTreeMap<TaskId, Task> = BTreeMap::new();
        let mut agents: BTreeMap<AgentId, (Agent, crate::core::Timestamp)> = BTreeMap::new();
        let mut events = 0u64;
        {
            let mut stmt = tx.prepare("SELECT seq, payload FROM events ORDER BY seq")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get(0)?;
                let payload = row.get_ref(1)?.as_str().map_err(|e| StoreError::Decode(e.to_string()))?;
                let event: Event = decode(payload)?;
                fold(&mut tasks, &mut agents, &event).map_err(|e| match e {
                    StoreError::Transition(t) => StoreError::Decode(format!("event {seq} does not apply: {t}")),
                    other => other,
                })?;
                events += 1;
            }
        }
        let heartbeats: BTreeMap<i64, Option<i64>> = {
            let mut stmt = tx.prepare("SELECT id, last_heartbeat_at FROM agents")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        tx.execute_batch("DELETE FROM leases; DELETE FROM tasks; DELETE FROM agents;")?;
        for (agent, first_seen) in agents.values() {
            save_agent(&tx, agent, *first_seen)?;
        }
        for (id, hb) in &heartbeats {
            if let Some(hb) = hb {
                tx.execute("UPDATE agents SET last_heartbeat_at = ?2 WHERE id = ?1", [id, hb])?;
            }
        }
        for task in tasks.values() {
            save_task(&tx, task, None)?;
        }
        tx.commit()?;
        Ok(RebuildReport { events, tasks: tasks.len() as u64, agents: agents.len() as u64, elapsed: started.elapsed() })
    }
}

fn fold(
    tasks: &mut BTreeMap<TaskId, Task>,
    agents: &mut BTreeMap<AgentId, (Agent, crate::core::Timestamp)>,
    event: &Event,
) -> Result<()> {
    if let Some(id) = event.task() {
        match tasks.get_mut(&id) {
            Some(t) => t.apply(event)?,
            None => {
                let t = Task::queued(event)
                    .ok_or_else(|| StoreError::Decode(format!("`{}` for unknown task {id}", event.kind())))?;
                tasks.insert(id, t);
            }
        }
    } else if let Some(id) = event.agent() {
        match agents.get_mut(&id) {
            Some((a, _)) => a.apply(event)?,
            None => {
                let a = Agent::registered(event)
                    .ok_or_else(|| StoreError::Decode(format!("`{}` for unknown agent {id}", event.kind())))?;
                agents.insert(id, (a, event.at()));
            }
        }
    }
    Ok(())
}
