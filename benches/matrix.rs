//! Matrix notification latency against a real Synapse, reported against a bare send measured in the same run.
//!
//! One Synapse is started as the tests start it (`tests/support/synapse.rs`, stopped by its watchdog when this
//! program exits, however it ends). A watcher (a person's client: plain reqwest against the client-server API)
//! keeps a long-poll `/sync` open, filtered on the room, and stamps every message the moment its sync returns.
//!
//! - Ours: an in-process forgefleet (`Server::start` with a `SystemClock` and a store in a temporary directory,
//!   `start_matrix()` and `start_integrations_with(poll, the Matrix deliverer)`, no Forgejo) whose bot is in
//!   the room. Each sample observes a new issue labelled `status:todo`, then asks for the agent's next
//!   assignment; timed from the engine's reply to `NextAssignment` (its commit, which wrote the `assigned`
//!   outbox row) until the watcher's sync returns the bot's message for that issue.
//! - Baseline: a second person `PUT /rooms/{room}/send/m.room.message/{txn}`, timed from before the request
//!   until the watcher's sync returns that event.
//!
//! The two alternate sample by sample, so background load falls on both alike.
//!
//! Run: `cargo bench --bench matrix` (200 samples each) or `FORGEFLEET_BENCH_QUICK=1 cargo bench --bench matrix`
//! (20). `FORGEFLEET_BENCH_SAMPLES=N` sets the number. docs/benchmarks.md explains what the numbers mean.

mod common;
#[allow(dead_code)]
#[path = "../tests/support/synapse.rs"]
mod synapse;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::{Row, env_number, percentile, print_rows, quick};
use forgefleet::config::{Config, NotifyKind, Secret};
use forgefleet::core::{AgentId, AgentName};
use forgefleet::engine::{Command, EngineHandle, IssueObservation, Registration, Reply, SystemClock};
use forgefleet::server::Server;
use forgefleet::store::Store;
use reqwest::Method;
use serde_json::{Value, json};
use synapse::{Person, enc};
use tokio::sync::{mpsc, oneshot};

/// The outbox worker's poll, as `serve` sets it: it is woken by the engine on every new outbox row, and polls
/// only as a fallback.
const POLL: Duration = Duration::from_secs(1);
/// The watcher's long-poll: far longer than any sample, so every event ends a waiting sync.
const SYNC_TIMEOUT_MS: u64 = 30_000;
/// Untimed samples of each kind first (connections, caches, the bot's first send).
const WARMUP: usize = 10;
/// Between two samples: lets the deliverer record the sent message before the next commit.
const GAP: Duration = Duration::from_millis(20);
const REPO: &str = "bench/matrix";
/// Issue numbers start here, so every number has as many digits and none is a prefix of another.
const FIRST_ISSUE: usize = 10_000;

/// `synapse.rs` picks the homeserver's port with this, as `tests/support` does.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[matrix bench] {}", msg.as_ref());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A message as the watcher's sync returned it.
struct Seen {
    sender: String,
    body: String,
    at: Instant,
}

