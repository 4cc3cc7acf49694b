//! What the agent runner (`forgefleet agent`) adds to each task, against the git work no runner can avoid.
//!
//! Everything runs on 127.0.0.1: an in-process forgefleet (`Server::start` with the system clock, its Forgejo
//! workers, the router served by `axum::serve`), the fake Forgejo and the smart-HTTP git server of
//! `tests/support`, and the real `forgefleet agent` binary (`CARGO_BIN_EXE_forgefleet`, which cargo builds for
//! benches) with one slot and the `command` adapter. The repository has a realistic size (300 files, 40
//! commits), and `main` moves by one commit before every task, so each fetch brings something.
//!
//! - **ours**: issues are opened one at a time with `status:todo`; the webhook makes forgefleet queue each at
//!   once. Each task is timed from its `task_queued` event to its `task_completed` event (the engine's clock,
//!   the system clock in ms; read from `GET /api/v1/tasks/{id}` once it is done, so polling adds nothing). The
//!   runner's command writes one file and prints a summary, and stamps its start and end (`date +%s%N`), so
//!   the time can be split into phases with the events, the progress line's arrival and the pull request's
//!   creation time in the fake Forgejo. The server's receipt checks are then replayed and timed on a mirror of
//!   the bench's own, which tells the checks from the wait for the validator's poll.
//! - **baseline**, in the same run, alternating with ours: the same git work with the git CLI against the same
//!   git server (fetch the base branch into a bare cache, `git worktree add -B`, write the file, add, commit,
//!   push to a new branch), one `POST /pulls` to the fake Forgejo, and `git worktree remove`. The other git
//!   commands the runner runs are timed there too, outside the baseline's total.
//! - **the sandbox's cost**, in the same run: a second runner, the same but with `sandbox = "none"`, does the
//!   same task for every `main` commit (issues carry `needs:sandboxed` or `needs:unsandboxed`, the runners'
//!   capabilities); the rows compare the two. The command writes its stamps into its checkout (the sandbox lets
//!   it write nothing else), and the bench reads them from the pull request's commit.
//! - the runner's peak RSS (VmHWM) and CPU per task (utime+stime of the process; cutime+cstime for the git and
//!   agent processes it waited for), against the CPU of the baseline's git processes (`wait4` rusage).
//!
//! Run: `cargo bench --bench runner` (30 tasks, about 1.5 min) or `FORGEFLEET_BENCH_QUICK=1 cargo bench --bench
//! runner` (8). `FORGEFLEET_BENCH_TASKS=N` changes the count; `FORGEFLEET_BENCH_POLL_MS` the server's outbox and
//! receipt validation poll (default 1000, as `forgefleet serve` has it). `FORGEFLEET_BENCH_ONLY` runs nothing
//! unless it names `runner`. `docs/benchmarks-agents.md` has the numbers and what they mean.
//!
//! Every server is stopped when the bench ends, also on panic: the runner gets SIGTERM (then SIGKILL) from its
//! guard before forgefleet stops, and on Linux the kernel kills it if the bench dies (`PR_SET_PDEATHSIG`).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Row, env_number, median, percentile, print_rows, quick, wanted};
use forgefleet::config::{Config, Secret};
use forgefleet::core::{TaskId, Timestamp};
use forgefleet::engine::SystemClock;
use forgefleet::integrations::forgejo::ForgejoClient;
use forgefleet::integrations::forgejo::validate::Validator;
use forgefleet::server::Server;
use forgefleet::store::Store;
use serde_json::{Value, json};
use support::fleet::{OPERATOR, REGISTRATION_TOKEN};
use support::forgejo::FakeForgejo;
use support::git::{GitServer, fast_import};
use support::runner::{AGENT_TOKEN, BOT, BOT_TOKEN, REPO, WEBHOOK_SECRET};

/// Files in the repository and commits in its history.
const FILES: usize = 300;
const COMMITS: usize = 40;
/// Untimed tasks first; the first of them fills the empty caches (reported on its own).
const WARMUP: usize = 2;

struct Settings {
    quick: bool,
    tasks: usize,
    poll: Duration,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = quick();
        Settings {
            quick,
            tasks: env_number("FORGEFLEET_BENCH_TASKS").map_or(if quick { 8 } else { 30 }, |n| n.max(1) as usize),
            poll: Duration::from_millis(env_number("FORGEFLEET_BENCH_POLL_MS").unwrap_or(1000).max(1)),
        }
    }
}

