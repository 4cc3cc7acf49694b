//! Shared by the scenario tests: the built binary, a temporary home for it, and a server that is always
//! stopped when the test ends.
#![allow(dead_code)]

pub mod clis;
pub mod fleet;
pub mod forgejo;
pub mod git;
pub mod model;
pub mod runner;
pub mod synapse;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const OPERATOR_TOKEN: &str = "operator-test-token";

/// Polls `check` every 25 ms until it holds; panics naming `what` after 30 s (a bound for a stuck test, far
/// above what a passing one takes on a busy machine).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The `forgefleet` binary cargo built for these tests: every scenario shares it.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_forgefleet")
}

/// Runs `forgefleet store rebuild` on the store at `db` (with the server stopped), and says it succeeded.
pub fn rebuild_store(db: &Path) -> Output {
    let config = db.with_extension("rebuild.toml");
    std::fs::write(&config, format!("[store]\npath = {db:?}\n")).unwrap();
    let out = Command::new(binary())
        .args(["store", "rebuild", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    out
}

/// A directory with a config file pointing the store into it.
pub struct Home {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl Home {
    pub fn new() -> Home {
        Self::with_config("")
    }

    /// A home whose config has `[server]`/`[store]`/`[api]` filled in, plus `extra` TOML appended.
    pub fn with_config(extra: &str) -> Home {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let db = dir.path().join("data").join("forgefleet.db");
        let config = format!(
            "[server]\nlisten = \"{addr}\"\n\n[store]\npath = {db:?}\n\n[api]\noperator_token = \"{OPERATOR_TOKEN}\"\n\n{extra}"
        );
        std::fs::write(dir.path().join("forgefleet.toml"), config).unwrap();
        Home { dir, addr }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("forgefleet.toml")
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data").join("forgefleet.db")
    }

    /// Runs a command to completion with this home's config.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(self.config())
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    /// Starts `forgefleet serve` and waits until it answers `/healthz`.
    pub fn serve(&self) -> Server {
        let log = self.dir.path().join(format!("serve-{}.log", rand_suffix()));
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(self.config())
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server { child, addr: self.addr, log };
        server.wait_ready();
        server
    }
}

/// A running `forgefleet serve`, killed when dropped (also when the test fails).
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("serve exited early with {status}: {}", self.log_text());
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("serve did not listen within 20 s: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks it to stop the way an operator would (SIGTERM) and waits for it.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn rand_suffix() -> u32 {
    rand::random()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fills a database through the library, as `serve` would, so CLI views have something to show.
pub fn seed(db: &Path, issues: &[(&str, &[&str])]) {
    use forgefleet::engine::{Command as C, Engine, EngineSettings, IssueObservation, SystemClock};
    let store = forgefleet::store::Store::open(db).unwrap();
    let mut engine = Engine::new(store, EngineSettings::default(), SystemClock);
    for (issue, labels) in issues {
        engine
            .execute(C::ObserveIssue(IssueObservation {
                issue: issue.parse().unwrap(),
                title: format!("Work on {issue}"),
                body: String::new(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                open: true,
                updated_at: None,
                fresh: true,
                issue_id: None,
            }))
            .unwrap();
    }
}

/// A log without its terminal colours (`ESC [ ... m`), as a person reading it sees the text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
