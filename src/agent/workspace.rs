//! The runner's git work, with the git CLI (an agent host has git anyway: the agents run it): a bare cache of
//! each repository, a checkout of its own for each attempt, the runner's own commit of what the agent left
//! uncommitted, and the push.
//!
//! The agent's checkout is untrusted from the moment the agent starts: the runner never runs git in it
//! afterwards, never reads its `.git/config`, hooks or index (see "Threat model" in docs/agent.md). After the
//! agent exits, the runner copies the agent's object files (regular files only, never through a link) into a
//! git directory of its own for the attempt, reads the agent's HEAD from the files itself, commits what the
//! agent left with that git directory and the checkout as the work tree, fetches the result into the cache
//! and pushes from the cache. Every git process of the runner runs with no system or global configuration,
//! no hooks and no fsmonitor, and without the `GIT_*` variables of the runner's own environment.
//!
//! The Forgejo token reaches git only through `GIT_CONFIG_*` variables of the fetch and push commands (as an
//! HTTP Basic password, like forgefleet's own mirror): never in a URL, an argument or a file, and never in
//! the agent's environment.
//!
//! Layout of `work_dir`: `repos/<owner>/<name>.git` (the caches), `pids/`, `agent-token`, and
//! `attempts/<task>-<attempt>/` with `checkout/` (the agent's) and `git/` (the runner's); the sandbox keeps
//! the agents' homes under `homes/`. The runner's files are never inside a checkout.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use base64::Engine as _;

use crate::core::RepoName;
use crate::integrations::git::BASIC_AUTH_USER;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GitFailed(pub String);

/// What `git init --bare` writes: the cache's configuration is reset to this before every use, so nothing
/// another process wrote into it (an `insteadOf`, a credential helper) steers the runner's fetch or push.
const CACHE_CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n";

pub struct Workspace {
    root: PathBuf,
    /// `GIT_CONFIG_*` pairs for commands that talk to the server.
    remote_config: Vec<(String, String)>,
    author: (String, String),
    /// One lock per repository cache: tasks of the same repository fetch into it one at a time (git takes
    /// its ref locks without waiting, so contention would fail a task).
    caches: std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// One attempt's place on disk. `path` is the agent's; the rest is the runner's (the sandbox binds `path`
/// read-write and gives the agent a home of its own, see [`super::sandbox`]).
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The agent's clone: a `.git` of its own with objects copied from the cache (no hardlinks, no
    /// alternates), on the attempt's branch.
    pub path: PathBuf,
    /// `attempts/<name>`: holds the checkout and the runner's git directory.
    pub dir: PathBuf,
    /// The runner's git directory for this attempt, made after the agent has exited: it borrows the cache's
    /// objects and holds copies of the agent's.
    git_dir: PathBuf,
    pub cache: PathBuf,
    /// The base branch's head when the attempt started.
    pub base_sha: String,
    /// Where the agent started: the base, or the attempt's branch when it had been pushed before.
    pub start_sha: String,
    name: String,
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

