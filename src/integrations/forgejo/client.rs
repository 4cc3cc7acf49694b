//! A thin typed client for the dozen Forgejo calls forgefleet makes, with timeouts, retries and paging.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::types::*;
use crate::config::Secret;
use crate::core::RepoName;

/// What failed, and where. A caller branches on `status()` (404: gone, 403: not allowed, ...).
#[derive(Debug, thiserror::Error)]
pub enum ForgejoError {
    #[error("Forgejo answered {status} to {method} {path}: {message}")]
    Http { method: Method, path: String, status: StatusCode, message: String },
    #[error("cannot reach Forgejo for {method} {path}: {}", error_chain(.source))]
    Network { method: Method, path: String, source: reqwest::Error },
    #[error("Forgejo's answer to {method} {path} is not what was expected: {detail}")]
    Decode { method: Method, path: String, detail: String },
}

impl ForgejoError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ForgejoError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
    /// A failure that may pass (no answer, 5xx, 429): a request that made something new may or may not have
    /// arrived, so whoever sends it again looks first.
    pub fn is_transient(&self) -> bool {
        match self {
            ForgejoError::Network { .. } => true,
            ForgejoError::Http { status, .. } => status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS,
            ForgejoError::Decode { .. } => false,
        }
    }
}

/// How persistent the client is with a Forgejo that fails.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait before the second try; it doubles each time.
    pub first_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 4, first_wait: Duration::from_millis(250) }
    }
}

/// Filters for listing issues.
#[derive(Debug, Clone, Default)]
pub struct IssueFilter {
    /// `open` (Forgejo's default), `closed` or `all`.
    pub state: Option<&'static str>,
    /// All must match.
    pub labels: Vec<String>,
    /// Only issues updated at or after this RFC 3339 time.
    pub since: Option<String>,
}

#[derive(Clone)]
pub struct ForgejoClient {
    http: reqwest::Client,
    /// The web address people open, e.g. `https://forgejo.example.com`.
    web: String,
    api: String,
    token: Secret,
    retry: RetryPolicy,
    /// How long one request may take, answer included.
    timeout: Duration,
}

/// Whether a request may be sent again without looking first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Sending it twice ends where sending it once does (reads, `PUT`, `PATCH`, `DELETE`, and the few `POST`s
    /// Forgejo treats as set-to: labels by id, reactions, commit statuses): retried on any failure.
    Safe,
    /// A `POST` that makes something new (a comment, a label, a pull request): sent again only when it surely
    /// did not arrive (no connection, or a 429 refusal). A lost answer goes back to the caller, who looks
    /// before it sends again.
    LookFirst,
}

impl std::fmt::Debug for ForgejoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgejoClient").field("api", &self.api).finish_non_exhaustive()
    }
}

/// Forgejo's page size cap ([api] MAX_RESPONSE_ITEMS, 50 by default): asking for more is silently capped.
const PAGE: u32 = 50;

/// The events of the webhook forgefleet creates: issues, comments, pull requests and their reviews.
pub const HOOK_EVENTS: [&str; 5] =
    ["issues", "issue_comment", "pull_request", "pull_request_comment", "pull_request_review"];

