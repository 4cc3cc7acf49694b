//! Load benchmarks of the agent REST protocol over loopback HTTP, each reported against a baseline measured in
//! the same run on the same machine.
//!
//! 1. `latency`: 50 agents long-poll an in-process server (the library's `Server` with a hand-moved clock, served
//!    by `axum::serve` on 127.0.0.1); tasks are queued one at a time through the engine and timed from just
//!    before the engine is handed the task to the moment the waiting agent has read the 200 body. Baselines: a
//!    bare axum handler's request->response time with the same client, and a bare axum long-poll woken by a
//!    oneshot channel (the same shape without the engine and SQLite).
//! 2. `load`: the real `forgefleet serve` as a child process; 5,000 agents register over HTTP, then each
//!    heartbeats every 10 s (spread evenly) and keeps one long-poll open (`wait_secs` 30, renewed when it
//!    returns). The server's CPU (utime+stime from `/proc/<pid>/stat`) and memory (VmRSS, VmHWM) are read over a
//!    measured window. Baseline: this same bench binary re-executed as a bare axum server that answers the same
//!    two routes without auth, engine or store, driven by the identical load.
//!
//! Run: `cargo bench --bench agents` (about 3 minutes) or `FORGEFLEET_BENCH_QUICK=1 cargo bench --bench agents`
//! (shorter windows). `FORGEFLEET_BENCH_ONLY=latency,load` runs a subset; `FORGEFLEET_BENCH_AGENTS=N` and
//! `FORGEFLEET_BENCH_WINDOW_SECS=S` change the load. `docs/benchmarks-agents.md` explains what each number means.
//!
//! Every server listens on 127.0.0.1 only. Every child process is killed when its guard is dropped (also when
//! the bench panics) and, on Linux, by the kernel if the bench itself dies.

mod common;

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{Row, env_number, percentile, print_rows, quick, wanted};
use forgefleet::config::{Config, Secret};
use forgefleet::core::Timestamp;
use forgefleet::engine::{Command, IssueObservation, ManualClock, Reply};
use forgefleet::server::Server;
use forgefleet::store::Store;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const REGISTRATION_TOKEN: &str = "bench-registration-token";
const OPERATOR_TOKEN: &str = "bench-operator-token";
/// Set on the re-executed bench binary: it then runs only the bare baseline server on this address.
const BARE_SERVER_ENV: &str = "FORGEFLEET_BENCH_BARE_SERVER";
/// The long-poll every simulated agent keeps open.
const WAIT_SECS: u64 = 30;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// Between two queued tasks in the latency benchmark: lets the agent that got the last one ask again.
const GAP: Duration = Duration::from_millis(10);

/// A realistic issue body (~420 bytes), the same as the store benchmarks use.
const BODY: &str = "The nightly reconciliation job fails intermittently with a timeout when the upstream \
ledger API is slow. Steps to reproduce: run `make reconcile` against staging with LEDGER_LATENCY=800ms. \
Expected: the job retries the page and finishes. Actual: it aborts after the first timeout and leaves the \
batch half-applied. Acceptance: retries with backoff, an idempotent page apply, a regression test, and a \
note in the runbook. Logs are attached to the linked incident.";

// ---------------------------------------------------------------------------------------------------------
// Sizes

