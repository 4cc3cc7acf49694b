//! The fake Forgejo held to Forgejo itself: every JSON shape it answers against the OpenAPI description in
//! `../shared/forgejo`, paging, filters, and webhooks checked against the real payloads and the signature vector.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use reqwest::Method;
use serde_json::{Value, json};
use support::forgejo::probe::{Api, Spec, read_shared};
use support::forgejo::{DeliveryOutcome, FakeCommit, FakeForgejo, sign};
use support::git::{GitServer, TestRepo};

const REPO: &str = "acme/widgets";

/// A webhook receiver on 127.0.0.1:0 keeping every request's headers and exact body.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let keep = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| async move {
            keep.lock().unwrap().push((headers, body));
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// A repository where `bot` is admin, `alice` may write and `bob` may only read.
async fn world() -> (FakeForgejo, Api) {
    let fake = FakeForgejo::start().await;
    fake.add_user("bot", "bot-token").await;
    fake.add_user("alice", "alice-token").await;
    fake.add_user("bob", "bob-token").await;
    fake.create_repo(REPO).await;
    fake.set_permission(REPO, "bot", "admin").await;
    fake.set_permission(REPO, "alice", "write").await;
    let bot = Api::new(&fake, Some("bot-token"));
    (fake, bot)
}

fn numbers(list: &Value) -> Vec<u64> {
    list.as_array().unwrap().iter().map(|i| i["number"].as_u64().unwrap()).collect()
}

fn rfc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn action_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).unwrap()["action"].as_str().unwrap().to_string()
}

fn top_keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

const SHA_A: &str = "1111111111111111111111111111111111111111";
const SHA_B: &str = "2222222222222222222222222222222222222222";

