//! The runner's side of the agent protocol (`/api/v1`): register, heartbeat, ask for work, report.
//!
//! Transient trouble (the server restarting, a network blip, 503) is retried with backoff for as long as the
//! runner lives: an agent host outlives server restarts. A refusal (4xx) is returned at once, except 401 on
//! an agent call: the server no longer knows this agent's token (e.g. it was deregistered by an operator),
//! so the runner registers again and repeats the call.
//!
//! The agent token is kept in `<work_dir>/agent-token` (mode 0600) and presented when registering again, so
//! a restarted runner gets its name back from a server that still sees it online; without it, the server
//! refuses a second runner under a live agent's name.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::config::AgentConfig;
use crate::api::AssignmentView;
use crate::core::TaskId;

/// The longest wait between two tries of a call the server could not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error that repeating will not change.
    #[error("{method} {path}: {status}: {message}")]
    Refused { method: Method, path: String, status: StatusCode, message: String },
    #[error("{0}")]
    Setup(String),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            ClientError::Setup(_) => None,
        }
    }
}

pub struct FleetClient {
    http: reqwest::Client,
    api: String,
    registration: String,
    register_body: Value,
    /// `<work_dir>/agent-token`.
    token_file: std::path::PathBuf,
    token: tokio::sync::RwLock<Registered>,
}

#[derive(Debug, Clone, Default)]
pub struct Registered {
    pub token: String,
    pub heartbeat_interval: Duration,
    /// Bumped on every registration, so concurrent calls that all saw a 401 register once.
    pub generation: u64,
}

