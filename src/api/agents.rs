//! The agent registry: register, heartbeat, deregister, list, drain.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::doc::{AgentStatusDoc, TAG_AGENTS};
use super::error::ErrorBody;
use super::extract::{ApiJson, AuthAgent, Operator, Viewer};
use super::{ApiError, AppState, auth};
use crate::core::{AgentId, AgentName, AgentState, AgentStatus, TaskId};
use crate::engine::{Command, Registration, Reply};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "builder-1", "adapter": "claude-code", "capabilities": ["rust", "docs"],
    "max_concurrency": 2, "version": "forgefleet 0.1.0"}))]
pub struct RegisterRequest {
    /// Unique in the fleet: 1 to 64 of `A-Z a-z 0-9 . _ -`. Registering a name again updates that agent.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// The adapter kind it runs, e.g. `claude-code`, `codex`, `command` (1 to 64 characters, no control
    /// characters).
    #[schema(min_length = 1, max_length = 64)]
    pub adapter: String,
    /// What it can do: matched against the `needs:*` labels of tasks. At most 64, each 1 to 64 characters
    /// without spaces or control characters.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub capabilities: Vec<String>,
    /// How many tasks it runs at once.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 64, default = 1)]
    pub max_concurrency: u32,
    /// Free text for operators, at most 200 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub version: String,
    /// The agent token this name was given at its last registration. Needed to register a name whose agent
    /// is online (or busy, or draining): a runner that restarts presents it to take its name back.
    #[serde(default)]
    pub agent_token: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    /// Stable across re-registrations of the same name.
    #[schema(value_type = i64)]
    pub agent_id: AgentId,
    /// The agent's bearer token for every other agent route. Shown once: only its hash is kept.
    #[schema(example = "ffa_3f9c...")]
    pub token: String,
    /// Send a heartbeat this often; three missed intervals make the agent offline.
    pub heartbeat_interval_secs: u64,
}

const MAX_SLOTS: u32 = 64;
const MAX_WORD: usize = 64;
/// Capabilities one agent may list: each registration is an event kept for ever.
const MAX_CAPABILITIES: usize = 64;
const MAX_VERSION: usize = 200;

#[utoipa::path(
    post,
    path = "/agents/register",
    operation_id = "register_agent",
    tag = TAG_AGENTS,
    summary = "Register an agent (or re-register it)",
    description = "Takes the fleet's registration token. Answers with the agent's own token, which every other \
        agent route takes. Registering an existing name updates that agent and replaces its token: the old one \
        stops working, and the tasks it held go back to the queue at once (`agent_lost`), since the process \
        that held them is gone. A name whose agent is online (or busy, or draining) is taken only with that \
        agent's current token in `agent_token` (a restarted runner); otherwise 409 `name_in_use`. An offline \
        or forgotten agent's name is free.",
    request_body = RegisterRequest,
    security(("registration_token" = [])),
    responses(
        (status = 200, description = "Registered", body = RegisterResponse),
        (status = 400, description = "Invalid JSON, an unknown field, or a bad name, adapter, capability, \
            `max_concurrency` (1 to 64) or `version`", body = ErrorBody),
        (status = 401, description = "Missing or wrong registration token, or registration is closed (no token \
            configured on the server)", body = ErrorBody),
        (status = 409, description = "`name_in_use`: an agent of that name is online and `agent_token` is not its \
            current token", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn register(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let expected = app.config.agents.registration_token.as_ref().map(|s| s.expose());
    let given = auth::bearer(&headers)?;
    match expected {
        None => {
            return Err(ApiError::Unauthorized(
                "registration is closed: no [agents] registration_token is configured on this server".into(),
            ));
        }
        Some(t) if !auth::same_token(given, t) => {
            return Err(ApiError::Unauthorized("the registration token is not valid".into()));
        }
        Some(_) => {}
    }
    let name = AgentName::parse(&req.name).map_err(|e| {
        let shown: String = req.name.chars().take(MAX_WORD).collect();
        ApiError::BadRequest(format!("`name` {shown:?} is not a valid agent name: {}", e.why))
    })?;
    if req.adapter.trim().is_empty() || req.adapter.chars().count() > MAX_WORD {
        return Err(ApiError::BadRequest(format!("`adapter` must be 1 to {MAX_WORD} characters")));
    }
    if req.adapter.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("`adapter` must not contain control characters".into()));
    }
    if !(1..=MAX_SLOTS).contains(&req.max_concurrency) {
        return Err(ApiError::BadRequest(format!("`max_concurrency` must be 1 to {MAX_SLOTS}")));
    }
    if req.capabilities.len() > MAX_CAPABILITIES {
        return Err(ApiError::BadRequest(format!(
            "`capabilities` lists {} entries; at most {MAX_CAPABILITIES} are accepted",
            req.capabilities.len()
        )));
    }
    let mut capabilities = BTreeSet::new();
    for c in &req.capabilities {
        if c.is_empty() || c.chars().count() > MAX_WORD || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            let shown: String = c.chars().take(MAX_WORD).collect();
            return Err(ApiError::BadRequest(format!(
                "`capabilities`: {shown:?} must be 1 to {MAX_WORD} characters without spaces or control characters"
            )));
        }
        capabilities.insert(c.clone());
    }
    if req.version.chars().count() > MAX_VERSION {
        return Err(ApiError::BadRequest(format!("`version` is longer than {MAX_VERSION} characters")));
    }
    if req.version.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("`version` must not contain control characters".into()));
    }
    if req.agent_token.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(ApiError::BadRequest("`agent_token` is longer than any agent token".into()));
    }
    let token = new_token();
    let reg = Registration {
        name,
        adapter: req.adapter,
        capabilities,
        max_concurrency: req.max_concurrency,
        version: req.version,
        token_hash: auth::hash_token(&token),
        presented_token_hash: req.agent_token.as_deref().map(auth::hash_token),
    };
    match app.engine.send(Command::RegisterAgent(reg)).await? {
        Reply::Registered(agent_id) => {
            // A registration replaces the agent's token: the old one must stop working at once.
            app.tokens.forget(agent_id);
            Ok(Json(RegisterResponse {
                agent_id,
                token,
                heartbeat_interval_secs: app.config.agents.heartbeat_interval_secs,
            }))
        }
        other => Err(ApiError::Internal(format!("register answered {other:?}"))),
    }
}

