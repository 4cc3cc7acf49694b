//! An agent's work: long-polling for an assignment, then start, progress and failure reports.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::doc::{AgentFailureClassDoc, TAG_WORK, TaskStateDoc};
use super::error::ErrorBody;
use super::extract::{ApiJson, AuthAgent, Operator};
use super::{ApiError, AppState};
use crate::core::{FailureClass, MAX_QUESTION_BYTES, QUESTION_FILE, Spent, TaskId, TaskState, Usage, is_session_id};
use crate::engine::{Assignment, Command};
use crate::integrations::templates::AgentPrompt;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"wait_secs": 30, "request_key": "builder-1-0001"}))]
pub struct NextRequest {
    /// How long to wait for work, 0 (answer at once) to the server's maximum (`[agents] max_wait_secs`,
    /// 60 by default).
    #[serde(default)]
    #[schema(default = 0)]
    pub wait_secs: u64,
    /// An idempotency key, 1 to 128 characters. Use a new one for each new request and repeat it when
    /// retrying a request whose answer was lost: the same assignment comes back, never a second one.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub request_key: Option<String>,
}

/// Everything an agent needs to do a task.
#[derive(Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AssignmentView {
    #[schema(value_type = i64)]
    pub task_id: TaskId,
    pub attempt: u32,
    pub repo: String,
    pub issue: u64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    /// Where to clone from and push to: `<git_url or url>/<owner>/<name>.git` of `[forgejo]`; `null` until a
    /// Forgejo URL is configured.
    pub clone_url: Option<String>,
    /// The Forgejo the pull request is opened on (`[forgejo] url`); `null` until one is configured.
    pub forgejo_url: Option<String>,
    pub base_branch: String,
    /// The branch to push the work to, and the only head branch its pull request may have: a fresh
    /// `<branch_prefix>issue-<N>-attempt-<A>`, or the branch an earlier attempt pushed before it failed
    /// (`pushed_branch` of its `fail` report), whose work this attempt continues.
    pub branch: String,
    /// Acknowledge (`start`) before this, or the assignment is taken back.
    #[schema(format = DateTime)]
    pub start_by: String,
    /// The task fails with `timeout` after this.
    #[schema(format = DateTime)]
    pub deadline: String,
    /// What to tell the coding agent: the issue, the repository's own instructions (`prompt` in its
    /// `.forgejo/fleet.yaml`) and how to hand the work back, rendered from the `agent_prompt.md` template. An
    /// attempt that goes on from earlier work is told what that work was (the earlier attempt's summary, the
    /// changes asked for, the failure or the answer), whether or not it resumes the session: a runner that cannot
    /// resume it starts a fresh session with this prompt.
    pub prompt: String,
    /// The CLI session to resume (Claude Code `--resume <id>`, Codex `codex exec resume <id>`): present only
    /// when this agent ran the earlier attempt this one goes on from and reported its session. Letters, digits
    /// and `-`, at most 128; a runner checks that before it goes on a command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 128, pattern = "^[A-Za-z0-9][A-Za-z0-9-]*$")]
    pub resume_session: Option<String>,
}

