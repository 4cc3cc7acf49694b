//! Webhook deliveries: the signature check and the few shapes forgefleet acts on.
//!
//! Forgejo never retries a delivery and a replay carries a new delivery id, so handling is idempotent and
//! deduplicated on content ([`Delivery::dedupe_key`]), never on the delivery id.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::types::{Comment, Issue, User};
use crate::core::RepoName;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("no webhook secret is configured ([forgejo] webhook_secret): deliveries are refused")]
    NoSecret,
    #[error("the delivery carries no signature (X-Forgejo-Signature)")]
    Unsigned,
    #[error("the delivery's signature does not match the configured webhook secret")]
    BadSignature,
    #[error("the delivery has no X-Forgejo-Event header")]
    NoEvent,
    #[error("the {event} payload cannot be read: {detail}")]
    Malformed { event: String, detail: String },
}

/// Checks the lowercase hex HMAC-SHA256 of the exact body bytes, in constant time.
pub fn verify(secret: Option<&str>, signature: Option<&str>, body: &[u8]) -> Result<(), WebhookError> {
    let secret = secret.filter(|s| !s.is_empty()).ok_or(WebhookError::NoSecret)?;
    let signature = signature.map(str::trim).filter(|s| !s.is_empty()).ok_or(WebhookError::Unsigned)?;
    let given = decode_hex(signature.strip_prefix("sha256=").unwrap_or(signature)).ok_or(WebhookError::BadSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| WebhookError::BadSignature)?;
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| WebhookError::BadSignature)
}

/// The lowercase hex signature Forgejo would send: for tests and for the fake Forgejo.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[derive(Debug, Deserialize)]
struct RepoField {
    full_name: String,
}

#[derive(Debug, Deserialize)]
struct IssuesPayload {
    action: String,
    issue: Issue,
    repository: RepoField,
    sender: User,
}

#[derive(Debug, Deserialize)]
struct BodyChange {
    from: String,
}

#[derive(Debug, Deserialize, Default)]
struct Changes {
    body: Option<BodyChange>,
}

#[derive(Debug, Deserialize)]
struct CommentPayload {
    action: String,
    issue: Issue,
    comment: Comment,
    repository: RepoField,
    sender: User,
    #[serde(default)]
    changes: Option<Changes>,
    #[serde(default)]
    is_pull: bool,
}

#[derive(Debug, Deserialize)]
struct PullHead {
    sha: String,
}

#[derive(Debug, Deserialize)]
struct PullField {
    #[serde(default)]
    merged: bool,
    head: PullHead,
    #[serde(default)]
    updated_at: String,
}

#[derive(Debug, Deserialize)]
struct PullPayload {
    action: String,
    number: u64,
    pull_request: PullField,
    repository: RepoField,
    sender: User,
}

/// `review` of a review delivery: Forgejo's `ReviewPayload`.
#[derive(Debug, Deserialize)]
struct ReviewField {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    content: String,
}

/// A review delivery: a `PullRequestPayload` (`action: "reviewed"`) with `review`.
#[derive(Debug, Deserialize)]
struct ReviewPayload {
    number: u64,
    pull_request: PullField,
    review: ReviewField,
    repository: RepoField,
    sender: User,
}

/// The `X-Forgejo-Event` of a submitted review, by its kind (Gitea's `HookEventType.Event()`, which Forgejo
/// inherited): request changes, approve, or comment. The last is also the event name older servers gave a
/// plain comment on a pull request, so its payload decides what it is.
const REVIEW_EVENTS: [&str; 3] = ["pull_request_rejected", "pull_request_approved", "pull_request_comment"];

