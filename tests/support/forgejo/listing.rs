//! The read-only listings of the REST surface: paging with Forgejo's `Link` and `X-Total-Count` headers, the
//! issue list and its filters, pull request details, repository contents and commit statuses.

use chrono::DateTime;
use serde_json::Value;

use super::routes::{Reply, Req, ok};
use super::state::{ApiErr, IssueRec, Perm, RepoRec, State, Time};
use super::webhooks::query_escape;
use super::{DEFAULT_PAGING_NUM, MAX_RESPONSE_ITEMS, render};

/// Slices one page out of `items` and adds `X-Total-Count` and Forgejo's `Link` header (next, last, first, prev).
pub(super) fn paginate<T>(st: &State, req: &Req, items: Vec<T>) -> (Vec<T>, Vec<(&'static str, String)>) {
    let total = items.len();
    let page = req.param("page").and_then(|p| p.parse::<i64>().ok()).filter(|p| *p > 0).unwrap_or(1) as usize;
    let limit = match req.param("limit").and_then(|l| l.parse::<i64>().ok()) {
        Some(l) if l > 0 => (l as usize).min(MAX_RESPONSE_ITEMS),
        _ => DEFAULT_PAGING_NUM,
    };
    let items: Vec<T> = items.into_iter().skip((page - 1) * limit).take(limit).collect();
    let pages = total.div_ceil(limit);
    let current = page.min(pages.max(1));
    let link = |p: usize, rel: &str| {
        let mut query: Vec<(String, String)> = req.query.iter().filter(|(k, _)| k != "page").cloned().collect();
        query.push(("page".into(), p.to_string()));
        query.sort_by(|a, b| a.0.cmp(&b.0));
        let query: Vec<String> =
            query.iter().map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v))).collect();
        format!("<{}{}?{}>; rel=\"{rel}\"", st.base, req.path, query.join("&"))
    };
    let mut links = Vec::new();
    let has_next = total > current * limit;
    if has_next {
        links.push(link(current + 1, "next"));
    }
    let is_last = total == 0 || (total > (current - 1) * limit && !has_next);
    if !is_last {
        links.push(link(pages, "last"));
    }
    if current > 1 {
        links.push(link(1, "first"));
        links.push(link(current - 1, "prev"));
    }
    let mut headers = vec![("x-total-count", total.to_string())];
    if !links.is_empty() {
        headers.push(("link", links.join(",")));
    }
    headers.push(("access-control-expose-headers", "Link, X-Total-Count".to_string()));
    (items, headers)
}

pub(super) fn paged(st: &State, req: &Req, items: Vec<Value>) -> Result<Reply, ApiErr> {
    let (items, headers) = paginate(st, req, items);
    Ok(Reply { status: 200, body: Some(Value::Array(items)), headers })
}

pub(super) fn parse_time(req: &Req, key: &str) -> Result<Option<Time>, ApiErr> {
    match req.param(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => DateTime::parse_from_rfc3339(v)
            .map(|t| Some(t.to_utc()))
            .map_err(|e| ApiErr::new(422, format!("invalid {key} {v:?}: {e}"))),
    }
}

/// `GET /issues`: state (open by default), type (both by default), labels (all must match; unknown names are
/// dropped, none known means no filter), since/before (inclusive, on `updated_at`), created_by, assigned_by, q,
/// sort (default newest created first).
pub(super) fn list_issues(st: &State, r: &RepoRec, req: &Req) -> Result<Reply, ApiErr> {
    let state = match req.param("state") {
        Some("closed") => Some(false),
        Some("all") => None,
        _ => Some(true),
    };
    let pulls = match req.param("type") {
        Some("pulls") => Some(true),
        Some("issues") => Some(false),
        _ => None,
    };
    let names: Vec<&str> =
        req.param("labels").unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let wanted: Vec<i64> = r.labels.iter().filter(|l| names.contains(&l.name.as_str())).map(|l| l.id).collect();
    let (since, before) = (parse_time(req, "since")?, parse_time(req, "before")?);
    let created_by = req.param("created_by").filter(|s| !s.is_empty());
    let assigned_by = req.param("assigned_by").filter(|s| !s.is_empty());
    let q = req.param("q").unwrap_or("").to_lowercase();
    let mut list: Vec<_> = r
        .issues
        .values()
        .filter(|i| state.is_none_or(|open| i.open == open))
        .filter(|i| pulls.is_none_or(|p| i.pull.is_some() == p))
        .filter(|i| wanted.iter().all(|id| i.labels.contains(id)))
        .filter(|i| since.is_none_or(|s| i.updated >= s) && before.is_none_or(|b| i.updated <= b))
        .filter(|i| created_by.is_none_or(|u| i.user.eq_ignore_ascii_case(u)))
        .filter(|i| assigned_by.is_none_or(|u| i.assignees.iter().any(|a| a.eq_ignore_ascii_case(u))))
        .filter(|i| q.is_empty() || i.title.to_lowercase().contains(&q) || i.body.to_lowercase().contains(&q))
        .collect();
    sort(&mut list, r, req);
    paged(st, req, list.into_iter().map(|i| render::issue(st, r, i)).collect())
}

