//! The operator's hand on the outbox: a dead letter (a delivery to Forgejo or Matrix that can never succeed) is retried
//! or dropped here; `forgefleet outbox retry|drop` speak these routes.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::doc::TAG_OUTBOX;
use super::error::ErrorBody;
use super::extract::Operator;
use super::{ApiError, AppState};
use crate::engine::{Command, Reply};
use crate::store::OutboxChange;

/// Where an outbox row stands after an operator's command.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OutboxAck {
    pub id: i64,
    /// Where the row goes: `forgejo` or `matrix`.
    pub destination: String,
    /// `waiting` (it is tried again now) or `dropped` (never tried again).
    pub state: String,
}

fn parse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{id:?} is not an outbox id (a positive number)")))
}

/// `POST /outbox/{id}/retry` (operator): a dead letter is tried again now, with its tries counted afresh.
#[utoipa::path(
    post,
    path = "/outbox/{id}/retry",
    operation_id = "retry_delivery",
    tag = TAG_OUTBOX,
    summary = "Retry a dead delivery",
    description = "Operator only. A delivery that became a dead letter (Forgejo answered 404, 410 or 422 to every \
        try) is tried again at once, its count of tries reset; a dropped one is taken back too. No body is needed.",
    params(("id" = i64, Path, description = "The outbox row's id, as `forgefleet outbox list` shows it")),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "Waiting for delivery again", body = OutboxAck),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token, or none configured", body = ErrorBody),
        (status = 404, description = "No such outbox row", body = ErrorBody),
        (status = 409, description = "Delivered already, or not dead (it is retried on its own)", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn retry(
    State(app): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<OutboxAck>, ApiError> {
    let id = parse_id(&id)?;
    change(&app, id, Command::OutboxRetry { id }, "waiting").await
}

/// `POST /outbox/{id}/drop` (operator): an undelivered row is given up on, kept for the record.
#[utoipa::path(
    post,
    path = "/outbox/{id}/drop",
    operation_id = "drop_delivery",
    tag = TAG_OUTBOX,
    summary = "Drop an undelivered delivery",
    description = "Operator only. The delivery (a dead letter, or one still waiting) is never tried again; the row \
        is kept, marked dropped. Later deliveries to the same issue no longer wait for it. No body is needed.",
    params(("id" = i64, Path, description = "The outbox row's id, as `forgefleet outbox list` shows it")),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "Dropped", body = OutboxAck),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 401, description = "Missing or wrong operator token, or none configured", body = ErrorBody),
        (status = 404, description = "No such outbox row", body = ErrorBody),
        (status = 409, description = "Delivered or dropped already", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    )
)]
pub async fn drop(
    State(app): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<OutboxAck>, ApiError> {
    let id = parse_id(&id)?;
    change(&app, id, Command::OutboxDrop { id }, "dropped").await
}

async fn change(app: &AppState, id: i64, cmd: Command, state: &str) -> Result<Json<OutboxAck>, ApiError> {
    let found = match app.engine.send(cmd).await? {
        Reply::Outbox(c) => c,
        other => return Err(ApiError::Internal(format!("unexpected engine reply {other:?}"))),
    };
    match found {
        OutboxChange::Done { destination } => Ok(Json(OutboxAck { id, destination, state: state.to_string() })),
        OutboxChange::NotFound => Err(ApiError::NotFound(format!("outbox row {id} not found"))),
        OutboxChange::Delivered => Err(ApiError::Conflict(format!("outbox row {id} was delivered already"))),
        OutboxChange::Dropped => Err(ApiError::Conflict(format!("outbox row {id} was dropped already"))),
        OutboxChange::Waiting => Err(ApiError::Conflict(format!(
            "outbox row {id} is not dead: it waits for its next try and is retried on its own"
        ))),
    }
}