fn main() {
    let s = Settings::from_env();
    if !wanted("runner") {
        println!("runner benchmark: not in FORGEFLEET_BENCH_ONLY; nothing to do");
        return;
    }
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // The future runs on the main thread: the runner is spawned from it (`die_with_parent`), and the baseline's
    // blocking git commands block only it, never the runtime's workers that serve forgefleet and the fakes.
    let report = runtime.block_on(bench(&s));
    runtime.shutdown_timeout(Duration::from_secs(5));
    println!();
    println!(
        "forgefleet runner benchmark ({} mode, {} timed tasks, {} cores, validation/outbox poll {} ms, {:.0} s)",
        if s.quick { "QUICK" } else { "full" },
        s.tasks,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        s.poll.as_millis(),
        started.elapsed().as_secs_f64()
    );
    println!();
    print_rows(&report.rows);
    for table in &report.tables {
        println!("{table}");
    }
    for n in &report.notes {
        println!("- {n}");
    }
    println!();
}

struct Report {
    rows: Vec<Row>,
    tables: Vec<String>,
    notes: Vec<String>,
}

// ---------------------------------------------------------------------------------------------------------
// The world

/// forgefleet in this process; its HTTP server and Forgejo workers stop when this is dropped.
struct Fleet {
    base: String,
    db: PathBuf,
    http: reqwest::Client,
    engine: forgefleet::engine::EngineHandle,
    serve: tokio::task::JoinHandle<()>,
    workers: Option<forgefleet::integrations::forgejo::Workers>,
}

impl Fleet {
    async fn start(dir: &Path, forgejo: &str, git_url: &str, poll: Duration) -> Fleet {
        let mut config = Config::default();
        config.store.path = dir.join("forgefleet.db");
        config.api.operator_token = Some(Secret::new(OPERATOR));
        config.agents.registration_token = Some(Secret::new(REGISTRATION_TOKEN));
        config.forgejo.url = Some(forgejo.into());
        config.forgejo.git_url = Some(git_url.into());
        config.forgejo.token = Some(Secret::new(BOT_TOKEN));
        config.forgejo.bot_user = Some(BOT.into());
        config.forgejo.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
        config.forgejo.repos = vec![REPO.into()];
        let db = config.store.path.clone();
        let store = Store::open(&db).unwrap();
        let server = Server::start(config, store, SystemClock).unwrap();
        let workers = server.start_integrations(poll).unwrap();
        let engine = server.engine().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = server.router();
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
            drop(server);
        });
        Fleet { base, db, http: reqwest::Client::new(), engine, serve, workers }
    }

    async fn get(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}/api/v1{path}", self.base)).bearer_auth(OPERATOR).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    fn outbox_waiting(&self) -> u64 {
        Store::open_read_only(&self.db).unwrap().read().outbox_health().unwrap().waiting
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

/// The `forgefleet agent` process: SIGTERM when dropped (it stops its agents and deregisters), SIGKILL if it
/// has not exited 10 s later.
struct RunnerProcess {
    child: Child,
    log: PathBuf,
}

