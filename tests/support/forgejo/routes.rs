//! The REST surface under `/api/v1`: one axum handler that logs the request, applies injected faults and token
//! auth, then routes on the path segments. Status codes and permission rules follow Forgejo's handlers.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

use super::changes::{IssueEdit, LabelOp};
use super::listing::{contents, list_issues, list_pulls, paged, parse_time, pull_route, statuses};
use super::pulls::open_pull;
use super::state::{ApiErr, Perm, State};
use super::webhooks::go_json;
use super::{DEFAULT_PAGING_NUM, MAX_RESPONSE_ITEMS, RecordedRequest, render};

type Shared = Arc<Mutex<State>>;

pub(crate) fn router(state: Shared) -> Router {
    Router::new().route("/api/v1/{*rest}", any(handle)).with_state(state)
}

pub(super) struct Req<'a> {
    pub doer: Option<String>,
    pub path: &'a str,
    pub query: Vec<(String, String)>,
    pub body: &'a [u8],
}

impl Req<'_> {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Result<Value, ApiErr> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        serde_json::from_slice(self.body).map_err(|e| ApiErr::new(422, format!("invalid JSON body: {e}")))
    }
    pub fn doer(&self) -> Result<&str, ApiErr> {
        self.doer.as_deref().ok_or_else(|| ApiErr::new(401, "token is required"))
    }
}

pub(super) struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

pub(super) fn ok(status: u16, body: Value) -> Result<Reply, ApiErr> {
    Ok(Reply { status, body: Some(body), headers: Vec::new() })
}

fn no_content() -> Result<Reply, ApiErr> {
    Ok(Reply { status: 204, body: None, headers: Vec::new() })
}

pub(super) fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

