//! HTTP: axum routes. Handlers only translate requests into reads or engine commands and back.

mod agents;
pub mod auth;
mod doc;
mod error;
mod extract;
mod outbox;
mod receipts;
mod tasks;
mod webhooks;
mod work;

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The read pool the handlers share with the background workers (it lives in the store).
pub use crate::store::ReadPool;
pub use agents::{
    AgentList, AgentView, DeregisterResponse, DrainResponse, ForgetResponse, HeartbeatResponse, RegisterResponse,
    agent_views,
};
use doc::TAG_SYSTEM;
pub use error::{ApiError, ErrorBody, ErrorCode, ErrorDetail};
pub use outbox::OutboxAck;
pub use work::{AssignmentView, BlockRequest, TaskAck};

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
    /// The agents' prompt is rendered from `agent_prompt.md` when an assignment is handed out.
    pub templates: Arc<crate::integrations::templates::Templates>,
    /// Agent token hashes already checked against the store.
    pub tokens: TokenCache,
    /// Pull requests webhooks mentioned: the CI poller looks at their statuses again at once.
    pub pull_news: crate::integrations::forgejo::checks::PullNews,
}

/// Token hash -> agent, for tokens seen valid. Forgotten when the agent registers again (a new token
/// replaces the old) or deregisters (its token is revoked).
#[derive(Clone, Default)]
pub struct TokenCache(Arc<std::sync::Mutex<std::collections::HashMap<String, crate::core::AgentId>>>);

impl TokenCache {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, crate::core::AgentId>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn get(&self, hash: &str) -> Option<crate::core::AgentId> {
        self.map().get(hash).copied()
    }
    pub fn insert(&self, hash: String, agent: crate::core::AgentId) {
        self.map().insert(hash, agent);
    }
    pub fn forget(&self, agent: crate::core::AgentId) {
        self.map().retain(|_, a| *a != agent);
    }
}

/// Every route, each registered together with its OpenAPI operation (`#[utoipa::path]` on the handler): the
/// router and the document come from this one list. Add routes here only through `routes!`, one handler
/// per call, so nothing is served that the document does not describe.
fn routes() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(agents::register))
        .routes(routes!(agents::heartbeat))
        .routes(routes!(agents::deregister))
        .routes(routes!(agents::list))
        .routes(routes!(agents::drain))
        .routes(routes!(agents::forget))
        .routes(routes!(work::next))
        .routes(routes!(tasks::list))
        .routes(routes!(tasks::show))
        .routes(routes!(work::start))
        .routes(routes!(work::progress))
        .routes(routes!(work::fail))
        .routes(routes!(work::block))
        .routes(routes!(work::retry))
        .routes(routes!(work::cancel))
        .routes(routes!(receipts::submit))
        .routes(routes!(outbox::retry))
        .routes(routes!(outbox::drop))
        .routes(routes!(webhooks::forgejo))
        .routes(routes!(openapi_json));
    OpenApiRouter::with_openapi(doc::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .nest("/api/v1", v1)
}

/// The OpenAPI 3 document of the whole HTTP surface, as served at `GET /api/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.config.api.max_body_bytes;
    let (routes, _) = routes().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// The document as served: built once, on first request.
static OPENAPI_JSON: LazyLock<String> =
    LazyLock::new(|| openapi().to_pretty_json().expect("the OpenAPI document serializes"));

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = TAG_SYSTEM,
    summary = "This API's OpenAPI 3 document",
    description = "The machine-readable contract of every route, generated from the code. No token needed.",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"))
)]
async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON.as_str())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the server answers.
    #[schema(example = "ok")]
    pub status: String,
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = TAG_SYSTEM,
    summary = "Liveness",
    description = "Answers while the HTTP server runs. No token needed.",
    responses((status = 200, description = "Alive", body = Health))
)]
async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok".into() })
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = TAG_SYSTEM,
    summary = "Prometheus metrics",
    description = "Tasks by state, queued tasks by priority, events appended, commands applied, event-append \
        latency, and the outbox (side effects waiting, failing, the oldest one's time), in the Prometheus text \
        format. No token needed.",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 500, description = "Internal error", body = ErrorBody),
    )
)]
async fn metrics(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let (by_state, by_priority, outbox) = app
        .reads
        .with(|r| -> crate::store::Result<_> {
            Ok((r.counts_by_state()?, r.queue_depth_by_priority()?, r.outbox_health()?))
        })
        .await?;
    app.metrics.set_tasks(&by_state, &by_priority);
    app.metrics.set_outbox(&outbox);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed() -> impl IntoResponse {
    let body = ErrorBody::new(ErrorCode::MethodNotAllowed, "this endpoint does not take that method");
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
}