/// A delivery forgefleet acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Any change to an issue: what matters is the issue as it now is.
    Issue { repo: RepoName, action: String, issue: Issue, sender: User },
    /// A comment was written or edited; `previous` is the text before an edit.
    /// `on_pull`: the comment is on a pull request (where only `/fleet fix` means something).
    Comment {
        repo: RepoName,
        action: String,
        issue: Issue,
        comment: Comment,
        previous: Option<String>,
        sender: User,
        on_pull: bool,
    },
    PullRequest {
        repo: RepoName,
        action: String,
        number: u64,
        merged: bool,
        head_sha: String,
        updated_at: String,
        sender: User,
    },
    /// A review was submitted on pull request `number`. What it says is read back from Forgejo, never taken
    /// from here; `requests_changes`: it was a "request changes" review (`pull_request_rejected`), the only
    /// kind that can lead to work.
    Review {
        repo: RepoName,
        number: u64,
        head_sha: String,
        updated_at: String,
        sender: User,
        requests_changes: bool,
        /// A digest of the review's text: two reviews of one head by one person differ in it.
        content_digest: String,
    },
    /// An event or action forgefleet does not act on; answered 2xx all the same.
    Ignored { event: String, action: String },
}

impl Delivery {
    /// Reads a delivery of `event` (the `X-Forgejo-Event` header).
    pub fn parse(event: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
        let malformed =
            |e: serde_json::Error| WebhookError::Malformed { event: event.to_string(), detail: e.to_string() };
        let repo = |r: RepoField| {
            RepoName::parse(&r.full_name)
                .map_err(|e| WebhookError::Malformed { event: event.to_string(), detail: e.to_string() })
        };
        let is_review = |body: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(body)
                .map(|v| v.get("review").is_some_and(|r| r.is_object()) && v.get("pull_request").is_some())
                .map_err(malformed)
        };
        match event {
            e if REVIEW_EVENTS.contains(&e) && (e != "pull_request_comment" || is_review(body)?) => {
                let p: ReviewPayload = serde_json::from_slice(body).map_err(malformed)?;
                Ok(Delivery::Review {
                    repo: repo(p.repository)?,
                    number: p.number,
                    head_sha: p.pull_request.head.sha,
                    updated_at: p.pull_request.updated_at,
                    sender: p.sender,
                    requests_changes: e == "pull_request_rejected",
                    content_digest: digest(&format!("{}\n{}", p.review.kind, p.review.content)),
                })
            }
            "issues" => {
                let p: IssuesPayload = serde_json::from_slice(body).map_err(malformed)?;
                Ok(Delivery::Issue { repo: repo(p.repository)?, action: p.action, issue: p.issue, sender: p.sender })
            }
            // A plain comment on a pull request comes as `issue_comment` (its type `pull_request_comment`); a
            // `pull_request_comment` event with a comment and no review is read the same way.
            "issue_comment" | "pull_request_comment" => {
                let p: CommentPayload = serde_json::from_slice(body).map_err(malformed)?;
                let on_pull = p.is_pull || p.issue.is_pull();
                if !matches!(p.action.as_str(), "created" | "edited") {
                    return Ok(Delivery::Ignored { event: event.into(), action: p.action });
                }
                let previous = p.changes.unwrap_or_default().body.map(|b| b.from);
                Ok(Delivery::Comment {
                    repo: repo(p.repository)?,
                    action: p.action,
                    issue: p.issue,
                    comment: p.comment,
                    previous,
                    sender: p.sender,
                    on_pull,
                })
            }
            "pull_request" => {
                let p: PullPayload = serde_json::from_slice(body).map_err(malformed)?;
                Ok(Delivery::PullRequest {
                    repo: repo(p.repository)?,
                    action: p.action,
                    number: p.number,
                    merged: p.pull_request.merged,
                    head_sha: p.pull_request.head.sha,
                    updated_at: p.pull_request.updated_at,
                    sender: p.sender,
                })
            }
            other => {
                // Still JSON: a body that is not is a client error even for events we ignore.
                let v: serde_json::Value = serde_json::from_slice(body).map_err(malformed)?;
                let action = v.get("action").and_then(|a| a.as_str()).unwrap_or_default().to_string();
                Ok(Delivery::Ignored { event: other.to_string(), action })
            }
        }
    }

    /// What makes two deliveries the same change: a replay (new delivery id, same content) maps to the
    /// same key and changes nothing.
    pub fn dedupe_key(&self) -> Option<String> {
        match self {
            Delivery::Issue { repo, action, issue, .. } => {
                let labels = issue.label_names().join(",");
                Some(format!("issue:{repo}#{}:{action}:{}:{}:{labels}", issue.number, issue.updated_at, issue.state))
            }
            Delivery::Comment { repo, action, comment, .. } => {
                Some(format!("comment:{repo}:{}:{action}:{}", comment.id, comment.updated_at))
            }
            Delivery::PullRequest { repo, action, number, head_sha, updated_at, .. } => {
                Some(format!("pull:{repo}#{number}:{action}:{head_sha}:{updated_at}"))
            }
            Delivery::Review { repo, number, head_sha, updated_at, sender, requests_changes, content_digest } => {
                let kind = if *requests_changes { "changes" } else { "other" };
                Some(format!("review:{repo}#{number}:{kind}:{head_sha}:{updated_at}:{}:{content_digest}", sender.login))
            }
            Delivery::Ignored { .. } => None,
        }
    }
}

