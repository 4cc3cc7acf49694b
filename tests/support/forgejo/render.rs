//! The fake's records as Forgejo's JSON (the OpenAPI definitions of the same names). Go's nil slices and pointers
//! come out as `null` where Forgejo's do (`assignees` of an unassigned issue, `milestone`, `closed_at`, ...).

use chrono::SecondsFormat;
use serde_json::{Map, Value, json};

use super::state::{HookRec, IssueRec, Perm, PullRec, ReactionRec, RepoRec, State, StatusRec, Time};
use super::{Comment, FakeCommit, Label};

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

pub(crate) fn ts(t: Time) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn ts_opt(t: Option<Time>) -> Value {
    t.map(ts).unwrap_or(Value::Null)
}

/// Joins objects built by several `json!` calls (one call with every field would pass the macro recursion limit).
fn merge(parts: impl IntoIterator<Item = Value>) -> Value {
    let mut out = Map::new();
    for part in parts {
        if let Value::Object(map) = part {
            out.extend(map);
        }
    }
    Value::Object(out)
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A user as Forgejo shows it; a login the fake doesn't know is Forgejo's "Ghost".
pub(crate) fn user(st: &State, login: &str) -> Value {
    let Some(u) = st.users.get(&login.to_ascii_lowercase()) else {
        return json!({"id": -1, "login": "Ghost", "full_name": "", "email": "", "avatar_url": "", "html_url": ""});
    };
    let base = &st.base;
    merge([
        json!({
            "id": u.id,
            "login": u.login,
            "login_name": "",
            "source_id": 0,
            "full_name": "",
            "email": format!("{}@noreply.localhost", u.login.to_ascii_lowercase()),
            "avatar_url": format!("{base}/avatars/{}", u.id),
            "html_url": format!("{base}/{}", u.login),
            "language": "en-US",
            "is_admin": u.is_admin,
            "last_login": ts(u.created),
            "created": ts(u.created),
        }),
        json!({
            "restricted": false,
            "active": true,
            "prohibit_login": false,
            "location": "",
            "pronouns": "",
            "website": "",
            "description": "",
            "visibility": "public",
            "followers_count": 0,
            "following_count": 0,
            "starred_repos_count": 0,
        }),
    ])
}

pub(crate) fn repo(st: &State, r: &RepoRec, perm: Perm) -> Value {
    let base = &st.base;
    let full = r.full_name();
    let open = |pull: bool| r.issues.values().filter(|i| i.open && i.pull.is_some() == pull).count();
    merge([
        json!({
            "id": r.id,
            "owner": user(st, &r.owner),
            "name": r.name,
            "full_name": full,
            "description": "",
            "empty": false,
            "private": r.private,
            "fork": false,
            "template": false,
            "parent": null,
            "mirror": false,
            "size": 0,
            "language": "",
            "languages_url": format!("{base}/api/v1/repos/{full}/languages"),
            "html_url": format!("{base}/{full}"),
            "url": format!("{base}/api/v1/repos/{full}"),
            "link": "",
            "ssh_url": format!("ssh://git@127.0.0.1/{full}.git"),
            "clone_url": format!("{base}/{full}.git"),
            "original_url": "",
            "website": "",
        }),
        json!({
            "stars_count": 0,
            "forks_count": 0,
            "watchers_count": 1,
            "open_issues_count": open(false),
            "open_pr_counter": open(true),
            "release_counter": 0,
            "default_branch": r.default_branch,
            "archived": false,
            "created_at": ts(r.created),
            "updated_at": ts(r.created),
            "archived_at": "1970-01-01T00:00:00Z",
            "permissions": {"admin": perm >= Perm::Admin, "push": perm >= Perm::Write, "pull": perm >= Perm::Read},
            "has_issues": true,
            "internal_tracker": {
                "enable_time_tracker": true,
                "allow_only_contributors_to_track_time": true,
                "enable_issue_dependencies": true,
            },
            "has_wiki": true,
            "has_pull_requests": true,
            "has_projects": true,
            "has_releases": true,
            "has_packages": true,
            "has_actions": true,
        }),
        json!({
            "ignore_whitespace_conflicts": false,
            "allow_merge_commits": true,
            "allow_rebase": true,
            "allow_rebase_explicit": true,
            "allow_squash_merge": true,
            "allow_fast_forward_only_merge": true,
            "allow_rebase_update": true,
            "default_delete_branch_after_merge": false,
            "default_merge_style": "merge",
            "default_allow_maintainer_edit": false,
            "avatar_url": "",
            "internal": false,
            "mirror_interval": "",
            "object_format_name": "sha1",
            "mirror_updated": ZERO_TIME,
            "repo_transfer": null,
            "topics": null,
        }),
    ])
}

pub(crate) fn label(st: &State, r: &RepoRec, l: &Label) -> Value {
    json!({
        "id": l.id,
        "name": l.name,
        "exclusive": l.exclusive,
        "is_archived": false,
        "color": l.color,
        "description": l.description,
        "url": format!("{}/api/v1/repos/{}/labels/{}", st.base, r.full_name(), l.id),
    })
}

/// An issue's labels, sorted by name as Forgejo loads them.
pub(crate) fn issue_labels(st: &State, r: &RepoRec, i: &IssueRec) -> Value {
    let mut labels: Vec<&Label> = i.labels.iter().filter_map(|id| r.label(*id)).collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Value::Array(labels.into_iter().map(|l| label(st, r, l)).collect())
}

fn assignees(st: &State, i: &IssueRec) -> (Value, Value) {
    if i.assignees.is_empty() {
        return (Value::Null, Value::Null);
    }
    let all: Vec<Value> = i.assignees.iter().map(|a| user(st, a)).collect();
    (all[0].clone(), Value::Array(all))
}

fn html_url(st: &State, r: &RepoRec, i: &IssueRec) -> String {
    let kind = if i.pull.is_some() { "pulls" } else { "issues" };
    format!("{}/{}/{kind}/{}", st.base, r.full_name(), i.number)
}

pub(crate) fn issue(st: &State, r: &RepoRec, i: &IssueRec) -> Value {
    let (assignee, assignees) = assignees(st, i);
    let pull_request = match &i.pull {
        Some(p) => json!({
            "merged": p.merged,
            "merged_at": ts_opt(p.merged_at),
            "draft": false,
            "html_url": html_url(st, r, i),
        }),
        None => Value::Null,
    };
    merge([
        json!({
            "id": i.id,
            "url": format!("{}/api/v1/repos/{}/issues/{}", st.base, r.full_name(), i.number),
            "html_url": html_url(st, r, i),
            "number": i.number,
            "user": user(st, &i.user),
            "original_author": "",
            "original_author_id": 0,
            "title": i.title,
            "body": i.body,
            "ref": "",
            "assets": [],
            "labels": issue_labels(st, r, i),
            "milestone": null,
            "assignee": assignee,
            "assignees": assignees,
        }),
        json!({
            "state": if i.open { "open" } else { "closed" },
            "is_locked": false,
            "comments": r.comment_count(i.number),
            "created_at": ts(i.created),
            "updated_at": ts(i.updated),
            "closed_at": ts_opt(i.closed_at),
            "due_date": null,
            "pin_order": 0,
            "pull_request": pull_request,
            "repository": {"id": r.id, "name": r.name, "owner": r.owner, "full_name": r.full_name()},
        }),
    ])
}

fn branch(st: &State, r: &RepoRec, git_ref: &str, sha: &str, perm: Perm) -> Value {
    json!({"label": git_ref, "ref": git_ref, "sha": sha, "repo_id": r.id, "repo": repo(st, r, perm)})
}

/// A pull request's changed files: one per path, the first status kept (a later deletion wins).
pub(crate) fn changed_files(p: &PullRec) -> Vec<(String, String, u64, u64)> {
    let mut files: Vec<(String, String, u64, u64)> = Vec::new();
    for f in p.commits.iter().flat_map(|(c, _)| &c.files) {
        match files.iter_mut().find(|(name, ..)| *name == f.filename) {
            Some(entry) => {
                if f.status == "deleted" {
                    entry.1 = "deleted".into();
                }
                entry.2 += f.additions;
                entry.3 += f.deletions;
            }
            None => files.push((f.filename.clone(), f.status.clone(), f.additions, f.deletions)),
        }
    }
    files
}

pub(crate) fn pull(st: &State, r: &RepoRec, i: &IssueRec, perm: Perm) -> Value {
    let p = i.pull.as_ref().expect("a pull request");
    let (assignee, assignees) = assignees(st, i);
    let files = changed_files(p);
    let html = html_url(st, r, i);
    merge([
        json!({
            "id": i.id,
            "url": html,
            "number": i.number,
            "user": user(st, &i.user),
            "title": i.title,
            "body": i.body,
            "labels": issue_labels(st, r, i),
            "milestone": null,
            "assignee": assignee,
            "assignees": assignees,
            "requested_reviewers": null,
            "requested_reviewers_teams": null,
            "state": if i.open { "open" } else { "closed" },
            "draft": false,
            "is_locked": false,
            "comments": r.comment_count(i.number),
            "review_comments": 0,
            "additions": files.iter().map(|f| f.2).sum::<u64>(),
            "deletions": files.iter().map(|f| f.3).sum::<u64>(),
            "changed_files": files.len(),
        }),
        json!({
            "html_url": html,
            "diff_url": format!("{html}.diff"),
            "patch_url": format!("{html}.patch"),
            "mergeable": i.open && !p.merged && super::pulls::merges_cleanly(r, p),
            "merged": p.merged,
            "merged_at": ts_opt(p.merged_at),
            "merge_commit_sha": p.merge_commit_sha,
            "merged_by": p.merged_by.as_deref().map(|m| user(st, m)),
            "allow_maintainer_edit": false,
            "base": branch(st, r, &p.base_ref, &super::pulls::base_tip(r, p), perm),
            "head": branch(st, r, &p.head_ref, &p.head_sha, perm),
            "merge_base": p.base_sha,
            "due_date": null,
            "created_at": ts(i.created),
            "updated_at": ts(i.updated),
            "closed_at": ts_opt(i.closed_at),
            "pin_order": 0,
            "flow": 0,
        }),
    ])
}

pub(crate) fn comment(st: &State, r: &RepoRec, c: &Comment) -> Value {
    let is_pull = r.issues.get(&c.issue).is_some_and(|i| i.pull.is_some());
    let full = r.full_name();
    let kind = if is_pull { "pulls" } else { "issues" };
    let page = format!("{}/{full}/{kind}/{}", st.base, c.issue);
    json!({
        "id": c.id,
        "html_url": format!("{page}#issuecomment-{}", c.id),
        "pull_request_url": if is_pull { page.clone() } else { String::new() },
        "issue_url": if is_pull { String::new() } else { page },
        "user": user(st, &c.user),
        "original_author": "",
        "original_author_id": 0,
        "body": c.body,
        "assets": [],
        "created_at": ts(c.created_at),
        "updated_at": ts(c.updated_at),
    })
}

pub(crate) fn reaction(st: &State, r: &ReactionRec) -> Value {
    json!({"user": user(st, &r.reaction.user), "content": r.reaction.content, "created_at": ts(r.created)})
}

pub(crate) fn status(st: &State, r: &RepoRec, s: &StatusRec) -> Value {
    let c = &s.status;
    json!({
        "id": c.id,
        "status": c.state,
        "target_url": c.target_url,
        "description": c.description,
        "url": format!("{}/api/v1/repos/{}/statuses/{}", st.base, r.full_name(), c.sha),
        "context": c.context,
        "creator": user(st, &c.creator),
        "created_at": ts(s.created),
        "updated_at": ts(s.created),
    })
}

pub(crate) fn hook(h: &HookRec) -> Value {
    json!({
        "id": h.hook.id,
        "type": h.kind,
        "branch_filter": "",
        "config": {"url": h.hook.url, "content_type": h.hook.content_type},
        "events": h.hook.events,
        "authorization_header": "",
        "active": h.hook.active,
        "updated_at": ts(h.created),
        "created_at": ts(h.created),
    })
}

/// A stand-in for the blob id (the fake has no SHA-1): the first 40 hex digits of the content's SHA-256.
fn blob_sha(content: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(content).iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// A `ContentsResponse`: a file with its content, or (`content: None`) a directory entry.
pub(crate) fn contents(st: &State, r: &RepoRec, git_ref: &str, path: &str, content: Option<&[u8]>) -> Value {
    let base = &st.base;
    let full = r.full_name();
    let sha = content.map(blob_sha).unwrap_or_else(|| blob_sha(path.as_bytes()));
    let commit = r.branches.get(git_ref).cloned().unwrap_or_else(|| git_ref.to_string());
    let self_url = format!("{base}/api/v1/repos/{full}/contents/{path}?ref={git_ref}");
    let git_url = format!("{base}/api/v1/repos/{full}/git/blobs/{sha}");
    let html_url = format!("{base}/{full}/src/branch/{git_ref}/{path}");
    json!({
        "name": path.rsplit('/').next().unwrap_or(path),
        "path": path,
        "sha": sha,
        "last_commit_sha": commit,
        "type": if content.is_some() { "file" } else { "dir" },
        "size": content.map_or(0, <[u8]>::len),
        "encoding": content.map(|_| "base64"),
        "content": content.map(base64),
        "target": null,
        "url": self_url,
        "html_url": html_url,
        "git_url": git_url,
        "download_url": content.map(|_| format!("{base}/{full}/raw/branch/{git_ref}/{path}")),
        "submodule_git_url": null,
        "_links": {"self": self_url, "git": git_url, "html": html_url},
    })
}

/// A pull request commit; `parent` is the previous commit (or the base).
#[allow(clippy::too_many_arguments)]
pub(crate) fn commit(
    st: &State,
    r: &RepoRec,
    c: &FakeCommit,
    when: Time,
    author: &str,
    parent: &str,
    verification: bool,
    files: bool,
) -> Value {
    let base = &st.base;
    let full = r.full_name();
    let api = format!("{base}/api/v1/repos/{full}/git/commits/{}", c.sha);
    let person = json!({"name": author, "email": format!("{}@noreply.localhost", author.to_ascii_lowercase()), "date": ts(when)});
    let verification = verification.then(|| {
        json!({"verified": false, "reason": "gpg.error.not_signed_commit", "signature": "", "signer": null, "payload": ""})
    });
    let affected: Option<Vec<Value>> = files.then(|| {
        c.files
            .iter()
            .map(|f| {
                let status = match f.status.as_str() {
                    "deleted" | "removed" => "removed",
                    "added" => "added",
                    _ => "modified",
                };
                json!({"filename": f.filename, "status": status})
            })
            .collect()
    });
    let (additions, deletions) = c.files.iter().fold((0, 0), |(a, d), f| (a + f.additions, d + f.deletions));
    json!({
        "url": api,
        "sha": c.sha,
        "created": ts(when),
        "html_url": format!("{base}/{full}/commit/{}", c.sha),
        "commit": {
            "url": api,
            "author": person,
            "committer": person,
            "message": c.message,
            "tree": {"url": format!("{base}/api/v1/repos/{full}/git/trees/{}", c.sha), "sha": c.sha, "created": ts(when)},
            "verification": verification,
        },
        "author": user(st, author),
        "committer": user(st, author),
        "parents": [{"url": format!("{base}/api/v1/repos/{full}/git/commits/{parent}"), "sha": parent, "created": ts(when)}],
        "files": affected,
        "stats": {"total": additions + deletions, "additions": additions, "deletions": deletions},
    })
}

/// A `ChangedFile` of a pull request; Forgejo says `changed` for a modification.
pub(crate) fn changed_file(st: &State, r: &RepoRec, head: &str, f: &(String, String, u64, u64)) -> Value {
    let base = &st.base;
    let full = r.full_name();
    let status = match f.1.as_str() {
        "modified" => "changed",
        "removed" => "deleted",
        other => other,
    };
    json!({
        "filename": f.0,
        "previous_filename": "",
        "status": status,
        "additions": f.2,
        "deletions": f.3,
        "changes": f.2 + f.3,
        "html_url": format!("{base}/{full}/src/commit/{head}/{}", f.0),
        "contents_url": format!("{base}/api/v1/repos/{full}/contents/{}?ref={head}", f.0),
        "raw_url": format!("{base}/{full}/raw/commit/{head}/{}", f.0),
    })
}
