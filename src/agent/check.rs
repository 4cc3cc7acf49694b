//! `forgefleet agent --check`: whether this host can do the work, one line each, `ok` or why not: the
//! sandbox, the adapter's CLI, the server, and what the Forgejo token can do (probed: a token cannot read its
//! own scopes).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::config::AgentConfig;
use super::sandbox::{Sandbox, SandboxMode, resolve};
use crate::adapters::AdapterKind;
use crate::integrations::git::BASIC_AUTH_USER;

/// How long one probe may take.
const PROBE: Duration = Duration::from_secs(20);

/// One line of the report: what was checked, and `ok` with details or why not.
#[derive(Debug)]
pub struct Line {
    pub what: &'static str,
    pub result: Result<String, String>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(detail) => write!(f, "{}: ok ({detail})", self.what),
            Err(why) => write!(f, "{}: {why}", self.what),
        }
    }
}

/// Where the Forgejo token is checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forgejo<'a> {
    /// The Forgejo the token belongs to (its API).
    pub url: Option<&'a str>,
    /// Where its git is served, when not where the API says (`clone_url`).
    pub git_url: Option<&'a str>,
    /// A repository (`owner/name`) the token must be able to push to.
    pub repo: Option<&'a str>,
}

/// Runs every check, prints one line each, and answers whether all are ok.
pub async fn run(config: &AgentConfig, forgejo: Forgejo<'_>) -> bool {
    let lines = report(config, forgejo).await;
    for line in &lines {
        println!("{line}");
    }
    lines.iter().all(|l| l.result.is_ok())
}

/// Every check, in order: the sandbox, the adapter, the server, the Forgejo token (and the repository with
/// a push, when one is given).
pub async fn report(config: &AgentConfig, target: Forgejo<'_>) -> Vec<Line> {
    let mut lines = vec![sandbox(config), adapter(config).await, server(config).await];
    lines.extend(forgejo(config, target).await);
    lines
}

fn sandbox(config: &AgentConfig) -> Line {
    let work_dir = &config.agent.work_dir;
    let result = std::fs::create_dir_all(work_dir)
        .and_then(|()| std::fs::canonicalize(work_dir))
        .map_err(|e| format!("agent.work_dir {}: {e}", work_dir.display()))
        .and_then(|dir| Sandbox::new(super::sandbox_settings(config), &dir, super::adapter_program(config).as_deref()))
        .and_then(|s| match s.mode() {
            SandboxMode::Bubblewrap => Ok(format!("{}; namespaces work", s.version()?)),
            SandboxMode::None => Ok("sandbox = \"none\": agents run unsandboxed, as this user".into()),
        });
    Line { what: "sandbox", result }
}

async fn adapter(config: &AgentConfig) -> Line {
    let kind = config.agent.adapter;
    let result = async {
        let program = super::adapter_program(config).ok_or("no program configured")?;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = resolve(&program, &path).ok_or_else(|| format!("{} is not found (PATH)", program.display()))?;
        if kind == AdapterKind::Command {
            return Ok(format!("command: {}", found.display()));
        }
        let version = version(&found).await?;
        Ok(format!("{}: {} {version}", kind.as_str(), found.display()))
    }
    .await;
    Line { what: "adapter", result }
}

/// `program --version`, its first line.
async fn version(program: &Path) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("--version")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE, cmd.output())
        .await
        .map_err(|_| format!("{} --version did not answer within {} s", program.display(), PROBE.as_secs()))?
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next() {
        Some(first) if out.status.success() => Ok(first.trim().to_string()),
        _ => Err(format!("{} --version ended with {}", program.display(), crate::adapters::describe(out.status))),
    }
}