/// Forgejo's `applySorts`: `sort` (default newest created first), for issue and pull request lists alike.
fn sort(list: &mut [&IssueRec], r: &RepoRec, req: &Req) {
    match req.param("sort") {
        Some("oldest") => list.sort_by_key(|i| (i.created, i.id)),
        Some("recentupdate") => list.sort_by_key(|i| std::cmp::Reverse((i.updated, i.id))),
        Some("leastupdate") => list.sort_by_key(|i| (i.updated, i.id)),
        Some("mostcomment") => list.sort_by_key(|i| std::cmp::Reverse((r.comment_count(i.number), i.id))),
        Some("leastcomment") => list.sort_by_key(|i| (r.comment_count(i.number), i.id)),
        _ => list.sort_by_key(|i| std::cmp::Reverse((i.created, i.id))),
    }
}

/// `GET /pulls`: `state` `open`, `closed` or `all`, `sort` as for issues, paged. Without `state` Forgejo lists every
/// pull request, open and closed, whatever its OpenAPI says (`listPullRequestStatement` filters only on `open` or
/// `closed`, and the handler passes the raw parameter): a client wanting open ones must say `state=open`.
pub(super) fn list_pulls(st: &State, r: &RepoRec, perm: Perm, req: &Req) -> Result<Reply, ApiErr> {
    let open = match req.param("state").map(str::trim) {
        Some("open") => Some(true),
        Some("closed") => Some(false),
        _ => None,
    };
    let mut list: Vec<&IssueRec> =
        r.issues.values().filter(|i| i.pull.is_some() && open.is_none_or(|o| i.open == o)).collect();
    sort(&mut list, r, req);
    let (page, headers) = paginate(st, req, list);
    let items = page.into_iter().map(|i| render::pull(st, r, i, perm)).collect();
    Ok(Reply { status: 200, body: Some(Value::Array(items)), headers })
}

pub(super) fn pull_route(
    st: &State,
    r: &RepoRec,
    n: u64,
    tail: &[&str],
    perm: Perm,
    req: &Req,
) -> Result<Reply, ApiErr> {
    let issue = r.issues.get(&n).filter(|i| i.pull.is_some()).ok_or_else(ApiErr::not_found)?;
    let p = issue.pull.as_ref().unwrap();
    match tail {
        [] => ok(200, render::pull(st, r, issue, perm)),
        ["commits"] => {
            let flag = |k: &str| req.param(k) != Some("false") && req.param(k) != Some("0");
            // Newest first, as `git log` lists them.
            let mut list = Vec::new();
            for (k, (c, when)) in p.commits.iter().enumerate().rev() {
                let parent = if k == 0 { &p.base_sha } else { &p.commits[k - 1].0.sha };
                let v = render::commit(st, r, c, *when, &issue.user, parent, flag("verification"), flag("files"));
                list.push(v);
            }
            let total = list.len();
            let (items, mut headers) = paginate(st, req, list);
            let page = req.param("page").and_then(|p| p.parse::<usize>().ok()).filter(|p| *p > 0).unwrap_or(1);
            let limit = req.param("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
            let limit = limit.map_or(DEFAULT_PAGING_NUM, |l| l.min(MAX_RESPONSE_ITEMS));
            headers.push(("x-page", page.to_string()));
            headers.push(("x-perpage", limit.to_string()));
            headers.push(("x-pagecount", total.div_ceil(limit).to_string()));
            headers.push(("x-hasmore", (page * limit < total).to_string()));
            Ok(Reply { status: 200, body: Some(Value::Array(items)), headers })
        }
        ["files"] => {
            let files = render::changed_files(p);
            paged(st, req, files.iter().map(|f| render::changed_file(st, r, &p.head_sha, f)).collect())
        }
        _ => Err(ApiErr::not_found()),
    }
}

/// A file (or a directory listing) at `ref` (default branch by default; a sha finds the branch it heads).
pub(super) fn contents(st: &State, r: &RepoRec, path: &str, req: &Req) -> Result<Reply, ApiErr> {
    let mut git_ref = req.param("ref").filter(|s| !s.is_empty()).unwrap_or(&r.default_branch).to_string();
    if !r.files.keys().any(|(f, _)| *f == git_ref)
        && let Some((branch, _)) = r.branches.iter().find(|(_, sha)| **sha == git_ref)
    {
        git_ref = branch.clone();
    }
    if let Some(content) = r.files.get(&(git_ref.clone(), path.to_string())) {
        return ok(200, render::contents(st, r, &git_ref, path, Some(content)));
    }
    let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
    let mut entries: Vec<(String, Option<&Vec<u8>>)> = Vec::new();
    for ((f, p), content) in &r.files {
        if *f != git_ref || !p.starts_with(&prefix) {
            continue;
        }
        let rest = &p[prefix.len()..];
        let entry = match rest.split_once('/') {
            Some((dir, _)) => (format!("{prefix}{dir}"), None),
            None => (p.clone(), Some(content)),
        };
        if !entries.iter().any(|(e, _)| *e == entry.0) {
            entries.push(entry);
        }
    }
    if entries.is_empty() {
        return Err(ApiErr::not_found());
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let list = entries.iter().map(|(p, c)| render::contents(st, r, &git_ref, p, c.map(|c| c.as_slice()))).collect();
    ok(200, Value::Array(list))
}

/// Statuses of one commit, newest first by default; `sort=oldest` and `state=` honoured.
pub(super) fn statuses(st: &State, r: &RepoRec, sha: &str, req: &Req) -> Result<Reply, ApiErr> {
    let mut list: Vec<_> = r
        .statuses
        .iter()
        .filter(|s| s.status.sha == sha && req.param("state").is_none_or(|x| x.is_empty() || x == s.status.state))
        .collect();
    if req.param("sort") != Some("oldest") {
        list.reverse();
    }
    paged(st, req, list.into_iter().map(|s| render::status(st, r, s)).collect())
}
