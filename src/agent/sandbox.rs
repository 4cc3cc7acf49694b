//! The sandbox around each attempt's agent: bubblewrap (Linux namespaces) with the attempt's checkout
//! read-write, a home of its own, a private `/tmp`, the system's toolchains and the adapter's CLI read-only,
//! its own PID namespace, and an environment built from an allow-list. Everything else of the host (the
//! runner's configuration, its work directory, other attempts, the runner's processes) is not there.
//! `sandbox = "none"` keeps only the allow-listed environment and the home of its own.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::adapters::{Adapter, Job};

/// `agent.sandbox`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Each attempt in its own bubblewrap sandbox.
    #[default]
    Bubblewrap,
    /// The agent runs as the runner's user, with the runner's view of the host.
    None,
}

/// `agent.network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network: model APIs, package registries.
    #[default]
    Host,
    /// A network namespace of its own with only a loopback device.
    None,
}

/// The user and group the agent runs as inside the sandbox: not root, so the CLIs' root checks (Claude Code
/// refuses `bypassPermissions` as root) see an ordinary user, and the sandbox's user namespace gives it no
/// privilege over the host. Outside, its files belong to the runner's user.
pub const INSIDE_UID: u32 = 1000;

/// System paths every sandbox sees read-only (those that exist; symbolic links stay links).
const SYSTEM_PATHS: [&str; 9] = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/nix/store"];

/// The pieces of `/etc` programs need for names, TLS, time and the dynamic linker. Not the rest: as the
/// runner's user mapped into the sandbox, the agent would own every root-owned file it can see.
const ETC_PATHS: [&str; 22] = [
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/pki",
    "/etc/crypto-policies",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/alternatives",
    "/etc/gitconfig",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/debian_version",
];

/// Variables every agent gets from the runner's environment (besides `LC_*`).
const BASE_ENV: [&str; 5] = ["PATH", "LANG", "LANGUAGE", "TERM", "TZ"];

/// How long the start-up probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a task's home (the CLI's sessions) is kept after its last attempt here, for a later round that
/// resumes the session; then it is removed.
pub const SESSION_KEEP: Duration = Duration::from_secs(3 * 24 * 60 * 60);

/// The file in a task's home folder whose time says when an attempt last used it.
const LAST_USED: &str = "last-used";

/// What every attempt's sandbox is built from, decided once at start.
#[derive(Debug)]
pub struct Sandbox {
    mode: SandboxMode,
    network: Network,
    /// The bubblewrap executable (with `mode` bubblewrap).
    bwrap: PathBuf,
    /// Read-only paths beyond [`SYSTEM_PATHS`]: `PATH` entries, the adapter's CLI, `sandbox_paths`.
    read_only: Vec<PathBuf>,
    passthrough: Vec<String>,
    /// `<work_dir>/homes`: one folder per task (`task-<id>`), kept across its attempts.
    homes: PathBuf,
    /// The runner's work directory: no sandbox sees it, even when an entry above includes it (only the
    /// attempt's own checkout and home in it, bound after it is covered).
    hidden: PathBuf,
    /// Files no sandbox sees even when an entry above includes them: the runner's configuration and
    /// secrets (covered with an empty file).
    hidden_files: Vec<PathBuf>,
}

/// The settings of `[agent]` the sandbox takes.
pub struct Settings<'a> {
    pub mode: SandboxMode,
    pub network: Network,
    pub paths: &'a [PathBuf],
    pub passthrough: &'a [String],
    /// The runner's configuration file and secret files.
    pub hide: Vec<PathBuf>,
}

