//! `POST /api/v1/receipts`: an agent's claim that it did the work. forgefleet checks it itself before the task
//! is done (see `integrations::forgejo::validate`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::doc::TAG_WORK;
use super::error::ErrorBody;
use super::extract::{ApiJson, AuthAgent};
use super::work::TaskAck;
use super::{ApiError, AppState};
use crate::core::{Artifact, CommitSha, Receipt, TaskId, Usage};
use crate::engine::Command;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "task_id": 12, "attempt": 1, "pr_number": 34,
    "head_sha": "9353195a19e45482665306e466c832c46560532d",
    "summary": "Fixed the login redirect and added a test.",
    "usage": {"input_tokens": 12000, "output_tokens": 3400},
    "cost_usd": 0.42, "duration_secs": 310, "session_id": "3f6c0d8e",
    "artifacts": [{"kind": "log", "name": "test output", "url": "https://ci.example/run/1"}]
}))]
pub struct ReceiptRequest {
    #[schema(value_type = i64)]
    pub task_id: TaskId,
    pub attempt: u32,
    /// The pull request, in the task's repository: at least 1.
    #[schema(minimum = 1)]
    pub pr_number: u64,
    /// The commit the pull request's head must be.
    pub head_sha: String,
    #[serde(default)]
    pub summary: String,
    /// Token counts (`input_tokens`, `output_tokens`, and any others the provider reports).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub usage: Usage,
    #[serde(default)]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub duration_secs: Option<u64>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// `{kind, name, url}` each.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub artifacts: Vec<Artifact>,
}

const MAX_SUMMARY: usize = 64 * 1024;

#[utoipa::path(
    post,
    path = "/receipts",
    operation_id = "submit_receipt",
    tag = TAG_WORK,
    summary = "Hand in the work: the pull request and what it cost",
    description = "Only the agent holding the lease of that attempt may submit. The task moves to `validating`: \
        forgefleet checks through Forgejo and its own git mirror that the pull request exists in the task's \
        repository, is open or merged, refers to the issue, comes from the assignment's branch in that repository \
        against the base branch, was opened by the agent's Forgejo user (when one is configured), completed no \
        other task, has the named head, and that its commits change something. Then the task is `completed`, or \
        the attempt fails with `verification_failed`. The same \
        receipt again is a no-op (202); a different receipt for an attempt already received is 409.",
    request_body = ReceiptRequest,
    security(("agent_token" = [])),
    responses(
        (status = 202, description = "Accepted for checking (or already accepted)", body = TaskAck),
        (status = 400, description = "Invalid JSON, an unknown field, a `pr_number` below 1, a head that is not a \
            commit id, a summary over 64 KiB", body = ErrorBody),
        (status = 401, description = "Missing, unknown or revoked agent token", body = ErrorBody),
        (status = 403, description = "The agent does not hold the lease of this task and attempt", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "A stale attempt, an attempt never started (`start` comes first), a task not \
            running, or a different receipt for this attempt",
            body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn submit(
    State(app): State<AppState>,
    AuthAgent(agent): AuthAgent,
    ApiJson(req): ApiJson<ReceiptRequest>,
) -> Result<(StatusCode, Json<TaskAck>), ApiError> {
    if req.pr_number == 0 {
        return Err(ApiError::BadRequest("`pr_number` must be a pull request number, 1 or more".into()));
    }
    let head_sha = CommitSha::parse(&req.head_sha).map_err(|e| ApiError::BadRequest(format!("head_sha: {e}")))?;
    if req.summary.len() > MAX_SUMMARY {
        return Err(ApiError::BadRequest("`summary` is longer than 64 KiB".into()));
    }
    if req.cost_usd.is_some_and(|c| !c.is_finite() || c < 0.0) {
        return Err(ApiError::BadRequest("`cost_usd` must be a positive number".into()));
    }
    let receipt = Receipt {
        pr_number: req.pr_number,
        head_sha,
        summary: req.summary,
        usage: req.usage,
        cost_usd: req.cost_usd,
        duration_secs: req.duration_secs,
        session_id: req.session_id,
        artifacts: req.artifacts,
    };
    let task = req.task_id;
    let cmd = Command::SubmitReceipt { agent: agent.id, task, attempt: req.attempt, receipt };
    Ok((StatusCode::ACCEPTED, super::work::task_command(&app, task, cmd).await?))
}