impl AssignmentView {
    fn new(a: &Assignment, app: &AppState) -> Result<Self, ApiError> {
        let f = &app.config.forgejo;
        let t = &a.task;
        let branch = t.branch(&f.branch_prefix);
        // Only an attempt after the session's own goes on from it (a restarted attempt starts over).
        let earlier = t.last_session.as_ref().filter(|s| s.attempt < a.lease.attempt);
        let resume_session = earlier
            .filter(|s| s.agent == a.lease.agent)
            .and_then(|s| s.session_id.clone())
            .filter(|id| is_session_id(id));
        let prompt = app
            .templates
            .render(&AgentPrompt {
                repo: t.issue.repo.to_string(),
                issue: t.issue.number,
                title: t.title.clone(),
                body: t.body.clone(),
                labels: t.labels.clone(),
                instructions: a.instructions.clone(),
                branch: branch.clone(),
                base_branch: f.base_branch.clone(),
                attempt: a.lease.attempt,
                previous_failure: t
                    .last_failure
                    .as_ref()
                    .filter(|f| {
                        f.attempt + 1 == a.lease.attempt
                            && matches!(f.class, FailureClass::ChecksFailed | FailureClass::VerificationFailed)
                    })
                    .map(|f| f.message.clone()),
                follow_up: t.follow_up.as_ref().map(Into::into),
                question: t.question.as_ref().map(|q| q.text.clone()),
                answer: t.question.as_ref().and_then(|q| q.answer.clone()),
                earlier_attempt: earlier.filter(|s| !s.summary.trim().is_empty()).map(|s| s.attempt),
                earlier_summary: earlier.map(|s| s.summary.trim().to_string()).filter(|s| !s.is_empty()),
                question_file: QUESTION_FILE.into(),
            })
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let git_base = f.git_url.as_ref().or(f.url.as_ref());
        Ok(Self {
            task_id: t.id,
            attempt: a.lease.attempt,
            repo: t.issue.repo.to_string(),
            issue: t.issue.number,
            title: t.title.clone(),
            body: t.body.clone(),
            labels: t.labels.clone(),
            clone_url: git_base.map(|u| format!("{}/{}.git", u.trim_end_matches('/'), t.issue.repo)),
            forgejo_url: f.url.clone(),
            base_branch: f.base_branch.clone(),
            branch,
            start_by: a.lease.start_by.to_rfc3339(),
            deadline: a.lease.deadline.to_rfc3339(),
            prompt,
            resume_session,
        })
    }
}

/// `POST /assignments/next`: 200 with an assignment as soon as one fits, 204 when the wait ends.
#[utoipa::path(
    post,
    path = "/assignments/next",
    operation_id = "next_assignment",
    tag = TAG_WORK,
    summary = "Ask for work (long poll)",
    description = "Answers as soon as a task fits the agent (its capabilities, a pin to its name, a free slot), \
        or with 204 when `wait_secs` ends. The agent must `start` the task before `start_by`. A repeated \
        `request_key` gets the lease it got before, so retry a lost answer with the same key.",
    request_body = NextRequest,
    security(("agent_token" = [])),
    responses(
        (status = 200, description = "A task to do", body = AssignmentView),
        (status = 204, description = "No work arrived within `wait_secs`"),
        (status = 400, description = "Invalid JSON, an unknown field, `wait_secs` above the server's maximum, or \
            a `request_key` not 1 to 128 characters", body = ErrorBody),
        (status = 401, description = "Missing, unknown or revoked agent token", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
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
        Some(a) => Ok(Json(AssignmentView::new(&a, &app)?).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"attempt": 1}))]
pub struct AttemptRequest {
    /// The attempt of the assignment (`attempt` in it).
    pub attempt: u32,
}

/// Where a task stands after a command.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskAck {
    #[schema(value_type = i64)]
    pub task_id: TaskId,
    pub attempt: u32,
    #[schema(value_type = TaskStateDoc)]
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

#[utoipa::path(
    post,
    path = "/tasks/{id}/start",
    operation_id = "start_task",
    tag = TAG_WORK,
    summary = "Acknowledge an assignment",
    description = "Tells the server the agent has begun: the task goes from `assigned` to `running`. Must come before the \
        assignment's `start_by`, or the task goes back to the queue.",
    params(("id" = i64, Path, description = "The task's id")),
    request_body = AttemptRequest,
    security(("agent_token" = [])),
    responses(
        (status = 200, description = "Running", body = TaskAck),
        (status = 400, description = "Invalid task id or JSON", body = ErrorBody),
        (status = 401, description = "Missing, unknown or revoked agent token", body = ErrorBody),
        (status = 403, description = "The agent does not hold the lease of this task and attempt", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The transition does not apply: already started, or the attempt is stale (the \
            lease was lost and the task moved on)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"attempt": 1, "lines": ["cloned acme/app", "running cargo test"]}))]
pub struct ProgressRequest {
    pub attempt: u32,
    /// 1 to 100 log lines, each at most 4096 bytes. The server keeps the newest few hundred per task.
    #[schema(min_items = 1, max_items = 100)]
    pub lines: Vec<String>,
}

const MAX_LINES: usize = 100;
const MAX_LINE_BYTES: usize = 4096;

