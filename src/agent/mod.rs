//! `forgefleet agent`: the runner on an agent host. It registers with the server, heartbeats, long-polls
//! for assignments while it has free slots, and does each one in a checkout of its own (see [`task`]):
//! the adapter runs the coding agent in a sandbox of its own ([`sandbox`]), the runner commits what it
//! left, pushes the attempt's branch, opens the pull request and hands in the receipt. Cancellations come
//! back in heartbeat answers; on SIGINT or SIGTERM it stops its agents and deregisters, so the server
//! re-queues their tasks at once. `--check` ([`check`]) says whether a host can do the work.

pub mod check;
pub mod config;

pub mod secrets;

mod client;
mod process;
pub mod sandbox;
mod task;
mod workspace;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, Notify, watch};
use tracing::Instrument;

use self::client::{ClientError, FleetClient};
use self::config::AgentConfig;
use self::sandbox::{Sandbox, SandboxMode};
use self::workspace::Workspace;
use crate::adapters::{self, Adapter};
use crate::config::{CaBundle, Secret};
use crate::core::TaskId;

/// How long a stopping runner waits for its tasks to report, and then for its deregistration.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// The span every log line of a runner is in, `runner{agent=<agent.name>}`, so that the lines of several
/// runners on one host can be told apart. Tasks the runner spawns carry it on (`in_current_span`). (Not
/// `name`: JSON logs write the span's own name under that key.)
pub fn span(config: &AgentConfig) -> tracing::Span {
    tracing::info_span!("runner", agent = %config.name())
}

/// What the tasks of one runner share.
pub struct Runner {
    client: Arc<FleetClient>,
    workspace: Workspace,
    adapter: Arc<dyn Adapter>,
    forgejo_token: Secret,
    /// `agent.forgejo_url`: where pull requests are opened.
    forgejo_url: String,
    /// Where the Forgejo token may go (see [`config::AgentConfig::token_origins`]).
    token_origins: Vec<config::Origin>,
    ca: Option<CaBundle>,
    /// Running tasks and the switch that stops each.
    running: Mutex<HashMap<TaskId, watch::Sender<bool>>>,
    /// Signalled when a task ends and frees a slot.
    freed: Notify,
    /// An agent silent for this long is stopped (`agent.idle_timeout_secs`).
    idle_timeout: Option<std::time::Duration>,
    /// What each attempt's agent runs in.
    sandbox: Sandbox,
    /// How long opening a pull request is retried (`agent.pull_request_patience_secs`).
    pull_patience: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("{0}")]
    Setup(String),
    #[error("the server refused this agent: {0}")]
    Refused(#[from] ClientError),
}

impl Runner {
    pub fn new(config: &AgentConfig) -> Result<Runner, RunnerError> {
        let ca = config.ca().map_err(|e| RunnerError::Setup(format!("agent.ca_file: {e}")))?;
        let work_dir = &config.agent.work_dir;
        std::fs::create_dir_all(work_dir)
            .map_err(|e| RunnerError::Setup(format!("agent.work_dir: cannot create {}: {e}", work_dir.display())))?;
        let work_dir = std::fs::canonicalize(work_dir)
            .map_err(|e| RunnerError::Setup(format!("agent.work_dir: {}: {e}", work_dir.display())))?;
        let token = config.agent.forgejo_token.clone().unwrap_or_else(|| Secret::new(""));
        let sandbox = Sandbox::new(sandbox_settings(config), &work_dir, adapter_program(config).as_deref())
            .map_err(RunnerError::Setup)?;
        Ok(Runner {
            client: Arc::new(FleetClient::new(config).map_err(|e| RunnerError::Setup(e.to_string()))?),
            workspace: Workspace::new(&work_dir, token.expose(), config.agent.ca_file.as_deref(), config.author()),
            adapter: adapters::build(config),
            forgejo_token: token,
            forgejo_url: config.agent.forgejo_url.clone().unwrap_or_default(),
            token_origins: config.token_origins(),
            ca,
            running: Mutex::default(),
            freed: Notify::new(),
            idle_timeout: (config.agent.idle_timeout_secs > 0)
                .then(|| std::time::Duration::from_secs(config.agent.idle_timeout_secs)),
            sandbox,
            pull_patience: std::time::Duration::from_secs(config.agent.pull_request_patience_secs),
        })
    }

