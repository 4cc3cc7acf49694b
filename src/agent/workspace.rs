//! The runner's git work, with the git CLI (an agent host has git anyway: the agents run it): a bare cache of
//! each repository, a worktree per task on the attempt's branch, the runner's own commit of what the agent
//! left uncommitted, and the push.
//!
//! The Forgejo token reaches git only through `GIT_CONFIG_*` variables of the fetch and push commands (as an
//! HTTP Basic password, like forgefleet's own mirror): never in a URL, an argument or a file, and never in
//! the agent's environment.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use base64::Engine as _;

use crate::integrations::git::BASIC_AUTH_USER;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GitFailed(pub String);

pub struct Workspace {
    root: PathBuf,
    /// `GIT_CONFIG_*` pairs for commands that talk to the server.
    remote_config: Vec<(String, String)>,
    author: (String, String),
    /// One lock per repository cache: tasks of the same repository fetch into it, add and remove worktrees
    /// one at a time (git takes its ref and worktree locks without waiting, so contention would fail a task).
    caches: std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// A task's worktree, made from the base branch.
#[derive(Debug, Clone)]
pub struct Worktree {
    pub path: PathBuf,
    pub cache: PathBuf,
    pub base_sha: String,
}

impl Workspace {
    pub fn new(root: &Path, token: &str, ca_file: Option<&Path>, author: (String, String)) -> Workspace {
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_AUTH_USER}:{token}"));
        let mut remote_config = vec![("http.extraHeader".to_string(), format!("Authorization: Basic {credentials}"))];
        if let Some(ca) = ca_file {
            remote_config.push(("http.sslCAInfo".into(), ca.display().to_string()));
        }
        Workspace { root: root.to_path_buf(), remote_config, author, caches: Default::default() }
    }