impl Sandbox {
    /// Checks that bubblewrap runs here (a sandbox with the same namespaces as an attempt's, running `true`)
    /// and finds what every sandbox sees. An error says how to fix it; the runner refuses to start then.
    pub fn new(settings: Settings<'_>, work_dir: &Path, program: Option<&Path>) -> Result<Sandbox, String> {
        let mut read_only = Vec::new();
        let path = std::env::var_os("PATH").unwrap_or_default();
        // A `PATH` entry of `/` or `/etc` would show the whole host or its secrets: those come only through
        // `sandbox_paths`, where an operator says so.
        let broad = |d: &Path| [Path::new("/"), Path::new("/etc"), Path::new("/root"), Path::new("/home")].contains(&d);
        for dir in std::env::split_paths(&path).filter(|d| d.is_absolute() && d.is_dir() && !broad(d)) {
            read_only.push(dir);
        }
        if let Some(program) = program.and_then(|p| resolve(p, &path)) {
            read_only.extend(install_dirs(&program));
        }
        read_only.extend(settings.paths.iter().cloned());
        let sandbox = Sandbox {
            mode: settings.mode,
            network: settings.network,
            bwrap: resolve(Path::new("bwrap"), &path).unwrap_or_else(|| PathBuf::from("bwrap")),
            read_only,
            passthrough: settings.passthrough.to_vec(),
            homes: work_dir.join("homes"),
            hidden: work_dir.to_path_buf(),
            hidden_files: settings.hide.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect(),
        };
        std::fs::create_dir_all(&sandbox.homes)
            .map_err(|e| format!("cannot create {}: {e}", sandbox.homes.display()))?;
        if sandbox.mode == SandboxMode::Bubblewrap {
            sandbox.probe()?;
        }
        Ok(sandbox)
    }

    pub fn mode(&self) -> SandboxMode {
        self.mode
    }

