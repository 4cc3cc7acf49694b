//! The operator's commands: `agents` reads the database, `retry`, `cancel`, `agents drain` and `agents forget` go through the
//! running server, and every way they can fail says what to do about it.

mod support;

use std::process::{Command, Output};

use serde_json::{Value, json};
use support::{Home, OPERATOR_TOKEN, stderr, stdout};

const REGISTRATION: &str = "[agents]\nregistration_token = \"reg\"\n";

/// Runs the binary with `home`'s config, untouched by any FORGEFLEET_* setting of the surrounding shell.
fn cli(home: &Home, args: &[&str]) -> Output {
    cli_with(&home.config(), home, args, &[])
}

fn cli_with(config: &std::path::Path, home: &Home, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(support::binary());
    cmd.args(args).arg("--config").arg(config).current_dir(home.dir.path()).env_remove("RUST_LOG");
    for var in ["FORGEFLEET_SERVER", "FORGEFLEET_API_OPERATOR_TOKEN", "FORGEFLEET_CONFIG"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn json_out(out: &Output) -> Value {
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// A POST to the server's HTTP API, as an agent would make it.
fn post(server: &support::Server, path: &str, token: &str, body: Value) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let r = reqwest::Client::new()
            .post(server.url(&format!("/api/v1{path}")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    })
}

/// Registers an agent over HTTP and returns its token.
fn register(server: &support::Server, name: &str, caps: &[&str], slots: u32) -> String {
    let body =
        json!({"name": name, "adapter": "command", "capabilities": caps, "max_concurrency": slots, "version": "1.2.3"});
    let (status, answer) = post(server, "/agents/register", "reg", body);
    assert_eq!(status, 200, "register {name}: {answer}");
    answer["token"].as_str().unwrap().to_string()
}

/// The task of an issue, as `tasks --json` shows it.
fn task(home: &Home, issue: &str) -> Value {
    let all = json_out(&cli(home, &["tasks", "--json"]));
    all["tasks"].as_array().unwrap().iter().find(|t| t["issue"] == issue).unwrap_or_else(|| panic!("{all}")).clone()
}

fn names(list: &Value) -> Vec<&str> {
    list["agents"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect()
}

#[test]
fn agents_shows_each_registered_agent_with_its_status_and_load_with_or_without_serve() {
    let home = Home::with_config(REGISTRATION);
    support::seed(&home.db(), &[("acme/app#1", &["status:todo"])]);
    let out = cli(&home, &["agents"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "no agents");

    let server = home.serve();
    let a1 = register(&server, "a1", &["rust"], 1);
    register(&server, "a2", &["docs", "rust"], 2);
    let (status, assignment) = post(&server, "/assignments/next", &a1, json!({"wait_secs": 0}));
    assert_eq!(status, 200, "{assignment}");

    let out = cli(&home, &["agents"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for column in ["NAME", "ADAPTER", "STATUS", "RUNNING/SLOTS", "CAPABILITIES", "LAST HEARTBEAT", "VERSION"] {
        assert!(lines[0].contains(column), "{table}");
    }
    let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(words(lines[1])[..5], ["a1", "command", "busy", "1/1", "rust"], "{table}");
    assert_eq!(words(lines[2])[..5], ["a2", "command", "online", "0/2", "docs,rust"], "{table}");
    assert!(lines[1].ends_with("1.2.3"), "{table}");

    let busy = json_out(&cli(&home, &["agents", "--status", "busy", "--json"]));
    assert_eq!(names(&busy), ["a1"]);
    assert_eq!(
        (busy["agents"][0]["running"].as_u64(), busy["agents"][0]["max_concurrency"].as_u64()),
        (Some(1), Some(1))
    );
    let docs = json_out(&cli(&home, &["agents", "--capability", "docs", "--json"]));
    assert_eq!(names(&docs), ["a2"]);
    let out = cli(&home, &["agents", "--capability", "go"]);
    assert_eq!(stdout(&out).trim(), "no agents match");

    // The database is all it needs: with the server stopped, the same list.
    assert!(server.stop().success());
    let all = json_out(&cli(&home, &["agents", "--json"]));
    assert_eq!(names(&all), ["a1", "a2"]);
    assert_eq!(all["agents"][0]["status"], "busy");

    let out = cli(&home, &["agents", "--status", "asleep"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown status"), "{}", stderr(&out));
}

#[test]
fn retry_of_a_cancelled_task_queues_it_again_through_the_running_server() {
    let home = Home::new();
    support::seed(&home.db(), &[("acme/app#1", &["status:todo"])]);
    support::seed(&home.db(), &[("acme/app#1", &[])]); // status:todo removed: cancelled
    let before = task(&home, "acme/app#1");
    assert_eq!(before["state"], "cancelled", "{before}");
    let id = before["id"].to_string();

    let server = home.serve();
    let out = cli(&home, &["retry", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = task(&home, "acme/app#1");
    assert_eq!(after["state"], "queued", "{after}");
    let line = stdout(&out);
    assert_eq!(line.trim(), format!("task {id} is queued again (attempt {})", after["attempt"]));

    // A queued task cannot be retried: the server's refusal, exit 2.
    let out = cli(&home, &["retry", &id, "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(!stderr(&out).trim().is_empty() && stdout(&out).is_empty(), "{}", stderr(&out));
    drop(server);
}

#[test]
fn cancel_of_a_queued_task_and_the_server_flag() {
    let home = Home::new();
    support::seed(&home.db(), &[("acme/app#1", &["status:todo"]), ("acme/app#2", &["status:todo"])]);
    let first = task(&home, "acme/app#1")["id"].to_string();
    let second = task(&home, "acme/app#2")["id"].to_string();
    let server = home.serve();

    let out = cli(&home, &["cancel", &first]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(&format!("task {first} is cancelled")), "{}", stdout(&out));
    assert_eq!(task(&home, "acme/app#1")["state"], "cancelled");

    // From anywhere, with --server naming the server (this other home's own listen address is silent).
    let elsewhere = Home::new();
    let url = format!("http://{}", server.addr);
    let answer = json_out(&cli(&elsewhere, &["cancel", &second, "--json", "--server", &url]));
    assert_eq!(answer["state"], "cancelled", "{answer}");
    assert_eq!(answer["task_id"].to_string(), second);
    let env = [("FORGEFLEET_SERVER", url.as_str())];
    let out = cli_with(&elsewhere.config(), &elsewhere, &["retry", &second], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(task(&home, "acme/app#2")["state"], "queued");
    drop(server);
}

#[test]
fn agents_drain_marks_a_registered_agent_draining() {
    let home = Home::with_config(REGISTRATION);
    let server = home.serve();
    register(&server, "a1", &[], 1);
    register(&server, "a2", &[], 1);

    let out = cli(&home, &["agents", "drain", "a1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("agent a1 is draining"), "{}", stdout(&out));
    let all = json_out(&cli(&home, &["agents", "--json"]));
    let status: Vec<(&str, &str)> = all["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status, [("a1", "draining"), ("a2", "online")]);
    assert!(stdout(&cli(&home, &["agents"])).lines().any(|l| l.starts_with("a1") && l.contains("draining")));

    let answer = json_out(&cli(&home, &["agents", "drain", "a2", "--json"]));
    assert_eq!(answer, json!({"agent": "a2", "status": "draining"}));

    let out = cli(&home, &["agents", "drain", "ghost"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("agent ghost not found"), "{}", stderr(&out));
    drop(server);
}

#[test]
fn agents_forget_frees_a_live_agents_name_and_requeues_its_task() {
    let home = Home::with_config(REGISTRATION);
    support::seed(&home.db(), &[("acme/app#1", &["status:todo"])]);
    let server = home.serve();
    let token = register(&server, "a1", &[], 1);
    let (status, answer) = post(&server, "/assignments/next", &token, json!({}));
    assert_eq!(status, 200, "{answer}");
    let body = json!({"name": "a1", "adapter": "command"});
    let (status, answer) = post(&server, "/agents/register", "reg", body.clone());
    assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("name_in_use")), "{answer}");

    let out = cli(&home, &["agents", "forget", "a1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "agent a1 is forgotten: its name can be registered again; task(s) 1 went back to the queue"
    );
    assert_eq!(task(&home, "acme/app#1")["state"], "queued");
    let (status, answer) = post(&server, "/agents/register", "reg", body);
    assert_eq!(status, 200, "{answer}");
    let (status, _) = post(&server, "/agents/heartbeat", &token, json!({}));
    assert_eq!(status, 401, "the forgotten agent's token stopped working");

    let out = cli(&home, &["agents", "forget", "ghost"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("agent ghost not found"), "{}", stderr(&out));
    drop(server);
}

#[test]
fn an_unknown_task_is_refused_with_the_servers_message_and_exit_2() {
    let home = Home::new();
    let server = home.serve();
    for command in ["retry", "cancel"] {
        let out = cli(&home, &[command, "999"]);
        assert_eq!(out.status.code(), Some(2), "{command}: {}", stdout(&out));
        let msg = stderr(&out);
        assert!(msg.contains("999") && msg.contains("not found"), "{command}: {msg}");
    }
    // Not even a task id: clap refuses it before anything is sent.
    let out = cli(&home, &["retry", "twelve"]);
    assert_eq!(out.status.code(), Some(2));
    drop(server);
}

#[test]
fn without_a_running_server_the_commands_say_so_and_exit_1() {
    let home = Home::with_config(REGISTRATION);
    let expected = format!("cannot reach forgefleet at http://{}: is `forgefleet serve` running?", home.addr);
    for args in [&["retry", "1"][..], &["cancel", "1"], &["agents", "drain", "a1"]] {
        let out = cli(&home, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(&expected), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn without_an_operator_token_the_commands_say_where_to_set_it_and_exit_2() {
    let home = Home::new();
    let server = home.serve();
    let tokenless = home.dir.path().join("tokenless.toml");
    let config = std::fs::read_to_string(home.config()).unwrap();
    std::fs::write(&tokenless, config.replace(&format!("operator_token = \"{OPERATOR_TOKEN}\""), "")).unwrap();

    for args in [&["retry", "1"][..], &["cancel", "1"], &["agents", "drain", "a1"]] {
        let out = cli_with(&tokenless, &home, args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let msg = stderr(&out);
        assert!(msg.contains("[api] operator_token") && msg.contains("FORGEFLEET_API_OPERATOR_TOKEN"), "{msg}");
    }

    // The environment variable is enough; a wrong token is the server's 401, also exit 2.
    let out = cli_with(&tokenless, &home, &["retry", "1"], &[("FORGEFLEET_API_OPERATOR_TOKEN", "wrong")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("operator token is not valid"), "{}", stderr(&out));
    let out = cli_with(&tokenless, &home, &["cancel", "1"], &[("FORGEFLEET_API_OPERATOR_TOKEN", OPERATOR_TOKEN)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "the token was accepted: {}", stderr(&out));
    drop(server);
}

/// What an operator reads about work an agent did: `tasks` names the agent of a finished task, `tasks show`
/// prints its progress lines, `--limit 0` lists every task, and `serve` logs each state change on one line.
#[test]
fn tasks_show_the_agent_and_progress_of_finished_work_and_serve_logs_each_transition() {
    let home = Home::with_config(REGISTRATION);
    support::seed(&home.db(), &[("acme/app#1", &["status:todo"]), ("acme/app#2", &["status:todo"])]);
    let server = home.serve();
    let token = register(&server, "builder-1", &[], 1);
    let (status, a) = post(&server, "/assignments/next", &token, json!({}));
    assert_eq!(status, 200, "{a}");
    let id = a["task_id"].as_u64().unwrap();
    let issue = format!("{}#{}", a["repo"].as_str().unwrap(), a["issue"]);
    assert_eq!(post(&server, &format!("/tasks/{id}/start"), &token, json!({"attempt": 1})).0, 200);
    let lines = json!({"attempt": 1, "lines": ["cloned acme/app", "running cargo test", "\u{1b}[2Jfake\n[ok] x"]});
    assert_eq!(post(&server, &format!("/tasks/{id}/progress"), &token, lines).0, 200);
    let out = cli(&home, &["cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let finished = task(&home, &issue);
    assert_eq!((finished["state"].as_str(), finished["agent"].as_str()), (Some("cancelled"), Some("builder-1")));
    let table = stdout(&cli(&home, &["tasks", "--state", "cancelled"]));
    assert!(table.lines().nth(1).is_some_and(|row| row.contains("builder-1")), "{table}");

    let out = cli(&home, &["tasks", "show", &id.to_string()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("agent:    builder-1 (attempt 1)"), "{text}");
    assert!(text.contains("[attempt 1] cloned acme/app") && text.contains("[attempt 1] running cargo test"), "{text}");
    // Agent text cannot drive the terminal or fake a line of its own.
    assert!(text.contains("[attempt 1] \\u{1b}[2Jfake\\n[ok] x") && !text.contains('\u{1b}'), "{text}");
    let shown = json_out(&cli(&home, &["tasks", "show", &id.to_string(), "--json"]));
    assert_eq!(shown["progress"][1]["line"], "running cargo test", "{shown}");

    let all = json_out(&cli(&home, &["tasks", "--limit", "0", "--json"]));
    assert_eq!(all["tasks"].as_array().unwrap().len(), 2, "{all}");
    let one = json_out(&cli(&home, &["tasks", "--limit", "1", "--json"]));
    assert_eq!(one["tasks"].as_array().unwrap().len(), 1, "{one}");

    let log = server.log_text();
    for change in ["queued → assigned", "assigned → running", "running → cancelled"] {
        let line = format!("task {id} ({issue}): {change} (attempt 1, agent builder-1)");
        assert_eq!(log.matches(&line).count(), 1, "{line} in:\n{log}");
    }
    drop(server);
}
