//! What each template is given: one type per template, so a template and the code that fills it cannot drift
//! apart silently. A template that uses a name its context does not have fails at load time (the check in
//! `mod.rs` compares every name a template reads with the fields of its context's example), and a value that is
//! missing at render time is an error, never empty text.

use serde::Serialize;

use crate::core::FileChange;

/// A template's context: the file it fills and an example with every field present.
pub trait TemplateContext: Serialize {
    /// The template's file name under `templates/` (and in `[server] templates_dir`).
    const NAME: &'static str;
    /// A value with every optional field set and every list non-empty: the load-time check renders it.
    fn example() -> Self;
}

/// `comment_started.md`: an agent took the task.
#[derive(Debug, Clone, Serialize)]
pub struct StartedComment {
    pub agent: String,
    pub attempt: u32,
}

/// `comment_completed.md`: the receipt checked out.
#[derive(Debug, Clone, Serialize)]
pub struct CompletedComment {
    pub agent: String,
    pub attempt: u32,
    pub repo: String,
    /// "3 min", when the start is known.
    pub duration: Option<String>,
    pub pr_number: Option<u64>,
    /// The pull request's web page.
    pub pr_url: Option<String>,
    /// The agent's own summary: text from elsewhere, to be fenced.
    pub summary: String,
    /// "1200 in / 300 out".
    pub tokens: Option<String>,
    /// In dollars, two decimals.
    pub cost: Option<String>,
    /// The files git counted (not the agent).
    pub files: Vec<FileChange>,
    /// What each check forgefleet made saw.
    pub checks: Vec<String>,
}

/// `comment_retrying.md`: an attempt failed and another one is queued.
#[derive(Debug, Clone, Serialize)]
pub struct RetryingComment {
    pub attempt: u32,
    pub class: String,
    pub message: String,
    pub explanation: String,
    pub retries_left: u32,
    pub not_before: String,
}

/// `comment_failed.md`: the retries of a class are used up.
#[derive(Debug, Clone, Serialize)]
pub struct FailedComment {
    pub attempt: u32,
    pub class: String,
    pub message: String,
    pub explanation: String,
}

/// `comment_cancelled.md`.
#[derive(Debug, Clone, Serialize)]
pub struct CancelledComment {
    pub attempt: u32,
    pub reason: String,
    pub todo_label: String,
    pub was_running: bool,
}

/// `comment_pull_ended.md`: the completed task's pull request was merged, or closed without merging.
#[derive(Debug, Clone, Serialize)]
pub struct PullEndedComment {
    pub pr_number: u64,
    pub merged: bool,
    /// Who merged it (or closed it, when known): a Forgejo login.
    pub by: Option<String>,
    /// After a close without merging: `requeue`, `fail` or `nothing` (`on_pr_closed`).
    pub then: String,
    pub todo_label: String,
}

/// `comment_blocked.md`: the agent asked a question and waits for `/answer`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockedComment {
    pub attempt: u32,
    /// The agent's question: text from elsewhere, to be fenced.
    pub question: String,
    /// The `status:todo` label, for how to give up waiting otherwise.
    pub todo_label: String,
}

/// `reply_refused.md`: someone without write access gave a command.
#[derive(Debug, Clone, Serialize)]
pub struct RefusedReply {
    pub author: String,
    pub repo: String,
    pub permission: String,
    pub command: String,
}

/// `reply_invalid.md`: a command line that does not parse.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidReply {
    pub author: String,
    pub line: String,
    pub why: String,
}

/// `reply_failed.md`: a command that parsed and could not apply.
#[derive(Debug, Clone, Serialize)]
pub struct FailedReply {
    pub author: String,
    pub command: String,
    pub why: String,
}

/// A round of changes as the agent is told it (`follow_up` in `agent_prompt.md`).
#[derive(Debug, Clone, Serialize)]
pub struct FollowUpPrompt {
    /// Who asked (a Forgejo login).
    pub by: String,
    pub pr_number: u64,
    /// The review's text or the `/fleet fix` instruction: a person's text, to be fenced. May be empty.
    pub instruction: String,
    /// The review's line comments.
    pub notes: Vec<NotePrompt>,
}

/// One comment of a review: its file and line when it has them, and its text (a person's, to be fenced).
#[derive(Debug, Clone, Serialize)]
pub struct NotePrompt {
    pub path: Option<String>,
    pub line: Option<u64>,
    pub body: String,
}

impl From<&crate::core::FollowUp> for FollowUpPrompt {
    fn from(f: &crate::core::FollowUp) -> Self {
        FollowUpPrompt {
            by: f.by.clone(),
            pr_number: f.pr_number,
            instruction: f.instruction.trim().to_string(),
            notes: f
                .notes
                .iter()
                .map(|n| NotePrompt { path: n.path.clone(), line: n.line, body: n.body.trim().to_string() })
                .collect(),
        }
    }
}