    /// Runs until `shutdown` completes, then stops the running agents and deregisters.
    pub async fn run(
        self: Arc<Self>,
        config: &AgentConfig,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), RunnerError> {
        if self.sandbox.mode() == SandboxMode::None {
            tracing::warn!(
                "sandbox = \"none\": agents run as this runner's user and can read its configuration, its \
                 secrets and memory, and every attempt's files (docs/agent.md, \"Threat model\")"
            );
        }
        self.workspace.sweep().await.map_err(|e| RunnerError::Setup(e.0))?;
        self.sandbox.sweep();
        self.client.register().await?;
        tracing::info!(name = config.name(), adapter = self.adapter.kind().as_str(), "the agent is running");
        let heartbeats = tokio::spawn(self.clone().heartbeats().in_current_span());
        let slots = config.agent.max_concurrency as usize;
        let requests = AtomicU64::new(0);
        let key_base = format!("{}-{}-{}", config.name(), std::process::id(), chrono::Utc::now().timestamp_millis());
        let pulling = async {
            loop {
                while self.running.lock().await.len() >= slots {
                    self.freed.notified().await;
                }
                let key = format!("{key_base}-{}", requests.fetch_add(1, Ordering::Relaxed));
                match self.client.next(config.agent.wait_secs, &key).await {
                    Ok(Some(a)) => self.clone().spawn(a).await,
                    Ok(None) => {}
                    Err(e) => return Err::<(), RunnerError>(e.into()),
                }
            }
        };
        let outcome = tokio::select! {
            r = pulling => r,
            () = shutdown => Ok(()),
        };
        heartbeats.abort();
        // Stopping must end even when the server is unreachable: what could not be said is then found out
        // by the server from the missing heartbeats.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.stop_all()).await.is_err() {
            tracing::warn!("tasks still reporting to the server after {SHUTDOWN_GRACE:?}; leaving them");
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, self.client.deregister()).await {
            Ok(Ok(())) => tracing::info!("deregistered; the server re-queues any task this agent had"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not deregister"),
            Err(_) => tracing::warn!("the server did not answer the deregistration in time"),
        }
        outcome
    }

    async fn spawn(self: Arc<Self>, a: crate::api::AssignmentView) {
        let (stop, stopped) = watch::channel(false);
        let id = a.task_id;
        self.running.lock().await.insert(id, stop);
        let runner = self.clone();
        tokio::spawn(
            async move {
                task::work(runner.clone(), a, stopped).await;
                runner.running.lock().await.remove(&id);
                runner.freed.notify_one();
            }
            .in_current_span(),
        );
    }

    /// Tells the server what runs here; stops what it says to stop.
    async fn heartbeats(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.client.heartbeat_interval().await).await;
            let running: Vec<TaskId> = self.running.lock().await.keys().copied().collect();
            match self.client.heartbeat(&running).await {
                Ok(cancel) => {
                    let map = self.running.lock().await;
                    for id in cancel {
                        if let Some(stop) = map.get(&id) {
                            tracing::info!(task = %id, "the server cancelled this task; stopping its agent");
                            let _ = stop.send(true);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat refused"),
            }
        }
    }

    /// Stops every running agent and waits until their tasks have cleaned up.
    async fn stop_all(&self) {
        for stop in self.running.lock().await.values() {
            let _ = stop.send(true);
        }
        while !self.running.lock().await.is_empty() {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), self.freed.notified()).await;
        }
    }
}

/// The sandbox's part of the configuration.
pub(crate) fn sandbox_settings(config: &AgentConfig) -> sandbox::Settings<'_> {
    let a = &config.agent;
    sandbox::Settings {
        mode: a.sandbox,
        network: a.network,
        paths: &a.sandbox_paths,
        passthrough: &a.env_passthrough,
        // The runner's configuration and its secret files, where a read-only path shown to the agent holds them.
        hide: config
            .source
            .iter()
            .chain(a.forgejo_token_file.iter())
            .chain(a.registration_token_file.iter())
            .cloned()
            .collect(),
    }
}

/// The adapter's executable, as configured.
pub(crate) fn adapter_program(config: &AgentConfig) -> Option<std::path::PathBuf> {
    match config.agent.adapter {
        adapters::AdapterKind::Command => config.command.run.first().map(Into::into),
        adapters::AdapterKind::ClaudeCode => Some(config.claude.program.clone().into()),
        adapters::AdapterKind::Codex => Some(config.codex.program.clone().into()),
    }
}
