//! Operator views of tasks: `GET /api/v1/tasks` and `GET /api/v1/tasks/{id}`.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::doc::{LoggedEventDoc, TAG_TASKS, TaskDoc, TaskStateDoc, TaskSummaryDoc};
use super::error::ErrorBody;
use super::extract::Operator;
use super::{ApiError, AppState};
use crate::core::{Event, Task, TaskId, TaskState};
use crate::store::TaskSummary;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this state.
    #[param(value_type = Option<TaskStateDoc>)]
    state: Option<String>,
    /// At most this many (default 100; values outside 1 to 1000 are clamped).
    #[param(default = 100, minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// Newest change first.
    #[schema(value_type = Vec<TaskSummaryDoc>)]
    pub tasks: Vec<TaskSummary>,
}

#[derive(Debug, Serialize)]
pub struct LoggedEvent {
    pub seq: i64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDetail {
    #[schema(value_type = TaskDoc)]
    pub task: Task,
    /// The task's history, oldest first.
    #[schema(value_type = Vec<LoggedEventDoc>)]
    pub events: Vec<LoggedEvent>,
    /// The agents' newest progress lines, oldest first.
    pub progress: Vec<ProgressLine>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressLine {
    pub attempt: u32,
    #[schema(value_type = String, format = DateTime)]
    pub at: crate::core::Timestamp,
    pub line: String,
}

#[utoipa::path(
    get,
    path = "/tasks",
    operation_id = "list_tasks",
    tag = TAG_TASKS,
    summary = "List tasks",
    description = "Operator only. The tasks of the mirror, most recently changed first.",
    params(ListQuery),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "The tasks", body = TaskList),
        (status = 400, description = "An unknown state or query parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token, or none configured", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    _op: Operator,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            let names: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::BadRequest(format!("unknown state {s:?}; expected one of {}", names.join(", ")))
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let tasks = app.reads.with(move |r| r.tasks(state, limit)).await?;
    Ok(Json(TaskList { tasks }))
}

#[utoipa::path(
    get,
    path = "/tasks/{id}",
    operation_id = "show_task",
    tag = TAG_TASKS,
    summary = "Show a task with its events and progress",
    description = "Operator only. The task in full, its event log and the newest progress lines.",
    params(("id" = i64, Path, description = "The task's id")),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "The task", body = TaskDetail),
        (status = 400, description = "Invalid task id", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token, or none configured", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    )
)]
pub async fn show(
    State(app): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<TaskDetail>, ApiError> {
    let id: TaskId = id.parse().map_err(|e: crate::core::InvalidId| ApiError::BadRequest(e.to_string()))?;
    app.reads
        .with(move |r| {
            let task = r.task(id)?.ok_or_else(|| ApiError::NotFound(format!("task {id} not found")))?;
            let events = r.task_events(id)?.into_iter().map(|(seq, event)| LoggedEvent { seq, event }).collect();
            let progress = r
                .progress(id, 200)?
                .into_iter()
                .map(|(attempt, at, line)| ProgressLine { attempt, at, line })
                .collect();
            Ok(Json(TaskDetail { task, events, progress }))
        })
        .await
}
