//! A scripted model server for running the real `claude` and `codex` CLIs offline (see `support::clis`).
//!
//! [`ModelServer::start`] listens on `127.0.0.1:0` with a tokio runtime on threads of its own (so it answers
//! while a test blocks on a child process, from any test flavour) and stops when dropped. It speaks both wire
//! formats, streaming (SSE) and always ending each response (a stream left open makes Claude Code hang):
//! - Anthropic Messages, `POST /v1/messages?beta=true` (Claude Code): `message_start`, `content_block_start`,
//!   `content_block_delta` (`text_delta` / `input_json_delta`), `content_block_stop`, `message_delta`
//!   (`stop_reason` `tool_use` or `end_turn`), `message_stop`;
//! - OpenAI Responses, `POST /v1/responses` (Codex): `response.created`, `response.output_item.added` / `.done`
//!   (a `message`, a `function_call` to `exec_command`, or a `custom_tool_call` to `apply_patch`),
//!   `response.completed`.
//!
//! A [`Script`] is the list of [`Step`]s the model takes. Each request gets step number N, where N counts the tool
//! results the request already carries (Anthropic `tool_result` blocks; Responses `function_call_output` /
//! `custom_tool_call_output` items) plus the final answers of earlier turns in its history (so a resumed session
//! continues the script). A step past the end of the script answers "(the script has ended)" and ends the turn.
//! Every model turn reports [`INPUT_TOKENS`] in and [`OUTPUT_TOKENS`] out (no cache tokens), so a run of three turns
//! adds up to 3600 / 126. [`ModelServer::requests`] gives every request body received, in order.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Input tokens every model turn reports.
pub const INPUT_TOKENS: u64 = 1200;
/// Output tokens every model turn reports.
pub const OUTPUT_TOKENS: u64 = 42;
/// The environment variable the Codex config names as `env_key` (its value is the API key Codex sends).
pub const CODEX_KEY_VAR: &str = "FORGEFLEET_TEST_MODEL_KEY";
/// The API key both CLIs are given.
pub const API_KEY: &str = "test-model-key";

/// One thing the model does, answering one request.
#[derive(Clone, Debug)]
pub enum Step {
    /// Runs a shell command: Claude's `Bash {command}`, Codex's `exec_command {cmd}`.
    Shell(String),
    /// Writes a file: Claude's `Write {file_path, content}` (a relative `path` is taken under the working
    /// directory the request names), Codex's `apply_patch` with an `Add File` hunk (the content gets a final
    /// newline if it has none).
    Write { path: String, content: String },
    /// Says `text` and ends the turn (`end_turn`).
    Say(String),
    /// Answers with this HTTP status and an API-style JSON error carrying the message. The CLIs retry 429 and
    /// 5xx statuses (Claude Code with backoff for minutes): use a 4xx to fail fast.
    HttpError(u16, String),
    /// Never answers (the connection stays open until the server is dropped), for timeout tests.
    Hang,
}

impl Step {
    pub fn shell(command: impl Into<String>) -> Step {
        Step::Shell(command.into())
    }

    pub fn write(path: impl Into<String>, content: impl Into<String>) -> Step {
        Step::Write { path: path.into(), content: content.into() }
    }

    pub fn say(text: impl Into<String>) -> Step {
        Step::Say(text.into())
    }

    pub fn http_error(status: u16, message: impl Into<String>) -> Step {
        Step::HttpError(status, message.into())
    }
}

/// The steps of one scripted session, in order.
#[derive(Clone, Debug, Default)]
pub struct Script {
    pub steps: Vec<Step>,
}

impl Script {
    pub fn new(steps: Vec<Step>) -> Script {
        Script { steps }
    }
}

impl From<Vec<Step>> for Script {
    fn from(steps: Vec<Step>) -> Script {
        Script { steps }
    }
}

/// A running scripted model server.
pub struct ModelServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    script: Script,
    requests: Mutex<Vec<Value>>,
    others: Mutex<Vec<String>>,
    ids: AtomicU64,
}

