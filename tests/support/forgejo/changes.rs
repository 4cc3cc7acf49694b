//! Every change to the fake's data, with the webhooks Forgejo sends for it. Payloads are rendered at the moment
//! of the change, so a delivery carries the issue as it was then.

use serde_json::{Value, json};

use super::state::{
    ApiErr, HookRec, IssueRec, Perm, PullRec, ReactionRec, RepoRec, State, StatusRec, Time, random_sha,
};
use super::{Comment, CommitStatus, FakeCommit, Hook, Label, Reaction, render, webhooks};

/// What changes on an issue's labels.
pub(crate) enum LabelOp {
    Add(Vec<i64>),
    Replace(Vec<i64>),
    Remove(i64),
    Clear,
}

/// A pull request about to be opened.
pub(crate) struct NewPull {
    pub head_ref: String,
    pub head_sha: String,
    pub base_ref: String,
    /// `None`: the base branch's tip in the fake's `branches` (a random sha for a branch it doesn't know yet).
    pub base_sha: Option<String>,
    pub labels: Vec<i64>,
    /// Oldest first, each with its commit time.
    pub commits: Vec<(FakeCommit, Time)>,
}

#[derive(Default)]
pub(crate) struct IssueEdit {
    pub title: Option<String>,
    pub body: Option<String>,
    pub state: Option<String>,
    pub assignees: Option<Vec<String>>,
}

/// Which webhook kind a change of an issue (or pull request) is.
#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Label,
    Assign,
    Sync,
}

/// Forgejo's `Label.ExclusiveScope`: the part before the last `/` of an exclusive label's name.
fn exclusive_scope(label: &Label) -> Option<&str> {
    let i = label.name.rfind('/')?;
    (label.exclusive && i > 0 && i < label.name.len() - 1).then(|| &label.name[..i])
}

/// Adds a label to an issue's list, dropping the siblings of an exclusive scope as Forgejo does.
fn apply_label(all: &[Label], current: &mut Vec<i64>, id: i64) {
    let Some(label) = all.iter().find(|l| l.id == id) else { return };
    if current.contains(&id) {
        return;
    }
    if let Some(scope) = exclusive_scope(label) {
        current.retain(|other| all.iter().find(|l| l.id == *other).and_then(exclusive_scope) != Some(scope));
    }
    current.push(id);
}

/// `#rgb`, `rgb`, `#rrggbb` or `rrggbb` -> `rrggbb` (lowercase), like Forgejo's `NormalizeColor`.
pub(crate) fn normalize_color(color: &str) -> Option<String> {
    let c = color.trim().trim_start_matches('#').to_ascii_lowercase();
    if !c.chars().all(|ch| ch.is_ascii_hexdigit()) {
        return None;
    }
    match c.len() {
        6 => Some(c),
        3 => Some(c.chars().flat_map(|ch| [ch, ch]).collect()),
        _ => None,
    }
}

impl State {
    pub fn create_label(
        &mut self,
        repo: &str,
        name: &str,
        color: &str,
        description: &str,
        exclusive: bool,
    ) -> Result<Label, ApiErr> {
        if name.trim().is_empty() {
            return Err(ApiErr::new(422, "[Name]: Required"));
        }
        let color = normalize_color(color).ok_or_else(|| ApiErr::new(422, format!("invalid color: {color}")))?;
        let id = self.next_id();
        let label = Label { id, name: name.to_string(), color, description: description.to_string(), exclusive };
        self.repo_mut(repo).labels.push(label.clone());
        Ok(label)
    }

    /// Ids of every label with one of these names (names are not unique in Forgejo).
    pub fn label_ids_by_names(&mut self, repo: &str, names: &[String]) -> Vec<i64> {
        let r = self.repo_mut(repo);
        r.labels.iter().filter(|l| names.contains(&l.name)).map(|l| l.id).collect()
    }

    /// The first label of each name, created (grey, not exclusive) when missing.
    pub fn ensure_labels(&mut self, repo: &str, names: &[&str]) -> Vec<i64> {
        let mut ids = Vec::new();
        for name in names {
            let existing = self.repo_mut(repo).labels.iter().find(|l| l.name == *name).map(|l| l.id);
            ids.push(match existing {
                Some(id) => id,
                None => self.create_label(repo, name, "#ededed", "", false).expect("label").id,
            });
        }
        ids
    }

