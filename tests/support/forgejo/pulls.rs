//! `POST /repos/{o}/{r}/pulls`: opening a pull request over the API, with the checks of Forgejo's
//! `CreatePullRequest` and `parseCompareInfo` (routers/api/v1/repo/pull.go) in their order. When a bare repository
//! is linked (`FakeForgejo::link_git`) the branch tips and the commits come from git, and `refs/pull/<n>/head` is
//! written there before the webhook goes out (Forgejo's `NewPullRequest` pushes it to the base repository first);
//! otherwise the fake's own `branches` are all there is and the pull request starts without commits.

use std::path::Path;
use std::process::Output;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::super::git::git_command;
use super::FakeCommit;
use super::changes::NewPull;
use super::render;
use super::routes::{Reply, Req, ok, str_field};
use super::state::{ApiErr, Perm, PullRec, RepoRec, State, Time};

/// The route itself; the caller checked the token and write permission.
pub(super) fn open_pull(st: &mut State, full: &str, perm: Perm, req: &Req) -> Result<Reply, ApiErr> {
    let body = req.json()?;
    // Forgejo's form binding checks `head`, `base`, `title` in that order and reports the first that is missing.
    let field = |key: &str| str_field(&body, key).filter(|v| !v.trim().is_empty());
    let head = field("head").ok_or_else(|| ApiErr::new(422, "[Head]: Required"))?;
    let base = field("base").ok_or_else(|| ApiErr::new(422, "[Base]: Required"))?;
    let title = field("title").ok_or_else(|| ApiErr::new(422, "[Title]: Required"))?;
    if head == base {
        return Err(ApiErr::new(422, "Invalid PullRequest: There are no changes between the head and the base"));
    }
    let r = st.find_repo(full).expect("repo");
    let head_ref = head_branch(st, r, head)?;
    let base_sha = tip(r, base)?.ok_or_else(|| missing(r, base, "base"))?;
    let head_sha = tip(r, head_ref)?.ok_or_else(|| missing(r, head_ref, "head"))?;
    let same_targets = |p: &PullRec| !p.merged && p.head_ref == head_ref && p.base_ref == base;
    if let Some(i) = r.issues.values().find(|i| i.open && i.pull.as_ref().is_some_and(same_targets)) {
        // Forgejo's ErrPullRequestAlreadyExists, `issue_id` being the index, as its handler fills it.
        return Err(ApiErr::new(
            409,
            format!(
                "pull request already exists for these targets [id: {}, issue_id: {}, head_repo_id: {}, \
                 base_repo_id: {}, head_branch: {head_ref}, base_branch: {base}]",
                i.id, i.number, r.id, r.id
            ),
        ));
    }
    // Unknown label ids are dropped silently (GetLabelsInRepoByIDs).
    let labels: Vec<i64> = body["labels"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
    let labels = labels.into_iter().filter(|id| r.label(*id).is_some()).collect();
    let number = r.next_index;
    let commits = match &r.git_dir {
        Some(dir) => {
            let commits = commits_between(dir, &base_sha, &head_sha)?;
            git_ok(dir, &["update-ref", &format!("refs/pull/{number}/head"), &head_sha])?;
            commits
        }
        None => Vec::new(),
    };
    let new = NewPull {
        head_ref: head_ref.to_string(),
        head_sha,
        base_ref: base.to_string(),
        base_sha: Some(base_sha),
        labels,
        commits,
    };
    let n = st.create_pull(full, req.doer()?, title, str_field(&body, "body").unwrap_or(""), new);
    assert_eq!(n, number, "the index refs/pull/<n>/head was written for");
    let r = st.find_repo(full).expect("repo");
    ok(201, render::pull(st, r, &r.issues[&n], perm))
}

/// What Forgejo does when a pull request's head branch is pushed to (`AddTestPullRequestTask`): for a linked
/// repository, each open pull request whose branch moved gets the new head, its commits since the base's tip and
/// `refs/pull/<n>/head`. Forgejo does it on the push; the fake, which sees no push, before pull requests are read.
pub(super) fn follow_pushes(st: &mut State, full: &str) -> Result<(), ApiErr> {
    let r = st.find_repo(full).expect("repo");
    let Some(dir) = r.git_dir.clone() else { return Ok(()) };
    let mut moved = Vec::new();
    for i in r.issues.values().filter(|i| i.open) {
        let Some(p) = i.pull.as_ref().filter(|p| !p.merged) else { continue };
        if let Some(new) = tip(r, &p.head_ref)?.filter(|t| *t != p.head_sha) {
            let base = tip(r, &p.base_ref)?.unwrap_or_else(|| p.base_sha.clone());
            moved.push((i.number, base, new));
        }
    }
    for (n, base, new) in moved {
        let commits = commits_between(&dir, &base, &new)?;
        git_ok(&dir, &["update-ref", &format!("refs/pull/{n}/head"), &new])?;
        let pull = st.issue_mut(full, n)?.pull.as_mut().expect("a pull request");
        pull.commits = commits;
        pull.head_sha = new;
    }
    Ok(())
}

/// Forgejo's `mergeable` of an open pull request: for a linked repository, whether git merges its head into the
/// base branch's tip without conflicts (`git merge-tree --write-tree` exits 1 on conflicts); without git, always.
pub(super) fn merges_cleanly(r: &RepoRec, p: &PullRec) -> bool {
    let Some(dir) = &r.git_dir else { return true };
    let base = format!("refs/heads/{}", p.base_ref);
    git_in(dir, &["merge-tree", "--write-tree", &base, &p.head_sha]).is_ok_and(|o| o.status.success())
}

/// The tip of the base branch as Forgejo shows it (`base.sha`): in a linked repository, where the branch is now.
pub(super) fn base_tip(r: &RepoRec, p: &PullRec) -> String {
    match &r.git_dir {
        Some(_) => tip(r, &p.base_ref).ok().flatten().unwrap_or_else(|| p.base_sha.clone()),
        None => p.base_sha.clone(),
    }
}

/// `branch` or `owner:branch`; the fake has no forks, so another owner's branch is never found.
fn head_branch<'h>(st: &State, r: &RepoRec, head: &'h str) -> Result<&'h str, ApiErr> {
    let parts: Vec<&str> = head.split(':').collect();
    let full = r.full_name();
    match parts[..] {
        [branch] => Ok(branch),
        [owner, branch] if owner.eq_ignore_ascii_case(&r.owner) => Ok(branch),
        [owner, _] => match st.users.get(&owner.to_ascii_lowercase()) {
            None => Err(ApiErr::not_found_because(format!("the owner {owner} does not exist"))),
            Some(u) => Err(ApiErr::not_found_because(format!(
                "{0} does not have a fork of {full} and {full} is not a fork of a repository from {0}",
                u.login
            ))),
        },
        _ => Err(ApiErr::not_found_because(format!(
            "the head part of {{basehead}} {head} must contain zero or one colon (:) but contains {}",
            parts.len() - 1
        ))),
    }
}

