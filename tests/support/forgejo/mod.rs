//! A stateful fake Forgejo for the scenario tests: the REST calls forgefleet makes (`/api/v1`, JSON shaped like
//! Forgejo's OpenAPI definitions, checked by `tests/fake_forgejo.rs`) and signed webhook deliveries, sent the way
//! Forgejo sends them (pretty-printed body, `X-Forgejo-*`/`X-Gitea-*`/`X-Gogs-*` headers, HMAC-SHA256 signature,
//! 5 s timeout, never retried).
//!
//! Tests drive it two ways: over HTTP like forgefleet does, and through the async methods below, which act as a
//! person using the web UI would (they send the same webhooks, with that person as `sender`, and bypass
//! permission checks). Every change to an issue bumps its `updated_at` on a monotonic millisecond clock, so `since`
//! comparisons are exact.
//!
//! Run scenario tests that use it on a multi-thread runtime (`#[tokio::test(flavor = "multi_thread")]`): the fake
//! serves from the test's runtime, so a test thread blocked in `std::thread::sleep` would stall it otherwise.
//!
//! Behaviour chosen where Forgejo leaves room, or read from its source (see each handler for details):
//! - Issue lists are sorted newest created first (Forgejo's default `sort=latest`); `oldest`, `recentupdate`,
//!   `leastupdate`, `mostcomment`, `leastcomment` are honoured too. `since`/`before` are inclusive.
//! - Timestamps carry milliseconds (`2024-05-01T10:00:00.123Z`); real Forgejo has whole seconds.
//! - Label names are not unique: creating a second label with the same name gives a second label (201), as in
//!   Forgejo. Colors are normalised to 6 lowercase hex digits and returned without `#`.
//! - Mixing ids and names in `{"labels": [...]}` is 400 (Forgejo's `prepareForReplaceOrAdd`); unknown ids or names
//!   are dropped silently. `DELETE .../labels/{id}` with an unknown label is 422 (not 404), as in Forgejo.
//! - Every label call (add, replace, remove, clear) sends a webhook even when nothing changed, as Forgejo does;
//!   `updated_at` moves only when the labels really changed.
//! - The permission endpoint answers 403 unless the caller is a site admin, a repo admin/owner, or asks about
//!   itself (Forgejo's rule): give the bot `admin` with `set_permission`. A non-collaborator gets `read` on a public
//!   repository, `none` on a private one; `role_name` equals `permission`.
//! - Hooks: `active` defaults to false as in Forgejo (the Go zero value); `events: ["issues"]` also subscribes to
//!   `issue_assign`, `issue_label`, `issue_milestone` and `issue_comment`; `pull_request` to every `pull_request_*`
//!   kind; no events means `["push"]`. A comment on a pull request is event `issue_comment`, type
//!   `pull_request_comment`, and needs a hook with `pull_request` (or `pull_request_comment`).
//! - Reactions don't bump `updated_at` and send no webhook (Forgejo has no reaction webhook).
//! - JSON is written like Go writes it: `<`, `>`, `&` escaped as `\u003c`...; an issue without assignees has
//!   `"assignees": null`; `issues` payloads carry `commit_id: ""` and `issue_comment` ones `is_pull`, as current
//!   Forgejo's do. Pull request commits are listed newest first (git log order); changed files say `changed` for a
//!   modification, commit files `modified`.
//! - `POST /pulls` checks in Forgejo's order: `[Head]`, `[Base]`, `[Title]: Required` (422), head == base (422), a
//!   base then a head branch that isn't there (404, the reason in `errors`), an open pull request with the same
//!   head and base (409). Forgejo lets anyone who may read the code open one; the fake asks for write (403). Only
//!   branches are taken (Forgejo also takes a commit sha or a tag), and `owner:branch` only for the repository's
//!   own owner (there are no forks). With `link_git`, shas, commits and files come from git and
//!   `refs/pull/<n>/head` is written there; later changes made through the methods below don't touch git.
//! - `GET /pulls` without `state` lists open and closed pull requests alike, as Forgejo's handler does (its OpenAPI
//!   says the default is `open`).
//! - Contents' `sha` is a stand-in (SHA-256 prefix, not a git blob id); commit shas are whatever the test gives (or
//!   git's, for a pull request opened over the API in a linked repository).
//!   `X-Hub-Signature` (SHA-1) is not sent; `X-Hub-Signature-256` is.