#[utoipa::path(
    post,
    path = "/tasks/{id}/progress",
    operation_id = "report_progress",
    tag = TAG_WORK,
    summary = "Report progress (log lines)",
    description = "Lines for operators and chat, kept per task (`GET /tasks/{id}` shows them). Changes no state.",
    params(("id" = i64, Path, description = "The task's id")),
    request_body = ProgressRequest,
    security(("agent_token" = [])),
    responses(
        (status = 200, description = "Recorded", body = TaskAck),
        (status = 400, description = "Invalid task id or JSON, no lines, more than 100 lines, or a line longer than \
            4096 bytes", body = ErrorBody),
        (status = 401, description = "Missing, unknown or revoked agent token", body = ErrorBody),
        (status = 403, description = "The agent does not hold the lease of this task and attempt", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The attempt is stale (the lease was lost and the task moved on)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"attempt": 1, "class": "agent_error", "message": "claude failed (exit status 1): it used up its turns",
    "usage": {"input_tokens": 5200, "output_tokens": 310}, "cost_usd": 0.07}))]
pub struct FailRequest {
    pub attempt: u32,
    /// Why it failed; decides whether and when the task is retried.
    #[schema(value_type = AgentFailureClassDoc)]
    pub class: String,
    /// For people: shown in the issue comment. At most 64 KiB.
    #[serde(default)]
    pub message: String,
    /// Tokens the attempt used before it failed, as in a receipt: kept with the failure.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Usage>,
    /// What the attempt cost before it failed, in US dollars.
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// The assignment's `branch`, when the attempt pushed work to it before failing (e.g. the pull request
    /// could not be opened): the next attempt is assigned the same branch and continues that work. Any
    /// other branch is refused.
    #[serde(default)]
    pub pushed_branch: Option<String>,
}

#[utoipa::path(
    post,
    path = "/tasks/{id}/fail",
    operation_id = "fail_task",
    tag = TAG_WORK,
    summary = "Report a failed attempt",
    description = "Ends the attempt. The retry policy of the class decides: back to the queue with a new attempt after a \
        backoff, or `failed` when the class's retry budget is spent. `cancelled` and `checks_failed` cannot be reported by an agent (people cancel; forgefleet reads CI itself). \
        `usage` and `cost_usd`, when given, are what the attempt spent: kept with the failure event. \
        `pushed_branch` (the assignment's `branch`) says the work was pushed before the failure: every later \
        attempt is assigned that branch and continues it.",
    params(("id" = i64, Path, description = "The task's id")),
    request_body = FailRequest,
    security(("agent_token" = [])),
    responses(
        (status = 200, description = "Recorded; `state` says whether it is queued again or failed", body = TaskAck),
        (status = 400, description = "Invalid task id or JSON, an unknown class, the class `cancelled` or `checks_failed`, a message \
            over 64 KiB, a negative `cost_usd`, more than 32 `usage` counters, or a `pushed_branch` that is not the \
            assignment's `branch`", body = ErrorBody),
        (status = 401, description = "Missing, unknown or revoked agent token", body = ErrorBody),
        (status = 403, description = "The agent does not hold the lease of this task and attempt", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The transition does not apply, or the attempt is stale", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
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
    if req.cost_usd.is_some_and(|c| !c.is_finite() || c < 0.0) {
        return Err(ApiError::BadRequest("`cost_usd` must be a number of at least 0".into()));
    }
    if req.usage.as_ref().is_some_and(|u| u.other.len() > MAX_USAGE_COUNTERS) {
        return Err(ApiError::BadRequest(format!("`usage` has more than {MAX_USAGE_COUNTERS} counters")));
    }
    let spent = (req.usage.is_some() || req.cost_usd.is_some())
        .then(|| Spent { usage: req.usage.unwrap_or_default(), cost_usd: req.cost_usd });
    let (attempt, message, pushed_branch) = (req.attempt, req.message, req.pushed_branch);
    let cmd = Command::FailTask { agent: agent.id, task, attempt, class, message, spent, pushed_branch };
    app.engine.send(cmd).await?;
    ack(&app, task, req.attempt).await
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"attempt": 1, "question": "The issue asks for the export in CSV, but the code already has a JSON export. Should I replace it or add CSV beside it?"}))]
pub struct BlockRequest {
    pub attempt: u32,
    /// What the agent needs a person to answer, for people: posted on the issue (fenced). 1 byte to 16 KiB.
    #[schema(min_length = 1, max_length = 16384)]
    pub question: String,
    /// The coding agent's CLI session that asked (Claude Code's `session_id`, Codex's `thread_id`): the attempt
    /// after the answer resumes it when it goes to the same agent. Letters, digits and `-`, at most 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 128, pattern = "^[A-Za-z0-9][A-Za-z0-9-]*$")]
    pub session_id: Option<String>,
}

