//! The fake's data: users, repositories and their issues, labels, comments, pull requests, files, statuses and
//! hooks, plus the clock, the fault switches and the logs. The changes themselves are in `changes.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::webhooks::{self, Job};
use super::{Comment, CommitStatus, Delivery, DeliveryOutcome, FakeCommit, Hook, Issue, Label, PullRequest};
use super::{Reaction, RecordedRequest};

pub(crate) type Time = DateTime<Utc>;

/// Forgejo's access modes, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Perm {
    None,
    Read,
    Write,
    Admin,
    Owner,
}

impl Perm {
    pub fn parse(s: &str) -> Option<Perm> {
        Some(match s {
            "none" => Perm::None,
            "read" => Perm::Read,
            "write" => Perm::Write,
            "admin" => Perm::Admin,
            "owner" => Perm::Owner,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::None => "none",
            Perm::Read => "read",
            Perm::Write => "write",
            Perm::Admin => "admin",
            Perm::Owner => "owner",
        }
    }
}

/// An error answer: Forgejo's `{"message", "url"}` with this status (a 404 adds `errors`).
#[derive(Debug)]
pub(crate) struct ApiErr {
    pub status: u16,
    pub message: String,
    /// The `errors` of a 404, as Forgejo's `ctx.NotFound(err)` lists them.
    pub errors: Vec<String>,
}

impl ApiErr {
    pub fn new(status: u16, message: impl Into<String>) -> ApiErr {
        ApiErr { status, message: message.into(), errors: Vec::new() }
    }
    pub fn not_found() -> ApiErr {
        ApiErr::new(404, "The target couldn't be found.")
    }
    /// A 404 that says why in `errors`, the message staying Forgejo's generic one.
    pub fn not_found_because(error: impl Into<String>) -> ApiErr {
        ApiErr { errors: vec![error.into()], ..ApiErr::not_found() }
    }
}

pub(crate) struct UserRec {
    pub id: i64,
    pub login: String,
    pub is_admin: bool,
    pub created: Time,
}

pub(crate) struct ReactionRec {
    pub reaction: Reaction,
    pub created: Time,
}

pub(crate) struct StatusRec {
    pub status: CommitStatus,
    pub created: Time,
}

pub(crate) struct HookRec {
    pub hook: Hook,
    pub kind: String,
    pub created: Time,
}

pub(crate) struct PullRec {
    pub head_ref: String,
    pub head_sha: String,
    pub base_ref: String,
    pub base_sha: String,
    pub merged: bool,
    pub merged_at: Option<Time>,
    pub merged_by: Option<String>,
    pub merge_commit_sha: Option<String>,
    pub commits: Vec<(FakeCommit, Time)>,
}

pub(crate) struct IssueRec {
    pub id: i64,
    pub number: u64,
    pub title: String,
    pub body: String,
    pub open: bool,
    pub user: String,
    pub labels: Vec<i64>,
    pub assignees: Vec<String>,
    pub created: Time,
    pub updated: Time,
    pub closed_at: Option<Time>,
    pub reactions: Vec<ReactionRec>,
    pub pull: Option<PullRec>,
}

pub(crate) struct RepoRec {
    pub id: i64,
    pub owner: String,
    pub name: String,
    pub private: bool,
    pub default_branch: String,
    pub created: Time,
    pub perms: HashMap<String, Perm>,
    pub issues: BTreeMap<u64, IssueRec>,
    pub labels: Vec<Label>,
    pub comments: Vec<Comment>,
    /// (ref, path) -> content.
    pub files: BTreeMap<(String, String), Vec<u8>>,
    pub branches: BTreeMap<String, String>,
    pub statuses: Vec<StatusRec>,
    pub hooks: Vec<HookRec>,
    /// Pull request reviews, oldest first (`reviews.rs`).
    pub reviews: Vec<super::reviews::ReviewRec>,
    pub next_index: u64,
    /// The bare repository holding this repository's git data (`FakeForgejo::link_git`); `None`: the fake's own
    /// `branches` are all there is.
    pub git_dir: Option<PathBuf>,
}

impl RepoRec {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
    pub fn label(&self, id: i64) -> Option<&Label> {
        self.labels.iter().find(|l| l.id == id)
    }
    pub fn comment_count(&self, number: u64) -> usize {
        self.comments.iter().filter(|c| c.issue == number).count()
    }
}

#[derive(Default)]
pub(crate) struct Faults {
    pub drop_webhooks: usize,
    pub fail_next: Option<(usize, u16)>,
    pub fail_until: Option<(Option<Instant>, u16)>,
    /// The next `n` POST requests are applied, then answered only after the wait.
    pub late_posts: Option<(usize, std::time::Duration)>,
    /// Requests to this path (including `/api/v1`) answer this status.
    pub fail_path: Option<(String, u16)>,
}

impl Faults {
    /// How long to hold the answer to a POST that was just applied, if a fault is armed.
    pub fn take_late_post(&mut self) -> Option<std::time::Duration> {
        let (n, wait) = self.late_posts?;
        self.late_posts = if n > 1 { Some((n - 1, wait)) } else { None };
        (n > 0).then_some(wait)
    }

