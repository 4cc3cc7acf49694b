//! Forgejo: the typed client, webhook verification and parsing, and the workers that talk to it.

pub mod client;
pub mod confirm;
pub mod deliver;
pub mod identity;
pub mod labels;
pub mod reconcile;
pub mod types;
pub mod validate;
pub mod webhook;

pub use client::{ForgejoClient, ForgejoError, IssueFilter};

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::core::RepoName;
use crate::engine::{Clock, EngineHandle};
use crate::integrations::templates::Templates;

/// The background work of the Forgejo integration.
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

/// Starts the outbox deliverer and the reconciler, if `[forgejo] url` is set. Must run inside a tokio
/// runtime. `poll` is how often the deliverer looks for due work.
pub fn spawn(
    config: &Config,
    engine: EngineHandle,
    clock: Arc<dyn Clock>,
    templates: Arc<Templates>,
    poll: Duration,
) -> anyhow::Result<Option<Workers>> {
    let (Some(url), Some(token)) = (config.forgejo.url.as_deref(), config.forgejo.token.clone()) else {
        return Ok(None);
    };
    let ca = config.forgejo.ca().map_err(|why| anyhow::anyhow!("forgejo.ca_file: {why}"))?;
    let client = ForgejoClient::new(url, token, ca.as_ref())?
        .with_timeout(Duration::from_secs(config.forgejo.request_timeout_secs));
    let repos = config.forgejo.repo_names();
    let db = config.store.path.clone();
    let bot = identity::BotLogin::new(config.forgejo.bot_user.clone());
    let learning = bot.get().is_none().then(|| tokio::spawn(identity::learn(client.clone(), bot.clone())));
    let label_maker = labels::LabelMaker::new(client.clone());
    let deliverer = deliver::Deliverer {
        client: client.clone(),
        label_maker: label_maker.clone(),
        engine: engine.clone(),
        db: db.clone(),
        labels: config.label_scheme(),
        templates,
        agent_users: config.forgejo.agent_users.clone(),
        comment_on_start: config.forgejo.comment_on_start,
        bot,
        branch_prefix: config.forgejo.branch_prefix.clone(),
        clock: clock.clone(),
        matrix_admins: Vec::new(),
        matrix_users: Default::default(),
    };
    // Both workers wake as soon as the engine appends events (a new outbox row, a receipt), and poll as
    // the fallback (retries that come due, a pass that failed).
    let mut appended = engine.appended();
    let delivering = tokio::spawn(async move {
        loop {
            match deliverer.deliver_due(clock.now()).await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "outbox delivery pass failed"),
            }
            EngineHandle::appended_or(&mut appended, poll).await;
        }
    });
    let validator = validate::Validator {
        client: client.clone(),
        engine: engine.clone(),
        db: db.clone(),
        mirrors: db.parent().map(|d| d.join("mirrors")).unwrap_or_else(|| "mirrors".into()),
        git_url: config.forgejo.git_url.clone().unwrap_or_else(|| url.to_string()),
        token: config.forgejo.token.as_ref().map(|t| t.expose().to_string()).unwrap_or_default(),
        ca,
        branch_prefix: config.forgejo.branch_prefix.clone(),
        base_branch: config.forgejo.base_branch.clone(),
        agent_users: config.forgejo.agent_users.clone(),
    };
    let mut appended = engine.appended();
    let validating = tokio::spawn(async move {
        loop {
            match validator.validate_pending().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "validation pass failed"),
            }
            EngineHandle::appended_or(&mut appended, poll).await;
        }
    });
    let labels = config.label_scheme();
    let every = config.reconcile_interval();
    let full_every = config.full_sweep_interval();
    let reconciling = tokio::spawn(async move {
        for repo in &repos {
            refresh(&client, &engine, &db, repo, &labels).await;
            let labels = repo_labels(&db, repo, &labels).await;
            match label_maker.ensure_managed(repo, &labels).await {
                Ok(created) if !created.is_empty() => tracing::info!(%repo, ?created, "created missing labels"),
                Ok(_) => {}
                Err(e) => tracing::warn!(%repo, error = %e, "cannot check the repository's labels"),
            }
        }
        let mut last_full: Option<tokio::time::Instant> = None;
        loop {
            let full = last_full.is_none_or(|t| t.elapsed() >= full_every);
            for repo in &repos {
                if !full {
                    refresh(&client, &engine, &db, repo, &labels).await;
                }
                run_pass(&client, &engine, &db, repo, full).await;
            }
            if full {
                last_full = Some(tokio::time::Instant::now());
            }
            tokio::time::sleep(every).await;
        }
    });
    let mut handles = vec![delivering, validating, reconciling];
    handles.extend(learning);
    Ok(Some(Workers { handles }))
}

async fn refresh(
    client: &ForgejoClient,
    engine: &EngineHandle,
    db: &std::path::Path,
    repo: &RepoName,
    labels: &crate::core::LabelScheme,
) {
    if let Err(e) = reconcile::refresh_settings(client, engine, db, repo, labels).await {
        tracing::warn!(%repo, error = %e, "cannot read the repository's {}", reconcile::FLEET_FILE);
    }
}

/// The label scheme of one repository: its `fleet.yaml`'s, or the server's.
pub async fn repo_labels(
    db: &std::path::Path,
    repo: &RepoName,
    base: &crate::core::LabelScheme,
) -> crate::core::LabelScheme {
    let key = format!("{}{repo}", crate::engine::logic::REPO_SETTINGS);
    let db = db.to_path_buf();
    let stored =
        tokio::task::spawn_blocking(move || crate::store::Store::open_read_only(&db).and_then(|s| s.read().meta(&key)))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten();
    stored
        .and_then(|s| serde_json::from_str::<crate::engine::repo::RepoOverrides>(&s).ok())
        .and_then(|o| o.labels)
        .unwrap_or_else(|| base.clone())
}

async fn run_pass(client: &ForgejoClient, engine: &EngineHandle, db: &std::path::Path, repo: &RepoName, full: bool) {
    match reconcile::pass(client, engine, db, repo, full).await {
        Ok(r) => tracing::debug!(%repo, full, listed = r.listed, looked_up = r.looked_up, "reconciled"),
        Err(e) => tracing::warn!(%repo, full, error = %e, "reconciliation failed; the next pass tries again"),
    }
}
