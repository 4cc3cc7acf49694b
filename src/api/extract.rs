//! Extractors that turn a request into what handlers need, or into a JSON error a client can act on.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState, auth};
use crate::core::AgentState;

/// A JSON body whose every problem (syntax, wrong field, too large, wrong content type) is an `ApiError`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_error(rejection)),
        }
    }
}

fn json_error(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge("the request body is larger than this server accepts".into());
    }
    match r {
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::BadRequest("send the body as JSON with `Content-Type: application/json`".into())
        }
        other => ApiError::BadRequest(format!("invalid JSON body: {}", other.body_text())),
    }
}

/// The operator, authenticated by the configured operator token.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        auth::require_operator(&parts.headers, app.config.api.operator_token.as_ref().map(|s| s.expose()))?;
        Ok(Operator)
    }
}

/// The agent a request comes from, authenticated by its token. A token replaced by a newer registration,
/// or of an agent that deregistered, is refused.
pub struct AuthAgent(pub AgentRef);

/// Who an authenticated agent is.
#[derive(Debug, Clone, Copy)]
pub struct AgentRef {
    pub id: crate::core::AgentId,
}

impl FromRequestParts<AppState> for AuthAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let hash = auth::hash_token(auth::bearer(&parts.headers)?);
        // Every agent request is authenticated: known tokens are answered from memory.
        if let Some(id) = app.tokens.get(&hash) {
            return Ok(AuthAgent(AgentRef { id }));
        }
        let lookup = hash.clone();
        let agent = app.reads.with(move |r| r.agent_by_token_hash(&lookup)).await?;
        match agent {
            Some(a) if a.state != AgentState::Deregistered => {
                app.tokens.insert(hash, a.id);
                Ok(AuthAgent(AgentRef { id: a.id }))
            }
            Some(_) => {
                Err(ApiError::Unauthorized("this agent has deregistered; register again for a new token".into()))
            }
            None => Err(ApiError::Unauthorized(
                "unknown or revoked agent token (a new registration of the same name replaces the old token)".into(),
            )),
        }
    }
}

/// Either the operator or any registered agent: for views both may see.
pub enum Viewer {
    Operator,
    Agent,
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        if Operator::from_request_parts(parts, app).await.is_ok() {
            return Ok(Viewer::Operator);
        }
        AuthAgent::from_request_parts(parts, app)
            .await
            .map(|_| Viewer::Agent)
            .map_err(|_| ApiError::Unauthorized("send the operator token or an agent token".into()))
    }
}