impl FleetClient {
    pub fn new(config: &AgentConfig) -> Result<FleetClient, ClientError> {
        let a = &config.agent;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Long polls answer within `wait_secs`; anything slower is a hung connection, and the call is
            // repeated (with the same idempotency key for a request for work).
            .timeout(Duration::from_secs(a.wait_secs + 30))
            .user_agent(concat!("forgefleet-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = config.ca().map_err(ClientError::Setup)? {
            for cert in ca.certificates() {
                builder = builder.add_root_certificate(cert.clone());
            }
        }
        let http = builder.build().map_err(|e| ClientError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let server = a.server.as_deref().unwrap_or_default().trim_end_matches('/');
        Ok(FleetClient {
            http,
            api: format!("{server}/api/v1"),
            registration: a.registration_token.as_ref().map(|s| s.expose().to_string()).unwrap_or_default(),
            register_body: json!({
                "name": config.name(),
                "adapter": a.adapter.as_str(),
                "capabilities": a.capabilities,
                "max_concurrency": a.max_concurrency,
                "version": env!("CARGO_PKG_VERSION"),
            }),
            token_file: a.work_dir.join("agent-token"),
            token: Default::default(),
        })
    }

    /// Registers (again): a new agent token replaces the old one.
    pub async fn register(&self) -> Result<Registered, ClientError> {
        let seen = self.token.read().await.generation;
        let mut slot = self.token.write().await;
        if slot.generation != seen {
            // Another call registered while this one waited for the lock.
            return Ok(slot.clone());
        }
        let mut body = self.register_body.clone();
        let kept =
            std::fs::read_to_string(&self.token_file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        if let Some(kept) = &kept {
            body["agent_token"] = json!(kept);
        }
        let answer: Value = match self.call(Method::POST, "/agents/register", &self.registration, &body).await {
            // A server older than this runner does not take the field: register as before.
            Err(ClientError::Refused { status, message, .. })
                if kept.is_some() && status == StatusCode::BAD_REQUEST && message.contains("agent_token") =>
            {
                self.call(Method::POST, "/agents/register", &self.registration, &self.register_body).await?
            }
            other => other?,
        };
        let token = answer["token"].as_str().unwrap_or_default().to_string();
        let secs = answer["heartbeat_interval_secs"].as_u64().unwrap_or(15).max(1);
        if let Err(e) = keep_token(&self.token_file, &token) {
            tracing::warn!(file = %self.token_file.display(), error = %e, "cannot keep the agent token; a restart \
                will need `forgefleet agents forget` while the server still sees this agent online");
        }
        *slot = Registered { token, heartbeat_interval: Duration::from_secs(secs), generation: seen + 1 };
        tracing::info!(interval_secs = secs, "registered with the server");
        Ok(slot.clone())
    }

    pub async fn heartbeat_interval(&self) -> Duration {
        self.token.read().await.heartbeat_interval
    }

    /// Lists the running tasks; returns the ones the server wants stopped.
    pub async fn heartbeat(&self, running: &[TaskId]) -> Result<Vec<TaskId>, ClientError> {
        let answer: Value = self.agent_call(Method::POST, "/agents/heartbeat", &json!({"running": running})).await?;
        Ok(serde_json::from_value(answer["cancel"].clone()).unwrap_or_default())
    }

    /// Long-polls for work. `key` makes a repeat after a lost answer return the same assignment.
    pub async fn next(&self, wait_secs: u64, key: &str) -> Result<Option<AssignmentView>, ClientError> {
        let body = json!({"wait_secs": wait_secs, "request_key": key});
        let answer: Option<Value> = self.agent_call(Method::POST, "/assignments/next", &body).await?;
        match answer {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| ClientError::Setup(format!("the server's assignment does not parse: {e}"))),
        }
    }

    pub async fn start(&self, task: TaskId, attempt: u32) -> Result<(), ClientError> {
        self.agent_call::<Value>(Method::POST, &format!("/tasks/{task}/start"), &json!({"attempt": attempt})).await?;
        Ok(())
    }

    pub async fn progress(&self, task: TaskId, attempt: u32, lines: &[String]) -> Result<(), ClientError> {
        let body = json!({"attempt": attempt, "lines": lines});
        self.agent_call::<Value>(Method::POST, &format!("/tasks/{task}/progress"), &body).await?;
        Ok(())
    }

    /// Reports a failed attempt, with what it spent when that is known.
    pub async fn fail(
        &self,
        task: TaskId,
        attempt: u32,
        class: &str,
        message: &str,
        spent: Option<&crate::core::Spent>,
        pushed_branch: Option<&str>,
    ) -> Result<(), ClientError> {
        let mut body = json!({"attempt": attempt, "class": class, "message": message});
        if let Some(s) = spent {
            body["usage"] = json!(s.usage);
            body["cost_usd"] = json!(s.cost_usd);
        }
        if let Some(b) = pushed_branch {
            body["pushed_branch"] = json!(b);
        }
        self.agent_call::<Value>(Method::POST, &format!("/tasks/{task}/fail"), &body).await?;
        Ok(())
    }

    /// Asks a person the agent's question: the attempt ends and the task waits for an answer.
    pub async fn block(
        &self,
        task: TaskId,
        attempt: u32,
        question: &str,
        session_id: Option<&str>,
    ) -> Result<(), ClientError> {
        let session_id = session_id.map(str::to_string);
        let body = crate::api::BlockRequest { attempt, question: question.to_string(), session_id };
        let body = serde_json::to_value(body).map_err(|e| ClientError::Setup(e.to_string()))?;
        self.agent_call::<Value>(Method::POST, &format!("/tasks/{task}/block"), &body).await?;
        Ok(())
    }

    pub async fn receipt(&self, body: &Value) -> Result<(), ClientError> {
        self.agent_call::<Value>(Method::POST, "/receipts", body).await?;
        Ok(())
    }

    pub async fn deregister(&self) -> Result<(), ClientError> {
        self.agent_call::<Value>(Method::POST, "/agents/deregister", &json!({})).await?;
        Ok(())
    }

    /// A call with the agent token; on 401 the runner registers again and repeats it once.
    async fn agent_call<T: DeserializeOwned + Default>(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        let token = self.token.read().await.token.clone();
        match self.call(method.clone(), path, &token, body).await {
            Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => {
                tracing::warn!(%path, "the server does not know this agent's token any more; registering again");
                let fresh = self.register().await?;
                self.call(method, path, &fresh.token, body).await
            }
            other => other,
        }
    }

    /// One call, repeated with backoff while the server cannot answer (network error, 5xx, 429). 204 and an
    /// empty body give `T::default()`.
    async fn call<T: DeserializeOwned + Default>(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.api);
        let mut wait = Duration::from_millis(200);
        loop {
            let sent = self.http.request(method.clone(), &url).bearer_auth(token).json(body).send().await;
            let problem = match sent {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) if b.is_empty() => return Ok(T::default()),
                    Ok(b) => {
                        return serde_json::from_slice(&b).map_err(|e| {
                            ClientError::Setup(format!("{method} {path}: the answer does not parse: {e}"))
                        });
                    }
                    Err(e) => format!("reading the answer: {e}"),
                },
                Ok(r) if r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS => {
                    format!("{}", r.status())
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                        .unwrap_or_else(|| text.chars().take(300).collect());
                    return Err(ClientError::Refused { method, path: path.to_string(), status, message });
                }
                Err(e) => crate::integrations::forgejo::client::error_chain(&e),
            };
            tracing::warn!(%method, %path, %problem, retry_in_ms = wait.as_millis() as u64, "the server did not answer; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }
}

/// Writes the agent token to `path` with mode 0600 (a new file renamed over the old one).
fn keep_token(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
