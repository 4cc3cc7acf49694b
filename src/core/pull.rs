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

/// A completed task's pull request that no longer merges: its base branch moved and Forgejo says it conflicts.
/// Decided once per head: the same head conflicting again (the base moved on) is not told twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullConflict {
    pub pr_number: u64,
    /// The pull request's head as Forgejo showed it, conflicting.
    pub head_sha: String,
    pub base_branch: String,
    /// The base branch's tip it conflicts with.
    pub base_sha: String,
    pub then: OnConflict,
}

/// What forgefleet did about a conflicted pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// `auto_rebase`: round `round` of changes merges the base branch into the pull request's branch.
    Merge { round: u32 },
    /// `auto_rebase` is off: people were told.
    Tell,
    /// `auto_rebase` is on but the task's rounds of changes (`review_rounds`) are spent: people were told.
    RoundsSpent { rounds: u32 },
}

impl PullConflict {
    /// Whether `name` is a branch name of letters, digits and `-_./` only (no backtick, space or markup): the only
    /// kind forgefleet writes into a comment, a chat line or a prompt.
    pub fn plain_branch(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 200
            && !name.starts_with(['-', '.', '/'])
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    }

    /// What the agent of a merging round is asked to do. The receipt check wants the new head to descend from
    /// the verified one, so the base is merged in, never rebased onto.
    pub fn merge_instruction(&self) -> String {
        let base = &self.base_branch;
        format!(
            "The base branch `{base}` moved and pull request #{pr} no longer merges into it: they conflict.\n\n\
             Merge the base branch into this branch (`git merge origin/{base}`; the checkout has it fetched), \
             resolve every conflict so that both this pull request's changes and what changed on `{base}` are \
             kept, and commit the merge. Do not rebase, reset or rewrite the branch's history: the new head must \
             descend from the current one (no force-push).",
            pr = self.pr_number
        )
    }
}

/// One comment of a review, where Forgejo says it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewNote {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub body: String,
}

/// A person asked for changes on a completed task's pull request: the next round works on the same branch and
/// pull request, on top of the head forgefleet verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowUp {
    /// 1 for the first round of changes after the task first completed.
    pub round: u32,
    pub pr_number: u64,
    /// The branch of the pull request, which every attempt of the round is assigned.
    pub branch: String,
    /// The head verified last: the round's work must build on it.
    pub verified_head: String,
    /// Who asked (a Forgejo login).
    pub by: String,
    /// What they asked for: the review's text or the `/fleet fix` instruction.
    pub instruction: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<ReviewNote>,
    /// The review it came from, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_id: Option<i64>,
}