    pub fn create_issue(
        &mut self,
        repo: &str,
        sender: &str,
        title: &str,
        body: &str,
        label_ids: Vec<i64>,
        pull: Option<PullRec>,
    ) -> u64 {
        self.add_user(sender, None);
        let (id, now) = (self.next_id(), self.tick());
        let r = self.repo_mut(repo);
        let number = r.next_index;
        r.next_index += 1;
        let mut labels = Vec::new();
        for label in label_ids {
            apply_label(&r.labels, &mut labels, label);
        }
        let issue = IssueRec {
            id,
            number,
            title: title.to_string(),
            body: body.to_string(),
            open: true,
            user: sender.to_string(),
            labels,
            assignees: Vec::new(),
            created: now,
            updated: now,
            closed_at: None,
            reactions: Vec::new(),
            pull,
        };
        r.issues.insert(number, issue);
        self.emit_issue(repo, number, "opened", sender, Kind::Plain, None);
        number
    }

    /// Forgejo sends the webhook even when nothing changed; `updated_at` moves only on a real change.
    pub fn change_labels(&mut self, repo: &str, number: u64, sender: &str, op: LabelOp) -> Result<(), ApiErr> {
        let now = self.tick();
        let RepoRec { labels, issues, .. } = self.repo_mut(repo);
        let issue = issues.get_mut(&number).ok_or_else(ApiErr::not_found)?;
        let mut before = issue.labels.clone();
        let action = match op {
            LabelOp::Add(ids) => {
                ids.into_iter().for_each(|id| apply_label(labels, &mut issue.labels, id));
                "label_updated"
            }
            LabelOp::Replace(ids) => {
                issue.labels.clear();
                ids.into_iter().for_each(|id| apply_label(labels, &mut issue.labels, id));
                "label_updated"
            }
            LabelOp::Remove(id) => {
                issue.labels.retain(|l| *l != id);
                "label_updated"
            }
            LabelOp::Clear => {
                issue.labels.clear();
                "label_cleared"
            }
        };
        let mut after = issue.labels.clone();
        before.sort();
        after.sort();
        if before != after {
            issue.updated = now;
        }
        self.emit_issue(repo, number, action, sender, Kind::Label, None);
        Ok(())
    }

    /// Title, body, assignees, state, in Forgejo's order, each with its own webhook.
    pub fn edit_issue(&mut self, repo: &str, number: u64, sender: &str, edit: IssueEdit) -> Result<(), ApiErr> {
        self.issue_mut(repo, number)?;
        if let Some(assignees) = &edit.assignees
            && let Some(unknown) = assignees.iter().find(|a| !self.users.contains_key(&a.to_ascii_lowercase()))
        {
            return Err(ApiErr::new(422, format!("user does not exist [uid: 0, name: {unknown}]")));
        }
        let now = self.tick();
        if let Some(title) = edit.title.filter(|t| !t.is_empty()) {
            let issue = self.issue_mut(repo, number)?;
            if issue.title != title {
                let from = std::mem::replace(&mut issue.title, title);
                issue.updated = now;
                self.emit_issue(repo, number, "edited", sender, Kind::Plain, Some(json!({"title": {"from": from}})));
            }
        }
        if let Some(body) = edit.body {
            let issue = self.issue_mut(repo, number)?;
            if issue.body != body {
                let from = std::mem::replace(&mut issue.body, body);
                issue.updated = now;
                self.emit_issue(repo, number, "edited", sender, Kind::Plain, Some(json!({"body": {"from": from}})));
            }
        }
        if let Some(wanted) = edit.assignees {
            let issue = self.issue_mut(repo, number)?;
            let removed: Vec<String> = issue.assignees.iter().filter(|a| !wanted.contains(a)).cloned().collect();
            let added: Vec<String> = wanted.iter().filter(|a| !issue.assignees.contains(a)).cloned().collect();
            for login in &removed {
                let issue = self.issue_mut(repo, number)?;
                issue.assignees.retain(|a| a != login);
                issue.updated = now;
                self.emit_issue(repo, number, "unassigned", sender, Kind::Assign, None);
            }
            for login in added {
                let issue = self.issue_mut(repo, number)?;
                issue.assignees.push(login);
                issue.updated = now;
                self.emit_issue(repo, number, "assigned", sender, Kind::Assign, None);
            }
        }
        if let Some(state) = edit.state {
            let close = state == "closed";
            let issue = self.issue_mut(repo, number)?;
            if issue.open == close {
                issue.open = !close;
                issue.closed_at = close.then_some(now);
                issue.updated = now;
                let action = if close { "closed" } else { "reopened" };
                self.emit_issue(repo, number, action, sender, Kind::Plain, None);
            }
        }
        Ok(())
    }

