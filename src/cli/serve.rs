//! `forgefleet serve`: lock the database, start the engine, the periodic checks, the integrations (Forgejo,
//! the Matrix bot) and the HTTP API.

use std::time::Duration;

use tokio::net::TcpListener;

use super::CliError;
use crate::config::Config;
use crate::engine::{Command, EngineHandle, SystemClock};
use crate::server::Server;
use crate::store::{Store, StoreLock};

pub fn run(config: Config) -> Result<(), CliError> {
    // Before anything else: a second server on the same database must not touch it.
    let lock =
        StoreLock::acquire(&config.store.path, "forgefleet serve").map_err(|e| CliError::usage(e.to_string()))?;
    let store = Store::open(&config.store.path)?;
    // Each connected agent holds a file descriptor: the soft limit (often 1024) would cap the fleet.
    let open_files = crate::server::raise_open_file_limit();
    let events = store.read().event_count()?;
    let server = Server::start(config.clone(), store, SystemClock)
        .map_err(|e| CliError::usage(format!("{e} ([server] templates_dir)")))?;
    let handle = server.engine().clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("forgefleet-io")
        .build()
        .map_err(|e| CliError::failure(format!("cannot start the async runtime: {e}")))?;
    let served = runtime.block_on(async {
        let listener = TcpListener::bind(config.server.listen).await.map_err(|e| {
            CliError::usage(format!("cannot listen on {} ([server] listen): {e}", config.server.listen))
        })?;
        tracing::info!(
            listen = %config.server.listen,
            store = %config.store.path.display(),
            events,
            lock = %lock.path().display(),
            open_file_limit = open_files,
            "forgefleet is serving"
        );
        let ticker = tokio::spawn(periodic_checks(handle, config.task_check_interval()));
        // The bot logs in and syncs in the background: a homeserver that is down or refuses the bot's
        // credentials is logged (naming the setting) and tried again, and everything else runs meanwhile;
        // messages for the room wait in the outbox until it is in.
        let (matrix, matrix_deliverer) = match server.start_matrix() {
            Some((handle, deliverer)) => (Some(handle), Some(deliverer)),
            None => {
                tracing::info!("no [matrix] homeserver_url configured: the Matrix bot is off");
                (None, None)
            }
        };
        let workers = server
            .start_integrations_with(std::time::Duration::from_secs(1), matrix_deliverer)
            .map_err(|e| CliError::usage(format!("cannot start the Forgejo integration: {e:#}")))?;
        if config.forgejo.url.is_none() {
            tracing::info!("no [forgejo] url configured: nothing is watched; agents and the API work as usual");
        }
        let limits = crate::server::HttpLimits::from_config(&config).within_open_files(open_files);
        let result = crate::server::serve_http1(listener, server.router(), limits, shutdown_signal()).await;
        ticker.abort();
        let _ = ticker.await;
        if let Some(w) = workers {
            w.abort();
        }
        if let Some(m) = matrix {
            m.stop().await;
        }
        result.map_err(|e| CliError::failure(format!("the HTTP server failed: {e}")))
    });
    // Every engine handle is gone now; the engine finishes what it was given and stops.
    drop(runtime);
    server.shutdown();
    tracing::info!("forgefleet stopped");
    drop(lock);
    served
}

/// Sends the engine its periodic checks: leases not started in time, deadlines, silent agents, backoffs.
async fn periodic_checks(engine: EngineHandle, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match engine.send(Command::Tick).await {
            Ok(crate::engine::Reply::Ticked(r))
                if !(r.lost.is_empty() && r.timed_out.is_empty() && r.offline.is_empty()) =>
            {
                tracing::info!(lost = ?r.lost, timed_out = ?r.timed_out, offline = ?r.offline, "periodic checks acted");
            }
            Ok(_) => {}
            Err(crate::engine::EngineError::Stopped) => return,
            Err(e) => tracing::error!(error = %e, "periodic checks failed"),
        }
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
