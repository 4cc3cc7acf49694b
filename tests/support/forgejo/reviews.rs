//! Pull request reviews: `POST /pulls/{n}/reviews` (Forgejo's `CreatePullReview`, submitted at once), the
//! listings `GET /pulls/{n}/reviews` and `GET /pulls/{n}/reviews/{id}/comments` shaped like `PullReview` and
//! `PullReviewComment`, and the webhook a submitted review sends: event `pull_request_approved`,
//! `pull_request_rejected` or `pull_request_comment` (Gitea's `HookEventType.Event()`), type
//! `pull_request_review_<kind>`, a `PullRequestPayload` with `action: "reviewed"` and `review: {type, content}`.
//!
//! Choices: the pull request's author may not approve or reject it (422, as Forgejo's `SubmitReview` says);
//! `REQUEST_CHANGES` and `COMMENT` need a body or a comment (422); `event` must be one of the three (the fake
//! has no pending reviews). A review is `stale` once the head moved past its commit. Comments lie on the new
//! side (`new_position`, rendered `position`) or the old (`old_position`, rendered `original_position`).

use serde_json::{Value, json};

use super::render;
use super::routes::{Reply, Req, ok, str_field};
use super::state::{ApiErr, Perm, RepoRec, State, Time};

pub(crate) struct ReviewCommentRec {
    pub id: i64,
    pub path: String,
    pub body: String,
    pub new_position: u64,
    pub old_position: u64,
    pub created: Time,
}

pub(crate) struct ReviewRec {
    pub id: i64,
    pub pull: u64,
    pub user: String,
    /// `APPROVED`, `REQUEST_CHANGES` or `COMMENT`.
    pub state: String,
    pub body: String,
    pub commit_id: String,
    pub comments: Vec<ReviewCommentRec>,
    pub submitted: Time,
}

/// A review as a test (or a request) gives it.
pub struct NewReview<'a> {
    pub event: &'a str,
    pub body: &'a str,
    /// The head when `None`.
    pub commit_id: Option<&'a str>,
    /// (path, new line, body).
    pub comments: Vec<(&'a str, u64, &'a str)>,
}

impl State {
    /// Submits `review` of pull request `n` by `user`, stores it and sends its webhook; its id.
    pub(crate) fn submit_review(&mut self, full: &str, n: u64, user: &str, review: NewReview) -> Result<i64, ApiErr> {
        let r = self.find_repo(full).ok_or_else(ApiErr::not_found)?;
        let issue = r.issues.get(&n).filter(|i| i.pull.is_some()).ok_or_else(ApiErr::not_found)?;
        let head = issue.pull.as_ref().unwrap().head_sha.clone();
        let (event_type, event) = match review.event {
            "APPROVED" => ("pull_request_review_approved", "pull_request_approved"),
            "REQUEST_CHANGES" => ("pull_request_review_rejected", "pull_request_rejected"),
            "COMMENT" => ("pull_request_review_comment", "pull_request_comment"),
            other => return Err(ApiErr::new(422, format!("unsupported review event {other:?}"))),
        };
        if issue.user.eq_ignore_ascii_case(user) && review.event != "COMMENT" {
            let verb = if review.event == "APPROVED" { "approve" } else { "reject" };
            return Err(ApiErr::new(422, format!("{verb} your own pull is not allowed")));
        }
        if review.event != "APPROVED" && review.body.trim().is_empty() && review.comments.is_empty() {
            return Err(ApiErr::new(422, format!("review event {} requires a body or a comment", review.event)));
        }
        let id = self.next_id();
        let submitted = self.tick();
        let mut comments = Vec::new();
        for (path, line, body) in &review.comments {
            let cid = self.next_id();
            comments.push(ReviewCommentRec {
                id: cid,
                path: path.to_string(),
                body: body.to_string(),
                new_position: *line,
                old_position: 0,
                created: submitted,
            });
        }
        let rec = ReviewRec {
            id,
            pull: n,
            user: user.to_string(),
            state: review.event.to_string(),
            body: review.body.to_string(),
            commit_id: review.commit_id.unwrap_or(&head).to_string(),
            comments,
            submitted,
        };
        let r = self.repo_mut(full);
        r.reviews.push(rec);
        if let Some(i) = r.issues.get_mut(&n) {
            i.updated = submitted;
        }
        let r = self.find_repo(full).unwrap();
        let payload = json!({
            "action": "reviewed",
            "number": n,
            "pull_request": render::pull(self, r, &r.issues[&n], Perm::Owner),
            "requested_reviewer": null,
            "repository": render::repo(self, r, Perm::Owner),
            "sender": render::user(self, user),
            "commit_id": "",
            "review": {"type": event_type, "content": review.body},
        });
        self.enqueue(full, event, event_type, "reviewed", payload);
        Ok(id)
    }
}

