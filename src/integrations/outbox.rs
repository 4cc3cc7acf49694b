//! The outbox's delivery loop, the same for every destination: a `Worker` per destination takes that
//! destination's due rows (each issue's in the order they were written), hands each to the destination's
//! `Deliver`, and records the outcome through the engine: delivered, tried again after a doubling wait, or a
//! dead letter an operator retries or drops. Destinations never wait for each other.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::core::Destination;
use crate::engine::{Clock, Command, EngineError, EngineHandle};
use crate::store::{OutboxRow, ReadPool, StoreError};

/// One delivery under way.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// A destination's way of delivering one outbox row. Deliveries must be idempotent: a crash between delivering
/// a row and recording it delivers it again.
pub trait Deliver: Send + Sync {
    fn deliver<'a>(&'a self, row: &'a OutboxRow) -> Delivery<'a>;

    /// How long a row that failed `attempts` times before waits for its next try: each destination may have
    /// its own backoff; the default is `retry_wait`.
    fn backoff(&self, attempts: u32) -> Duration {
        retry_wait(attempts)
    }
}

/// Why a delivery failed, as far as retrying it goes.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The destination refuses it, and trying again will not change that (the thing is gone, or what was sent
    /// is refused). A few tries all the same: a server being restored from a backup answers "gone" for a while.
    #[error("{0}")]
    Refused(String),
    /// The issue under the row's number is not the one it was written for (the repository was deleted and
    /// created again, or moved): delivering would tell strangers about work that is not theirs.
    #[error("{0}")]
    WrongIssue(String),
    /// The outbox row cannot be turned into a delivery (written by a newer forgefleet, or damaged).
    #[error("{0}")]
    Unreadable(String),
    /// The destination asked to be left alone for a while (Matrix's 429 with `retry_after_ms`): tried again
    /// after exactly that long, whatever the destination's backoff.
    #[error("{message} (asked to wait {} ms)", retry_after.as_millis())]
    Throttled { message: String, retry_after: Duration },
    /// Anything else: the destination is down, slow, or says "later". Tried again until it works.
    #[error("{0}")]
    Other(String),
}

impl From<EngineError> for DeliveryError {
    fn from(e: EngineError) -> Self {
        DeliveryError::Other(e.to_string())
    }
}

impl From<StoreError> for DeliveryError {
    fn from(e: StoreError) -> Self {
        DeliveryError::Other(e.to_string())
    }
}

/// Tries before a delivery that fails for good becomes a dead letter. A few, not one: a Forgejo being restored
/// from a backup, or a repository being moved, answers 404 for a while.
pub const DEAD_AFTER: u32 = 5;

/// Rows a worker takes in one pass.
const BATCH: u32 = 50;

impl DeliveryError {
    /// A failure that trying again will not change.
    pub fn is_permanent(&self) -> bool {
        match self {
            DeliveryError::Refused(_) | DeliveryError::Unreadable(_) | DeliveryError::WrongIssue(_) => true,
            DeliveryError::Throttled { .. } | DeliveryError::Other(_) => false,
        }
    }

    /// The wait the destination itself asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            DeliveryError::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// A permanent failure that is certain at once: trying again is pointless.
    pub fn is_final(&self) -> bool {
        matches!(self, DeliveryError::WrongIssue(_))
    }

    /// Whether a row that failed with this on its `attempts + 1`-th try is a dead letter now.
    pub fn is_dead(&self, attempts: u32) -> bool {
        self.is_final() || (self.is_permanent() && attempts + 1 >= DEAD_AFTER)
    }
}

/// The wait before the next try of a failed delivery: 2 s doubling, at most 10 min.
pub fn retry_wait(attempts: u32) -> Duration {
    Duration::from_secs(2u64.saturating_mul(1 << attempts.min(9)).min(600))
}

/// Delivers one destination's rows.
pub struct Worker {
    pub destination: Destination,
    pub deliverer: Arc<dyn Deliver>,
    pub engine: EngineHandle,
    pub reads: ReadPool,
    pub clock: Arc<dyn Clock>,
}

impl Worker {
    /// Delivers what is due for this destination, each issue's rows in the order they were written; returns how
    /// many rows it tried.
    pub async fn deliver_due(&self) -> Result<usize, DeliveryError> {
        let (destination, now) = (self.destination, self.clock.now());
        let rows = self.reads.with(move |r| r.outbox_next(destination, now, BATCH)).await?;
        for row in &rows {
            let outcome = self.deliverer.deliver(row).await;
            let command = match outcome {
                Ok(()) => Command::OutboxDelivered { id: row.id },
                Err(e) if e.is_dead(row.attempts) => {
                    tracing::error!(outbox = row.id, %destination, kind = %row.kind, attempts = row.attempts + 1, error = %e,
                        "delivery can never succeed; kept as a dead letter (`forgefleet outbox list`)");
                    Command::OutboxDead { id: row.id, error: e.to_string() }
                }
                Err(e) => {
                    tracing::warn!(outbox = row.id, %destination, kind = %row.kind, attempts = row.attempts + 1, error = %e,
                        "delivery failed; will retry");
                    let retry_in = e.retry_after().unwrap_or_else(|| self.deliverer.backoff(row.attempts));
                    Command::OutboxFailed { id: row.id, error: e.to_string(), retry_in }
                }
            };
            self.engine.send(command).await?;
        }
        Ok(rows.len())
    }

    /// Runs until aborted: wakes as soon as the engine appends (a new outbox row), and polls every `poll` as the
    /// fallback (retries that come due, a pass that failed).
    pub fn spawn(self, poll: Duration) -> tokio::task::JoinHandle<()> {
        let mut appended = self.engine.appended();
        tokio::spawn(async move {
            loop {
                match self.deliver_due().await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(destination = %self.destination, error = %e, "outbox delivery pass failed")
                    }
                }
                EngineHandle::appended_or(&mut appended, poll).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_double_up_to_ten_minutes() {
        let waits: Vec<u64> = (0..12).map(|n| retry_wait(n).as_secs()).collect();
        assert_eq!(&waits[..5], &[2, 4, 8, 16, 32]);
        assert_eq!(waits[11], 600);
    }

    #[test]
    fn only_a_refusal_that_lasts_makes_a_dead_letter_and_a_wrong_issue_makes_one_at_once() {
        let refused = DeliveryError::Refused("404".into());
        assert!(!refused.is_dead(0) && !refused.is_dead(DEAD_AFTER - 2));
        assert!(refused.is_dead(DEAD_AFTER - 1));
        assert!(DeliveryError::WrongIssue("moved".into()).is_dead(0));
        assert!(!DeliveryError::Other("connection refused".into()).is_dead(100), "a server that is down is waited for");
        assert!(DeliveryError::Unreadable("bad".into()).is_dead(DEAD_AFTER - 1));
        let busy = DeliveryError::Throttled { message: "429".into(), retry_after: Duration::from_secs(7) };
        assert!(!busy.is_dead(100), "a destination that asks to wait is waited for");
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(DeliveryError::Other("x".into()).retry_after(), None);
    }
}
