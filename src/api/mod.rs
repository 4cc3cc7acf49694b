//! HTTP: axum routes. Handlers only translate requests into reads or engine commands and back.

mod agents;
pub mod auth;
mod error;
mod extract;
mod reads;
mod tasks;
mod work;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

pub use agents::{AgentList, AgentView, DeregisterResponse, HeartbeatResponse, RegisterResponse};
pub use error::ApiError;
pub use reads::ReadPool;
pub use work::{AssignmentView, TaskAck};

use crate::config::Config;
use crate::engine::EngineHandle;
use crate::telemetry::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub reads: ReadPool,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.config.api.max_body_bytes;
    let v1 = Router::new()
        .route("/agents/register", post(agents::register))
        .route("/agents/heartbeat", post(agents::heartbeat))
        .route("/agents/deregister", post(agents::deregister))
        .route("/agents", get(agents::list))
        .route("/agents/{name}/drain", post(agents::drain))
        .route("/assignments/next", post(work::next))
        .route("/tasks", get(tasks::list))
        .route("/tasks/{id}", get(tasks::show))
        .route("/tasks/{id}/start", post(work::start))
        .route("/tasks/{id}/progress", post(work::progress))
        .route("/tasks/{id}/fail", post(work::fail))
        .route("/tasks/{id}/retry", post(work::retry))
        .route("/tasks/{id}/cancel", post(work::cancel));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let (by_state, by_priority) = app.reads.with(|r| Ok((r.counts_by_state()?, r.queue_depth_by_priority()?))).await?;
    app.metrics.set_tasks(&by_state, &by_priority);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed() -> impl IntoResponse {
    let body = serde_json::json!({"error": {"code": "method_not_allowed", "message": "this endpoint does not take that method"}});
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
}