struct Settings {
    quick: bool,
    /// Agents long-polling in the latency benchmark.
    waiting_agents: usize,
    /// Tasks timed in the latency benchmark, after `warmup_tasks` untimed ones.
    tasks: usize,
    warmup_tasks: usize,
    /// Requests timed against each bare baseline.
    bare_requests: usize,
    /// Simulated agents in the load benchmark.
    load_agents: usize,
    /// Long-polls are opened over this long, so the server is not hit by 5,000 connects at once.
    ramp: Duration,
    /// After the ramp, before the window: the first renewals and heartbeats settle into their rhythm.
    settle: Duration,
    /// The measured window.
    window: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = quick();
        let window = env_number("FORGEFLEET_BENCH_WINDOW_SECS").unwrap_or(if quick { 15 } else { 60 });
        Settings {
            quick,
            waiting_agents: 50,
            tasks: if quick { 100 } else { 500 },
            warmup_tasks: 20,
            bare_requests: if quick { 500 } else { 2_000 },
            load_agents: env_number("FORGEFLEET_BENCH_AGENTS").map_or(5_000, |n| n.max(1) as usize),
            ramp: Duration::from_secs(5),
            settle: Duration::from_secs(5),
            window: Duration::from_secs(window.max(1)),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The report

fn print_table(rows: &[Row], notes: &[String], s: &Settings, total: Duration) {
    println!();
    println!(
        "forgefleet agent protocol benchmarks ({} mode, {} cores, {:.0} s)",
        if s.quick { "QUICK" } else { "full" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        total.as_secs_f64()
    );
    println!();
    print_rows(rows);
    for n in notes {
        println!("- {n}");
    }
    println!();
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn ratio(ours: f64, base: f64) -> String {
    if base > 0.0 { format!("{:.1}x", ours / base) } else { "n/a".into() }
}

fn dur_ratio(ours: Duration, base: Duration) -> String {
    ratio(ours.as_secs_f64(), base.as_secs_f64())
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

struct Dist {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn dist(mut v: Vec<Duration>) -> Dist {
    v.sort();
    Dist {
        p50: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
        max: v.last().copied().unwrap_or_default(),
        n: v.len(),
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

// ---------------------------------------------------------------------------------------------------------
// HTTP helpers

/// One client for everything a benchmark sends: keep-alive, no cap on idle connections per host.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(120))
        .tcp_nodelay(true)
        .build()
        .expect("building the HTTP client")
}

async fn register(http: &reqwest::Client, base: &str, name: &str, slots: u32) -> Result<String, String> {
    let r = http
        .post(format!("{base}/api/v1/agents/register"))
        .bearer_auth(REGISTRATION_TOKEN)
        .json(&json!({"name": name, "adapter": "command", "capabilities": ["rust"], "max_concurrency": slots, "version": "bench"}))
        .send()
        .await
        .map_err(|e| format!("register {name}: {e}"))?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| format!("register {name}: {e}"))?;
    if status != 200 {
        return Err(format!("register {name}: {status} {body}"));
    }
    body["token"].as_str().map(str::to_string).ok_or_else(|| format!("register {name}: no token in {body}"))
}

/// Aborts a spawned task when dropped, so an early return or a panic leaves nothing running.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A bare axum app on its own 127.0.0.1 listener in this runtime.
async fn serve_bare(app: Router) -> (String, AbortOnDrop<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, AbortOnDrop(task))
}

// ---------------------------------------------------------------------------------------------------------
// 1. Latency: a task becomes available -> the waiting agent's long-poll returns it

async fn bench_latency(s: &Settings, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let dir = tempfile::Builder::new().prefix("forgefleet-bench-agents-").tempdir().unwrap();
    let mut config = Config::default();
    config.store.path = dir.path().join("forgefleet.db");
    config.agents.registration_token = Some(Secret::new(REGISTRATION_TOKEN));
    config.api.operator_token = Some(Secret::new(OPERATOR_TOKEN));
    // Only so assignments carry a clone URL, as in production: nothing talks to it.
    config.forgejo.url = Some("http://forgejo.invalid".into());
    let store = Store::open(&config.store.path).unwrap();
    let server = Server::start(config, store, ManualClock::new(Timestamp(1_800_000_000_000))).unwrap();
    let engine = server.engine().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = server.router();
    let _serve = AbortOnDrop(tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
        drop(server);
    }));
    let http = client();

    progress(format!("latency: registering {} agents on {base}", s.waiting_agents));
    let mut tokens = Vec::new();
    for i in 0..s.waiting_agents {
        // Slots enough that no agent fills up during the run: every queued task finds all of them waiting.
        tokens.push(register(&http, &base, &format!("waiter-{i:03}"), 64).await.unwrap());
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<(Value, Instant)>();
    let mut agents = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        agents.push(AbortOnDrop(tokio::spawn(waiting_agent(
            http.clone(),
            format!("{base}/api/v1/assignments/next"),
            token.clone(),
            format!("waiter-{i:03}"),
            tx.clone(),
        ))));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    progress(format!("latency: queueing {} tasks one at a time", s.warmup_tasks + s.tasks));
    let mut samples = Vec::with_capacity(s.tasks);
    let mut accepted = Vec::with_capacity(s.tasks);
    for i in 0..s.warmup_tasks + s.tasks {
        tokio::time::sleep(GAP).await;
        let observation = IssueObservation {
            issue: format!("bench/latency#{}", i + 1).parse().unwrap(),
            title: format!("Reconciliation job {i} times out"),
            body: BODY.into(),
            labels: vec!["status:todo".into(), "priority:medium".into()],
            open: true,
            updated_at: None,
            fresh: true,
            issue_id: None,
        };
        let queued = Instant::now();
        let reply = engine.send(Command::ObserveIssue(observation)).await.expect("the engine refused an issue");
        let committed = Instant::now();
        let Reply::Observed(Some(task)) = reply else { panic!("observing an issue answered {reply:?}") };
        let want = serde_json::to_value(task).unwrap();
        let received = loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((got, at))) if got == want => break at,
                Ok(Some((got, _))) => progress(format!("latency: stray delivery of {got} while waiting for {want}")),
                _ => panic!("no waiting agent received task {want} within 10 s"),
            }
        };
        if i >= s.warmup_tasks {
            samples.push(received.duration_since(queued));
            accepted.push(committed.duration_since(queued));
        }
    }

    // For reference: an authenticated engine write (a heartbeat) round trip, with the 50 waiters still open.
    let hb_url = format!("{base}/api/v1/agents/heartbeat");
    let mut heartbeats = Vec::with_capacity(s.bare_requests);
    for i in 0..s.bare_requests + 100 {
        let t0 = Instant::now();
        let r = http.post(&hb_url).bearer_auth(&tokens[0]).json(&json!({"running": []})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        if i >= 100 {
            heartbeats.push(t0.elapsed());
        }
    }
    drop(agents);

    progress("latency: bare axum baselines");
    let bare_rtt = bare_request_rtt(&http, s.bare_requests).await;
    let bare_wake = bare_long_poll_wake(&http, s).await;

    let ours = dist(samples);
    let accepted = dist(accepted);
    let base_rtt = dist(bare_rtt);
    let wake = dist(bare_wake);
    let hb = dist(heartbeats);
    let name =
        format!("1. task queued -> waiting agent has the 200 body ({} waiting, {} tasks)", s.waiting_agents, ours.n);
    rows.push(Row::new(
        &format!("{name}, p50"),
        fmt_dur(ours.p50),
        format!("{} (bare request->response p50)", fmt_dur(base_rtt.p50)),
        dur_ratio(ours.p50, base_rtt.p50),
        "< 2 ms",
        Some(ours.p50 < Duration::from_millis(2)),
    ));
    rows.push(Row::new(
        &format!("{name}, p99"),
        fmt_dur(ours.p99),
        format!("{} (bare request->response p99)", fmt_dur(base_rtt.p99)),
        dur_ratio(ours.p99, base_rtt.p99),
        "< 20 ms",
        Some(ours.p99 < Duration::from_millis(20)),
    ));
    rows.push(Row::new(
        &format!("{name}, max"),
        fmt_dur(ours.max),
        format!("{} (bare request->response max)", fmt_dur(base_rtt.max)),
        dur_ratio(ours.max, base_rtt.max),
        "-",
        None,
    ));
    rows.push(Row::new(
        "1b. same, against a bare axum long-poll woken by a channel, p50 / p99",
        format!("{} / {}", fmt_dur(ours.p50), fmt_dur(ours.p99)),
        format!("{} / {}", fmt_dur(wake.p50), fmt_dur(wake.p99)),
        format!("{} / {}", dur_ratio(ours.p50, wake.p50), dur_ratio(ours.p99, wake.p99)),
        "-",
        None,
    ));
    rows.push(Row::new(
        "1c. of which: the engine committed the task (`send(ObserveIssue)` returned), p50 / p99",
        format!("{} / {}", fmt_dur(accepted.p50), fmt_dur(accepted.p99)),
        "-".into(),
        "-".into(),
        "-",
        None,
    ));
    rows.push(Row::new(
        "1d. heartbeat round trip (auth + engine commit), sequential, p50 / p99",
        format!("{} / {}", fmt_dur(hb.p50), fmt_dur(hb.p99)),
        format!("{} / {}", fmt_dur(base_rtt.p50), fmt_dur(base_rtt.p99)),
        format!("{} / {}", dur_ratio(hb.p50, base_rtt.p50), dur_ratio(hb.p99, base_rtt.p99)),
        "-",
        None,
    ));
    rows.push(Row::new(
        "1e. sequential request throughput: heartbeat vs bare handler",
        format!("{:.0} req/s", 1.0 / hb.p50.as_secs_f64()),
        format!("{:.0} req/s", 1.0 / base_rtt.p50.as_secs_f64()),
        ratio(base_rtt.p50.as_secs_f64(), hb.p50.as_secs_f64()),
        "-",
        None,
    ));
    notes.push(format!(
        "1: our wake-up latency max {}; bare long-poll wake max {}; bare request->response {} samples",
        fmt_dur(ours.max),
        fmt_dur(wake.max),
        base_rtt.n
    ));
}

/// A simulated agent that always has a long-poll open and reports each assignment it reads.
async fn waiting_agent(
    http: reqwest::Client,
    url: String,
    token: String,
    name: String,
    deliveries: mpsc::UnboundedSender<(Value, Instant)>,
) {
    let mut seq = 0u64;
    loop {
        seq += 1;
        let body = json!({"wait_secs": WAIT_SECS, "request_key": format!("{name}-{seq}")});
        match http.post(&url).bearer_auth(&token).json(&body).send().await {
            Ok(r) if r.status() == 200 => {
                let bytes = r.bytes().await.unwrap_or_default();
                let at = Instant::now();
                let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let _ = deliveries.send((v["task_id"].clone(), at));
            }
            Ok(r) if r.status() == 204 => {}
            Ok(r) => {
                progress(format!("{name}: long-poll answered {}", r.status()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                progress(format!("{name}: long-poll failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `post(|| async { "ok" })`: request->response time, sequential, with the same client and a heartbeat-sized
/// request (bearer header, small JSON body) that the handler ignores.
async fn bare_request_rtt(http: &reqwest::Client, n: usize) -> Vec<Duration> {
    let (base, _serve) = serve_bare(Router::new().route("/x", post(|| async { "ok" }))).await;
    let url = format!("{base}/x");
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t0 = Instant::now();
        let r = http.post(&url).bearer_auth("ffa_0123456789abcdef").json(&json!({"running": []})).send().await.unwrap();
        let _ = r.bytes().await.unwrap();
        if i >= 200 {
            samples.push(t0.elapsed());
        }
    }
    samples
}

type Slots = Arc<Mutex<VecDeque<oneshot::Sender<()>>>>;

/// The same shape as benchmark 1 without the engine: clients long-poll a bare handler that parks on a oneshot;
/// the bench wakes the longest-waiting one and times until that client has the body (an assignment-sized JSON).
async fn bare_long_poll_wake(http: &reqwest::Client, s: &Settings) -> Vec<Duration> {
    let slots: Slots = Arc::default();
    let body = Arc::new(
        json!({
            "task_id": "T-000000000001", "attempt": 1, "repo": "bench/latency", "issue": 1,
            "title": "Reconciliation job 1 times out", "body": BODY, "labels": ["status:todo", "priority:medium"],
            "clone_url": "http://forgejo.invalid/bench/latency.git", "base_branch": "main",
            "branch": "forgefleet/issue-1-attempt-1", "start_by": "2027-01-15T08:00:30+00:00",
            "deadline": "2027-01-15T09:00:00+00:00"
        })
        .to_string(),
    );
    let handler_slots = slots.clone();
    let app = Router::new().route(
        "/wait",
        post(move || {
            let slots = handler_slots.clone();
            let body = body.clone();
            async move {
                let (tx, rx) = oneshot::channel();
                slots.lock().unwrap().push_back(tx);
                match tokio::time::timeout(Duration::from_secs(WAIT_SECS), rx).await {
                    Ok(Ok(())) => ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response(),
                    _ => StatusCode::NO_CONTENT.into_response(),
                }
            }
        }),
    );
    let (base, _serve) = serve_bare(app).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let mut clients = Vec::new();
    for i in 0..s.waiting_agents {
        let (http, url, tx) = (http.clone(), format!("{base}/wait"), tx.clone());
        clients.push(AbortOnDrop(tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                seq += 1;
                let req = json!({"wait_secs": WAIT_SECS, "request_key": format!("waiter-{i:03}-{seq}")});
                let Ok(r) = http.post(&url).bearer_auth("ffa_0123456789abcdef").json(&req).send().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if r.status() == 200 {
                    let bytes = r.bytes().await.unwrap_or_default();
                    let at = Instant::now();
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    assert!(v["task_id"].is_string());
                    let _ = tx.send(at);
                }
            }
        })));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::with_capacity(s.tasks);
    for i in 0..s.warmup_tasks + s.tasks {
        tokio::time::sleep(GAP).await;
        let woken = Instant::now();
        let slot = slots.lock().unwrap().pop_front().expect("no bare client is waiting");
        let _ = slot.send(());
        let at = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        if i >= s.warmup_tasks {
            samples.push(at.duration_since(woken));
        }
    }
    samples
}

// ---------------------------------------------------------------------------------------------------------
// 2. Load: 5,000 agents heartbeating and long-polling a real `forgefleet serve`

/// A child process, killed and reaped when dropped.
struct ChildGuard {
    child: Child,
    log: PathBuf,
    what: &'static str,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout discarded and stderr to `log`. Must run on the main thread (see
    /// `die_with_parent`): the benches call it directly from the future given to `block_on`.
    fn spawn(mut cmd: Process, log: PathBuf, what: &'static str) -> ChildGuard {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {what}: {e}"));
        ChildGuard { child, log, what }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until something accepts connections on `addr`.
    fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited early with {status}: {}", self.what, self.log_text());
            }
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not listen on {addr} within 30 s: {}", self.what, self.log_text());
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it ends, so a bench interrupted with ^C
/// leaves no server behind. That thread is the main thread, which lives as long as the bench.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Process) {
    use std::ffi::{c_int, c_ulong};
    use std::os::unix::process::CommandExt;
    unsafe extern "C" {
        fn prctl(option: c_int, ...) -> c_int;
    }
    const PR_SET_PDEATHSIG: c_int = 1;
    const SIGKILL: c_ulong = 9;
    // SAFETY: between fork and exec only prctl(2) runs: async-signal-safe, no allocation, no locks.
    unsafe {
        cmd.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Process) {}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_addr() -> SocketAddr {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// CPU time (user + system) of a process so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: &str, tick: f64) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces; utime and stime are
    // fields 14 and 15 of the line, so 12th and 13th after the name.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / tick)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
fn clock_ticks() -> f64 {
    Process::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (busy, total) jiffies of the whole machine, from `/proc/stat`.
fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM), or a plain count (Threads).
fn status_field(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[derive(Default)]
struct LoadStats {
    measuring: AtomicBool,
    heartbeats_ok: AtomicU64,
    heartbeats_failed: AtomicU64,
    polls_empty: AtomicU64,
    polls_assigned: AtomicU64,
    polls_failed: AtomicU64,
    heartbeat_latency: Mutex<Vec<Duration>>,
    first_errors: Mutex<Vec<String>>,
    /// Failed requests over the whole run, window or not.
    failures_total: AtomicU64,
}

impl LoadStats {
    /// Keeps the first few error messages; returns `true` so callers can mark the outcome as a failure.
    fn error(&self, what: String) -> bool {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        let mut e = self.first_errors.lock().unwrap();
        if e.len() < 5 {
            e.push(what);
        }
        true
    }
}

struct LoadRun {
    server_cpu_pct: f64,
    generator_cpu_pct: f64,
    machine_busy_pct: f64,
    rss_end_kb: u64,
    rss_max_kb: u64,
    hwm_kb: u64,
    threads_max: u64,
    fds_max: usize,
    window: Duration,
    heartbeats_ok: u64,
    heartbeats_failed: u64,
    polls_empty: u64,
    polls_assigned: u64,
    polls_failed: u64,
    heartbeat: Dist,
    first_errors: Vec<String>,
    failures_total: u64,
    /// VmRSS of the server before the load began.
    idle_rss_kb: u64,
}

impl LoadRun {
    fn requests_per_sec(&self) -> f64 {
        (self.heartbeats_ok + self.polls_empty + self.polls_assigned) as f64 / self.window.as_secs_f64()
    }
}

/// Drives `tokens.len()` simulated agents against `base` and measures the process `pid` over the window.
async fn drive_load(s: &Settings, pid: u32, base: &str, tokens: &[String]) -> LoadRun {
    let idle_rss_kb = status_field(&pid.to_string(), "VmRSS");
    let http = client();
    let stats = Arc::new(LoadStats::default());
    let n = tokens.len();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(2 * n);
    for (i, token) in tokens.iter().enumerate() {
        let frac = i as f64 / n as f64;
        // Heartbeats: every 10 s, agent i at offset i/n of the interval, so they are spread evenly.
        let (http1, stats1, token1) = (http.clone(), stats.clone(), token.clone());
        let url = format!("{base}/api/v1/agents/heartbeat");
        let first = start + HEARTBEAT_EVERY.mul_f64(frac);
        tasks.push(AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval_at(first.into(), HEARTBEAT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let t0 = Instant::now();
                let r = http1.post(&url).bearer_auth(&token1).json(&json!({"running": []})).send().await;
                let ok = match r {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                    Ok(r) => {
                        stats1.error(format!("heartbeat answered {}", r.status()));
                        false
                    }
                    Err(e) => {
                        stats1.error(format!("heartbeat failed: {e}"));
                        false
                    }
                };
                if stats1.measuring.load(Ordering::Relaxed) {
                    if ok {
                        stats1.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                        stats1.heartbeat_latency.lock().unwrap().push(t0.elapsed());
                    } else {
                        stats1.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })));
        // Long-poll: opened during the ramp; the first wait is 1..=30 s so renewals are spread evenly too.
        let (http2, stats2, token2) = (http.clone(), stats.clone(), token.clone());
        let url = format!("{base}/api/v1/assignments/next");
        let opens = start + s.ramp.mul_f64(frac);
        tasks.push(AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep_until(opens.into()).await;
            let mut wait = 1 + (i as u64 % WAIT_SECS);
            let mut seq = 0u64;
            loop {
                seq += 1;
                let req = json!({"wait_secs": wait, "request_key": format!("load-{i}-{seq}")});
                wait = WAIT_SECS;
                let r = http2.post(&url).bearer_auth(&token2).json(&req).send().await;
                let failed = match r {
                    Ok(r) if r.status() == 204 => None,
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(_) => Some(false),
                        Err(e) => Some(stats2.error(format!("long-poll body failed: {e}"))),
                    },
                    Ok(r) => Some(stats2.error(format!("long-poll answered {}", r.status()))),
                    Err(e) => Some(stats2.error(format!("long-poll failed: {e}"))),
                };
                // None: 204 (the wait ended), Some(false): an assignment, Some(true): a failure.
                let counter = match failed {
                    None => &stats2.polls_empty,
                    Some(false) => &stats2.polls_assigned,
                    Some(true) => &stats2.polls_failed,
                };
                if stats2.measuring.load(Ordering::Relaxed) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if failed == Some(true) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        })));
    }

    tokio::time::sleep_until((start + s.ramp + s.settle).into()).await;
    let pid_s = pid.to_string();
    let tick = clock_ticks();
    let (server0, self0, machine0) = (cpu_time(&pid_s, tick), cpu_time("self", tick), machine_cpu());
    let t0 = Instant::now();
    stats.measuring.store(true, Ordering::Relaxed);
    progress(format!("load: measuring pid {pid} for {} s", s.window.as_secs()));
    let (mut rss_max, mut threads_max, mut fds_max) = (0u64, 0u64, 0usize);
    let mut second = 0u64;
    while t0.elapsed() < s.window {
        tokio::time::sleep(Duration::from_secs(1).min(s.window.saturating_sub(t0.elapsed()))).await;
        rss_max = rss_max.max(status_field(&pid_s, "VmRSS"));
        threads_max = threads_max.max(status_field(&pid_s, "Threads"));
        if second.is_multiple_of(5) {
            fds_max = fds_max.max(open_fds(&pid_s));
        }
        second += 1;
    }
    stats.measuring.store(false, Ordering::Relaxed);
    let window = t0.elapsed();
    let (server1, self1, machine1) = (cpu_time(&pid_s, tick), cpu_time("self", tick), machine_cpu());
    let rss_end_kb = status_field(&pid_s, "VmRSS");
    let hwm_kb = status_field(&pid_s, "VmHWM");
    drop(tasks);
    drop(http);

    let pct = |d: Duration| 100.0 * d.as_secs_f64() / window.as_secs_f64();
    let machine_busy_pct = 100.0 * (machine1.0 - machine0.0) as f64 / (machine1.1 - machine0.1).max(1) as f64;
    let heartbeat = dist(std::mem::take(&mut *stats.heartbeat_latency.lock().unwrap()));
    LoadRun {
        server_cpu_pct: pct(server1.saturating_sub(server0)),
        generator_cpu_pct: pct(self1.saturating_sub(self0)),
        machine_busy_pct,
        rss_end_kb,
        rss_max_kb: rss_max.max(rss_end_kb),
        hwm_kb,
        threads_max,
        fds_max,
        window,
        heartbeats_ok: stats.heartbeats_ok.load(Ordering::Relaxed),
        heartbeats_failed: stats.heartbeats_failed.load(Ordering::Relaxed),
        polls_empty: stats.polls_empty.load(Ordering::Relaxed),
        polls_assigned: stats.polls_assigned.load(Ordering::Relaxed),
        polls_failed: stats.polls_failed.load(Ordering::Relaxed),
        heartbeat,
        first_errors: std::mem::take(&mut *stats.first_errors.lock().unwrap()),
        failures_total: stats.failures_total.load(Ordering::Relaxed),
        idle_rss_kb,
    }
}

async fn bench_load(s: &Settings, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let mut agents = s.load_agents;
    // Each agent holds one connection open in the load generator (and one in the server), plus a few for
    // heartbeats between renewals.
    let limit = nofile_limit();
    let needed = agents as u64 + 512;
    notes.push(format!(
        "2: RLIMIT_NOFILE (soft) of the bench {}; the load needs about {needed} in the bench and as many in the server",
        limit.map_or("unknown".into(), |l| l.to_string())
    ));
    if let Some(l) = limit
        && l < needed
    {
        agents = (l.saturating_sub(512) as usize).max(1);
        let msg = format!(
            "2: open-file limit {l} is too low for {} agents: ran {agents} instead (raise it with `ulimit -n {needed}`)",
            s.load_agents
        );
        progress(&msg);
        notes.push(format!("**{msg}**"));
    }
    let dir = tempfile::Builder::new().prefix("forgefleet-bench-load-").tempdir().unwrap();

    // Ours: the real binary.
    let addr = free_addr();
    let db = dir.path().join("data").join("forgefleet.db");
    let config = format!(
        "[server]\nlisten = \"{addr}\"\n\n[store]\npath = {db:?}\n\n[api]\noperator_token = \"{OPERATOR_TOKEN}\"\n\n\
         [agents]\nregistration_token = \"{REGISTRATION_TOKEN}\"\n"
    );
    let config_path = dir.path().join("forgefleet.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Process::new(env!("CARGO_BIN_EXE_forgefleet"));
    cmd.arg("serve").arg("--config").arg(&config_path).current_dir(dir.path()).env_remove("RUST_LOG");
    let mut ours = ChildGuard::spawn(cmd, dir.path().join("serve.log"), "forgefleet serve");
    ours.wait_listening(addr);
    let base = format!("http://{addr}");
    progress(format!("load: forgefleet serve pid {} on {base}; registering {agents} agents", ours.pid()));
    let started = Instant::now();
    let tokens = register_many(&base, agents).await;
    let registration = started.elapsed();
    let after_registration_kb = status_field(&ours.pid().to_string(), "VmRSS");
    let ours_run = drive_load(s, ours.pid(), &base, &tokens).await;
    let log = ours.log_text();
    drop(ours);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Baseline: this bench binary as a bare axum server process, same load.
    let addr = free_addr();
    let mut cmd = Process::new(std::env::current_exe().unwrap());
    cmd.env(BARE_SERVER_ENV, addr.to_string()).current_dir(dir.path());
    let mut bare = ChildGuard::spawn(cmd, dir.path().join("bare.log"), "bare axum server");
    bare.wait_listening(addr);
    let base = format!("http://{addr}");
    progress(format!("load: bare axum server pid {} on {base}", bare.pid()));
    let fake: Vec<String> = (0..agents).map(|i| format!("ffa_{i:064x}")).collect();
    let bare_run = drive_load(s, bare.pid(), &base, &fake).await;
    drop(bare);

    let name = format!("2. {agents} agents: heartbeat/10 s + one open long-poll each");
    rows.push(Row::new(
        &format!("{name}; server CPU over {:.0} s (% of one core)", ours_run.window.as_secs_f64()),
        format!("{:.1} %", ours_run.server_cpu_pct),
        format!("{:.1} % (bare axum process)", bare_run.server_cpu_pct),
        ratio(ours_run.server_cpu_pct, bare_run.server_cpu_pct),
        "< 25 %",
        Some(ours_run.server_cpu_pct < 25.0),
    ));
    rows.push(Row::new(
        &format!("{name}; server peak RSS (VmHWM, whole run)"),
        mb(ours_run.hwm_kb),
        mb(bare_run.hwm_kb),
        ratio(ours_run.hwm_kb as f64, bare_run.hwm_kb as f64),
        "< 100 MB",
        Some(ours_run.hwm_kb < 100 * 1024),
    ));
    rows.push(Row::new(
        &format!("{name}; server RSS in window (max sampled VmRSS)"),
        mb(ours_run.rss_max_kb),
        mb(bare_run.rss_max_kb),
        ratio(ours_run.rss_max_kb as f64, bare_run.rss_max_kb as f64),
        "< 100 MB",
        Some(ours_run.rss_max_kb < 100 * 1024),
    ));
    rows.push(Row::new(
        &format!("{name}; heartbeat latency under load, p50 / p99"),
        format!("{} / {}", fmt_dur(ours_run.heartbeat.p50), fmt_dur(ours_run.heartbeat.p99)),
        format!("{} / {}", fmt_dur(bare_run.heartbeat.p50), fmt_dur(bare_run.heartbeat.p99)),
        format!(
            "{} / {}",
            dur_ratio(ours_run.heartbeat.p50, bare_run.heartbeat.p50),
            dur_ratio(ours_run.heartbeat.p99, bare_run.heartbeat.p99)
        ),
        "-",
        None,
    ));
    rows.push(Row::new(
        &format!("{name}; requests answered per second (sanity: same load)"),
        format!("{:.0} req/s", ours_run.requests_per_sec()),
        format!("{:.0} req/s", bare_run.requests_per_sec()),
        ratio(ours_run.requests_per_sec(), bare_run.requests_per_sec()),
        "-",
        None,
    ));
    for (label, r) in [("forgefleet serve", &ours_run), ("bare axum", &bare_run)] {
        notes.push(format!(
            "2 ({label}): window {:.1} s; heartbeats ok {} failed {}; long-polls ended 204 {} / 200 {} / failed {}; \
             failed requests over the whole run {}; server RSS before the load {}, at end {}, max sampled {}, VmHWM \
             {}; threads max {}; open fds max {}; load generator CPU {:.1} % of one core; whole machine busy {:.1} % \
             of 2 cores' time",
            r.window.as_secs_f64(),
            r.heartbeats_ok,
            r.heartbeats_failed,
            r.polls_empty,
            r.polls_assigned,
            r.polls_failed,
            r.failures_total,
            mb(r.idle_rss_kb),
            mb(r.rss_end_kb),
            mb(r.rss_max_kb),
            mb(r.hwm_kb),
            r.threads_max,
            r.fds_max,
            r.generator_cpu_pct,
            r.machine_busy_pct,
        ));
        if !r.first_errors.is_empty() {
            notes.push(format!("2 ({label}): first errors: {}", r.first_errors.join("; ")));
        }
    }
    notes.push(format!(
        "2: registering {agents} agents took {:.1} s ({:.0}/s, 32 in flight); server VmRSS right after: {}",
        registration.as_secs_f64(),
        agents as f64 / registration.as_secs_f64(),
        mb(after_registration_kb)
    ));
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(3).collect();
    if !warnings.is_empty() {
        notes.push(format!("2: the server logged: {}", warnings.join(" | ")));
    }
}

/// Registers `n` agents, 32 requests in flight, and returns their tokens in order.
async fn register_many(base: &str, n: usize) -> Vec<String> {
    let http = client();
    let next = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(vec![String::new(); n]));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (http, next, tokens, base) = (http.clone(), next.clone(), tokens.clone(), base.to_string());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let token = register(&http, &base, &format!("load-agent-{i:05}"), 1).await.unwrap();
                tokens.lock().unwrap()[i] = token;
            }
        }));
    }
    for w in workers {
        w.await.expect("a registration worker failed");
    }
    Arc::try_unwrap(tokens).unwrap().into_inner().unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// The bare baseline server process

/// Runs when this binary is re-executed with `FORGEFLEET_BENCH_BARE_SERVER=<addr>`: the two routes the load
/// uses, answered the way forgefleet answers them but without auth lookup, engine or store. Same runtime
/// (tokio multi-thread, one worker per core) and the same `axum::serve` as `forgefleet serve`.
fn bare_server(addr: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let app = Router::new()
            .route("/api/v1/agents/heartbeat", post(bare_heartbeat))
            .route("/api/v1/assignments/next", post(bare_next));
        axum::serve(listener, app).await.unwrap();
    });
}

fn has_bearer(headers: &HeaderMap) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("Bearer "))
}

