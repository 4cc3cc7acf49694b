//! The engine on its own thread: commands arrive over a channel and are committed in groups; agents
//! long-polling for work wait here, in arrival order, and are matched the moment a task fits them.

use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::{Assignment, BatchObserver, Command, Engine, EngineError, Reply, logic};
use crate::core::AgentId;

/// How many waiting commands one transaction takes at most. Larger groups amortise the commit; this bound
/// keeps the wait of the first command in a group short.
const MAX_GROUP: usize = 256;

/// The engine answers every long-poll itself, with a task or, when its wait ends, with none. The caller
/// waits this much longer than the wait it asked for before giving up on an engine that stalled; an answer
/// lost that way is recovered by the agent's retry with the same request key, or by the start timeout.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

type Responder<T> = oneshot::Sender<Result<T, EngineError>>;

enum Envelope {
    Command(Box<Command>, Responder<Reply>),
    /// A long-poll: answered at once if a task fits, else when one does, or never if the wait ends first.
    Wait {
        agent: AgentId,
        request_key: Option<String>,
        until: Instant,
        reply: Responder<Option<Box<Assignment>>>,
    },
}

struct Waiter {
    agent: AgentId,
    request_key: Option<String>,
    until: Instant,
    reply: Responder<Option<Box<Assignment>>>,
}

/// Waiting agents, served in arrival order and expired in deadline order, each without looking at the others:
/// thousands of agents long-poll at once, and a batch must not cost a walk over all of them.
#[derive(Default)]
struct Waiters {
    next_seq: u64,
    by_arrival: std::collections::BTreeMap<u64, Waiter>,
    by_deadline: std::collections::BTreeSet<(Instant, u64)>,
}

impl Waiters {
    fn push(&mut self, w: Waiter) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_deadline.insert((w.until, seq));
        self.by_arrival.insert(seq, w);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(t, _)| *t)
    }

    fn remove(&mut self, seq: u64) -> Option<Waiter> {
        let w = self.by_arrival.remove(&seq)?;
        self.by_deadline.remove(&(w.until, seq));
        Some(w)
    }

    /// Answers "nothing for you" to every waiter whose wait has ended.
    fn expire(&mut self, now: Instant) {
        while let Some(&(until, seq)) = self.by_deadline.first() {
            if until > now {
                break;
            }
            if let Some(w) = self.remove(seq) {
                let _ = w.reply.send(Ok(None));
            }
        }
    }
}

/// Talks to the engine thread. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Envelope>,
    appended: watch::Receiver<u64>,
}

impl EngineHandle {
    /// Changes after every transaction that appended events or wrote outbox rows: workers that act on them
    /// (outbox delivery, receipt checks) wait on it instead of only polling.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.clone()
    }

    /// Waits until events have been appended since `seen` last looked, or `poll` passes, whichever is first.
    /// With the engine gone, only `poll`.
    pub async fn appended_or(seen: &mut watch::Receiver<u64>, poll: Duration) {
        tokio::select! {
            changed = seen.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(poll).await;
                }
            }
            () = tokio::time::sleep(poll) => {}
        }
    }

    /// Sends a command and waits for its reply, which comes only after its transaction committed.
    pub async fn send(&self, cmd: Command) -> Result<Reply, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Envelope::Command(Box::new(cmd), reply)).await.map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Waits up to `wait` for a task that fits `agent`. `None` when the wait ended with nothing to do.
    pub async fn next_assignment(
        &self,
        agent: AgentId,
        request_key: Option<String>,
        wait: Duration,
    ) -> Result<Option<Box<Assignment>>, EngineError> {
        let until = Instant::now() + wait;
        let (reply, rx) = oneshot::channel();
        self.tx.send(Envelope::Wait { agent, request_key, until, reply }).await.map_err(|_| EngineError::Stopped)?;
        match tokio::time::timeout_at((until + ANSWER_GRACE).into(), rx).await {
            Ok(Ok(answer)) => answer,
            // Dropped unanswered after the wait ended: nothing for this agent, not a failure.
            Ok(Err(_)) if Instant::now() >= until => Ok(None),
            Ok(Err(_)) => Err(EngineError::Stopped),
            // Dropping the receiver tells the engine this waiter is gone.
            Err(_) => Ok(None),
        }
    }
}

