//! A whole fleet for the runner's scenario tests: an in-process forgefleet, the fake Forgejo (pull requests
//! opened through its API, linked to a real bare repository) and real git over smart HTTP, plus the
//! `forgefleet agent` binary run as a child process that is always stopped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use forgefleet::config::Secret;
use reqwest::Method;
use serde_json::Value;

use super::fleet::{Fleet, REGISTRATION_TOKEN};
use super::forgejo::FakeForgejo;
use super::git::{GitServer, TestRepo};

pub const REPO: &str = "acme/app";
pub const BOT: &str = "forgefleet";
pub const BOT_TOKEN: &str = "bot-token";
pub const AGENT_USER: &str = "fleet-a1";
pub const AGENT_TOKEN: &str = "agent-forgejo-token";
pub const WEBHOOK_SECRET: &str = "webhook-secret";

/// The fake Forgejo with [`REPO`] linked to the bare repository `bare`, the bot (admin), the agent's user and
/// alice (writers).
pub async fn forge(bare: &Path) -> FakeForgejo {
    let forgejo = FakeForgejo::start().await;
    forgejo.create_repo(REPO).await;
    forgejo.link_git(REPO, bare).await;
    forgejo.add_user(BOT, BOT_TOKEN).await;
    forgejo.set_permission(REPO, BOT, "admin").await;
    forgejo.add_user(AGENT_USER, AGENT_TOKEN).await;
    forgejo.set_permission(REPO, AGENT_USER, "write").await;
    forgejo.add_user("alice", "alice-token").await;
    forgejo.set_permission(REPO, "alice", "write").await;
    forgejo
}

pub struct World {
    pub forgejo: FakeForgejo,
    pub fleet: Fleet,
    pub repo: TestRepo,
    /// The base URL of the git server (the server's `[forgejo] git_url`).
    pub git_url: String,
    pub git: GitServer,
    pub root: tempfile::TempDir,
}

impl World {
    pub async fn new(tune: impl FnOnce(&mut forgefleet::config::Config)) -> World {
        Self::polling(Duration::from_millis(20), tune).await
    }

    /// The same with forgefleet's Forgejo workers polling only every `poll`.
    pub async fn polling(poll: Duration, tune: impl FnOnce(&mut forgefleet::config::Config)) -> World {
        let root = tempfile::tempdir().unwrap();
        let git = GitServer::start_with_token(&root.path().join("git"), BOT_TOKEN);
        git.allow_token(AGENT_TOKEN);
        let repo = TestRepo::init_bare(&root.path().join("git"), REPO);
        repo.commit(&[("README.md", "hello\n")], "start");
        repo.push("main");
        let forgejo = forge(&root.path().join("git").join(format!("{REPO}.git"))).await;
        let (url, git_url) = (forgejo.url().to_string(), git.base_url());
        let fleet = Fleet::start_with_forgejo_polling(poll, |c| {
            c.forgejo.url = Some(url);
            c.forgejo.git_url = Some(git_url);
            c.forgejo.token = Some(Secret::new(BOT_TOKEN));
            c.forgejo.bot_user = Some(BOT.into());
            c.forgejo.webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
            c.forgejo.repos = vec![REPO.into()];
            c.agents.heartbeat_interval_secs = 1;
            tune(c);
        })
        .await;
        let hook = format!("{}/api/v1/webhooks/forgejo", fleet.base);
        forgejo.add_hook(REPO, &hook, WEBHOOK_SECRET, &["issues", "issue_comment", "pull_request"]).await;
        World { forgejo, fleet, repo, git_url: git.base_url(), git, root }
    }

    /// An issue labelled `status:todo`, queued by forgefleet from Forgejo's webhook; returns (issue, task id).
    pub async fn queued(&self, title: &str) -> (u64, u64) {
        self.queued_with_body(title, "Please do it.").await
    }