#[utoipa::path(
    post,
    path = "/tasks/{id}/block",
    operation_id = "block_task",
    tag = TAG_WORK,
    summary = "Ask a person a question and stop (blocked)",
    description = "Ends the attempt without a failure: the task becomes `blocked`, the lease ends (no timeout runs, \
        no slot is held, nothing is retried) and the question is posted on the issue. A person with write access \
        answers with `/answer <text>`: a new attempt is queued whose prompt carries the question and the answer, \
        continuing the branch an earlier attempt pushed, if any. The same question again for the same attempt is \
        a no-op.",
    params(("id" = i64, Path, description = "The task's id")),
    request_body = BlockRequest,
    security(("agent_token" = [])),
    responses(
        (status = 200, description = "Blocked (or already blocked on this question)", body = TaskAck),
        (status = 400, description = "Invalid task id or JSON, or a question that is empty or over 16 KiB", body = ErrorBody),
        (status = 401, description = "Missing, unknown or revoked agent token", body = ErrorBody),
        (status = 403, description = "The agent does not hold the lease of this task and attempt", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The transition does not apply (the attempt was not started, or is no longer \
            running), or the attempt is stale", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn block(
    State(app): State<AppState>,
    AuthAgent(agent): AuthAgent,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<BlockRequest>,
) -> Result<Json<TaskAck>, ApiError> {
    let task = parse_task(&id)?;
    if req.question.trim().is_empty() {
        return Err(ApiError::BadRequest("`question` is empty: say what a person should answer".into()));
    }
    if req.question.len() > MAX_QUESTION_BYTES {
        return Err(ApiError::BadRequest(format!("`question` is longer than {} KiB", MAX_QUESTION_BYTES / 1024)));
    }
    if req.session_id.as_deref().is_some_and(|s| !is_session_id(s)) {
        return Err(ApiError::BadRequest(
            "`session_id` must be 1 to 128 letters, digits and '-', not beginning with '-'".into(),
        ));
    }
    let (attempt, question, session_id) = (req.attempt, req.question, req.session_id);
    let cmd = Command::BlockTask { agent: agent.id, task, attempt, question, session_id };
    app.engine.send(cmd).await?;
    ack(&app, task, req.attempt).await
}

/// Counters besides input and output tokens a `usage` may carry.
const MAX_USAGE_COUNTERS: usize = 32;

/// `POST /tasks/{id}/retry` (operator): a failed or cancelled task gets a new attempt and a fresh budget.
#[utoipa::path(
    post,
    path = "/tasks/{id}/retry",
    operation_id = "retry_task",
    tag = TAG_WORK,
    summary = "Retry a failed or cancelled task",
    description = "Operator only. Queues a new attempt with a fresh retry budget. No body is needed.",
    params(("id" = i64, Path, description = "The task's id")),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "Queued again", body = TaskAck),
        (status = 400, description = "Invalid task id", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token, or none configured", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is neither failed nor cancelled", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn retry(
    State(app): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<TaskAck>, ApiError> {
    let task = parse_task(&id)?;
    task_command(&app, task, Command::RetryTask { task, by: "operator".into() }).await
}

/// `POST /tasks/{id}/cancel` (operator): the agent running it is told to stop at its next heartbeat.
#[utoipa::path(
    post,
    path = "/tasks/{id}/cancel",
    operation_id = "cancel_task",
    tag = TAG_WORK,
    summary = "Cancel a task",
    description = "Operator only. The agent running it is told to stop at its next heartbeat; a cancelled task is not \
        retried unless an operator retries it. No body is needed.",
    params(("id" = i64, Path, description = "The task's id")),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "Cancelled", body = TaskAck),
        (status = 400, description = "Invalid task id", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token, or none configured", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is already finished (completed, failed or cancelled)", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(app): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<TaskAck>, ApiError> {
    let task = parse_task(&id)?;
    task_command(&app, task, Command::CancelTask { task, reason: "cancelled by an operator".into() }).await
}

/// Applies a command about a task and answers with where the task now stands.
pub(super) async fn task_command(app: &AppState, task: TaskId, cmd: Command) -> Result<Json<TaskAck>, ApiError> {
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