impl ModelServer {
    pub fn start(script: impl Into<Script>) -> ModelServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("model-server")
            .enable_all()
            .build()
            .expect("model server runtime");
        let shared = Arc::new(Shared {
            script: script.into(),
            requests: Mutex::default(),
            others: Mutex::default(),
            ids: AtomicU64::new(1),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind model server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("model server listener");
            let _ = axum::serve(listener, app).await;
        });
        ModelServer { addr, shared, runtime: Some(runtime) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (Claude Code's `ANTHROPIC_BASE_URL`; Codex's base URL is this plus `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The JSON bodies of the model requests received so far (`/v1/messages`, `/v1/responses`), in order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Every other request received, as `METHOD /path` (Claude Code sends a `HEAD /` to warm its connection).
    pub fn other_requests(&self) -> Vec<String> {
        self.shared.others.lock().unwrap().clone()
    }

    /// The environment that points Claude Code at this server, with `home` as its `HOME` (it writes
    /// `.claude.json` and session transcripts there). Best run with an otherwise cleared environment plus PATH.
    pub fn claude_env(&self, home: &Path) -> Vec<(String, String)> {
        std::fs::create_dir_all(home).expect("creating the Claude home");
        [
            ("HOME", home.display().to_string()),
            ("ANTHROPIC_BASE_URL", self.base_url()),
            ("ANTHROPIC_API_KEY", API_KEY.to_owned()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
            ("DISABLE_TELEMETRY", "1".to_owned()),
            ("DISABLE_AUTOUPDATER", "1".to_owned()),
            ("DISABLE_ERROR_REPORTING", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Writes `dir/.codex/config.toml` pointing Codex at this server (model `gpt-5.5`, provider `local` over the
    /// Responses API, no update checks, web search, analytics or plugins) and returns the environment for it:
    /// `CODEX_HOME`, `HOME=dir` and the API key variable. Codex warns (and goes on) when `dir` is under /tmp.
    pub fn codex_home(&self, dir: &Path) -> Vec<(String, String)> {
        let codex_home = dir.join(".codex");
        std::fs::create_dir_all(&codex_home).expect("creating CODEX_HOME");
        let config = format!(
            r#"model = "gpt-5.5"
model_provider = "local"
check_for_update_on_startup = false
web_search = "disabled"

[model_providers.local]
name = "local"
base_url = "{}/v1"
env_key = "{CODEX_KEY_VAR}"
wire_api = "responses"

[analytics]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false
in_app_updates = false
"#,
            self.base_url()
        );
        std::fs::write(codex_home.join("config.toml"), config).expect("writing the Codex config");
        vec![
            ("CODEX_HOME".to_owned(), codex_home.display().to_string()),
            ("HOME".to_owned(), dir.display().to_string()),
            (CODEX_KEY_VAR.to_owned(), API_KEY.to_owned()),
        ]
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            super::git::stop_runtime(runtime);
        }
    }
}

/// All the text of the user's messages in a request of either format (to check that a prompt arrived).
pub fn user_text(request: &Value) -> String {
    let mut text = Vec::new();
    let items = request["messages"].as_array().or(request["input"].as_array()).cloned().unwrap_or_default();
    for item in items.iter().filter(|i| i["role"] == "user") {
        match &item["content"] {
            Value::String(s) => text.push(s.clone()),
            Value::Array(parts) => text.extend(parts.iter().filter_map(|p| p["text"].as_str().map(str::to_owned))),
            _ => {}
        }
    }
    text.join("\n")
}

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    Anthropic,
    Responses,
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let wire = match (parts.method.as_str(), path.as_str()) {
        ("POST", p) if p.ends_with("/messages") => Wire::Anthropic,
        ("POST", p) if p.ends_with("/responses") => Wire::Responses,
        _ => {
            shared.others.lock().unwrap().push(format!("{} {}", parts.method, parts.uri));
            return (StatusCode::NOT_FOUND, axum::Json(error_body(Wire::Anthropic, 404, "not found"))).into_response();
        }
    };
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    shared.requests.lock().unwrap().push(body.clone());
    let index = step_index(wire, &body);
    let ended = Step::Say("(the script has ended)".to_owned());
    let step = shared.script.steps.get(index).unwrap_or(&ended).clone();
    let events = match step {
        Step::Hang => std::future::pending().await,
        Step::HttpError(status, message) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, axum::Json(error_body(wire, status.as_u16(), &message))).into_response();
        }
        step => match wire {
            Wire::Anthropic => anthropic_events(&shared, &body, step),
            Wire::Responses => responses_events(&shared, &body, step),
        },
    };
    let mut sse = String::new();
    for event in events {
        sse.push_str(&format!("event: {}\ndata: {event}\n\n", event["type"].as_str().unwrap_or("message")));
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(sse))
        .unwrap()
}

/// How many steps the session behind `body` has already taken: its tool results plus the final answers of the
/// turns before (an assistant text that was followed by a new user message rather than by the tool call it
/// introduced).
fn step_index(wire: Wire, body: &Value) -> usize {
    let empty = Vec::new();
    match wire {
        Wire::Anthropic => {
            let messages = body["messages"].as_array().unwrap_or(&empty);
            let blocks = |m: &Value, kind: &str| {
                m["content"].as_array().map_or(0, |c| c.iter().filter(|b| b["type"] == kind).count())
            };
            let mut n = 0;
            for (i, message) in messages.iter().enumerate() {
                match message["role"].as_str() {
                    Some("user") => n += blocks(message, "tool_result"),
                    Some("assistant") if blocks(message, "tool_use") == 0 => {
                        let next = messages[i + 1..].iter().find(|m| m["role"] != "system");
                        if next.is_some_and(|m| m["role"] == "user" && blocks(m, "tool_result") == 0) {
                            n += 1;
                        }
                    }
                    _ => {}
                }
            }
            n
        }
        Wire::Responses => {
            let items = body["input"].as_array().unwrap_or(&empty);
            let mut n = 0;
            for (i, item) in items.iter().enumerate() {
                match item["type"].as_str() {
                    Some("function_call_output" | "custom_tool_call_output") => n += 1,
                    Some("message") if item["role"] == "assistant" => {
                        let next = items[i + 1..].iter().find(|m| m["type"] != "reasoning");
                        if next.is_some_and(|m| m["type"] == "message" && m["role"] != "assistant") {
                            n += 1;
                        }
                    }
                    _ => {}
                }
            }
            n
        }
    }
}

/// An error body as the API would send it.
fn error_body(wire: Wire, status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    match wire {
        Wire::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Wire::Responses => json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    }
}

impl Shared {
    fn id(&self, prefix: &str) -> String {
        format!("{prefix}_mock_{:012}", self.ids.fetch_add(1, Ordering::SeqCst))
    }
}

/// The working directory the CLI announces in its prompt: Claude Code's "Primary working directory: DIR" line in
/// the system prompt, Codex's `<cwd>DIR</cwd>` in its environment context.
fn working_directory(body: &Value) -> Option<PathBuf> {
    match body {
        Value::String(text) => {
            for (start, end) in [("Primary working directory: ", "\n"), ("<cwd>", "</cwd>")] {
                if let Some(at) = text.find(start) {
                    let rest = &text[at + start.len()..];
                    return Some(PathBuf::from(rest[..rest.find(end).unwrap_or(rest.len())].trim()));
                }
            }
            None
        }
        Value::Array(values) => values.iter().find_map(working_directory),
        Value::Object(map) => map.values().find_map(working_directory),
        _ => None,
    }
}

fn anthropic_events(shared: &Shared, body: &Value, step: Step) -> Vec<Value> {
    let model = body["model"].as_str().unwrap_or("claude-test");
    let start = json!({"type": "message_start", "message": {
        "id": shared.id("msg"), "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}});
    let tool = |name: &str, input: Value| {
        let block = json!({"type": "tool_use", "id": shared.id("toolu"), "name": name, "input": {}});
        let delta = json!({"type": "input_json_delta", "partial_json": input.to_string()});
        (block, delta, "tool_use")
    };
    let (block, delta, stop_reason) = match step {
        Step::Shell(command) => tool("Bash", json!({"command": command, "description": "Run a command"})),
        Step::Write { path, content } => {
            let path = match working_directory(&body["system"]).or_else(|| working_directory(body)) {
                Some(cwd) => cwd.join(&path),
                None => PathBuf::from(&path),
            };
            tool("Write", json!({"file_path": path, "content": content}))
        }
        Step::Say(text) => {
            (json!({"type": "text", "text": ""}), json!({"type": "text_delta", "text": text}), "end_turn")
        }
        Step::HttpError(..) | Step::Hang => unreachable!("answered before"),
    };
    vec![
        start,
        json!({"type": "content_block_start", "index": 0, "content_block": block}),
        json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": OUTPUT_TOKENS}}),
        json!({"type": "message_stop"}),
    ]
}

fn responses_events(shared: &Shared, body: &Value, step: Step) -> Vec<Value> {
    let model = body["model"].as_str().unwrap_or("gpt-test");
    let response_id = shared.id("resp");
    let item = match step {
        Step::Shell(command) => json!({
            "type": "function_call", "id": shared.id("fc"), "call_id": shared.id("call"), "status": "completed",
            "name": "exec_command", "arguments": json!({"cmd": command}).to_string()}),
        Step::Write { path, content } => {
            let mut patch = format!("*** Begin Patch\n*** Add File: {path}\n");
            for line in content.lines() {
                patch.push_str(&format!("+{line}\n"));
            }
            patch.push_str("*** End Patch\n");
            json!({"type": "custom_tool_call", "id": shared.id("ctc"), "call_id": shared.id("call"),
                   "status": "completed", "name": "apply_patch", "input": patch})
        }
        Step::Say(text) => json!({
            "type": "message", "id": shared.id("msg"), "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}),
        Step::HttpError(..) | Step::Hang => unreachable!("answered before"),
    };
    let mut added = item.clone();
    added["status"] = json!("in_progress");
    let response = |status: &str, output: Value| {
        let mut response = json!({"id": response_id, "object": "response", "created_at": 1_700_000_000,
                                  "status": status, "model": model, "output": output});
        if status == "completed" {
            response["usage"] = json!({
                "input_tokens": INPUT_TOKENS, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": OUTPUT_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS});
        }
        response
    };
    let mut events = vec![
        json!({"type": "response.created", "response": response("in_progress", json!([]))}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item.clone()}),
        json!({"type": "response.completed", "response": response("completed", json!([item]))}),
    ];
    for (n, event) in events.iter_mut().enumerate() {
        event["sequence_number"] = json!(n);
    }
    events
}
