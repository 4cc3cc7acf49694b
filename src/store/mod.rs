//! SQLite: the append-only event log, the projections built from it, and the outbox.
//!
//! One writer (the engine) appends events and updates projections in the same transaction; readers share the
//! read-only connections of a `ReadPool` (WAL lets them read while the writer writes).

mod lock;
mod matrix;
mod pool;
mod projection;
mod queries;
mod rebuild;
mod schema;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use lock::{LockError, StoreLock};
pub use matrix::{InboxMessage, InboxRow, MATRIX_NEXT_BATCH};
pub use pool::ReadPool;
pub use projection::{Appended, OutboxChange, encode_task};
pub use queries::{AgentRow, FailingDelivery, OutboxEntry, OutboxHealth, OutboxRow, TaskSummary};
pub use rebuild::RebuildReport;
pub use schema::SCHEMA_VERSION;

use crate::core::{Agent, AgentId, Task, TaskId, TransitionError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not a forgefleet database, or it is damaged: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("{path} was written by a newer forgefleet (schema version {found}, this one knows up to {known})")]
    TooNew { path: String, found: i64, known: i64 },
    #[error("cannot open database {path}: {detail}")]
    Open { path: String, detail: String },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("stored data could not be read back: {0}")]
    Decode(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A read on the pool's blocking thread did not finish (the thread panicked or the runtime is stopping).
    #[error("a read from the store failed: {0}")]
    Reader(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The writer connection's page cache, in KiB (see `Store::init`).
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// A connection to the store, with the schema migrated to the current version.
pub struct Store {
    conn: Connection,
    path: String,
    cache: TxCache,
    /// The chat notification kinds a room wants (`[matrix] notify`); `None`: no chat, so none is queued.
    chat: Option<std::collections::BTreeSet<String>>,
}

/// Tasks and agents decoded during the current write transaction. A command reads the task it works on
/// several times (to decide, to project, to answer), and a batch often touches the same task and agent in
/// several commands: decoding their JSON once is enough, and sharing them (`Rc`) spares copying their text.
/// The projection replaces an entry whenever it writes the row. Cleared when a transaction starts and when a
/// savepoint rolls back, so it never outlives what the database says.
#[derive(Default)]
pub(crate) struct TxCache {
    tasks: RefCell<HashMap<TaskId, Arc<Task>>>,
    agents: RefCell<HashMap<AgentId, Arc<Agent>>>,
    /// The task state changes written in this transaction, for the log once it commits. A savepoint that rolls
    /// back takes its own back out; a new transaction starts empty.
    transitions: RefCell<Vec<Transition>>,
}

/// A task changed state (or was created: `from` is `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub task: TaskId,
    pub issue: crate::core::IssueRef,
    pub from: Option<crate::core::TaskState>,
    pub to: crate::core::TaskState,
    pub attempt: u32,
    /// The name of the agent holding (or, when the change ends it, having held) the lease.
    pub agent: Option<String>,
}

impl TxCache {
    fn clear(&self) {
        self.tasks.borrow_mut().clear();
        self.agents.borrow_mut().clear();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating it and its directory if needed) the database at `path` for writing, and migrates it.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Open { path: path.display().to_string(), detail: e.to_string() })?;
        }
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        Self::init(conn, path.display().to_string())
    }

    /// Opens an existing database for reading only (status commands); never creates or migrates.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                detail: "no such file (has `forgefleet serve` run with this store path?)".into(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
        let path_s = path.display().to_string();
        conn.busy_timeout(Duration::from_secs(5))?;
        let version = schema::version(&conn).map_err(|e| classify(&path_s, e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: path_s, found: version, known: SCHEMA_VERSION });
        }
        Ok(Store { conn, path: path_s, cache: Default::default(), chat: None })
    }

    /// A fresh database in memory with the real migrations: for tests.
    pub fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?, ":memory:".into())
    }

    fn init(conn: Connection, path: String) -> Result<Store> {
        let setup = || -> rusqlite::Result<i64> {
            conn.busy_timeout(Duration::from_secs(5))?;
            // WAL: readers never block the writer. NORMAL: a commit survives a crash of forgefleet; only a
            // power loss can take the last commits, which reconciliation with Forgejo repairs.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            // The writer's page cache: 64 MiB (SQLite's default is 2 MiB), taken only as pages are read. The
            // engine looks up what it decides with (the queue, the task of an issue, an agent's leases) before
            // it writes; with the default those pages are read back from the file on almost every command.
            // Readers open their own connections with the default.
            conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
            schema::version(&conn)
        };
        let found = setup().map_err(|e| classify(&path, e))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { path, found, known: SCHEMA_VERSION });
        }
        let mut store = Store { conn, path, cache: Default::default(), chat: None };
        schema::migrate(&mut store.conn).map_err(|e| classify(&store.path, e))?;
        Ok(store)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw connection, for benchmarks and tests that compare against plain SQL.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Chat notifications of these kinds (see `core::CHAT_KINDS`) are queued from now on; `None` queues none
    /// (Matrix is off: nothing would ever deliver them).
    pub fn set_chat(&mut self, kinds: Option<std::collections::BTreeSet<String>>) {
        self.chat = kinds;
    }

    /// Starts a write transaction. Everything appended through it commits or rolls back together.
    pub fn write(&mut self) -> Result<WriteTx<'_>> {
        self.cache.clear();
        self.cache.transitions.borrow_mut().clear();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(WriteTx { tx, cache: &self.cache, chat: self.chat.as_ref() })
    }

    /// The task state changes of the last write transaction, once: call it after the commit.
    pub fn take_transitions(&self) -> Vec<Transition> {
        std::mem::take(&mut *self.cache.transitions.borrow_mut())
    }

    /// A read view (one implicit transaction per query).
    pub fn read(&self) -> ReadView<'_> {
        ReadView { conn: &self.conn, cache: None }
    }
}