/// Starts the engine on a dedicated thread (SQLite is blocking; it stays off the async runtime).
/// The thread ends when every handle is dropped.
pub fn spawn(mut engine: Engine, observer: impl BatchObserver) -> (EngineHandle, thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Envelope>(8192);
    let (appended_tx, appended) = watch::channel(0u64);
    let observer = Signalling { inner: observer, appended: appended_tx };
    let join = thread::Builder::new()
        .name("forgefleet-engine".into())
        .spawn(move || {
            // Only to wait for the next command with a deadline: the engine's own work is synchronous.
            let timer = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("engine timer");
            let mut waiters = Waiters::default();
            loop {
                let first = match waiters.next_deadline() {
                    None => rx.blocking_recv(),
                    Some(until) => {
                        match timer.block_on(async { tokio::time::timeout_at(until.into(), rx.recv()).await }) {
                            Ok(received) => received,
                            Err(_) => {
                                waiters.expire(Instant::now());
                                continue;
                            }
                        }
                    }
                };
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let frees_work = batch.iter().any(|e| matches!(e, Envelope::Command(c, _) if c.may_free_work()));
                run_batch(&mut engine, &observer, batch, &mut waiters);
                if frees_work {
                    serve_waiters(&mut engine, &mut waiters);
                }
                waiters.expire(Instant::now());
            }
        })
        .expect("spawning the engine thread");
    (EngineHandle { tx, appended }, join)
}

/// Passes each batch on to the caller's observer and signals the batches that appended events.
struct Signalling<O> {
    inner: O,
    appended: watch::Sender<u64>,
}

impl<O: BatchObserver> BatchObserver for Signalling<O> {
    fn committed(&self, commands: usize, events: u64, elapsed: Duration) {
        self.inner.committed(commands, events, elapsed);
        if events > 0 {
            self.appended.send_modify(|n| *n = n.wrapping_add(events));
        }
    }
    fn enqueued(&self) {
        self.inner.enqueued();
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }
}

enum Pending {
    Command(Responder<Reply>),
    Wait(Waiter),
}

/// Applies a group of commands (long-polls become `NextAssignment`) in one transaction, then answers them.
fn run_batch(engine: &mut Engine, observer: &impl BatchObserver, batch: Vec<Envelope>, waiters: &mut Waiters) {
    let mut cmds = Vec::with_capacity(batch.len());
    let mut pending = Vec::with_capacity(batch.len());
    for envelope in batch {
        match envelope {
            Envelope::Command(cmd, reply) => {
                cmds.push(*cmd);
                pending.push(Pending::Command(reply));
            }
            // Its caller gave up already: do not hand it a task it would never hear of.
            Envelope::Wait { reply, .. } if reply.is_closed() => {}
            Envelope::Wait { agent, request_key, until, reply } => {
                cmds.push(Command::NextAssignment { agent, request_key: request_key.clone() });
                pending.push(Pending::Wait(Waiter { agent, request_key, until, reply }));
            }
        }
    }
    let replies = engine.execute_observed(cmds, observer);
    for (reply, pending) in replies.into_iter().zip(pending) {
        match pending {
            Pending::Command(tx) => {
                let _ = tx.send(reply);
            }
            Pending::Wait(w) => match reply {
                Ok(Reply::Assignment(None)) if Instant::now() < w.until => waiters.push(w),
                Ok(Reply::Assignment(a)) => {
                    let _ = w.reply.send(Ok(a));
                }
                Ok(other) => {
                    let _ = w.reply.send(Err(EngineError::Invalid(format!("unexpected reply {other:?}"))));
                }
                Err(e) => {
                    let _ = w.reply.send(Err(e));
                }
            },
        }
    }
}

/// Offers queued work to waiting agents, longest waiting first, in one transaction. It stops at the first
/// moment nothing is ready, so a crowd of waiters costs nothing when there is nothing to give.
fn serve_waiters(engine: &mut Engine, waiters: &mut Waiters) {
    let now = Instant::now();
    waiters.expire(now);
    if waiters.by_arrival.is_empty() {
        return;
    }
    let clock_now = engine.clock.now();
    let Ok(mut tx) = engine.store.write() else { return };
    let mut served = Vec::new();
    let seqs: Vec<u64> = waiters.by_arrival.keys().copied().collect();
    for seq in seqs {
        if !matches!(tx.read().any_ready(clock_now), Ok(true)) {
            break;
        }
        let Some(w) = waiters.by_arrival.get(&seq) else { continue };
        if w.reply.is_closed() {
            waiters.remove(seq);
            continue;
        }
        let cmd = Command::NextAssignment { agent: w.agent, request_key: w.request_key.clone() };
        let settings = &mut engine.settings;
        match tx.savepoint(|tx| logic::handle(settings, tx, cmd, clock_now)) {
            Ok(Reply::Assignment(Some(a))) => served.push((seq, a)),
            Ok(_) => {}
            Err(e) => {
                if let Some(w) = waiters.remove(seq) {
                    let _ = w.reply.send(Err(e));
                }
            }
        }
    }
    match tx.commit() {
        Ok(()) => {
            super::log_transitions(&engine.store);
            for (seq, a) in served {
                if let Some(w) = waiters.remove(seq) {
                    let _ = w.reply.send(Ok(Some(a)));
                }
            }
        }
        // Their assignments were rolled back: they wait on.
        Err(e) => tracing::error!(error = %e, "matching waiting agents failed to commit"),
    }
}
