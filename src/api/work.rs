//! An agent's work: long-polling for an assignment, then start, progress and failure reports.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, AuthAgent, Operator};
use super::{ApiError, AppState};
use crate::core::{FailureClass, TaskId, TaskState};
use crate::engine::{Assignment, Command};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextRequest {
    /// How long to wait for work, 0 to the server's maximum (default 60).
    #[serde(default)]
    pub wait_secs: u64,
    /// Repeat it when retrying a request whose answer was lost: the same assignment comes back.
    #[serde(default)]
    pub request_key: Option<String>,
}

/// Everything an agent needs to do a task.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct AssignmentView {
    pub task_id: TaskId,
    pub attempt: u32,
    pub repo: String,
    pub issue: u64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    /// `null` until a Forgejo URL is configured.
    pub clone_url: Option<String>,
    pub base_branch: String,
    /// The branch to push the work to.
    pub branch: String,
    /// Acknowledge (`start`) before this.
    pub start_by: String,
    /// The task fails with `timeout` after this.
    pub deadline: String,
}

impl AssignmentView {
    fn new(a: &Assignment, app: &AppState) -> Self {
        let f = &app.config.forgejo;
        let t = &a.task;
        Self {
            task_id: t.id,
            attempt: a.lease.attempt,
            repo: t.issue.repo.to_string(),
            issue: t.issue.number,
            title: t.title.clone(),
            body: t.body.clone(),
            labels: t.labels.clone(),
            clone_url: f.url.as_ref().map(|u| format!("{}/{}.git", u.trim_end_matches('/'), t.issue.repo)),
            base_branch: f.base_branch.clone(),
            branch: format!("{}issue-{}-attempt-{}", f.branch_prefix, t.issue.number, a.lease.attempt),
            start_by: a.lease.start_by.to_rfc3339(),
            deadline: a.lease.deadline.to_rfc3339(),
        }
    }
}

/// `POST /assignments/next`: 200 with an assignment as soon as one fits, 204 when the wait ends.
pub async fn next(
    State(app): State<AppState>,
    AuthAgent(agent): AuthAgent,
    ApiJson(req): ApiJson<NextRequest>,
) -> Result<Response, ApiError> {
    let max = app.config.agents.max_wait_secs;
    if req.wait_secs > max {
        return Err(ApiError::BadRequest(format!("`wait_secs` must be 0 to {max}")));
    }
    if let Some(k) = &req.request_key
        && (k.is_empty() || k.len() > 128)
    {
        return Err(ApiError::BadRequest("`request_key` must be 1 to 128 characters".into()));
    }
    let wait = Duration::from_secs(req.wait_secs);
    match app.engine.next_assignment(agent.id, req.request_key, wait).await? {
        Some(a) => Ok(Json(AssignmentView::new(&a, &app)).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptRequest {
    pub attempt: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TaskAck {
    pub task_id: TaskId,
    pub attempt: u32,
    pub state: TaskState,
}

fn parse_task(id: &str) -> Result<TaskId, ApiError> {
    id.parse().map_err(|e: crate::core::InvalidId| ApiError::BadRequest(e.to_string()))
}

/// Reads back a task's state after a command, for the answer.
async fn ack(app: &AppState, task: TaskId, attempt: u32) -> Result<Json<TaskAck>, ApiError> {
    let state = app
        .reads
        .with(move |r| {
            r.task(task)?.map(|t| t.state).ok_or_else(|| ApiError::NotFound(format!("task {task} not found")))
        })
        .await?;
    Ok(Json(TaskAck { task_id: task, attempt, state }))
}

pub async fn start(
    State(app): State<AppState>,
    AuthAgent(agent): AuthAgent,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AttemptRequest>,
) -> Result<Json<TaskAck>, ApiError> {
    let task = parse_task(&id)?;
    app.engine.send(Command::StartTask { agent: agent.id, task, attempt: req.attempt }).await?;
    ack(&app, task, req.attempt).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    pub attempt: u32,
    pub lines: Vec<String>,
}

const MAX_LINES: usize = 100;
const MAX_LINE_BYTES: usize = 4096;

pub async fn progress(
    State(app): State<AppState>,
    AuthAgent(agent): AuthAgent,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ProgressRequest>,
) -> Result<Json<TaskAck>, ApiError> {
    let task = parse_task(&id)?;
    if req.lines.is_empty() || req.lines.len() > MAX_LINES {
        return Err(ApiError::BadRequest(format!("send 1 to {MAX_LINES} `lines` at a time")));
    }
    if let Some(n) = req.lines.iter().position(|l| l.len() > MAX_LINE_BYTES) {
        return Err(ApiError::BadRequest(format!("line {n} is longer than {MAX_LINE_BYTES} bytes")));
    }
    app.engine.send(Command::Progress { agent: agent.id, task, attempt: req.attempt, lines: req.lines }).await?;
    ack(&app, task, req.attempt).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    pub attempt: u32,
    pub class: String,
    #[serde(default)]
    pub message: String,
}

pub async fn fail(
    State(app): State<AppState>,
    AuthAgent(agent): AuthAgent,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<FailRequest>,
) -> Result<Json<TaskAck>, ApiError> {
    let task = parse_task(&id)?;
    let class: FailureClass = req.class.parse().map_err(ApiError::BadRequest)?;
    if req.message.len() > 64 * 1024 {
        return Err(ApiError::BadRequest("`message` is longer than 64 KiB".into()));
    }
    let cmd = Command::FailTask { agent: agent.id, task, attempt: req.attempt, class, message: req.message };
    app.engine.send(cmd).await?;
    ack(&app, task, req.attempt).await
}

/// `POST /tasks/{id}/retry` (operator): a failed or cancelled task gets a new attempt and a fresh budget.
pub async fn retry(
    State(app): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<TaskAck>, ApiError> {
    let task = parse_task(&id)?;
    operator_command(&app, task, Command::RetryTask { task, by: "operator".into() }).await
}

/// `POST /tasks/{id}/cancel` (operator): the agent running it is told to stop at its next heartbeat.
pub async fn cancel(
    State(app): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<TaskAck>, ApiError> {
    let task = parse_task(&id)?;
    operator_command(&app, task, Command::CancelTask { task, reason: "cancelled by an operator".into() }).await
}

/// Applies an operator's command to a task and answers with where the task now stands.
async fn operator_command(app: &AppState, task: TaskId, cmd: Command) -> Result<Json<TaskAck>, ApiError> {
    app.engine.send(cmd).await?;
    let (state, attempt) = app
        .reads
        .with(move |r| {
            r.task(task)?
                .map(|t| (t.state, t.attempt))
                .ok_or_else(|| ApiError::NotFound(format!("task {task} not found")))
        })
        .await?;
    Ok(Json(TaskAck { task_id: task, attempt, state }))
}
