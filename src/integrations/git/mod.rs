//! forgefleet's own bare mirror of a Forgejo repository, read with gix: the "trust nothing" half of receipts.
//!
//! One bare repository per Forgejo repository lives in forgefleet's data directory and is reused between tasks.
//! [`Mirror::fetch`] brings refs in over smart HTTP(S) with the bot's token (sent as an HTTP Basic password in an
//! in-memory header, never written to disk), negotiating with everything the mirror already holds so a later fetch
//! only transfers what is new. [`Mirror::inspect`] then answers, from git alone, what a pull request head contains
//! relative to its base: does the commit exist, where is the merge base, which commits lie between, which files
//! changed and by how many lines, and does the tree change at all.
//!
//! Everything here is blocking (gix with its blocking HTTP client); async callers run it in `spawn_blocking`.
//! See `docs/git.md` for the design notes and benchmark numbers.

mod inspect;
mod mirror;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use mirror::{FetchStats, Mirror, RefUpdate, Repacked};

/// The user name sent with the token in HTTP Basic auth. Forgejo ignores it when the password is a token.
pub const BASIC_AUTH_USER: &str = "forgefleet";

/// What [`Mirror::inspect`] found out about a head commit relative to a base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    /// The head commit is in the mirror. When `false`, every other field is empty.
    pub head_exists: bool,
    /// The best common ancestor of base and head, if they share history.
    pub merge_base: Option<String>,
    /// The commits reachable from head but not from base (`git log base..head`), newest first.
    pub commits: Vec<String>,
    /// The files that differ between the merge base's tree and head's tree (everything, as additions, when there
    /// is no merge base), with renames detected like `git diff -M` does by default.
    pub changed_files: Vec<FileChange>,
    /// The tree of head differs from the tree of the merge base: the commits change something.
    pub tree_changed: bool,
}

impl Inspection {
    fn missing_head() -> Inspection {
        Inspection {
            head_exists: false,
            merge_base: None,
            commits: Vec::new(),
            changed_files: Vec::new(),
            tree_changed: false,
        }
    }

    /// Lines added over all files.
    pub fn additions(&self) -> u64 {
        self.changed_files.iter().map(|f| f.additions).sum()
    }

    /// Lines deleted over all files.
    pub fn deletions(&self) -> u64 {
        self.changed_files.iter().map(|f| f.deletions).sum()
    }
}

/// One changed file. Binary files (and submodule entries) count 0 added and 0 deleted lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// The path in head (for deletions: the path in the merge base), `/`-separated.
    pub path: String,
    pub status: FileStatus,
    /// For renames, the path in the merge base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_path: Option<String>,
    pub additions: u64,
    pub deletions: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Added,
    Modified,
    Deleted,
    Renamed,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Added => "added",
            FileStatus::Modified => "modified",
            FileStatus::Deleted => "deleted",
            FileStatus::Renamed => "renamed",
        }
    }
}

impl std::fmt::Display for FileStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, by cause. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The mirror directory could not be created, opened or written to.
    #[error("git mirror at {path}: {message}")]
    Mirror { path: PathBuf, message: String },
    /// The caller passed something unusable: a URL, a refspec, an object id.
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    /// The server refused the credentials (or asked for some and there were none).
    #[error("authentication failed for {url}: {message}")]
    Auth { url: String, message: String },
    /// Could not talk to the server: connection refused, timeout, server error, broken stream or protocol.
    #[error("network error fetching from {url}: {message}")]
    Network { url: String, message: String },
    /// A repository on the server (404), a ref on the server, or a base ref in the mirror does not exist.
    #[error("not found: {what}")]
    NotFound { what: String },
    /// Objects or refs are damaged, in the mirror or in what the server sent.
    #[error("corrupt git data: {message}")]
    Corrupt { message: String },
}

impl GitError {
    /// True for a failure the same call might not hit again (network trouble, server errors).
    pub fn is_transient(&self) -> bool {
        matches!(self, GitError::Network { .. })
    }
}

/// Every message in a gix error chain, outermost first, without repeats: gix wraps a lot of context around the
/// one line that says what actually happened.
fn describe(err: &gix::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in err.iter_errors() {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    if parts.is_empty() { err.to_string() } else { parts.join(": ") }
}
