//! Side effects a change asks for: written to the outbox in the same transaction as the change itself, and
//! delivered later by workers (Forgejo labels and comments, Matrix messages).

use serde::{Deserialize, Serialize};

use super::commands::{Parsed, Place, parse_line};
use super::event::{CancelledBy, Event};
use super::ids::{AgentId, AgentName, CommitSha, IssueRef, TaskId};
use super::labels::StatusLabel;
use super::policy::{FailureClass, RetryDecision};
use super::pull::OnConflict;
use super::receipt::{Receipt, Validation};
use super::task::{Task, TaskState};
use super::time::Timestamp;

/// What an issue comment (and a chat message) tells people about a task.
// A completion carries the receipt and what was checked; these values live briefly on their way into the
// outbox as JSON, so their size does not matter and boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// An agent took the task (chat only: the issue learns it from its assignee and the start comment).
    Assigned {
        agent: AgentId,
    },
    Started {
        agent: AgentId,
    },
    Completed {
        agent: Option<AgentId>,
        receipt: Option<Receipt>,
        /// What forgefleet checked, and the files git says changed.
        #[serde(default)]
        validation: Option<Validation>,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
    },
    Retrying {
        class: FailureClass,
        message: String,
        retries_left: u32,
        not_before: Timestamp,
    },
    Failed {
        class: FailureClass,
        message: String,
    },
    Cancelled {
        reason: String,
        was_running: bool,
    },
    /// The completed task's pull request was merged, or closed without merging and then `then`.
    PullEnded {
        pr_number: u64,
        merged: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        then: super::pull::OnPullClosed,
    },
    /// A person asked for changes on the pull request: round `round` is queued on the same branch.
    FollowUp {
        round: u32,
        pr_number: u64,
        by: String,
    },
    /// The agent asked a person a question and waits for `/answer`. The question is the agent's text.
    Blocked {
        question: String,
    },
    /// The completed task's pull request no longer merges into its moved base branch, and what forgefleet did.
    Conflicted {
        pr_number: u64,
        head_sha: String,
        base_branch: String,
        then: super::pull::OnConflict,
    },
}

impl Notice {
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Assigned { .. } => "assigned",
            Notice::Started { .. } => "started",
            Notice::Completed { .. } => "completed",
            Notice::Retrying { .. } => "retrying",
            Notice::Failed { .. } => "failed",
            Notice::Cancelled { .. } => "cancelled",
            Notice::PullEnded { merged: true, .. } => "merged",
            Notice::PullEnded { merged: false, .. } => "pull_closed",
            Notice::FollowUp { .. } => "follow_up",
            Notice::Blocked { .. } => "blocked",
            Notice::Conflicted { .. } => "conflicted",
        }
    }

    /// What tells this notice's comment apart from every other one of its attempt (its hidden marker's last
    /// part): the kind, and for a conflict the head too, since a later head of the same attempt (a person
    /// pushed) may conflict again and is told again.
    pub fn marker_kind(&self) -> String {
        match self {
            Notice::Conflicted { head_sha, .. } => {
                format!("conflicted-{}", head_sha.get(..12).unwrap_or(head_sha))
            }
            other => other.kind().to_string(),
        }
    }
}

/// Where an outbox row is delivered. Each destination has its own worker, its own retries and its own
/// per-issue order, so one that is down never holds back another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    Forgejo,
    Matrix,
}

impl Destination {
    pub const ALL: [Destination; 2] = [Destination::Forgejo, Destination::Matrix];