/// `agent_prompt.md`: what the coding agent is told.
#[derive(Debug, Clone, Serialize)]
pub struct AgentPrompt {
    pub repo: String,
    pub issue: u64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    /// The repository's own instructions (`prompt` in its `.forgejo/fleet.yaml`).
    pub instructions: Option<String>,
    pub branch: String,
    pub base_branch: String,
    pub attempt: u32,
    /// What the previous attempt's work ran into, when it is for the agent to fix: its pull request's CI
    /// failed (`checks_failed`) or it did not check out (`verification_failed`). The branch holds that work.
    pub previous_failure: Option<String>,
    /// A round of changes a person asked for on the task's pull request: who, what, and the review's comments
    /// with their file and line. The branch holds the pull request's work.
    pub follow_up: Option<FollowUpPrompt>,
    /// The question an earlier attempt asked a person, when one did: the person's text and the agent's, to
    /// be fenced.
    pub question: Option<String>,
    /// The person's answer to it, once given.
    pub answer: Option<String>,
    /// The earlier attempt this one goes on from, and what it said it did (its receipt's summary, the agent's
    /// text, to be fenced): a fresh session learns the history from it.
    pub earlier_attempt: Option<u32>,
    pub earlier_summary: Option<String>,
    /// Where in the checkout the agent writes a question of its own (`core::QUESTION_FILE`).
    pub question_file: String,
}

impl TemplateContext for StartedComment {
    const NAME: &'static str = "comment_started.md";
    fn example() -> Self {
        StartedComment { agent: "claude-1".into(), attempt: 1 }
    }
}

impl TemplateContext for CompletedComment {
    const NAME: &'static str = "comment_completed.md";
    fn example() -> Self {
        CompletedComment {
            agent: "claude-1".into(),
            attempt: 2,
            repo: "acme/app".into(),
            duration: Some("3 min".into()),
            pr_number: Some(14),
            pr_url: Some("https://forgejo.example.com/acme/app/pulls/14".into()),
            summary: "Fixed it.".into(),
            tokens: Some("1200 in / 300 out".into()),
            cost: Some("0.12".into()),
            files: vec![FileChange { path: "src/a.rs".into(), status: "modified".into(), additions: 3, deletions: 1 }],
            checks: vec!["pull request #14 is open".into()],
        }
    }
}

impl TemplateContext for RetryingComment {
    const NAME: &'static str = "comment_retrying.md";
    fn example() -> Self {
        RetryingComment {
            attempt: 1,
            class: "agent_error".into(),
            message: "exit status 1".into(),
            explanation: "The agent's command failed.".into(),
            retries_left: 1,
            not_before: "2026-11-24T04:10:00Z".into(),
        }
    }
}

impl TemplateContext for FailedComment {
    const NAME: &'static str = "comment_failed.md";
    fn example() -> Self {
        FailedComment {
            attempt: 3,
            class: "agent_error".into(),
            message: "exit status 1".into(),
            explanation: "The agent's command failed.".into(),
        }
    }
}

impl TemplateContext for CancelledComment {
    const NAME: &'static str = "comment_cancelled.md";
    fn example() -> Self {
        CancelledComment {
            attempt: 1,
            reason: "the issue was closed".into(),
            todo_label: "status:todo".into(),
            was_running: true,
        }
    }
}

impl TemplateContext for PullEndedComment {
    const NAME: &'static str = "comment_pull_ended.md";
    fn example() -> Self {
        PullEndedComment {
            pr_number: 12,
            merged: false,
            by: Some("alice".into()),
            then: "requeue".into(),
            todo_label: "status:todo".into(),
        }
    }
}

impl TemplateContext for BlockedComment {
    const NAME: &'static str = "comment_blocked.md";
    fn example() -> Self {
        BlockedComment {
            attempt: 1,
            question: "Should the parser use the v1 or the v2 API?".into(),
            todo_label: "status:todo".into(),
        }
    }
}

impl TemplateContext for RefusedReply {
    const NAME: &'static str = "reply_refused.md";
    fn example() -> Self {
        RefusedReply {
            author: "bob".into(),
            repo: "acme/app".into(),
            permission: "read".into(),
            command: "/retry".into(),
        }
    }
}

impl TemplateContext for InvalidReply {
    const NAME: &'static str = "reply_invalid.md";
    fn example() -> Self {
        InvalidReply { author: "bob".into(), line: "/assign".into(), why: "it needs an agent's name".into() }
    }
}

impl TemplateContext for FailedReply {
    const NAME: &'static str = "reply_failed.md";
    fn example() -> Self {
        FailedReply { author: "bob".into(), command: "/retry".into(), why: "the task is running".into() }
    }
}

impl TemplateContext for AgentPrompt {
    const NAME: &'static str = "agent_prompt.md";
    fn example() -> Self {
        AgentPrompt {
            repo: "acme/app".into(),
            issue: 7,
            title: "Fix the parser".into(),
            body: "It breaks on empty input.".into(),
            labels: vec!["type:bug".into()],
            instructions: Some("Run `make check`.".into()),
            branch: "fleet/issue-7-attempt-1".into(),
            base_branch: "main".into(),
            attempt: 2,
            previous_failure: Some("CI failed on the head commit: `ci/test` (failure): 2 tests failed".into()),
            follow_up: Some(FollowUpPrompt {
                by: "alice".into(),
                pr_number: 12,
                instruction: "Name it `count`.".into(),
                notes: vec![NotePrompt { path: Some("src/a.rs".into()), line: Some(4), body: "Not here.".into() }],
            }),
            question: Some("Should the parser use the v1 or the v2 API?".into()),
            answer: Some("Use the v2 API.".into()),
            earlier_attempt: Some(1),
            earlier_summary: Some("Made the parser return an empty list on empty input.".into()),
            question_file: ".forgefleet/question.md".into(),
        }
    }
}