/// An open write transaction.
pub struct WriteTx<'a> {
    tx: rusqlite::Transaction<'a>,
    cache: &'a TxCache,
    chat: Option<&'a std::collections::BTreeSet<String>>,
}

impl WriteTx<'_> {
    pub fn commit(self) -> Result<()> {
        Ok(self.tx.commit()?)
    }
    /// Reads within this transaction, seeing what it has written so far.
    pub fn read(&self) -> ReadView<'_> {
        ReadView { conn: &self.tx, cache: Some(self.cache) }
    }
    /// Rows inserted, updated or deleted on this connection so far: tells whether a failed step wrote anything.
    pub fn total_changes(&self) -> u64 {
        self.tx.total_changes()
    }

    /// Undoes everything this transaction wrote.
    pub fn rollback(self) -> Result<()> {
        Ok(self.tx.rollback()?)
    }

    /// Runs `f` in a savepoint: if it fails, only its own writes are undone and the transaction goes on.
    pub fn savepoint<T, E: From<rusqlite::Error>>(
        &mut self,
        f: impl FnOnce(&WriteTx<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        // Prepared once per connection: a savepoint per command is on the hot path of group commit.
        self.tx.prepare_cached("SAVEPOINT cmd")?.execute([])?;
        let mark = self.cache.transitions.borrow().len();
        match f(self) {
            Ok(v) => {
                self.tx.prepare_cached("RELEASE cmd")?.execute([])?;
                Ok(v)
            }
            Err(e) => {
                self.cache.clear();
                self.cache.transitions.borrow_mut().truncate(mark);
                self.tx.prepare_cached("ROLLBACK TO cmd")?.execute([])?;
                self.tx.prepare_cached("RELEASE cmd")?.execute([])?;
                Err(e)
            }
        }
    }
}

/// `key`'s entry in a write transaction's cache, loaded (and kept) if it is not there yet.
pub(crate) fn cached<K: std::hash::Hash + Eq + Copy, V>(
    cache: Option<&RefCell<HashMap<K, Arc<V>>>>,
    key: K,
    load: impl FnOnce() -> Result<Option<V>>,
) -> Result<Option<Arc<V>>> {
    if let Some(v) = cache.and_then(|c| c.borrow().get(&key).cloned()) {
        return Ok(Some(v));
    }
    let loaded = load()?.map(Arc::new);
    if let (Some(c), Some(v)) = (cache, &loaded) {
        c.borrow_mut().insert(key, v.clone());
    }
    Ok(loaded)
}

/// Queries over the projections, inside or outside a write transaction.
#[derive(Clone, Copy)]
pub struct ReadView<'a> {
    conn: &'a Connection,
    cache: Option<&'a TxCache>,
}

fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Open { path: path.display().to_string(), detail: e.to_string() }
}

/// SQLite reports a file that is not a database only when it is first read: name that case plainly.
fn classify(path: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, NotADatabase | DatabaseCorrupt) => {
            StoreError::Corrupt { path: path.to_string(), detail: e.to_string() }
        }
        _ => StoreError::Sqlite(e),
    }
}

/// The default data directory's database file, relative to the working directory.
pub fn default_path() -> PathBuf {
    PathBuf::from("forgefleet-data").join("forgefleet.db")
}

#[cfg(test)]
mod tests;