impl ForgejoClient {
    /// A client of the Forgejo at `base_url`; `ca` adds CA certificates to trust besides the public roots.
    pub fn new(base_url: &str, token: Secret, ca: Option<&crate::config::CaBundle>) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("forgefleet/", env!("CARGO_PKG_VERSION")));
        for cert in ca.map(|c| c.certificates()).unwrap_or_default() {
            builder = builder.add_root_certificate(cert.clone());
        }
        let http = builder.build()?;
        let timeout = Duration::from_secs(20);
        Ok(Self {
            http,
            web: base_url.trim_end_matches('/').to_string(),
            api: format!("{}/api/v1", base_url.trim_end_matches('/')),
            token,
            retry: RetryPolicy::default(),
            timeout,
        })
    }

    /// The page of an issue, for links people follow.
    pub fn issue_url(&self, repo: &RepoName, number: u64) -> String {
        format!("{}/{}/issues/{number}", self.web, repo)
    }

    /// A pull request's web page.
    pub fn pull_url(&self, repo: &RepoName, number: u64) -> String {
        format!("{}/{}/pulls/{number}", self.web, repo)
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long one request may take (20 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// One request, retried on network errors, 5xx and 429 with doubling waits (a `POST` that creates
    /// something only when it surely did not arrive, see `Repeat`). Returns the response of the last try; an
    /// error status is turned into `ForgejoError::Http` with Forgejo's message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, ForgejoError> {
        let repeat = if method == Method::POST { Repeat::LookFirst } else { Repeat::Safe };
        self.send_with(method, path, query, body, repeat).await
    }

    async fn send_with(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        repeat: Repeat,
    ) -> Result<reqwest::Response, ForgejoError> {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{}{path}", self.api) };
        let mut wait = self.retry.first_wait;
        let mut attempt = 1;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("Authorization", format!("token {}", self.token.expose()))
                .header("Accept", "application/json")
                .timeout(self.timeout)
                .query(query);
            if let Some(b) = body {
                req = req.json(b);
            }
            let outcome = req.send().await;
            let retryable = match (&outcome, repeat) {
                (Ok(r), Repeat::Safe) => r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS,
                (Err(e), Repeat::Safe) => !e.is_builder(),
                (Ok(r), Repeat::LookFirst) => r.status() == StatusCode::TOO_MANY_REQUESTS,
                (Err(e), Repeat::LookFirst) => e.is_connect(),
            };
            if retryable && attempt < self.retry.attempts {
                // Forgejo's Retry-After, when it gives one, beats our own guess.
                let hint = outcome.as_ref().ok().and_then(|r| retry_after(r.headers()));
                tokio::time::sleep(hint.unwrap_or(wait)).await;
                wait = wait.saturating_mul(2);
                attempt += 1;
                continue;
            }
            let response = outcome.map_err(|source| ForgejoError::Network {
                method: method.clone(),
                path: path.to_string(),
                source,
            })?;
            if response.status().is_success() {
                return Ok(response);
            }
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(ForgejoError::Http { method, path: path.to_string(), status, message });
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        repeat: Repeat,
    ) -> Result<T, ForgejoError> {
        let response = self.send_with(method.clone(), path, query, body, repeat).await?;
        let bytes = response.bytes().await.map_err(|source| ForgejoError::Network {
            method: method.clone(),
            path: path.to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ForgejoError::Decode {
            method,
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T, ForgejoError> {
        self.json(Method::GET, path, query, None, Repeat::Safe).await
    }

    /// A write; a `POST` is taken to create something (`Repeat::LookFirst`).
    async fn write<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ForgejoError> {
        let repeat = if method == Method::POST { Repeat::LookFirst } else { Repeat::Safe };
        self.write_with(method, path, body, repeat).await
    }

    async fn write_with<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        repeat: Repeat,
    ) -> Result<T, ForgejoError> {
        let body = serde_json::to_value(body).map_err(|e| ForgejoError::Decode {
            method: method.clone(),
            path: path.to_string(),
            detail: e.to_string(),
        })?;
        self.json(method, path, &[], Some(&body), repeat).await
    }

    async fn no_content(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        repeat: Repeat,
    ) -> Result<(), ForgejoError> {
        self.send_with(method, path, &[], body.as_ref(), repeat).await.map(|_| ())
    }

    /// Every page of a list, following the `Link: <...>; rel="next"` header Forgejo sends.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        mut query: Vec<(&str, String)>,
    ) -> Result<Vec<T>, ForgejoError> {
        query.push(("limit", PAGE.to_string()));
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let response = match &next {
                None => self.send(Method::GET, path, &query, None).await?,
                Some(url) => self.send(Method::GET, url, &[], None).await?,
            };
            let link = response.headers().get("link").and_then(|v| v.to_str().ok()).map(str::to_string);
            let bytes = response.bytes().await.map_err(|source| ForgejoError::Network {
                method: Method::GET,
                path: path.to_string(),
                source,
            })?;
            let page: Vec<T> = serde_json::from_slice(&bytes).map_err(|e| ForgejoError::Decode {
                method: Method::GET,
                path: path.to_string(),
                detail: e.to_string(),
            })?;
            let empty = page.is_empty();
            out.extend(page);
            next = link.as_deref().and_then(next_link);
            // The token goes with every request: a next page elsewhere is not followed.
            if let Some(url) = next.as_deref().filter(|u| !under(&self.api, u)) {
                return Err(ForgejoError::Decode {
                    method: Method::GET,
                    path: path.to_string(),
                    detail: format!("its next-page link {url:?} is not under {}; not followed", self.api),
                });
            }
            if next.is_none() || empty {
                return Ok(out);
            }
        }
    }

    fn repo_path(repo: &RepoName, rest: &str) -> String {
        format!("/repos/{}/{}{rest}", repo.owner(), repo.name())
    }

    /// The user the token belongs to (forgefleet's own account).
    pub async fn current_user(&self) -> Result<User, ForgejoError> {
        self.get("/user", &[]).await
    }

    pub async fn repository(&self, repo: &RepoName) -> Result<Repository, ForgejoError> {
        self.get(&Self::repo_path(repo, ""), &[]).await
    }

    /// Issues only (Forgejo lists pull requests too unless told otherwise), every page.
    pub async fn list_issues(&self, repo: &RepoName, filter: &IssueFilter) -> Result<Vec<Issue>, ForgejoError> {
        let mut q = vec![("type", "issues".to_string())];
        if let Some(s) = filter.state {
            q.push(("state", s.to_string()));
        }
        if !filter.labels.is_empty() {
            q.push(("labels", filter.labels.join(",")));
        }
        if let Some(since) = &filter.since {
            q.push(("since", since.clone()));
        }
        self.all_pages(&Self::repo_path(repo, "/issues"), q).await
    }

    pub async fn issue(&self, repo: &RepoName, number: u64) -> Result<Issue, ForgejoError> {
        self.get(&Self::repo_path(repo, &format!("/issues/{number}")), &[]).await
    }

    pub async fn set_assignees(&self, repo: &RepoName, number: u64, logins: &[String]) -> Result<Issue, ForgejoError> {
        self.write(Method::PATCH, &Self::repo_path(repo, &format!("/issues/{number}")), &json!({"assignees": logins}))
            .await
    }

    pub async fn repo_labels(&self, repo: &RepoName) -> Result<Vec<Label>, ForgejoError> {
        self.all_pages(&Self::repo_path(repo, "/labels"), Vec::new()).await
    }

    pub async fn create_label(
        &self,
        repo: &RepoName,
        name: &str,
        color: &str,
        description: &str,
    ) -> Result<Label, ForgejoError> {
        let body = json!({"name": name, "color": color, "description": description});
        self.write(Method::POST, &Self::repo_path(repo, "/labels"), &body).await
    }

    pub async fn issue_labels(&self, repo: &RepoName, number: u64) -> Result<Vec<Label>, ForgejoError> {
        self.get(&Self::repo_path(repo, &format!("/issues/{number}/labels")), &[]).await
    }

    /// Adds labels by id; returns all the issue's labels.
    pub async fn add_labels(&self, repo: &RepoName, number: u64, ids: &[i64]) -> Result<Vec<Label>, ForgejoError> {
        let path = Self::repo_path(repo, &format!("/issues/{number}/labels"));
        self.write_with(Method::POST, &path, &json!({"labels": ids}), Repeat::Safe).await
    }

    pub async fn replace_labels(&self, repo: &RepoName, number: u64, ids: &[i64]) -> Result<Vec<Label>, ForgejoError> {
        self.write(Method::PUT, &Self::repo_path(repo, &format!("/issues/{number}/labels")), &json!({"labels": ids}))
            .await
    }

    pub async fn remove_label(&self, repo: &RepoName, number: u64, id: i64) -> Result<(), ForgejoError> {
        let path = Self::repo_path(repo, &format!("/issues/{number}/labels/{id}"));
        self.no_content(Method::DELETE, &path, None, Repeat::Safe).await
    }

    pub async fn comments(&self, repo: &RepoName, number: u64) -> Result<Vec<Comment>, ForgejoError> {
        self.get(&Self::repo_path(repo, &format!("/issues/{number}/comments")), &[]).await
    }

    pub async fn create_comment(&self, repo: &RepoName, number: u64, body: &str) -> Result<Comment, ForgejoError> {
        self.write(Method::POST, &Self::repo_path(repo, &format!("/issues/{number}/comments")), &json!({"body": body}))
            .await
    }

    pub async fn edit_comment(&self, repo: &RepoName, id: i64, body: &str) -> Result<Comment, ForgejoError> {
        self.write(Method::PATCH, &Self::repo_path(repo, &format!("/issues/comments/{id}")), &json!({"body": body}))
            .await
    }

    /// Reacts to an issue (a lightweight "seen it").
    pub async fn react_to_issue(&self, repo: &RepoName, number: u64, content: &str) -> Result<(), ForgejoError> {
        let path = Self::repo_path(repo, &format!("/issues/{number}/reactions"));
        self.no_content(Method::POST, &path, Some(json!({"content": content})), Repeat::Safe).await
    }

    /// Reacts to a comment (a lightweight "done").
    pub async fn react_to_comment(&self, repo: &RepoName, comment_id: i64, content: &str) -> Result<(), ForgejoError> {
        let path = Self::repo_path(repo, &format!("/issues/comments/{comment_id}/reactions"));
        self.no_content(Method::POST, &path, Some(json!({"content": content})), Repeat::Safe).await
    }

    pub async fn pull_request(&self, repo: &RepoName, number: u64) -> Result<PullRequest, ForgejoError> {
        self.get(&Self::repo_path(repo, &format!("/pulls/{number}")), &[]).await
    }

    /// The latest status of each check (context) on a commit: CI's verdicts, Forgejo Actions' among them.
    pub async fn combined_status(&self, repo: &RepoName, sha: &str) -> Result<CombinedStatus, ForgejoError> {
        self.get(&Self::repo_path(repo, &format!("/commits/{sha}/status")), &[]).await
    }

    /// Opens a pull request from `head` into `base` (branches of `repo`).
    pub async fn create_pull(
        &self,
        repo: &RepoName,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgejoError> {
        let option = json!({"head": head, "base": base, "title": title, "body": body});
        self.write(Method::POST, &Self::repo_path(repo, "/pulls"), &option).await
    }

    /// The open pull requests of `repo`, every page.
    pub async fn open_pulls(&self, repo: &RepoName) -> Result<Vec<PullRequest>, ForgejoError> {
        self.all_pages(&Self::repo_path(repo, "/pulls"), vec![("state", "open".to_string())]).await
    }

    /// The most recently updated closed pull requests (merged ones among them), one page of `limit`.
    pub async fn recently_closed_pulls(&self, repo: &RepoName, limit: u32) -> Result<Vec<PullRequest>, ForgejoError> {
        let q = [("state", "closed".to_string()), ("sort", "recentupdate".to_string()), ("limit", limit.to_string())];
        self.get(&Self::repo_path(repo, "/pulls"), &q).await
    }

    /// Every review of a pull request, oldest first.
    pub async fn pull_reviews(&self, repo: &RepoName, number: u64) -> Result<Vec<PullReview>, ForgejoError> {
        self.all_pages(&Self::repo_path(repo, &format!("/pulls/{number}/reviews")), Vec::new()).await
    }

    /// The line comments of one review.
    pub async fn review_comments(
        &self,
        repo: &RepoName,
        number: u64,
        review: i64,
    ) -> Result<Vec<PullReviewComment>, ForgejoError> {
        self.get(&Self::repo_path(repo, &format!("/pulls/{number}/reviews/{review}/comments")), &[]).await
    }

    pub async fn pull_commits(&self, repo: &RepoName, number: u64) -> Result<Vec<Commit>, ForgejoError> {
        let q = vec![("verification", "false".to_string()), ("files", "false".to_string())];
        self.all_pages(&Self::repo_path(repo, &format!("/pulls/{number}/commits")), q).await
    }

    pub async fn pull_files(&self, repo: &RepoName, number: u64) -> Result<Vec<ChangedFile>, ForgejoError> {
        self.all_pages(&Self::repo_path(repo, &format!("/pulls/{number}/files")), Vec::new()).await
    }

    /// Closes a pull request (`PATCH /pulls/{n}` with `state: closed`); its branch stays.
    pub async fn close_pull(&self, repo: &RepoName, number: u64) -> Result<PullRequest, ForgejoError> {
        self.write(Method::PATCH, &Self::repo_path(repo, &format!("/pulls/{number}")), &json!({"state": "closed"}))
            .await
    }

    pub async fn permission(&self, repo: &RepoName, user: &str) -> Result<Permission, ForgejoError> {
        self.get(&Self::repo_path(repo, &format!("/collaborators/{user}/permission")), &[]).await
    }

    /// A file's text at `git_ref` (the default branch when `None`); `Ok(None)` when there is no such file.
    pub async fn file(
        &self,
        repo: &RepoName,
        path: &str,
        git_ref: Option<&str>,
    ) -> Result<Option<(String, String)>, ForgejoError> {
        let q: Vec<(&str, String)> = git_ref.map(|r| ("ref", r.to_string())).into_iter().collect();
        match self.get::<Contents>(&Self::repo_path(repo, &format!("/contents/{path}")), &q).await {
            Ok(c) => {
                let raw = c.content.unwrap_or_default();
                let text = match c.encoding.as_deref() {
                    Some("base64") => decode_base64(&raw).ok_or_else(|| ForgejoError::Decode {
                        method: Method::GET,
                        path: path.to_string(),
                        detail: "the file's content is not valid base64 text".into(),
                    })?,
                    _ => raw,
                };
                Ok(Some((text, c.sha)))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn create_status(
        &self,
        repo: &RepoName,
        sha: &str,
        state: &str,
        context: &str,
        description: &str,
        target_url: &str,
    ) -> Result<(), ForgejoError> {
        let body = json!({"state": state, "context": context, "description": description, "target_url": target_url});
        self.no_content(Method::POST, &Self::repo_path(repo, &format!("/statuses/{sha}")), Some(body), Repeat::Safe)
            .await
    }

    pub async fn hooks(&self, repo: &RepoName) -> Result<Vec<Hook>, ForgejoError> {
        self.all_pages(&Self::repo_path(repo, "/hooks"), Vec::new()).await
    }

    /// Sets the events of hook `id` (`PATCH /hooks/{id}`): forgefleet's own ([`HOOK_EVENTS`]) and those of
    /// `kept` that Forgejo takes as an option (the review kinds it lists are asked for as `pull_request_review`).
    pub async fn add_hook_events(&self, repo: &RepoName, id: i64, kept: &[String]) -> Result<Hook, ForgejoError> {
        let mut events: Vec<&str> = HOOK_EVENTS.to_vec();
        let listed_only = |e: &str| e.starts_with("pull_request_review_") && e != "pull_request_review_request";
        for e in kept.iter().map(String::as_str).filter(|e| !listed_only(e)) {
            if !events.contains(&e) {
                events.push(e);
            }
        }
        self.write(Method::PATCH, &Self::repo_path(repo, &format!("/hooks/{id}")), &json!({"events": events})).await
    }

    pub async fn create_hook(&self, repo: &RepoName, url: &str, secret: &str) -> Result<Hook, ForgejoError> {
        let body = json!({
            "type": "forgejo",
            "config": {"url": url, "content_type": "json", "secret": secret},
            "events": HOOK_EVENTS,
            "active": true,
        });
        self.write(Method::POST, &Self::repo_path(repo, "/hooks"), &body).await
    }
}

/// An error and its causes, outermost first, without repeats: reqwest's own message ("error sending request")
/// leaves out why (refused, timed out, a certificate nobody vouches for).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_string())
    })
}

/// Whether `url` is on the same scheme, host and port as `api`, under its path.
fn under(api: &str, url: &str) -> bool {
    match (reqwest::Url::parse(api), reqwest::Url::parse(url)) {
        (Ok(a), Ok(u)) => {
            a.scheme() == u.scheme()
                && a.host_str() == u.host_str()
                && a.port_or_known_default() == u.port_or_known_default()
                && u.username().is_empty()
                && u.path().starts_with(a.path())
        }
        _ => false,
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get("retry-after")?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

/// Standard base64 (with or without padding, line breaks ignored) to UTF-8 text.
fn decode_base64(s: &str) -> Option<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_is_found_among_others() {
        let h = r#"<https://f.example/api/v1/repos/a/b/issues?page=2&limit=50>; rel="next", <https://f.example/api/v1/repos/a/b/issues?page=9&limit=50>; rel="last""#;
        assert_eq!(next_link(h).as_deref(), Some("https://f.example/api/v1/repos/a/b/issues?page=2&limit=50"));
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="first""#), None);
    }

    #[test]
    fn next_page_links_are_followed_only_on_the_configured_host() {
        let api = "https://f.example/api/v1";
        assert!(under(api, "https://f.example/api/v1/repos/a/b/issues?page=2"));
        assert!(under(api, "https://f.example:443/api/v1/repos/a/b/issues?page=2"));
        for elsewhere in [
            "https://evil.example/api/v1/repos/a/b/issues?page=2",
            "http://f.example/api/v1/repos/a/b/issues?page=2",
            "https://f.example:8443/api/v1/repos/a/b/issues?page=2",
            "https://f.example.evil.example/api/v1/x",
            "https://user@f.example/api/v1/x",
            "https://f.example/other/x",
            "/api/v1/repos/a/b/issues?page=2",
        ] {
            assert!(!under(api, elsewhere), "{elsewhere}");
        }
    }

    #[test]
    fn base64_content_decodes() {
        assert_eq!(
            decode_base64("bGFiZWxzOgogIHRvZG86IGZsZWV0L3RvZG8K").as_deref(),
            Some("labels:\n  todo: fleet/todo\n")
        );
        assert_eq!(decode_base64("aGk=").as_deref(), Some("hi"));
        assert_eq!(decode_base64("!!"), None);
    }
}