/// Forgejo's 404 for a branch that is not there (it would also take a commit or a tag; the fake only branches).
fn missing(r: &RepoRec, branch: &str, side: &str) -> ApiErr {
    let full = r.full_name();
    ApiErr::not_found_because(format!(
        "could not find '{branch}' to be a commit, branch or tag in the {side} repository {full}"
    ))
}

/// Where `branch` points: in the linked bare repository, or in the fake's `branches`.
fn tip(r: &RepoRec, branch: &str) -> Result<Option<String>, ApiErr> {
    let Some(dir) = &r.git_dir else { return Ok(r.branches.get(branch).cloned()) };
    let out = git_in(dir, &["rev-parse", "--verify", "-q", &format!("refs/heads/{branch}")])?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_string())),
        // `--verify -q` exits 1, silently, for a ref that does not exist.
        Some(1) => Ok(None),
        _ => Err(git_failed(dir, "rev-parse", &out)),
    }
}

/// `git <args>` in `dir`, without the machine's config (tests/support/git.rs's `git_command`).
fn git_in(dir: &Path, args: &[&str]) -> Result<Output, ApiErr> {
    let now = Utc::now().timestamp().max(0) as u64;
    git_command(dir, now)
        .args(args)
        .output()
        .map_err(|e| ApiErr::new(500, format!("git {} in {}: {e}", args[0], dir.display())))
}

fn git_ok(dir: &Path, args: &[&str]) -> Result<String, ApiErr> {
    let out = git_in(dir, args)?;
    if !out.status.success() {
        return Err(git_failed(dir, args[0], &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn git_failed(dir: &Path, what: &str, out: &Output) -> ApiErr {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ApiErr::new(500, format!("git {what} in {} failed: {}", dir.display(), stderr.trim()))
}

/// The commits of `base..head`, oldest first, with their files: `git log --raw --numstat` lists each commit's files
/// twice in the same order, once with the status and once with the line counts.
fn commits_between(dir: &Path, base: &str, head: &str) -> Result<Vec<(FakeCommit, Time)>, ApiErr> {
    let range = format!("{base}..{head}");
    let log = git_ok(dir, &["log", "--reverse", "-M", "--raw", "--numstat", "--format=%x1e%H %ct%n%B%x1d", &range])?;
    let mut commits = Vec::new();
    for entry in log.split('\x1e').filter(|e| !e.trim().is_empty()) {
        let (top, rest) = entry.split_once('\n').unwrap_or((entry, ""));
        let (sha, seconds) = top.split_once(' ').unwrap_or((top, "0"));
        let (message, changes) = rest.split_once('\x1d').unwrap_or((rest, ""));
        let when = DateTime::from_timestamp(seconds.trim().parse().unwrap_or(0), 0).unwrap_or(DateTime::UNIX_EPOCH);
        // The message as git stores it, ending with one newline.
        let mut commit = FakeCommit::new(sha, &format!("{}\n", message.trim_end_matches('\n')));
        let raw = changes.lines().filter(|l| l.starts_with(':'));
        let counts = changes.lines().filter(|l| !l.is_empty() && !l.starts_with(':'));
        for (raw, count) in raw.zip(counts) {
            // `:100644 100644 <old> <new> R087\told\tnew`, then `<added>\t<deleted>\t<path>` (`-` for binary).
            let mut fields = raw.split('\t');
            let letter = fields.next().and_then(|f| f.rsplit(' ').next()).and_then(|s| s.chars().next());
            let path = fields.next_back().unwrap_or("");
            let status = match letter {
                Some('A') => "added",
                Some('D') => "deleted",
                Some('R') => "renamed",
                _ => "modified",
            };
            let mut n = count.split('\t').map(|v| v.parse::<u64>().unwrap_or(0));
            commit = commit.file(path, status, n.next().unwrap_or(0), n.next().unwrap_or(0));
        }
        commits.push((commit, when));
    }
    Ok(commits)
}
