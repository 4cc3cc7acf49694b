//! Webhook deliveries as Forgejo makes them (services/webhook: `AddDefaultHeaders`, `NewRequest`): one background
//! task sends them in order, each once, with a 5 s timeout, and records the outcome.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::state::State;
use super::{Delivery, DeliveryOutcome};

pub(crate) struct Job {
    pub delivery: Delivery,
    pub secret: String,
    pub content_type: String,
    pub dropped: bool,
}

/// `X-Forgejo-Signature`: lowercase hex HMAC-SHA256 of the exact body keyed with the hook's secret; `""` when the
/// secret is empty, as Forgejo sends it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    if secret.is_empty() {
        return String::new();
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A random (version 4) UUID, as `X-Forgejo-Delivery` carries.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// JSON the way Go's encoder writes it: `<`, `>`, `&`, U+2028 and U+2029 escaped (they can only occur inside
/// strings, so a plain replacement is exact); `pretty` is `json.MarshalIndent(v, "", "  ")`.
pub(crate) fn go_json(v: &Value, pretty: bool) -> String {
    let s = if pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) }.expect("json");
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Go's `url.QueryEscape`.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The event kinds a hook created with `events` receives, in Forgejo's order: `issues` also means every
/// `issue_*` kind (comments included), `pull_request` every `pull_request_*` kind; none means `push`.
pub(crate) fn expand_events(events: &[String]) -> Vec<String> {
    let push = ["push".to_string()];
    let events = if events.is_empty() { &push[..] } else { events };
    let has = |e: &str| events.iter().any(|x| x.eq_ignore_ascii_case(e));
    let issues = has("issues");
    let pulls = has("pull_request");
    let mut out = Vec::new();
    for e in ["create", "delete", "fork", "push"] {
        if has(e) {
            out.push(e.to_string());
        }
    }
    if issues || has("issues_only") {
        out.push("issues".to_string());
    }
    for e in ["issue_assign", "issue_label", "issue_milestone", "issue_comment"] {
        if issues || has(e) {
            out.push(e.to_string());
        }
    }
    if pulls || has("pull_request_only") {
        out.push("pull_request".to_string());
    }
    for e in ["pull_request_assign", "pull_request_label", "pull_request_milestone", "pull_request_comment"] {
        if pulls || has(e) {
            out.push(e.to_string());
        }
    }
    if pulls || has("pull_request_review") {
        for e in ["pull_request_review_approved", "pull_request_review_rejected", "pull_request_review_comment"] {
            out.push(e.to_string());
        }
    }
    for e in ["pull_request_sync", "pull_request_review_request"] {
        if pulls || has(e) {
            out.push(e.to_string());
        }
    }
    for e in ["wiki", "repository", "release"] {
        if has(e) {
            out.push(e.to_string());
        }
    }
    out
}

/// Sends queued deliveries one at a time, in queue order, and records each attempt.
pub(crate) async fn worker(mut jobs: mpsc::UnboundedReceiver<Job>, state: Arc<Mutex<State>>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).no_proxy().build().expect("http client");
    while let Some(job) = jobs.recv().await {
        let outcome = if job.dropped { DeliveryOutcome::Dropped } else { send(&client, &job).await };
        let delivery = Delivery { outcome, ..job.delivery };
        state.lock().unwrap().delivery_done(delivery);
    }
}

async fn send(client: &reqwest::Client, job: &Job) -> DeliveryOutcome {
    let d = &job.delivery;
    let signature = sign(&job.secret, d.body.as_bytes());
    let (content_type, body) = if job.content_type == "form" {
        ("application/x-www-form-urlencoded", format!("payload={}", query_escape(&d.body)))
    } else {
        ("application/json", d.body.clone())
    };
    let mut request = client.post(&d.url).header("Content-Type", content_type);
    for prefix in ["X-Forgejo", "X-Gitea", "X-Gogs"] {
        request = request
            .header(format!("{prefix}-Delivery"), &d.id)
            .header(format!("{prefix}-Event"), &d.event)
            .header(format!("{prefix}-Event-Type"), &d.event_type)
            .header(format!("{prefix}-Signature"), &signature);
    }
    request = request
        .header("X-GitHub-Delivery", &d.id)
        .header("X-GitHub-Event", &d.event)
        .header("X-GitHub-Event-Type", &d.event_type)
        .header("X-Hub-Signature-256", format!("sha256={signature}"));
    match request.body(body).send().await {
        Ok(response) => DeliveryOutcome::Status(response.status().as_u16()),
        Err(e) => DeliveryOutcome::Error(e.to_string()),
    }
}
