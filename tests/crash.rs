//! `forgefleet serve` killed with SIGKILL while agents pull work. After the restart every agent retries the
//! request it had in flight with the same key: nothing committed is lost, no task is handed out twice, and
//! the projections still equal what the log says.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Home, stderr, stdout};

const REGISTRATION: &str = "crash-test-registration";
const TASKS: usize = 120;
const AGENTS: usize = 6;
/// Enough slots for every task, so the queue empties and each agent ends on a 204.
const SLOTS: usize = 25;
/// The server is killed once this many assignments have been answered.
const KILL_AFTER: usize = 40;

/// What one agent was answered: (request key, task id, attempt) in order.
type Answers = Vec<(String, u64, u64)>;

/// Asks for work until there is none, each request with a fresh key; a request that gets no answer (the server
/// is down) is sent again with the same key until one comes.
async fn pull_until_empty(base: String, token: String, name: String, answered: Arc<AtomicUsize>) -> Answers {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut answers = Vec::new();
    for n in 0.. {
        let key = format!("{name}-{n:04}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let reply = loop {
            assert!(tokio::time::Instant::now() < deadline, "{name}: no answer to {key} within 60 s");
            let sent = client
                .post(format!("{base}/api/v1/assignments/next"))
                .bearer_auth(&token)
                .json(&json!({"wait_secs": 0, "request_key": key}))
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 200 => break Some(r.json::<Value>().await.unwrap()),
                Ok(r) if r.status() == 204 => break None,
                Ok(r) => panic!("{name}: {key} answered {}: {}", r.status(), r.text().await.unwrap_or_default()),
                // Down, or going down: the same request again.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        match reply {
            Some(a) => {
                answers.push((key, a["task_id"].as_u64().unwrap(), a["attempt"].as_u64().unwrap()));
                answered.fetch_add(1, Ordering::SeqCst);
            }
            None => return answers,
        }
    }
    unreachable!()
}

/// `forgefleet tasks --json`: every task with its state and the agent holding it.
fn task_table(home: &Home) -> Vec<Value> {
    let out = home.run(&["tasks", "--json", "--limit", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut tasks = v["tasks"].as_array().unwrap().clone();
    tasks.sort_by_key(|t| t["id"].as_u64());
    tasks
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_while_agents_pull_loses_nothing_and_hands_out_nothing_twice() {
    let home = Home::with_config(&format!("[agents]\nregistration_token = \"{REGISTRATION}\"\n"));
    let issues: Vec<String> = (1..=TASKS).map(|i| format!("acme/app#{i}")).collect();
    let seeded: Vec<(&str, &[&str])> = issues.iter().map(|i| (i.as_str(), &["status:todo"][..])).collect();
    support::seed(&home.db(), &seeded);
    let server = home.serve();
    let base = format!("http://{}", home.addr);

    let client = reqwest::Client::new();
    let mut agents = Vec::new();
    let answered = Arc::new(AtomicUsize::new(0));
    for k in 0..AGENTS {
        let name = format!("worker-{k}");
        let body = json!({"name": name, "adapter": "command", "max_concurrency": SLOTS, "version": "test"});
        let r = client
            .post(format!("{base}/api/v1/agents/register"))
            .bearer_auth(REGISTRATION)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
        agents.push((name.clone(), tokio::spawn(pull_until_empty(base.clone(), token, name, answered.clone()))));
    }

    // Kill it in the middle of the rush, without warning, and start it again on the same database.
    while answered.load(Ordering::SeqCst) < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut killed = server;
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let at_kill = answered.load(Ordering::SeqCst);
    drop(killed);
    let server = home.serve();

    let mut held: BTreeMap<u64, String> = BTreeMap::new();
    for (name, agent) in agents {
        let answers = agent.await.unwrap();
        let keys: BTreeSet<&String> = answers.iter().map(|(k, _, _)| k).collect();
        assert_eq!(keys.len(), answers.len(), "{name} recorded one answer per request");
        for (key, task, attempt) in &answers {
            assert_eq!(*attempt, 1, "{name} {key}: task {task} should be on its first attempt");
            if let Some(other) = held.insert(*task, name.clone()) {
                panic!("task {task} was handed to {other} and again to {name} ({key})");
            }
        }
    }
    assert!(at_kill < TASKS, "the kill came after the last assignment ({at_kill})");
    assert_eq!(held.len(), TASKS, "every queued task was handed out exactly once");
    assert!(server.stop().success());

    // What the database says matches what the agents were told: each task assigned to the agent that has it.
    let tasks = task_table(&home);
    assert_eq!(tasks.len(), TASKS);
    for t in &tasks {
        let id = t["id"].as_u64().unwrap();
        assert_eq!(t["state"], "assigned", "{t}");
        assert_eq!(t["agent"].as_str(), held.get(&id).map(String::as_str), "{t}");
    }
    // And the projections equal the log: a rebuild from the events changes nothing.
    let out = home.run(&["store", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("rebuilt {TASKS} tasks and {AGENTS} agents")), "{}", stdout(&out));
    assert_eq!(task_table(&home), tasks);
}