mod changes;
mod listing;
pub mod probe;
mod pulls;
mod render;
mod reviews;
mod routes;
mod state;
mod webhooks;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use changes::{IssueEdit, LabelOp, NewPull};
#[allow(unused_imports)]
pub use reviews::NewReview;
use state::State;
#[allow(unused_imports)]
pub use webhooks::{sign, uuid_v4};

/// Forgejo's `[api] MAX_RESPONSE_ITEMS` default.
pub const MAX_RESPONSE_ITEMS: usize = 50;
/// Forgejo's `[api] DEFAULT_PAGING_NUM` default.
pub const DEFAULT_PAGING_NUM: usize = 30;

/// A snapshot of an issue (or of the issue side of a pull request).
#[derive(Clone, Debug, PartialEq)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    pub body: String,
    /// `open` or `closed`.
    pub state: String,
    pub labels: Vec<String>,
    pub assignees: Vec<String>,
    pub user: String,
    pub comments: usize,
    pub is_pull: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

impl Issue {
    pub fn is_open(&self) -> bool {
        self.state == "open"
    }
    pub fn has_label(&self, name: &str) -> bool {
        self.labels.iter().any(|l| l == name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub id: i64,
    pub name: String,
    /// Six hex digits, no `#`.
    pub color: String,
    pub description: String,
    pub exclusive: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    pub id: i64,
    pub issue: u64,
    pub user: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reaction {
    pub user: String,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CommitStatus {
    pub id: i64,
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: String,
    pub target_url: String,
    pub creator: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    pub id: i64,
    pub url: String,
    pub content_type: String,
    pub secret: String,
    /// The expanded event kinds, as Forgejo lists them (`issues`, `issue_label`, ...).
    pub events: Vec<String>,
    pub active: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PullRequest {
    pub number: u64,
    pub state: String,
    pub merged: bool,
    pub head_ref: String,
    pub head_sha: String,
    pub base_ref: String,
    pub base_sha: String,
    pub commits: Vec<FakeCommit>,
    /// Forgejo's `mergeable`, as the API shows it now.
    pub mergeable: bool,
}

/// A commit of a pull request, as the test describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeCommit {
    pub sha: String,
    pub message: String,
    pub files: Vec<FakeFile>,
}

impl FakeCommit {
    pub fn new(sha: &str, message: &str) -> FakeCommit {
        FakeCommit { sha: sha.to_string(), message: message.to_string(), files: Vec::new() }
    }
    /// `status`: `added`, `modified`, `deleted` or `renamed`.
    pub fn file(mut self, filename: &str, status: &str, additions: u64, deletions: u64) -> FakeCommit {
        self.files.push(FakeFile { filename: filename.to_string(), status: status.to_string(), additions, deletions });
        self
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FakeFile {
    pub filename: String,
    pub status: String,
    pub additions: u64,
    pub deletions: u64,
}

/// One REST request the fake answered.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    /// Including `/api/v1`.
    pub path: String,
    /// The raw query string, `""` when none.
    pub query: String,
    pub user: Option<String>,
    pub status: u16,
}

/// One webhook delivery attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The `X-Forgejo-Delivery` UUID.
    pub id: String,
    pub hook_id: i64,
    pub url: String,
    pub repo: String,
    /// `X-Forgejo-Event`: `issues`, `issue_comment`, `pull_request`.
    pub event: String,
    /// `X-Forgejo-Event-Type`: `issues`, `issue_label`, `pull_request_comment`, ...
    pub event_type: String,
    pub action: String,
    /// The exact body that was (or would have been) sent.
    pub body: String,
    pub outcome: DeliveryOutcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryOutcome {
    /// The receiver answered with this status.
    Status(u16),
    /// Connection error or the 5 s timeout.
    Error(String),
    /// Lost on purpose by `drop_next_webhooks`.
    Dropped,
}

/// The running fake; stops when dropped.
pub struct FakeForgejo {
    state: Arc<Mutex<State>>,
    url: String,
    pending: watch::Receiver<usize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeForgejo {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeForgejo {
    /// Binds 127.0.0.1:0 and serves in the current tokio runtime.
    pub async fn start() -> FakeForgejo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake forgejo");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel();
        let (pending_tx, pending) = watch::channel(0usize);
        let state = Arc::new(Mutex::new(State::new(url.clone(), jobs_tx, pending_tx)));
        let app = routes::router(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let worker = tokio::spawn(webhooks::worker(jobs_rx, state.clone()));
        FakeForgejo { state, url, pending, tasks: vec![server, worker] }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash (the API is under `/api/v1`).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Waits until every webhook queued so far was attempted (delivered, failed or dropped).
    pub async fn settle(&self) {
        let mut rx = self.pending.clone();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    // ----- people and repositories -----

    /// A user whose API token is `token`.
    pub async fn add_user(&self, login: &str, token: &str) {
        self.with(|s| s.add_user(login, Some(token)));
    }

    /// A site administrator (may query anyone's permission anywhere).
    pub async fn add_admin(&self, login: &str, token: &str) {
        self.with(|s| {
            s.add_user(login, Some(token));
            s.user_mut(login).is_admin = true;
        });
    }

    /// A public repository `owner/name` with default branch `main`; the owner user is created if needed.
    pub async fn create_repo(&self, full_name: &str) {
        self.with(|s| s.create_repo(full_name));
    }

    /// `owner/name` is deleted and a new, empty repository is created under the same name: its issues are numbered
    /// from 1 again, with new ids (ids are global and never reused, as in Forgejo). Hooks and permissions go too.
    pub async fn recreate_repo(&self, full_name: &str) {
        self.with(|s| {
            s.repos.remove(&full_name.to_ascii_lowercase());
            s.create_repo(full_name)
        });
    }

    /// The bare repository holding `repo`'s git data (e.g. a [`TestRepo`]'s `bare`, served by a `GitServer`). From
    /// then on `POST /pulls` reads the head and base branches from it (`git rev-parse`), fills the pull request's
    /// commits and files from `git log base..head`, and writes `refs/pull/<n>/head` there, as Forgejo does.
    ///
    /// [`TestRepo`]: super::git::TestRepo
    pub async fn link_git(&self, repo: &str, bare_dir: &Path) {
        self.with(|s| s.repo_mut(repo).git_dir = Some(bare_dir.to_path_buf()));
    }

    pub async fn set_private(&self, repo: &str, private: bool) {
        self.with(|s| s.repo_mut(repo).private = private);
    }

    /// `read`, `write`, `admin` (or `none`) for `user` on `repo`, as a collaborator.
    pub async fn set_permission(&self, repo: &str, user: &str, permission: &str) {
        let perm = state::Perm::parse(permission).unwrap_or_else(|| panic!("unknown permission {permission}"));
        self.with(|s| {
            s.add_user(user, None);
            s.repo_mut(repo).perms.insert(user.to_ascii_lowercase(), perm);
        });
    }

    /// A user whose API token is `token`, with `permission` on `repo` (see [`FakeForgejo::set_permission`]).
    pub async fn add_member(&self, repo: &str, login: &str, token: &str, permission: &str) {
        self.add_user(login, token).await;
        self.set_permission(repo, login, permission).await;
    }

    /// Points `branch` at `sha` (the default branch and pull request heads are created automatically).
    pub async fn set_branch(&self, repo: &str, branch: &str, sha: &str) {
        self.with(|s| s.repo_mut(repo).branches.insert(branch.to_string(), sha.to_string()));
    }

    /// A file on the default branch, for `GET /contents/{path}`.
    pub async fn set_file(&self, repo: &str, path: &str, content: &str) {
        self.with(|s| {
            let branch = s.repo_mut(repo).default_branch.clone();
            s.repo_mut(repo).files.insert((branch, path.to_string()), content.as_bytes().to_vec());
        });
    }

    /// A file at a given branch (or sha, or tag name).
    pub async fn set_file_at(&self, repo: &str, git_ref: &str, path: &str, content: &str) {
        self.with(|s| {
            s.repo_mut(repo).files.insert((git_ref.to_string(), path.to_string()), content.as_bytes().to_vec())
        });
    }

    pub async fn remove_file(&self, repo: &str, path: &str) {
        self.with(|s| s.repo_mut(repo).files.retain(|(_, p), _| p != path));
    }

    /// A webhook as if an admin had added it in the UI: active, JSON, for the given event names.
    pub async fn add_hook(&self, repo: &str, url: &str, secret: &str, events: &[&str]) -> i64 {
        let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
        self.with(|s| s.add_hook(repo, "forgejo", url, "json", secret, &events, true))
    }

    // ----- labels and issues -----

    /// A label; `color` with or without `#`.
    pub async fn create_label(&self, repo: &str, name: &str, color: &str, description: &str, exclusive: bool) -> i64 {
        self.with(|s| s.create_label(repo, name, color, description, exclusive).expect("valid label").id)
    }

    /// Opens an issue (webhook `issues`/`opened`). Labels that don't exist yet are created first.
    pub async fn create_issue(&self, repo: &str, as_user: &str, title: &str, body: &str, labels: &[&str]) -> u64 {
        self.with(|s| {
            let ids = s.ensure_labels(repo, labels);
            s.create_issue(repo, as_user, title, body, ids, None)
        })
    }

    /// Adds labels (webhook `label_updated`). Labels that don't exist yet are created first.
    pub async fn add_labels(&self, repo: &str, number: u64, as_user: &str, names: &[&str]) {
        self.with(|s| {
            let ids = s.ensure_labels(repo, names);
            s.change_labels(repo, number, as_user, LabelOp::Add(ids)).expect("add labels")
        })
    }

    /// Removes one label by name (webhook `label_updated`); panics when the repository has no such label.
    pub async fn remove_label(&self, repo: &str, number: u64, as_user: &str, name: &str) {
        self.with(|s| {
            let id = s.label_ids_by_names(repo, &[name.to_string()]).first().copied();
            let id = id.unwrap_or_else(|| panic!("{repo} has no label {name}"));
            s.change_labels(repo, number, as_user, LabelOp::Remove(id)).expect("remove label")
        })
    }

    /// Replaces all labels (webhook `label_updated`, or `label_cleared` when `names` is empty).
    pub async fn set_labels(&self, repo: &str, number: u64, as_user: &str, names: &[&str]) {
        self.with(|s| {
            let op = if names.is_empty() { LabelOp::Clear } else { LabelOp::Replace(s.ensure_labels(repo, names)) };
            s.change_labels(repo, number, as_user, op).expect("set labels")
        })
    }

    /// Posts a comment (webhook `issue_comment`/`created`) and returns its id.
    pub async fn comment(&self, repo: &str, number: u64, as_user: &str, body: &str) -> i64 {
        self.with(|s| s.add_comment(repo, number, as_user, body).expect("comment"))
    }

    /// Edits a comment (webhook `issue_comment`/`edited` with `changes.body.from`).
    pub async fn edit_comment(&self, repo: &str, comment_id: i64, as_user: &str, body: &str) {
        self.with(|s| s.edit_comment(repo, comment_id, as_user, body).expect("edit comment"))
    }

    pub async fn delete_comment(&self, repo: &str, comment_id: i64, as_user: &str) {
        self.with(|s| s.delete_comment(repo, comment_id, as_user).expect("delete comment"))
    }

    pub async fn close_issue(&self, repo: &str, number: u64, as_user: &str) {
        self.edit_issue(repo, number, as_user, IssueEdit { state: Some("closed".into()), ..Default::default() });
    }

    /// Deletes an issue as an admin does in Forgejo's UI: it is gone from the API (404) at once.
    pub async fn delete_issue(&self, repo: &str, number: u64) {
        self.with(|s| s.repo_mut(repo).issues.remove(&number).expect("the issue exists"));
    }

    pub async fn reopen_issue(&self, repo: &str, number: u64, as_user: &str) {
        self.edit_issue(repo, number, as_user, IssueEdit { state: Some("open".into()), ..Default::default() });
    }

    pub async fn set_title(&self, repo: &str, number: u64, as_user: &str, title: &str) {
        self.edit_issue(repo, number, as_user, IssueEdit { title: Some(title.into()), ..Default::default() });
    }

    pub async fn set_body(&self, repo: &str, number: u64, as_user: &str, body: &str) {
        self.edit_issue(repo, number, as_user, IssueEdit { body: Some(body.into()), ..Default::default() });
    }

    pub async fn set_assignees(&self, repo: &str, number: u64, as_user: &str, logins: &[&str]) {
        let assignees = Some(logins.iter().map(|l| l.to_string()).collect());
        self.edit_issue(repo, number, as_user, IssueEdit { assignees, ..Default::default() });
    }

    fn edit_issue(&self, repo: &str, number: u64, as_user: &str, edit: IssueEdit) {
        self.with(|s| s.edit_issue(repo, number, as_user, edit).expect("edit issue"))
    }

    pub async fn react(&self, repo: &str, number: u64, as_user: &str, content: &str) {
        self.with(|s| s.add_reaction(repo, number, as_user, content).expect("reaction"));
    }

    // ----- pull requests -----

    /// Opens a pull request from `head_ref` (at `head_sha`) into `base_ref` (webhook `pull_request`/`opened`).
    #[allow(clippy::too_many_arguments)]
    pub async fn create_pull(
        &self,
        repo: &str,
        as_user: &str,
        title: &str,
        body: &str,
        head_ref: &str,
        head_sha: &str,
        base_ref: &str,
    ) -> u64 {
        let new = NewPull {
            head_ref: head_ref.to_string(),
            head_sha: head_sha.to_string(),
            base_ref: base_ref.to_string(),
            base_sha: None,
            labels: Vec::new(),
            commits: Vec::new(),
        };
        self.with(|s| s.create_pull(repo, as_user, title, body, new))
    }

    /// Sets the commits the pull request shows (newest last) without a webhook; the head moves to the last one.
    pub async fn set_pull_commits(&self, repo: &str, number: u64, commits: &[FakeCommit]) {
        self.with(|s| s.push_to_pull(repo, number, None, commits, true).expect("set commits"))
    }

    /// Pushes more commits to the head branch (webhook `pull_request`/`synchronized`).
    pub async fn push_to_pull(&self, repo: &str, number: u64, as_user: &str, commits: &[FakeCommit]) {
        self.with(|s| s.push_to_pull(repo, number, Some(as_user), commits, false).expect("push"))
    }

    /// Merges (webhook `pull_request`/`closed` with `merged: true`); returns the merge commit sha.
    pub async fn merge_pull(&self, repo: &str, number: u64, as_user: &str) -> String {
        self.with(|s| s.merge_pull(repo, number, as_user).expect("merge"))
    }

    /// Submits a review of pull request `number` as `as_user` (webhook `pull_request_rejected`, `_approved` or
    /// `pull_request_comment` by its kind); its id, or Forgejo's status and message when it refuses.
    pub async fn review(
        &self,
        repo: &str,
        number: u64,
        as_user: &str,
        review: NewReview<'_>,
    ) -> Result<i64, (u16, String)> {
        self.with(|s| s.submit_review(repo, number, as_user, review).map_err(|e| (e.status, e.message)))
    }

    pub async fn pull(&self, repo: &str, number: u64) -> PullRequest {
        self.with(|s| s.pull_snapshot(repo, number))
    }

    // ----- what is there now -----

    pub async fn issue(&self, repo: &str, number: u64) -> Issue {
        self.with(|s| s.issue_snapshot(repo, number))
    }

    /// All issues and pull requests, by number.
    pub async fn issues(&self, repo: &str) -> Vec<Issue> {
        self.with(|s| {
            let numbers: Vec<u64> = s.repo_mut(repo).issues.keys().copied().collect();
            numbers.into_iter().map(|n| s.issue_snapshot(repo, n)).collect()
        })
    }

    /// The comments of an issue, oldest first.
    pub async fn comments(&self, repo: &str, number: u64) -> Vec<Comment> {
        self.with(|s| s.repo_mut(repo).comments.iter().filter(|c| c.issue == number).cloned().collect())
    }

    pub async fn reactions(&self, repo: &str, number: u64) -> Vec<Reaction> {
        self.with(|s| s.issue_mut(repo, number).expect("issue").reactions.iter().map(|r| r.reaction.clone()).collect())
    }

    /// Commit statuses for a sha, oldest first.
    pub async fn statuses(&self, repo: &str, sha: &str) -> Vec<CommitStatus> {
        self.with(|s| {
            s.repo_mut(repo).statuses.iter().filter(|st| st.status.sha == sha).map(|st| st.status.clone()).collect()
        })
    }

    pub async fn labels(&self, repo: &str) -> Vec<Label> {
        self.with(|s| s.repo_mut(repo).labels.clone())
    }

    pub async fn hooks(&self, repo: &str) -> Vec<Hook> {
        self.with(|s| s.repo_mut(repo).hooks.iter().map(|h| h.hook.clone()).collect())
    }

    // ----- faults and logs -----

    /// The next `n` webhook deliveries are lost: never sent, recorded as `Dropped`.
    pub async fn drop_next_webhooks(&self, n: usize) {
        self.with(|s| s.faults.drop_webhooks = n);
    }

    /// The next `n` REST requests answer `status` with Forgejo's error JSON.
    pub async fn fail_next_requests(&self, n: usize, status: u16) {
        self.with(|s| s.faults.fail_next = Some((n, status)));
    }

    /// Every REST request answers `status` for `duration`.
    pub async fn fail_requests_for(&self, duration: Duration, status: u16) {
        self.with(|s| s.faults.fail_until = Some((Some(std::time::Instant::now() + duration), status)));
    }

    /// Every REST request answers `status` until `heal()`.
    pub async fn fail_requests_until_healed(&self, status: u16) {
        self.with(|s| s.faults.fail_until = Some((None, status)));
    }

    /// The next `n` POST requests are applied as usual, but answered only after `wait`: longer than the client's
    /// timeout, the client sees no answer to a request that took effect.
    pub async fn answer_posts_late(&self, n: usize, wait: Duration) {
        self.with(|s| s.faults.late_posts = Some((n, wait)));
    }

    /// Every REST request to `path` (including `/api/v1`) answers `status` until `heal()`.
    pub async fn fail_path_until_healed(&self, path: &str, status: u16) {
        self.with(|s| s.faults.fail_path = Some((path.to_string(), status)));
    }

    /// Clears every request and webhook fault.
    pub async fn heal(&self) {
        self.with(|s| s.faults = Default::default());
    }

    /// Every REST request so far, in order.
    pub async fn requests(&self) -> Vec<RecordedRequest> {
        self.with(|s| s.requests.clone())
    }

    /// How many REST requests had this method and a path starting with `path_prefix` (e.g. `/api/v1/repos/o/r/issues`).
    pub async fn count_requests(&self, method: &str, path_prefix: &str) -> usize {
        self.with(|s| s.requests.iter().filter(|r| r.method == method && r.path.starts_with(path_prefix)).count())
    }

    pub async fn clear_requests(&self) {
        self.with(|s| s.requests.clear());
    }

    /// Every webhook delivery attempt so far, in order.
    pub async fn deliveries(&self) -> Vec<Delivery> {
        self.with(|s| s.deliveries.clone())
    }
}