    /// As the outbox's `destination` column, the CLI and the metrics write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Forgejo => "forgejo",
            Destination::Matrix => "matrix",
        }
    }

    /// The destination `s` names; `None` for one this forgefleet does not know (a row from a newer one).
    pub fn parse(s: &str) -> Option<Destination> {
        Destination::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something to do in the outside world because a task changed.
#[allow(clippy::large_enum_variant)] // see `Notice`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// Leave `status` as the issue's only `status:*` label (none at all for `None`).
    SetStatusLabel { issue: IssueRef, status: Option<StatusLabel> },
    /// Tell the people on the issue what happened to one attempt.
    Comment { issue: IssueRef, task: TaskId, attempt: u32, notice: Notice },
    /// Make the agent's Forgejo user (if it has one) the issue's assignee, or clear it.
    SetAssignee { issue: IssueRef, agent: Option<AgentId> },
    /// Commands a person wrote, parsed where they arrived: their permission is checked by the place's own rule,
    /// then each runs once and is answered where it came from. `quiet`: a plain comment read as an answer
    /// (`answer_any_comment`); it is answered only when it worked, never with a refusal or a "does not apply".
    RunCommands {
        origin: CommandOrigin,
        author: String,
        commands: Vec<Parsed>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        quiet: bool,
    },
    /// Make `agent` the only agent the issue is pinned to (its `agent:` labels), then observe the issue.
    SetAgentLabel { issue: IssueRef, agent: AgentName },
    /// What happened to a task, for the chat room: one message per task, edited in place as it moves; a new
    /// message for what needs a person (failed for good).
    ChatTask { issue: IssueRef, task: TaskId, attempt: u32, notice: Notice },
    /// What happened to an agent, for the chat room (in the agent's own thread; `lost` also as a message of
    /// its own, since it needs a person).
    ChatAgent { agent: AgentId, news: AgentNews },
    /// An agent's progress lines for its thread in the chat room, batched (`core::logbatch`): at most one
    /// message per agent every few seconds, `skipped` counting the lines left out.
    ChatProgress { agent: AgentId, lines: Vec<String>, skipped: u64 },
    /// An answer in a Matrix room, in the thread under the message it answers. `key` makes it once-only.
    MatrixReply { room: String, in_reply_to: String, key: String, body: String },
    /// An answer to a person, posted once (`key` becomes the comment's hidden marker).
    Reply { issue: IssueRef, key: String, body: String },
    /// A reaction on a comment: the quiet "done" for a command that worked.
    React { issue: IssueRef, comment_id: i64, content: String },
    /// Read the issue as Forgejo has it now and observe that: a webhook's view may be stale or out of order,
    /// so it never queues or cancels a task by itself. An issue that does not exist cancels its task.
    ConfirmIssue { issue: IssueRef },
    /// Read the pull request as Forgejo has it now and observe that: a webhook said it was closed (or merged),
    /// and a webhook may be stale or replayed. `pull` is its number in the repository.
    ConfirmPull { pull: IssueRef },
    /// Read the pull request's reviews as Forgejo has them now: a review that requests changes on the verified
    /// head, by a person with write permission, becomes a round of changes. A webhook said a review was
    /// submitted (or reconciliation looks again); what it carried is never acted on by itself.
    ConfirmReviews { pull: IssueRef },
    /// A task was cancelled while its agent held it (or after its receipt): the pull request the agent opened
    /// for that attempt, the receipt's or the one from the attempt's branch, is closed with a comment saying why.
    /// `branch` is the attempt's branch when it continued one an earlier attempt pushed (`Task::pushed_branch`);
    /// `None`: its own fresh branch.
    ClosePull {
        issue: IssueRef,
        task: TaskId,
        attempt: u32,
        pr_number: Option<u64>,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
    },
    /// A commit status on the pull request's head (the one the receipt names), so the pull request itself
    /// shows what forgefleet found.
    SetCommitStatus {
        issue: IssueRef,
        task: TaskId,
        attempt: u32,
        sha: CommitSha,
        state: CommitState,
        description: String,
    },
}

/// What happened to an agent, as a chat room is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "news", rename_all = "snake_case")]
pub enum AgentNews {
    Online,
    Draining,
    /// Silent past its heartbeats, holding nothing.
    Offline,
    /// Silent past its heartbeats while it held `task`: the task went back to the queue.
    Lost {
        task: TaskId,
        issue: IssueRef,
    },
}

/// The kinds of chat notification a room can choose from (`[matrix] notify`).
pub const CHAT_KINDS: [&str; 14] = [
    "assigned",
    "started",
    "completed",
    "verification_failed",
    "retrying",
    "timed_out",
    "failed",
    "cancelled",
    "blocked",
    "agent_online",
    "agent_draining",
    "agent_offline",
    "agent_lost",
    "progress",
];

/// Where a command was written, which is where its answer goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "place", rename_all = "snake_case")]
pub enum CommandOrigin {
    /// A comment on an issue: the issue is the one commands without an `owner/repo#N` are about.
    Comment { issue: IssueRef, comment_id: i64 },
    /// A message in a Matrix room.
    Matrix { room: String, event_id: String },
}