    /// `bubblewrap 0.8.0`, or why bubblewrap cannot run here.
    pub fn version(&self) -> Result<String, String> {
        let out = std::process::Command::new(&self.bwrap)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bwrap.display()))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `true` in a sandbox made like an attempt's.
    fn probe(&self) -> Result<(), String> {
        let fix = "install bubblewrap (Debian and Ubuntu: `apt-get install bubblewrap`) and allow unprivileged user \
                   namespaces (`sysctl kernel.unprivileged_userns_clone=1`; on Ubuntu 24.04 also \
                   `sysctl kernel.apparmor_restrict_unprivileged_userns=0`), or set `sandbox = \"none\"` in [agent] \
                   to run agents without a sandbox (see docs/agent.md, \"Threat model\")";
        let Some(bwrap) = resolve(&self.bwrap, &std::env::var_os("PATH").unwrap_or_default()) else {
            return Err(format!("the agent sandbox needs bubblewrap, and `bwrap` is not on PATH: {fix}"));
        };
        let home = self.homes.join(format!(".probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let attempt = self.attempt(&home, &home, &home).map_err(|e| format!("preparing the sandbox probe: {e}"))?;
        let mut cmd = std::process::Command::new(&bwrap);
        cmd.args(attempt.bwrap_args()).arg("--").arg("true");
        cmd.env_clear().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let outcome = run_with_timeout(cmd, PROBE_TIMEOUT);
        drop(attempt);
        let _ = std::fs::remove_dir_all(&home);
        match outcome {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "bubblewrap ({}) cannot create the agent sandbox here ({}): {}; {fix}",
                bwrap.display(),
                crate::adapters::describe(out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("cannot run {}: {e}; {fix}", bwrap.display())),
        }
    }

    /// The sandbox of an attempt of task `task` working in `checkout`. Its home is the task's, kept across its
    /// attempts on this host so that a later attempt can resume the CLI's session (`resume`); without
    /// `resume` it starts empty. Inside the sandbox the checkout is at the same path for every attempt of the
    /// task (`<work_dir>/attempts/task-<id>/checkout`), since Claude Code finds its sessions by working
    /// directory; without a sandbox it is where it is.
    pub fn prepare(&self, checkout: &Path, task: i64, resume: bool) -> std::io::Result<Attempt<'_>> {
        let key = format!("task-{task}");
        let dir = self.homes.join(&key);
        self.prune(&dir);
        if !resume && dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let inside = match self.mode {
            SandboxMode::Bubblewrap => self.hidden.join("attempts").join(&key).join("checkout"),
            SandboxMode::None => checkout.to_path_buf(),
        };
        self.attempt(&dir, checkout, &inside)
    }

    /// Removes the homes of tasks no attempt used for [`SESSION_KEEP`], and leftovers of other layouts, but
    /// not `keep`.
    fn prune(&self, keep: &Path) {
        for entry in std::fs::read_dir(&self.homes).into_iter().flatten().flatten() {
            let path = entry.path();
            // A folder being made this instant has no such file yet, but a new time of its own.
            let used = std::fs::metadata(path.join(LAST_USED))
                .or_else(|_| std::fs::metadata(&path))
                .and_then(|m| m.modified())
                .ok();
            let stale = used.is_none_or(|t| t.elapsed().is_ok_and(|age| age > SESSION_KEEP));
            if path != keep && stale {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }

    fn attempt(&self, dir: &Path, checkout: &Path, inside: &Path) -> std::io::Result<Attempt<'_>> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(LAST_USED), "")?;
        let home = dir.join("home");
        let etc = dir.join("etc");
        // The temporary files of an earlier attempt are not kept; the CLI's state in the home is.
        if home.join("tmp").exists() {
            std::fs::remove_dir_all(home.join("tmp"))?;
        }
        for d in [&home, &home.join("tmp"), &etc] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(
            etc.join("passwd"),
            format!(
                "agent:x:{INSIDE_UID}:{INSIDE_UID}:forgefleet agent:{}:/bin/sh\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                home.display()
            ),
        )?;
        std::fs::write(etc.join("group"), format!("agent:x:{INSIDE_UID}:\nnogroup:x:65534:\n"))?;
        Ok(Attempt { sandbox: self, home, etc, checkout: checkout.to_path_buf(), inside: inside.to_path_buf() })
    }

    /// What a restarted runner finds of the homes its predecessor used: those of tasks not worked on for
    /// [`SESSION_KEEP`] are removed, the rest kept for a later round of their task.
    pub fn sweep(&self) {
        self.prune(Path::new(""));
    }

    /// Whether the runner's variable `name` reaches an agent of `adapter`.
    fn allowed(&self, name: &str, adapter: &dyn Adapter) -> bool {
        BASE_ENV.contains(&name)
            || name.starts_with("LC_")
            || adapter.env_prefixes().iter().any(|p| name.starts_with(p))
            || self.passthrough.iter().any(|p| p == name)
    }
}

/// One attempt's sandbox. Its home is the task's and stays (see [`Sandbox::prepare`]).
pub struct Attempt<'a> {
    sandbox: &'a Sandbox,
    home: PathBuf,
    etc: PathBuf,
    checkout: PathBuf,
    /// Where the agent finds `checkout`: the task's path inside the sandbox.
    inside: PathBuf,
}