    /// Fetches the base branch (and the attempt's branch, if it was pushed before) into the repository's
    /// cache and makes a fresh checkout for this attempt on `branch`. What an earlier run of the same attempt
    /// left is thrown away first. The caller has checked every argument (see `task::Checked`).
    pub async fn prepare(
        &self,
        clone_url: &str,
        repo: &RepoName,
        base: &str,
        branch: &str,
        name: &str,
    ) -> Result<Checkout, GitFailed> {
        let cache = self.root.join("repos").join(repo.owner()).join(format!("{}.git", repo.name()));
        let dir = self.root.join("attempts").join(name);
        let lock = self.cache_lock(&cache);
        let _held = lock.lock().await;
        if !cache.join("HEAD").exists() {
            std::fs::create_dir_all(&cache)
                .map_err(|e| GitFailed(format!("cannot create {}: {e}", cache.display())))?;
            self.git(&cache, None, &["init", "-q", "--bare"], false).await?;
        }
        self.reset_cache_config(&cache)?;
        let tracking = format!("refs/remotes/origin/{base}");
        // A branch pushed before (a restarted attempt, or one that continues an earlier attempt's branch) is
        // built on, never overwritten. The pattern matches nothing when there is none, without failing.
        let pushed = format!("refs/forgefleet/pushed/{branch}");
        let _ = self.git(&cache, None, &["update-ref", "-d", &pushed], false).await;
        let fetch = [
            "fetch",
            "-q",
            "--no-tags",
            "--",
            clone_url,
            &format!("+refs/heads/{base}:{tracking}"),
            &format!("+refs/heads/{branch}*:refs/forgefleet/pushed/{branch}*"),
        ];
        self.git(&cache, None, &fetch, true).await.map_err(|e| GitFailed(format!("fetching {base} of {repo}: {e}")))?;
        let base_sha =
            self.git(&cache, None, &["rev-parse", "--verify", &format!("{tracking}^{{commit}}")], false).await?;
        let start_sha = match self
            .git(&cache, None, &["rev-parse", "--verify", "-q", &format!("{pushed}^{{commit}}")], false)
            .await
        {
            Ok(sha) if !sha.is_empty() => {
                tracing::info!(%branch, %sha, "the attempt's branch was pushed before; building on it");
                sha
            }
            _ => base_sha.clone(),
        };
        remove_tree(&dir);
        let (path, git_dir) = (dir.join("checkout"), dir.join("git"));
        std::fs::create_dir_all(&dir).map_err(|e| GitFailed(format!("cannot create {}: {e}", dir.display())))?;
        // A copy of the cache's object files, not hardlinks (the agent could rewrite a shared file) nor
        // alternates (the checkout would need the cache at run time, and a sandbox shows it no cache). Measured
        // on a 9 MB repository of 3,000 files: 0.47 s, against 0.37 s for a worktree of the cache, 0.35 s for
        // `--shared` and 0.77 s for a fetch over the pack protocol (`--no-local`), which builds a new pack.
        let (cache_s, path_s) = (cache.to_string_lossy().to_string(), path.to_string_lossy().to_string());
        self.git(&self.root, None, &["clone", "-q", "--no-hardlinks", "--no-checkout", "--", &cache_s, &path_s], false)
            .await?;
        for args in [
            vec!["remote", "set-url", "origin", clone_url],
            vec!["update-ref", tracking.as_str(), base_sha.as_str()],
            vec!["checkout", "-q", "-B", branch, start_sha.as_str()],
        ] {
            // The checkout is fresh: nothing of the agent's has run in it yet.
            self.git(&path, None, &args, false).await?;
        }
        Ok(Checkout { path, dir, git_dir, cache, base_sha, start_sha, name: name.to_string() })
    }

    /// After the agent has exited: commits whatever it left uncommitted on top of what it committed, with the
    /// runner's own git directory, then answers the head if the branch has commits the base has not (`None`:
    /// nothing changed). The head is fetched into the cache, ready for [`Workspace::push`].
    pub async fn commit_rest(&self, co: &Checkout, message: &str) -> Result<Option<String>, GitFailed> {
        match std::fs::symlink_metadata(&co.path) {
            Ok(m) if m.is_dir() => {}
            _ => return Err(GitFailed("the agent's checkout is no longer a directory; nothing is committed".into())),
        }
        // Made now, after the agent has exited, so nothing of the agent's is in it (a configuration, hooks,
        // attributes); it borrows the cache's objects.
        remove_tree(&co.git_dir);
        self.git(&self.root, None, &["init", "-q", "--bare", &co.git_dir.to_string_lossy()], false).await?;
        let alternates = co.git_dir.join("objects/info/alternates");
        std::fs::write(&alternates, format!("{}\n", co.cache.join("objects").display()))
            .map_err(|e| GitFailed(format!("cannot write {}: {e}", alternates.display())))?;
        let dot_git = co.path.join(".git");
        let objects = co.git_dir.join("objects");
        let copied = import_objects(&dot_git.join("objects"), &objects, &co.cache.join("objects"))
            .map_err(|e| GitFailed(format!("copying the agent's commits: {e}")))?;
        tracing::debug!(copied, "object files copied from the agent's checkout");
        let parent = match agent_head(&dot_git) {
            Some(sha)
                if self.git(&co.git_dir, None, &["cat-file", "-t", &sha], false).await.is_ok_and(|t| t == "commit") =>
            {
                sha
            }
            Some(sha) => {
                tracing::warn!(%sha, "the agent's HEAD is not a commit the runner can read; committing on the start");
                co.start_sha.clone()
            }
            None => co.start_sha.clone(),
        };
        // The index is the runner's, so every file is hashed again: on the 3,000 files (9 MB) above, 0.45 s
        // from `init` to `write-tree`, against 0.32 s for `status`, `add` and `commit` in the checkout.
        let wt = Some(co.path.as_path());
        self.git(&co.git_dir, wt, &["read-tree", &parent], false).await?;
        self.git(&co.git_dir, wt, &["add", "-A"], false).await?;
        // The agent's question for a person (an empty one, when it had none) is the runner's to read, never part
        // of the work: it leaves the tree, even if the agent committed it.
        self.git(
            &co.git_dir,
            wt,
            &["rm", "-q", "--cached", "--ignore-unmatch", "--", crate::core::QUESTION_FILE],
            false,
        )
        .await?;
        let tree = self.git(&co.git_dir, wt, &["write-tree"], false).await?;
        let parent_tree = self.git(&co.git_dir, None, &["rev-parse", &format!("{parent}^{{tree}}")], false).await?;
        let head = if tree == parent_tree {
            parent
        } else {
            self.git(&co.git_dir, None, &["commit-tree", &tree, "-p", &parent, "-m", message], false).await?
        };
        let count =
            self.git(&co.git_dir, None, &["rev-list", "--count", &format!("{}..{head}", co.base_sha)], false).await?;
        if count.trim() == "0" {
            return Ok(None);
        }
        // Into the cache, through a ref of the runner's git directory (whose configuration is the runner's).
        self.git(&co.git_dir, None, &["update-ref", "refs/heads/out", &head], false).await?;
        let lock = self.cache_lock(&co.cache);
        let _held = lock.lock().await;
        self.reset_cache_config(&co.cache)?;
        let source = co.git_dir.to_string_lossy().to_string();
        let refspec = format!("+refs/heads/out:refs/forgefleet/out/{}", co.name);
        self.git(&co.cache, None, &["fetch", "-q", "--no-tags", "--", &source, &refspec], false).await?;
        Ok(Some(head))
    }