#[tokio::test]
async fn every_json_shape_matches_the_openapi_definitions() {
    let spec = Spec::load();
    let (fake, bot) = world().await;
    let r = format!("/repos/{REPO}");
    fake.create_label(REPO, "priority/high", "#ff0000", "urgent", true).await;
    let n =
        fake.create_issue(REPO, "alice", "Fix the <widget> & co", "It breaks", &["status:todo", "priority/high"]).await;
    fake.set_assignees(REPO, n, "alice", &["alice"]).await;
    fake.comment(REPO, n, "alice", "me too").await;
    let pr = fake.create_pull(REPO, "bot", "Fix #1", "Closes #1", "fleet/1", SHA_B, "main").await;
    let commits = [
        FakeCommit::new(SHA_A, "first").file("src/a.rs", "added", 10, 0),
        FakeCommit::new(SHA_B, "second").file("src/a.rs", "modified", 2, 1).file("README.md", "modified", 1, 1),
    ];
    fake.set_pull_commits(REPO, pr, &commits).await;
    fake.set_file(REPO, "docs/fleet.toml", "x = 1\n").await;

    let repo = bot.ok(&r).await;
    spec.check("Repository", &repo, &["id", "name", "full_name", "owner", "default_branch", "clone_url", "html_url"]);
    assert_eq!(repo["clone_url"], format!("{}/{REPO}.git", fake.url()));
    spec.check("User", &bot.ok("/user").await, &["id", "login"]);
    spec.check("GeneralAPISettings", &bot.ok("/settings/api").await, &["max_response_items", "default_paging_num"]);

    let issue_must = ["id", "number", "title", "body", "state", "labels", "user", "created_at", "updated_at"];
    let issue = bot.ok(&format!("{r}/issues/{n}")).await;
    spec.check("Issue", &issue, &[&issue_must[..], &["assignees", "html_url", "repository", "url"]].concat());
    assert!(issue["pull_request"].is_null() && issue["closed_at"].is_null());
    spec.check("RepositoryMeta", &issue["repository"], &["id", "name", "owner", "full_name"]);
    for item in bot.ok(&format!("{r}/issues?state=all")).await.as_array().unwrap() {
        spec.check("Issue", item, &issue_must);
    }
    let pr_issue = bot.ok(&format!("{r}/issues/{pr}")).await;
    spec.check("Issue", &pr_issue, &["pull_request"]);
    spec.check("PullRequestMeta", &pr_issue["pull_request"], &["merged"]);
    // Go's encoder escapes HTML characters.
    assert!(bot.get(&format!("{r}/issues/{n}")).await.text.contains(r"Fix the \u003cwidget\u003e \u0026 co"));

    let label_must = ["id", "name", "color", "description", "exclusive", "url"];
    for list in [bot.ok(&format!("{r}/labels")).await, bot.ok(&format!("{r}/issues/{n}/labels")).await] {
        list.as_array().unwrap().iter().for_each(|l| spec.check("Label", l, &label_must));
    }
    let label = json!({"name": "kind/bug", "color": "ee0701", "description": "", "exclusive": true});
    spec.check("Label", &bot.send(Method::POST, &format!("{r}/labels"), label, 201).await, &label_must);
    let added = bot.send(Method::POST, &format!("{r}/issues/{n}/labels"), json!({"labels": ["kind/bug"]}), 200).await;
    added.as_array().unwrap().iter().for_each(|l| spec.check("Label", l, &label_must));

    let comment_must = ["id", "body", "user", "created_at", "updated_at", "html_url", "issue_url"];
    for c in bot.ok(&format!("{r}/issues/{n}/comments")).await.as_array().unwrap() {
        spec.check("Comment", c, &comment_must);
    }
    let c = bot.send(Method::POST, &format!("{r}/issues/{n}/comments"), json!({"body": "on it"}), 201).await;
    spec.check("Comment", &c, &comment_must);
    let edited = json!({"body": "on it!"});
    let c = bot.send(Method::PATCH, &format!("{r}/issues/comments/{}", c["id"]), edited, 200).await;
    spec.check("Comment", &c, &comment_must);
    let patch = json!({"assignees": ["bot"], "title": "Fix the widget"});
    spec.check("Issue", &bot.send(Method::PATCH, &format!("{r}/issues/{n}"), patch, 201).await, &issue_must);

    let reaction = bot.send(Method::POST, &format!("{r}/issues/{n}/reactions"), json!({"content": "eyes"}), 201).await;
    spec.check("Reaction", &reaction, &["user", "content", "created_at"]);
    bot.send(Method::POST, &format!("{r}/issues/{n}/reactions"), json!({"content": "eyes"}), 200).await;
    spec.check("Reaction", &bot.ok(&format!("{r}/issues/{n}/reactions")).await[0], &["content"]);

    let pull = bot.ok(&format!("{r}/pulls/{pr}")).await;
    let pull_must = ["number", "title", "body", "state", "merged", "head", "base", "html_url", "user", "merge_base"];
    spec.check("PullRequest", &pull, &pull_must);
    spec.check("PRBranchInfo", &pull["head"], &["ref", "sha", "repo", "label"]);
    assert_eq!((pull["head"]["sha"].as_str(), pull["head"]["ref"].as_str()), (Some(SHA_B), Some("fleet/1")));
    assert_eq!(pull["head"]["repo"]["full_name"], REPO);
    let listed = bot.ok(&format!("{r}/pulls/{pr}/commits")).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    listed.as_array().unwrap().iter().for_each(|c| spec.check("Commit", c, &["sha", "commit", "files", "stats"]));
    let quick = bot.ok(&format!("{r}/pulls/{pr}/commits?verification=false&files=false")).await;
    assert!(quick[0]["files"].is_null() && quick[0]["commit"]["verification"].is_null());
    assert_eq!(quick[0]["commit"]["message"], "second", "newest first, as git log lists them");
    let files = bot.ok(&format!("{r}/pulls/{pr}/files")).await;
    let must = ["filename", "status", "additions", "deletions", "changes"];
    files.as_array().unwrap().iter().for_each(|f| spec.check("ChangedFile", f, &must));
    assert_eq!((files[0]["filename"].as_str(), files[0]["additions"].as_u64()), (Some("src/a.rs"), Some(12)));

    // Reviews: the author may not reject their own pull request; another person's review and its comments.
    let review = json!({"body": "Rename it.", "event": "REQUEST_CHANGES",
        "comments": [{"path": "src/a.rs", "body": "here", "new_position": 3, "old_position": 0}]});
    let own = bot.send(Method::POST, &format!("{r}/pulls/{pr}/reviews"), review.clone(), 422).await;
    spec.check("APIError", &own, &["message"]);
    let alice = Api::new(&fake, Some("alice-token"));
    let review_must =
        ["id", "user", "state", "body", "commit_id", "stale", "dismissed", "comments_count", "submitted_at"];
    let made = alice.send(Method::POST, &format!("{r}/pulls/{pr}/reviews"), review, 200).await;
    spec.check("PullReview", &made, &review_must);
    assert_eq!((made["state"].as_str(), made["commit_id"].as_str()), (Some("REQUEST_CHANGES"), Some(SHA_B)));
    let listed = bot.ok(&format!("{r}/pulls/{pr}/reviews")).await;
    spec.check("PullReview", &listed[0], &[&review_must[..], &["html_url", "pull_request_url", "official"]].concat());
    let comments = bot.ok(&format!("{r}/pulls/{pr}/reviews/{}/comments", made["id"])).await;
    let comment_must = ["id", "body", "path", "position", "original_position", "commit_id", "diff_hunk", "user"];
    spec.check("PullReviewComment", &comments[0], &[&comment_must[..], &["pull_request_review_id"]].concat());
    assert_eq!((comments[0]["path"].as_str(), comments[0]["position"].as_u64()), (Some("src/a.rs"), Some(3)));

    let perm = bot.ok(&format!("{r}/collaborators/alice/permission")).await;
    spec.check("RepoCollaboratorPermission", &perm, &["permission", "role_name", "user"]);
    let file = bot.ok(&format!("{r}/contents/docs/fleet.toml?ref=main")).await;
    spec.check("ContentsResponse", &file, &["type", "encoding", "content", "sha", "path", "name", "size"]);
    assert_eq!((file["type"].as_str(), file["content"].as_str()), (Some("file"), Some("eCA9IDEK")));
    for entry in bot.ok(&format!("{r}/contents/docs")).await.as_array().unwrap() {
        spec.check("ContentsResponse", entry, &["type", "path"]);
    }

    let status = json!({"state": "success", "target_url": "http://f/t/1", "description": "ok", "context": "fleet"});
    let created = bot.send(Method::POST, &format!("{r}/statuses/{SHA_B}"), status, 201).await;
    spec.check("CommitStatus", &created, &["id", "status", "context", "target_url", "description", "creator"]);
    for s in bot.ok(&format!("{r}/commits/fleet%2F1/statuses")).await.as_array().unwrap() {
        spec.check("CommitStatus", s, &["status"]);
    }

    let hook = json!({"type": "forgejo", "config": {"url": "http://127.0.0.1:9/h", "content_type": "json", "secret": "s"},
        "events": ["issues"], "active": false});
    spec.check(
        "Hook",
        &bot.send(Method::POST, &format!("{r}/hooks"), hook, 201).await,
        &["id", "type", "config", "events"],
    );
    let listed = bot.ok(&format!("{r}/hooks")).await;
    spec.check("Hook", &listed[0], &["active", "created_at"]);
    let edit = json!({"events": ["issues", "pull_request_review"]});
    let edited = bot.send(Method::PATCH, &format!("{r}/hooks/{}", listed[0]["id"]), edit, 200).await;
    spec.check("Hook", &edited, &["id", "events"]);
    assert!(edited["events"].as_array().unwrap().iter().any(|e| e == "pull_request_review_rejected"), "{edited}");

    let denied = Api::new(&fake, Some("no-such-token")).get(&r).await;
    assert_eq!(denied.status, 401);
    spec.check("APIError", &denied.json(), &["message", "url"]);
}

