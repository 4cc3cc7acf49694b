//! The engine on its own thread: commands arrive over a channel and are committed in groups.

use std::thread;

use tokio::sync::{mpsc, oneshot, watch};

use super::{BatchObserver, Command, Engine, EngineError, Reply};

/// How many waiting commands one transaction takes at most. Larger groups amortise the commit; this bound
/// keeps the wait of the first command in a group short.
const MAX_GROUP: usize = 256;

type Envelope = (Command, oneshot::Sender<Result<Reply, EngineError>>);

/// Talks to the engine thread. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Envelope>,
    queue_changed: watch::Receiver<u64>,
}

impl EngineHandle {
    /// Sends a command and waits for its reply, which comes only after its transaction committed.
    pub async fn send(&self, cmd: Command) -> Result<Reply, EngineError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.tx
            .send((cmd, reply_tx))
            .await
            .map_err(|_| EngineError::Stopped)?;
        reply_rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Changes whenever work may have become available: long-polling agents wait on it.
    pub fn queue_changed(&self) -> watch::Receiver<u64> {
        self.queue_changed.clone()
    }
}

/// Starts the engine on a dedicated thread (SQLite is blocking; it stays off the async runtime).
/// The thread ends when every handle is dropped.
pub fn spawn(
    mut engine: Engine,
    observer: impl BatchObserver,
) -> (EngineHandle, thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Envelope>(4096);
    let (changed_tx, changed_rx) = watch::channel(0u64);
    let join = thread::Builder::new()
        .name("forgefleet-engine".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let may_queue = batch.iter().any(|(c, _)| c.may_queue());
                let (cmds, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let replies = engine.execute_observed(cmds, &observer);
                if may_queue {
                    changed_tx.send_modify(|g| *g = g.wrapping_add(1));
                }
                for (reply, sender) in replies.into_iter().zip(senders) {
                    let _ = sender.send(reply);
                }
            }
        })
        .expect("spawning the engine thread");
    (
        EngineHandle {
            tx,
            queue_changed: changed_rx,
        },
        join,
    )
}