    /// The status the next REST request must answer with, if a fault is armed.
    pub fn take_failure(&mut self) -> Option<u16> {
        if let Some((n, status)) = self.fail_next {
            self.fail_next = if n > 1 { Some((n - 1, status)) } else { None };
            if n > 0 {
                return Some(status);
            }
        }
        if let Some((until, status)) = self.fail_until {
            if until.is_none_or(|u| Instant::now() < u) {
                return Some(status);
            }
            self.fail_until = None;
        }
        None
    }
}

pub(crate) struct State {
    pub base: String,
    last: Time,
    next_id: i64,
    pub users: BTreeMap<String, UserRec>,
    pub tokens: HashMap<String, String>,
    pub repos: BTreeMap<String, RepoRec>,
    pub faults: Faults,
    pub requests: Vec<RecordedRequest>,
    pub deliveries: Vec<Delivery>,
    jobs: mpsc::UnboundedSender<Job>,
    pending: watch::Sender<usize>,
}

pub(crate) fn random_sha() -> String {
    let bytes: [u8; 20] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl State {
    pub fn new(base: String, jobs: mpsc::UnboundedSender<Job>, pending: watch::Sender<usize>) -> State {
        State {
            base,
            last: DateTime::<Utc>::MIN_UTC,
            next_id: 1,
            users: BTreeMap::new(),
            tokens: HashMap::new(),
            repos: BTreeMap::new(),
            faults: Faults::default(),
            requests: Vec::new(),
            deliveries: Vec::new(),
            jobs,
            pending,
        }
    }

    /// Now, to the millisecond, and always later than the previous tick.
    pub fn tick(&mut self) -> Time {
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        self.last = now.max(self.last + chrono::Duration::milliseconds(1));
        self.last
    }

    pub(crate) fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn add_user(&mut self, login: &str, token: Option<&str>) {
        let key = login.to_ascii_lowercase();
        if !self.users.contains_key(&key) {
            let (id, created) = (self.next_id(), self.tick());
            self.users.insert(key.clone(), UserRec { id, login: login.to_string(), is_admin: false, created });
        }
        if let Some(token) = token {
            self.tokens.insert(token.to_string(), key);
        }
    }

    pub fn user_mut(&mut self, login: &str) -> &mut UserRec {
        self.users.get_mut(&login.to_ascii_lowercase()).unwrap_or_else(|| panic!("no user {login}"))
    }

    /// Case-insensitive, as Forgejo's lookups are.
    pub fn find_repo(&self, full: &str) -> Option<&RepoRec> {
        self.repos.get(&full.to_ascii_lowercase())
    }

    pub fn repo_mut(&mut self, full: &str) -> &mut RepoRec {
        self.repos.get_mut(&full.to_ascii_lowercase()).unwrap_or_else(|| panic!("no repository {full}"))
    }

    pub fn create_repo(&mut self, full: &str) {
        let (owner, name) = full.split_once('/').unwrap_or_else(|| panic!("{full} is not owner/name"));
        self.add_user(owner, None);
        let (id, created) = (self.next_id(), self.tick());
        let mut branches = BTreeMap::new();
        branches.insert("main".to_string(), random_sha());
        let repo = RepoRec {
            id,
            owner: owner.to_string(),
            name: name.to_string(),
            private: false,
            default_branch: "main".into(),
            created,
            perms: HashMap::new(),
            issues: BTreeMap::new(),
            labels: Vec::new(),
            comments: Vec::new(),
            files: BTreeMap::new(),
            branches,
            statuses: Vec::new(),
            hooks: Vec::new(),
            next_index: 1,
            reviews: Vec::new(),
            git_dir: None,
        };
        self.repos.insert(full.to_ascii_lowercase(), repo);
    }

    /// What `login` (None: anonymous) may do in `repo`.
    pub fn perm(&self, repo: &RepoRec, login: Option<&str>) -> Perm {
        let public = if repo.private { Perm::None } else { Perm::Read };
        let Some(login) = login else { return public };
        let key = login.to_ascii_lowercase();
        if key == repo.owner.to_ascii_lowercase() {
            return Perm::Owner;
        }
        if self.users.get(&key).is_some_and(|u| u.is_admin) {
            return Perm::Admin;
        }
        repo.perms.get(&key).copied().unwrap_or(public).max(public)
    }

    pub fn issue_mut(&mut self, repo: &str, number: u64) -> Result<&mut IssueRec, ApiErr> {
        self.repo_mut(repo).issues.get_mut(&number).ok_or_else(ApiErr::not_found)
    }

    pub fn issue_snapshot(&mut self, repo: &str, number: u64) -> Issue {
        let r = self.repo_mut(repo);
        let i = r.issues.get(&number).unwrap_or_else(|| panic!("{repo} has no issue {number}"));
        Issue {
            number,
            title: i.title.clone(),
            body: i.body.clone(),
            state: if i.open { "open" } else { "closed" }.into(),
            labels: i.labels.iter().filter_map(|id| r.label(*id)).map(|l| l.name.clone()).collect(),
            assignees: i.assignees.clone(),
            user: i.user.clone(),
            comments: r.comment_count(number),
            is_pull: i.pull.is_some(),
            created_at: i.created,
            updated_at: i.updated,
            closed_at: i.closed_at,
        }
    }

    pub fn pull_snapshot(&mut self, repo: &str, number: u64) -> PullRequest {
        super::pulls::follow_pushes(self, repo).expect("the pushes are followed");
        let r = self.find_repo(repo).expect("repo");
        let i = &r.issues[&number];
        let p = i.pull.as_ref().unwrap_or_else(|| panic!("{repo}#{number} is not a pull request"));
        PullRequest {
            mergeable: i.open && !p.merged && super::pulls::merges_cleanly(r, p),
            number,
            state: if i.open { "open" } else { "closed" }.into(),
            merged: p.merged,
            head_ref: p.head_ref.clone(),
            head_sha: p.head_sha.clone(),
            base_ref: p.base_ref.clone(),
            base_sha: p.base_sha.clone(),
            commits: p.commits.iter().map(|(c, _)| c.clone()).collect(),
        }
    }

    /// One delivery per active hook of the repository that subscribed to `event_type`, in hook order.
    pub(crate) fn enqueue(&mut self, repo: &str, event: &str, event_type: &str, action: &str, payload: Value) {
        let body = webhooks::go_json(&payload, true);
        let r = self.find_repo(repo).expect("repo");
        let full = r.full_name();
        let hooks: Vec<Hook> = r
            .hooks
            .iter()
            .filter(|h| h.hook.active && h.hook.events.iter().any(|e| e == event_type))
            .map(|h| h.hook.clone())
            .collect();
        for hook in hooks {
            let dropped = self.faults.drop_webhooks > 0;
            if dropped {
                self.faults.drop_webhooks -= 1;
            }
            let delivery = Delivery {
                id: webhooks::uuid_v4(),
                hook_id: hook.id,
                url: hook.url.clone(),
                repo: full.clone(),
                event: event.to_string(),
                event_type: event_type.to_string(),
                action: action.to_string(),
                body: body.clone(),
                outcome: DeliveryOutcome::Dropped,
            };
            self.pending.send_modify(|n| *n += 1);
            let job = Job { delivery, secret: hook.secret, content_type: hook.content_type, dropped };
            if self.jobs.send(job).is_err() {
                self.pending.send_modify(|n| *n -= 1);
            }
        }
    }

    /// Called by the delivery worker after each attempt.
    pub fn delivery_done(&mut self, delivery: Delivery) {
        self.deliveries.push(delivery);
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}
