//! An in-process forgefleet on 127.0.0.1 with a hand-moved clock, and agents that talk to it over real HTTP.

use std::sync::Arc;
use std::time::Duration;

use forgefleet::api::AssignmentView;
use forgefleet::config::{Config, Secret};
use forgefleet::core::{TaskId, Timestamp};
use forgefleet::engine::{Clock, Command, EngineHandle, IssueObservation, ManualClock, Reply, TickReport};
use forgefleet::integrations::outbox::Deliver;
use forgefleet::server::Server;
use forgefleet::store::Store;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const REGISTRATION_TOKEN: &str = "registration-test-token";
pub const OPERATOR: &str = "operator-test-token";

pub struct Fleet {
    /// The integrations' workers (outbox delivery, reconciliation), when started with a Forgejo.
    pub workers: Option<forgefleet::integrations::Workers>,
    pub clock: ManualClock,
    pub base: String,
    pub http: reqwest::Client,
    pub engine: EngineHandle,
    pub db: std::path::PathBuf,
    serve: tokio::task::JoinHandle<()>,
    config: Config,
    poll: Option<Duration>,
    /// The Matrix outbox worker's deliverer, when the fleet runs one.
    matrix: Option<Arc<dyn Deliver>>,
    /// The Matrix bot, when the configuration has a homeserver (as `serve` starts it).
    pub bot: Option<forgefleet::integrations::matrix::MatrixHandle>,
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

    /// A fleet whose Forgejo workers run, and a Matrix outbox worker delivering through `matrix`.
    pub async fn start_with_forgejo_and_matrix(matrix: Arc<dyn Deliver>, tune: impl FnOnce(&mut Config)) -> Fleet {
        Self::start_full(tune, Some(Duration::from_millis(20)), Some(matrix)).await
    }

    async fn start_inner(tune: impl FnOnce(&mut Config), poll: Option<Duration>) -> Fleet {
        Self::start_full(tune, poll, None).await
    }

    async fn start_full(
        tune: impl FnOnce(&mut Config),
        poll: Option<Duration>,
        matrix: Option<Arc<dyn Deliver>>,
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.store.path = dir.path().join("forgefleet.db");
        config.api.operator_token = Some(Secret::new(OPERATOR));
        config.agents.registration_token = Some(Secret::new(REGISTRATION_TOKEN));
        config.forgejo.url = Some("http://forgejo.test".into());
        tune(&mut config);
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        Self::serve_on(dir, config, clock, poll, matrix).await
    }

    /// Stops this server, lets `down` pass on the clock, and starts a new one on the same database (on a new
    /// port, with a new HTTP client: agents follow with `TestAgent::moved_to`).
    pub async fn restart_after(&mut self, down: Duration) {
        self.stop_serving().await;
        self.clock.advance(down);
        self.start_again().await;
    }

    /// Stops the server, its workers and its bot, as stopping `serve` does; `start_again` starts them anew.
    pub async fn stop_serving(&mut self) {
        self.serve.abort();
        let _ = (&mut self.serve).await;
        if let Some(w) = self.workers.take() {
            w.abort();
        }
        if let Some(bot) = self.bot.take() {
            bot.stop().await;
        }
    }

    /// A new server on the same database, after `stop_serving`.
    pub async fn start_again(&mut self) {
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        let next = Self::serve_on(dir, self.config.clone(), self.clock.clone(), self.poll, self.matrix.clone()).await;
        let old = std::mem::replace(self, next);
        // The old fleet's own directory is the empty placeholder; dropping it stops nothing new.
        drop(old);
    }

    async fn serve_on(
        dir: tempfile::TempDir,
        config: Config,
        clock: ManualClock,
        poll: Option<Duration>,
        matrix: Option<Arc<dyn Deliver>>,
    ) -> Fleet {
        let db = config.store.path.clone();
        let store = Store::open(&db).unwrap();
        let server = Server::start(config.clone(), store, clock.clone()).unwrap();
        let engine = server.engine().clone();
        let (bot, matrix_worker) = match server.start_matrix() {
            Some((handle, deliverer)) => (Some(handle), Some(deliverer)),
            None => (None, matrix.clone()),
        };
        let workers = match poll {
            Some(poll) => server.start_integrations_with(poll, matrix_worker).unwrap(),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = server.router();
        let serve = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
            drop(server);
        });
        Fleet {
            workers,
            clock,
            base,
            http: reqwest::Client::new(),
            engine,
            db,
            serve,
            config,
            poll,
            matrix,
            bot,
            _dir: dir,
        }
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
            updated_at: None,
            fresh: true,
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

    /// A registration of `name` presenting `agent_token` (or none), answered as it is.
    pub async fn register_as(&self, name: &str, agent_token: Option<&str>) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/agents/register"))
            .bearer_auth(REGISTRATION_TOKEN)
            .json(&json!({"name": name, "adapter": "command", "version": "test", "agent_token": agent_token}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
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

    /// An outbox row for Matrix on `issue` (`owner/name#N`), written as the Matrix integration will write its
    /// messages: no effect goes to Matrix yet, so the row is put in by hand. Returns its id.
    pub fn enqueue_for_matrix(&self, issue: &str, body: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let at = self.clock.now().0;
        conn.execute(
            "INSERT INTO outbox (kind, payload, created_at, next_attempt_at, issue, destination)
             VALUES ('message', ?1, ?2, ?2, ?3, 'matrix')",
            rusqlite::params![serde_json::json!({"issue": issue, "body": body}).to_string(), at, issue],
        )
        .unwrap();
        conn.last_insert_rowid()
    }

    /// What waits in the outbox, as `forgefleet outbox list` shows it.
    pub fn outbox_list(&self) -> Vec<forgefleet::store::OutboxEntry> {
        Store::open_read_only(&self.db).unwrap().read().outbox_list(100).unwrap()
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
        if let Some(bot) = &self.bot {
            bot.abort();
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

    /// Registers `name` (one slot) with the server at `base` (`http://addr`), e.g. a `forgefleet serve` process.
    pub async fn register_at(base: &str, registration_token: &str, name: &str) -> TestAgent {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{base}/api/v1/agents/register"))
            .bearer_auth(registration_token)
            .json(&json!({"name": name, "adapter": "command", "max_concurrency": 1, "version": "test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "register {name}: {}", r.text().await.unwrap());
        let body: Value = r.json().await.unwrap();
        TestAgent { name: name.into(), token: body["token"].as_str().unwrap().into(), base: base.into(), http }
    }

    /// An agent of `fleet` known by its token.
    pub fn with_token(fleet: &Fleet, name: &str, token: &str) -> TestAgent {
        TestAgent { name: name.into(), token: token.into(), base: fleet.base.clone(), http: fleet.http.clone() }
    }

    /// The same agent (same token) talking to `fleet`, e.g. after a restart moved it to another port.
    pub fn moved_to(&self, fleet: &Fleet) -> TestAgent {
        TestAgent {
            name: self.name.clone(),
            token: self.token.clone(),
            base: fleet.base.clone(),
            http: fleet.http.clone(),
        }
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
