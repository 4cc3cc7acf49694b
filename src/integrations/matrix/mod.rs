//! Matrix: the bot's client side. It logs in (keeping its session and device), joins the configured rooms,
//! records what people write there in the store's inbox (each message once), and sends messages for others
//! (`Bot::send`: thread replies, edits, idempotent by transaction id). docs/matrix.md shows the setup.

mod bot;
pub mod deliver;
pub mod send;
pub mod session;
pub mod sync;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

pub use bot::Bot;
pub use send::{MessageRelation, OutgoingMessage, SendError};
pub use sync::TIMELINE_LIMIT;

use crate::config::Config;
use crate::engine::EngineHandle;
use crate::store::Store;

/// Why the bot could not start; every message names the setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// A setting is wrong on its face, or disagrees with what the bot stored.
    #[error("{key}: {message}")]
    Setting { key: &'static str, message: String },
    /// The homeserver refused the credentials.
    #[error("{key}: the homeserver refused it ({detail})")]
    Rejected { key: &'static str, detail: String },
    #[error("matrix.homeserver_url: cannot reach the homeserver at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// Something on this machine (the data directory, the store).
    #[error("{0}")]
    Local(String),
    #[error("{0}")]
    Other(String),
}

impl MatrixError {
    pub(crate) fn setting(key: &'static str, message: impl Into<String>) -> Self {
        MatrixError::Setting { key, message: message.into() }
    }

    /// How long to wait before trying again: soon for a homeserver that may come back, rarely for
    /// credentials that were refused (someone has to fix them; hammering would lock the account).
    fn backoff(&self) -> (Duration, Duration) {
        match self {
            MatrixError::Rejected { .. } | MatrixError::Setting { .. } => {
                (Duration::from_secs(60), Duration::from_secs(15 * 60))
            }
            _ => (Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

/// The running bot: its task, and the bot once it has logged in.
pub struct MatrixHandle {
    task: tokio::task::JoinHandle<()>,
    bot: watch::Receiver<Option<Bot>>,
}

impl MatrixHandle {
    /// The bot, once it has logged in and joined its rooms; waits until then.
    pub async fn bot(&self) -> Bot {
        let mut rx = self.bot.clone();
        let ready = rx.wait_for(Option::is_some).await;
        match ready {
            Ok(bot) => bot.clone().expect("waited for Some"),
            // The task ended (it only does when the engine stopped): nothing will ever come.
            Err(_) => std::future::pending().await,
        }
    }

    /// The bot as it comes and goes: `None` until it has logged in.
    pub fn watch(&self) -> watch::Receiver<Option<Bot>> {
        self.bot.clone()
    }

    /// The bot if it is logged in now.
    pub fn current(&self) -> Option<Bot> {
        self.bot.borrow().clone()
    }

    /// Stops the bot.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Stops the bot and waits until it has stopped.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts the bot if `[matrix] homeserver_url` is set: it logs in (trying again with backoff, each failure
/// logged with the setting it concerns), joins its rooms and syncs into the store's inbox through `engine`.
/// Must run inside a tokio runtime.
pub fn spawn(config: &Config, engine: EngineHandle) -> Option<MatrixHandle> {
    if !config.matrix.enabled() {
        return None;
    }
    let matrix = config.matrix.clone();
    let db = config.store.path.clone();
    let (ready, bot) = watch::channel(None);
    let task = tokio::spawn(async move {
        let dir = session::data_dir(&db);
        let bot = connect(&matrix, &dir).await;
        bot.join_rooms().await;
        let token = stored_token(db).await;
        tracing::info!(user = %bot.user_id(), device = %bot.device_id(), resume = token.is_some(), "the Matrix bot is running");
        let _ = ready.send(Some(bot.clone()));
        let _ = sync::run(bot, engine, token).await;
    });
    Some(MatrixHandle { task, bot })
}

/// Logs in, trying again until it works.
async fn connect(config: &crate::config::MatrixConfig, dir: &std::path::Path) -> Bot {
    let mut failures = 0u32;
    loop {
        match Bot::connect(config, dir).await {
            Ok(bot) => return bot,
            Err(e) => {
                let (first, cap) = e.backoff();
                let wait = first.saturating_mul(2u32.saturating_pow(failures.min(16))).min(cap);
                failures += 1;
                tracing::error!(error = %e, retry_in = ?wait, "the Matrix bot cannot log in: {e}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The sync token in the store, read until the read works: taking a failed read for "no token" would skip
/// what was written while forgefleet was down.
async fn stored_token(db: PathBuf) -> Option<String> {
    let mut pause = sync::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let path = db.clone();
        let read = tokio::task::spawn_blocking(move || Store::open_read_only(&path)?.read().matrix_next_batch()).await;
        let why = match read {
            Ok(Ok(token)) => return token,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        pause.wait_after("cannot read the Matrix sync token; trying again", &why).await;
    }
}