impl CommandOrigin {
    /// The grammar's place: in a comment the issue is implied, in a room it must be named.
    pub fn place(&self) -> Place {
        match self {
            CommandOrigin::Comment { .. } => Place::Issue,
            CommandOrigin::Matrix { .. } => Place::Chat,
        }
    }

    /// The issue a command without one is about.
    pub fn issue(&self) -> Option<&IssueRef> {
        match self {
            CommandOrigin::Comment { issue, .. } => Some(issue),
            CommandOrigin::Matrix { .. } => None,
        }
    }

    /// A stable name for keys: `comment:acme/app#3:77`, `matrix:!room:$event`.
    pub fn key(&self) -> String {
        match self {
            CommandOrigin::Comment { issue, comment_id } => format!("{}:{comment_id}", issue.repo),
            CommandOrigin::Matrix { room, event_id } => format!("matrix:{room}:{event_id}"),
        }
    }
}

/// The outbox row of an older forgefleet that kept a comment's raw command lines.
#[derive(Deserialize)]
struct LegacyRunCommands {
    kind: String,
    issue: IssueRef,
    comment_id: i64,
    author: String,
    lines: Vec<String>,
}

/// The states forgefleet gives a commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitState {
    Success,
    Failure,
}

impl CommitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Success => "success",
            CommitState::Failure => "failure",
        }
    }
}

/// The context of forgefleet's commit statuses: one per commit, the newest state wins.
pub const STATUS_CONTEXT: &str = "forgefleet/receipt";

impl Effect {
    /// The issue whose deliveries it waits behind, in order: none for a read (`confirm_issue`), which changes
    /// nothing people see and must not wait behind a write to an issue that may be gone (the read is how
    /// forgefleet learns that it is).
    pub fn ordered_issue(&self) -> Option<&IssueRef> {
        match self {
            Effect::ConfirmIssue { .. } | Effect::ConfirmPull { .. } | Effect::ConfirmReviews { .. } => None,
            _ => self.issue(),
        }
    }

    /// The issue it is delivered to (deliveries to one issue keep their order); none for a chat message or
    /// the commands of one.
    pub fn issue(&self) -> Option<&IssueRef> {
        match self {
            Effect::SetStatusLabel { issue, .. }
            | Effect::Comment { issue, .. }
            | Effect::SetAssignee { issue, .. }
            | Effect::SetAgentLabel { issue, .. }
            | Effect::Reply { issue, .. }
            | Effect::React { issue, .. }
            | Effect::ConfirmIssue { issue }
            | Effect::ConfirmPull { pull: issue }
            | Effect::ConfirmReviews { pull: issue }
            | Effect::ClosePull { issue, .. }
            | Effect::SetCommitStatus { issue, .. } => Some(issue),
            Effect::ChatTask { issue, .. } => Some(issue),
            Effect::RunCommands { origin, .. } => origin.issue(),
            Effect::MatrixReply { .. } | Effect::ChatAgent { .. } | Effect::ChatProgress { .. } => None,
        }
    }