/// `POST /pulls/{n}/reviews` (`CreatePullReviewOptions`); 200 with the review, as Forgejo answers.
pub(super) fn create(st: &mut State, full: &str, n: u64, req: &Req) -> Result<Reply, ApiErr> {
    let body = req.json()?;
    let comments: Vec<(String, u64, u64, String)> = body["comments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let pos = |k: &str| c[k].as_u64().unwrap_or(0);
            let text = |k: &str| str_field(c, k).unwrap_or("").to_string();
            (text("path"), pos("new_position"), pos("old_position"), text("body"))
        })
        .collect();
    let review = NewReview {
        event: str_field(&body, "event").unwrap_or(""),
        body: str_field(&body, "body").unwrap_or(""),
        commit_id: str_field(&body, "commit_id").filter(|c| !c.is_empty()),
        comments: comments.iter().map(|(p, new, _, b)| (p.as_str(), *new, b.as_str())).collect(),
    };
    let id = st.submit_review(full, n, req.doer()?, review)?;
    // Old-side lines are kept as given.
    let r = st.repo_mut(full);
    let rec = r.reviews.iter_mut().find(|v| v.id == id).unwrap();
    for (c, (_, _, old, _)) in rec.comments.iter_mut().zip(&comments) {
        c.old_position = *old;
    }
    let r = st.find_repo(full).unwrap();
    ok(200, review_json(st, r, r.reviews.iter().find(|v| v.id == id).unwrap()))
}

/// `GET /pulls/{n}/reviews[/{id}/comments]`.
pub(super) fn route(st: &State, r: &RepoRec, n: u64, tail: &[&str], req: &Req) -> Result<Reply, ApiErr> {
    r.issues.get(&n).filter(|i| i.pull.is_some()).ok_or_else(ApiErr::not_found)?;
    match tail {
        [] => {
            let list = r.reviews.iter().filter(|v| v.pull == n).map(|v| review_json(st, r, v)).collect();
            super::listing::paged(st, req, list)
        }
        [id, "comments"] => {
            let id: i64 = id.parse().map_err(|_| ApiErr::not_found())?;
            let v = r.reviews.iter().find(|v| v.pull == n && v.id == id).ok_or_else(ApiErr::not_found)?;
            ok(200, Value::Array(v.comments.iter().map(|c| comment_json(st, r, v, c)).collect()))
        }
        _ => Err(ApiErr::not_found()),
    }
}

fn head_of(r: &RepoRec, n: u64) -> String {
    r.issues.get(&n).and_then(|i| i.pull.as_ref()).map(|p| p.head_sha.clone()).unwrap_or_default()
}

fn pull_url(st: &State, r: &RepoRec, n: u64) -> String {
    format!("{}/{}/pulls/{n}", st.base, r.full_name())
}

/// A `PullReview`.
fn review_json(st: &State, r: &RepoRec, v: &ReviewRec) -> Value {
    let page = pull_url(st, r, v.pull);
    json!({
        "id": v.id,
        "user": render::user(st, &v.user),
        "team": null,
        "state": v.state,
        "body": v.body,
        "commit_id": v.commit_id,
        "stale": v.commit_id != head_of(r, v.pull),
        "official": v.state != "COMMENT",
        "dismissed": false,
        "comments_count": v.comments.len(),
        "submitted_at": render::ts(v.submitted),
        "updated_at": render::ts(v.submitted),
        "html_url": format!("{page}#issuecomment-{}", v.id),
        "pull_request_url": page,
    })
}

/// A `PullReviewComment`.
fn comment_json(st: &State, r: &RepoRec, v: &ReviewRec, c: &ReviewCommentRec) -> Value {
    let page = pull_url(st, r, v.pull);
    json!({
        "id": c.id,
        "body": c.body,
        "user": render::user(st, &v.user),
        "resolver": null,
        "pull_request_review_id": v.id,
        "created_at": render::ts(c.created),
        "updated_at": render::ts(c.created),
        "path": c.path,
        "commit_id": v.commit_id,
        "original_commit_id": v.commit_id,
        "diff_hunk": format!("@@ -{0} +{1} @@", c.old_position, c.new_position),
        "position": c.new_position,
        "original_position": c.old_position,
        "html_url": format!("{page}/files#issuecomment-{}", c.id),
        "pull_request_url": page,
    })
}
