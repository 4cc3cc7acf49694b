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

/// A home whose `[server]` has `extra` keys, and agents may register with the token "reg".
fn home_with_server_keys(extra: &str) -> Home {
    let home = Home::with_config("[agents]\nregistration_token = \"reg\"\nmax_wait_secs = 60\n");
    let config = std::fs::read_to_string(home.config()).unwrap().replace("[server]\n", &format!("[server]\n{extra}"));
    std::fs::write(home.config(), config).unwrap();
    home
}

/// Whether the server closed `conn` (end of stream or a reset) within `within`.
async fn closed_within(conn: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 answer before the close is fine: keep reading until the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_while_agents_keep_working() {
    use tokio::io::AsyncWriteExt;
    let home = home_with_server_keys("header_read_timeout_secs = 1\n");
    let server = home.serve();
    let addr = server.addr;
    let c = client();

    // Ten connections that say nothing, ten that trickle a header line every 300 ms and never finish.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            for s in slow.iter_mut() {
                let _ = s.write_all(b"X-Slow: 1\r\n").await;
            }
        }
        slow
    });

    // Meanwhile an agent registers, heartbeats and long-polls for longer than the header timeout.
    let r = c
        .post(server.url("/api/v1/agents/register"))
        .bearer_auth("reg")
        .json(&serde_json::json!({"name": "a1", "adapter": "command"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let poll = c
        .post(server.url("/api/v1/assignments/next"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"wait_secs": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 204, "a long-poll outlives the header timeout");
    for _ in 0..3 {
        let r = c.post(server.url("/api/v1/agents/heartbeat")).bearer_auth(&token).json(&serde_json::json!({})).send();
        assert_eq!(r.await.unwrap().status(), 200);
        assert_eq!(c.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    }

    for (i, conn) in idle.iter_mut().enumerate() {
        assert!(closed_within(conn, std::time::Duration::from_secs(5)).await, "idle connection {i} is still open");
    }
    let mut slow = trickle.await.unwrap();
    for (i, conn) in slow.iter_mut().enumerate() {
        assert!(closed_within(conn, std::time::Duration::from_secs(5)).await, "slow connection {i} is still open");
    }
    assert_eq!(c.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    assert!(server.stop().success());
}

#[tokio::test]
async fn past_the_connection_cap_a_new_connection_gets_a_clear_503_and_the_server_recovers() {
    let home = home_with_server_keys("header_read_timeout_secs = 4\nmax_connections = 30\n");
    let server = home.serve();
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // Once the server has counted all thirty (on a busy machine that takes a moment), the next connection is
    // over the cap. Each look is a new client, so no earlier look's connection is held open.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let r = loop {
        let r = client().get(server.url("/healthz")).send().await.unwrap();
        if r.status() == 503 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "no connection was refused over the cap");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("max_connections"), "{body}");

    // The idle ones are closed after the header timeout, and the server answers again.
    for conn in held.iter_mut() {
        assert!(closed_within(conn, std::time::Duration::from_secs(10)).await);
    }
    support::eventually("the server answers again", || async {
        client().get(server.url("/healthz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(server.stop().success());
}
