//! The parts of Forgejo's JSON that forgefleet reads (see `../shared/forgejo/openapi-forgejo-17.json`).
//! Unknown fields are ignored, so newer Forgejo versions with more fields still parse.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: i64,
    pub login: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub color: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub exclusive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub id: i64,
    pub number: u64,
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// `open` or `closed`.
    pub state: String,
    #[serde(default)]
    pub labels: Vec<Label>,
    pub user: User,
    #[serde(default)]
    pub assignees: Option<Vec<User>>,
    pub updated_at: String,
    /// Set when the "issue" is a pull request.
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
    #[serde(default)]
    pub html_url: String,
}

impl Issue {
    pub fn is_open(&self) -> bool {
        self.state == "open"
    }
    pub fn is_pull(&self) -> bool {
        self.pull_request.as_ref().is_some_and(|p| !p.is_null())
    }
    pub fn label_names(&self) -> Vec<String> {
        self.labels.iter().map(|l| l.name.clone()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: i64,
    #[serde(default)]
    pub body: String,
    pub user: User,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRef {
    pub full_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    #[serde(rename = "ref")]
    pub name: String,
    pub sha: String,
    #[serde(default)]
    pub repo: Option<RepoRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    pub title: String,
    #[serde(default)]
    pub body: String,
    pub state: String,
    #[serde(default)]
    pub merged: bool,
    pub head: Branch,
    pub base: Branch,
    #[serde(default)]
    pub html_url: String,
    /// Who opened it.
    #[serde(default)]
    pub user: Option<User>,
    /// Who merged it, once merged.
    #[serde(default)]
    pub merged_by: Option<User>,
    /// Whether Forgejo would merge it now: `false` on conflicts, but also while it is still checking after a
    /// push to the base, after an error, and for a work-in-progress title. Missing: not known.
    #[serde(default)]
    pub mergeable: Option<bool>,
}

/// `GET /repos/{o}/{r}/commits/{ref}/status`: the latest status of each context on a commit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CombinedStatus {
    /// The worst of them: `pending`, `success`, `error`, `failure`, `warning` (empty with none).
    #[serde(default)]
    pub state: String,
    /// Forgejo writes `null` when there are none.
    #[serde(default)]
    pub statuses: Option<Vec<StatusEntry>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    #[serde(default)]
    pub context: String,
    /// The status's state (Forgejo names the field `status`).
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub target_url: Option<String>,
}

impl CombinedStatus {
    /// The statuses as the core judges them.
    pub fn statuses(&self) -> Vec<crate::core::CommitStatus> {
        self.statuses
            .iter()
            .flatten()
            .map(|s| crate::core::CommitStatus {
                context: s.context.clone(),
                state: s.status.clone(),
                description: s.description.clone().unwrap_or_default(),
                target_url: s.target_url.clone().unwrap_or_default(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMeta {
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub sha: String,
    pub commit: CommitMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    pub filename: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub additions: u64,
    #[serde(default)]
    pub deletions: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// `none`, `read`, `write`, `admin` or `owner`.
    pub permission: String,
}

impl Permission {
    /// Whether this permission lets a person command the bot.
    pub fn can_write(&self) -> bool {
        matches!(self.permission.as_str(), "write" | "admin" | "owner")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub encoding: Option<String>,
    pub sha: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    pub full_name: String,
    pub default_branch: String,
    #[serde(default)]
    pub clone_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub id: i64,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
    /// The kinds it delivers, as Forgejo lists them (`pull_request_review_rejected`, not the group name).
    #[serde(default)]
    pub events: Vec<String>,
}

impl Hook {
    /// Whether it delivers reviews that request changes.
    pub fn delivers_reviews(&self) -> bool {
        self.events.iter().any(|e| e == "pull_request_review_rejected" || e == "pull_request_review")
    }
}

/// `GET /repos/{o}/{r}/pulls/{n}/reviews`: one review of a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReview {
    pub id: i64,
    /// `APPROVED`, `PENDING`, `COMMENT`, `REQUEST_CHANGES`, `REQUEST_REVIEW`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub body: String,
    /// The reviewer; Forgejo writes `null` for a team's review request.
    #[serde(default)]
    pub user: Option<User>,
    /// The commit reviewed.
    #[serde(default)]
    pub commit_id: String,
    /// The pull request's head has moved since.
    #[serde(default)]
    pub stale: bool,
    #[serde(default)]
    pub dismissed: bool,
}

impl PullReview {
    /// A review that asks for changes of commit `head` and still stands (not dismissed).
    pub fn asks_changes_of(&self, head: &str) -> bool {
        self.state == "REQUEST_CHANGES" && !self.dismissed && self.commit_id.eq_ignore_ascii_case(head)
    }
}

/// `GET /repos/{o}/{r}/pulls/{n}/reviews/{id}/comments`: one line comment of a review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullReviewComment {
    pub id: i64,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub path: String,
    /// The line in the new file (0 for a comment on the old side).
    #[serde(default)]
    pub position: u64,
    /// The line in the old file (0 for a comment on the new side).
    #[serde(default)]
    pub original_position: u64,
}
