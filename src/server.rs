//! Assembles a running forgefleet from a configuration: the engine on its thread, the HTTP router, and the
//! HTTP/1 server that guards it against hostile connections (timeouts, a connection cap). `serve` uses it with
//! the system clock; scenario tests with a hand-moved one.

use std::sync::Arc;
use std::thread::JoinHandle;

use axum::Router;

use crate::api::{self, AppState, ReadPool};
use crate::config::Config;
use crate::core::Destination;
use crate::engine::{self, Clock, Engine, EngineHandle, EngineSettings};
use crate::integrations::Workers;
use crate::integrations::outbox::{Deliver, Worker};
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
        branch_prefix: config.forgejo.branch_prefix.clone(),
        require_checks: config.forgejo.require_checks.clone(),
        on_pr_closed: config.forgejo.on_pr_closed,
        review_rounds: config.forgejo.review_rounds,
        answer_any_comment: config.forgejo.answer_any_comment,
        auto_rebase: config.forgejo.auto_rebase,
        prefer_same_agent: std::time::Duration::from_secs(config.agents.prefer_same_agent_secs),
        checks_timeout: std::time::Duration::from_secs(config.forgejo.checks_timeout_mins.saturating_mul(60)),
        chat_progress: chat_kinds(config).is_some_and(|k| k.contains("progress")).then(|| {
            crate::core::logbatch::LogBatcher::new(
                std::time::Duration::from_secs(config.matrix.progress_interval_secs),
                config.matrix.progress_max_lines,
            )
        }),
        ..EngineSettings::default()
    }
}

/// The chat notification kinds the room gets (`[matrix] notify`); `None` with Matrix off.
pub fn chat_kinds(config: &Config) -> Option<std::collections::BTreeSet<String>> {
    config.matrix.enabled().then(|| config.matrix.notify.iter().map(|k| k.as_str().to_string()).collect())
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
        let mut store = store;
        store.set_chat(chat_kinds(&config));
        let engine = Engine::new(store, engine_settings(&config), clock);
        let (handle, thread) = engine::spawn(engine, metrics.clone());
        let state = AppState {
            engine: handle,
            reads: ReadPool::new(config.store.path.clone()),
            metrics,
            config: Arc::new(config),
            templates,
            tokens: Default::default(),
            pull_news: Default::default(),
        };
        Ok(Server { state, clock: shared, engine_thread: Some(thread) })
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.state.engine
    }

    /// Starts the Forgejo workers (outbox delivery, reconciliation) when `[forgejo] url` is configured.
    /// Must run inside a tokio runtime.
    pub fn start_integrations(&self, poll: std::time::Duration) -> anyhow::Result<Option<Workers>> {
        self.start_integrations_with(poll, None)
    }

    /// The same, plus an outbox worker for Matrix when given its deliverer: each destination has its own worker,
    /// so a homeserver that is down never holds back a Forgejo write. Without one, Matrix rows wait in the
    /// outbox, taken by no one. Every worker reads through the server's one read pool.
    /// Starts the Matrix bot when `[matrix] homeserver_url` is set, with the deliverer its outbox worker uses
    /// (give it to `start_integrations_with`). Must run inside a tokio runtime.
    pub fn start_matrix(&self) -> Option<(crate::integrations::matrix::MatrixHandle, Arc<dyn Deliver>)> {
        let handle = crate::integrations::matrix::spawn(&self.state.config, self.state.engine.clone())?;
        let deliverer = self.matrix_deliverer(handle.watch());
        Some((handle, deliverer))
    }

    /// The outbox's Matrix deliverer for a bot that comes and goes (`MatrixHandle::watch`).
    pub fn matrix_deliverer(
        &self,
        bot: tokio::sync::watch::Receiver<Option<crate::integrations::matrix::Bot>>,
    ) -> Arc<dyn Deliver> {
        let config = &self.state.config;
        Arc::new(crate::integrations::matrix::deliver::MatrixDeliverer {
            bot,
            engine: self.state.engine.clone(),
            reads: self.state.reads.clone(),
            templates: self.state.templates.clone(),
            config: config.matrix.clone(),
            forgejo_url: config.forgejo.url.clone(),
        })
    }

    pub fn start_integrations_with(
        &self,
        poll: std::time::Duration,
        matrix: Option<Arc<dyn Deliver>>,
    ) -> anyhow::Result<Option<Workers>> {
        let mut workers = crate::integrations::forgejo::spawn(
            &self.state.config,
            self.state.engine.clone(),
            self.clock.clone(),
            self.state.templates.clone(),
            self.state.reads.clone(),
            poll,
            self.state.pull_news.clone(),
        )?;
        if let Some(deliverer) = matrix {
            let worker = Worker {
                destination: Destination::Matrix,
                deliverer,
                engine: self.state.engine.clone(),
                reads: self.state.reads.clone(),
                clock: self.clock.clone(),
            };
            workers.get_or_insert_with(Workers::default).handles.push(worker.spawn(poll));
        }
        Ok(workers)
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

/// What the HTTP server allows a connection, from `[server]` and `[agents] max_wait_secs`.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// From a connection's start or its previous answer until a request's headers are complete.
    pub header_read_timeout: std::time::Duration,
    /// One request, its body included.
    pub request_timeout: std::time::Duration,
    /// Added to `request_timeout` for a long-poll, which waits this long at most.
    pub max_wait: std::time::Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

impl HttpLimits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            header_read_timeout: std::time::Duration::from_secs(config.server.header_read_timeout_secs),
            request_timeout: std::time::Duration::from_secs(config.server.request_timeout_secs),
            max_wait: config.max_wait(),
            max_connections: config.server.max_connections,
        }
    }

    /// The cap lowered to what `open_files` (the process's limit) leaves after the store, logs and workers.
    pub fn within_open_files(mut self, open_files: Option<u64>) -> Self {
        if let Some(limit) = open_files {
            let room = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX).max(1);
            if room < self.max_connections {
                tracing::warn!(
                    max_connections = self.max_connections,
                    open_file_limit = limit,
                    lowered_to = room,
                    "[server] max_connections is more than the open-file limit allows; raise the hard limit (ulimit -Hn, \
                     LimitNOFILE=) to serve that many"
                );
                self.max_connections = room;
            }
        }
        self
    }
}

