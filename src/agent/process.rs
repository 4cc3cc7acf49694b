//! One run of an agent's process: started in the worktree in its sandbox (see [`super::sandbox`]), in a
//! process group of its own, the prompt written to its standard input, its output read line by line (progress for operators, the last lines for the
//! adapter's verdict), and stopped as a whole group when the task is cancelled or runs past its deadline.

use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::sandbox::{Sandbox, SandboxMode};
use crate::adapters::{Adapter, Job, Tail};

/// Lines kept of each stream for the adapter's verdict.
const TAIL_LINES: usize = 200;
/// How long a stopped group gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum RunEnd {
    Exited(ExitStatus, Tail),
    /// Stopped because the server cancelled the task or the runner is shutting down.
    Stopped,
    TimedOut,
    /// It printed nothing (on either stream) for this long, and was stopped; what it printed before.
    Idle(Duration, Tail),
    /// It could not be started at all.
    NotStarted(String),
}

/// Runs `adapter` for `job`; progress lines go to `progress` (dropped when that is full: the agent never
/// waits for the server). Returns when the process has ended, or has been stopped because `cancel` turned
/// true, `limit` passed, or (with `idle` set) it printed nothing for that long.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    adapter: &Arc<dyn Adapter>,
    sandbox: &Sandbox,
    job: &Job<'_>,
    pid_file: &Path,
    env: &[(&str, &str)],
    progress: mpsc::Sender<String>,
    mut cancel: watch::Receiver<bool>,
    limit: Duration,
    idle: Option<Duration>,
) -> RunEnd {
    let attempt = match sandbox.prepare(job.worktree, job.task_id, job.resume.is_some()) {
        Ok(a) => a,
        Err(e) => return RunEnd::NotStarted(format!("cannot prepare the agent's sandbox: {e}")),
    };
    // The adapter names the checkout as the agent sees it (Codex's `-C`).
    let job = &Job { worktree: attempt.inside_checkout(), ..*job };
    let (task_id, attempt_no, issue) = (job.task_id.to_string(), job.attempt.to_string(), job.issue.to_string());
    let mut vars: Vec<(&str, &str)> = env.to_vec();
    vars.extend([
        ("FORGEFLEET_TASK_ID", task_id.as_str()),
        ("FORGEFLEET_ATTEMPT", attempt_no.as_str()),
        ("FORGEFLEET_REPO", job.repo),
        ("FORGEFLEET_ISSUE", issue.as_str()),
        ("FORGEFLEET_BRANCH", job.branch),
    ]);
    // The environment is an allow-list: the runner's secrets and anything else of its own stay out.
    let mut cmd = attempt.command(adapter.as_ref(), job, &vars);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // bubblewrap leads the group; the sandbox's processes (a session of their own) die with it.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return RunEnd::NotStarted(format!("cannot start the {} agent: {e}", adapter.kind().as_str())),
    };
    let group = child.id().map(|id| id as i32);
    // A runner killed outright cannot stop its agent; the next one finds the group here (see
    // `Workspace::sweep`).
    if let Some(pgid) = group {
        let _ = std::fs::write(pid_file, pgid.to_string());
    }
    // In the sandbox the agent's processes are a session of their own under bubblewrap's; a runner killed
    // while bubblewrap starts can leave that session behind (its parent-death signal is not armed yet), so
    // the next runner finds it here too. Looked for beside the run, never in its way: an agent that ends
    // before its sandbox's first process is seen must not wait for the search.
    let inner_file = pid_file.with_extension("sandbox.pgid");
    let recorder = group.filter(|_| sandbox.mode() == SandboxMode::Bubblewrap).map(|pgid| {
        let file = inner_file.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                if let Some(inner) = first_child(pgid) {
                    let _ = std::fs::write(&file, inner.to_string());
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    let input = adapter.stdin(job);
    let mut stdin = child.stdin.take();
    let feed = async move {
        if let (Some(text), Some(pipe)) = (input, stdin.as_mut()) {
            // An agent that does not read its input closes the pipe; that is not an error.
            let _ = pipe.write_all(text.as_bytes()).await;
        }
        drop(stdin);
    };
    let shown = adapter.clone();
    let filter: Filter = Box::new(move |line| shown.progress(line));
    let heard = Arc::new(Mutex::new(Instant::now()));
    let stdout = child
        .stdout
        .take()
        .map(|s| tokio::spawn(read_lines(s, heard.clone(), Some((filter, progress))).in_current_span()));
    let stderr = child.stderr.take().map(|s| tokio::spawn(read_lines(s, heard.clone(), None).in_current_span()));

    let ended = async {
        feed.await;
        child.wait().await
    };
    let silence = async {
        let Some(idle) = idle else { return std::future::pending().await };
        loop {
            let last = *heard.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= idle {
                return;
            }
            tokio::time::sleep(idle - last.elapsed()).await;
        }
    };
    let outcome = tokio::select! {
        status = ended => Ended::Exited(status),
        _ = cancel.wait_for(|stop| *stop) => Ended::Stopped,
        _ = tokio::time::sleep(limit) => Ended::TimedOut,
        () = silence => Ended::Idle,
    };
    // Whatever the agent left running in its group ends with it.
    stop_group(group, &mut child, !matches!(outcome, Ended::Exited(Ok(_)))).await;
    if let Some(recorder) = recorder {
        recorder.abort();
        let _ = recorder.await;
    }
    let _ = std::fs::remove_file(pid_file);
    let _ = std::fs::remove_file(&inner_file);
    let tail = Tail {
        stdout: match stdout {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        },
        stderr: match stderr {
            Some(h) => h.await.unwrap_or_default(),
            None => Vec::new(),
        },
    };
    match outcome {
        Ended::Stopped => RunEnd::Stopped,
        Ended::TimedOut => RunEnd::TimedOut,
        Ended::Idle => RunEnd::Idle(idle.unwrap_or_default(), tail),
        Ended::Exited(Err(e)) => RunEnd::NotStarted(format!("waiting for the agent: {e}")),
        Ended::Exited(Ok(status)) => RunEnd::Exited(status, tail),
    }
}

/// The first child of process `pid` (bubblewrap's: the sandbox's first process), once it has one.
fn first_child(pid: i32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Whether process `pid` is a bubblewrap sandbox of an agent working in `worktrees` (its working directory
/// is in a mount namespace of its own, so its command line tells: `--chdir <checkout>`).
pub(super) fn sandbox_of(pid: i32, worktrees: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_bwrap = args.first().is_some_and(|a| a.ends_with(b"bwrap"));
    is_bwrap
        && args
            .windows(2)
            .any(|w| w[0] == b"--chdir" && Path::new(std::ffi::OsStr::from_bytes(w[1])).starts_with(worktrees))
}

/// How the wait for the agent ended.
enum Ended {
    Exited(std::io::Result<ExitStatus>),
    Stopped,
    TimedOut,
    Idle,
}

type Filter = Box<dyn Fn(&str) -> Option<String> + Send>;

async fn read_lines(
    stream: impl tokio::io::AsyncRead + Unpin,
    heard: Arc<Mutex<Instant>>,
    progress: Option<(Filter, mpsc::Sender<String>)>,
) -> Vec<String> {
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        *heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
        if let Some((filter, tx)) = &progress
            && let Some(shown) = filter(&line)
        {
            let _ = tx.try_send(shown);
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    tail.into()
}

/// SIGTERM to the group, then SIGKILL after [`GRACE`] if the main process is still there (`forced`: it was
/// stopped, not ended by itself). A group whose main process ended gets SIGKILL for its leftovers at once.
async fn stop_group(group: Option<i32>, child: &mut tokio::process::Child, forced: bool) {
    let Some(pgid) = group else { return };
    if forced {
        // SAFETY: killpg only sends a signal; the group is the one this child leads.
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
        if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            let _ = child.wait().await;
        }
    }
    // Leftovers (a background job of the agent's) would hold the output pipes open.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
}
