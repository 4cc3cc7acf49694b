//! The agent protocol over real HTTP, with a hand-moved clock: register, pull, start, heartbeat, and what
//! happens when agents vanish, retry, drain or leave.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use support::fleet::{Fleet, OPERATOR, REGISTRATION_TOKEN};

#[tokio::test]
async fn an_agent_registers_pulls_starts_and_heartbeats() {
    let fleet = Fleet::start().await;
    let a1 = fleet.register("a1", &["rust"], 1).await;
    assert!(a1.pull().await.is_none(), "nothing queued: 204");
    let task = fleet.label("acme/app#7", &["status:todo", "priority:high"]).await.unwrap();
    let a = a1.pull().await.unwrap();
    assert_eq!((a.task_id, a.attempt, a.repo.as_str(), a.issue), (task, 1, "acme/app", 7));
    assert_eq!(a.clone_url.as_deref(), Some("http://forgejo.test/acme/app.git"));
    assert_eq!((a.base_branch.as_str(), a.branch.as_str()), ("main", "forgefleet/issue-7-attempt-1"));
    assert!(a.labels.contains(&"priority:high".to_string()) && a.body == "Please fix it.");
    assert_eq!(a1.start(&a).await, 200);
    assert_eq!(fleet.task(task).await["state"], "running");
    assert!(a1.heartbeat(&[task]).await.is_empty());

    let (status, body) =
        a1.post(&format!("/tasks/{task}/progress"), json!({"attempt": 1, "lines": ["cloning", "testing"]})).await;
    assert_eq!(status, 200, "{body}");
    let (_, detail) = fleet.operator(Method::GET, &format!("/tasks/{task}")).await;
    assert_eq!(detail["progress"][1]["line"], "testing");

    let (status, agents) = fleet.operator(Method::GET, "/agents").await;
    assert_eq!(status, 200);
    assert_eq!(agents["agents"][0]["status"], "busy");
    assert_eq!(agents["agents"][0]["running"], 1);
}