/// The first 16 hex digits of the SHA-256 of `text`.
fn digest(text: &str) -> String {
    use sha2::Digest;
    Sha256::digest(text.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/../shared/forgejo/webhooks/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn signatures_are_checked_in_hex_with_or_without_the_sha256_prefix() {
        let body = br#"{"action":"opened"}"#;
        let sig = sign("s3cret", body);
        assert_eq!(verify(Some("s3cret"), Some(&sig), body), Ok(()));
        assert_eq!(verify(Some("s3cret"), Some(&format!("sha256={sig}")), body), Ok(()));
        assert_eq!(verify(Some("other"), Some(&sig), body), Err(WebhookError::BadSignature));
        assert_eq!(verify(Some("s3cret"), Some(&sig), b"{}"), Err(WebhookError::BadSignature));
        assert_eq!(verify(Some("s3cret"), Some("zz"), body), Err(WebhookError::BadSignature));
        assert_eq!(verify(Some("s3cret"), Some(""), body), Err(WebhookError::Unsigned));
        assert_eq!(verify(None, Some(&sig), body), Err(WebhookError::NoSecret));
    }

    #[test]
    fn the_documented_test_vector_verifies() {
        // HEADERS.txt: HMAC-SHA256("secret", HookPullRequestMerged.json bytes).
        let body = shared("forgejo-pull-request/HookPullRequestMerged.json");
        let expected = "bf253719130a7f3cfb8368d8e3dbe18e889207cf93705897e170a445f0830a33";
        assert_eq!(sign("secret", &body), expected);
        assert_eq!(verify(Some("secret"), Some(expected), &body), Ok(()));
    }

    #[test]
    fn every_real_payload_parses() {
        let dir = format!("{}/../shared/forgejo/webhooks", env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for sub in ["gitea-issues", "forgejo-pull-request"] {
            for entry in std::fs::read_dir(format!("{dir}/{sub}")).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                let event = if sub == "forgejo-pull-request" {
                    "pull_request"
                } else if name.starts_with("issue_comment") || name.starts_with("pull_request_comment") {
                    "issue_comment"
                } else {
                    "issues"
                };
                let body = std::fs::read(&path).unwrap();
                let d = Delivery::parse(event, &body).unwrap_or_else(|e| panic!("{name}: {e}"));
                match (event, &d) {
                    ("issues", Delivery::Issue { .. }) | ("pull_request", Delivery::PullRequest { .. }) => {}
                    ("issue_comment", Delivery::Comment { .. } | Delivery::Ignored { .. }) => {}
                    _ => panic!("{name} parsed as {d:?}"),
                }
                n += 1;
            }
        }
        assert!(n >= 20, "only {n} payloads found");
    }

    #[test]
    fn an_edited_comment_keeps_its_previous_text_and_replays_share_a_key() {
        let body = shared("gitea-issues/issue_comment_edited.json");
        let d = Delivery::parse("issue_comment", &body).unwrap();
        assert!(matches!(&d, Delivery::Comment { previous: Some(p), .. } if p == "Got it"), "{d:?}");
        assert_eq!(d.dedupe_key(), Delivery::parse("issue_comment", &body).unwrap().dedupe_key());
    }

    /// A real `pull_request` body as Forgejo sends it for a review of `kind`: `action: "reviewed"` and
    /// `review: {type, content}` (services/webhook/notifier.go `PullRequestReview`).
    fn review_body(kind: &str, content: &str) -> Vec<u8> {
        let mut v: serde_json::Value =
            serde_json::from_slice(&shared("forgejo-pull-request/HookPullRequestUpdated.json")).unwrap();
        v["action"] = "reviewed".into();
        v["review"] = serde_json::json!({"type": kind, "content": content});
        serde_json::to_vec_pretty(&v).unwrap()
    }

    #[test]
    fn a_review_is_read_by_its_event_and_replays_share_a_key() {
        let rejected = review_body("pull_request_review_rejected", "Please rename it.");
        let d = Delivery::parse("pull_request_rejected", &rejected).unwrap();
        match &d {
            Delivery::Review { repo, number, head_sha, updated_at, sender, requests_changes, .. } => {
                assert_eq!(
                    (repo.as_str(), *number, *requests_changes),
                    ("Test-CI/multi-line-secrets", 2, true),
                    "{d:?}"
                );
                assert_eq!(head_sha, "788ed8d02d3b7fcfcf6386dbcbca696aa1d4dc25");
                assert_eq!(updated_at, "2024-02-22T01:42:03+01:00");
                assert!(!sender.login.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.dedupe_key(), Delivery::parse("pull_request_rejected", &rejected).unwrap().dedupe_key());
        let other = review_body("pull_request_review_rejected", "Another thing.");
        assert_ne!(d.dedupe_key(), Delivery::parse("pull_request_rejected", &other).unwrap().dedupe_key());

        let approved = review_body("pull_request_review_approved", "Fine.");
        let d = Delivery::parse("pull_request_approved", &approved).unwrap();
        assert!(matches!(d, Delivery::Review { requests_changes: false, .. }), "{d:?}");
        let comment = review_body("pull_request_review_comment", "Hm.");
        let d = Delivery::parse("pull_request_comment", &comment).unwrap();
        assert!(matches!(d, Delivery::Review { requests_changes: false, .. }), "{d:?}");
    }

    #[test]
    fn a_plain_comment_on_a_pull_request_stays_a_comment_under_either_event_name() {
        let body = shared("gitea-issues/pull_request_comment_created.json");
        for event in ["issue_comment", "pull_request_comment"] {
            let d = Delivery::parse(event, &body).unwrap();
            assert!(matches!(d, Delivery::Comment { on_pull: true, .. }), "{event}: {d:?}");
        }
    }

    #[test]
    fn a_review_without_its_pull_request_is_malformed() {
        for event in ["pull_request_rejected", "pull_request_approved"] {
            let e = Delivery::parse(event, br#"{"action": "reviewed", "review": {"type": "x"}}"#).unwrap_err();
            assert!(matches!(e, WebhookError::Malformed { .. }), "{e:?}");
        }
        assert!(Delivery::parse("pull_request_rejected", b"nope").is_err());
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(matches!(Delivery::parse("issues", b"{not json"), Err(WebhookError::Malformed { .. })));
        assert!(matches!(Delivery::parse("issues", br#"{"action": "opened"}"#), Err(WebhookError::Malformed { .. })));
        assert!(matches!(Delivery::parse("push", b"[]"), Ok(Delivery::Ignored { .. })));
        assert!(Delivery::parse("push", b"nope").is_err());
    }
}
