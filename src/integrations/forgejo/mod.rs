//! Forgejo: the typed client, webhook verification and parsing, and the workers that talk to it.

pub mod checks;
pub mod client;
pub mod confirm;
pub mod deliver;
pub mod identity;
pub mod labels;
pub mod mergeable;
pub mod reconcile;
pub mod types;
pub mod validate;
pub mod webhook;

pub use client::{ForgejoClient, ForgejoError, IssueFilter};

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::core::Destination;
use crate::core::RepoName;
use crate::engine::{Clock, EngineHandle};
pub use crate::integrations::Workers;
use crate::integrations::outbox::Worker;
use crate::integrations::templates::Templates;
use crate::store::ReadPool;

/// Starts the Forgejo outbox worker, the receipt validator and the reconciler, if `[forgejo] url` is set. Must
/// run inside a tokio runtime. `poll` is how often the workers look for due work; all of them read through
/// `reads`.
pub fn spawn(
    config: &Config,
    engine: EngineHandle,
    clock: Arc<dyn Clock>,
    templates: Arc<Templates>,
    reads: ReadPool,
    poll: Duration,
    news: checks::PullNews,
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
    let merge_watch = mergeable::MergeWatch::new(clock.clone());
    let learning = bot.get().is_none().then(|| tokio::spawn(identity::learn(client.clone(), bot.clone())));
    let label_maker = labels::LabelMaker::new(client.clone());
    let deliverer = deliver::Deliverer {
        client: client.clone(),
        label_maker: label_maker.clone(),
        engine: engine.clone(),
        reads: reads.clone(),
        labels: config.label_scheme(),
        templates,
        agent_users: config.forgejo.agent_users.clone(),
        comment_on_start: config.forgejo.comment_on_start,
        bot,
        branch_prefix: config.forgejo.branch_prefix.clone(),
        clock: clock.clone(),
        matrix_admins: config.matrix.admins.clone(),
        matrix_users: config.matrix.users.clone(),
    };
    // Both workers wake as soon as the engine appends events (a new outbox row, a receipt), and poll as
    // the fallback (retries that come due, a pass that failed).
    let delivering = Worker {
        destination: Destination::Forgejo,
        deliverer: Arc::new(deliverer),
        engine: engine.clone(),
        reads: reads.clone(),
        clock,
    }
    .spawn(poll);
    let validator = validate::Validator {
        client: client.clone(),
        engine: engine.clone(),
        reads: reads.clone(),
        mirrors: db.parent().map(|d| d.join("mirrors")).unwrap_or_else(|| "mirrors".into()),
        git_url: config.forgejo.git_url.clone().unwrap_or_else(|| url.to_string()),
        token: config.forgejo.token.as_ref().map(|t| t.expose().to_string()).unwrap_or_default(),
        ca,
        branch_prefix: config.forgejo.branch_prefix.clone(),
        base_branch: config.forgejo.base_branch.clone(),
        agent_users: config.forgejo.agent_users.clone(),
    };
    let poller = checks::ChecksPoller::new(client.clone(), engine.clone(), reads.clone(), news.clone(), poll);
    let mut appended = engine.appended();
    let validating = tokio::spawn(async move {
        loop {
            let checked = match validator.validate_pending().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "validation pass failed");
                    0
                }
            };
            if checked + poller.poll_due().await > 0 {
                continue;
            }
            tokio::select! {
                _ = EngineHandle::appended_or(&mut appended, poll) => {}
                _ = news.told() => {}
            }
        }
    });
    let labels = config.label_scheme();
    let matrix = config.matrix.clone();
    let every = config.reconcile_interval();
    let full_every = config.full_sweep_interval();
    let reconciling = tokio::spawn(async move {
        for repo in &repos {
            refresh(&client, &engine, &reads, repo, &labels, &matrix).await;
            let labels = repo_labels(&reads, repo, &labels).await;
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
                    refresh(&client, &engine, &reads, repo, &labels, &matrix).await;
                }
                run_pass(&client, &engine, &reads, repo, full, &merge_watch).await;
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
    reads: &ReadPool,
    repo: &RepoName,
    labels: &crate::core::LabelScheme,
    matrix: &crate::config::MatrixConfig,
) {
    let rooms = matrix.rooms_for(repo);
    let rooms = matrix.enabled().then_some(rooms.as_slice());
    if let Err(e) = reconcile::refresh_settings(client, engine, reads, repo, labels, rooms).await {
        tracing::warn!(%repo, error = %e, "cannot read the repository's {}", reconcile::FLEET_FILE);
    }
}

/// The label scheme of one repository: its `fleet.yaml`'s, or the server's (also when the store cannot be
/// read just now: the log says so).
pub async fn repo_labels(
    reads: &ReadPool,
    repo: &RepoName,
    base: &crate::core::LabelScheme,
) -> crate::core::LabelScheme {
    let (lookup, fallback) = (repo.clone(), base.clone());
    match reads.with(move |r| crate::engine::repo::RepoSettings::labels(r, &lookup, &fallback)).await {
        Ok(scheme) => scheme,
        Err(e) => {
            tracing::warn!(%repo, error = %e, "cannot read the repository's settings; the server's labels apply");
            base.clone()
        }
    }
}

async fn run_pass(
    client: &ForgejoClient,
    engine: &EngineHandle,
    reads: &ReadPool,
    repo: &RepoName,
    full: bool,
    merge_watch: &mergeable::MergeWatch,
) {
    match reconcile::pass(client, engine, reads, repo, full).await {
        Ok(r) => tracing::debug!(%repo, full, listed = r.listed, looked_up = r.looked_up, "reconciled"),
        Err(e) => tracing::warn!(%repo, full, error = %e, "reconciliation failed; the next pass tries again"),
    }
    if let Err(e) = ended_pulls(client, engine, reads, repo).await {
        tracing::warn!(%repo, error = %e, "cannot look for merged or closed pull requests; the next pass tries again");
    }
    // The open pull requests, listed once for both looks: conflicts, and reviews whose webhook was lost.
    let open = match client.open_pulls(repo).await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(%repo, error = %e, "cannot list the open pull requests; the next pass tries again");
            return;
        }
    };
    merge_watch.look_at(engine, reads, repo, &open).await;
    if let Err(e) = reviewed_pulls(client, engine, reads, repo, &open).await {
        tracing::warn!(%repo, error = %e, "cannot look for reviews that request changes; the next pass tries again");
    }
}

