//! A receipt: the agent's claim that it did the work. A claim, never a fact, until validation checks it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::CommitSha;

/// Tokens the agent's model used. Providers report more counters than these two; they are kept as given.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(flatten)]
    pub other: BTreeMap<String, u64>,
}

/// What a failed attempt spent before it failed, as its agent reports it: kept with the failure, so that the
/// spend of failed attempts is not lost.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Spent {
    #[serde(default)]
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// Something the agent produced besides the pull request: a log, a report, a preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What an agent says it did for one attempt of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub pr_number: u64,
    pub head_sha: CommitSha,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
}

/// One thing forgefleet checked about a receipt, and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `pull_request_exists`, `refers_to_issue`, `head_branch`, `base_branch`, `opened_by_agent`,
    /// `not_claimed_before`, `head_matches`, `commits_change_something` (docs/receipts.md).
    pub name: String,
    pub passed: bool,
    /// What was seen, for people: why it passed or failed.
    pub detail: String,
}

/// A file the pull request changes, as git says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    /// `added`, `modified`, `deleted`, `renamed`.
    pub status: String,
    pub additions: u64,
    pub deletions: u64,
}

/// What validation found about one receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Validation {
    pub checks: Vec<Check>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileChange>,
}

impl Validation {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }
    /// The failed checks, for a failure message: "head_matches: ...; refers_to_issue: ...".
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
