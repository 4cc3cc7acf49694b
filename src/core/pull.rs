//! The pull request's end, after its task completed: merged, or closed without merging and then what the
//! repository wants (`on_pr_closed`).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::time::Timestamp;

/// What a task does when its pull request is closed without being merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPullClosed {
    /// Queue it again as a fresh attempt (a fresh branch and retry budget).
    Requeue,
    /// Mark it failed: a person turned the work down.
    Fail,
    /// Record it and leave the task completed.
    #[default]
    Nothing,
}

impl OnPullClosed {
    pub fn as_str(self) -> &'static str {
        match self {
            OnPullClosed::Requeue => "requeue",
            OnPullClosed::Fail => "fail",
            OnPullClosed::Nothing => "nothing",
        }
    }
}

impl fmt::Display for OnPullClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a completed task's pull request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullEnd {
    pub pr_number: u64,
    pub merged: bool,
    /// Who merged it (Forgejo's `merged_by`); for a close, who closed it when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub at: Timestamp,
}
