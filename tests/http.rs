//! The HTTP surface of `serve`: health, metrics, the operator's task views and their errors.

mod support;

use support::{Home, OPERATOR_TOKEN};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn healthz_and_metrics_answer_without_a_token() {
    let home = Home::new();
    support::seed(&home.db(), &[("acme/app#1", &["status:todo", "priority:critical"])]);
    let server = home.serve();
    let r = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("forgefleet_tasks{state=\"queued\"} 1"), "{text}");
    assert!(text.contains("forgefleet_queue_depth{priority=\"critical\"} 1"), "{text}");
    assert!(text.contains("forgefleet_events_appended_total"), "{text}");
    assert!(text.contains("forgefleet_event_append_seconds_bucket"), "{text}");
    assert!(text.contains("forgefleet_outbox_waiting 0\n"), "{text}");
    assert!(text.contains("forgefleet_outbox_oldest_waiting_timestamp_seconds 0.0\n"), "{text}");
    assert!(server.stop().success());
}

#[tokio::test]
async fn the_task_views_need_the_operator_token_and_show_tasks_with_their_events() {
    let home = Home::new();
    support::seed(&home.db(), &[("acme/app#1", &["status:todo"]), ("acme/app#2", &["status:todo", "needs:gpu"])]);
    let server = home.serve();
    let c = client();

    let r = c.get(server.url("/api/v1/tasks")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = c.get(server.url("/api/v1/tasks")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);

    let r = c.get(server.url("/api/v1/tasks")).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tasks"].as_array().unwrap().len(), 2);

    let r = c.get(server.url("/api/v1/tasks/2")).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["task"]["issue"]["number"], 2);
    assert_eq!(body["task"]["spec"]["needs"][0], "gpu");
    assert_eq!(body["events"][0]["type"], "task_queued");
    assert!(body["events"][0]["at"].as_str().unwrap().ends_with('Z'), "timestamps are RFC 3339");

    for (path, status) in [
        ("/api/v1/tasks/99", 404),
        ("/api/v1/tasks/abc", 400),
        ("/api/v1/tasks?state=sleeping", 400),
        ("/api/v1/tasks?colour=red", 400),
        ("/api/v1/nothing", 404),
    ] {
        let r = c.get(server.url(path)).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {body}");
    }
    let r = c.delete(server.url("/api/v1/tasks/1")).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(server.stop().success());
}

#[tokio::test]
async fn without_an_operator_token_configured_the_operator_api_is_closed() {
    let home = Home::new();
    let config =
        std::fs::read_to_string(home.config()).unwrap().replace(&format!("operator_token = \"{OPERATOR_TOKEN}\""), "");
    std::fs::write(home.config(), config).unwrap();
    let server = home.serve();
    let r = client().get(server.url("/api/v1/tasks")).bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("operator_token"), "{body}");
}

#[tokio::test]
async fn serve_runs_on_defaults_without_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    // The default address may be taken on a developer's machine; only the store default is checked here,
    // through a config that sets nothing but the port.
    let addr = support::free_addr();
    std::fs::write(dir.path().join("only-port.toml"), format!("[server]\nlisten = \"{addr}\"\n")).unwrap();
    let mut child = std::process::Command::new(support::binary())
        .args(["serve", "--config", "only-port.toml"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ok = client().get(format!("http://{addr}/healthz")).send().await.map(|r| r.status().as_u16());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ok.unwrap(), 200);
    assert!(dir.path().join("forgefleet-data/forgefleet.db").exists(), "the default store is ./forgefleet-data/");
}