impl RunnerProcess {
    /// Must be called on the main thread (see `die_with_parent`).
    fn start(config: &Path, log: &Path) -> RunnerProcess {
        let mut cmd = Process::new(support::binary());
        cmd.args(["agent", "--config"])
            .arg(config)
            .env("FORGEFLEET_LOG", "info")
            .env_remove("FORGEFLEET_AGENT_REGISTRATION_TOKEN")
            .env("FORGEFLEET_AGENT_FORGEJO_TOKEN", AGENT_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("starting forgefleet agent");
        RunnerProcess { child, log: log.to_path_buf() }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it ends (the main thread), so an
/// interrupted bench leaves no runner behind.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Process) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only prctl(2) runs: async-signal-safe, no allocation, no locks.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Process) {}

// ---------------------------------------------------------------------------------------------------------
// The repository

/// The first commit adds `FILES` source files in 15 directories; each later one rewrites 8 of them.
fn history() -> Vec<u8> {
    let mut stream = Vec::new();
    for c in 0..COMMITS {
        let when = 1_600_000_000 + c as u64 * 3600;
        let message = if c == 0 { "initial import\n".to_string() } else { format!("change {c}\n") };
        write!(
            stream,
            "commit refs/heads/main\nmark :{}\nauthor Dev <dev@example.test> {when} +0000\n\
             committer Dev <dev@example.test> {when} +0000\ndata {}\n{message}",
            c + 1,
            message.len()
        )
        .unwrap();
        if c > 0 {
            writeln!(stream, "from :{c}").unwrap();
        }
        let files: Vec<usize> =
            if c == 0 { (0..FILES).collect() } else { (0..8).map(|k| (c * 37 + k * 41) % FILES).collect() };
        for f in files {
            let content = source_file(f, c);
            writeln!(stream, "M 100644 inline {}\ndata {}\n{content}", file_path(f), content.len()).unwrap();
        }
    }
    stream
}

fn file_path(f: usize) -> String {
    format!("src/module{}/file{f}.rs", f % 15)
}

/// About 1.5 KB of plausible Rust.
fn source_file(f: usize, revision: usize) -> String {
    let mut s = format!("//! Module {f}, revision {revision}.\n\nuse std::collections::HashMap;\n\n");
    for i in 0..12 {
        s.push_str(&format!(
            "/// Computes value {i} of file {f}.\npub fn value_{i}(input: &HashMap<String, u64>) -> u64 {{\n    \
             input.get(\"k{i}\").copied().unwrap_or({}) * {}\n}}\n\n",
            revision + i,
            f + 1
        ));
    }
    s
}

/// One more commit on `main` that rewrites three files, as merged work would.
fn advance_main(bare: &Path, n: usize) {
    let when = 1_700_000_000 + n as u64 * 60;
    let message = format!("merged change {n}\n");
    let mut stream = format!(
        "commit refs/heads/main\nauthor Dev <dev@example.test> {when} +0000\n\
         committer Dev <dev@example.test> {when} +0000\ndata {}\n{message}from refs/heads/main^0\n",
        message.len()
    );
    for k in 0..3 {
        let f = (n * 7 + k * 101) % FILES;
        let content = source_file(f, 1000 + n);
        stream.push_str(&format!("M 100644 inline {}\ndata {}\n{content}\n", file_path(f), content.len()));
    }
    fast_import(bare, stream.as_bytes());
}

// ---------------------------------------------------------------------------------------------------------
// The benchmark

/// The runner's command: stamps its start, writes one file, prints a summary, stamps its end. The stamps go
/// into the checkout (the sandbox shows the agent nothing else it could write), so they reach the pull
/// request's commit, where the bench reads them.
fn agent_script() -> String {
    "date +%s%N > .stamp-start; echo \"working on #$FORGEFLEET_ISSUE\"; \
     printf 'note for issue %s\\n' \"$FORGEFLEET_ISSUE\" > note-$FORGEFLEET_ISSUE.txt; \
     echo 'Added a note.'; date +%s%N > .stamp-end"
        .to_string()
}

/// The two runners' capabilities: each issue carries the `needs:` label of the runner that is to take it.
const SANDBOXED: &str = "sandboxed";
const UNSANDBOXED: &str = "unsandboxed";

/// The `[agent]` file of a bench runner.
fn runner_config(
    name: &str,
    server: &str,
    forgejo: &str,
    git: &str,
    work_dir: &Path,
    capability: &str,
    sandbox: &str,
) -> String {
    format!(
        "[agent]\nname = {name:?}\nadapter = \"command\"\nserver = {server:?}\nregistration_token = {:?}\n\
         forgejo_url = {forgejo:?}\ngit_url = {git:?}\nwork_dir = {work_dir:?}\nwait_secs = 1\nmax_concurrency = 1\ncapabilities = [{capability:?}]\n\
         sandbox = {sandbox:?}\n\n[command]\nrun = [\"sh\", \"-c\", {:?}]\n",
        REGISTRATION_TOKEN,
        agent_script()
    )
}

/// The phases of one runner task, in order; they add up to the whole.
const PHASES: [&str; 8] = [
    "queued -> assigned (the waiting long-poll gets it)",
    "assigned -> started (`POST /tasks/{id}/start`)",
    "started -> command runs (fetch, `worktree add`, spawn)",
    "the command itself (sh, 2x `date`, one file)",
    "command ended -> progress received (EOF, reap, `POST /progress`)",
    "progress -> pull request opened (status, add, commit, rev-list, push, `POST /pulls`)",
    "pull request opened -> receipt received (`POST /receipts`)",
    "receipt received -> completed (server: validation poll wait + checks)",
];

const STEPS: [&str; 6] =
    ["fetch", "worktree add -B", "write file, add, commit", "push", "`POST /pulls`", "worktree remove"];

struct RunnerSample {
    total: Duration,
    to_receipt: Duration,
    phases: [Duration; 8],
    /// The server's receipt checks of this task, run again by the bench (see `replay_checks`).
    checks: Duration,
}

struct BaselineSample {
    total: Duration,
    before_remove: Duration,
    steps: [Duration; 6],
    cpu: Duration,
    /// The git commands the runner runs beyond these (not part of `total`).
    extras: Duration,
}

async fn bench(s: &Settings) -> Report {
    let root = tempfile::tempdir().unwrap();
    let git_root = root.path().join("git");
    let git = GitServer::start_with_token(&git_root, BOT_TOKEN);
    git.allow_token(AGENT_TOKEN);
    let bare = git_root.join(format!("{REPO}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    support::git::git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    fast_import(&bare, &history());
    support::git::git(&bare, &["repack", "-adq"]);

    let forgejo = support::runner::forge(&bare).await;

    let fleet_dir = root.path().join("fleet");
    std::fs::create_dir_all(&fleet_dir).unwrap();
    let fleet = Fleet::start(&fleet_dir, forgejo.url(), &git.base_url(), s.poll).await;
    let hook = format!("{}/api/v1/webhooks/forgejo", fleet.base);
    forgejo.add_hook(REPO, &hook, WEBHOOK_SECRET, &["issues", "issue_comment", "pull_request"]).await;
    // The reconciler's first pass creates the labels; wait for it so it does not overlap the first task.
    wait_until("forgefleet created its labels", Duration::from_secs(30), || async {
        forgejo.labels(REPO).await.iter().any(|l| l.name == "status:done")
    })
    .await;

    let agent_dir = root.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let work_dir = agent_dir.join("work");
    let config = agent_dir.join("agent.toml");
    std::fs::write(
        &config,
        runner_config("bench-runner", &fleet.base, forgejo.url(), &git.base_url(), &work_dir, SANDBOXED, "bubblewrap"),
    )
    .unwrap();
    let runner = RunnerProcess::start(&config, &agent_dir.join("agent.log"));
    let pid = runner.pid();
    // The same runner with `sandbox = "none"`, for the sandbox's cost.
    let plain_dir = root.path().join("agent-plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let plain_work = plain_dir.join("work");
    let plain_config = plain_dir.join("agent.toml");
    std::fs::write(
        &plain_config,
        runner_config("bench-plain", &fleet.base, forgejo.url(), &git.base_url(), &plain_work, UNSANDBOXED, "none"),
    )
    .unwrap();
    let plain = RunnerProcess::start(&plain_config, &plain_dir.join("agent.log"));
    progress(format!(
        "forgefleet at {}, runner pid {pid} (and {} unsandboxed), {} timed tasks",
        fleet.base,
        plain.pid(),
        s.tasks
    ));

    let baseline = Baseline::new(root.path().join("baseline"), git.url_of(REPO), forgejo.url());
    // The server's receipt checks, replayed on a mirror of the bench's own that follows the same fetches.
    let replay = Validator {
        client: ForgejoClient::new(forgejo.url(), Secret::new(BOT_TOKEN), None).unwrap(),
        engine: fleet.engine.clone(),
        reads: forgefleet::store::ReadPool::new(fleet.db.clone()),
        mirrors: root.path().join("replay-mirrors"),
        git_url: git.base_url(),
        token: BOT_TOKEN.into(),
        ca: None,
        branch_prefix: "forgefleet/".into(),
        base_branch: "main".into(),
        agent_users: Default::default(),
    };
    let ours_side = RunnerSide {
        fleet: &fleet,
        forgejo: &forgejo,
        runner: &runner,
        replay: &replay,
        bare: &bare,
        needs: SANDBOXED,
        work_dir: &work_dir,
        poll: s.poll,
    };
    let plain_side = RunnerSide { runner: &plain, needs: UNSANDBOXED, work_dir: &plain_work, ..ours_side };
    let mut unsandboxed = Vec::new();
    let tick = clock_ticks();
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut first = None;
    let mut cpu_before = (Duration::ZERO, Duration::ZERO);
    for i in 0..WARMUP + s.tasks {
        if i == WARMUP {
            cpu_before = cpu_times(pid, tick);
        }
        advance_main(&bare, i);
        // Alternate who goes first after `main` moved.
        let (r, b, u) = if i % 2 == 0 {
            let r = ours_side.task(i).await;
            let u = plain_side.task(i).await;
            (r, baseline.task(i).await, u)
        } else {
            let b = baseline.task(i).await;
            let u = plain_side.task(i).await;
            (ours_side.task(i).await, b, u)
        };
        progress(format!(
            "task {i}: runner {} (to receipt {}, prepare {}), baseline {} (fetch {}, worktree add {})",
            ms(r.total),
            ms(r.to_receipt),
            ms(r.phases[2]),
            ms(b.total),
            ms(b.steps[0]),
            ms(b.steps[1])
        ));
        if i == 0 {
            first = Some((r.total, r.to_receipt, b.total));
        }
        if i >= WARMUP {
            ours.push(r);
            base.push(b);
            unsandboxed.push(u);
        }
    }
    let cpu_after = cpu_times(pid, tick);
    let hwm = status_kb(pid, "VmHWM");
    let rss = status_kb(pid, "VmRSS");
    let threads = status_kb(pid, "Threads");
    let n = ours.len() as u32;
    let own_cpu = (cpu_after.0 - cpu_before.0) / n;
    let child_cpu = (cpu_after.1 - cpu_before.1) / n;

    let mut rows = Vec::new();
    let totals: Vec<Duration> = ours.iter().map(|r| r.total).collect();
    let receipts: Vec<Duration> = ours.iter().map(|r| r.to_receipt).collect();
    let base_totals: Vec<Duration> = base.iter().map(|b| b.total).collect();
    let base_no_remove: Vec<Duration> = base.iter().map(|b| b.before_remove).collect();
    for (name, v, b) in [
        (
            "per task: queued -> completed (runner + server validation) vs the git CLI work + `POST /pulls`",
            &totals,
            &base_totals,
        ),
        (
            "per task: queued -> receipt received (the runner's part) vs the same git work without `worktree remove`",
            &receipts,
            &base_no_remove,
        ),
    ] {
        let (x, y) = (median(v.clone()), median(b.clone()));
        rows.push(Row::new(&format!("{name}, median"), ms(x), ms(y), ratio(x, y), "-", None));
        let (x, y) = (percentile(&sorted(v), 90.0), percentile(&sorted(b), 90.0));
        rows.push(Row::new(&format!("{name}, p90"), ms(x), ms(y), ratio(x, y), "-", None));
    }
    let with_extras: Vec<Duration> = base.iter().map(|b| b.before_remove + b.extras).collect();
    let (x, y) = (median(receipts.clone()), median(with_extras));
    rows.push(Row::new(
        "per task: queued -> receipt received vs the baseline plus the runner's other git commands, median",
        ms(x),
        ms(y),
        ratio(x, y),
        "-",
        None,
    ));
    if let Some((total, to_receipt, b)) = first {
        rows.push(Row::new(
            "first task, empty caches (full fetch): queued -> completed / -> receipt, vs baseline",
            format!("{} / {}", ms(total), ms(to_receipt)),
            ms(b),
            format!("{} / {}", ratio(total, b), ratio(to_receipt, b)),
            "-",
            None,
        ));
    }
    // The sandbox's cost: the same runner and task with `sandbox = "none"`, alternating in the same run.
    let plain_totals: Vec<Duration> = unsandboxed.iter().map(|r| r.total).collect();
    let plain_receipts: Vec<Duration> = unsandboxed.iter().map(|r| r.to_receipt).collect();
    let agent_part =
        |v: &[RunnerSample]| -> Vec<Duration> { v.iter().map(|r| r.phases[2] + r.phases[3] + r.phases[4]).collect() };
    let spawn_part = |v: &[RunnerSample]| -> Vec<Duration> { v.iter().map(|r| r.phases[2]).collect() };
    for (name, x, y) in [
        (
            "sandbox cost per task: queued -> completed, bubblewrap vs sandbox = \"none\", median",
            &totals,
            &plain_totals,
        ),
        ("sandbox cost per task: queued -> receipt received, bubblewrap vs none, median", &receipts, &plain_receipts),
        (
            "sandbox cost per task: started -> progress received (prepare, spawn, the command, its end), bubblewrap vs none, median",
            &agent_part(&ours),
            &agent_part(&unsandboxed),
        ),
        (
            "sandbox cost per task: started -> command runs (fetch, worktree add, home, bwrap spawn), bubblewrap vs none, median",
            &spawn_part(&ours),
            &spawn_part(&unsandboxed),
        ),
    ] {
        let (x, y) = (median(x.clone()), median(y.clone()));
        rows.push(Row::new(name, ms(x), ms(y), ratio(x, y), "-", None));
    }
    let base_cpu = base.iter().map(|b| b.cpu).sum::<Duration>() / n;
    rows.push(Row::new(
        "CPU per task: the runner's git and agent processes (cutime+cstime) vs the baseline's git processes (wait4)",
        ms(child_cpu),
        ms(base_cpu),
        ratio(child_cpu, base_cpu),
        "-",
        None,
    ));
    rows.push(Row::new(
        "CPU per task: the runner process itself (utime+stime, idle long-polls included)",
        ms(own_cpu),
        "- (no process)".into(),
        "n/a".into(),
        "-",
        None,
    ));
    rows.push(Row::new(
        "runner peak RSS (VmHWM) / RSS at the end",
        format!("{} / {}", mb(hwm), mb(rss)),
        "- (no process)".into(),
        "n/a".into(),
        "-",
        None,
    ));

    let mut phases = String::from("| phase of a runner task | median | p90 | mean |\n|---|---|---|---|\n");
    for (k, name) in PHASES.iter().enumerate() {
        phases.push_str(&stat_line(name, ours.iter().map(|r| r.phases[k]).collect()));
    }
    phases.push_str(&stat_line(
        "- of the last phase: the receipt checks, replayed by the bench (Forgejo API, gix fetch, inspect)",
        ours.iter().map(|r| r.checks).collect(),
    ));
    phases.push_str(&stat_line(
        "- of the last phase: the rest, i.e. waiting for the validator's poll (last phase minus the replay)",
        ours.iter().map(|r| r.phases[7].saturating_sub(r.checks)).collect(),
    ));
    phases.push_str(&stat_line("**queued -> completed**", totals.clone()));
    let mut steps = String::from("| step of a baseline task | median | p90 | mean |\n|---|---|---|---|\n");
    for (k, name) in STEPS.iter().enumerate() {
        steps.push_str(&stat_line(name, base.iter().map(|b| b.steps[k]).collect()));
    }
    steps.push_str(&stat_line("**total**", base_totals.clone()));
    steps.push_str(&stat_line(
        "(not in the total) the runner's other git commands: `worktree prune`, 2x `rev-parse HEAD`, `status`, \
         `rev-list --count`",
        base.iter().map(|b| b.extras).collect(),
    ));
    let client_builds: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let client = ForgejoClient::new(forgejo.url(), Secret::new(AGENT_TOKEN), None).unwrap();
            let took = t.elapsed();
            drop(client);
            took
        })
        .collect();
    steps.push_str(&stat_line(
        "(not in the total) building a `ForgejoClient` (reqwest + rustls roots), as the runner does per pull request",
        client_builds,
    ));

    let mut notes = vec![
        format!(
            "runner pid {pid}: {threads} threads at the end; `wait_secs = 1`, heartbeat every 10 s (the server's default)"
        ),
        format!(
            "{FILES} files, {COMMITS} commits; `main` moved by one commit (3 files) before every task; {} untimed warm-up tasks",
            WARMUP
        ),
        "times from the engine's events (ms), the command's `date +%s%N` stamps, the progress line's arrival and the \
         fake Forgejo's pull request creation time; all the same system clock"
            .into(),
    ];
    let log = std::fs::read_to_string(&runner.log).unwrap_or_default();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    notes.push(format!(
        "the runner logged {} warnings or errors{}",
        warnings.len(),
        warnings.first().map(|w| format!("; the first: {w}")).unwrap_or_default()
    ));
    drop(runner);
    drop(plain);
    drop(fleet);
    drop(forgejo);
    drop(git);
    Report { rows, tables: vec![phases, steps], notes }
}

/// One issue through the runner: opened with `status:todo`, queued by the webhook, done by the runner,
/// checked by the server. Returns when the runner has removed its worktree and the outbox is empty.
/// What a runner task needs to be opened, followed and taken apart.
struct RunnerSide<'a> {
    fleet: &'a Fleet,
    forgejo: &'a FakeForgejo,
    runner: &'a RunnerProcess,
    replay: &'a Validator,
    /// The repository, where the command's `.stamp-start` and `.stamp-end` arrive in the pull request's commit.
    bare: &'a Path,
    /// The capability of the runner that is to take the task (its issue gets `needs:<this>`).
    needs: &'static str,
    work_dir: &'a Path,
    poll: Duration,
}

impl Clone for RunnerSide<'_> {
    fn clone(&self) -> Self {
        *self
    }
}

impl Copy for RunnerSide<'_> {}

impl RunnerSide<'_> {
    async fn task(&self, i: usize) -> RunnerSample {
        let RunnerSide { fleet, forgejo, runner, replay, bare, needs, work_dir, poll } = *self;
        // The server's validator and outbox deliverer sleep `poll` between passes, and the bench starts a task when
        // the outbox is empty: without a random pause, the validator's phase at the receipt would be much the same
        // every time instead of uniformly random as for issues that come at any time.
        tokio::time::sleep(poll.mul_f64(rand::random::<f64>())).await;
        let title = format!("Add note {i}");
        let label = format!("needs:{needs}");
        let issue =
            forgejo.create_issue(REPO, "alice", &title, "Please add a note file.", &["status:todo", &label]).await;
        let name = format!("{REPO}#{issue}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            let list = fleet.get("/tasks?limit=20").await;
            let found = list["tasks"].as_array().into_iter().flatten().find(|t| t["issue"] == name.as_str());
            if let Some(id) = found.and_then(|t| t["id"].as_u64()) {
                break id;
            }
            assert!(Instant::now() < deadline, "forgefleet did not queue {name} within 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let detail = loop {
            let detail = fleet.get(&format!("/tasks/{id}")).await;
            let state = detail["task"]["state"].as_str().unwrap_or_default();
            if matches!(state, "failed" | "cancelled") || detail["task"]["attempt"].as_u64() > Some(1) {
                panic!("task {id} did not go through: {}\n{}", detail["task"], runner.log_tail());
            }
            if state == "completed" {
                break detail;
            }
            assert!(Instant::now() < deadline, "task {id} not completed within 60 s:\n{}", runner.log_tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let at = |kind: &str| -> f64 {
            let e = detail["events"].as_array().unwrap().iter().find(|e| e["type"] == kind);
            let e = e.unwrap_or_else(|| panic!("no {kind} event: {}", detail["events"]));
            serde_json::from_value::<Timestamp>(e["at"].clone()).unwrap().0 as f64
        };
        let (queued, assigned, started, receipt, completed) =
            (at("task_queued"), at("task_assigned"), at("task_started"), at("receipt_received"), at("task_completed"));
        let progress = detail["progress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| serde_json::from_value::<Timestamp>(p["at"].clone()).ok())
            .map(|t| t.0 as f64)
            .fold(f64::NAN, f64::max);
        let head = detail["task"]["receipt"]["head_sha"].as_str().unwrap().to_string();
        let mark = |end: &str| -> f64 {
            let text = support::git::git(bare, &["show", &format!("{head}:.stamp-{end}")]);
            text.trim().parse::<f64>().unwrap() / 1e6
        };
        let (command_start, command_end) = (mark("start"), mark("end"));
        let pr = detail["task"]["receipt"]["pr_number"].as_u64().unwrap();
        let opened = forgejo.issue(REPO, pr).await.created_at.timestamp_millis() as f64;
        let progress = if progress.is_nan() { command_end } else { progress };
        let points = [queued, assigned, started, command_start, command_end, progress, opened, receipt, completed];
        let mut phases = [Duration::ZERO; 8];
        for k in 0..8 {
            phases[k] = Duration::from_secs_f64((points[k + 1] - points[k]).max(0.0) / 1e3);
        }
        // Settle before the next task: the runner has removed its worktree, forgefleet has told Forgejo everything
        // (labels, comment, commit status) and Forgejo's webhooks about that have been delivered.
        wait_until("the runner removed its worktree and the outbox is empty", Duration::from_secs(30), || async {
            let worktrees = std::fs::read_dir(work_dir.join("worktrees")).map(|d| d.count()).unwrap_or(0);
            worktrees == 0 && fleet.outbox_waiting() == 0
        })
        .await;
        forgejo.settle().await;
        let checks = replay_checks(fleet, replay, id).await;
        RunnerSample {
            total: Duration::from_secs_f64((completed - queued) / 1e3),
            to_receipt: Duration::from_secs_f64((receipt - queued) / 1e3),
            phases,
            checks,
        }
    }
}

/// Times `Validator::validate` (the pull request from the Forgejo API, a gix fetch of the base branch and
/// `refs/pull/N/head` into a mirror, the inspection) on the completed task: what the server's validation costs
/// once its poll has picked the receipt up. The bench's mirror has seen the same fetches as the server's.
async fn replay_checks(fleet: &Fleet, replay: &Validator, id: u64) -> Duration {
    let task = Store::open_read_only(&fleet.db).unwrap().read().task(TaskId(id as i64)).unwrap().unwrap();
    let t = Instant::now();
    let validation = replay.validate(&task).await.unwrap();
    let took = t.elapsed();
    assert!(validation.checks.iter().all(|c| c.passed), "replayed checks of task {id}: {:?}", validation.checks);
    took
}

/// The git work of a task done directly with the git CLI, the way the runner runs git (same environment, the
/// token in an `http.extraHeader` through `GIT_CONFIG_*`), plus the forge round trip.
struct Baseline {
    dir: PathBuf,
    cache: PathBuf,
    url: String,
    pulls: String,
    auth: String,
    http: reqwest::Client,
}

impl Baseline {
    fn new(dir: PathBuf, url: String, forgejo: &str) -> Baseline {
        let cache = dir.join("cache.git");
        std::fs::create_dir_all(&cache).unwrap();
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{AGENT_TOKEN}", forgefleet::integrations::git::BASIC_AUTH_USER));
        let b = Baseline {
            dir,
            cache: cache.clone(),
            url,
            pulls: format!("{forgejo}/api/v1/repos/{REPO}/pulls"),
            auth: format!("Authorization: Basic {credentials}"),
            http: reqwest::Client::new(),
        };
        b.git(&cache, &["init", "-q", "--bare"], false);
        b
    }

    async fn task(&self, i: usize) -> BaselineSample {
        let branch = format!("baseline/task-{i}");
        let wt = self.dir.join(format!("wt-{i}"));
        let wt_arg = wt.to_string_lossy().to_string();
        let mut steps = [Duration::ZERO; 6];
        let mut cpu = Duration::ZERO;
        let mut run = |dir: &Path, args: &[&str], remote: bool| {
            let (wall, used) = self.git(dir, args, remote);
            cpu += used;
            wall
        };
        let t = Instant::now();
        steps[0] = run(
            &self.cache,
            &["fetch", "-q", "--no-tags", &self.url, "+refs/heads/main:refs/remotes/origin/main"],
            true,
        );
        steps[1] =
            run(&self.cache, &["worktree", "add", "-q", "-B", &branch, &wt_arg, "refs/remotes/origin/main"], false);
        let t2 = Instant::now();
        std::fs::write(wt.join(format!("baseline-note-{i}.txt")), format!("note for task {i}\n")).unwrap();
        run(&wt, &["add", "-A"], false);
        run(&wt, &["commit", "-q", "--no-verify", "-m", &format!("Add baseline note {i}")], false);
        steps[2] = t2.elapsed();
        steps[3] = run(&wt, &["push", "-q", &self.url, &format!("+HEAD:refs/heads/{branch}")], true);
        let t4 = Instant::now();
        let r = self
            .http
            .post(&self.pulls)
            .header("Authorization", format!("token {AGENT_TOKEN}"))
            .json(&json!({
                "head": branch,
                "base": "main",
                "title": format!("Add baseline note {i}"),
                "body": format!("Baseline task {i}."),
            }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let _ = r.bytes().await;
        assert_eq!(status, 201, "baseline POST /pulls");
        steps[4] = t4.elapsed();
        let before_remove = t.elapsed();
        // Not part of the baseline: what the runner runs besides (`Workspace::prepare`, `commit_rest`), timed
        // here on an equal worktree so the runner's extra time can be told apart from its own bookkeeping.
        let mut extras = Duration::ZERO;
        for (dir, args) in [
            (&self.cache, &["worktree", "prune"][..]),
            (&wt, &["rev-parse", "HEAD"]),
            (&wt, &["status", "--porcelain", "--untracked-files=all"]),
            (&wt, &["rev-list", "--count", "refs/remotes/origin/main..HEAD"]),
            (&wt, &["rev-parse", "HEAD"]),
        ] {
            extras += self.git(dir, args, false).0;
        }
        steps[5] = run(&self.cache, &["worktree", "remove", "--force", "--force", &wt_arg], false);
        BaselineSample { total: before_remove + steps[5], before_remove, steps, cpu, extras }
    }

    /// Runs git as the runner does; returns its wall time and the CPU time of it and the processes it waited
    /// for (`wait4`'s rusage).
    fn git(&self, dir: &Path, args: &[&str], remote: bool) -> (Duration, Duration) {
        let mut cmd = Process::new("git");
        cmd.arg("-C").arg(dir).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_AUTHOR_NAME", "baseline")
            .env("GIT_AUTHOR_EMAIL", "baseline@example.test")
            .env("GIT_COMMITTER_NAME", "baseline")
            .env("GIT_COMMITTER_EMAIL", "baseline@example.test");
        if remote {
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", &self.auth);
        }
        let t = Instant::now();
        // Reaped below with wait4(2), which std's `wait` cannot replace: it also hands back the rusage.
        #[allow(clippy::zombie_processes)]
        let mut child = cmd.spawn().expect("git is installed");
        let mut errors = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut errors);
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value; wait4 reaps our own child and fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
        let wall = t.elapsed();
        assert!(
            reaped > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "git {args:?} failed: {errors}"
        );
        let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
        (wall, tv(usage.ru_utime) + tv(usage.ru_stime))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// (utime+stime, cutime+cstime) of a process, from `/proc/<pid>/stat`.
fn cpu_times(pid: u32, tick: f64) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses, maybe with spaces) come fields 3...; utime, stime, cutime and
    // cstime are fields 14 to 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    let get = |k: usize| f.get(k).copied().unwrap_or(0);
    let secs = |ticks: u64| Duration::from_secs_f64(ticks as f64 / tick);
    (secs(get(11) + get(12)), secs(get(13) + get(14)))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM), or a plain count (Threads).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `| name | median | p90 | mean |`
fn stat_line(name: &str, v: Vec<Duration>) -> String {
    let s = sorted(&v);
    format!("| {name} | {} | {} | {} |\n", ms(median(v.clone())), ms(percentile(&s, 90.0)), ms(mean(&v)))
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / v.len().max(1) as u32
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 { format!("{:.0} µs", ms * 1e3) } else { format!("{ms:.1} ms") }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn ratio(ours: Duration, base: Duration) -> String {
    if base > Duration::ZERO { format!("{:.2}x", ours.as_secs_f64() / base.as_secs_f64()) } else { "n/a".into() }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}