#[tokio::test]
async fn a_missed_heartbeat_window_loses_the_task_and_another_agent_takes_attempt_2() {
    let fleet = Fleet::start().await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a2 = fleet.register("a2", &[], 1).await;
    let a = a1.pull().await.unwrap();
    assert_eq!(a1.start(&a).await, 200);

    // 3 intervals of 10 s pass; only a2 keeps heartbeating.
    for _ in 0..4 {
        fleet.later(Duration::from_secs(10));
        a2.heartbeat(&[]).await;
    }
    let report = fleet.tick().await;
    assert_eq!(report.lost, [task]);
    assert_eq!(fleet.task(task).await["state"], "queued");
    let (_, agents) = fleet.operator(Method::GET, "/agents?status=offline").await;
    assert_eq!(agents["agents"][0]["name"], "a1");

    fleet.later(Duration::from_secs(60)); // the agent_lost backoff
    a2.heartbeat(&[]).await;
    let b = a2.pull().await.unwrap();
    assert_eq!((b.task_id, b.attempt, b.branch.as_str()), (task, 2, "forgefleet/issue-1-attempt-2"));

    // a1 comes back still believing it has the task: told to cancel, and its reports are stale.
    assert_eq!(a1.heartbeat(&[task]).await, [task]);
    let (status, body) = a1.post(&format!("/tasks/{task}/start"), json!({"attempt": 1})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
}

#[tokio::test]
async fn a_lost_long_poll_response_retried_with_the_same_key_gets_the_same_task() {
    let fleet = Fleet::start().await;
    let first = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let second = fleet.label("acme/app#2", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 2).await;
    let got = a1.pull_with(0, Some("req-1")).await.unwrap();
    assert_eq!(got.task_id, first);
    let again = a1.pull_with(0, Some("req-1")).await.unwrap();
    assert_eq!(again, got, "the same request key answers with the same lease");
    let next = a1.pull_with(0, Some("req-2")).await.unwrap();
    assert_eq!(next.task_id, second);
    let (_, agents) = fleet.operator(Method::GET, "/agents").await;
    assert_eq!(agents["agents"][0]["running"], 2, "two keys, two tasks; never more");
}

#[tokio::test]
async fn a_waiting_agent_is_answered_when_work_arrives() {
    let fleet = Fleet::start().await;
    let a1 = fleet.register("a1", &[], 1).await;
    let waiting = tokio::spawn(async move { a1.pull_with(30, Some("w")).await });
    // Whether the poll is parked before or after this, it must end with the task, not with a 204.
    let task = fleet.label("acme/app#3", &["status:todo"]).await.unwrap();
    let got = waiting.await.unwrap().expect("answered with the task");
    assert_eq!(got.task_id, task);
}

#[tokio::test]
async fn draining_stops_new_work_but_lets_current_work_finish() {
    let fleet = Fleet::start().await;
    let t1 = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    fleet.label("acme/app#2", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 2).await;
    let a = a1.pull().await.unwrap();
    let (status, body) = fleet.operator(Method::POST, "/agents/a1/drain").await;
    assert_eq!((status.as_u16(), body["status"].as_str()), (200, Some("draining")));
    assert!(a1.pull().await.is_none());
    assert_eq!(a1.start(&a).await, 200, "what it has, it finishes");
    assert_eq!(fleet.task(t1).await["state"], "running");
    let (_, agents) = fleet.operator(Method::GET, "/agents?status=draining").await;
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1);
    let (status, _) = fleet.operator(Method::POST, "/agents/ghost/drain").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn deregistering_requeues_at_once_and_revokes_the_token() {
    let fleet = Fleet::start().await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a = a1.pull().await.unwrap();
    a1.start(&a).await;
    let (status, body) = a1.post("/agents/deregister", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body["requeued"], json!([task.0]));
    let t = fleet.task(task).await;
    assert_eq!((t["state"].as_str(), t["attempt"].as_u64()), (Some("queued"), Some(2)));
    let (status, _) = a1.post("/agents/heartbeat", json!({"running": []})).await;
    assert_eq!(status, 401);
    let a2 = fleet.register("a2", &[], 1).await;
    assert_eq!(a2.pull().await.unwrap().task_id, task, "no backoff after a goodbye");
}

#[tokio::test]
async fn capabilities_and_pins_route_tasks_and_slots_are_respected() {
    let fleet = Fleet::start().await;
    let gpu = fleet.label("acme/app#1", &["status:todo", "needs:gpu", "priority:critical"]).await.unwrap();
    let pinned = fleet.label("acme/app#2", &["status:todo", "agent:b"]).await.unwrap();
    let any = fleet.label("acme/app#3", &["status:todo"]).await.unwrap();
    let any2 = fleet.label("acme/app#4", &["status:todo"]).await.unwrap();
    let a = fleet.register("a", &[], 1).await;
    let b = fleet.register("b", &["gpu"], 2).await;
    assert_eq!(a.pull().await.unwrap().task_id, any);
    assert!(a.pull().await.is_none(), "one slot");
    assert_eq!(b.pull().await.unwrap().task_id, gpu);
    assert_eq!(b.pull().await.unwrap().task_id, pinned);
    assert!(b.pull().await.is_none(), "two slots");
    let (_, agents) = fleet.operator(Method::GET, "/agents?capability=gpu").await;
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1);
    // An agent may look at the fleet too.
    let r = fleet.http.get(fleet.url("/agents")).bearer_auth(&a.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = any2;
}

#[tokio::test]
async fn an_assignment_not_started_in_time_is_requeued() {
    let fleet = Fleet::start().await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a = a1.pull().await.unwrap();
    fleet.later(Duration::from_secs(31));
    a1.heartbeat(&[]).await;
    assert_eq!(fleet.tick().await.lost, [task]);
    assert_eq!(a1.start(&a).await, 409, "too late: the lease is gone");
}

#[tokio::test]
async fn a_thousand_agents_racing_for_a_hundred_tasks_never_double_assign() {
    let fleet = Fleet::start().await;
    for n in 1..=100 {
        fleet.label(&format!("acme/app#{n}"), &["status:todo"]).await.unwrap();
    }
    let mut agents = Vec::new();
    for chunk in (0..1000).collect::<Vec<_>>().chunks(100) {
        let regs = chunk.iter().map(|i| fleet.register(Box::leak(format!("agent-{i}").into_boxed_str()), &[], 1));
        agents.extend(futures_join_all(regs).await);
    }
    let pulls = agents.iter().map(|a| a.pull_with(1, Some("race")));
    let got: Vec<_> = futures_join_all(pulls).await.into_iter().flatten().collect();
    let tasks: BTreeSet<_> = got.iter().map(|a| a.task_id).collect();
    assert_eq!(got.len(), 100, "every task handed out");
    assert_eq!(tasks.len(), 100, "no task handed out twice");
    let (_, list) = fleet.operator(Method::GET, "/tasks?state=assigned&limit=1000").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 100);
}

