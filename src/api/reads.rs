//! Read-only connections for GET requests, so reads never wait behind the engine's writes (WAL).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::ApiError;
use crate::store::{ReadView, Store};

/// A small pool of read-only connections to the store, used off the async runtime.
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
    pub fn new(path: PathBuf) -> Self {
        Self { path: Arc::new(path), idle: Arc::default(), permits: Arc::new(tokio::sync::Semaphore::new(MAX_READERS)) }
    }

    /// Runs `f` with a read view on a blocking thread.
    pub async fn with<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(ReadView<'_>) -> Result<T, ApiError> + Send + 'static,
    {
        let pool = self.clone();
        let permit = self.permits.clone().acquire_owned().await.map_err(|e| ApiError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let store = match pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                Some(s) => s,
                None => Store::open_read_only(&pool.path)?,
            };
            let result = f(store.read());
            let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push(store);
            result
        })
        .await
        .map_err(|e| ApiError::Internal(format!("read task failed: {e}")))?
    }
}
