//! The agent registry: register, heartbeat, deregister, list, drain.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, AuthAgent, Operator, Viewer};
use super::{ApiError, AppState, auth};
use crate::core::{AgentId, AgentName, AgentState, AgentStatus, TaskId};
use crate::engine::{Command, Registration, Reply};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub name: String,
    pub adapter: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default = "one")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub version: String,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub agent_id: AgentId,
    /// Shown once: only its hash is kept.
    pub token: String,
    pub heartbeat_interval_secs: u64,
}

const MAX_SLOTS: u32 = 64;
const MAX_WORD: usize = 64;

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
    let name = AgentName::parse(&req.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if req.adapter.trim().is_empty() || req.adapter.len() > MAX_WORD {
        return Err(ApiError::BadRequest(format!("`adapter` must be 1 to {MAX_WORD} characters")));
    }
    if !(1..=MAX_SLOTS).contains(&req.max_concurrency) {
        return Err(ApiError::BadRequest(format!("`max_concurrency` must be 1 to {MAX_SLOTS}")));
    }
    let mut capabilities = BTreeSet::new();
    for c in &req.capabilities {
        if c.is_empty() || c.len() > MAX_WORD || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(ApiError::BadRequest(format!(
                "capability {c:?} must be 1 to {MAX_WORD} characters without spaces"
            )));
        }
        capabilities.insert(c.clone());
    }
    if req.version.len() > 200 {
        return Err(ApiError::BadRequest("`version` is longer than 200 characters".into()));
    }
    let token = new_token();
    let reg = Registration {
        name,
        adapter: req.adapter,
        capabilities,
        max_concurrency: req.max_concurrency,
        version: req.version,
        token_hash: auth::hash_token(&token),
    };
    match app.engine.send(Command::RegisterAgent(reg)).await? {
        Reply::Registered(agent_id) => Ok(Json(RegisterResponse {
            agent_id,
            token,
            heartbeat_interval_secs: app.config.agents.heartbeat_interval_secs,
        })),
        other => Err(ApiError::Internal(format!("register answered {other:?}"))),
    }
}

/// 32 random bytes, hex, with a prefix that makes a leaked token recognisable in a scan.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("ffa_{hex}")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    #[serde(default)]
    pub running: Vec<TaskId>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Tasks the agent must stop: cancelled, or no longer its own.
    pub cancel: Vec<TaskId>,
    pub heartbeat_interval_secs: u64,
}

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

#[derive(Debug, Serialize, Deserialize)]
pub struct DeregisterResponse {
    /// Tasks it held, back in the queue.
    pub requeued: Vec<TaskId>,
}

pub async fn deregister(
    State(app): State<AppState>,
    AuthAgent(agent): AuthAgent,
) -> Result<Json<DeregisterResponse>, ApiError> {
    match app.engine.send(Command::DeregisterAgent { agent: agent.id }).await? {
        Reply::Requeued(requeued) => Ok(Json(DeregisterResponse { requeued })),
        other => Err(ApiError::Internal(format!("deregister answered {other:?}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    capability: Option<String>,
    status: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentView {
    pub name: String,
    pub adapter: String,
    pub status: AgentStatus,
    pub capabilities: Vec<String>,
    pub max_concurrency: u32,
    pub running: u32,
    pub version: String,
    pub last_heartbeat_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

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
    let rows = app.reads.with(|r| Ok(r.agents()?)).await?;
    let agents = rows
        .into_iter()
        .filter(|row| row.agent.state != AgentState::Deregistered)
        .filter(|row| q.capability.as_ref().is_none_or(|c| row.agent.capabilities.contains(c)))
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
        .collect();
    Ok(Json(AgentList { agents }))
}

/// `POST /agents/{name}/drain` (operator): no new work; what it runs, it finishes.
pub async fn drain(
    State(app): State<AppState>,
    _op: Operator,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = AgentName::parse(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let lookup = name.clone();
    let agent = app
        .reads
        .with(move |r| r.agent_by_name(&lookup)?.ok_or_else(|| ApiError::NotFound(format!("agent {lookup} not found"))))
        .await?;
    app.engine.send(Command::DrainAgent { agent: agent.id }).await?;
    Ok(Json(serde_json::json!({"agent": name, "status": "draining"})))
}