fn main() {
    let started = Instant::now();
    let samples = env_number("FORGEFLEET_BENCH_SAMPLES").map_or(if quick() { 20 } else { 200 }, |n| n.max(1) as usize);
    let load_before = load_average();
    progress(format!("starting Synapse (installed into target/synapse-venv if missing); load {load_before}"));
    let t = Instant::now();
    synapse::synapse();
    progress(format!("Synapse answers after {:.1} s", t.elapsed().as_secs_f64()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (ours, baseline, puts) = runtime.block_on(run(samples));
    drop(runtime);

    let load_after = load_average();
    let p = |v: &[Duration], q: f64| percentile(v, q);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    // One row per percentile: ours against the bare send at the same percentile.
    let latency = |q: f64| {
        let (a, b) = (p(&ours, q), p(&baseline, q));
        Row::new(
            &format!("notification latency p{q}, commit to seen by a syncing client ({samples} samples)"),
            ms(a),
            format!("{} (bare `PUT /send` to seen)", ms(b)),
            format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
            "-",
            None,
        )
    };
    let rows = vec![
        latency(50.0),
        latency(99.0),
        Row::new(
            "(info: the baseline's `PUT /send` round trip alone, p50 / p99)",
            format!("{} / {}", ms(p(&puts, 50.0)), ms(p(&puts, 99.0))),
            "-".into(),
            "-".into(),
            "-",
            None,
        ),
    ];
    println!();
    println!(
        "forgefleet Matrix notification benchmark ({} mode, {} cores, outbox poll {} s, {:.0} s in all)",
        if quick() { "QUICK" } else { "full" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        POLL.as_secs(),
        started.elapsed().as_secs_f64()
    );
    println!();
    print_rows(&rows);
    println!(
        "- max: ours {}, baseline {}; load average before {load_before}, after {load_after}",
        ms(*ours.last().unwrap()),
        ms(*baseline.last().unwrap())
    );
    println!();
}

/// The timed samples, each sorted: ours, the baseline, and the baseline's `PUT` round trips alone.
async fn run(samples: usize) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let s = synapse::synapse();
    let bot = s.register("bot").await;
    let person = Person::login(&s.register("person").await).await;
    let watcher = Person::login(&s.register("watcher").await).await;
    let room = person.create_room(None, &[&bot.user_id, &watcher.user_id]).await;
    let (status, answer) = watcher.call(Method::POST, &format!("/rooms/{}/join", enc(&room)), Some(json!({}))).await;
    assert_eq!(status, 200, "{answer}");

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.store.path = dir.path().join("forgefleet.db");
    config.matrix.homeserver_url = Some(s.url());
    config.matrix.user = Some(bot.name.clone());
    config.matrix.password = Some(Secret::new(bot.password.clone()));
    config.matrix.store_passphrase = Some(Secret::new("bench passphrase"));
    config.matrix.rooms = vec![room.clone()];
    // Only the message timed: an agent's registration would post its thread's root and news otherwise.
    config.matrix.notify = vec![NotifyKind::Assigned];
    let store = Store::open(&config.store.path).unwrap();
    let server = Server::start(config, store, SystemClock).unwrap();
    let engine = server.engine().clone();
    let (bot_handle, deliverer) = server.start_matrix().expect("the bot is configured");
    let workers = server.start_integrations_with(POLL, Some(deliverer)).unwrap();
    let agent = register_agent(&engine).await;
    let t = Instant::now();
    bot_handle.bot().await;
    while person.membership(&room, &bot.user_id).await.as_deref() != Some("join") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress(format!("the bot logged in and joined the room in {:.1} s", t.elapsed().as_secs_f64()));

    let (tx, mut seen) = mpsc::unbounded_channel();
    let (ready, synced) = oneshot::channel();
    let watching = tokio::spawn(watch(watcher, room.clone(), ready, tx));
    synced.await.expect("the watcher's first sync");

    progress(format!("{WARMUP} untimed then {samples} timed samples of each, alternating"));
    let (mut ours, mut baseline, mut puts) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..WARMUP + samples {
        // Baseline: a person's bare send.
        tokio::time::sleep(GAP).await;
        let body = format!("baseline message {i}");
        let path = format!("/rooms/{}/send/m.room.message/bench-{i}", enc(&room));
        let sent = Instant::now();
        let (status, answer) = person.call(Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": body}))).await;
        let put = sent.elapsed();
        assert_eq!(status, 200, "{answer}");
        let at = wait_for(&mut seen, |m| m.body == body).await;

        // Ours: a commit that makes an `assigned` notification.
        tokio::time::sleep(GAP).await;
        let issue = format!("{REPO}#{}", FIRST_ISSUE + i);
        observe(&engine, &issue).await;
        let reply = engine.send(Command::NextAssignment { agent, request_key: None }).await.unwrap();
        let committed = Instant::now();
        assert!(matches!(reply, Reply::Assignment(Some(_))), "no assignment: {reply:?}");
        let bot_id = bot.user_id.clone();
        let delivered = wait_for(&mut seen, |m| m.sender == bot_id && m.body.contains(&issue)).await;

        if i >= WARMUP {
            baseline.push(at.duration_since(sent));
            puts.push(put);
            ours.push(delivered.duration_since(committed));
        }
        if (i + 1) % 50 == 0 {
            progress(format!("{} of {} rounds", i + 1, WARMUP + samples));
        }
    }

    watching.abort();
    if let Some(w) = workers {
        w.abort();
    }
    bot_handle.stop().await;
    drop(engine);
    server.shutdown();
    for v in [&mut ours, &mut baseline, &mut puts] {
        v.sort();
    }
    (ours, baseline, puts)
}

async fn register_agent(engine: &EngineHandle) -> AgentId {
    let registration = Registration {
        name: AgentName::parse("bench-agent").unwrap(),
        adapter: "command".into(),
        capabilities: BTreeSet::new(),
        // Every sample's task stays assigned: the agent never runs out of slots.
        max_concurrency: 1_000_000,
        version: "bench".into(),
        token_hash: "bench".into(),
        presented_token_hash: None,
    };
    match engine.send(Command::RegisterAgent(registration)).await.unwrap() {
        Reply::Registered(agent) => agent,
        other => panic!("registering the agent answered {other:?}"),
    }
}

async fn observe(engine: &EngineHandle, issue: &str) {
    let observation = IssueObservation {
        issue: issue.parse().unwrap(),
        title: format!("Benchmark issue {issue}"),
        body: "Please fix it.".into(),
        labels: vec!["status:todo".into()],
        open: true,
        updated_at: None,
        fresh: true,
        issue_id: None,
    };
    let reply = engine.send(Command::ObserveIssue(observation)).await.unwrap();
    assert!(matches!(reply, Reply::Observed(Some(_))), "observing {issue} answered {reply:?}");
}

/// When the watcher saw the first message that `wanted` holds for; others (the bot's edits, a stray) are passed.
async fn wait_for(seen: &mut mpsc::UnboundedReceiver<Seen>, wanted: impl Fn(&Seen) -> bool) -> Instant {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), seen.recv()).await {
            Ok(Some(m)) if wanted(&m) => return m.at,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watcher stopped"),
            Err(_) => panic!("no awaited message reached the watcher within 30 s"),
        }
    }
}