fn http(config: &AgentConfig) -> Result<reqwest::Client, String> {
    let mut builder =
        reqwest::Client::builder().timeout(PROBE).user_agent(concat!("forgefleet-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = config.ca()? {
        for cert in ca.certificates() {
            builder = builder.add_root_certificate(cert.clone());
        }
    }
    builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
}

async fn server(config: &AgentConfig) -> Line {
    let result = async {
        let base = config.agent.server.as_deref().unwrap_or_default().trim_end_matches('/');
        let url = format!("{base}/healthz");
        let answer = http(config)?.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        match answer.status() {
            s if s.is_success() => Ok(format!("GET {url}: {s}")),
            s => Err(format!("GET {url} answered {s}")),
        }
    }
    .await;
    Line { what: "server", result }
}

async fn forgejo(config: &AgentConfig, target: Forgejo<'_>) -> Vec<Line> {
    let Some(url) = target.url.map(|u| u.trim_end_matches('/')) else {
        return vec![Line {
            what: "forgejo token",
            result: Err("not checked: no Forgejo URL is configured (agent.forgejo_url)".into()),
        }];
    };
    let token = config.agent.forgejo_token.as_ref().map(|t| t.expose().to_string()).unwrap_or_default();
    let get = |path: String| {
        let token = token.clone();
        let client = http(config);
        async move {
            let answer = client?
                .get(&path)
                .header("Authorization", format!("token {token}"))
                .send()
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            let status = answer.status();
            if !status.is_success() {
                return Err(format!("GET {path} answered {status}: the token is not accepted there"));
            }
            answer.json::<serde_json::Value>().await.map_err(|e| format!("GET {path}: {e}"))
        }
    };
    let user = get(format!("{url}/api/v1/user")).await.map(|u| format!("user {}", u["login"].as_str().unwrap_or("?")));
    let mut lines = vec![Line { what: "forgejo token", result: user }];
    let Some(repo) = target.repo else { return lines };
    let access = get(format!("{url}/api/v1/repos/{repo}")).await.and_then(|r| {
        if r["permissions"]["push"] == true {
            Ok(r["clone_url"].as_str().unwrap_or_default().to_string())
        } else {
            Err(format!("the token's user may read {repo} but not push to it"))
        }
    });
    match access {
        Err(e) => lines.push(Line { what: "forgejo repository", result: Err(e) }),
        Ok(clone_url) => {
            let clone_url = match target.git_url {
                Some(git) => format!("{}/{repo}.git", git.trim_end_matches('/')),
                None => clone_url,
            };
            lines.push(Line { what: "forgejo repository", result: Ok(format!("{repo}: read, push allowed")) });
            lines.push(Line { what: "git push", result: push_dry_run(config, &clone_url, &token).await });
        }
    }
    lines
}

/// `git push --dry-run` of a throw-away commit to a branch no one uses: git asks the server for the right to
/// push (authenticated like the runner's own pushes) and pushes nothing.
async fn push_dry_run(config: &AgentConfig, clone_url: &str, token: &str) -> Result<String, String> {
    let dir = Scratch(config.agent.work_dir.join(format!("check-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("creating {}: {e}", dir.0.display()))?;
    let credentials =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{BASIC_AUTH_USER}:{token}"));
    let mut settings = vec![("http.extraHeader".to_string(), format!("Authorization: Basic {credentials}"))];
    if let Some(ca) = &config.agent.ca_file {
        settings.push(("http.sslCAInfo".into(), ca.display().to_string()));
    }
    let git = |args: Vec<&str>, remote: bool| {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("-C").arg(&dir.0).args(args).stdin(Stdio::null()).kill_on_drop(true);
        cmd.env("GIT_TERMINAL_PROMPT", "0").env("GIT_CONFIG_NOSYSTEM", "1").env("HOME", &dir.0);
        cmd.env("GIT_AUTHOR_NAME", "check").env("GIT_AUTHOR_EMAIL", "check@forgefleet.invalid");
        cmd.env("GIT_COMMITTER_NAME", "check").env("GIT_COMMITTER_EMAIL", "check@forgefleet.invalid");
        if remote {
            cmd.env("GIT_CONFIG_COUNT", settings.len().to_string());
            for (i, (k, v)) in settings.iter().enumerate() {
                cmd.env(format!("GIT_CONFIG_KEY_{i}"), k).env(format!("GIT_CONFIG_VALUE_{i}"), v);
            }
        }
        async move {
            let out = tokio::time::timeout(PROBE, cmd.output())
                .await
                .map_err(|_| "git did not finish in time".to_string())?
                .map_err(|e| format!("cannot run git: {e}"))?;
            if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) }
        }
    };
    git(vec!["init", "-q"], false).await?;
    git(vec!["commit", "-q", "--allow-empty", "-m", "forgefleet agent --check"], false).await?;
    git(vec!["push", "--dry-run", "-q", "--", clone_url, "HEAD:refs/heads/forgefleet/check-push"], true)
        .await
        .map(|()| format!("git push --dry-run to {clone_url} allowed"))
        .map_err(|e| format!("git push --dry-run to {clone_url} refused: {e}"))
}

/// A folder removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