impl Attempt<'_> {
    /// The agent's home, for its CLI's state and its `TMPDIR` (`<home>/tmp`).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The checkout's path as the agent sees it.
    pub fn inside_checkout(&self) -> &Path {
        &self.inside
    }

    /// The process to start for `job`: the adapter's command inside bubblewrap (or as it is with `sandbox =
    /// "none"`), its environment the allow-list: `PATH`, `LANG`, `LC_*`, `TERM`, `TZ`, the adapter's own
    /// variables, `env_passthrough`, then `HOME` and `TMPDIR` of this attempt, `env`, and what the adapter set.
    pub fn command(&self, adapter: &dyn Adapter, job: &Job<'_>, env: &[(&str, &str)]) -> tokio::process::Command {
        let inner = adapter.command(job);
        let inner = inner.as_std();
        let mut vars: Vec<(OsString, OsString)> =
            std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(|k| self.sandbox.allowed(k, adapter))).collect();
        let set = |vars: &mut Vec<(OsString, OsString)>, k: &OsStr, v: Option<&OsStr>| {
            vars.retain(|(name, _)| name != k);
            if let Some(v) = v {
                vars.push((k.to_os_string(), v.to_os_string()));
            }
        };
        set(&mut vars, "HOME".as_ref(), Some(self.home.as_os_str()));
        set(&mut vars, "TMPDIR".as_ref(), Some(self.home.join("tmp").as_os_str()));
        for (k, v) in adapter.prepare_home(&self.home) {
            set(&mut vars, k.as_ref(), Some(v.as_os_str()));
        }
        for (k, v) in env {
            set(&mut vars, k.as_ref(), Some(v.as_ref()));
        }
        for (k, v) in inner.get_envs() {
            set(&mut vars, k, v);
        }
        let mut cmd = match self.sandbox.mode {
            SandboxMode::None => {
                let mut cmd = tokio::process::Command::new(inner.get_program());
                cmd.args(inner.get_args());
                cmd
            }
            SandboxMode::Bubblewrap => {
                let mut cmd = tokio::process::Command::new(&self.sandbox.bwrap);
                cmd.args(self.bwrap_args()).arg("--").arg(inner.get_program()).args(inner.get_args());
                cmd
            }
        };
        // bubblewrap passes its own environment on: the allow-list is the whole of it.
        cmd.env_clear().envs(vars).current_dir(&self.checkout);
        cmd
    }

    /// bubblewrap's arguments up to the command.
    fn bwrap_args(&self) -> Vec<OsString> {
        let s = self.sandbox;
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&OsStr]| a.extend(items.iter().map(|i| i.to_os_string()));
        let uid = INSIDE_UID.to_string();
        push(&["--unshare-user".as_ref(), "--uid".as_ref(), uid.as_ref(), "--gid".as_ref(), uid.as_ref()]);
        // PID: the runner's processes are not there, and when the sandbox's first process ends every process
        // in it ends. A session of its own: no TIOCSTI into a terminal the runner might have.
        push(&["--unshare-pid".as_ref(), "--unshare-ipc".as_ref(), "--unshare-uts".as_ref()]);
        push(&["--unshare-cgroup-try".as_ref(), "--die-with-parent".as_ref(), "--new-session".as_ref()]);
        if s.network == Network::None {
            push(&["--unshare-net".as_ref()]);
        }
        push(&[
            "--proc".as_ref(),
            "/proc".as_ref(),
            "--dev".as_ref(),
            "/dev".as_ref(),
            "--tmpfs".as_ref(),
            "/tmp".as_ref(),
        ]);
        let mut seen = BTreeSet::new();
        let system = SYSTEM_PATHS.iter().chain(ETC_PATHS.iter()).map(PathBuf::from);
        for path in system.chain(s.read_only.iter().cloned()) {
            if !path.is_absolute() || path.starts_with(&s.hidden) || !seen.insert(path.clone()) {
                continue;
            }
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() && SYSTEM_PATHS.iter().any(|p| path == Path::new(p)) => {
                    // Merged /usr: `/bin -> usr/bin` stays a link.
                    if let Ok(target) = std::fs::read_link(&path) {
                        push(&["--symlink".as_ref(), target.as_os_str(), path.as_os_str()]);
                    }
                }
                Ok(_) => push(&["--ro-bind".as_ref(), path.as_os_str(), path.as_os_str()]),
                Err(_) => {}
            }
        }
        // Whatever of the work directory and the runner's files a read-only path above brought in is covered.
        if seen.iter().any(|p| s.hidden.starts_with(p)) {
            push(&["--tmpfs".as_ref(), s.hidden.as_os_str()]);
        }
        for file in s.hidden_files.iter().filter(|f| seen.iter().any(|p| f.starts_with(p))) {
            push(&["--ro-bind".as_ref(), "/dev/null".as_ref(), file.as_os_str()]);
        }
        push(&["--ro-bind".as_ref(), self.etc.join("passwd").as_os_str(), "/etc/passwd".as_ref()]);
        push(&["--ro-bind".as_ref(), self.etc.join("group").as_os_str(), "/etc/group".as_ref()]);
        push(&["--bind".as_ref(), self.home.as_os_str(), self.home.as_os_str()]);
        push(&["--bind".as_ref(), self.checkout.as_os_str(), self.inside.as_os_str()]);
        for path in git_dirs(&self.checkout, &s.hidden) {
            push(&["--ro-bind".as_ref(), path.as_os_str(), path.as_os_str()]);
        }
        push(&["--chdir".as_ref(), self.inside.as_os_str()]);
        a
    }
}

