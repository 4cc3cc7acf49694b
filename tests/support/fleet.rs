//! An in-process forgefleet on 127.0.0.1 with a hand-moved clock, and agents that talk to it over real HTTP.

use std::time::Duration;

use forgefleet::api::AssignmentView;
use forgefleet::config::{Config, Secret};
use forgefleet::core::{TaskId, Timestamp};
use forgefleet::engine::{Command, EngineHandle, IssueObservation, ManualClock, Reply, TickReport};
use forgefleet::server::Server;
use forgefleet::store::Store;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const REGISTRATION_TOKEN: &str = "registration-test-token";
pub const OPERATOR: &str = "operator-test-token";

pub struct Fleet {
    /// The Forgejo workers (outbox delivery, reconciliation), when started with a Forgejo.
    pub workers: Option<forgefleet::integrations::forgejo::Workers>,
    pub clock: ManualClock,
    pub base: String,
    pub http: reqwest::Client,
    pub engine: EngineHandle,
    pub db: std::path::PathBuf,
    serve: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    pub async fn start() -> Fleet {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Fleet {
        Self::start_inner(tune, None).await
    }

    /// A fleet whose Forgejo workers run too (point `[forgejo] url` at a fake in `tune`), polling every 20 ms.
    pub async fn start_with_forgejo(tune: impl FnOnce(&mut Config)) -> Fleet {
        Self::start_inner(tune, Some(Duration::from_millis(20))).await
    }

    /// The same with the workers' poll set to `poll`: with a long one, only being woken makes them act soon.
    pub async fn start_with_forgejo_polling(poll: Duration, tune: impl FnOnce(&mut Config)) -> Fleet {
        Self::start_inner(tune, Some(poll)).await
    }

    async fn start_inner(tune: impl FnOnce(&mut Config), poll: Option<Duration>) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.store.path = dir.path().join("forgefleet.db");
        config.api.operator_token = Some(Secret::new(OPERATOR));
        config.agents.registration_token = Some(Secret::new(REGISTRATION_TOKEN));
        config.forgejo.url = Some("http://forgejo.test".into());
        tune(&mut config);
        let db = config.store.path.clone();
        let store = Store::open(&db).unwrap();
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let server = Server::start(config, store, clock.clone()).unwrap();
        let engine = server.engine().clone();
        let workers = match poll {
            Some(poll) => server.start_integrations(poll).unwrap(),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = server.router();
        let serve = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
            drop(server);
        });
        Fleet { workers, clock, base, http: reqwest::Client::new(), engine, db, serve, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// An issue labelled (or relabelled) as Forgejo would report it.
    pub async fn label(&self, issue: &str, labels: &[&str]) -> Option<TaskId> {
        let o = IssueObservation {
            issue: issue.parse().unwrap(),
            title: format!("Work on {issue}"),
            body: "Please fix it.".into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            open: true,
            issue_id: None,
        };
        match self.engine.send(Command::ObserveIssue(o)).await.unwrap() {
            Reply::Observed(t) => t,
            other => panic!("{other:?}"),
        }
    }

    pub async fn tick(&self) -> TickReport {
        match self.engine.send(Command::Tick).await.unwrap() {
            Reply::Ticked(r) => r,
            other => panic!("{other:?}"),
        }
    }

    pub fn later(&self, d: Duration) {
        self.clock.advance(d);
    }

    pub async fn register(&self, name: &str, caps: &[&str], slots: u32) -> TestAgent {
        let r = self
            .http
            .post(self.url("/agents/register"))
            .bearer_auth(REGISTRATION_TOKEN)
            .json(&json!({"name": name, "adapter": "command", "capabilities": caps, "max_concurrency": slots, "version": "test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "register {name}: {}", r.text().await.unwrap());
        let body: Value = r.json().await.unwrap();
        TestAgent {
            name: name.into(),
            token: body["token"].as_str().unwrap().into(),
            base: self.base.clone(),
            http: self.http.clone(),
        }
    }

    /// An operator request.
    pub async fn operator(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let r = self.http.request(method, self.url(path)).bearer_auth(OPERATOR).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn task(&self, id: TaskId) -> Value {
        let (status, body) = self.operator(reqwest::Method::GET, &format!("/tasks/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body["task"].clone()
    }

    pub fn event_count(&self) -> u64 {
        Store::open_read_only(&self.db).unwrap().read().event_count().unwrap()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.serve.abort();
        if let Some(w) = &self.workers {
            w.abort();
        }
    }
}

pub struct TestAgent {
    pub name: String,
    pub token: String,
    base: String,
    http: reqwest::Client,
}

impl TestAgent {
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Asks for work, waiting up to `wait_secs`.
    pub async fn pull_with(&self, wait_secs: u64, request_key: Option<&str>) -> Option<AssignmentView> {
        let (status, body) =
            self.post("/assignments/next", json!({"wait_secs": wait_secs, "request_key": request_key})).await;
        match status.as_u16() {
            200 => Some(serde_json::from_value(body).unwrap()),
            204 => None,
            other => panic!("{} pulled and got {other}: {body}", self.name),
        }
    }

    pub async fn pull(&self) -> Option<AssignmentView> {
        self.pull_with(0, None).await
    }

    pub async fn start(&self, a: &AssignmentView) -> StatusCode {
        self.post(&format!("/tasks/{}/start", a.task_id), json!({"attempt": a.attempt})).await.0
    }

    pub async fn heartbeat(&self, running: &[TaskId]) -> Vec<TaskId> {
        let (status, body) = self.post("/agents/heartbeat", json!({"running": running})).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body["cancel"].clone()).unwrap()
    }
}
