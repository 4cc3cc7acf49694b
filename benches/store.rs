//! Benchmarks of the store and the engine, each reported as a ratio against a baseline measured in the same
//! run on the same machine, so the numbers mean something on any hardware.
//!
//! Run: `cargo bench --bench store` (full, a few minutes) or `FORGEFLEET_BENCH_QUICK=1 cargo bench --bench store`
//! (small sizes, a smoke test). `FORGEFLEET_BENCH_ONLY=append,batch,next,rebuild,startup` runs a subset.
//! `docs/benchmarks.md` explains what each one measures and why its baseline is fair.
//!
//! Every database is a file in a temporary directory, opened with the store's own pragmas (WAL,
//! synchronous=NORMAL). The large logs used by the rebuild and start-up benchmarks are built once and cached in
//! `target/bench-data/`, keyed by schema version and size; each run works on a copy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Row, median, percentile, print_rows, quick, wanted};
use forgefleet::core::queue::{Candidate, QueueKey, pick_next};
use forgefleet::core::{
    Agent, AgentId, AgentName, CommitSha, Event, IssueRef, Priority, Receipt, RepoName, Task, TaskId, TaskSpec,
    Timestamp, Usage, effects_of,
};
use forgefleet::engine::{
    Clock, Command, Engine, EngineError, EngineSettings, IssueObservation, ManualClock, Registration, Reply,
};
use forgefleet::store::{SCHEMA_VERSION, Store};
use rusqlite::{Connection, ToSql, params};

/// Bump when the shape of the cached databases changes, so stale caches are not reused.
const GENERATOR_VERSION: u32 = 2;
/// 2025-10-09: in the past, so a server started on a cached database finds its agents silent, as after a
/// restart.
const START: Timestamp = Timestamp(1_760_000_000_000);
const BATCH: usize = 256;

/// A realistic issue body (~420 bytes): it is written into the event and into the task row.
const BODY: &str = "The nightly reconciliation job fails intermittently with a timeout when the upstream \
ledger API is slow. Steps to reproduce: run `make reconcile` against staging with LEDGER_LATENCY=800ms. \
Expected: the job retries the page and finishes. Actual: it aborts after the first timeout and leaves the \
batch half-applied. Acceptance: retries with backoff, an idempotent page apply, a regression test, and a \
note in the runbook. Logs are attached to the linked incident.";

// ---------------------------------------------------------------------------------------------------------
// Sizes

struct Sizes {
    quick: bool,
    /// Tasks in the single-transaction append benchmark (4 commands each).
    single_tasks: usize,
    /// Tasks in the batched append benchmark (4 commands each).
    batch_tasks: usize,
    rounds: usize,
    queue: usize,
    picks: usize,
    rebuild_tasks: usize,
    startup_tasks: usize,
    startup_runs: usize,
}