/// The git directories the checkout's git needs besides the checkout itself, read-only: a worktree's own
/// and common directories (`.git` is a `gitdir:` file), or the object stores it borrows from (alternates).
/// Only paths inside the runner's work directory are taken.
fn git_dirs(checkout: &Path, work_dir: &Path) -> Vec<PathBuf> {
    let dot_git = checkout.join(".git");
    let mut dirs = Vec::new();
    if let Ok(text) = std::fs::read_to_string(&dot_git)
        && let Some(gitdir) = text.trim().strip_prefix("gitdir:")
    {
        let gitdir = checkout.join(gitdir.trim());
        if let Ok(common) = std::fs::read_to_string(gitdir.join("commondir")) {
            dirs.push(gitdir.join(common.trim()));
        }
        dirs.push(gitdir);
    } else if let Ok(text) = std::fs::read_to_string(dot_git.join("objects/info/alternates")) {
        let objects = dot_git.join("objects");
        dirs.extend(
            text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).map(|l| objects.join(l.trim())),
        );
    }
    dirs.into_iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .filter(|d| d.starts_with(work_dir) && !checkout.starts_with(d))
        .collect()
}

/// `program` as an absolute path: as it is when it has a `/`, else the first match on `path`.
pub fn resolve(program: &Path, path: &OsStr) -> Option<PathBuf> {
    if program.components().count() > 1 || program.is_absolute() {
        return std::path::absolute(program).ok().filter(|p| p.is_file());
    }
    std::env::split_paths(path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// What a CLI at `program` needs to run: its folder and, for an npm install (`node_modules/.bin/claude` is
/// a link into the package), the whole `node_modules` it lives in (Codex's native binary is a package of
/// its own).
fn install_dirs(program: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for p in [program.to_path_buf(), std::fs::canonicalize(program).unwrap_or_default()] {
        if let Some(modules) = p.ancestors().find(|a| a.file_name() == Some(OsStr::new("node_modules"))) {
            dirs.push(modules.to_path_buf());
        } else if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            dirs.push(parent.to_path_buf());
        }
    }
    dirs
}

/// Runs `cmd` to its end, killed after `limit`.
fn run_with_timeout(mut cmd: std::process::Command, limit: Duration) -> std::io::Result<std::process::Output> {
    let child = cmd.spawn()?;
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: kill only sends a signal to the child started above, not yet reaped by the waiter.
            unsafe { libc::kill(id as i32, libc::SIGKILL) };
            Err(std::io::Error::other(format!("it did not finish within {} s", limit.as_secs())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_program_is_found_on_the_path_and_a_relative_one_is_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tool"), "").unwrap();
        let path = std::env::join_paths(["/nonexistent".into(), dir.path().to_path_buf()]).unwrap();
        assert_eq!(resolve(Path::new("tool"), &path), Some(dir.path().join("tool")));
        assert_eq!(resolve(Path::new("missing"), &path), None);
        assert_eq!(resolve(&dir.path().join("tool"), OsStr::new("")), Some(dir.path().join("tool")));
    }

    #[test]
    fn an_npm_cli_brings_its_whole_node_modules() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("node_modules");
        std::fs::create_dir_all(modules.join(".bin")).unwrap();
        std::fs::create_dir_all(modules.join("pkg/bin")).unwrap();
        std::fs::write(modules.join("pkg/bin/cli.js"), "").unwrap();
        std::os::unix::fs::symlink("../pkg/bin/cli.js", modules.join(".bin/cli")).unwrap();
        let dirs = install_dirs(&modules.join(".bin/cli"));
        assert!(dirs.iter().all(|d| d.ends_with("node_modules")), "{dirs:?}");
        assert_eq!(install_dirs(Path::new("/nonexistent/bin/tool")), [PathBuf::from("/nonexistent/bin")]);
    }
}