#[tokio::test]
async fn issue_lists_page_with_link_and_total_count_like_forgejo() {
    let (fake, bot) = world().await;
    for i in 1..=55 {
        fake.create_issue(REPO, "alice", &format!("Issue {i}"), "", &[]).await;
    }
    let first = bot.get(&format!("/repos/{REPO}/issues?limit=20")).await;
    assert_eq!(first.header("x-total-count"), "55");
    assert_eq!(numbers(&first.json()), (36..=55).rev().collect::<Vec<u64>>(), "newest created first");
    let base = format!("{}/api/v1/repos/{REPO}/issues", fake.url());
    assert_eq!(
        first.header("link"),
        format!("<{base}?limit=20&page=2>; rel=\"next\",<{base}?limit=20&page=3>; rel=\"last\"")
    );

    let mut seen = Vec::new();
    let mut next = Some(format!("{base}?limit=20"));
    while let Some(url) = next {
        let page = bot.get(&url).await;
        seen.extend(numbers(&page.json()));
        next = page
            .header("link")
            .split(',')
            .find(|l| l.ends_with("rel=\"next\""))
            .map(|l| l.split(['<', '>']).nth(1).unwrap().to_string());
    }
    assert_eq!(seen, (1..=55).rev().collect::<Vec<u64>>());
    let last = bot.get(&format!("/repos/{REPO}/issues?limit=20&page=3")).await;
    assert!(last.header("link").contains("rel=\"first\"") && last.header("link").contains("rel=\"prev\""));
    assert!(!last.header("link").contains("rel=\"next\""));

    assert_eq!(bot.ok(&format!("/repos/{REPO}/issues")).await.as_array().unwrap().len(), 30, "default_paging_num");
    let capped = bot.ok(&format!("/repos/{REPO}/issues?limit=500")).await;
    assert_eq!(capped.as_array().unwrap().len(), 50, "limit is capped silently at MAX_RESPONSE_ITEMS");
    assert_eq!(bot.ok(&format!("/repos/{REPO}/issues?page=9")).await, json!([]));
    assert_eq!(fake.count_requests("GET", &format!("/api/v1/repos/{REPO}/issues")).await, 8);
}

