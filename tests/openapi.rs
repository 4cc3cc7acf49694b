//! `GET /api/v1/openapi.json` is the contract: every route the server serves is in it, everything in it is
//! served, and what it says about tokens is what the server does.

use std::collections::BTreeSet;

use forgefleet::config::{Config, Secret};
use forgefleet::core::Timestamp;
use forgefleet::engine::ManualClock;
use forgefleet::server::Server;
use forgefleet::store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const REGISTRATION: &str = "registration-test-token";
const OPERATOR: &str = "operator-test-token";
const SCHEMES: [&str; 3] = ["registration_token", "agent_token", "operator_token"];

struct App {
    base: String,
    http: reqwest::Client,
    /// The router's own description of its routes (see `served_paths`).
    router_debug: String,
    serve: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start() -> App {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.store.path = dir.path().join("forgefleet.db");
        config.api.operator_token = Some(Secret::new(OPERATOR));
        config.agents.registration_token = Some(Secret::new(REGISTRATION));
        let store = Store::open(&config.store.path).unwrap();
        let server = Server::start(config, store, ManualClock::new(Timestamp(1_800_000_000_000))).unwrap();
        let router = server.router();
        let router_debug = format!("{router:?}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let serve = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
            drop(server);
        });
        App { base, http: reqwest::Client::new(), router_debug, serve, _dir: dir }
    }

    async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn document(&self) -> Value {
        let r = self.http.get(format!("{}/api/v1/openapi.json", self.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("application/json"), "{content_type}");
        serde_json::from_str(&r.text().await.unwrap()).expect("the document is JSON")
    }

    /// A newly registered agent's token (each probe gets its own: one probe deregisters).
    async fn agent_token(&self, name: &str) -> String {
        let body = json!({"name": name, "adapter": "command"});
        let (status, answer) =
            self.send(Method::POST, "/api/v1/agents/register", Some(REGISTRATION), Some(&body)).await;
        assert_eq!(status, 200, "{answer}");
        answer["token"].as_str().unwrap().to_string()
    }

    /// The paths the router serves, read from its `Debug` output (axum has no other way to list them): the
    /// quoted strings that start with `/` in its path router (what comes before its fallback router), less
    /// axum's own catch-alls.
    fn served_paths(&self) -> BTreeSet<String> {
        let (routes, _fallbacks) = self
            .router_debug
            .split_once("fallback_router")
            .unwrap_or_else(|| panic!("has axum changed the Debug output of Router? {}", self.router_debug));
        let paths: BTreeSet<String> = routes
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with('/') && !s.contains("__private__axum"))
            .map(String::from)
            .collect();
        assert!(
            paths.contains("/healthz"),
            "cannot read the routes from the router's Debug output; has axum changed it? {}",
            self.router_debug
        );
        paths
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

/// Every (method, path, operation) of the document.
fn operations(doc: &Value) -> Vec<(Method, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            out.push((method, path.clone(), op.clone()));
        }
    }
    out
}

/// A path template with every `{param}` filled in with `1` (a valid task id and a valid agent name).
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('1');
            }
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let name = reference.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {reference}"));
    &doc["components"]["schemas"][name]
}

/// The documented example of an operation's JSON request body, if it takes one. A long poll is told not to wait.
fn example_body(doc: &Value, op: &Value) -> Option<Value> {
    let schema = op.get("requestBody")?["content"]["application/json"]["schema"].clone();
    let mut example = resolve(doc, schema["$ref"].as_str().unwrap())["example"].clone();
    assert!(!example.is_null(), "no example for the request body {schema}");
    if example.get("wait_secs").is_some() {
        example["wait_secs"] = json!(0);
    }
    Some(example)
}

fn schemes_of(op: &Value) -> BTreeSet<String> {
    let Some(requirements) = op.get("security") else {
        return BTreeSet::new();
    };
    requirements.as_array().unwrap().iter().flat_map(|r| r.as_object().unwrap().keys().cloned()).collect()
}

fn is_no_such_endpoint(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::NOT_FOUND
        && body["error"]["message"].as_str().is_some_and(|m| m.starts_with("no such endpoint"))
}