    /// For a chat notification, its kind in [`CHAT_KINDS`] (what `[matrix] notify` filters on).
    pub fn chat_kind(&self) -> Option<&'static str> {
        match self {
            Effect::ChatTask { notice, .. } => Some(match notice {
                Notice::Retrying { class: FailureClass::VerificationFailed | FailureClass::ChecksFailed, .. } => {
                    "verification_failed"
                }
                Notice::Retrying { class: FailureClass::Timeout, .. } => "timed_out",
                // The end of a completed task's pull request edits its completed message.
                Notice::PullEnded { .. } => "completed",
                // A new round of work on the task: news of the same kind as a retry.
                Notice::FollowUp { .. } | Notice::Conflicted { then: OnConflict::Merge { .. }, .. } => "retrying",
                // News of the completed task's pull request, as its end is.
                Notice::Conflicted { .. } => "completed",
                other => other.kind(),
            }),
            Effect::ChatAgent { news, .. } => Some(match news {
                AgentNews::Online => "agent_online",
                AgentNews::Draining => "agent_draining",
                AgentNews::Offline => "agent_offline",
                AgentNews::Lost { .. } => "agent_lost",
            }),
            Effect::ChatProgress { .. } => Some("progress"),
            _ => None,
        }
    }

    /// An outbox row's payload, including the shapes older versions wrote (a comment's raw command lines are
    /// parsed now, as the webhook of today would have).
    pub fn from_json(payload: &str) -> Result<Effect, serde_json::Error> {
        match serde_json::from_str(payload) {
            Ok(effect) => Ok(effect),
            Err(e) => match serde_json::from_str::<LegacyRunCommands>(payload) {
                Ok(old) if old.kind == "run_commands" => Ok(Effect::RunCommands {
                    origin: CommandOrigin::Comment { issue: old.issue, comment_id: old.comment_id },
                    author: old.author,
                    commands: old.lines.iter().filter_map(|l| parse_line(l, Place::Issue)).collect(),
                    quiet: false,
                }),
                _ => Err(e),
            },
        }
    }

    /// Where it is delivered.
    pub fn destination(&self) -> Destination {
        match self {
            Effect::SetStatusLabel { .. }
            | Effect::Comment { .. }
            | Effect::SetAssignee { .. }
            // Commands are checked with Forgejo's permissions, wherever they were written.
            | Effect::RunCommands { .. }
            | Effect::SetAgentLabel { .. }
            | Effect::Reply { .. }
            | Effect::React { .. }
            | Effect::ConfirmIssue { .. }
            | Effect::ConfirmPull { .. }
            | Effect::ConfirmReviews { .. }
            | Effect::ClosePull { .. }
            | Effect::SetCommitStatus { .. } => Destination::Forgejo,
            Effect::MatrixReply { .. }
            | Effect::ChatTask { .. }
            | Effect::ChatAgent { .. }
            | Effect::ChatProgress { .. } => Destination::Matrix,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Effect::SetStatusLabel { .. } => "set_status_label",
            Effect::Comment { .. } => "comment",
            Effect::SetAssignee { .. } => "set_assignee",
            Effect::RunCommands { .. } => "run_commands",
            Effect::SetAgentLabel { .. } => "set_agent_label",
            Effect::MatrixReply { .. } => "matrix_reply",
            Effect::ChatTask { .. } => "chat_task",
            Effect::ChatAgent { .. } => "chat_agent",
            Effect::ChatProgress { .. } => "chat_progress",
            Effect::Reply { .. } => "reply",
            Effect::React { .. } => "react",
            Effect::ConfirmIssue { .. } => "confirm_issue",
            Effect::ConfirmPull { .. } => "confirm_pull",
            Effect::ConfirmReviews { .. } => "confirm_reviews",
            Effect::ClosePull { .. } => "close_pull",
            Effect::SetCommitStatus { .. } => "set_commit_status",
        }
    }
}

/// The effects of `event` taking a task from `before` (None: it did not exist) to `after`: what the issue is
/// told, and the same news for the chat room (where the store sends it only to a room that wants its kind).
pub fn effects_of(before: Option<&Task>, after: &Task, event: &Event) -> Vec<Effect> {
    let mut out = issue_effects_of(before, after, event);
    let mut chat: Vec<Effect> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Comment { issue, task, attempt, notice } => {
                Some(Effect::ChatTask { issue: issue.clone(), task: *task, attempt: *attempt, notice: notice.clone() })
            }
            _ => None,
        })
        .collect();
    if let Event::TaskAssigned { agent, attempt, .. } = event {
        chat.push(Effect::ChatTask {
            issue: after.issue.clone(),
            task: after.id,
            attempt: *attempt,
            notice: Notice::Assigned { agent: *agent },
        });
    }
    if let Event::TaskLost { agent, .. } = event {
        chat.push(Effect::ChatAgent {
            agent: *agent,
            news: AgentNews::Lost { task: after.id, issue: after.issue.clone() },
        });
    }
    out.extend(chat);
    out
}

/// The chat news of an agent's own event.
pub fn agent_effects_of(event: &Event) -> Vec<Effect> {
    let news = match event {
        Event::AgentOnline { .. } => AgentNews::Online,
        Event::AgentDraining { .. } => AgentNews::Draining,
        Event::AgentOffline { .. } => AgentNews::Offline,
        _ => return Vec::new(),
    };
    event.agent().map(|agent| Effect::ChatAgent { agent, news }).into_iter().collect()
}