#[tokio::test]
async fn issue_filters_follow_forgejo() {
    let (fake, bot) = world().await;
    let one = fake.create_issue(REPO, "alice", "one", "", &["a"]).await;
    let two = fake.create_issue(REPO, "alice", "two", "", &["a", "b"]).await;
    let three = fake.create_issue(REPO, "bob", "three", "", &["b"]).await;
    let four = fake.create_issue(REPO, "bob", "four", "", &[]).await;
    let pr = fake.create_pull(REPO, "bot", "pr", "", "fleet/x", SHA_A, "main").await;
    fake.add_labels(REPO, pr, "bot", &["a"]).await;
    let list = |q: &str| {
        let path = format!("/repos/{REPO}/issues?{q}");
        let bot = &bot;
        async move {
            let mut n = numbers(&bot.ok(&path).await);
            n.sort();
            n
        }
    };
    assert_eq!(list("").await, vec![one, two, three, four, pr], "issues and pulls by default");
    assert_eq!(list("type=issues").await, vec![one, two, three, four]);
    assert_eq!(list("type=pulls").await, vec![pr]);
    assert_eq!(list("labels=a&type=issues").await, vec![one, two]);
    assert_eq!(list("labels=a,b").await, vec![two], "all labels must match");
    assert_eq!(list("labels=a,nope&type=issues").await, vec![one, two], "unknown names are dropped");
    assert_eq!(list("labels=nope&type=issues").await, vec![one, two, three, four], "no known name: no filter");
    assert_eq!(list("created_by=bob").await, vec![three, four]);

    fake.close_issue(REPO, two, "alice").await;
    assert_eq!(list("type=issues").await, vec![one, three, four], "open by default");
    assert_eq!(list("state=closed").await, vec![two]);
    assert_eq!(list("state=all&type=issues").await, vec![one, two, three, four]);

    // since/before compare updated_at, inclusively; comments and label changes bump it.
    let mark = fake.issue(REPO, two).await.updated_at;
    let after = rfc(mark + chrono::Duration::milliseconds(1));
    assert_eq!(list(&format!("state=all&since={}", rfc(mark))).await, vec![two]);
    assert_eq!(list(&format!("state=all&since={after}")).await, Vec::<u64>::new());
    fake.comment(REPO, one, "bob", "bump").await;
    fake.add_labels(REPO, three, "alice", &["c"]).await;
    assert_eq!(list(&format!("state=all&since={after}")).await, vec![one, three]);
    assert_eq!(list(&format!("state=all&type=issues&before={}", rfc(mark))).await, vec![two, four]);
    assert!(fake.issue(REPO, three).await.updated_at > mark);
    assert_eq!(bot.get(&format!("/repos/{REPO}/issues?since=yesterday")).await.status, 422);
}

#[tokio::test]
async fn label_calls_behave_like_forgejo() {
    let (fake, bot) = world().await;
    let r = format!("/repos/{REPO}");
    let n = fake.create_issue(REPO, "alice", "t", "", &["status:todo"]).await;
    let todo = fake.labels(REPO).await[0].id;
    for scoped in ["status/todo", "status/doing"] {
        let body = json!({"name": scoped, "color": "#0f0", "exclusive": true});
        assert_eq!(bot.send(Method::POST, &format!("{r}/labels"), body, 201).await["color"], "00ff00");
    }
    let dup = json!({"name": "status:todo", "color": "ededed"});
    assert_ne!(bot.send(Method::POST, &format!("{r}/labels"), dup, 201).await["id"], todo, "names are not unique");
    assert_eq!(
        bot.call(Method::POST, &format!("{r}/labels"), Some(json!({"name": "x", "color": "red"}))).await.status,
        422
    );

    let mixed = json!({"labels": [todo, "status/todo"]});
    assert_eq!(bot.call(Method::POST, &format!("{r}/issues/{n}/labels"), Some(mixed)).await.status, 400);
    bot.send(Method::POST, &format!("{r}/issues/{n}/labels"), json!({"labels": ["status/todo"]}), 200).await;
    let now = bot.send(Method::POST, &format!("{r}/issues/{n}/labels"), json!({"labels": ["status/doing"]}), 200).await;
    let names: Vec<&str> = now.as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["status/doing", "status:todo"], "an exclusive scope drops its sibling");

    let before = fake.issue(REPO, n).await.updated_at;
    assert_eq!(bot.call(Method::DELETE, &format!("{r}/issues/{n}/labels/99999"), None).await.status, 422);
    assert_eq!(bot.call(Method::DELETE, &format!("{r}/issues/{n}/labels/{todo}"), None).await.status, 204);
    assert_eq!(fake.issue(REPO, n).await.labels, ["status/doing"]);
    assert!(fake.issue(REPO, n).await.updated_at > before);
    bot.send(Method::PUT, &format!("{r}/issues/{n}/labels"), json!({"labels": [todo]}), 200).await;
    assert_eq!(fake.issue(REPO, n).await.labels, ["status:todo"]);
    assert_eq!(bot.call(Method::DELETE, &format!("{r}/issues/{n}/labels"), None).await.status, 204);
    assert!(fake.issue(REPO, n).await.labels.is_empty());

    let bob = Api::new(&fake, Some("bob-token"));
    assert_eq!(
        bob.call(Method::POST, &format!("{r}/issues/{n}/labels"), Some(json!({"labels": [todo]}))).await.status,
        403
    );
    assert_eq!(
        bob.call(Method::POST, &format!("{r}/issues/{n}/comments"), Some(json!({"body": "hi"}))).await.status,
        201
    );
    assert_eq!(Api::new(&fake, None).call(Method::POST, &format!("{r}/labels"), Some(json!({}))).await.status, 401);

    let perm = |who: &str| format!("{r}/collaborators/{who}/permission");
    assert_eq!(bot.ok(&perm("alice")).await["permission"], "write");
    assert_eq!(bot.ok(&perm("bob")).await["permission"], "read", "a non-collaborator reads a public repo");
    assert_eq!(bot.ok(&perm("acme")).await["permission"], "owner");
    assert_eq!(bot.get(&perm("nobody")).await.status, 404);
    assert_eq!(Api::new(&fake, Some("alice-token")).get(&perm("bob")).await.status, 403, "only admins ask for others");
    assert_eq!(bob.ok(&perm("bob")).await["role_name"], "read");
}