#[tokio::test]
async fn the_document_is_served_without_a_token_and_is_openapi_3() {
    let app = App::start().await;
    let doc = app.document().await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "forgefleet");
    assert_eq!(doc, serde_json::to_value(forgefleet::api::openapi()).unwrap(), "served as generated");
    for scheme in SCHEMES {
        let s = &doc["components"]["securitySchemes"][scheme];
        assert_eq!((s["type"].as_str(), s["scheme"].as_str()), (Some("http"), Some("bearer")), "{scheme}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_served_and_every_served_route_is_documented() {
    let app = App::start().await;
    let doc = app.document().await;
    let ops = operations(&doc);

    // The router serves exactly the documented paths...
    let documented: BTreeSet<String> = ops.iter().map(|(_, path, _)| path.clone()).collect();
    assert_eq!(app.served_paths(), documented);
    for required in ["/healthz", "/metrics", "/api/v1/openapi.json", "/api/v1/agents/register", "/api/v1/tasks/{id}"] {
        assert!(documented.contains(required), "{required} is missing");
    }

    // ...each documented method on them reaches its handler...
    for (method, path, op) in &ops {
        let body = example_body(&doc, op);
        let (status, answer) = app.send(method.clone(), &concrete(path), None, body.as_ref()).await;
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !is_no_such_endpoint(status, &answer),
            "{method} {path} is documented but not served: {status} {answer}"
        );
    }

    // ...and no other method does.
    for path in &documented {
        for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            if ops.iter().any(|(m, p, _)| *m == method && p == path) {
                continue;
            }
            let (status, answer) = app.send(method.clone(), &concrete(path), Some(OPERATOR), None).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is served but not documented");
            assert_eq!(answer["error"]["code"], "method_not_allowed");
        }
    }

    // Paths outside the document are not served.
    for path in ["/api/v1/nothing", "/api/v1/openapi.yaml", "/openapi.json", "/api/v2/agents"] {
        let (status, answer) = app.send(Method::GET, path, Some(OPERATOR), None).await;
        assert!(is_no_such_endpoint(status, &answer), "{path}: {status} {answer}");
    }
}

#[tokio::test]
async fn each_route_takes_exactly_the_tokens_the_document_names() {
    let app = App::start().await;
    let doc = app.document().await;
    for (n, (method, path, op)) in operations(&doc).into_iter().enumerate() {
        let schemes = schemes_of(&op);
        let body = example_body(&doc, &op);
        let agent = app.agent_token(&format!("probe-{n}")).await;
        let credentials = [
            ("no token", None, None),
            ("registration_token", Some(REGISTRATION), Some("registration_token")),
            ("operator_token", Some(OPERATOR), Some("operator_token")),
            ("agent_token", Some(agent.as_str()), Some("agent_token")),
        ];
        for (what, token, scheme) in credentials {
            let allowed = schemes.is_empty() || scheme.is_some_and(|s| schemes.contains(s));
            let (status, answer) = app.send(method.clone(), &concrete(&path), token, body.as_ref()).await;
            if allowed {
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {what}: {answer}");
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {what}: {answer}");
                assert_eq!(answer["error"]["code"], "unauthorized");
            }
        }
    }
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_operation_is_described_with_its_body_errors_and_tokens() {
    let doc = serde_json::to_value(forgefleet::api::openapi()).unwrap();
    let tags: BTreeSet<&str> = doc["tags"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    let mut ids = BTreeSet::new();
    let public: BTreeSet<&str> = ["/healthz", "/metrics", "/api/v1/openapi.json"].into();

    for (method, path, op) in operations(&doc) {
        let at = format!("{method} {path}");
        assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()), "{at}: operationId not unique");
        assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{at}: no summary");
        assert!(op["description"].as_str().is_some_and(|s| !s.is_empty()), "{at}: no description");
        assert!(op["tags"].as_array().unwrap().iter().all(|t| tags.contains(t.as_str().unwrap())), "{at}: tags");

        let responses = op["responses"].as_object().unwrap();
        let success = responses.keys().filter(|s| s.starts_with('2')).count();
        assert!(success >= 1, "{at}: no success response");
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{at} {status}: not the error schema");
            }
        }

        let schemes = schemes_of(&op);
        assert_eq!(schemes.is_empty(), public.contains(path.as_str()), "{at}: public iff no security");
        assert!(
            schemes.iter().all(|s| SCHEMES.contains(&s.as_str()) || s == "webhook_signature"),
            "{at}: unknown scheme in {schemes:?}"
        );
        if !schemes.is_empty() {
            assert!(responses.contains_key("401"), "{at}: takes a token but documents no 401");
        }
        if let Some(body) = op.get("requestBody") {
            assert!(body["content"]["application/json"]["schema"]["$ref"].is_string(), "{at}: body schema");
            for status in ["400", "413"] {
                assert!(responses.contains_key(status), "{at}: takes a JSON body but documents no {status}");
            }
        }

        // Every `{param}` of the path is a documented path parameter.
        let declared: BTreeSet<&str> = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap()).collect())
            .unwrap_or_default();
        let in_path: BTreeSet<&str> =
            path.split('/').filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        assert_eq!(declared, in_path, "{at}: path parameters");
    }

    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        assert!(!resolve(&doc, &r).is_null(), "dangling $ref {r}");
    }
}
