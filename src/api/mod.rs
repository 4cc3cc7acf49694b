//! HTTP: axum routes. Handlers only translate requests into reads or engine commands and back.

pub mod auth;
mod error;
mod reads;
mod tasks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub use error::ApiError;
pub use reads::ReadPool;

use crate::config::Secret;
use crate::engine::EngineHandle;
use crate::telemetry::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub reads: ReadPool,
    pub metrics: Arc<Metrics>,
    pub operator_token: Option<Secret>,
}

impl AppState {
    fn operator_token(&self) -> Option<&str> {
        self.operator_token.as_ref().map(|s| s.expose())
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/tasks", get(tasks::list))
        .route("/tasks/{id}", get(tasks::show));
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
    let (by_state, by_priority) = app
        .reads
        .with(|r| Ok((r.counts_by_state()?, r.queue_depth_by_priority()?)))
        .await?;
    app.metrics.set_tasks(&by_state, &by_priority);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    ))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed() -> impl IntoResponse {
    let body = serde_json::json!({"error": {"code": "method_not_allowed", "message": "this endpoint does not take that method"}});
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
}