#[tokio::test]
async fn webhooks_are_signed_and_shaped_like_forgejos() {
    // The test vector from HEADERS.txt, with our own HMAC.
    let headers_txt = String::from_utf8(read_shared("webhooks/HEADERS.txt")).unwrap();
    let vector = headers_txt.lines().find(|l| l.contains("Test vector")).unwrap().rsplit("= ").next().unwrap().trim();
    let merged = read_shared("webhooks/forgejo-pull-request/HookPullRequestMerged.json");
    assert_eq!(sign("secret", &merged), vector);

    let (fake, bot) = world().await;
    let (url, got) = receiver().await;
    let hook = json!({"type": "forgejo", "config": {"url": url, "content_type": "json", "secret": "s3cret"},
        "events": ["issues", "issue_comment", "pull_request"], "active": true});
    let created = bot.send(Method::POST, &format!("/repos/{REPO}/hooks"), hook, 201).await;
    assert!(created["events"].as_array().unwrap().contains(&json!("issue_label")));
    let n = fake.create_issue(REPO, "alice", "Do <it>", "", &[]).await;
    fake.create_label(REPO, "status:todo", "ededed", "", false).await;
    bot.send(Method::POST, &format!("/repos/{REPO}/issues/{n}/labels"), json!({"labels": ["status:todo"]}), 200).await;
    bot.send(Method::POST, &format!("/repos/{REPO}/issues/{n}/comments"), json!({"body": "queued"}), 201).await;
    bot.call(Method::DELETE, &format!("/repos/{REPO}/issues/{n}/labels"), None).await;
    fake.settle().await;

    let got = got.lock().unwrap().clone();
    let kinds: Vec<String> =
        got.iter().map(|(h, b)| format!("{}/{}", h["x-forgejo-event-type"].to_str().unwrap(), action_of(b))).collect();
    let expected = ["issues/opened", "issue_label/label_updated", "issue_comment/created", "issue_label/label_cleared"];
    assert_eq!(kinds, expected);

    let (headers, body) = &got[1];
    let h = |name: &str| headers[name].to_str().unwrap().to_string();
    assert_eq!(h("content-type"), "application/json");
    assert_eq!(h("x-forgejo-event"), "issues");
    assert_eq!(h("x-forgejo-signature"), sign("s3cret", body));
    assert_eq!(h("x-hub-signature-256"), format!("sha256={}", sign("s3cret", body)));
    let id = h("x-forgejo-delivery");
    assert!(id.len() == 36 && id.as_bytes()[14] == b'4', "a UUID v4: {id}");
    assert_ne!(id, got[0].0["x-forgejo-delivery"].to_str().unwrap(), "a fresh UUID per delivery");
    for prefix in ["x-gitea", "x-gogs"] {
        for part in ["delivery", "event", "event-type", "signature"] {
            assert_eq!(h(&format!("{prefix}-{part}")), h(&format!("x-forgejo-{part}")));
        }
    }
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.starts_with("{\n  \"") && text.contains("Do \\u003cit\\u003e"), "pretty, Go-escaped: {text}");

    // Top-level keys as the real samples (Forgejo adds `commit_id` / `is_pull` to the older Gitea ones).
    let payload: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["issue"]["labels"][0]["name"], "status:todo");
    assert_eq!((payload["sender"]["login"].as_str(), payload["number"].as_u64()), (Some("bot"), Some(n)));
    for (sample, got, extra) in [
        ("issues_opened.json", &got[1].1, "commit_id"),
        ("issues_opened.json", &got[3].1, "commit_id"),
        ("issue_comment_created.json", &got[2].1, "is_pull"),
    ] {
        let sample: Value = serde_json::from_slice(&read_shared(&format!("webhooks/gitea-issues/{sample}"))).unwrap();
        let mut keys = top_keys(&serde_json::from_slice(got).unwrap());
        assert!(keys.remove(extra));
        assert_eq!(keys, top_keys(&sample));
    }
    let comment: Value = serde_json::from_slice(&got[2].1).unwrap();
    assert_eq!((comment["is_pull"].as_bool(), comment["comment"]["body"].as_str()), (Some(false), Some("queued")));
    let recorded = fake.deliveries().await;
    assert!(recorded.iter().all(|d| d.outcome == DeliveryOutcome::Status(200)));
    assert_eq!(recorded[1].body.as_bytes(), &body[..], "the exact body is recorded");
}