/// Runs futures concurrently on this task (no extra dependency for one helper).
async fn futures_join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let set: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    let mut set: Vec<_> = set.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in out.iter_mut().zip(set.iter_mut()) {
            if let Some(f) = fut {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *slot = Some(v);
                        *fut = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|v| v.unwrap()).collect()
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let fleet = Fleet::start_with(|c| c.api.max_body_bytes = 4096).await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a2 = fleet.register("a2", &[], 1).await;
    let a = a1.pull().await.unwrap();
    let before = fleet.event_count();
    let url = |p: &str| fleet.url(p);
    let raw = |p: &str, token: &str, body: &'static str| {
        fleet.http.post(url(p)).bearer_auth(token).header("content-type", "application/json").body(body).send()
    };

    let cases: Vec<(reqwest::Response, u16)> = vec![
        (raw("/agents/heartbeat", &a1.token, "{not json").await.unwrap(), 400),
        (raw("/agents/heartbeat", &a1.token, r#"{"running": [], "colour": 1}"#).await.unwrap(), 400),
        (raw("/assignments/next", &a1.token, r#"{"wait_secs": 3600}"#).await.unwrap(), 400),
        (raw(&format!("/tasks/{task}/fail"), &a1.token, r#"{"attempt": 1, "class": "oops"}"#).await.unwrap(), 400),
        (raw(&format!("/tasks/{task}/fail"), &a1.token, r#"{"attempt": 1, "class": "cancelled"}"#).await.unwrap(), 400),
        (raw("/agents/heartbeat", "not-a-token", r#"{"running": []}"#).await.unwrap(), 401),
        (fleet.http.post(url("/agents/heartbeat")).json(&json!({})).send().await.unwrap(), 401),
        (raw("/agents/register", "wrong", r#"{"name": "x", "adapter": "c"}"#).await.unwrap(), 401),
        (raw("/agents/register", REGISTRATION_TOKEN, r#"{"name": "bad name", "adapter": "c"}"#).await.unwrap(), 400),
        (
            raw("/agents/register", REGISTRATION_TOKEN, r#"{"name": "x", "adapter": "c", "max_concurrency": 0}"#)
                .await
                .unwrap(),
            400,
        ),
        (raw(&format!("/tasks/{task}/start"), &a2.token, r#"{"attempt": 1}"#).await.unwrap(), 403),
        (raw("/tasks/999/start", &a1.token, r#"{"attempt": 1}"#).await.unwrap(), 404),
        (raw(&format!("/tasks/{task}/start"), &a1.token, r#"{"attempt": 7}"#).await.unwrap(), 403),
        (raw("/tasks/abc/start", &a1.token, r#"{"attempt": 1}"#).await.unwrap(), 400),
        (raw(&format!("/tasks/{task}/retry"), OPERATOR, "").await.unwrap(), 409),
        (raw(&format!("/tasks/{task}/retry"), &a1.token, "").await.unwrap(), 401),
        (
            fleet
                .http
                .post(url("/agents/heartbeat"))
                .bearer_auth(&a1.token)
                .header("content-type", "application/json")
                .body(format!("{{\"running\": [{}]}}", vec!["1"; 3000].join(",")))
                .send()
                .await
                .unwrap(),
            413,
        ),
    ];
    for (i, (r, want)) in cases.into_iter().enumerate() {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(status, want, "case {i}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "case {i} has no message: {body}");
    }
    assert_eq!(fleet.event_count(), before, "refused requests changed nothing");

    // The one valid start works; a second start is a transition that does not apply.
    assert_eq!(a1.start(&a).await, 200);
    let (status, body) = a1.post(&format!("/tasks/{task}/start"), json!({"attempt": 1})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("running"), "{body}");

    // Registering the same name again with its token replaces the token: the old one stops working. It also
    // says the old process is gone (a restarted runner), so its task goes back to the queue and the new one
    // must stop it.
    let (status, body) = fleet.register_as("a1", Some(&a1.token)).await;
    assert_eq!(status, 200, "{body}");
    let again = support::fleet::TestAgent::with_token(&fleet, "a1", body["token"].as_str().unwrap());
    assert_ne!(again.token, a1.token);
    let (status, _) = a1.post("/agents/heartbeat", json!({"running": []})).await;
    assert_eq!(status, 401);
    assert_eq!(again.heartbeat(&[task]).await, [task], "the task was taken back");
    let t = fleet.task(task).await;
    assert_eq!((t["state"].as_str(), t["attempt"].as_u64()), (Some("queued"), Some(2)), "{t}");
    assert_eq!(again.pull().await.unwrap().task_id, task, "and given out again at once");
}

#[tokio::test]
async fn a_server_restart_does_not_count_its_own_downtime_against_agents() {
    let mut fleet = Fleet::start().await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a = a1.pull().await.unwrap();
    assert_eq!(a1.start(&a).await, 200);
    assert!(a1.heartbeat(&[task]).await.is_empty());

    // `serve` is down for 31 minutes (far more than 3 heartbeat intervals of 10 s), then starts again.
    fleet.restart_after(Duration::from_secs(31 * 60)).await;
    let a1 = a1.moved_to(&fleet);
    let report = fleet.tick().await;
    assert!(report.lost.is_empty() && report.offline.is_empty(), "judged at once after the start: {report:?}");
    fleet.later(Duration::from_secs(5));
    assert!(fleet.tick().await.lost.is_empty());
    assert!(a1.heartbeat(&[task]).await.is_empty(), "nobody is told to stop");
    let t = fleet.task(task).await;
    assert_eq!((t["state"].as_str(), t["attempt"].as_u64()), (Some("running"), Some(1)), "no retry spent: {t}");

    // The grace is for the restart only: an agent that stays silent after it is lost as usual, by its name.
    fleet.later(Duration::from_secs(31));
    assert_eq!(fleet.tick().await.lost, [task]);
    let (_, detail) = fleet.operator(Method::GET, &format!("/tasks/{task}")).await;
    let text = detail["events"].to_string();
    assert!(text.contains("agent a1 stopped sending heartbeats"), "{text}");
}

#[tokio::test]
async fn after_a_restart_an_agent_that_never_comes_back_is_lost_once_the_grace_ends() {
    let mut fleet = Fleet::start().await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a = a1.pull().await.unwrap();
    assert_eq!(a1.start(&a).await, 200);
    fleet.restart_after(Duration::from_secs(20 * 60)).await;
    fleet.later(Duration::from_secs(29));
    assert!(fleet.tick().await.lost.is_empty(), "still within 3 intervals of the start");
    fleet.later(Duration::from_secs(2));
    assert_eq!(fleet.tick().await.lost, [task]);
}

#[tokio::test]
async fn a_registration_under_a_live_agents_name_without_its_token_evicts_nothing() {
    let fleet = Fleet::start().await;
    let running = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a = a1.pull().await.unwrap();
    assert_eq!(a1.start(&a).await, 200);
    let pinned = fleet.label("acme/app#2", &["status:todo", "agent:a1"]).await.unwrap();
    let before = fleet.event_count();

    // Someone with the registration token tries to take the name: without a token, and with a wrong one.
    for token in [None, Some("ffa_not-the-token")] {
        let (status, body) = fleet.register_as("a1", token).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "name_in_use", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("agent a1 is online"), "{message}");
        assert!(message.contains("agent_token") && message.contains("forgefleet agents forget a1"), "{message}");
    }
    assert_eq!(fleet.event_count(), before, "the refusals changed nothing");
    assert!(a1.heartbeat(&[running]).await.is_empty(), "the running agent keeps its task and its token");
    let t = fleet.task(running).await;
    assert_eq!((t["state"].as_str(), t["attempt"].as_u64()), (Some("running"), Some(1)), "{t}");
    assert_eq!(fleet.task(pinned).await["state"], "queued", "its pinned task waits for it");

    // Once it is offline (its heartbeats stopped), its name is free again without a token.
    fleet.later(Duration::from_secs(31));
    fleet.tick().await;
    let (status, body) = fleet.register_as("a1", None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_owner_presenting_its_token_takes_its_name_back_and_its_tasks_are_requeued_at_once() {
    let fleet = Fleet::start().await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a = a1.pull().await.unwrap();
    assert_eq!(a1.start(&a).await, 200);
    let (status, body) = fleet.register_as("a1", Some(&a1.token)).await;
    assert_eq!(status, 200, "{body}");
    let again = support::fleet::TestAgent::with_token(&fleet, "a1", body["token"].as_str().unwrap());
    let t = fleet.task(task).await;
    assert_eq!((t["state"].as_str(), t["attempt"].as_u64()), (Some("queued"), Some(2)), "{t}");
    assert_eq!(again.pull().await.unwrap().task_id, task, "no backoff: the old process is gone");
    let (status, _) = a1.post("/agents/heartbeat", json!({"running": []})).await;
    assert_eq!(status, 401, "the old token stopped working");
}

#[tokio::test]
async fn forgetting_an_agent_requeues_its_tasks_and_frees_its_name() {
    let fleet = Fleet::start().await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a = a1.pull().await.unwrap();
    assert_eq!(a1.start(&a).await, 200);

    let (status, _) = fleet
        .http
        .post(fleet.url("/agents/a1/forget"))
        .bearer_auth(&a1.token)
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, 401, "the operator's command, not an agent's");
    let (status, body) = fleet.operator(Method::POST, "/agents/a1/forget").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"agent": "a1", "requeued": [task.0]}));
    let (status, _) = a1.post("/agents/heartbeat", json!({"running": []})).await;
    assert_eq!(status, 401, "its token stopped working");
    let (status, body) = fleet.operator(Method::POST, "/agents/a1/forget").await;
    assert_eq!((status.as_u16(), &body["requeued"]), (200, &json!([])), "forgetting twice changes nothing");
    let (status, body) = fleet.operator(Method::POST, "/agents/ghost/forget").await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = fleet.register_as("a1", None).await;
    assert_eq!(status, 200, "the name is free: {body}");
    let new = support::fleet::TestAgent::with_token(&fleet, "a1", body["token"].as_str().unwrap());
    assert_eq!(new.pull().await.unwrap().task_id, task, "re-queued at once");
}

#[tokio::test]
async fn a_registration_out_of_bounds_is_refused_naming_the_field() {
    let fleet = Fleet::start().await;
    let before = fleet.event_count();
    let many: Vec<String> = (0..90_000).map(|i| format!("c{i}")).collect();
    let cases = [
        (json!({"name": "a1", "adapter": "command", "capabilities": many}), "`capabilities`"),
        (json!({"name": "a1", "adapter": "command", "capabilities": ["x".repeat(65)]}), "`capabilities`"),
        (json!({"name": "a1", "adapter": "command", "capabilities": ["ok", "bell\u{7}"]}), "`capabilities`"),
        (json!({"name": "a1", "adapter": "claude\u{1b}[31m"}), "`adapter`"),
        (json!({"name": "a1", "adapter": "command", "version": "1.0\r\nforged: line"}), "`version`"),
        (json!({"name": "a1", "adapter": "command", "version": "v".repeat(201)}), "`version`"),
        (json!({"name": "a\u{0}1", "adapter": "command"}), "`name`"),
        (json!({"name": "a1", "adapter": "command", "agent_token": "t".repeat(10_000)}), "`agent_token`"),
    ];
    for (i, (body, field)) in cases.into_iter().enumerate() {
        let r = fleet
            .http
            .post(fleet.url("/agents/register"))
            .bearer_auth(REGISTRATION_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 400, "case {i}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "case {i} should name {field}: {message}");
        assert!(message.len() < 300, "case {i} echoes too much: {message}");
    }
    assert_eq!(fleet.event_count(), before, "nothing was registered");
    let (_, agents) = fleet.operator(Method::GET, "/agents").await;
    assert_eq!(agents["agents"], json!([]));
}

#[tokio::test]
async fn a_failed_attempt_keeps_what_it_spent_and_tasks_show_says_it() {
    let fleet = Fleet::start().await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a = a1.pull().await.unwrap();
    assert_eq!(a1.start(&a).await, 200);
    let before = fleet.event_count();
    for bad in [
        json!({"attempt": 1, "class": "agent_error", "cost_usd": -1.0}),
        json!({"attempt": 1, "class": "agent_error", "usage": {"input_tokens": "many"}}),
    ] {
        let (status, body) = a1.post(&format!("/tasks/{task}/fail"), bad).await;
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(fleet.event_count(), before, "refused reports change nothing");
    let (status, body) = a1
        .post(
            &format!("/tasks/{task}/fail"),
            json!({"attempt": 1, "class": "agent_error", "message": "it used up its turns",
                   "usage": {"input_tokens": 5200, "output_tokens": 310, "cache_read_input_tokens": 40},
                   "cost_usd": 0.07}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, detail) = fleet.operator(Method::GET, &format!("/tasks/{task}")).await;
    let failed = detail["events"].as_array().unwrap().iter().find(|e| e["type"] == "attempt_failed").unwrap().clone();
    assert_eq!(
        failed["spent"],
        json!({"usage": {"input_tokens": 5200, "output_tokens": 310, "cache_read_input_tokens": 40}, "cost_usd": 0.07}),
        "{failed}"
    );

    // An attempt that reports nothing spent stores nothing.
    fleet.later(Duration::from_secs(120));
    a1.heartbeat(&[]).await;
    let b = a1.pull().await.unwrap();
    assert_eq!(a1.start(&b).await, 200);
    let (status, _) = a1.post(&format!("/tasks/{task}/fail"), json!({"attempt": 2, "class": "agent_error"})).await;
    assert_eq!(status, 200);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("forgefleet.toml");
    std::fs::write(&config, format!("[store]\npath = {:?}\n", fleet.db)).unwrap();
    let out = std::process::Command::new(support::binary())
        .args(["tasks", "show", &task.to_string(), "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("spent:    attempt 1 (failed): tokens 5200 in / 310 out, $0.07"), "{text}");
    assert!(!text.contains("attempt 2 (failed)"), "{text}");
}

#[tokio::test]
async fn a_failed_attempt_hands_on_only_its_own_pushed_branch_and_the_next_attempt_is_assigned_it() {
    let fleet = Fleet::start().await;
    let task = fleet.label("acme/app#1", &["status:todo"]).await.unwrap();
    let a1 = fleet.register("a1", &[], 1).await;
    let a = a1.pull().await.unwrap();
    assert_eq!(a.branch, "forgefleet/issue-1-attempt-1");
    assert_eq!(a1.start(&a).await, 200);
    let before = fleet.event_count();
    for bad in ["forgefleet/issue-1-attempt-2", "forgefleet/issue-2-attempt-1", "main", ""] {
        let (status, body) = a1
            .post(&format!("/tasks/{task}/fail"), json!({"attempt": 1, "class": "agent_error", "pushed_branch": bad}))
            .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("is not the branch of attempt 1"), "{message}");
    }
    assert_eq!(fleet.event_count(), before, "refused reports change nothing");
    let (status, body) = a1
        .post(
            &format!("/tasks/{task}/fail"),
            json!({"attempt": 1, "class": "agent_error", "message": "no pull request", "pushed_branch": a.branch}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Attempt 2 is assigned attempt 1's branch; failing before any push, it hands the same branch on.
    for attempt in [2, 3] {
        fleet.later(Duration::from_secs(4000));
        a1.heartbeat(&[]).await;
        let next = a1.pull().await.unwrap();
        assert_eq!((next.attempt, next.branch.as_str()), (attempt, a.branch.as_str()));
        assert!(next.prompt.contains(&a.branch), "the prompt names the branch to push to");
        assert_eq!(a1.start(&next).await, 200);
        let (status, _) =
            a1.post(&format!("/tasks/{task}/fail"), json!({"attempt": attempt, "class": "agent_error"})).await;
        assert_eq!(status, 200);
    }
    let (_, detail) = fleet.operator(Method::GET, &format!("/tasks/{task}")).await;
    assert_eq!(detail["task"]["state"], "failed", "{detail}");
    assert_eq!(detail["task"]["pushed_branch"], a.branch.as_str(), "{detail}");
}