impl Sizes {
    fn from_env() -> Sizes {
        let quick = quick();
        if quick {
            Sizes {
                quick,
                single_tasks: 256,
                batch_tasks: 1024,
                rounds: 1,
                queue: 10_000,
                picks: 2_000,
                rebuild_tasks: 5_000,
                startup_tasks: 5_000,
                startup_runs: 3,
            }
        } else {
            Sizes {
                quick,
                single_tasks: 4_000,
                batch_tasks: 16_384,
                rounds: 3,
                queue: 100_000,
                picks: 10_000,
                rebuild_tasks: 50_000,
                startup_tasks: 250_000,
                startup_runs: 5,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The report

fn print_table(rows: &[Row], sizes: &Sizes, total: Duration) {
    println!();
    println!(
        "forgefleet store benchmarks ({} mode, schema v{SCHEMA_VERSION}, {} cores, {:.0} s)",
        if sizes.quick { "QUICK" } else { "full" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        total.as_secs_f64()
    );
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "cpu: {cpu}; load average at the end (1, 5, 15 min): {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    print_rows(rows);
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1_000.0 {
        format!("{us:.1} µs")
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

// ---------------------------------------------------------------------------------------------------------
// Workload: issues, agents, commands

/// xorshift64*: a deterministic mix without depending on a crate's random stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// 0..100
    fn pct(&mut self) -> u64 {
        self.next() % 100
    }
}

/// How the labels of generated issues are mixed.
#[derive(Clone, Copy)]
struct Mix {
    /// Percent of issues with `needs:gpu`.
    gpu: u64,
    /// Percent with `needs:rust`.
    rust: u64,
    /// Percent pinned (`agent:other-N`) to agents other than the one measured.
    pinned: u64,
}

const WRITE_MIX: Mix = Mix { gpu: 10, rust: 30, pinned: 0 };
const QUEUE_MIX: Mix = Mix { gpu: 10, rust: 30, pinned: 2 };

/// Issue `i` (1-based), spread over 20 repositories, with priorities critical 5%, high 20%, medium 50%, low 25%.
fn observation(i: u64, rng: &mut Rng, mix: Mix) -> IssueObservation {
    let repo = format!("fleet/service-{:02}", i % 20);
    let issue = IssueRef { repo: RepoName::parse(&repo).unwrap(), number: i / 20 + 1 };
    let mut labels = vec!["status:todo".to_string()];
    let p = rng.pct();
    labels.push(
        match p {
            0..5 => "priority:critical",
            5..25 => "priority:high",
            25..75 => "priority:medium",
            _ => "priority:low",
        }
        .to_string(),
    );
    labels.push(["type:bug", "type:feature", "type:chore", "type:docs"][(rng.next() % 4) as usize].to_string());
    if rng.pct() < mix.gpu {
        labels.push("needs:gpu".into());
    }
    if rng.pct() < mix.rust {
        labels.push("needs:rust".into());
    }
    if rng.pct() < mix.pinned {
        labels.push(format!("agent:other-{}", rng.next() % 5 + 1));
    }
    IssueObservation {
        issue,
        title: format!("Fix intermittent timeout in the ledger reconciliation job (case {i})"),
        body: BODY.to_string(),
        labels,
        open: true,
        updated_at: None,
        fresh: true,
        issue_id: None,
    }
}

fn registration(name: &str, caps: &[&str], slots: u32) -> Registration {
    Registration {
        name: AgentName::parse(name).unwrap(),
        adapter: "claude-code".into(),
        capabilities: caps.iter().map(|c| c.to_string()).collect::<BTreeSet<_>>(),
        max_concurrency: slots,
        version: "0.1.0".into(),
        token_hash: format!("{:064x}", name.len() as u64 * 0x9E37_79B9_7F4A_7C15),
        presented_token_hash: None,
    }
}

fn receipt(task: TaskId) -> Receipt {
    Receipt {
        pr_number: task.0 as u64 + 1000,
        head_sha: CommitSha::parse(&format!("{:040x}", task.0 as u128 * 0x1234_5678_9abc_def1)).unwrap(),
        summary: "Added retries with exponential backoff to the page fetch and made page apply idempotent.".into(),
        usage: Usage { input_tokens: 182_344, output_tokens: 9_212, other: BTreeMap::new() },
        cost_usd: Some(1.42),
        duration_secs: Some(913),
        session_id: None,
        artifacts: Vec::new(),
    }
}

fn expect_ok(r: Result<Reply, EngineError>, what: &str) -> Reply {
    match r {
        Ok(reply) => reply,
        Err(e) => panic!("{what} failed: {e}"),
    }
}

fn new_engine(path: &Path) -> (Engine, ManualClock) {
    let clock = ManualClock::new(START);
    let store = Store::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    (Engine::new(store, EngineSettings::default(), clock.clone()), clock)
}

fn register(engine: &mut Engine, r: Registration) -> AgentId {
    match expect_ok(engine.execute(Command::RegisterAgent(r)), "register") {
        Reply::Registered(id) => id,
        other => panic!("unexpected reply {other:?}"),
    }
}

/// The write workload: each task goes through its life in four commands (observe the issue, assign it, the
/// agent starts it, the issue is closed), each one event plus its projection and outbox rows. Task ids are
/// predictable on a fresh database (1, 2, ...), and each task ends before the next is observed.
fn write_workload(tasks: usize, agent: AgentId) -> Vec<Command> {
    let mut rng = Rng(0x5EED_0001);
    let mut out = Vec::with_capacity(tasks * 4);
    for i in 1..=tasks as u64 {
        let task = TaskId(i as i64);
        out.push(Command::ObserveIssue(observation(i, &mut rng, WRITE_MIX)));
        // Agents always send an idempotency key with their request (the REST protocol does).
        out.push(Command::NextAssignment { agent, request_key: Some(format!("req-{i:08}")) });
        out.push(Command::StartTask { agent, task, attempt: 1 });
        out.push(Command::CancelTask { task, reason: "the issue was closed".into() });
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// 1 and 2: appending commands vs raw INSERTs of the same rows

/// One row write of the raw baseline.
enum Op {
    Event {
        at: i64,
        kind: String,
        task_id: Option<i64>,
        agent_id: Option<i64>,
        payload: String,
    },
    InsertTask(TaskRow),
    UpdateTask(TaskRow),
    InsertLease(LeaseRow),
    UpdateLease(LeaseRow),
    DeleteLease(i64),
    /// Refers to the event inserted just before it.
    Outbox {
        kind: &'static str,
        payload: String,
        created_at: i64,
    },
}

struct TaskRow {
    id: i64,
    repo: String,
    issue: i64,
    state: &'static str,
    priority: i64,
    queued_at: i64,
    not_before: Option<i64>,
    attempt: u32,
    needs: String,
    pin: Option<String>,
    updated_at: i64,
    data: String,
    /// The issue's title and body: written when the task is inserted, and by an update only if they changed.
    text: Option<(String, String)>,
}

struct LeaseRow {
    task_id: i64,
    agent_id: i64,
    attempt: u32,
    assigned_at: i64,
    start_by: i64,
    started_at: Option<i64>,
    deadline: i64,
    request_key: Option<String>,
}

fn task_row(t: &Task, before: Option<&Task>) -> TaskRow {
    let edited = before.is_none_or(|b| b.title != t.title || b.body != t.body);
    TaskRow {
        id: t.id.0,
        repo: t.issue.repo.as_str().to_string(),
        issue: t.issue.number as i64,
        state: t.state.as_str(),
        priority: t.spec.priority.rank(),
        queued_at: t.queued_at.0,
        not_before: t.not_before.map(|n| n.0),
        attempt: t.attempt,
        needs: t.spec.needs.iter().map(String::as_str).collect::<Vec<_>>().join("\n"),
        pin: t.spec.agent.as_ref().map(|a| a.as_str().to_string()),
        updated_at: t.updated_at.0,
        data: forgefleet::store::encode_task(t),
        text: edited.then(|| (t.title.clone(), t.body.clone())),
    }
}

fn lease_row(t: &Task) -> Option<LeaseRow> {
    t.lease.as_ref().map(|l| LeaseRow {
        task_id: t.id.0,
        agent_id: l.agent.0,
        attempt: l.attempt,
        assigned_at: l.assigned_at.0,
        start_by: l.start_by.0,
        started_at: l.started_at.map(|s| s.0),
        deadline: l.deadline.0,
        request_key: l.request_key.clone(),
    })
}

/// The rows each command wrote, derived from the engine's own log: the event rows byte for byte, and the
/// task, lease and outbox rows the projection of each event produces (the same serialisation the store
/// uses). One entry per command; every command of the workload appends exactly one event.
fn plan_from_log(conn: &Connection) -> Vec<Vec<Op>> {
    let mut stmt = conn
        .prepare("SELECT at, kind, task_id, agent_id, payload FROM events WHERE task_id IS NOT NULL ORDER BY seq")
        .unwrap();
    let mut rows = stmt.query([]).unwrap();
    let mut tasks: HashMap<i64, Task> = HashMap::new();
    let mut plan = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        let (at, kind, task_id, agent_id, payload): (i64, String, Option<i64>, Option<i64>, String) =
            (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap(), r.get(3).unwrap(), r.get(4).unwrap());
        let event: Event = serde_json::from_str(&payload).unwrap();
        let id = task_id.unwrap();
        let before = tasks.get(&id).cloned();
        let after = match &before {
            Some(t) => {
                let mut t = t.clone();
                t.apply(&event).unwrap();
                t
            }
            None => Task::queued(&event).unwrap(),
        };
        let mut ops = vec![Op::Event { at, kind, task_id, agent_id, payload }];
        let row = task_row(&after, before.as_ref());
        ops.push(if before.is_some() { Op::UpdateTask(row) } else { Op::InsertTask(row) });
        match (before.as_ref().and_then(lease_row), lease_row(&after)) {
            (None, Some(l)) => ops.push(Op::InsertLease(l)),
            (Some(_), Some(l)) => ops.push(Op::UpdateLease(l)),
            (Some(_), None) => ops.push(Op::DeleteLease(id)),
            (None, None) => {}
        }
        for effect in effects_of(before.as_ref(), &after, &event) {
            ops.push(Op::Outbox {
                kind: effect.kind(),
                payload: serde_json::to_string(&effect).unwrap(),
                created_at: at,
            });
        }
        tasks.insert(id, after);
        plan.push(ops);
    }
    plan
}

/// The task columns every step may change, as ?1..?10.
fn changing(t: &TaskRow) -> [&dyn ToSql; 10] {
    [&t.id, &t.state, &t.priority, &t.queued_at, &t.not_before, &t.attempt, &t.needs, &t.pin, &t.updated_at, &t.data]
}

/// A lease row's columns, as ?1..?8 of both its statements.
fn lease_columns(l: &LeaseRow) -> [&dyn ToSql; 8] {
    [&l.task_id, &l.agent_id, &l.attempt, &l.assigned_at, &l.start_by, &l.started_at, &l.deadline, &l.request_key]
}

fn apply_ops(conn: &Connection, ops: &[Op]) -> rusqlite::Result<()> {
    let mut last_seq = 0;
    for op in ops {
        match op {
            Op::Event { at, kind, task_id, agent_id, payload } => {
                conn.prepare_cached(
                    "INSERT INTO events (at, kind, task_id, agent_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![at, kind, task_id, agent_id, payload])?;
                last_seq = conn.last_insert_rowid();
            }
            Op::InsertTask(t) => {
                let (title, body) = t.text.as_ref().expect("an inserted task has its text");
                let fixed: [&dyn ToSql; 4] = [&t.repo, &t.issue, title, body];
                conn.prepare_cached(
                    "INSERT INTO tasks (id, state, priority, queued_at, not_before, attempt, needs, pin, updated_at,
                     data, repo, issue, title, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )?
                .execute(&[&changing(t)[..], &fixed[..]].concat()[..])?;
            }
            // The fewest columns an update must set: a task's issue never changes, its text only when edited.
            Op::UpdateTask(t) => {
                conn.prepare_cached(
                    "UPDATE tasks SET state = ?2, priority = ?3, queued_at = ?4, not_before = ?5, attempt = ?6,
                     needs = ?7, pin = ?8, updated_at = ?9, data = ?10 WHERE id = ?1",
                )?
                .execute(&changing(t)[..])?;
                if let Some((title, body)) = &t.text {
                    conn.prepare_cached("UPDATE tasks SET title = ?2, body = ?3 WHERE id = ?1")?
                        .execute(params![t.id, title, body])?;
                }
            }
            Op::InsertLease(l) => {
                conn.prepare_cached(
                    "INSERT INTO leases (task_id, agent_id, attempt, assigned_at, start_by, started_at, deadline,
                     request_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(&lease_columns(l)[..])?;
            }
            Op::UpdateLease(l) => {
                conn.prepare_cached(
                    "UPDATE leases SET agent_id = ?2, attempt = ?3, assigned_at = ?4, start_by = ?5, started_at = ?6,
                     deadline = ?7, request_key = ?8 WHERE task_id = ?1",
                )?
                .execute(&lease_columns(l)[..])?;
            }
            Op::DeleteLease(id) => {
                conn.prepare_cached("DELETE FROM leases WHERE task_id = ?1")?.execute([id])?;
            }
            Op::Outbox { kind, payload, created_at } => {
                conn.prepare_cached(
                    "INSERT INTO outbox (event_seq, kind, payload, created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                )?
                .execute(params![last_seq, kind, payload, created_at])?;
            }
        }
    }
    Ok(())
}

/// Runs whole commands of `plan` as raw SQL, `per_tx` commands per transaction (BEGIN IMMEDIATE .. COMMIT,
/// as the engine does). With `savepoints`, each command also runs in its own savepoint, taken and released
/// the way the engine takes them (a diagnostic, not the baseline).
fn raw_block(conn: &Connection, plan: &[Vec<Op>], per_tx: usize, savepoints: bool) {
    for chunk in plan.chunks(per_tx) {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for ops in chunk {
            if savepoints {
                conn.execute_batch("SAVEPOINT cmd").unwrap();
                apply_ops(conn, ops).unwrap();
                conn.execute_batch("RELEASE cmd").unwrap();
            } else {
                apply_ops(conn, ops).unwrap();
            }
        }
        conn.execute_batch("COMMIT").unwrap();
    }
}

/// Runs commands through the engine, `per_tx` per `execute_batch` (1: `execute`), checking every reply.
fn engine_block(engine: &mut Engine, cmds: Vec<Command>, per_tx: usize) {
    let check = |r: Result<Reply, EngineError>| {
        if let Reply::Assignment(None) = expect_ok(r, "workload command") {
            panic!("an assignment found no task");
        }
    };
    if per_tx == 1 {
        for cmd in cmds {
            check(engine.execute(cmd));
        }
    } else {
        let mut it = cmds.into_iter().peekable();
        while it.peek().is_some() {
            engine.execute_batch(it.by_ref().take(per_tx).collect()).into_iter().for_each(check);
        }
    }
}

fn table_dump(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
}

struct AppendResult {
    commands: usize,
    ours: Duration,
    raw: Duration,
    /// The raw baseline with a savepoint around each command (diagnostic).
    raw_savepoints: Option<Duration>,
}

/// The engine and the raw baseline (and, with `with_savepoints`, the baseline with a savepoint per command)
/// run side by side on fresh databases, in alternating blocks of commands, so that whatever else the machine
/// does falls on all of them alike; `rounds` times, the totals summed.
fn bench_append(dir: &Path, tasks: usize, per_tx: usize, rounds: usize, with_savepoints: bool) -> AppendResult {
    let warm = BATCH;
    let block = if per_tx == 1 { 512 } else { 16 * BATCH };
    // The rows the workload writes, from an untimed run of the same commands (the log is deterministic).
    let plan = {
        let path = dir.join(format!("append-{per_tx}-plan.db"));
        let (mut engine, _clock) = new_engine(&path);
        let agent = register(&mut engine, registration("bench-worker", &["gpu", "rust"], 4));
        engine_block(&mut engine, write_workload(tasks, agent), BATCH);
        let plan = plan_from_log(engine.store.connection());
        assert_eq!(plan.len(), tasks * 4, "every command appends exactly one event");
        drop(engine);
        remove_db(&path);
        plan
    };
    let (mut ours, mut raw, mut raw_sp) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let path = dir.join(format!("append-{per_tx}-{round}-engine.db"));
        let (mut engine, _clock) = new_engine(&path);
        let agent = register(&mut engine, registration("bench-worker", &["gpu", "rust"], 4));
        let raw_path = dir.join(format!("append-{per_tx}-{round}-raw.db"));
        let raw_store = raw_db(&raw_path, &engine);
        let sp_path = dir.join(format!("append-{per_tx}-{round}-raw-savepoints.db"));
        let sp_store = with_savepoints.then(|| raw_db(&sp_path, &engine));

        let mut cmds = write_workload(tasks, agent).into_iter();
        let mut blocks: Vec<Vec<Command>> = vec![cmds.by_ref().take(warm).collect()];
        while cmds.len() > 0 {
            blocks.push(cmds.by_ref().take(block).collect());
        }
        let (mut o, mut r, mut sp) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut at = 0;
        for (k, cmds) in blocks.into_iter().enumerate() {
            let n = cmds.len();
            let ops = &plan[at..at + n];
            at += n;
            let mut timings = [Duration::ZERO; 3];
            let mut engine_cmds = Some(cmds);
            let mut run = |which: usize| {
                let t = Instant::now();
                match which {
                    0 => engine_block(&mut engine, engine_cmds.take().unwrap(), per_tx),
                    1 => raw_block(raw_store.connection(), ops, per_tx, false),
                    _ => {
                        if let Some(sp) = &sp_store {
                            raw_block(sp.connection(), ops, per_tx, true)
                        }
                    }
                }
                timings[which] = t.elapsed();
            };
            if k % 2 == 0 {
                (0..3).for_each(&mut run);
            } else {
                (0..3).rev().for_each(&mut run);
            }
            if k > 0 {
                o += timings[0];
                r += timings[1];
                sp += timings[2];
            }
        }
        progress(format!(
            "append {per_tx}/tx round {round}: engine {}, raw {}{}",
            fmt_dur(o),
            fmt_dur(r),
            if with_savepoints { format!(", raw + savepoints {}", fmt_dur(sp)) } else { String::new() }
        ));
        ours += o;
        raw += r;
        raw_sp += sp;
        if round == 0 {
            // The baseline wrote the same bytes as the engine: same log, task rows, outbox rows and leases.
            for sql in [
                "SELECT data || title || body FROM tasks ORDER BY id",
                "SELECT kind || payload || created_at FROM outbox ORDER BY id",
                "SELECT payload FROM events WHERE task_id IS NOT NULL ORDER BY seq",
                "SELECT task_id || ':' || agent_id || ':' || deadline || ':' || COALESCE(request_key, '-') FROM leases
                 ORDER BY task_id",
            ] {
                assert!(
                    table_dump(engine.store.connection(), sql) == table_dump(raw_store.connection(), sql),
                    "the raw baseline did not write what the engine wrote ({sql})"
                );
            }
            // ... and as many rows in every table (a table the engine writes and the baseline does not would
            // show here).
            for table in table_dump(
                engine.store.connection(),
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            ) {
                let sql = format!("SELECT CAST(COUNT(*) AS TEXT) FROM \"{table}\"");
                assert!(
                    table_dump(engine.store.connection(), &sql) == table_dump(raw_store.connection(), &sql),
                    "the engine and the raw baseline wrote different numbers of rows into {table}"
                );
            }
        }
        drop((engine, raw_store, sp_store));
        for p in [&path, &raw_path, &sp_path] {
            remove_db(p);
        }
    }
    AppendResult { commands: (tasks * 4 - warm) * rounds, ours, raw, raw_savepoints: with_savepoints.then_some(raw_sp) }
}

fn remove_db(p: &Path) {
    let _ = std::fs::remove_file(p);
    for side in sidecars(p) {
        let _ = std::fs::remove_file(side);
    }
}

/// A fresh database with the store's schema and pragmas for the raw baseline, holding the engine's agents
/// (the leases refer to them) and their registration events. Set-up, not timed.
fn raw_db(path: &Path, engine: &Engine) -> Store {
    let store = Store::open(path).unwrap();
    let conn = store.connection();
    let src = engine.store.connection();
    let mut stmt =
        src.prepare("SELECT id, name, state, token_hash, updated_at, data, last_heartbeat_at FROM agents").unwrap();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        conn.execute(
            "INSERT INTO agents (id, name, state, token_hash, updated_at, data, last_heartbeat_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.get::<_, i64>(0).unwrap(),
                r.get::<_, String>(1).unwrap(),
                r.get::<_, String>(2).unwrap(),
                r.get::<_, String>(3).unwrap(),
                r.get::<_, i64>(4).unwrap(),
                r.get::<_, String>(5).unwrap(),
                r.get::<_, Option<i64>>(6).unwrap()
            ],
        )
        .unwrap();
    }
    drop(rows);
    drop(stmt);
    // The agents' registrations, so that both logs hold the same events.
    let mut stmt = src
        .prepare("SELECT seq, at, kind, agent_id, payload FROM events WHERE agent_id IS NOT NULL ORDER BY seq")
        .unwrap();
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        conn.execute(
            "INSERT INTO events (seq, at, kind, agent_id, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                r.get::<_, i64>(0).unwrap(),
                r.get::<_, i64>(1).unwrap(),
                r.get::<_, String>(2).unwrap(),
                r.get::<_, i64>(3).unwrap(),
                r.get::<_, String>(4).unwrap()
            ],
        )
        .unwrap();
    }
    drop(rows);
    drop(stmt);
    store
}

fn append_rows(r: &AppendResult, name: &str, throughput_target: Option<f64>) -> Vec<Row> {
    let ours = rate(r.commands, r.ours);
    let raw = rate(r.commands, r.raw);
    let ratio = ours / raw;
    let mut rows = vec![Row {
        name: name.to_string(),
        ours: format!("{} cmd/s", fmt_rate(ours)),
        baseline: format!("{} cmd/s (raw INSERTs)", fmt_rate(raw)),
        ratio: format!("{:.0} % of raw", ratio * 100.0),
        target: ">= 50 % of raw".into(),
        met: Some(ratio >= 0.5),
    }];
    if let Some(t) = throughput_target {
        rows.push(Row {
            name: format!("{} throughput", name.split(',').next().unwrap_or(name)),
            ours: format!("{} cmd/s", fmt_rate(ours)),
            baseline: "-".into(),
            ratio: "-".into(),
            target: format!(">= {} cmd/s", fmt_rate(t)),
            met: Some(ours >= t),
        });
    }
    if let Some(sp) = r.raw_savepoints {
        let sp = rate(r.commands, sp);
        rows.push(Row {
            name: format!("{} (info: raw + a savepoint per command)", name.split(',').next().unwrap_or(name)),
            ours: format!("{} cmd/s", fmt_rate(ours)),
            baseline: format!("{} cmd/s (raw INSERTs + SAVEPOINT/RELEASE)", fmt_rate(sp)),
            ratio: format!("{:.0} % of raw + savepoints", ours / sp * 100.0),
            target: "-".into(),
            met: None,
        });
    }
    rows
}

// ---------------------------------------------------------------------------------------------------------
// 3: picking the next task from a deep queue

fn bench_next(dir: &Path, sizes: &Sizes) -> Vec<Row> {
    let path = dir.join("queue.db");
    let (mut engine, clock) = new_engine(&path);
    let me = register(&mut engine, registration("bench-worker", &["rust"], 4));
    let started = Instant::now();
    let mut rng = Rng(0x5EED_0003);
    let group = 5_000;
    let mut i = 0u64;
    while (i as usize) < sizes.queue {
        let n = group.min(sizes.queue - i as usize);
        let cmds: Vec<Command> = (0..n)
            .map(|_| {
                i += 1;
                Command::ObserveIssue(observation(i, &mut rng, QUEUE_MIX))
            })
            .collect();
        for r in engine.execute_batch(cmds) {
            expect_ok(r, "observe");
        }
        clock.advance(Duration::from_secs(1));
    }
    let depth: u64 = engine
        .store
        .connection()
        .query_row("SELECT COUNT(*) FROM tasks WHERE state = 'queued'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(depth as usize, sizes.queue);
    progress(format!("next_for: queued {depth} tasks in {}", fmt_dur(started.elapsed())));

    let view = engine.store.read();
    let agent = view.agent(me).unwrap().unwrap();
    let now = clock.now();
    let picked = view.next_for(&agent, 0, now, PREFER_WINDOW).unwrap();
    assert!(picked.is_some(), "the agent must find a task");

    // `picks` timed calls after 500 untimed ones; a slow variant stops at its time budget instead, so the
    // whole run stays within minutes (the row then says how many calls were timed).
    let budget = Duration::from_secs(if sizes.quick { 5 } else { 20 });
    let time_calls = |f: &mut dyn FnMut(usize)| -> Vec<Duration> {
        let warm = Instant::now();
        for k in 0..500 {
            f(k);
            if warm.elapsed() > budget / 10 {
                break;
            }
        }
        let started = Instant::now();
        let mut v = Vec::with_capacity(sizes.picks);
        for k in 0..sizes.picks {
            let t = Instant::now();
            f(k);
            v.push(t.elapsed());
            if started.elapsed() > budget {
                break;
            }
        }
        v.sort();
        v
    };
    let ours = time_calls(&mut |_| {
        black_box(view.next_for(black_box(&agent), 0, now, PREFER_WINDOW).unwrap());
    });
    let mut ids_rng = Rng(0x5EED_0033);
    let ids: Vec<i64> = (0..sizes.picks.max(500)).map(|_| (ids_rng.next() % sizes.queue as u64) as i64 + 1).collect();
    let conn = engine.store.connection();
    let base = time_calls(&mut |k| {
        let row: (String, String, String) = conn
            .prepare_cached("SELECT data, title, body FROM tasks WHERE id = ?1")
            .unwrap()
            .query_row([ids[k % ids.len()]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        black_box(row);
    });
    let (p50, p99, max) = (percentile(&ours, 50.0), percentile(&ours, 99.0), *ours.last().unwrap());
    let (b50, b99, bmax) = (percentile(&base, 50.0), percentile(&base, 99.0), *base.last().unwrap());
    progress(format!("next_for: p50 {} p99 {} max {}", fmt_dur(p50), fmt_dur(p99), fmt_dur(max)));
    progress(format!("next_for: SQLite's plan for its query: {}", query_plan(conn, NEXT_FOR_SQL)));

    // Diagnostic: the same walk with the partial queue index forced, to show what the plan costs.
    assert_eq!(next_for_indexed(conn, &agent, 0, now), picked, "the forced-index walk must pick the same task");
    let forced = time_calls(&mut |_| {
        black_box(next_for_indexed(conn, black_box(&agent), 0, now));
    });
    let (f50, f99, fmax) = (percentile(&forced, 50.0), percentile(&forced, 99.0), *forced.last().unwrap());
    progress(format!(
        "next_for with INDEXED BY tasks_queue: p50 {} p99 {} max {} (plan: {})",
        fmt_dur(f50),
        fmt_dur(f99),
        fmt_dur(fmax),
        query_plan(conn, &NEXT_FOR_SQL.replace("FROM tasks", "FROM tasks INDEXED BY tasks_queue"))
    ));
    let mut rows = vec![Row {
        name: format!(
            "3. next_for, {} queued, {} picks{}",
            fmt_rate(sizes.queue as f64),
            fmt_rate(ours.len() as f64),
            if ours.len() < sizes.picks {
                format!(" (time budget of {} s reached)", budget.as_secs())
            } else {
                String::new()
            }
        ),
        ours: format!("p50 {} / p99 {} / max {}", fmt_dur(p50), fmt_dur(p99), fmt_dur(max)),
        baseline: format!("PK lookup: p50 {} / p99 {} / max {}", fmt_dur(b50), fmt_dur(b99), fmt_dur(bmax)),
        ratio: format!("p99 {:.1}x", p99.as_secs_f64() / b99.as_secs_f64()),
        target: "p99 < 1 ms".into(),
        met: Some(p99 < Duration::from_millis(1)),
    }];
    rows.push(Row {
        name: "3. (info: the same walk with `INDEXED BY tasks_queue`)".into(),
        ours: format!("p50 {} / p99 {} / max {}", fmt_dur(f50), fmt_dur(f99), fmt_dur(fmax)),
        baseline: format!("PK lookup: p99 {}", fmt_dur(b99)),
        ratio: format!("p99 {:.1}x", f99.as_secs_f64() / b99.as_secs_f64()),
        target: "-".into(),
        met: None,
    });
    rows
}

/// The server's default `[agents] prefer_same_agent_secs`.
const PREFER_WINDOW: Duration = Duration::from_secs(120);

/// The query `ReadView::next_for` runs (src/store/queries.rs).
const NEXT_FOR_SQL: &str = "SELECT id, priority, queued_at, not_before, needs, pin,
                    json_extract(data, '$.last_session.agent'), json_extract(data, '$.last_session.requeued_at')
             FROM tasks
             WHERE state = 'queued' ORDER BY priority, queued_at, id";

fn query_plan(conn: &Connection, sql: &str) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let details: Vec<String> =
        stmt.query_map([], |r| r.get::<_, String>(3)).unwrap().collect::<rusqlite::Result<_>>().unwrap();
    details.join("; ")
}

/// `ReadView::next_for` with one change: the partial index `tasks_queue` named in the query. The candidates
/// are read exactly as the store reads them and picked by the core's own `pick_next`.
fn next_for_indexed(conn: &Connection, agent: &Agent, running: u32, now: Timestamp) -> Option<TaskId> {
    let sql = NEXT_FOR_SQL.replace("FROM tasks", "FROM tasks INDEXED BY tasks_queue");
    let mut stmt = conn.prepare_cached(&sql).unwrap();
    let mut rows = stmt.query([]).unwrap();
    let candidates = std::iter::from_fn(|| {
        let r = rows.next().unwrap()?;
        let needs: String = r.get(4).unwrap();
        let pin: Option<String> = r.get(5).unwrap();
        let spec = TaskSpec {
            priority: Priority::from_rank(r.get(1).unwrap()).unwrap_or_default(),
            kind: None,
            needs: needs.split('\n').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            agent: pin.and_then(|p| AgentName::parse(&p).ok()),
        };
        let key = QueueKey {
            priority: spec.priority,
            queued_at: Timestamp(r.get(2).unwrap()),
            task: TaskId(r.get(0).unwrap()),
        };
        Some(Candidate { key, spec, not_before: r.get::<_, Option<i64>>(3).unwrap().map(Timestamp), prefer: None })
    });
    pick_next(candidates, agent, running, now, |_| true)
}

// ---------------------------------------------------------------------------------------------------------
// Cached large logs (4 and 5)

const LIFECYCLE_AGENTS: usize = 64;

fn bench_data_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-data")
}

fn sidecars(p: &Path) -> [PathBuf; 2] {
    let name = p.file_name().unwrap().to_string_lossy().to_string();
    [p.with_file_name(format!("{name}-wal")), p.with_file_name(format!("{name}-shm"))]
}

/// A database whose log holds `tasks` whole task lives (observed, assigned, started, then 7 in 8 closed and
/// 1 in 8 handed in with a receipt and left validating) by 64 agents: 4 events per task plus 64
/// registrations. Built once through the engine with large groups and cached by schema version and size.
fn cached_lifecycle_db(tasks: usize) -> PathBuf {
    let dir = bench_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("lifecycle-schema{SCHEMA_VERSION}-gen{GENERATOR_VERSION}-tasks{tasks}.db"));
    let expected = (tasks * 4 + LIFECYCLE_AGENTS) as u64;
    // Written once the database is complete and in place; checked instead of opening the cache, which would
    // leave WAL files beside it.
    let complete = dir.join(format!("{}.complete", path.file_name().unwrap().to_string_lossy()));
    if path.exists() && complete.exists() {
        return path;
    }
    let _ = std::fs::remove_file(&path);
    // Databases of older schema versions or generators are of no further use: they are removed.
    let current = format!("lifecycle-schema{SCHEMA_VERSION}-gen{GENERATOR_VERSION}-");
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("lifecycle-") && !name.starts_with(&current) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let tmp = path.with_extension("building");
    for p in std::iter::once(tmp.clone()).chain(sidecars(&tmp)) {
        let _ = std::fs::remove_file(p);
    }
    progress(format!("building {} ({expected} events; once, then cached)", path.display()));
    let started = Instant::now();
    let (mut engine, clock) = new_engine(&tmp);
    let agents: Vec<AgentId> = (0..LIFECYCLE_AGENTS)
        .map(|k| register(&mut engine, registration(&format!("worker-{k:02}"), &["gpu", "rust"], 100_000)))
        .collect();
    let mut rng = Rng(0x5EED_0004);
    // Groups of 128 tasks: one transaction of 128 observations + 128 assignments, then one of 128 starts +
    // 128 receipts or closes (256 commands each, the group-commit size of the append benchmark).
    let group = 128;
    let mut next = 0u64;
    let mut done = 0usize;
    while done < tasks {
        let n = group.min(tasks - done);
        let mut first: Vec<Command> = Vec::with_capacity(2 * n);
        for _ in 0..n {
            next += 1;
            first.push(Command::ObserveIssue(observation(next, &mut rng, WRITE_MIX)));
        }
        for k in 0..n {
            first.push(Command::NextAssignment {
                agent: agents[(done + k) % agents.len()],
                request_key: Some(format!("req-{:08}", done + k)),
            });
        }
        let mut second: Vec<Command> = Vec::with_capacity(2 * n);
        let mut finish: Vec<Command> = Vec::with_capacity(n);
        for r in engine.execute_batch(first).into_iter().skip(n) {
            let Reply::Assignment(Some(a)) = expect_ok(r, "assign") else { panic!("an assignment found no task") };
            let (agent, task, attempt) = (a.lease.agent, a.task.id, a.lease.attempt);
            second.push(Command::StartTask { agent, task, attempt });
            finish.push(if task.0 % 8 == 0 {
                Command::SubmitReceipt { agent, task, attempt, receipt: receipt(task) }
            } else {
                Command::CancelTask { task, reason: "the issue was closed".into() }
            });
        }
        clock.advance(Duration::from_secs(60));
        second.extend(finish);
        for r in engine.execute_batch(second) {
            expect_ok(r, "start/finish");
        }
        clock.advance(Duration::from_secs(60));
        done += n;
        if done / 25_000 != (done - n) / 25_000 {
            progress(format!("  {done}/{tasks} tasks, {}", fmt_dur(started.elapsed())));
        }
    }
    assert_eq!(engine.store.read().event_count().unwrap(), expected);
    engine.store.connection().execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    drop(engine);
    for (from, to) in sidecars(&tmp).iter().zip(sidecars(&path)) {
        let _ = std::fs::remove_file(&to);
        if from.exists() {
            std::fs::rename(from, to).unwrap();
        }
    }
    std::fs::rename(&tmp, &path).unwrap();
    std::fs::write(&complete, format!("{expected} events\n")).unwrap();
    progress(format!("built in {}", fmt_dur(started.elapsed())));
    path
}

/// A private copy of a cached database, so a benchmark may change it.
fn copy_db(src: &Path, dst: &Path) {
    std::fs::copy(src, dst).unwrap();
    // The cache is checkpointed when built; a write-ahead log left beside it would hold committed pages.
    let (wal, dst_wal) = (&sidecars(src)[0], &sidecars(dst)[0]);
    if std::fs::metadata(wal).is_ok_and(|m| m.len() > 0) {
        std::fs::copy(wal, dst_wal).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------------------
// 4: rebuild from the log

fn bench_rebuild(dir: &Path, sizes: &Sizes) -> Vec<Row> {
    let src = cached_lifecycle_db(sizes.rebuild_tasks);
    let path = dir.join("rebuild.db");
    copy_db(&src, &path);
    let mut store = Store::open(&path).unwrap();
    let scan = |conn: &Connection| -> (u64, Duration) {
        let started = Instant::now();
        let mut stmt = conn.prepare("SELECT seq, payload FROM events").unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut n = 0u64;
        while let Some(row) = rows.next().unwrap() {
            let seq: i64 = row.get(0).unwrap();
            let payload = row.get_ref(1).unwrap().as_str().unwrap();
            let event: Event = serde_json::from_str(payload).unwrap();
            black_box((seq, event));
            n += 1;
        }
        (n, started.elapsed())
    };
    scan(store.connection()); // warms the page cache for both
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut events = 0;
    for round in 0..sizes.rounds {
        let (n, d) = scan(store.connection());
        base.push(d);
        let started = Instant::now();
        let report = store.rebuild().unwrap();
        let d2 = started.elapsed();
        ours.push(d2);
        assert_eq!(report.events, n);
        assert_eq!(report.tasks as usize, sizes.rebuild_tasks);
        events = n;
        progress(format!("rebuild round {round}: {n} events, rebuild {} scan+decode {}", fmt_dur(d2), fmt_dur(d)));
    }
    let ours = rate(events as usize, median(ours));
    let base = rate(events as usize, median(base));
    vec![Row {
        name: format!("4. rebuild, {} events", fmt_rate(events as f64)),
        ours: format!("{} events/s", fmt_rate(ours)),
        baseline: format!("{} events/s (scan + JSON decode)", fmt_rate(base)),
        ratio: format!("{:.0} % of scan", ours / base * 100.0),
        target: ">= 100,000 events/s".into(),
        met: Some(ours >= 100_000.0),
    }]
}

// ---------------------------------------------------------------------------------------------------------
// 5: start-up of `forgefleet serve`

/// Stops the child when dropped, whatever happened: SIGTERM, then SIGKILL after 5 s.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let pid = self.0.id().to_string();
        let termed = Process::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if termed {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The status code of `GET path`, or None if nothing answered yet.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Time from spawning `forgefleet serve` on `db` to the first 200 from `/healthz`.
fn time_serve(dir: &Path, db: &Path, label: &str) -> Result<Duration, String> {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = dir.join(format!("{label}.toml"));
    std::fs::write(&config, format!("[server]\nlisten = \"127.0.0.1:{port}\"\n\n[store]\npath = '{}'\n", db.display()))
        .map_err(|e| e.to_string())?;
    let log_path = dir.join(format!("{label}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let bin = env!("CARGO_BIN_EXE_forgefleet");
    let started = Instant::now();
    let child = Process::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let mut guard = ChildGuard(child);
    let log_tail = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    };
    loop {
        if let Some(200) = http_status(addr, "/healthz") {
            return Ok(started.elapsed());
        }
        if let Ok(Some(status)) = guard.0.try_wait() {
            return Err(format!("`forgefleet serve` exited ({status}) before /healthz answered 200:\n{}", log_tail()));
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("/healthz did not answer 200 within 60 s:\n{}", log_tail()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn bench_startup(dir: &Path, sizes: &Sizes) -> Vec<Row> {
    let src = cached_lifecycle_db(sizes.startup_tasks);
    let big = dir.join("startup-full.db");
    let started = Instant::now();
    copy_db(&src, &big);
    progress(format!("start-up: copied the cached database in {}", fmt_dur(started.elapsed())));
    let events = Store::open_read_only(&big).unwrap().read().event_count().unwrap();
    let empty = dir.join("startup-empty.db");
    drop(Store::open(&empty).unwrap());
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut failure = None;
    for run in 0..sizes.startup_runs {
        match time_serve(dir, &empty, &format!("empty-{run}"))
            .and_then(|b| Ok((b, time_serve(dir, &big, &format!("full-{run}"))?)))
        {
            Ok((b, o)) => {
                progress(format!("start-up run {run}: {events} events {}, empty {}", fmt_dur(o), fmt_dur(b)));
                base.push(b);
                ours.push(o);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let name = format!("5. start-up (`serve` to /healthz 200), {} events", fmt_rate(events as f64));
    if let Some(e) = failure {
        eprintln!("[bench] start-up benchmark not measured: {e}");
        return vec![Row {
            name,
            ours: "not measured (see stderr)".into(),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "< 1 s".into(),
            met: None,
        }];
    }
    let (o, b) = (median(ours), median(base));
    vec![Row {
        name,
        ours: format!("{} (median of {})", fmt_dur(o), sizes.startup_runs),
        baseline: format!("{} (empty database)", fmt_dur(b)),
        ratio: format!("{:.2}x", o.as_secs_f64() / b.as_secs_f64()),
        target: "< 1 s".into(),
        met: Some(o < Duration::from_secs(1)),
    }]
}

// ---------------------------------------------------------------------------------------------------------

fn main() {
    let sizes = Sizes::from_env();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    progress(format!(
        "load average at the start (1, 5, 15 min): {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    ));
    let started = Instant::now();
    let tmp = tempfile::Builder::new().prefix("forgefleet-bench-").tempdir().unwrap();
    let dir = tmp.path();
    let mut rows = Vec::new();
    if wanted("append") {
        let r = bench_append(dir, sizes.single_tasks, 1, sizes.rounds, false);
        rows.extend(append_rows(&r, "1. append, 1 command per transaction (`execute`)", None));
    }
    if wanted("batch") {
        let r = bench_append(dir, sizes.batch_tasks, BATCH, sizes.rounds, true);
        rows.extend(append_rows(&r, "2. append, 256 commands per transaction (`execute_batch`)", Some(20_000.0)));
    }
    if wanted("next") {
        rows.extend(bench_next(dir, &sizes));
    }
    if wanted("rebuild") {
        rows.extend(bench_rebuild(dir, &sizes));
    }
    if wanted("startup") {
        rows.extend(bench_startup(dir, &sizes));
    }
    print_table(&rows, &sizes, started.elapsed());
}