#[tokio::test]
async fn pull_requests_merge_and_report_over_webhooks() {
    let (fake, bot) = world().await;
    let (url, got) = receiver().await;
    fake.add_hook(REPO, &url, "", &["pull_request"]).await;
    let pr = fake.create_pull(REPO, "bot", "Fix", "Closes #1", "fleet/1", SHA_A, "main").await;
    fake.push_to_pull(REPO, pr, "bot", &[FakeCommit::new(SHA_B, "more").file("a", "added", 1, 0)]).await;
    fake.comment(REPO, pr, "alice", "looks good").await;
    let merge = fake.merge_pull(REPO, pr, "alice").await;
    fake.settle().await;
    let pull = bot.ok(&format!("/repos/{REPO}/pulls/{pr}")).await;
    assert_eq!((pull["merged"].as_bool(), pull["state"].as_str()), (Some(true), Some("closed")));
    assert_eq!((pull["head"]["sha"].as_str(), pull["merge_commit_sha"].as_str()), (Some(SHA_B), Some(&merge[..])));
    let got = got.lock().unwrap().clone();
    let kinds: Vec<String> =
        got.iter().map(|(h, b)| format!("{}/{}", h["x-forgejo-event-type"].to_str().unwrap(), action_of(b))).collect();
    let expected = ["pull_request/opened", "pull_request_sync/synchronized", "pull_request_comment/created"];
    assert_eq!(kinds, [&expected[..], &["pull_request/closed"]].concat());
    let seen: Vec<Value> = got.iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect();
    assert_eq!(seen[3]["pull_request"]["merged"], true);
    assert_eq!(seen[2]["is_pull"], true);
    assert_eq!(got[0].0["x-forgejo-signature"], "", "no secret, empty signature");
    let sample: Value =
        serde_json::from_slice(&read_shared("webhooks/forgejo-pull-request/HookPullRequestMerged.json")).unwrap();
    assert_eq!(top_keys(&seen[3]), top_keys(&sample));
    assert_eq!(bot.get(&format!("/repos/{REPO}/contents/missing.txt")).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_branch_pushed_over_http_becomes_a_pull_request_with_its_head_in_git() {
    let spec = Spec::load();
    let (fake, bot) = world().await;
    let (url, got) = receiver().await;
    fake.add_hook(REPO, &url, "", &["pull_request"]).await;
    let root = tempfile::tempdir().unwrap();
    let git = TestRepo::init_bare(root.path(), REPO);
    let main = git.commit(&[("README.md", "widgets\n")], "Start");
    git.push("main");
    fake.link_git(REPO, &git.bare).await;
    let server = GitServer::start(root.path());

    // An agent's work: a branch with two commits, pushed over HTTP with the token, then a pull request by API.
    git.checkout("fleet/1");
    git.commit(&[("src/a.rs", "fn a() {}\n")], "Add a");
    let head = git.commit(&[("README.md", "widgets\nand more\n")], "Say more");
    git.git(&["push", "-q", &server.url_with_token(REPO), "fleet/1"]);
    let review = fake.create_label(REPO, "status:review", "ededed", "", false).await;
    let open = json!({"head": "fleet/1", "base": "main", "title": "Fix #1", "body": "Closes #1", "labels": [review]});
    let pr = bot.send(Method::POST, &format!("/repos/{REPO}/pulls"), open, 201).await;
    spec.check("PullRequest", &pr, &["number", "title", "state", "head", "base", "merge_base", "user", "labels"]);
    let n = pr["number"].as_u64().unwrap();
    assert_eq!((pr["head"]["ref"].as_str(), pr["head"]["sha"].as_str()), (Some("fleet/1"), Some(&head[..])));
    assert_eq!((pr["base"]["ref"].as_str(), pr["base"]["sha"].as_str()), (Some("main"), Some(&main[..])));
    assert_eq!(pr["labels"][0]["name"], "status:review");
    assert_eq!(git.remote_ref(&format!("refs/pull/{n}/head")), Some(head.clone()), "written as Forgejo does");
    assert_eq!(bot.ok(&format!("/repos/{REPO}/pulls/{n}")).await, pr, "the same JSON as GET /pulls/{{n}}");

    // Its commits and files are git's.
    let commits = bot.ok(&format!("/repos/{REPO}/pulls/{n}/commits?files=false")).await;
    let messages: Vec<&str> =
        commits.as_array().unwrap().iter().map(|c| c["commit"]["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["Say more\n", "Add a\n"], "newest first");
    let files = bot.ok(&format!("/repos/{REPO}/pulls/{n}/files")).await;
    let files: Vec<(&str, &str, u64)> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["filename"].as_str().unwrap(), f["status"].as_str().unwrap(), f["additions"].as_u64().unwrap()))
        .collect();
    assert_eq!(files, [("src/a.rs", "added", 1), ("README.md", "changed", 1)]);
    fake.settle().await;
    let opened: Value = serde_json::from_slice(&got.lock().unwrap()[0].1).unwrap();
    assert_eq!(opened["action"], "opened");
    assert_eq!((opened["pull_request"]["head"]["sha"].as_str(), opened["number"].as_u64()), (Some(&head[..]), Some(n)));
}

/// A POST that must be refused with `status`; the error body.
async fn refused(api: &Api, path: &str, body: Value, status: u16) -> Value {
    let answer = api.call(Method::POST, path, Some(body)).await;
    assert_eq!(answer.status, status, "{}", answer.text);
    answer.json()
}

#[tokio::test]
async fn opening_a_pull_request_is_checked_like_forgejo() {
    let spec = Spec::load();
    let (fake, bot) = world().await;
    fake.set_branch(REPO, "fleet/1", SHA_A).await;
    let pulls = format!("/repos/{REPO}/pulls");
    let open = |head: &str, base: &str, title: &str| json!({"head": head, "base": base, "title": title});
    assert_eq!(Api::new(&fake, None).call(Method::POST, &pulls, Some(open("fleet/1", "main", "t"))).await.status, 401);
    let bob = Api::new(&fake, Some("bob-token"));
    spec.check("APIError", &refused(&bob, &pulls, open("fleet/1", "main", "t"), 403).await, &["message"]);

    let no_changes = "Invalid PullRequest: There are no changes between the head and the base";
    for (body, message) in [
        (json!({"base": "main", "title": "t"}), "[Head]: Required"),
        (json!({"head": "fleet/1", "title": "t"}), "[Base]: Required"),
        (json!({"head": "fleet/1", "base": "main", "title": ""}), "[Title]: Required"),
        (open("main", "main", "t"), no_changes),
    ] {
        let error = refused(&bot, &pulls, body, 422).await;
        spec.check("APIError", &error, &["message", "url"]);
        assert_eq!(error["message"], message);
    }
    let gone = refused(&bot, &pulls, open("fleet/nope", "main", "t"), 404).await;
    spec.check("APINotFound", &gone, &["message", "errors"]);
    let not_there = |b: &str, side: &str| {
        format!("could not find '{b}' to be a commit, branch or tag in the {side} repository {REPO}")
    };
    assert_eq!(gone["errors"], json!([not_there("fleet/nope", "head")]));
    assert_eq!(
        refused(&bot, &pulls, open("fleet/1", "release", "t"), 404).await["errors"],
        json!([not_there("release", "base")])
    );

    // Without a linked git repository the fake's own branches say where the head is.
    let pr = bot.send(Method::POST, &pulls, open("fleet/1", "main", "Fix"), 201).await;
    assert_eq!((pr["head"]["sha"].as_str(), pr["user"]["login"].as_str()), (Some(SHA_A), Some("bot")));
    let again = refused(&bot, &pulls, open("acme:fleet/1", "main", "Fix again"), 409).await;
    spec.check("APIError", &again, &["message"]);
    let (id, n, repo_id) = (&pr["id"], &pr["number"], &bot.ok(&format!("/repos/{REPO}")).await["id"]);
    let targets = format!("head_repo_id: {repo_id}, base_repo_id: {repo_id}, head_branch: fleet/1, base_branch: main");
    assert_eq!(
        again["message"],
        format!("pull request already exists for these targets [id: {id}, issue_id: {n}, {targets}]")
    );
    fake.close_issue(REPO, n.as_u64().unwrap(), "alice").await;
    bot.send(Method::POST, &pulls, open("fleet/1", "main", "Fix, take two"), 201).await;
}

#[tokio::test]
async fn pull_lists_filter_by_state_and_page_newest_first() {
    let spec = Spec::load();
    let (fake, bot) = world().await;
    let merged = fake.create_pull(REPO, "bot", "one", "", "fleet/1", SHA_A, "main").await;
    let closed = fake.create_pull(REPO, "bot", "two", "", "fleet/2", SHA_B, "main").await;
    fake.create_issue(REPO, "alice", "not a pull request", "", &[]).await;
    let open = fake.create_pull(REPO, "bot", "three", "", "fleet/3", SHA_A, "main").await;
    fake.merge_pull(REPO, merged, "alice").await;
    fake.close_issue(REPO, closed, "alice").await;
    let list = |q: &str| {
        let path = format!("/repos/{REPO}/pulls?{q}");
        let bot = &bot;
        async move { numbers(&bot.ok(&path).await) }
    };
    assert_eq!(list("state=open").await, [open]);
    assert_eq!(list("state=closed").await, [closed, merged]);
    assert_eq!(list("state=all").await, [open, closed, merged]);
    assert_eq!(list("").await, [open, closed, merged], "no state: all of them, as Forgejo answers (not its spec)");
    assert_eq!(list("state=all&sort=oldest").await, [merged, closed, open]);

    let first = bot.get(&format!("/repos/{REPO}/pulls?state=all&limit=2")).await;
    assert_eq!((first.header("x-total-count"), numbers(&first.json())), ("3", vec![open, closed]));
    let base = format!("{}/api/v1/repos/{REPO}/pulls", fake.url());
    let next = format!("<{base}?limit=2&page=2&state=all>");
    assert_eq!(first.header("link"), format!("{next}; rel=\"next\",{next}; rel=\"last\""));
    first.json().as_array().unwrap().iter().for_each(|p| spec.check("PullRequest", p, &["number", "state", "head"]));
    assert_eq!(list("state=all&limit=2&page=2").await, [merged]);
    assert_eq!(bot.ok(&format!("/repos/{REPO}/pulls/{merged}")).await["merged"], true);
}

#[tokio::test]
async fn faults_lose_webhooks_and_fail_requests() {
    let (fake, bot) = world().await;
    let (url, got) = receiver().await;
    fake.add_hook(REPO, &url, "k", &["issues"]).await;
    let n = fake.create_issue(REPO, "alice", "t", "", &[]).await;
    fake.drop_next_webhooks(2).await;
    fake.add_labels(REPO, n, "alice", &["a"]).await;
    fake.add_labels(REPO, n, "alice", &["b"]).await;
    fake.close_issue(REPO, n, "alice").await;
    fake.settle().await;
    let outcomes: Vec<DeliveryOutcome> = fake.deliveries().await.into_iter().map(|d| d.outcome).collect();
    let ok = DeliveryOutcome::Status(200);
    assert_eq!(outcomes, [ok.clone(), DeliveryOutcome::Dropped, DeliveryOutcome::Dropped, ok]);
    assert_eq!(got.lock().unwrap().len(), 2);

    let path = format!("/repos/{REPO}/issues/{n}");
    fake.clear_requests().await;
    fake.fail_next_requests(2, 500).await;
    let failed = bot.get(&path).await;
    assert_eq!(failed.status, 500);
    assert!(failed.json()["message"].is_string());
    assert_eq!(bot.get(&path).await.status, 500);
    assert_eq!(bot.get(&path).await.status, 200);
    let statuses: Vec<u16> = fake.requests().await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);

    // The window is wide enough that a slow machine still sends the first request inside it.
    fake.fail_requests_for(Duration::from_millis(1500), 503).await;
    assert_eq!(bot.get(&path).await.status, 503);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(bot.get(&path).await.status, 200);
    fake.fail_requests_until_healed(502).await;
    assert_eq!(bot.get(&path).await.status, 502);
    fake.heal().await;
    assert_eq!(bot.get(&path).await.status, 200);

    // A POST applied, then answered after the client stopped waiting.
    fake.answer_posts_late(1, Duration::from_millis(800)).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let sent = impatient
        .post(format!("{}/api/v1/repos/{REPO}/issues/{n}/comments", fake.url()))
        .header("authorization", "token bot-token")
        .json(&json!({"body": "late"}))
        .send()
        .await;
    assert!(sent.is_err_and(|e| e.is_timeout()), "no answer in time");
    assert!(fake.comments(REPO, n).await.iter().any(|c| c.body == "late"), "yet the comment is there");

    // A receiver that is down: recorded as an error, never retried.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    fake.add_hook(REPO, &format!("http://{dead}/gone"), "", &["issues"]).await;
    fake.reopen_issue(REPO, n, "alice").await;
    fake.settle().await;
    let last = fake.deliveries().await.pop().unwrap();
    assert!(matches!(last.outcome, DeliveryOutcome::Error(_)), "{last:?}");
}