async fn bare_heartbeat(headers: HeaderMap, axum::Json(_): axum::Json<Value>) -> Response {
    if !has_bearer(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(json!({"cancel": [], "heartbeat_interval_secs": HEARTBEAT_EVERY.as_secs()})).into_response()
}

async fn bare_next(headers: HeaderMap, axum::Json(req): axum::Json<Value>) -> StatusCode {
    if !has_bearer(&headers) {
        return StatusCode::UNAUTHORIZED;
    }
    let wait = req["wait_secs"].as_u64().unwrap_or(0).min(60);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    StatusCode::NO_CONTENT
}

// ---------------------------------------------------------------------------------------------------------

fn main() {
    if let Ok(addr) = std::env::var(BARE_SERVER_ENV) {
        return bare_server(&addr);
    }
    let s = Settings::from_env();
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (rows, notes) = runtime.block_on(async {
        let (mut rows, mut notes) = (Vec::new(), Vec::new());
        if wanted("latency") {
            bench_latency(&s, &mut rows, &mut notes).await;
        }
        // Awaited here, not spawned: child processes must be started from the main thread (`die_with_parent`).
        if wanted("load") {
            bench_load(&s, &mut rows, &mut notes).await;
        }
        (rows, notes)
    });
    drop(runtime);
    print_table(&rows, &notes, &s, started.elapsed());
}
