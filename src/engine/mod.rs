//! The serial heart: commands from HTTP, timers, webhooks and chat are applied one at a time, each one's
//! events, projection updates and outbox rows committed together, so nothing races on a task.

pub mod clock;
pub mod command;
pub mod logic;
mod people;
pub mod repo;
mod runner;

#[cfg(test)]
mod tests;

use std::time::Instant;

pub use clock::{Clock, ManualClock, SystemClock};
pub use command::{
    Assignment, Command, CommandOutcome, EngineError, IssueObservation, Registration, Reply, TickReport,
};
pub use logic::EngineSettings;
pub use runner::{EngineHandle, spawn};

use crate::store::Store;

/// Observes each committed batch: how many commands, how many events, how long it took.
pub trait BatchObserver: Send + 'static {
    fn committed(&self, commands: usize, events: u64, elapsed: std::time::Duration);
    /// The batch wrote outbox rows without an event (a confirmation to make, commands to run).
    fn enqueued(&self) {}
}

impl BatchObserver for () {
    fn committed(&self, _: usize, _: u64, _: std::time::Duration) {}
}

/// The engine without a thread: applies commands directly. The runner wraps it; tests and benchmarks use it
/// as it is.
pub struct Engine {
    pub store: Store,
    pub settings: EngineSettings,
    pub clock: Box<dyn Clock>,
}

impl Engine {
    /// The engine over `store`; repository settings read earlier (`fleet.yaml`) are loaded from it. Its start
    /// time (now) begins the agents' grace period (`EngineSettings::start_grace`).
    pub fn new(store: Store, mut settings: EngineSettings, clock: impl Clock) -> Self {
        match repo::RepoSettings::read_all(store.read()) {
            Ok(all) => settings.repos.extend(all),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read repository settings; defaults apply until they are read again")
            }
        }
        settings.started_at = clock.now();
        Self { store, settings, clock: Box::new(clock) }
    }

    /// Applies one command in its own transaction.
    pub fn execute(&mut self, cmd: Command) -> Result<Reply, EngineError> {
        self.execute_batch(vec![cmd]).pop().unwrap_or(Err(EngineError::Stopped))
    }

    /// Applies several commands in one transaction (group commit); a refused command leaves the others in.
    /// If the commit itself fails, every command fails.
    ///
    /// A savepoint per command would isolate failures, but costs as much as the commands' own writes. Almost
    /// every refusal (not found, forbidden, a transition that does not apply) happens before the command writes
    /// anything, so the batch first runs without savepoints; only when a refused command had already written
    /// does it roll back and run again, each command in its own savepoint.
    pub fn execute_batch(&mut self, cmds: Vec<Command>) -> Vec<Result<Reply, EngineError>> {
        if cmds.len() > 1
            && let Ok(replies) = self.run_batch(&cmds, false)
        {
            return replies;
        }
        self.run_batch(&cmds, true).unwrap_or_else(|Retry| failed_all(cmds.len(), "the batch could not be isolated"))
    }

    fn run_batch(&mut self, cmds: &[Command], isolate: bool) -> Result<Vec<Result<Reply, EngineError>>, Retry> {
        let n = cmds.len();
        let mut tx = match self.store.write() {
            Ok(tx) => tx,
            Err(e) => return Ok(failed_all(n, &e.to_string())),
        };
        let mut replies = Vec::with_capacity(n);
        for cmd in cmds {
            let now = self.clock.now();
            let settings = &mut self.settings;
            let reply = if isolate {
                tx.savepoint(|tx| logic::handle(settings, tx, cmd.clone(), now))
            } else {
                let before = tx.total_changes();
                let reply = logic::handle(settings, &tx, cmd.clone(), now);
                if reply.is_err() && tx.total_changes() != before {
                    // A refusal after a write: its writes cannot be told apart from the others' here.
                    let _ = tx.rollback();
                    return Err(Retry);
                }
                reply
            };
            replies.push(reply);
        }
        match tx.commit() {
            Ok(()) => {
                log_transitions(&self.store);
                Ok(replies)
            }
            Err(e) => Ok(failed_all(n, &e.to_string())),
        }
    }

    /// Like `execute_batch`, reporting to `observer`.
    pub fn execute_observed(
        &mut self,
        cmds: Vec<Command>,
        observer: &dyn BatchObserver,
    ) -> Vec<Result<Reply, EngineError>> {
        let started = Instant::now();
        let before = self.store.read().event_count().unwrap_or(0);
        let outbox_before = self.store.read().outbox_last_id().unwrap_or(0);
        let n = cmds.len();
        let replies = self.execute_batch(cmds);
        let after = self.store.read().event_count().unwrap_or(before);
        observer.committed(n, after.saturating_sub(before), started.elapsed());
        if after == before && self.store.read().outbox_last_id().unwrap_or(0) > outbox_before {
            observer.enqueued();
        }
        replies
    }
}

/// One info line per task state change of the transaction that just committed: the task's lifecycle in the
/// server's log.
pub(crate) fn log_transitions(store: &Store) {
    for t in store.take_transitions() {
        let from = t.from.map_or("new", |s| s.as_str());
        let agent = t.agent.as_deref().unwrap_or("-");
        tracing::info!(
            task = %t.task, issue = %t.issue, from, to = t.to.as_str(), attempt = t.attempt, agent,
            "task {} ({}): {from} → {} (attempt {}, agent {agent})", t.task, t.issue, t.to, t.attempt
        );
    }
}

/// A batch must run again with a savepoint per command.
struct Retry;

fn failed_all(n: usize, why: &str) -> Vec<Result<Reply, EngineError>> {
    (0..n)
        .map(|_| Err(EngineError::Store(crate::store::StoreError::Decode(format!("the transaction failed: {why}")))))
        .collect()
}
