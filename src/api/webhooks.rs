//! `POST /api/v1/webhooks/forgejo`: signed deliveries only, stored through the engine and answered at once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::core::commands::{Place, new_commands, parse};
use crate::engine::{Command, Reply};
use crate::integrations::forgejo::deliver::observation;

/// How forgefleet's hidden markers begin (`deliver::marker`).
const MARKER: &str = "<!-- forgefleet:";
use crate::integrations::forgejo::webhook::{Delivery, WebhookError, verify};

/// A Forgejo webhook payload, as Forgejo sends it (`issues`, `issue_comment`, `pull_request`, ...); only the
/// common fields are described here. Documentation only: the handler reads the raw bytes.
#[derive(Debug, utoipa::ToSchema)]
#[schema(example = json!({"action": "label_updated", "number": 7, "issue": {}, "repository": {}, "sender": {}}))]
#[allow(dead_code)]
pub struct WebhookPayload {
    /// `opened`, `closed`, `label_updated`, `created`, ...
    action: String,
    number: Option<u64>,
    #[schema(value_type = Object)]
    issue: Option<serde_json::Value>,
    #[schema(value_type = Object)]
    repository: serde_json::Value,
    #[schema(value_type = Object)]
    sender: serde_json::Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookAnswer {
    /// `applied`, `duplicate` (seen before: a replay), or `ignored` (not for us).
    pub status: &'static str,
}

fn header<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
}