    /// The same with the issue text `body`.
    pub async fn queued_with_body(&self, title: &str, body: &str) -> (u64, u64) {
        let issue = self.forgejo.create_issue(REPO, "alice", title, body, &["status:todo"]).await;
        for _ in 0..600 {
            let (_, body) = self.fleet.operator(Method::GET, "/tasks").await;
            let found =
                body["tasks"].as_array().into_iter().flatten().find(|t| t["issue"] == format!("{REPO}#{issue}"));
            if let Some(id) = found.and_then(|t| t["id"].as_u64()) {
                return (issue, id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("forgefleet did not queue issue #{issue} within 30 s");
    }

    /// Starts `forgefleet agent` with the `command` adapter running `script` under `sh -c`.
    pub fn agent(&self, script: &str) -> AgentHost {
        self.agent_with(&format!("[command]\nrun = [\"sh\", \"-c\", {script:?}]\n"), "command", &[])
    }

    /// A `command` agent running `script` with `sandbox = "none"`: for the runner's own defences, which must
    /// hold without the sandbox too.
    pub fn agent_unsandboxed(&self, script: &str) -> AgentHost {
        self.agent_with(
            &format!("sandbox = \"none\"\n\n[command]\nrun = [\"sh\", \"-c\", {script:?}]\n"),
            "command",
            &[],
        )
    }

    /// Starts `forgefleet agent` with `adapter`, its configuration sections `sections`, and `env` added to
    /// the runner's environment (which the agent inherits).
    pub fn agent_with(&self, sections: &str, adapter: &str, env: &[(String, String)]) -> AgentHost {
        self.agent_named("a1", sections, adapter, env)
    }

    /// The same for an agent called `name`, on a host of its own (its files under `<root>/agent-<name>`; `a1`'s
    /// under `<root>/agent`).
    pub fn agent_named(&self, name: &str, sections: &str, adapter: &str, env: &[(String, String)]) -> AgentHost {
        let dir = self.agent_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("agent.toml");
        let text = format!(
            "[agent]\nname = {name:?}\nadapter = {adapter:?}\nserver = {:?}\nregistration_token = {REGISTRATION_TOKEN:?}\n\
             forgejo_url = {:?}\ngit_url = {:?}\nwork_dir = {:?}\nwait_secs = 1\n\n{sections}",
            self.fleet.base,
            self.forgejo.url(),
            self.git_url,
            dir.join("work"),
        );
        std::fs::write(&config, text).unwrap();
        AgentHost::start(&config, &dir.join("agent.log"), env)
    }

    /// Where the runner of agent `name` keeps its files.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        match name {
            "a1" => self.root.path().join("agent"),
            _ => self.root.path().join(format!("agent-{name}")),
        }
    }

    pub async fn task(&self, id: u64) -> Value {
        let (status, body) = self.fleet.operator(Method::GET, &format!("/tasks/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn state(&self, id: u64) -> String {
        self.task(id).await["task"]["state"].as_str().unwrap_or_default().to_string()
    }
}

/// The runner process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct AgentHost {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentHost {
    pub fn start(config: &Path, log: &Path, env: &[(String, String)]) -> AgentHost {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(super::binary())
            .args(["agent", "--config"])
            .arg(config)
            .env("FORGEFLEET_LOG", "info,forgefleet=debug")
            .env_remove("FORGEFLEET_AGENT_REGISTRATION_TOKEN")
            // From the environment, as a service manager would pass it: it must not reach the agent.
            .env("FORGEFLEET_AGENT_FORGEJO_TOKEN", AGENT_TOKEN)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        AgentHost { child: Some(child), log: log.to_path_buf() }
    }

    /// The runner's process id (the same after it re-executes itself without its secrets).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or_default()
    }

    /// Whether the runner is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the host died, nothing is cleaned up or said.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, as a service manager stops it; waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("the agent did not stop within 15 s of SIGTERM:\n{}", self.log());
    }
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The host's process ids whose command line has an argument containing `marker` (the agent's processes
/// run in a PID namespace of their own: the ids they see of themselves mean nothing outside).
pub fn pids_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if pid != std::process::id() as i32
            && cmdline.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(marker))
            && alive(pid)
        {
            found.push(pid);
        }
    }
    found
}

impl World {
    /// The checkouts of the attempts running now.
    pub fn checkouts(&self) -> Vec<PathBuf> {
        let dir = self.root.path().join("agent/work/attempts");
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("checkout"))
            .filter(|c| c.is_dir())
            .collect();
        found.sort();
        found
    }

    /// The running checkouts that hold `file`.
    pub fn checkouts_with(&self, file: &str) -> Vec<PathBuf> {
        self.checkouts().into_iter().filter(|c| c.join(file).exists()).collect()
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); a reaped or killed-and-reaped process does not.
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !status.is_empty() && status.split(' ').nth(2).is_none_or(|s| s != "Z")
}