/// File descriptors kept for everything but client connections: the store, logs, Forgejo, git.
const FD_RESERVE: u64 = 256;
/// Connections refused at once while over the cap (each is answered and closed within a second).
const MAX_REFUSING: usize = 256;
/// The route whose requests wait for work: they get `max_wait` on top of the request timeout.
const LONG_POLL: &str = "/api/v1/assignments/next";

/// Raises the soft limit of open files to the hard one; returns the soft limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return None;
            }
            if r.rlim_cur < r.rlim_max {
                let raised = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    r.rlim_cur = r.rlim_max;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        Some(r.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

/// Serves HTTP/1.1 connections until `shutdown` completes, then lets open requests finish (at most 10 s).
///
/// Thousands of agents each keep a long-poll open: hyper's HTTP/1 builder costs less memory per connection
/// than `axum::serve`'s HTTP/1-or-2 detection, which is what keeps a large fleet's server small. Every
/// connection must send its headers within `header_read_timeout` of its start or its previous answer (so slow
/// senders and idle connections are closed; a request being answered is not idle), every request must be
/// done within `request_timeout` (a long-poll gets its wait on top), and past `max_connections` a new
/// connection is answered 503 and closed.
pub async fn serve_http1(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if open.load(Ordering::Relaxed) >= limits.max_connections {
                    if refusing.fetch_add(1, Ordering::Relaxed) < MAX_REFUSING {
                        let refusing = refusing.clone();
                        tokio::spawn(async move {
                            refuse(stream, limits.max_connections).await;
                            refusing.fetch_sub(1, Ordering::Relaxed);
                        });
                    } else {
                        refusing.fetch_sub(1, Ordering::Relaxed);
                        drop(stream);
                    }
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let slot = Slot::take(&open);
                let inner = TowerToHyperService::new(router.clone());
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let limit = if req.uri().path() == LONG_POLL {
                        limits.request_timeout + limits.max_wait
                    } else {
                        limits.request_timeout
                    };
                    let answer = hyper::service::Service::call(&inner, req);
                    async move {
                        match tokio::time::timeout(limit, answer).await {
                            Ok(answer) => answer,
                            Err(_) => Ok(too_slow(limit)),
                        }
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("open connections did not finish within 10 s; closing them");
    }
    Ok(())
}

/// One open connection, counted until it is dropped.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Slot {
    fn take(open: &Arc<std::sync::atomic::AtomicUsize>) -> Slot {
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Slot(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn too_slow(limit: std::time::Duration) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = api::ErrorBody::new(
        api::ErrorCode::RequestTimeout,
        format!("the request took longer than {} s ([server] request_timeout_secs); send it again", limit.as_secs()),
    );
    (axum::http::StatusCode::REQUEST_TIMEOUT, [(axum::http::header::CONNECTION, "close")], axum::Json(body))
        .into_response()
}

/// Answers a connection over the cap with a 503 once it has sent its request's head, and closes it: within a
/// second whatever the client does.
async fn refuse(mut stream: tokio::net::TcpStream, cap: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::to_string(&api::ErrorBody::new(
        api::ErrorCode::Unavailable,
        format!("the server has {cap} connections open, its limit ([server] max_connections); try again shortly"),
    ))
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        // The request's head first (a client must not see an answer before it asked), at most 16 KiB of it.
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent, so that closing does not reset the connection under the answer.
        while stream.read(&mut buf).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}
