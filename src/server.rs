//! Assembles a running forgefleet from a configuration: the engine on its thread and the HTTP router.
//! `serve` uses it with the system clock; scenario tests with a hand-moved one.

use std::sync::Arc;
use std::thread::JoinHandle;

use axum::Router;

use crate::api::{self, AppState, ReadPool};
use crate::config::Config;
use crate::engine::{self, Clock, Engine, EngineHandle, EngineSettings};
use crate::integrations::templates::{TemplateError, Templates};
use crate::store::Store;
use crate::telemetry::Metrics;

/// The engine's policy, from the configuration.
pub fn engine_settings(config: &Config) -> EngineSettings {
    EngineSettings {
        retry: config.retry_policy(),
        labels: config.label_scheme(),
        task_timeout: config.task_timeout(),
        start_timeout: config.start_timeout(),
        heartbeat_interval: config.heartbeat_interval(),
        missed_heartbeats: config.agents.missed_heartbeats,
        progress_lines_kept: config.tasks.progress_lines_kept,
        ..EngineSettings::default()
    }
}

pub struct Server {
    pub state: AppState,
    pub clock: Arc<dyn Clock>,
    engine_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts the engine on `store` (opened at `config.store.path`, which the read pool opens too). Fails
    /// only on a template in `[server] templates_dir` that does not parse.
    pub fn start(config: Config, store: Store, clock: impl Clock + Clone) -> Result<Server, TemplateError> {
        let templates = Arc::new(Templates::load(config.server.templates_dir.as_deref())?);
        let metrics = Arc::new(Metrics::new());
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let engine = Engine::new(store, engine_settings(&config), clock);
        let (handle, thread) = engine::spawn(engine, metrics.clone());
        let state = AppState {
            engine: handle,
            reads: ReadPool::new(config.store.path.clone()),
            metrics,
            config: Arc::new(config),
            templates,
            tokens: Default::default(),
        };
        Ok(Server { state, clock: shared, engine_thread: Some(thread) })
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.state.engine
    }

    /// Starts the Forgejo workers (outbox delivery, reconciliation) when `[forgejo] url` is configured.
    /// Must run inside a tokio runtime.
    pub fn start_integrations(
        &self,
        poll: std::time::Duration,
    ) -> anyhow::Result<Option<crate::integrations::forgejo::Workers>> {
        crate::integrations::forgejo::spawn(
            &self.state.config,
            self.state.engine.clone(),
            self.clock.clone(),
            self.state.templates.clone(),
            poll,
        )
    }

    pub fn router(&self) -> Router {
        api::router(self.state.clone())
    }

    /// Stops the engine once every other handle (routers, timers) is gone, and waits for it to finish.
    pub fn shutdown(mut self) {
        let thread = self.engine_thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}