    /// The author and committer for the agent's process too, so its own commits have a name.
    pub fn author_env(&self) -> [(&'static str, &str); 4] {
        let (name, email) = (&self.author.0, &self.author.1);
        [
            ("GIT_AUTHOR_NAME", name),
            ("GIT_AUTHOR_EMAIL", email),
            ("GIT_COMMITTER_NAME", name),
            ("GIT_COMMITTER_EMAIL", email),
        ]
    }

    /// Fetches the base branch into the repository's cache and makes a fresh worktree for this attempt on
    /// `branch`. A worktree left by an earlier run of the same attempt is thrown away first.
    pub async fn prepare(
        &self,
        clone_url: &str,
        repo: &str,
        base: &str,
        branch: &str,
        name: &str,
    ) -> Result<Worktree, GitFailed> {
        let cache = self.root.join("repos").join(format!("{repo}.git"));
        let lock = self.cache_lock(&cache);
        let _held = lock.lock().await;
        if !cache.join("HEAD").exists() {
            std::fs::create_dir_all(&cache)
                .map_err(|e| GitFailed(format!("cannot create {}: {e}", cache.display())))?;
            self.git(&cache, &["init", "-q", "--bare"], false).await?;
        }
        let tracking = format!("refs/remotes/origin/{base}");
        self.git(&cache, &["fetch", "-q", "--no-tags", clone_url, &format!("+refs/heads/{base}:{tracking}")], true)
            .await
            .map_err(|e| GitFailed(format!("fetching {base} of {repo}: {e}")))?;
        let path = self.root.join("worktrees").join(name);
        self.remove_locked(&cache, &path).await;
        let target = path.to_string_lossy().to_string();
        self.git(&cache, &["worktree", "add", "-q", "-B", branch, &target, &tracking], false).await?;
        let base_sha = self.git(&path, &["rev-parse", "HEAD"], false).await?;
        Ok(Worktree { path, cache, base_sha })
    }

    /// Commits whatever the agent left uncommitted, then answers the head if the branch has commits the base
    /// has not (`None`: the agent changed nothing).
    pub async fn commit_rest(&self, wt: &Worktree, message: &str) -> Result<Option<String>, GitFailed> {
        let status = self.git(&wt.path, &["status", "--porcelain", "--untracked-files=all"], false).await?;
        if !status.is_empty() {
            self.git(&wt.path, &["add", "-A"], false).await?;
            self.git(&wt.path, &["commit", "-q", "--no-verify", "-m", message], false).await?;
        }
        let count = self.git(&wt.path, &["rev-list", "--count", &format!("{}..HEAD", wt.base_sha)], false).await?;
        if count.trim() == "0" {
            return Ok(None);
        }
        self.git(&wt.path, &["rev-parse", "HEAD"], false).await.map(Some)
    }

    /// Pushes the worktree's head to `branch`. The branch belongs to this attempt alone, so a push after a
    /// restart of the same attempt may replace what an earlier run pushed.
    pub async fn push(&self, wt: &Worktree, clone_url: &str, branch: &str) -> Result<(), GitFailed> {
        let refspec = format!("+HEAD:refs/heads/{branch}");
        self.git(&wt.path, &["push", "-q", clone_url, &refspec], true)
            .await
            .map(|_| ())
            .map_err(|e| GitFailed(format!("pushing {branch}: {e}")))
    }

    /// Where the process group of the agent working in `worktree` is written while it runs.
    pub fn pid_file(&self, worktree: &Path) -> PathBuf {
        let name = worktree.file_name().unwrap_or_default().to_string_lossy();
        self.root.join("pids").join(format!("{name}.pgid"))
    }

    /// At start-up, before any work: what a runner that was killed outright left behind. Its agents' process
    /// groups are killed (only those whose working directory is still one of this runner's worktrees, so a
    /// reused process id is never hit), and its worktrees are removed. A work directory belongs to one runner.
    pub async fn sweep(&self) -> Result<(), GitFailed> {
        let pids = self.root.join("pids");
        let worktrees = self.root.join("worktrees");
        std::fs::create_dir_all(&pids).map_err(|e| GitFailed(format!("cannot create {}: {e}", pids.display())))?;
        for entry in std::fs::read_dir(&pids).into_iter().flatten().flatten() {
            let pgid = std::fs::read_to_string(entry.path()).ok().and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(pgid) = pgid.filter(|p| *p > 1) {
                let cwd = std::fs::read_link(format!("/proc/{pgid}/cwd")).unwrap_or_default();
                if cwd.starts_with(&worktrees) || super::process::sandbox_of(pgid, &worktrees) {
                    tracing::warn!(pgid, cwd = %cwd.display(), "stopping an agent left running by an earlier runner");
                    // SAFETY: killpg only sends a signal, to a group led by a process in our worktree.
                    unsafe { libc::killpg(pgid, libc::SIGKILL) };
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
        for entry in std::fs::read_dir(&worktrees).into_iter().flatten().flatten() {
            tracing::info!(path = %entry.path().display(), "removing a worktree left by an earlier runner");
            let _ = std::fs::remove_dir_all(entry.path());
        }
        let repos = self.root.join("repos");
        for owner in std::fs::read_dir(&repos).into_iter().flatten().flatten() {
            for cache in std::fs::read_dir(owner.path()).into_iter().flatten().flatten() {
                let _ = self.git(&cache.path(), &["worktree", "prune"], false).await;
            }
        }
        Ok(())
    }

    fn cache_lock(&self, cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(cache.to_path_buf()).or_default().clone()
    }

    /// Removes a worktree and its administrative files; quiet when there is none.
    pub async fn remove(&self, cache: &Path, path: &Path) {
        let lock = self.cache_lock(cache);
        let _held = lock.lock().await;
        self.remove_locked(cache, path).await;
    }

    async fn remove_locked(&self, cache: &Path, path: &Path) {
        if path.exists() {
            let target = path.to_string_lossy().to_string();
            if self.git(cache, &["worktree", "remove", "--force", "--force", &target], false).await.is_err() {
                let _ = std::fs::remove_dir_all(path);
            }
        }
        let _ = self.git(cache, &["worktree", "prune"], false).await;
    }

    async fn git(&self, dir: &Path, args: &[&str], remote: bool) -> Result<String, GitFailed> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("-C").arg(dir).args(args).stdin(Stdio::null()).kill_on_drop(true);
        cmd.env("GIT_TERMINAL_PROMPT", "0").envs(self.author_env());
        if remote {
            cmd.env("GIT_CONFIG_COUNT", self.remote_config.len().to_string());
            for (i, (k, v)) in self.remote_config.iter().enumerate() {
                cmd.env(format!("GIT_CONFIG_KEY_{i}"), k).env(format!("GIT_CONFIG_VALUE_{i}"), v);
            }
        }
        let out = cmd.output().await.map_err(|e| GitFailed(format!("cannot run git: {e}; is git installed?")))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim();
        Err(GitFailed(format!(
            "git {} failed: {}",
            args.first().unwrap_or(&""),
            if err.is_empty() { "no message" } else { err }
        )))
    }
}