    pub fn add_comment(&mut self, repo: &str, number: u64, sender: &str, body: &str) -> Result<i64, ApiErr> {
        self.add_user(sender, None);
        let (id, now) = (self.next_id(), self.tick());
        self.issue_mut(repo, number)?.updated = now;
        let comment = Comment {
            id,
            issue: number,
            user: sender.to_string(),
            body: body.into(),
            created_at: now,
            updated_at: now,
        };
        self.repo_mut(repo).comments.push(comment);
        self.emit_comment(repo, id, "created", sender, None);
        Ok(id)
    }

    pub fn find_comment(&mut self, repo: &str, id: i64) -> Result<&mut Comment, ApiErr> {
        self.repo_mut(repo).comments.iter_mut().find(|c| c.id == id).ok_or_else(ApiErr::not_found)
    }

    pub fn edit_comment(&mut self, repo: &str, id: i64, sender: &str, body: &str) -> Result<(), ApiErr> {
        let now = self.tick();
        let comment = self.find_comment(repo, id)?;
        let from = std::mem::replace(&mut comment.body, body.to_string());
        comment.updated_at = now;
        let number = comment.issue;
        self.issue_mut(repo, number)?.updated = now;
        self.emit_comment(repo, id, "edited", sender, Some(json!({"body": {"from": from}})));
        Ok(())
    }

    pub fn delete_comment(&mut self, repo: &str, id: i64, sender: &str) -> Result<(), ApiErr> {
        let now = self.tick();
        let number = self.find_comment(repo, id)?.issue;
        self.issue_mut(repo, number)?.updated = now;
        self.emit_comment(repo, id, "deleted", sender, None);
        self.repo_mut(repo).comments.retain(|c| c.id != id);
        Ok(())
    }

    /// Returns the reaction and whether it is new (Forgejo answers 201 for new, 200 for an existing one).
    pub fn add_reaction(
        &mut self,
        repo: &str,
        number: u64,
        sender: &str,
        content: &str,
    ) -> Result<(Reaction, Time, bool), ApiErr> {
        const ALLOWED: [&str; 8] = ["+1", "-1", "laugh", "hooray", "confused", "heart", "rocket", "eyes"];
        self.issue_mut(repo, number)?;
        if !ALLOWED.contains(&content) {
            return Err(ApiErr::new(403, format!("'{content}' is not an allowed reaction")));
        }
        self.add_user(sender, None);
        let now = self.tick();
        let issue = self.issue_mut(repo, number)?;
        if let Some(r) = issue.reactions.iter().find(|r| r.reaction.user == sender && r.reaction.content == content) {
            return Ok((r.reaction.clone(), r.created, false));
        }
        let reaction = Reaction { user: sender.to_string(), content: content.to_string() };
        issue.reactions.push(ReactionRec { reaction: reaction.clone(), created: now });
        Ok((reaction, now, true))
    }

    /// Opens a pull request (webhook `pull_request`/`opened`, carrying its labels and commits) and moves the fake's
    /// `branches` to its head and base.
    pub fn create_pull(&mut self, repo: &str, sender: &str, title: &str, body: &str, new: NewPull) -> u64 {
        let r = self.repo_mut(repo);
        let base_sha = match new.base_sha {
            Some(sha) => {
                r.branches.insert(new.base_ref.clone(), sha.clone());
                sha
            }
            None => r.branches.entry(new.base_ref.clone()).or_insert_with(random_sha).clone(),
        };
        r.branches.insert(new.head_ref.clone(), new.head_sha.clone());
        let pull = PullRec {
            head_ref: new.head_ref,
            head_sha: new.head_sha,
            base_ref: new.base_ref,
            base_sha,
            merged: false,
            merged_at: None,
            merged_by: None,
            merge_commit_sha: None,
            commits: new.commits,
        };
        self.create_issue(repo, sender, title, body, new.labels, Some(pull))
    }

    /// Appends (or with `replace`, sets) commits; the head moves to the last one. A webhook only with a sender.
    pub fn push_to_pull(
        &mut self,
        repo: &str,
        number: u64,
        sender: Option<&str>,
        commits: &[FakeCommit],
        replace: bool,
    ) -> Result<(), ApiErr> {
        let now = self.tick();
        let issue = self.issue_mut(repo, number)?;
        let pull = issue.pull.as_mut().ok_or_else(ApiErr::not_found)?;
        if replace {
            pull.commits.clear();
        }
        pull.commits.extend(commits.iter().map(|c| (c.clone(), now)));
        if let Some(last) = commits.last() {
            pull.head_sha = last.sha.clone();
        }
        let (head_ref, head_sha) = (pull.head_ref.clone(), pull.head_sha.clone());
        if sender.is_some() {
            issue.updated = now;
        }
        self.repo_mut(repo).branches.insert(head_ref, head_sha);
        if let Some(sender) = sender {
            self.emit_issue(repo, number, "synchronized", sender, Kind::Sync, None);
        }
        Ok(())
    }

