//! The runner's secrets: the Forgejo token and the registration token, from 0600 files or from
//! `FORGEFLEET_AGENT_*` variables. `/proc/<pid>/environ` keeps the environment a process started with,
//! whatever it removes later, and any process of the same user may read it. So a runner started with those
//! variables re-executes itself at once without them, handing their values to its new image through an
//! inherited pipe: no process of the runner's then has them in its start-up environment.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::fd::FromRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;

use crate::config::Secret;

pub const FORGEJO_TOKEN: &str = "FORGEFLEET_AGENT_FORGEJO_TOKEN";
pub const REGISTRATION_TOKEN: &str = "FORGEFLEET_AGENT_REGISTRATION_TOKEN";
/// The variables that carry secrets; never in the runner's environment after [`reexec_without_secrets`].
pub const VARIABLES: [&str; 2] = [FORGEJO_TOKEN, REGISTRATION_TOKEN];
/// Names the inherited pipe the values come through (not a secret itself).
const FD_VARIABLE: &str = "FORGEFLEET_AGENT_SECRETS_FD";
const MAX_BYTES: usize = 32 * 1024;

/// A secret from a file only its owner may read (mode 0600 or 0400); one line, the trailing newline cut.
pub fn read_file(path: &Path) -> Result<Secret, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} may be read by others (mode {mode:o}): `chmod 600 {}` (it holds a secret)",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(value))
}

/// In a runner started with secrets in its environment: replaces the process image (same process id, same
/// arguments) with one whose environment lacks them, the values passed through a pipe. Returns only when
/// there is nothing to do; an error when the new image cannot be started.
pub fn reexec_without_secrets() -> Result<(), String> {
    if std::env::var_os(FD_VARIABLE).is_some() {
        return Ok(());
    }
    let found: Vec<(&str, String)> =
        VARIABLES.iter().filter_map(|v| std::env::var(v).ok().map(|value| (*v, value))).collect();
    if found.is_empty() {
        return Ok(());
    }
    let mut payload = String::new();
    for (name, value) in &found {
        payload.push_str(&format!("{name}={value}\0"));
    }
    if payload.len() > MAX_BYTES {
        return Err(format!("the FORGEFLEET_AGENT_* secrets are longer than {MAX_BYTES} bytes"));
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors; both are closed on exec unless cleared below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("cannot make a pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptors were just made and are owned here.
    let (read_end, mut write_end) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    // The payload fits the pipe's buffer (64 KiB), so it is written before the new image reads it.
    write_end.write_all(payload.as_bytes()).map_err(|e| format!("cannot write to the pipe: {e}"))?;
    drop(write_end);
    // SAFETY: clears close-on-exec on the read end only, which the new image inherits.
    unsafe { libc::fcntl(fds[0], libc::F_SETFD, 0) };
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(std::env::args_os().skip(1)).env(FD_VARIABLE, fds[0].to_string());
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    for (name, _) in &found {
        cmd.env_remove(name);
    }
    let error = cmd.exec();
    drop(read_end);
    Err(format!("cannot re-execute the runner without its secrets in the environment: {error}"))
}

/// The values the first image passed on (empty when it passed none), read from the pipe once.
pub fn inherited() -> &'static HashMap<String, String> {
    static PASSED: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
    PASSED.get_or_init(read_pipe)
}

fn read_pipe() -> HashMap<String, String> {
    let Some(fd) = std::env::var(FD_VARIABLE).ok().and_then(|v| v.parse::<i32>().ok()) else {
        return HashMap::new();
    };
    // SAFETY: fstat only reads the descriptor's type; only a pipe is taken over.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if fd < 3 || unsafe { libc::fstat(fd, &mut stat) } != 0 || stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return HashMap::new();
    }
    // SAFETY: the descriptor is the inherited pipe, owned (and closed) here.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = String::new();
    let _ = (&mut pipe).take(MAX_BYTES as u64).read_to_string(&mut text);
    text.split('\0')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| VARIABLES.contains(name))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}