/// 32 random bytes, hex, with a prefix that makes a leaked token recognisable in a scan.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("ffa_{hex}")
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"running": [7]}))]
pub struct HeartbeatRequest {
    /// The ids of the tasks the agent is working on (at most 1000).
    #[serde(default)]
    #[schema(value_type = Vec<i64>, max_items = 1000)]
    pub running: Vec<TaskId>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatResponse {
    /// Tasks the agent must stop: cancelled, or no longer its own.
    #[schema(value_type = Vec<i64>)]
    pub cancel: Vec<TaskId>,
    pub heartbeat_interval_secs: u64,
}

#[utoipa::path(
    post,
    path = "/agents/heartbeat",
    operation_id = "heartbeat",
    tag = TAG_AGENTS,
    summary = "Say the agent is alive, and which tasks it runs",
    description = "Send one every `heartbeat_interval_secs`. Three missed intervals and the agent is offline: \
        its tasks are `agent_lost` and go back to the queue; a heartbeat brings an offline agent back online. The \
        answer lists the tasks the agent must stop: cancelled, or no longer its own.",
    request_body = HeartbeatRequest,
    security(("agent_token" = [])),
    responses(
        (status = 200, description = "Alive; stop the tasks in `cancel`", body = HeartbeatResponse),
        (status = 400, description = "Invalid JSON, an unknown field, or more than 1000 tasks", body = ErrorBody),
        (status = 401, description = "Missing, unknown or revoked agent token", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn heartbeat(
    State(app): State<AppState>,
    AuthAgent(agent): AuthAgent,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    if req.running.len() > 1000 {
        return Err(ApiError::BadRequest("`running` lists more than 1000 tasks".into()));
    }
    match app.engine.send(Command::Heartbeat { agent: agent.id, running: req.running }).await? {
        Reply::Heartbeat { cancel } => {
            Ok(Json(HeartbeatResponse { cancel, heartbeat_interval_secs: app.config.agents.heartbeat_interval_secs }))
        }
        other => Err(ApiError::Internal(format!("heartbeat answered {other:?}"))),
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeregisterResponse {
    /// Tasks it held, back in the queue.
    #[schema(value_type = Vec<i64>)]
    pub requeued: Vec<TaskId>,
}

#[utoipa::path(
    post,
    path = "/agents/deregister",
    operation_id = "deregister_agent",
    tag = TAG_AGENTS,
    summary = "Leave the fleet",
    description = "The agent's tasks go back to the queue at once (no backoff) and its token stops working. \
        No body is needed.",
    security(("agent_token" = [])),
    responses(
        (status = 200, description = "Deregistered", body = DeregisterResponse),
        (status = 401, description = "Missing, unknown or revoked agent token", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn deregister(
    State(app): State<AppState>,
    AuthAgent(agent): AuthAgent,
) -> Result<Json<DeregisterResponse>, ApiError> {
    match app.engine.send(Command::DeregisterAgent { agent: agent.id }).await? {
        Reply::Requeued(requeued) => {
            app.tokens.forget(agent.id);
            Ok(Json(DeregisterResponse { requeued }))
        }
        other => Err(ApiError::Internal(format!("deregister answered {other:?}"))),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AgentQuery {
    /// Only agents with this capability.
    capability: Option<String>,
    /// Only agents with this status.
    #[param(value_type = Option<AgentStatusDoc>)]
    status: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AgentView {
    pub name: String,
    pub adapter: String,
    #[schema(value_type = AgentStatusDoc)]
    pub status: AgentStatus,
    pub capabilities: Vec<String>,
    pub max_concurrency: u32,
    /// Tasks it holds now.
    pub running: u32,
    pub version: String,
    #[schema(format = DateTime)]
    pub last_heartbeat_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

#[utoipa::path(
    get,
    path = "/agents",
    operation_id = "list_agents",
    tag = TAG_AGENTS,
    summary = "List the agents",
    description = "Every registered agent (deregistered ones are left out), optionally filtered. Takes the \
        operator token or any agent token.",
    params(AgentQuery),
    security(("operator_token" = []), ("agent_token" = [])),
    responses(
        (status = 200, description = "The agents", body = AgentList),
        (status = 400, description = "An unknown status or query parameter", body = ErrorBody),
        (status = 401, description = "Neither the operator token nor an agent token", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    _viewer: Viewer,
    query: Result<Query<AgentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AgentList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            [AgentStatus::Online, AgentStatus::Busy, AgentStatus::Offline, AgentStatus::Draining]
                .into_iter()
                .find(|st| st.as_str() == s)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("unknown status {s:?}; expected online, busy, offline or draining"))
                })?,
        ),
    };
    let rows = app.reads.with(|r| r.agents()).await?;
    let agents = agent_views(rows, status, q.capability.as_deref());
    Ok(Json(AgentList { agents }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DrainResponse {
    pub agent: String,
    /// Always `draining`.
    #[schema(value_type = AgentStatusDoc)]
    pub status: AgentStatus,
}

/// `POST /agents/{name}/drain` (operator): no new work; what it runs, it finishes.
#[utoipa::path(
    post,
    path = "/agents/{name}/drain",
    operation_id = "drain_agent",
    tag = TAG_AGENTS,
    summary = "Drain an agent",
    description = "The agent gets no new work; what it runs, it finishes. It stays draining until it registers \
        again. No body is needed.",
    params(("name" = String, Path, description = "The agent's name")),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "Draining", body = DrainResponse),
        (status = 400, description = "Not a valid agent name", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token, or none configured", body = ErrorBody),
        (status = 404, description = "No agent of that name", body = ErrorBody),
        (status = 409, description = "The agent is not online (already draining, offline or deregistered)",
            body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn drain(
    State(app): State<AppState>,
    _op: Operator,
    Path(name): Path<String>,
) -> Result<Json<DrainResponse>, ApiError> {
    let (name, agent) = agent_named(&app, &name).await?;
    app.engine.send(Command::DrainAgent { agent: agent.id }).await?;
    Ok(Json(DrainResponse { agent: name.to_string(), status: AgentStatus::Draining }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ForgetResponse {
    pub agent: String,
    /// Tasks it held, back in the queue.
    #[schema(value_type = Vec<i64>)]
    pub requeued: Vec<TaskId>,
}

#[utoipa::path(
    post,
    path = "/agents/{name}/forget",
    operation_id = "forget_agent",
    tag = TAG_AGENTS,
    summary = "Remove an agent so that its name can be registered again",
    description = "For an agent whose runner is gone for good (or a name held by someone it should not be): \
        as if the agent had deregistered. Its token stops working, the tasks it held go back to the queue at \
        once, and the next registration under its name needs no agent token. Forgetting an agent already gone \
        changes nothing. Takes the operator token.",
    params(("name" = String, Path, description = "The agent's name")),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "Forgotten", body = ForgetResponse),
        (status = 400, description = "Not a valid agent name", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token, or none configured", body = ErrorBody),
        (status = 404, description = "No agent of that name", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn forget(
    State(app): State<AppState>,
    _op: Operator,
    Path(name): Path<String>,
) -> Result<Json<ForgetResponse>, ApiError> {
    let (name, agent) = agent_named(&app, &name).await?;
    match app.engine.send(Command::DeregisterAgent { agent: agent.id }).await? {
        Reply::Requeued(requeued) => {
            app.tokens.forget(agent.id);
            Ok(Json(ForgetResponse { agent: name.to_string(), requeued }))
        }
        other => Err(ApiError::Internal(format!("forget answered {other:?}"))),
    }
}

/// The agents operators see (the deregistered are gone), optionally only those with a status or a capability.
pub fn agent_views(
    rows: Vec<crate::store::AgentRow>,
    status: Option<AgentStatus>,
    capability: Option<&str>,
) -> Vec<AgentView> {
    rows.into_iter()
        .filter(|row| row.agent.state != AgentState::Deregistered)
        .filter(|row| capability.is_none_or(|c| row.agent.capabilities.contains(c)))
        .map(|row| AgentView {
            status: row.agent.status(row.running),
            name: row.agent.name.to_string(),
            adapter: row.agent.adapter,
            capabilities: row.agent.capabilities.into_iter().collect(),
            max_concurrency: row.agent.max_concurrency,
            running: row.running,
            version: row.agent.version,
            last_heartbeat_at: row.last_heartbeat_at.map(|t| t.to_rfc3339()),
        })
        .filter(|v| status.is_none_or(|s| v.status == s))
        .collect()
}

/// The agent a path names: 400 for a name that cannot be one, 404 for one nobody registered.
async fn agent_named(app: &AppState, name: &str) -> Result<(AgentName, crate::core::Agent), ApiError> {
    let name = AgentName::parse(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let lookup = name.clone();
    let agent = app
        .reads
        .with(move |r| r.agent_by_name(&lookup)?.ok_or_else(|| ApiError::NotFound(format!("agent {lookup} not found"))))
        .await?;
    Ok((name, agent))
}
