//! Operator views of tasks: `GET /api/v1/tasks` and `GET /api/v1/tasks/{id}`.

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::extract::Operator;
use super::{ApiError, AppState};
use crate::core::{Event, Task, TaskId, TaskState};
use crate::store::TaskSummary;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tasks in this state.
    state: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
}

#[derive(Debug, Serialize)]
pub struct LoggedEvent {
    pub seq: i64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Serialize)]
pub struct TaskDetail {
    pub task: Task,
    pub events: Vec<LoggedEvent>,
    /// The agents' newest progress lines, oldest first.
    pub progress: Vec<ProgressLine>,
}

#[derive(Debug, Serialize)]
pub struct ProgressLine {
    pub attempt: u32,
    pub at: crate::core::Timestamp,
    pub line: String,
}

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
    let tasks = app.reads.with(move |r| Ok(r.tasks(state, limit)?)).await?;
    Ok(Json(TaskList { tasks }))
}

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