#[utoipa::path(
    post,
    path = "/webhooks/forgejo",
    operation_id = "forgejo_webhook",
    tag = super::doc::TAG_WEBHOOKS,
    summary = "Receive a Forgejo webhook delivery",
    description = "Point the repository's webhook here (`forgefleet forgejo setup` does), content type JSON, with the \
        configured secret; events `issues`, `issue_comment`, `pull_request`, `pull_request_review`. Only signed \
        deliveries are accepted. \
        The delivery is applied through the engine before the answer, which comes at once: an issue labelled \
        `status:todo` is queued, a closed or unlabelled one cancelled (both once the issue, read back from \
        Forgejo, confirms it; a view older than one already seen is ignored), commands in new comments are queued to run \
        once their author's permission is checked; a review that requests changes (`pull_request_rejected`) has the \
        pull request's reviews read back, and one by a writer on the verified head queues a round of changes. A \
        replay (same content, new delivery id) changes nothing.",
    request_body = WebhookPayload,
    security(("webhook_signature" = [])),
    responses(
        (status = 200, description = "Applied, a duplicate, or ignored (not a watched repository, not an event \
            forgefleet acts on)", body = WebhookAnswer),
        (status = 400, description = "Not JSON, no event header, or a payload that cannot be read", body = super::error::ErrorBody),
        (status = 401, description = "No signature, a wrong one, or no webhook secret configured on the server", body = super::error::ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = super::error::ErrorBody),
        (status = 500, description = "Internal error", body = super::error::ErrorBody),
        (status = 503, description = "The server is shutting down", body = super::error::ErrorBody),
    )
)]
pub async fn forgejo(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<WebhookAnswer>, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("the delivery is larger than this server accepts ([api] max_body_bytes)".into())
        } else {
            ApiError::BadRequest(format!("cannot read the delivery: {}", r.body_text()))
        }
    })?;
    let secret = app.config.forgejo.webhook_secret.as_ref().map(|s| s.expose());
    let signature = header(&headers, &["x-forgejo-signature", "x-gitea-signature"]);
    verify(secret, signature, &body).map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let content_type = header(&headers, &["content-type"]).unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(ApiError::BadRequest("webhooks must be sent as JSON (content type application/json)".into()));
    }
    let event = header(&headers, &["x-forgejo-event", "x-gitea-event"])
        .ok_or_else(|| ApiError::BadRequest(WebhookError::NoEvent.to_string()))?;
    let delivery = Delivery::parse(event, &body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(key) = delivery.dedupe_key() else { return Ok(Json(WebhookAnswer { status: "ignored" })) };
    let watched = |repo: &crate::core::RepoName| app.config.forgejo.repos.iter().any(|r| r == repo.as_str());
    let bot = app.config.forgejo.bot_user.as_deref();
    let by_bot = |login: &str| bot.is_some_and(|b| b.trim().eq_ignore_ascii_case(login));
    let inner = match delivery {
        // A deleted issue: only Forgejo can say what is left of it.
        Delivery::Issue { repo, action, issue, .. } if watched(&repo) && action == "deleted" => {
            let issue = crate::core::IssueRef { repo, number: issue.number };
            Command::Enqueue(crate::core::Effect::ConfirmIssue { issue })
        }
        // Not fresh: what it would queue or cancel is confirmed against the issue as Forgejo has it now.
        Delivery::Issue { repo, issue, .. } if watched(&repo) && !issue.is_pull() => {
            Command::ObserveIssue(crate::engine::IssueObservation { fresh: false, ..observation(&repo, &issue) })
        }
        Delivery::Comment { repo, action, issue, comment, previous, sender, on_pull } if watched(&repo) => {
            // The bot's own comments echo back: they command nothing (the deliverer checks again, with the login
            // read from Forgejo when `bot_user` is not set). Nor does any comment that carries a forgefleet marker.
            if by_bot(&sender.login) || comment.body.contains(MARKER) {
                return Ok(Json(WebhookAnswer { status: "ignored" }));
            }
            let commands = match (action.as_str(), previous) {
                ("edited", Some(before)) => new_commands(&before, &comment.body, Place::Issue),
                _ => parse(&comment.body, Place::Issue),
            };
            // On a pull request only `/fleet fix` means something (the pull request is no task's issue); on an
            // issue it has no pull request to work on.
            let is_fix = |p: &crate::core::commands::Parsed| {
                matches!(p, crate::core::commands::Parsed::Valid(crate::core::commands::FleetCommand::Fix { .. }))
            };
            let commands: Vec<_> = commands.into_iter().filter(|p| on_pull == is_fix(p)).collect();
            let plain = commands.is_empty() && !on_pull && action == "created";
            if commands.is_empty() && !plain {
                return Ok(Json(WebhookAnswer { status: "ignored" }));
            }
            let issue = crate::core::IssueRef { repo, number: issue.number };
            let origin = crate::core::CommandOrigin::Comment { issue, comment_id: comment.id };
            if plain {
                // A comment with no command may still answer a blocked task's question (`answer_any_comment`):
                // the engine knows whether the task is blocked and what the repository says.
                Command::PlainComment { origin, author: sender.login, body: comment.body }
            } else {
                Command::QueueCommands { origin, author: sender.login, commands }
            }
        }
        // A pull request changed (pushed, edited, reviewed...): a task waiting for its CI looks again at once.
        // Nothing is stored, so a replay or a forged-but-signed stale delivery can cause one extra look at most.
        // Closed (merged or not): what that means for a completed task is confirmed against the pull request as
        // Forgejo has it now, never taken from the delivery.
        Delivery::PullRequest { repo, number, action, .. } if watched(&repo) && action == "closed" => {
            app.pull_news.tell(repo.clone(), number);
            Command::Enqueue(crate::core::Effect::ConfirmPull { pull: crate::core::IssueRef { repo, number } })
        }
        Delivery::PullRequest { repo, number, .. } if watched(&repo) => {
            app.pull_news.tell(repo, number);
            return Ok(Json(WebhookAnswer { status: "applied" }));
        }
        // A review that requests changes: the pull request's reviews are read back from Forgejo, and one by a
        // writer on the verified head becomes a round of changes. An approval or a review comment asks for
        // nothing; the bot's own reviews never count.
        Delivery::Review { repo, number, requests_changes: true, sender, .. }
            if watched(&repo) && !by_bot(&sender.login) =>
        {
            Command::Enqueue(crate::core::Effect::ConfirmReviews { pull: crate::core::IssueRef { repo, number } })
        }
        _ => return Ok(Json(WebhookAnswer { status: "ignored" })),
    };
    match app.engine.send(Command::FromWebhook { key, inner: Box::new(inner) }).await? {
        Reply::Duplicate => Ok(Json(WebhookAnswer { status: "duplicate" })),
        _ => Ok(Json(WebhookAnswer { status: "applied" })),
    }
}