/// The safety net for lost review webhooks: each open pull request of a completed task whose end is not recorded
/// has its reviews read; one that requests changes of the head, and did not start the task's current round,
/// queues the same confirmation a review webhook does, once per review.
async fn reviewed_pulls(
    client: &ForgejoClient,
    engine: &EngineHandle,
    reads: &ReadPool,
    repo: &RepoName,
    open: &[types::PullRequest],
) -> Result<(), ForgejoError> {
    for pr in open {
        let (r, n) = (repo.clone(), pr.number);
        let task = reads
            .with(move |v| match v.completed_with_pull(&r, n, crate::core::TaskId(0))? {
                Some(id) => v.task(id),
                None => Ok(None),
            })
            .await
            .unwrap_or(None)
            .filter(|t| t.pull_end.is_none());
        let Some(task) = task else { continue };
        let started = task.follow_up.and_then(|f| f.review_id);
        let reviews = client.pull_reviews(repo, n).await?;
        for review in reviews.iter().filter(|r| r.asks_changes_of(&pr.head.sha) && Some(r.id) != started) {
            let pull = crate::core::IssueRef { repo: repo.clone(), number: n };
            let key = format!("reviews:{pull}:{}", review.id);
            let confirm = Box::new(crate::engine::Command::Enqueue(crate::core::Effect::ConfirmReviews { pull }));
            if let Err(e) = engine.send(crate::engine::Command::FromWebhook { key, inner: confirm }).await {
                tracing::warn!(%repo, pull = n, error = %e, "queueing a review's confirmation failed");
            }
        }
    }
    Ok(())
}

/// The safety net for lost `pull_request` webhooks: the recently closed pull requests of `repo` whose completed
/// task has not recorded its end yet, or whose task still waits for their CI, are observed.
async fn ended_pulls(
    client: &ForgejoClient,
    engine: &EngineHandle,
    reads: &ReadPool,
    repo: &RepoName,
) -> Result<(), ForgejoError> {
    let closed = client.recently_closed_pulls(repo, 50).await?;
    for pr in closed {
        let (r, n) = (repo.clone(), pr.number);
        let open_end = reads
            .with(move |v| -> crate::store::Result<bool> {
                Ok(match v.completed_with_pull(&r, n, crate::core::TaskId(0))? {
                    Some(id) => v.task(id)?.is_some_and(|t| t.pull_end.is_none()),
                    // Ended while its task waited for CI.
                    None => v.awaiting_checks_of_pull(&r, n)?.is_some(),
                })
            })
            .await
            .unwrap_or(false);
        if open_end && let Err(e) = engine.send(confirm::observe_pull(repo, &pr)).await {
            tracing::warn!(%repo, pull = pr.number, error = %e, "recording the pull request's end failed");
        }
    }
    Ok(())
}