/// The watcher: a long-poll `/sync` on the room, over and over; every message is stamped when its sync returns.
/// `ready` is told after the first sync (without a token: the room's history, which does not count).
async fn watch(watcher: Person, room: String, ready: oneshot::Sender<()>, tx: mpsc::UnboundedSender<Seen>) {
    let filter = json!({
        "presence": {"types": []},
        "account_data": {"types": []},
        "room": {
            "rooms": [room],
            "timeline": {"types": ["m.room.message"], "limit": 100},
            "state": {"types": []},
            "ephemeral": {"types": []},
            "account_data": {"types": []},
        },
    });
    let (status, answer) = watcher.call(Method::POST, &format!("/user/{}/filter", watcher.user_id), Some(filter)).await;
    assert_eq!(status, 200, "{answer}");
    let filter = answer["filter_id"].as_str().unwrap().to_string();
    let mut since: Option<String> = None;
    let mut ready = Some(ready);
    loop {
        let mut path = format!("/sync?filter={filter}&timeout={SYNC_TIMEOUT_MS}");
        if let Some(token) = &since {
            path.push_str(&format!("&since={token}"));
        }
        let (status, answer) = watcher.call(Method::GET, &path, None).await;
        let at = Instant::now();
        assert_eq!(status, 200, "sync: {answer}");
        let events = answer["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
        if since.is_some() {
            for e in events {
                let seen = Seen { sender: e["sender"].as_str().unwrap_or_default().to_string(), body: body(&e), at };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        }
        since = answer["next_batch"].as_str().map(str::to_string);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
    }
}

fn body(e: &Value) -> String {
    e["content"]["body"].as_str().unwrap_or_default().to_string()
}