    /// Pushes `head` from the cache to `branch`. The branch belongs to this attempt alone, so a push after a
    /// restart of the same attempt may replace what an earlier run pushed.
    pub async fn push(&self, co: &Checkout, clone_url: &str, head: &str, branch: &str) -> Result<(), GitFailed> {
        self.reset_cache_config(&co.cache)?;
        let refspec = format!("+{head}:refs/heads/{branch}");
        self.git(&co.cache, None, &["push", "-q", "--", clone_url, &refspec], true)
            .await
            .map(|_| ())
            .map_err(|e| GitFailed(format!("pushing {branch}: {e}")))
    }

    /// Where the process group of the agent working in `co` is written while it runs.
    pub fn pid_file(&self, co: &Checkout) -> PathBuf {
        self.root.join("pids").join(format!("{}.pgid", co.name))
    }

    /// At start-up, before any work: what a runner that was killed outright left behind. Its agents' process
    /// groups are killed (only those whose working directory is still in one of this runner's attempts, so a
    /// reused process id is never hit), and its checkouts are removed. A work directory belongs to one runner.
    pub async fn sweep(&self) -> Result<(), GitFailed> {
        let pids = self.root.join("pids");
        let attempts = self.root.join("attempts");
        // Worktrees of runners before per-attempt checkouts.
        let worktrees = self.root.join("worktrees");
        std::fs::create_dir_all(&pids).map_err(|e| GitFailed(format!("cannot create {}: {e}", pids.display())))?;
        for entry in std::fs::read_dir(&pids).into_iter().flatten().flatten() {
            let pgid = std::fs::read_to_string(entry.path()).ok().and_then(|s| s.trim().parse::<i32>().ok());
            if let Some(pgid) = pgid.filter(|p| *p > 1) {
                let cwd = std::fs::read_link(format!("/proc/{pgid}/cwd")).unwrap_or_default();
                if cwd.starts_with(&attempts)
                    || cwd.starts_with(&worktrees)
                    || super::process::sandbox_of(pgid, &attempts)
                    || super::process::sandbox_of(pgid, &worktrees)
                {
                    tracing::warn!(pgid, cwd = %cwd.display(), "stopping an agent left running by an earlier runner");
                    // SAFETY: killpg only sends a signal, to a group led by a process in our checkout.
                    unsafe { libc::killpg(pgid, libc::SIGKILL) };
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
        for dir in [&attempts, &worktrees] {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                tracing::info!(path = %entry.path().display(), "removing a checkout left by an earlier runner");
                remove_tree(&entry.path());
            }
        }
        let repos = self.root.join("repos");
        for owner in std::fs::read_dir(&repos).into_iter().flatten().flatten() {
            for cache in std::fs::read_dir(owner.path()).into_iter().flatten().flatten() {
                let _ = self.git(&cache.path(), None, &["worktree", "prune"], false).await;
                let refs = self
                    .git(&cache.path(), None, &["for-each-ref", "--format=%(refname)", "refs/forgefleet/"], false)
                    .await;
                for r in refs.unwrap_or_default().lines() {
                    let _ = self.git(&cache.path(), None, &["update-ref", "-d", r], false).await;
                }
            }
        }
        Ok(())
    }

    fn cache_lock(&self, cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(cache.to_path_buf()).or_default().clone()
    }

    /// Puts the cache's configuration back as the runner made it, and removes any hook or borrowed object
    /// store: without a sandbox, an agent running as the same user can write there.
    fn reset_cache_config(&self, cache: &Path) -> Result<(), GitFailed> {
        remove_tree(&cache.join("hooks"));
        remove_tree(&cache.join("objects/info/alternates"));
        let config = cache.join("config");
        let _ = std::fs::remove_file(&config);
        std::fs::write(&config, CACHE_CONFIG).map_err(|e| GitFailed(format!("cannot write {}: {e}", config.display())))
    }

    /// Removes an attempt's directory and its ref in the cache; quiet when there is none.
    pub async fn remove(&self, co: &Checkout) {
        remove_tree(&co.dir);
        let lock = self.cache_lock(&co.cache);
        let _held = lock.lock().await;
        let _ =
            self.git(&co.cache, None, &["update-ref", "-d", &format!("refs/forgefleet/out/{}", co.name)], false).await;
    }

    /// Runs the runner's git with `git_dir` (a bare repository, or a fresh checkout before the agent ran),
    /// with `work_tree` when given, and with the server's credentials when `remote`.
    async fn git(
        &self,
        git_dir: &Path,
        work_tree: Option<&Path>,
        args: &[&str],
        remote: bool,
    ) -> Result<String, GitFailed> {
        let mut cmd = tokio::process::Command::new("git");
        // Nothing of the environment's git settings: no GIT_DIR, GIT_CONFIG_*, GIT_SSH_COMMAND, ...
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GIT_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_CONFIG_GLOBAL", "/dev/null").env("GIT_TERMINAL_PROMPT", "0");
        cmd.args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.sshCommand=false"]);
        match work_tree {
            Some(wt) => {
                cmd.arg("--git-dir").arg(git_dir).arg("--work-tree").arg(wt).current_dir(git_dir);
                cmd.env("GIT_INDEX_FILE", git_dir.join("index"));
            }
            None => {
                cmd.arg("-C").arg(git_dir);
            }
        }
        cmd.args(args).stdin(Stdio::null()).kill_on_drop(true).envs(self.author_env());
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

/// Removes a directory tree without following links (`remove_dir_all` does not follow them).
fn remove_tree(dir: &Path) {
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        let _ = std::fs::remove_file(dir);
    }
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn is_hex(s: &str, lengths: &[usize]) -> bool {
    lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Opens a regular file of the agent's without following a link (or blocking on a FIFO).
fn open_plain(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

fn read_small(path: &Path, limit: u64) -> Option<String> {
    let mut text = String::new();
    open_plain(path).ok()?.take(limit).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The commit the agent's HEAD names, read from the files of its `.git` (never with git, which would read
/// its configuration): a detached id, or a branch as a loose ref or in `packed-refs`. `None` when it cannot
/// be read that way (a `.git` that is a file or a link, another ref format, no commit yet).
fn agent_head(dot_git: &Path) -> Option<String> {
    if !is_real_dir(dot_git) {
        return None;
    }
    let head = read_small(&dot_git.join("HEAD"), 4096)?;
    let head = head.trim();
    if is_hex(head, &[40, 64]) {
        return Some(head.to_string());
    }
    let name = head.strip_prefix("ref:")?.trim();
    let parts: Vec<&str> = name.split('/').collect();
    let safe = parts.len() >= 3
        && parts[0] == "refs"
        && parts.iter().all(|p| {
            !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_./+@".contains(c))
        })
        && !name.contains("..");
    if !safe {
        return None;
    }
    let mut loose = dot_git.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 && !is_real_dir(&loose) {
            loose = PathBuf::new();
            break;
        }
        loose.push(part);
    }
    if let Some(sha) = read_small(&loose, 128).map(|s| s.trim().to_string()).filter(|s| is_hex(s, &[40, 64])) {
        return Some(sha);
    }
    let packed = read_small(&dot_git.join("packed-refs"), 64 << 20)?;
    packed.lines().find_map(|line| {
        let (sha, r) = line.split_once(' ')?;
        (r.trim() == name && is_hex(sha, &[40, 64])).then(|| sha.to_string())
    })
}

/// Copies the agent's object files into the runner's object directory `to`: loose objects and pack files
/// (those the cache has by name are the cache's, not copied), regular files only, opened without following
/// links; nothing else (`info/alternates` would borrow objects from anywhere on the host). Returns how many
/// files were copied.
fn import_objects(from: &Path, to: &Path, cache: &Path) -> std::io::Result<usize> {
    let mut copied = 0;
    if !is_real_dir(from.parent().unwrap_or(from)) || !is_real_dir(from) {
        return Ok(0);
    }
    let copy = |src: &Path, dst: &Path| -> std::io::Result<()> {
        let mut input = open_plain(src)?;
        let tmp = dst.with_extension("forgefleet-tmp");
        let mut output = std::fs::File::create(&tmp)?;
        std::io::copy(&mut input, &mut output)?;
        std::fs::rename(&tmp, dst)
    };
    for entry in std::fs::read_dir(from)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let dir = entry.path();
        if is_hex(&name, &[2]) && is_real_dir(&dir) {
            for object in std::fs::read_dir(&dir)?.flatten() {
                let file = object.file_name().to_string_lossy().to_string();
                let dst = to.join(&name).join(&file);
                if !is_hex(&file, &[38, 62]) || dst.exists() || cache.join(&name).join(&file).exists() {
                    continue;
                }
                std::fs::create_dir_all(to.join(&name))?;
                if copy(&object.path(), &dst).is_ok() {
                    copied += 1;
                }
            }
        } else if name == "pack" && is_real_dir(&dir) {
            for pack in std::fs::read_dir(&dir)?.flatten() {
                let file = pack.file_name().to_string_lossy().to_string();
                let Some(stem) = file.strip_prefix("pack-").and_then(|f| f.strip_suffix(".pack")) else { continue };
                let idx = format!("pack-{stem}.idx");
                if !is_hex(stem, &[40, 64])
                    || cache.join("pack").join(&file).exists()
                    || to.join("pack").join(&file).exists()
                {
                    continue;
                }
                std::fs::create_dir_all(to.join("pack"))?;
                // The index last: git looks for packs by their index.
                if copy(&pack.path(), &to.join("pack").join(&file)).is_ok()
                    && copy(&dir.join(&idx), &to.join("pack").join(&idx)).is_ok()
                {
                    copied += 2;
                }
            }
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn the_agents_head_is_read_from_plain_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path().join(".git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        std::fs::write(git.join("HEAD"), "ref: refs/heads/work\n").unwrap();
        assert_eq!(agent_head(&git), None, "no commit yet");
        std::fs::write(git.join("packed-refs"), format!("# pack-refs\n{SHA} refs/heads/work\n")).unwrap();
        assert_eq!(agent_head(&git).as_deref(), Some(SHA));
        let loose = SHA.replace('0', "f");
        std::fs::write(git.join("refs/heads/work"), format!("{loose}\n")).unwrap();
        assert_eq!(agent_head(&git), Some(loose), "a loose ref wins over packed-refs");

        // A link (to anything) or a FIFO is not read: the runner neither follows nor blocks.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, SHA).unwrap();
        std::fs::remove_file(git.join("HEAD")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, git.join("HEAD")).unwrap();
        assert_eq!(agent_head(&git), None);
        std::fs::remove_file(git.join("HEAD")).unwrap();
        let fifo = std::ffi::CString::new(git.join("HEAD").to_string_lossy().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(agent_head(&git), None);
        std::fs::remove_file(git.join("HEAD")).unwrap();
        std::fs::write(git.join("HEAD"), "ref: refs/heads/../../../elsewhere\n").unwrap();
        assert_eq!(agent_head(&git), None, "a ref name that leaves .git");
    }

    #[test]
    fn only_the_agents_own_object_files_are_copied() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to, cache) = (dir.path().join(".git/objects"), dir.path().join("to"), dir.path().join("cache"));
        for d in [from.join("ab"), from.join("pack"), from.join("info"), to.clone(), cache.join("pack")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(from.join("ab").join(&SHA[2..]), "loose").unwrap();
        std::fs::write(from.join("info/alternates"), "/somewhere/else/objects\n").unwrap();
        let host = dir.path().join("host-file");
        std::fs::write(&host, "secret").unwrap();
        std::os::unix::fs::symlink(&host, from.join("ab").join(&SHA.replace('0', "e")[2..])).unwrap();
        let cached = format!("pack-{SHA}");
        for ext in ["pack", "idx"] {
            std::fs::write(from.join("pack").join(format!("{cached}.{ext}")), "copy of the cache's").unwrap();
            std::fs::write(cache.join("pack").join(format!("{cached}.{ext}")), "the cache's").unwrap();
        }
        assert_eq!(import_objects(&from, &to, &cache).unwrap(), 1);
        assert!(to.join("ab").join(&SHA[2..]).exists());
        assert!(!to.join("info").exists() && !to.join("pack").exists());
    }
}
