//! The one read path for everything but the engine: a small pool of read-only connections, used off the async
//! runtime, so reads never wait behind the engine's writes (WAL) and no reader opens a connection per step.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{ReadView, Store, StoreError};

/// A small pool of read-only connections to the store. Cheap to clone: the HTTP handlers and the background
/// workers share one.
#[derive(Clone)]
pub struct ReadPool {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Store>>>,
    /// At most this many reads at once: a burst waits its turn instead of opening a connection and a
    /// thread per request.
    permits: Arc<tokio::sync::Semaphore>,
}

/// Connections (and blocking threads) the pool uses at most.
const MAX_READERS: usize = 8;

impl ReadPool {
    /// A pool over the database at `path`; connections are opened when first needed.
    pub fn new(path: PathBuf) -> Self {
        Self { path: Arc::new(path), idle: Arc::default(), permits: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)) }
    }

    /// Runs `f` with a read view on a blocking thread. `E` is the caller's error: a store error becomes one.
    pub async fn with<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(ReadView<'_>) -> Result<T, E> + Send + 'static,
    {
        let pool = self.clone();
        // The semaphore is never closed; a failure here would be a bug, reported rather than a panic.
        let permit =
            self.permits.clone().acquire_owned().await.map_err(|e| E::from(StoreError::Reader(e.to_string())))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let store = match pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                Some(s) => s,
                None => Store::open_read_only(&pool.path)?,
            };
            let result = f(store.read());
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(store);
            result
        })
        .await
        .map_err(|e| E::from(StoreError::Reader(format!("read task failed: {e}"))))?
    }
}