fn issue_effects_of(before: Option<&Task>, after: &Task, event: &Event) -> Vec<Effect> {
    let mut out = Vec::new();
    let issue = || after.issue.clone();
    // A new task needs no label: its issue carries `status:todo` already, which is why it exists.
    let was = before.map_or(Some(StatusLabel::Todo), |t| t.state.status_label());
    let now = after.state.status_label();
    // A task called off by its issue (the label taken off, the issue gone) leaves the labels as people left
    // them: an observation alone never takes a person's label away.
    let hands_off =
        matches!(event, Event::TaskCancelled { by: CancelledBy::LabelRemoved | CancelledBy::IssueGone, .. });
    // `agent_lost` is a passing state: its own retry decision follows in the same command.
    if was != now && after.state != TaskState::AgentLost && !hands_off {
        out.push(Effect::SetStatusLabel { issue: issue(), status: now });
    }
    let comment = |attempt: u32, notice: Notice| Effect::Comment { issue: issue(), task: after.id, attempt, notice };
    let held_by = before.and_then(|t| t.lease.as_ref());
    // An attempt an agent held may have opened a pull request; cancelled, it is closed.
    let close_pull = |attempt: u32, reason: &String| {
        let receipt = before.and_then(|t| t.receipt.as_ref());
        (held_by.is_some() || receipt.is_some()).then(|| Effect::ClosePull {
            issue: issue(),
            task: after.id,
            attempt,
            pr_number: receipt.map(|r| r.pr_number),
            reason: reason.clone(),
            branch: before.and_then(|t| t.pushed_branch.clone()),
        })
    };
    match event {
        Event::TaskAssigned { agent, .. } => {
            out.push(Effect::SetAssignee { issue: issue(), agent: Some(*agent) });
        }
        Event::TaskStarted { attempt, .. } => {
            if let Some(l) = &after.lease {
                out.push(comment(*attempt, Notice::Started { agent: l.agent }));
            }
        }
        Event::TaskCompleted { attempt, .. } => {
            let receipt = before.and_then(|t| t.receipt.as_ref());
            out.push(comment(
                *attempt,
                Notice::Completed {
                    agent: held_by.map(|l| l.agent),
                    receipt: receipt.cloned(),
                    validation: before.and_then(|t| t.validation.clone()),
                    // The agent's time: from its start (or the assignment) to its receipt, not the checking after.
                    started_at: held_by.map(|l| l.started_at.unwrap_or(l.assigned_at)),
                    finished_at: held_by.and_then(|l| l.receipt_at).unwrap_or(event.at()),
                },
            ));
            out.push(Effect::SetAssignee { issue: issue(), agent: None });
        }
        Event::AttemptFailed { attempt, class, message, decision, .. } => {
            let notice = match decision {
                RetryDecision::Retry { not_before, retries_left } => Notice::Retrying {
                    class: *class,
                    message: message.clone(),
                    retries_left: *retries_left,
                    not_before: *not_before,
                },
                RetryDecision::GiveUp => Notice::Failed { class: *class, message: message.clone() },
            };
            out.push(comment(*attempt, notice));
            out.push(Effect::SetAssignee { issue: issue(), agent: None });
        }
        // Only on a commit that is the pull request's head: there people see it, and the repository is sure to
        // have it (a receipt may name any made-up commit, and Forgejo refuses statuses on those).
        Event::ReceiptChecked { attempt, validation, .. }
            if validation.checks.iter().any(|c| c.name == "head_matches" && c.passed) =>
        {
            if let Some(receipt) = &after.receipt {
                let (state, description) = if validation.passed() {
                    (CommitState::Success, format!("verified by forgefleet: {} checks passed", validation.checks.len()))
                } else {
                    let failed: Vec<&str> =
                        validation.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
                    (CommitState::Failure, format!("forgefleet: the receipt did not check out ({})", failed.join(", ")))
                };
                out.push(Effect::SetCommitStatus {
                    issue: issue(),
                    task: after.id,
                    attempt: *attempt,
                    sha: receipt.head_sha.clone(),
                    state,
                    description,
                });
            }
        }
        Event::FollowUpRequested { follow_up, .. } => {
            let notice =
                Notice::FollowUp { round: follow_up.round, pr_number: follow_up.pr_number, by: follow_up.by.clone() };
            out.push(comment(after.attempt, notice));
        }
        Event::PullConflicted { conflict, .. } => {
            let notice = Notice::Conflicted {
                pr_number: conflict.pr_number,
                head_sha: conflict.head_sha.clone(),
                base_branch: conflict.base_branch.clone(),
                then: conflict.then,
            };
            // The round's attempt when one was queued, else the completed one.
            out.push(comment(after.attempt, notice));
        }
        Event::PullEnded { attempt, end, then, .. } => {
            let notice =
                Notice::PullEnded { pr_number: end.pr_number, merged: end.merged, by: end.by.clone(), then: *then };
            out.push(comment(*attempt, notice));
        }
        Event::TaskBlocked { attempt, question, .. } => {
            out.push(comment(*attempt, Notice::Blocked { question: question.clone() }));
            out.push(Effect::SetAssignee { issue: issue(), agent: None });
        }
        // An issue that is gone has nobody to tell.
        Event::TaskCancelled { by: CancelledBy::IssueGone, attempt, reason, .. } => {
            out.extend(close_pull(*attempt, reason));
        }
        Event::TaskCancelled { attempt, reason, .. } => {
            out.extend(close_pull(*attempt, reason));
            out.push(comment(*attempt, Notice::Cancelled { reason: reason.clone(), was_running: held_by.is_some() }));
            if held_by.is_some() {
                out.push(Effect::SetAssignee { issue: issue(), agent: None });
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::RepoName;
    use crate::core::labels::TaskSpec;

    #[test]
    fn a_run_commands_row_an_older_version_wrote_is_read_as_parsed_commands() {
        let old = r#"{"kind":"run_commands","issue":{"repo":"acme/app","number":3},"comment_id":77,"author":"alice","lines":["/retry","/assign"]}"#;
        let Effect::RunCommands { origin, author, commands, .. } = Effect::from_json(old).unwrap() else { panic!() };
        let issue: IssueRef = "acme/app#3".parse().unwrap();
        assert_eq!(origin, CommandOrigin::Comment { issue: issue.clone(), comment_id: 77 });
        assert_eq!(origin.key(), "acme/app:77", "the keys older rows ran under stay the same");
        assert_eq!(author, "alice");
        assert_eq!(commands[0], Parsed::Valid(crate::core::commands::FleetCommand::Retry { issue: None }));
        assert!(matches!(commands[1], Parsed::Invalid { .. }));
        // Today's shape goes through as it is; a row that is neither is an error.
        let now = Effect::RunCommands { origin, author, commands, quiet: false };
        assert_eq!(Effect::from_json(&serde_json::to_string(&now).unwrap()).unwrap(), now);
        assert!(Effect::from_json(r#"{"kind":"run_commands","issue":{"repo":"acme/app","number":3}}"#).is_err());
        assert_eq!(now.issue(), Some(&issue));
    }

    #[test]
    fn a_destination_reads_back_as_it_is_written() {
        for d in Destination::ALL {
            assert_eq!(Destination::parse(d.as_str()), Some(d));
            assert_eq!(serde_json::to_value(d).unwrap(), serde_json::json!(d.as_str()));
        }
        assert_eq!(Destination::parse("irc"), None, "an unknown destination is not guessed");
    }

    fn queued() -> (Task, Event) {
        let e = Event::TaskQueued {
            task: TaskId(1),
            issue: IssueRef { repo: RepoName::parse("a/b").unwrap(), number: 1 },
            title: "t".into(),
            body: "".into(),
            labels: vec![],
            spec: TaskSpec::default(),
            at: Timestamp(0),
            issue_id: None,
        };
        (Task::queued(&e).unwrap(), e)
    }

    /// Agent 4 takes attempt `attempt` of task 1.
    fn assign(attempt: u32) -> Event {
        Event::TaskAssigned {
            task: TaskId(1),
            attempt,
            agent: AgentId(4),
            at: Timestamp(1),
            start_by: Timestamp(2),
            deadline: Timestamp(3),
            request_key: None,
        }
    }

    /// The issue's effects of one step (chat news is checked on its own).
    fn step(t: &Task, e: Event) -> (Task, Vec<Effect>) {
        let (next, all) = step_all(t, e);
        (next, all.into_iter().filter(|e| e.chat_kind().is_none()).collect())
    }

    fn step_all(t: &Task, e: Event) -> (Task, Vec<Effect>) {
        let mut next = t.clone();
        next.apply(&e).unwrap();
        let effects = effects_of(Some(t), &next, &e);
        (next, effects)
    }

    #[test]
    fn the_chat_room_hears_what_the_issue_hears_and_the_assignment_and_a_lost_agent() {
        let (queued, _) = queued();
        let chat = |fx: &[Effect]| fx.iter().filter_map(|e| e.chat_kind()).collect::<Vec<_>>();
        let (assigned, fx) = step_all(&queued, assign(1));
        assert_eq!(chat(&fx), ["assigned"]);
        let (started, fx) = step_all(&assigned, Event::TaskStarted { task: TaskId(1), attempt: 1, at: Timestamp(2) });
        assert_eq!(chat(&fx), ["started"]);
        let lost = Event::TaskLost { task: TaskId(1), attempt: 1, agent: AgentId(4), at: Timestamp(5) };
        let (lost_task, fx) = step_all(&started, lost);
        assert_eq!(chat(&fx), ["agent_lost"]);
        let lost_news = fx.iter().find(|e| matches!(e, Effect::ChatAgent { .. })).unwrap();
        assert_eq!(
            lost_news,
            &Effect::ChatAgent {
                agent: AgentId(4),
                news: AgentNews::Lost { task: TaskId(1), issue: queued.issue.clone() }
            }
        );
        let retry = RetryDecision::Retry { not_before: Timestamp(9), retries_left: 1 };
        let failed = Event::AttemptFailed {
            task: TaskId(1),
            attempt: 1,
            class: FailureClass::VerificationFailed,
            message: "head_matches: no".into(),
            decision: retry,
            spent: None,
            pushed_branch: None,
            at: Timestamp(6),
        };
        let (_, fx) = step_all(&lost_task, failed);
        assert_eq!(chat(&fx), ["verification_failed"], "{fx:?}");
        assert!(
            agent_effects_of(&Event::AgentOnline { agent: AgentId(4), at: Timestamp(1) })[0].chat_kind()
                == Some("agent_online")
        );
        for kind in chat(&fx) {
            assert!(CHAT_KINDS.contains(&kind));
        }
    }

    #[test]
    fn a_new_task_needs_no_effect_and_assignment_sets_doing_and_the_assignee() {
        let (queued, e) = queued();
        assert!(effects_of(None, &queued, &e).is_empty());
        let assign = assign(1);
        let (assigned, fx) = step(&queued, assign);
        assert_eq!(
            fx,
            [
                Effect::SetStatusLabel { issue: queued.issue.clone(), status: Some(StatusLabel::Doing) },
                Effect::SetAssignee { issue: queued.issue.clone(), agent: Some(AgentId(4)) },
            ]
        );
        let (_, fx) = step(&assigned, Event::TaskStarted { task: TaskId(1), attempt: 1, at: Timestamp(2) });
        assert!(matches!(&fx[..], [Effect::Comment { notice: Notice::Started { agent: AgentId(4) }, .. }]), "{fx:?}");
    }

    #[test]
    fn a_block_asks_on_the_issue_and_in_chat_and_an_answer_puts_todo_back() {
        let (queued, _) = queued();
        let (assigned, _) = step(&queued, assign(1));
        let (running, _) = step(&assigned, Event::TaskStarted { task: TaskId(1), attempt: 1, at: Timestamp(2) });
        let block = Event::TaskBlocked {
            task: TaskId(1),
            attempt: 1,
            question: "v1 or v2?".into(),
            session_id: None,
            at: Timestamp(3),
        };
        let (blocked, fx) = step_all(&running, block);
        let issue = queued.issue.clone();
        let notice = Notice::Blocked { question: "v1 or v2?".into() };
        assert_eq!(
            fx,
            [
                Effect::SetStatusLabel { issue: issue.clone(), status: Some(StatusLabel::Blocked) },
                Effect::Comment { issue: issue.clone(), task: TaskId(1), attempt: 1, notice: notice.clone() },
                Effect::SetAssignee { issue: issue.clone(), agent: None },
                Effect::ChatTask { issue: issue.clone(), task: TaskId(1), attempt: 1, notice },
            ]
        );
        assert_eq!(fx[3].chat_kind(), Some("blocked"));
        assert!(CHAT_KINDS.contains(&"blocked"));
        let answer =
            Event::TaskAnswered { task: TaskId(1), answer: "v2".into(), by: "@alice".into(), at: Timestamp(4) };
        let (_, fx) = step_all(&blocked, answer);
        assert_eq!(fx, [Effect::SetStatusLabel { issue, status: Some(StatusLabel::Todo) }]);
    }

    #[test]
    fn a_retry_comments_with_the_decision_and_puts_todo_back() {
        let (queued, _) = queued();
        let (assigned, _) = step(&queued, assign(1));
        let decision = RetryDecision::Retry { not_before: Timestamp(99), retries_left: 1 };
        let failed = Event::AttemptFailed {
            task: TaskId(1),
            attempt: 1,
            class: FailureClass::AgentError,
            message: "exit 1".into(),
            decision,
            spent: None,
            pushed_branch: None,
            at: Timestamp(5),
        };
        let (_, fx) = step(&assigned, failed);
        assert!(fx.contains(&Effect::SetStatusLabel { issue: queued.issue.clone(), status: Some(StatusLabel::Todo) }));
        assert!(
            fx.iter().any(|e| matches!(e, Effect::Comment { notice: Notice::Retrying { retries_left: 1, .. }, .. }))
        );
    }

    #[test]
    fn cancelling_removes_the_status_label_and_says_why() {
        let (queued, _) = queued();
        let (_, fx) = step(
            &queued,
            Event::TaskCancelled {
                task: TaskId(1),
                attempt: 1,
                reason: "closed".into(),
                by: CancelledBy::IssueClosed,
                at: Timestamp(1),
            },
        );
        assert_eq!(fx[0], Effect::SetStatusLabel { issue: queued.issue.clone(), status: None });
        assert!(
            matches!(&fx[1], Effect::Comment { notice: Notice::Cancelled { reason, was_running: false }, .. } if reason == "closed")
        );
    }

    #[test]
    fn a_checked_receipt_marks_the_pull_requests_head_only_when_the_receipt_names_it() {
        use crate::core::receipt::{Check, Usage};
        let (mut validating, _) = queued();
        let sha = CommitSha::parse(&"ab".repeat(20)).unwrap();
        validating.state = TaskState::Validating;
        validating.receipt = Some(Receipt {
            pr_number: 3,
            head_sha: sha.clone(),
            summary: String::new(),
            usage: Usage::default(),
            cost_usd: None,
            duration_secs: None,
            session_id: None,
            artifacts: Vec::new(),
        });
        let checked = |results: &[(&str, bool)]| {
            let checks = results
                .iter()
                .map(|(name, passed)| Check { name: name.to_string(), passed: *passed, detail: String::new() })
                .collect();
            let e = Event::ReceiptChecked {
                task: TaskId(1),
                attempt: 1,
                validation: Validation { checks, files: Vec::new() },
                at: Timestamp(9),
            };
            step(&validating, e).1
        };
        let status = |state: CommitState, description: &str| Effect::SetCommitStatus {
            issue: validating.issue.clone(),
            task: TaskId(1),
            attempt: 1,
            sha: sha.clone(),
            state,
            description: description.into(),
        };
        assert_eq!(
            checked(&[("head_matches", true), ("commits_change_something", true)]),
            [status(CommitState::Success, "verified by forgefleet: 2 checks passed")]
        );
        assert_eq!(
            checked(&[("refers_to_issue", false), ("head_matches", true), ("commits_change_something", false)]),
            [status(
                CommitState::Failure,
                "forgefleet: the receipt did not check out (refers_to_issue, commits_change_something)"
            )]
        );
        // Not the pull request's head (or no pull request at all): nothing to mark.
        assert!(checked(&[("pull_request_exists", true), ("head_matches", false)]).is_empty());
        assert!(checked(&[("pull_request_exists", false)]).is_empty());
    }
}