    pub fn merge_pull(&mut self, repo: &str, number: u64, sender: &str) -> Result<String, ApiErr> {
        self.add_user(sender, None);
        let now = self.tick();
        let sha = random_sha();
        let issue = self.issue_mut(repo, number)?;
        let pull = issue.pull.as_mut().ok_or_else(ApiErr::not_found)?;
        if pull.merged {
            return Err(ApiErr::new(405, "The PR is already merged"));
        }
        pull.merged = true;
        pull.merged_at = Some(now);
        pull.merged_by = Some(sender.to_string());
        pull.merge_commit_sha = Some(sha.clone());
        let base_ref = pull.base_ref.clone();
        issue.open = false;
        issue.closed_at = Some(now);
        issue.updated = now;
        self.repo_mut(repo).branches.insert(base_ref, sha.clone());
        self.emit_issue(repo, number, "closed", sender, Kind::Plain, None);
        Ok(sha)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create_status(
        &mut self,
        repo: &str,
        sha: &str,
        creator: &str,
        state: &str,
        target_url: &str,
        description: &str,
        context: &str,
    ) -> Result<i64, ApiErr> {
        if !["pending", "success", "error", "failure", "warning", "skipped"].contains(&state) {
            return Err(ApiErr::new(400, format!("invalid state: {state:?}")));
        }
        let (id, created) = (self.next_id(), self.tick());
        let status = CommitStatus {
            id,
            sha: sha.to_string(),
            state: state.to_string(),
            context: context.to_string(),
            description: description.to_string(),
            target_url: target_url.to_string(),
            creator: creator.to_string(),
        };
        self.repo_mut(repo).statuses.push(StatusRec { status, created });
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add_hook(
        &mut self,
        repo: &str,
        kind: &str,
        url: &str,
        content_type: &str,
        secret: &str,
        events: &[String],
        active: bool,
    ) -> i64 {
        let (id, created) = (self.next_id(), self.tick());
        let hook = Hook {
            id,
            url: url.to_string(),
            content_type: content_type.to_string(),
            secret: secret.to_string(),
            events: webhooks::expand_events(events),
            active,
        };
        self.repo_mut(repo).hooks.push(HookRec { hook, kind: kind.to_string(), created });
        id
    }

    fn emit_issue(&mut self, repo: &str, number: u64, action: &str, sender: &str, kind: Kind, changes: Option<Value>) {
        let r = self.find_repo(repo).expect("repo");
        let issue = &r.issues[&number];
        let is_pull = issue.pull.is_some();
        let (event, event_type) = match (is_pull, kind) {
            (false, Kind::Label) => ("issues", "issue_label"),
            (false, Kind::Assign) => ("issues", "issue_assign"),
            (false, _) => ("issues", "issues"),
            (true, Kind::Label) => ("pull_request", "pull_request_label"),
            (true, Kind::Assign) => ("pull_request", "pull_request_assign"),
            (true, Kind::Sync) => ("pull_request", "pull_request_sync"),
            (true, Kind::Plain) => ("pull_request", "pull_request"),
        };
        let mut payload = json!({
            "action": action,
            "number": number,
            "repository": render::repo(self, r, Perm::Owner),
            "sender": render::user(self, sender),
            "commit_id": "",
        });
        if is_pull {
            payload["pull_request"] = render::pull(self, r, issue, Perm::Owner);
            payload["requested_reviewer"] = Value::Null;
            payload["review"] = Value::Null;
        } else {
            payload["issue"] = render::issue(self, r, issue);
        }
        if let Some(changes) = changes {
            payload["changes"] = changes;
        }
        self.enqueue(repo, event, event_type, action, payload);
    }

    fn emit_comment(&mut self, repo: &str, id: i64, action: &str, sender: &str, changes: Option<Value>) {
        let r = self.find_repo(repo).expect("repo");
        let comment = r.comments.iter().find(|c| c.id == id).expect("comment");
        let issue = &r.issues[&comment.issue];
        let is_pull = issue.pull.is_some();
        let mut payload = json!({
            "action": action,
            "issue": render::issue(self, r, issue),
            "comment": render::comment(self, r, comment),
            "repository": render::repo(self, r, Perm::Owner),
            "sender": render::user(self, sender),
            "is_pull": is_pull,
        });
        if let Some(changes) = changes {
            payload["changes"] = changes;
        }
        let event_type = if is_pull { "pull_request_comment" } else { "issue_comment" };
        self.enqueue(repo, "issue_comment", event_type, action, payload);
    }
}
