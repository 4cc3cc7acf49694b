//! The outside world, each behind a small interface the engine's workers call. The outbox's delivery loop is
//! shared (`outbox`); each destination (Forgejo, Matrix) plugs its own `outbox::Deliver` into it.

pub mod commands;
pub mod forgejo;
pub mod git;
pub mod matrix;
pub mod outbox;
pub mod templates;

/// The background work of the integrations: outbox workers, the receipt validator, the reconciler.
#[derive(Default)]
pub struct Workers {
    pub handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    pub fn abort(&self) {
        for h in &self.handles {
            h.abort();
        }
    }
}