async fn handle(
    AxState(shared): AxState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (reply, late) = {
        let mut st = shared.lock().unwrap();
        let (doer, reply) = answer(&mut st, &method, &uri, &headers, &body);
        let late = if method == Method::POST { st.faults.take_late_post() } else { None };
        let reply = reply.unwrap_or_else(|e| Reply {
            status: e.status,
            body: Some(match e.status {
                404 => json!({"message": e.message, "url": format!("{}/api/swagger", st.base), "errors": e.errors}),
                _ => json!({"message": e.message, "url": format!("{}/api/swagger", st.base)}),
            }),
            headers: Vec::new(),
        });
        let path = uri.path().to_string();
        let query = uri.query().unwrap_or("").to_string();
        st.requests.push(RecordedRequest { method: method.to_string(), path, query, user: doer, status: reply.status });
        (reply, late)
    };
    // Applied already; only the answer is late (the lock is not held meanwhile).
    if let Some(wait) = late {
        tokio::time::sleep(wait).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match reply.body {
        Some(body) => {
            let mut r = (status, format!("{}\n", go_json(&body, false))).into_response();
            r.headers_mut().insert("content-type", HeaderValue::from_static("application/json;charset=utf-8"));
            r
        }
        None => status.into_response(),
    };
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn answer(
    st: &mut State,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (Option<String>, Result<Reply, ApiErr>) {
    if let Some(status) = st.faults.take_failure() {
        return (None, Err(ApiErr::new(status, "injected failure")));
    }
    if let Some((_, status)) = st.faults.fail_path.as_ref().filter(|(p, _)| p == uri.path()) {
        return (None, Err(ApiErr::new(*status, "injected failure")));
    }
    let doer = match headers.get("authorization").map(|v| v.to_str().unwrap_or("")) {
        None => None,
        Some(value) => {
            let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
            let known = (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
                .then(|| st.tokens.get(token.trim()))
                .flatten();
            match known {
                Some(key) => Some(st.users[key].login.clone()),
                None => return (None, Err(ApiErr::new(401, "invalid username, password or token"))),
            }
        }
    };
    let query = Query::<Vec<(String, String)>>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let req = Req { doer: doer.clone(), path: uri.path(), query, body };
    let segments: Vec<String> =
        uri.path().trim_start_matches("/api/v1").split('/').filter(|s| !s.is_empty()).map(pct_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let result = match (method.as_str(), segments.as_slice()) {
        ("GET", ["version"]) => ok(200, json!({"version": "11.0.1+gitea-1.22.0"})),
        ("GET", ["settings", "api"]) => ok(
            200,
            json!({
                "max_response_items": MAX_RESPONSE_ITEMS,
                "default_paging_num": DEFAULT_PAGING_NUM,
                "default_git_trees_per_page": 1000,
                "default_max_blob_size": 10485760,
            }),
        ),
        ("GET", ["user"]) => req.doer().and_then(|d| ok(200, render::user(st, d))),
        (m, ["repos", owner, name, rest @ ..]) => repo_route(st, m, &format!("{owner}/{name}"), rest, &req),
        _ => Err(ApiErr::not_found()),
    };
    (doer, result)
}

fn pct_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn number(s: &str) -> Result<u64, ApiErr> {
    s.parse().map_err(|_| ApiErr::not_found())
}

fn repo_route(st: &mut State, m: &str, full: &str, rest: &[&str], req: &Req) -> Result<Reply, ApiErr> {
    let repo = st.find_repo(full).ok_or_else(ApiErr::not_found)?;
    let perm = st.perm(repo, req.doer.as_deref());
    let full = repo.full_name();
    if perm == Perm::None {
        return Err(ApiErr::not_found());
    }
    if m != "GET" {
        req.doer()?;
    }
    let writer = || if perm >= Perm::Write { Ok(()) } else { Err(ApiErr::new(403, "write permission is required")) };
    let admin = || if perm >= Perm::Admin { Ok(()) } else { Err(ApiErr::new(403, "repository admin is required")) };
    macro_rules! r {
        () => {
            st.find_repo(&full).unwrap()
        };
    }
    if m == "GET" && rest.first() == Some(&"pulls") {
        super::pulls::follow_pushes(st, &full)?;
    }
    match (m, rest) {
        ("GET", []) => ok(200, render::repo(st, r!(), perm)),
        ("GET", ["issues"]) => list_issues(st, r!(), req),
        ("POST", ["issues"]) => {
            let body = req.json()?;
            let title = str_field(&body, "title").filter(|t| !t.trim().is_empty());
            let title = title.ok_or_else(|| ApiErr::new(422, "[Title]: Required"))?;
            let ids: Vec<i64> = match perm >= Perm::Write {
                true => body["labels"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect(),
                false => Vec::new(),
            };
            let n = st.create_issue(&full, req.doer()?, title, str_field(&body, "body").unwrap_or(""), ids, None);
            ok(201, render::issue(st, r!(), &r!().issues[&n]))
        }
        ("GET", ["issues", "comments", id]) => {
            let id: i64 = id.parse().map_err(|_| ApiErr::not_found())?;
            let c = r!().comments.iter().find(|c| c.id == id).ok_or_else(ApiErr::not_found)?;
            ok(200, render::comment(st, r!(), c))
        }
        ("PATCH" | "DELETE", ["issues", "comments", id]) => {
            let id: i64 = id.parse().map_err(|_| ApiErr::not_found())?;
            let doer = req.doer()?.to_string();
            let author = st.find_comment(&full, id)?.user.clone();
            if !author.eq_ignore_ascii_case(&doer) && perm < Perm::Write {
                return Err(ApiErr::new(403, "only the author or a writer may change this comment"));
            }
            if m == "DELETE" {
                st.delete_comment(&full, id, &doer)?;
                return no_content();
            }
            let body = req.json()?;
            let text = str_field(&body, "body").ok_or_else(|| ApiErr::new(422, "[Body]: Required"))?;
            st.edit_comment(&full, id, &doer, text)?;
            let c = r!().comments.iter().find(|c| c.id == id).unwrap();
            ok(200, render::comment(st, r!(), c))
        }
        ("GET", ["issues", n]) => {
            let i = r!().issues.get(&number(n)?).ok_or_else(ApiErr::not_found)?;
            ok(200, render::issue(st, r!(), i))
        }
        ("PATCH", ["issues", n]) => {
            let n = number(n)?;
            let doer = req.doer()?.to_string();
            let poster = r!().issues.get(&n).ok_or_else(ApiErr::not_found)?.user.clone();
            if !poster.eq_ignore_ascii_case(&doer) && perm < Perm::Write {
                return Err(ApiErr::new(403, "only the poster or a writer may edit this issue"));
            }
            let body = req.json()?;
            let strings =
                |v: &Value| v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect());
            let mut assignees: Option<Vec<String>> = strings(&body["assignees"]);
            if assignees.is_none() {
                assignees =
                    str_field(&body, "assignee").map(|a| if a.is_empty() { vec![] } else { vec![a.to_string()] });
            }
            let edit = IssueEdit {
                title: str_field(&body, "title").map(String::from),
                body: str_field(&body, "body").map(String::from),
                state: str_field(&body, "state").map(String::from),
                // Forgejo ignores assignee changes from non-writers.
                assignees: assignees.filter(|_| perm >= Perm::Write),
            };
            st.edit_issue(&full, n, &doer, edit)?;
            ok(201, render::issue(st, r!(), &r!().issues[&n]))
        }
        (_, ["issues", n, "labels"]) => {
            let n = number(n)?;
            let i = r!().issues.get(&n).ok_or_else(ApiErr::not_found)?;
            if m == "GET" {
                return ok(200, render::issue_labels(st, r!(), i));
            }
            writer()?;
            let doer = req.doer()?.to_string();
            let op = match m {
                "DELETE" => LabelOp::Clear,
                "POST" => LabelOp::Add(label_ids(st, &full, req)?),
                "PUT" => LabelOp::Replace(label_ids(st, &full, req)?),
                _ => return Err(ApiErr::new(405, "method not allowed")),
            };
            let clear = matches!(op, LabelOp::Clear);
            st.change_labels(&full, n, &doer, op)?;
            if clear { no_content() } else { ok(200, render::issue_labels(st, r!(), &r!().issues[&n])) }
        }
        ("DELETE", ["issues", n, "labels", ident]) => {
            let n = number(n)?;
            r!().issues.get(&n).ok_or_else(ApiErr::not_found)?;
            writer()?;
            let label = match ident.parse::<i64>() {
                Ok(id) => r!().label(id),
                Err(_) => r!().labels.iter().find(|l| l.name == *ident),
            };
            let id =
                label.map(|l| l.id).ok_or_else(|| ApiErr::new(422, format!("label does not exist [id: {ident}]")))?;
            st.change_labels(&full, n, req.doer()?, LabelOp::Remove(id))?;
            no_content()
        }
        ("GET", ["issues", n, "comments"]) => {
            let n = number(n)?;
            r!().issues.get(&n).ok_or_else(ApiErr::not_found)?;
            let (since, before) = (parse_time(req, "since")?, parse_time(req, "before")?);
            let list: Vec<Value> = r!()
                .comments
                .iter()
                .filter(|c| {
                    c.issue == n && since.is_none_or(|s| c.updated_at >= s) && before.is_none_or(|b| c.updated_at <= b)
                })
                .map(|c| render::comment(st, r!(), c))
                .collect();
            let total = list.len().to_string();
            Ok(Reply { status: 200, body: Some(Value::Array(list)), headers: vec![("x-total-count", total)] })
        }
        ("POST", ["issues", n, "comments"]) => {
            let n = number(n)?;
            r!().issues.get(&n).ok_or_else(ApiErr::not_found)?;
            let body = req.json()?;
            let text = str_field(&body, "body").filter(|b| !b.is_empty());
            let text = text.ok_or_else(|| ApiErr::new(422, "[Body]: Required"))?;
            let id = st.add_comment(&full, n, req.doer()?, text)?;
            ok(201, render::comment(st, r!(), r!().comments.iter().find(|c| c.id == id).unwrap()))
        }
        // Simplification: a reaction on a comment is kept with its issue's reactions (tests read them there).
        ("POST", ["issues", "comments", id, "reactions"]) => {
            let id: i64 = id.parse().map_err(|_| ApiErr::not_found())?;
            let n = st.find_comment(&full, id)?.issue;
            let body = req.json()?;
            let content = str_field(&body, "content").unwrap_or("");
            let (reaction, created, new) = st.add_reaction(&full, n, req.doer()?, content)?;
            let rec = super::state::ReactionRec { reaction, created };
            ok(if new { 201 } else { 200 }, render::reaction(st, &rec))
        }
        ("GET", ["issues", n, "reactions"]) => {
            let i = r!().issues.get(&number(n)?).ok_or_else(ApiErr::not_found)?;
            paged(st, req, i.reactions.iter().map(|x| render::reaction(st, x)).collect())
        }
        ("POST", ["issues", n, "reactions"]) => {
            let n = number(n)?;
            let body = req.json()?;
            let content = str_field(&body, "content").unwrap_or("");
            let (reaction, created, new) = st.add_reaction(&full, n, req.doer()?, content)?;
            let rec = super::state::ReactionRec { reaction, created };
            ok(if new { 201 } else { 200 }, render::reaction(st, &rec))
        }
        ("GET", ["labels"]) => {
            let mut labels: Vec<_> = r!().labels.iter().collect();
            labels.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            if req.param("sort") == Some("reversealphabetically") {
                labels.reverse();
            }
            paged(st, req, labels.into_iter().map(|l| render::label(st, r!(), l)).collect())
        }
        ("GET", ["labels", ident]) => {
            let label = match ident.parse::<i64>() {
                Ok(id) => r!().label(id),
                Err(_) => r!().labels.iter().find(|l| l.name == *ident),
            };
            ok(200, render::label(st, r!(), label.ok_or_else(ApiErr::not_found)?))
        }
        ("POST", ["labels"]) => {
            writer()?;
            let body = req.json()?;
            let name = str_field(&body, "name").unwrap_or("");
            let color = str_field(&body, "color").unwrap_or("");
            let description = str_field(&body, "description").unwrap_or("");
            let exclusive = body["exclusive"].as_bool().unwrap_or(false);
            let label = st.create_label(&full, name, color, description, exclusive)?;
            ok(201, render::label(st, r!(), &label))
        }
        ("GET", ["pulls"]) => list_pulls(st, r!(), perm, req),
        ("POST", ["pulls"]) => {
            writer()?;
            open_pull(st, &full, perm, req)
        }
        ("GET", ["pulls", n, "reviews", tail @ ..]) => super::reviews::route(st, r!(), number(n)?, tail, req),
        ("POST", ["pulls", n, "reviews"]) => super::reviews::create(st, &full, number(n)?, req),
        ("GET", ["pulls", n, tail @ ..]) => pull_route(st, r!(), number(n)?, tail, perm, req),
        // EditPullRequest: title, body and state (`closed` or `open`); 201 with the pull request.
        ("PATCH", ["pulls", n]) => {
            writer()?;
            let n = number(n)?;
            r!().issues.get(&n).filter(|i| i.pull.is_some()).ok_or_else(ApiErr::not_found)?;
            let doer = req.doer()?.to_string();
            let body = req.json()?;
            let edit = IssueEdit {
                title: str_field(&body, "title").map(String::from),
                body: str_field(&body, "body").map(String::from),
                state: str_field(&body, "state").map(String::from),
                assignees: None,
            };
            st.edit_issue(&full, n, &doer, edit)?;
            ok(201, render::pull(st, r!(), &r!().issues[&n], perm))
        }
        ("GET", ["collaborators", user, "permission"]) => {
            let doer = req.doer()?;
            let doer_admin = st.users.get(&doer.to_ascii_lowercase()).is_some_and(|u| u.is_admin);
            if !doer_admin && !doer.eq_ignore_ascii_case(user) && perm < Perm::Admin {
                return Err(ApiErr::new(
                    403,
                    "Only admins can query all permissions, repo admins can query all repo permissions, collaborators can query only their own",
                ));
            }
            let found = st.users.get(&user.to_ascii_lowercase());
            let login =
                found.ok_or_else(|| ApiErr::new(404, format!("user redirect does not exist [name: {user}]")))?;
            let p = st.perm(r!(), Some(&login.login)).as_str();
            ok(200, json!({"permission": p, "role_name": p, "user": render::user(st, &login.login)}))
        }
        ("GET", ["contents", path @ ..]) => contents(st, r!(), &path.join("/"), req),
        ("POST", ["statuses", sha]) => {
            writer()?;
            let body = req.json()?;
            let field = |k: &str| str_field(&body, k).unwrap_or("").to_string();
            let doer = req.doer()?.to_string();
            let (state, url, desc, ctx) = (field("state"), field("target_url"), field("description"), field("context"));
            let id = st.create_status(&full, sha, &doer, &state, &url, &desc, &ctx)?;
            ok(201, render::status(st, r!(), r!().statuses.iter().find(|s| s.status.id == id).unwrap()))
        }
        ("GET", ["statuses", sha]) => statuses(st, r!(), sha, req),
        ("GET", ["commits", git_ref, "status"]) => {
            // The latest status of each context, newest first; the combined state is the worst of them, an
            // `error` counting as `failure`.
            let sha = r!().branches.get(*git_ref).cloned().unwrap_or_else(|| git_ref.to_string());
            let mut latest: Vec<&super::state::StatusRec> = Vec::new();
            for s in r!().statuses.iter().rev().filter(|s| s.status.sha == sha) {
                if !latest.iter().any(|l| l.status.context == s.status.context) {
                    latest.push(s);
                }
            }
            let has = |x: &str| latest.iter().any(|s| s.status.state == x);
            let state = if latest.is_empty() {
                ""
            } else if has("failure") || has("error") {
                "failure"
            } else if has("pending") {
                "pending"
            } else if has("warning") {
                "warning"
            } else {
                "success"
            };
            let statuses: Vec<Value> = latest.iter().map(|s| render::status(st, r!(), s)).collect();
            ok(200, json!({"state": state, "sha": sha, "total_count": statuses.len(), "statuses": statuses}))
        }
        ("GET", ["commits", git_ref, "statuses"]) => {
            let sha = r!().branches.get(*git_ref).cloned().unwrap_or_else(|| git_ref.to_string());
            statuses(st, r!(), &sha, req)
        }
        ("GET", ["hooks"]) => {
            admin()?;
            paged(st, req, r!().hooks.iter().map(render::hook).collect())
        }
        ("POST", ["hooks"]) => {
            admin()?;
            let body = req.json()?;
            let kind = str_field(&body, "type").unwrap_or("");
            const KINDS: [&str; 11] = [
                "forgejo",
                "dingtalk",
                "discord",
                "gitea",
                "gogs",
                "msteams",
                "slack",
                "telegram",
                "feishu",
                "wechatwork",
                "packagist",
            ];
            if !KINDS.contains(&kind) {
                return Err(ApiErr::new(422, format!("Invalid hook type: {kind}")));
            }
            let config = &body["config"];
            for key in ["url", "content_type"] {
                if config.get(key).is_none() {
                    return Err(ApiErr::new(422, format!("Missing config option: {key}")));
                }
            }
            let content_type = str_field(config, "content_type").unwrap_or("");
            if !["json", "form"].contains(&content_type) {
                return Err(ApiErr::new(422, "Invalid content type"));
            }
            let events: Vec<String> =
                body["events"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(String::from)).collect();
            let url = str_field(config, "url").unwrap_or("");
            let secret = str_field(config, "secret").unwrap_or("");
            let active = body["active"].as_bool().unwrap_or(false);
            let id = st.add_hook(&full, kind, url, content_type, secret, &events, active);
            ok(201, render::hook(r!().hooks.iter().find(|h| h.hook.id == id).unwrap()))
        }
        // EditHook: only what the body names changes; `events` replaces the events (expanded as on create).
        ("PATCH", ["hooks", id]) => {
            admin()?;
            let id: i64 = id.parse().map_err(|_| ApiErr::not_found())?;
            let body = req.json()?;
            let rec = st.repo_mut(&full).hooks.iter_mut().find(|h| h.hook.id == id).ok_or_else(ApiErr::not_found)?;
            if let Some(events) = body["events"].as_array() {
                let events: Vec<String> = events.iter().filter_map(|e| e.as_str().map(String::from)).collect();
                rec.hook.events = super::webhooks::expand_events(&events);
            }
            if let Some(active) = body["active"].as_bool() {
                rec.hook.active = active;
            }
            ok(200, render::hook(rec))
        }
        _ => Err(ApiErr::not_found()),
    }
}

/// `{"labels": [...]}`: all ids or all names (Forgejo answers 400 when mixed); unknown ones are dropped.
fn label_ids(st: &mut State, full: &str, req: &Req) -> Result<Vec<i64>, ApiErr> {
    let body = req.json()?;
    let (mut ids, mut names) = (Vec::new(), Vec::new());
    for v in body["labels"].as_array().into_iter().flatten() {
        match v {
            Value::Number(n) => ids.push(n.as_f64().unwrap_or(0.0) as i64),
            Value::String(s) => names.push(s.clone()),
            _ => return Err(ApiErr::new(400, "a label must be an integer or a string")),
        }
    }
    if !ids.is_empty() && !names.is_empty() {
        return Err(ApiErr::new(400, "labels should be an array of strings or integers"));
    }
    ids.extend(st.label_ids_by_names(full, &names));
    let r = st.find_repo(full).unwrap();
    Ok(ids.into_iter().filter(|id| r.label(*id).is_some()).collect())
}
