//! ChatOps against a real Synapse: what happens to tasks and agents reaches the room through the outbox (one
//! message per task, edited in place; each agent's progress in its own thread, batched), and people command
//! the fleet from the room. Everything is checked as a second Matrix client (a person) sees it, through the
//! client-server API: the events' `content`, their `m.relates_to`, and their edits.

#![recursion_limit = "256"]

#[path = "support/encrypted.rs"]
mod encrypted;
mod support;

use std::time::Duration;

use forgefleet::config::{Config, Secret};
use serde_json::{Value, json};
use support::eventually;
use support::fleet::{Fleet, TestAgent};
use support::forgejo::FakeForgejo;
use support::git::{GitServer, TestRepo};
use support::synapse::{Person, User, synapse};

const REPO: &str = "acme/app";
const BOT: &str = "forgefleet";
const BOT_TOKEN: &str = "bot-token";

struct World {
    forgejo: FakeForgejo,
    fleet: Fleet,
    repo: TestRepo,
    _git: GitServer,
    _root: tempfile::TempDir,
    /// The bot's Matrix user.
    bot: User,
    /// A person mapped to the Forgejo user `alice`, who may write to the repository.
    alice: Person,
    /// A person nobody mapped.
    eve: Person,
    room: String,
}

impl World {
    async fn new() -> World {
        Self::with(|_| {}).await
    }

    /// A repository with history, a fake Forgejo, a room alice made with the bot and eve invited, and a
    /// fleet whose bot is in that room (`tune` may change its configuration, e.g. the homeserver's address).
    async fn with(tune: impl FnOnce(&mut Config)) -> World {
        Self::with_history(&[], tune).await.0
    }

    /// The same, with alice saying `history` in the room before forgefleet ever starts; their event ids.
    async fn with_history(history: &[&str], tune: impl FnOnce(&mut Config)) -> (World, Vec<String>) {
        let s = synapse();
        let bot = s.register("bot").await;
        let alice_user = s.register("alice").await;
        let eve_user = s.register("eve").await;
        let alice = Person::login(&alice_user).await;
        let eve = Person::login(&eve_user).await;
        let room = alice.create_room(None, &[&bot.user_id, &eve.user_id]).await;
        let (status, answer) = eve
            .call(reqwest::Method::POST, &format!("/rooms/{}/join", support::synapse::enc(&room)), Some(json!({})))
            .await;
        assert_eq!(status, 200, "{answer}");
        let mut said = Vec::new();
        for line in history {
            said.push(alice.say(&room, line).await);
        }

        let root = tempfile::tempdir().unwrap();
        let git = GitServer::start_with_token(root.path(), BOT_TOKEN);
        let repo = TestRepo::with_main(root.path(), REPO, &[("README.md", "hello\n")]);
        let forgejo = FakeForgejo::start().await;
        forgejo.create_repo(REPO).await;
        forgejo.add_member(REPO, BOT, BOT_TOKEN, "admin").await;
        forgejo.add_member(REPO, "agent", "agent-token", "write").await;
        forgejo.add_member(REPO, "alice", "alice-token", "write").await;
        let (url, git_url) = (forgejo.url().to_string(), git.base_url());
        let (room_for_config, alice_id) = (room.clone(), alice.user_id.clone());
        let bot_user = bot.clone();
        let fleet = Fleet::start_with_forgejo(move |c| {
            configure(c, &url, &bot_user, &room_for_config);
            c.forgejo.git_url = Some(git_url);
            c.matrix.users = [(alice_id, "alice".to_string())].into();
            tune(c);
        })
        .await;
        let w = World { forgejo, fleet, repo, _git: git, _root: root, bot, alice, eve, room };
        w.bot_is_in().await;
        (w, said)
    }

    /// Waits until the bot has joined the room (as alice sees it) and finished its first sync: on a first
    /// start, what was written before that is history, which is skipped.
    async fn bot_is_in(&self) {
        eventually("the bot joined the room", || async {
            self.alice.membership(&self.room, &self.bot.user_id).await.as_deref() == Some("join")
        })
        .await;
        let db = self.fleet.db.clone();
        eventually("the bot has synced once", || async {
            forgefleet::store::Store::open_read_only(&db)
                .is_ok_and(|s| s.read().matrix_next_batch().ok().flatten().is_some())
        })
        .await;
    }

    /// An issue labelled `status:todo`, and its task.
    async fn queued(&self, title: &str) -> (u64, u64) {
        let issue = self.forgejo.create_issue(REPO, "alice", title, "", &["status:todo"]).await;
        let task = self.fleet.label(&format!("{REPO}#{issue}"), &["status:todo"]).await.unwrap().0 as u64;
        (issue, task)
    }

    /// The bot's messages in the room as alice's client reads them, oldest first.
    async fn bot_said(&self) -> Vec<Value> {
        self.alice.messages(&self.room).await.into_iter().filter(|e| e["sender"] == self.bot.user_id).collect()
    }

    /// The task's one top-level message and its edits, oldest first, once `ready` holds for them.
    async fn task_message(
        &self,
        issue: u64,
        what: &str,
        ready: impl Fn(&Value, &[Value]) -> bool,
    ) -> (Value, Vec<Value>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.task_view(issue).await.is_some_and(|(root, edits)| ready(&root, &edits)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}; the outbox: {:#?}; the bot said: {:#?}",
                self.fleet.outbox_list(),
                self.bot_said().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.task_view(issue).await.unwrap()
    }

    async fn task_view(&self, issue: u64) -> Option<(Value, Vec<Value>)> {
        let needle = format!("{REPO}#{issue}");
        let all = self.bot_said().await;
        let roots: Vec<&Value> = all
            .iter()
            .filter(|e| {
                e["content"]["m.relates_to"].is_null()
                    && body(e).contains(&needle)
                    && !body(e).contains("needs a person")
            })
            .collect();
        assert!(roots.len() <= 1, "one top-level message per task: {roots:#?}");
        let root = (*roots.first()?).clone();
        let id = root["event_id"].as_str().unwrap_or_default().to_string();
        let edits = all.iter().filter(|e| relation(e) == ("m.replace", id.as_str())).cloned().collect();
        Some((root, edits))
    }

    /// The bot's replies in the thread under `event_id`.
    async fn answers_to(&self, event_id: &str) -> Vec<String> {
        self.bot_said()
            .await
            .iter()
            .filter(|e| relation(e) == ("m.thread", event_id))
            .map(|e| body(e).to_string())
            .collect()
    }

    async fn answered(&self, event_id: &str, needle: &str) -> String {
        let what = format!("an answer with {needle:?} under {event_id}");
        eventually(&what, || async { self.answers_to(event_id).await.iter().any(|b| b.contains(needle)) }).await;
        self.answers_to(event_id).await.into_iter().find(|b| b.contains(needle)).unwrap()
    }

    async fn state(&self, task: u64) -> String {
        let (_, body) = self.fleet.operator(reqwest::Method::GET, &format!("/tasks/{task}")).await;
        body["task"]["state"].as_str().unwrap_or_default().to_string()
    }

    async fn attempt(&self, task: u64) -> u64 {
        let (_, body) = self.fleet.operator(reqwest::Method::GET, &format!("/tasks/{task}")).await;
        body["task"]["attempt"].as_u64().unwrap_or_default()
    }

    /// The agent's work on `branch`: one commit, pushed, and a pull request for it.
    async fn open_pull(&self, branch: &str, issue: u64) -> (u64, String) {
        self.repo.checkout("main");
        self.repo.checkout(branch);
        let sha = self.repo.commit(&[("greeting.txt", "hello\n")], "greet");
        self.repo.push(branch);
        let n =
            self.forgejo.create_pull(REPO, "agent", "Greet", &format!("Fixes #{issue}"), branch, &sha, "main").await;
        self.repo.push_pull_head(n, &sha);
        (n, sha)
    }
}

/// A fleet on the fake Forgejo at `forgejo`, with `bot` in `room`.
fn configure(c: &mut Config, forgejo: &str, bot: &User, room: &str) {
    c.forgejo.url = Some(forgejo.to_string());
    c.forgejo.token = Some(Secret::new(BOT_TOKEN));
    c.forgejo.webhook_secret = Some(Secret::new("s"));
    c.forgejo.bot_user = Some(BOT.into());
    c.forgejo.repos = vec![REPO.into()];
    c.matrix.homeserver_url = Some(synapse().url());
    c.matrix.user = Some(bot.name.clone());
    c.matrix.password = Some(Secret::new(bot.password.clone()));
    c.matrix.store_passphrase = Some(Secret::new("test passphrase"));
    c.matrix.rooms = vec![room.to_string()];
}

/// Waits until the bot of the fleet on `db` has finished its first sync (stored a sync token).
async fn synced_once(db: &std::path::Path) {
    eventually("the bot has synced once", || async {
        forgefleet::store::Store::open_read_only(db)
            .is_ok_and(|s| s.read().matrix_next_batch().ok().flatten().is_some())
    })
    .await;
}

fn body(e: &Value) -> &str {
    e["content"]["body"].as_str().unwrap_or_default()
}

/// An event's relation: (`rel_type`, the event it relates to).
fn relation(e: &Value) -> (&str, &str) {
    let r = &e["content"]["m.relates_to"];
    (r["rel_type"].as_str().unwrap_or_default(), r["event_id"].as_str().unwrap_or_default())
}

/// The text an edit shows.
fn new_body(edit: &Value) -> &str {
    edit["content"]["m.new_content"]["body"].as_str().unwrap_or_default()
}

async fn progress(agent: &TestAgent, task: u64, lines: &[String]) {
    let (status, answer) = agent.post(&format!("/tasks/{task}/progress"), json!({"attempt": 1, "lines": lines})).await;
    assert_eq!(status, 200, "{answer}");
}

/// Scenario 1: a task's life is one message, edited through assigned, started and completed (with the pull
/// request's link); the agent's progress lines go into the agent's own thread; nobody is pinged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_life_is_one_message_edited_in_place_and_progress_goes_to_the_agents_thread() {
    let w = World::new().await;
    let (issue, task) = w.queued("Greet the world").await;
    let agent = w.fleet.register("a1", &[], 1).await;
    let a = agent.pull().await.unwrap();
    w.task_message(issue, "the task's message says it is assigned", |root, _| body(root).contains("assigned to")).await;
    agent.start(&a).await;
    progress(&agent, task, &["→ Write: greeting.txt".into(), "@room <b>look</b>".into()]).await;
    let (pr, sha) = w.open_pull(&a.branch, issue).await;
    let receipt = json!({"task_id": task, "attempt": 1, "pr_number": pr, "head_sha": sha, "summary": "Greets.",
        "usage": {"input_tokens": 1200, "output_tokens": 340}});
    let (status, answer) = agent.post("/receipts", receipt).await;
    assert_eq!(status, 202, "{answer}");
    let (root, edits) = w
        .task_message(issue, "the task's message is edited to completed", |_, edits| {
            edits.last().is_some_and(|e| new_body(e).contains("done by"))
        })
        .await;
    assert!(body(&root).contains("assigned to") && body(&root).contains("a1"), "{root}");
    let shown: Vec<&str> = edits.iter().map(new_body).collect();
    assert!(shown.iter().any(|b| b.contains("is working on it")), "started was an edit: {shown:#?}");
    let done = edits.last().unwrap();
    let link = format!("{}/{REPO}/pulls/{pr}", w.forgejo.url().trim_end_matches('/'));
    assert!(new_body(done).contains(&link), "{done}");
    let html = done["content"]["m.new_content"]["formatted_body"].as_str().unwrap();
    assert!(html.contains(&format!("<a href=\"{link}\">#{pr}</a>")) && html.contains("greeting.txt"), "{html}");

    // The progress, in the thread under the agent's root message; the agent's text stays text.
    let bot = w.bot_said().await;
    let agent_root = bot.iter().find(|e| body(e).contains("Agent **a1**")).expect("the agent's thread root");
    let root_id = agent_root["event_id"].as_str().unwrap();
    eventually("the progress lines are in the agent's thread", || async {
        w.bot_said()
            .await
            .iter()
            .any(|e| relation(e) == ("m.thread", root_id) && body(e).contains("→ Write: greeting.txt"))
    })
    .await;
    for e in w.bot_said().await {
        assert_eq!(e["content"]["m.mentions"], json!({}), "nobody is pinged: {e}");
        let html = e["content"]["formatted_body"].as_str().unwrap_or_default();
        assert!(!html.contains("<b>look</b>"), "agent text is escaped: {html}");
    }
}

/// Scenario 2: `/fleet status` and `!fleet status` are answered in a thread under the command; `/retry` from a
/// mapped writer requeues, from an unmapped person is refused and changes nothing; after a restart the same
/// command does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_the_room_are_answered_in_their_thread_and_run_once_for_those_allowed() {
    let mut w = World::new().await;
    let (issue, task) = w.queued("Steer me from chat").await;
    let asked = w.eve.say(&w.room, "/fleet status").await;
    let status = w.answered(&asked, "Fleet status").await;
    assert!(status.contains("queued 1") && status.contains("failures in the last 24 h"), "{status}");
    let asked = w.alice.say(&w.room, "!fleet status").await;
    w.answered(&asked, "Fleet status").await;
    let asked = w.alice.say(&w.room, "!fleet stauts").await;
    assert!(w.answered(&asked, "did you mean").await.contains("`status`"));

    let target = format!("{REPO}#{issue}");
    let cancel = w.alice.say(&w.room, &format!("/cancel {target}")).await;
    w.answered(&cancel, "is cancelled").await;
    assert_eq!(w.state(task).await, "cancelled");
    let refused = w.eve.say(&w.room, &format!("/retry {target}")).await;
    let why = w.answered(&refused, "not mapped").await;
    assert!(why.contains("[matrix.users]") && why.contains(&w.eve.user_id), "{why}");
    assert_eq!(w.state(task).await, "cancelled", "a refused command changes nothing");
    let retry = w.alice.say(&w.room, &format!("/retry {target}")).await;
    w.answered(&retry, "queued again").await;
    assert_eq!((w.state(task).await.as_str(), w.attempt(task).await), ("queued", 2));

    // A restart syncs from the stored token: nothing already handled runs or is answered again.
    w.fleet.restart_after(Duration::from_secs(1)).await;
    w.bot_is_in().await;
    let after = w.alice.say(&w.room, "/fleet queue").await;
    w.answered(&after, "Queue:").await;
    assert_eq!(w.attempt(task).await, 2, "the retry ran once");
    assert_eq!(w.answers_to(&retry).await.len(), 1, "and was answered once");
}

/// Scenario 7: a task whose agent asks a question is a message of its own in the room, the question fenced and
/// pinging nobody; `/answer` from the room by a mapped writer queues the next attempt, told the question and the
/// answer; from an unmapped person it changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_reaches_the_room_and_an_answer_from_the_room_queues_the_next_attempt() {
    let w = World::new().await;
    let (issue, task) = w.queued("Ask before guessing").await;
    let agent = w.fleet.register("a1", &[], 1).await;
    let a = agent.pull().await.unwrap();
    assert_eq!(agent.start(&a).await, 200);
    let question = "Should the client call the v1 or the v2 API?\n@room /retry";
    let (status, ack) = agent.post(&format!("/tasks/{task}/block"), json!({"attempt": 1, "question": question})).await;
    assert_eq!(status, 200, "{ack}");
    eventually("the question is in the room", || async {
        w.bot_said().await.iter().any(|e| body(e).contains("needs a person") && body(e).contains("v2 API?"))
    })
    .await;
    let said = w.bot_said().await;
    let asked = said.iter().find(|e| body(e).contains("v2 API?")).unwrap();
    assert_eq!(asked["content"]["m.mentions"], json!({}), "the agent's text pings nobody: {asked}");
    let html = asked["content"]["formatted_body"].as_str().unwrap_or_default();
    assert!(html.contains("<code") && html.contains("@room /retry"), "fenced as code: {html}");

    let target = format!("{REPO}#{issue}");
    let refused = w.eve.say(&w.room, &format!("/answer {target} the v1 one")).await;
    w.answered(&refused, "not mapped").await;
    assert_eq!(w.state(task).await, "blocked", "a refused answer changes nothing");
    let answer = w.alice.say(&w.room, &format!("/answer {target} the v2 one\nIts docs are in docs/v2.md.")).await;
    w.answered(&answer, "is answered").await;
    assert_eq!((w.state(task).await.as_str(), w.attempt(task).await), ("queued", 2));

    agent.heartbeat(&[]).await;
    let next = agent.pull().await.expect("the answered task");
    assert_eq!(next.attempt, 2);
    assert!(next.prompt.contains("v1 or the v2 API?"), "{}", next.prompt);
    assert!(next.prompt.contains("the v2 one\nIts docs are in docs/v2.md."), "{}", next.prompt);
}

/// Scenario 6: on the very first start the room's history is skipped (an old command never runs); a `/retry`
/// sent while forgefleet was stopped runs once when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_before_the_first_start_never_runs_and_a_command_sent_while_stopped_runs_once() {
    let (mut w, history) = World::with_history(&["/cancel acme/app#1"], |_| {}).await;
    let (issue, task) = w.queued("Old commands").await;
    assert_eq!(issue, 1);
    let later = w.alice.say(&w.room, "/fleet status").await;
    w.answered(&later, "Fleet status").await;
    assert!(w.answers_to(&history[0]).await.is_empty(), "a command from before the first start is not run");
    assert_eq!(w.state(task).await, "queued");

    let target = format!("{REPO}#{issue}");
    let cancel = w.alice.say(&w.room, &format!("/cancel {target}")).await;
    w.answered(&cancel, "is cancelled").await;
    w.fleet.stop_serving().await;
    let while_down = w.alice.say(&w.room, &format!("/retry {target}")).await;
    w.fleet.start_again().await;
    w.answered(&while_down, "queued again").await;
    assert_eq!((w.state(task).await.as_str(), w.attempt(task).await), ("queued", 2));
    let check = w.alice.say(&w.room, "/fleet queue").await;
    w.answered(&check, "Queue:").await;
    assert_eq!(w.answers_to(&while_down).await.len(), 1, "run and answered once");
    assert_eq!(w.attempt(task).await, 2);
}

/// A TCP proxy in front of the homeserver that can be taken down (connections cut, new ones refused) and
/// brought back on the same address: the homeserver as forgefleet sees it during an outage.
struct Proxy {
    addr: std::net::SocketAddr,
    target: std::net::SocketAddr,
    running: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = Proxy { addr, target, running: std::sync::Mutex::new(None) };
        p.serve(listener);
        p
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target;
        let task = tokio::spawn(async move {
            // Dropped with this task: every connection it carries is cut.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.running.lock().unwrap() = Some(task);
    }

    async fn down(&self) {
        if let Some(task) = self.running.lock().unwrap().take() {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.running.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Scenario 3: the homeserver is unreachable for a while; every notification of that time arrives once it
/// is back, and none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn news_from_while_the_homeserver_was_down_arrives_once_when_it_is_back() {
    let proxy = Proxy::start(synapse().addr).await;
    let url = proxy.url();
    let w = World::with(move |c| c.matrix.homeserver_url = Some(url)).await;
    let (issue, task) = w.queued("Through an outage").await;
    let agent = w.fleet.register("a1", &[], 1).await;
    let a = agent.pull().await.unwrap();
    w.task_message(issue, "the assignment is posted", |root, _| body(root).contains("assigned to")).await;

    proxy.down().await;
    agent.start(&a).await;
    progress(&agent, task, &["while the homeserver is down".into()]).await;
    // The worker tries, fails, and backs off (on forgefleet's clock, which this test moves).
    eventually("a delivery has failed", || async {
        w.fleet.outbox_list().iter().any(|r| r.attempts > 0 && r.destination == "matrix")
    })
    .await;
    proxy.up().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        w.fleet.later(Duration::from_secs(30));
        let started = w
            .task_view(issue)
            .await
            .is_some_and(|(_, edits)| edits.iter().any(|e| new_body(e).contains("is working on it")));
        let progressed = w.bot_said().await.iter().any(|e| body(e).contains("while the homeserver is down"));
        if started && progressed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not delivered after the outage: {:#?}", w.fleet.outbox_list());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bot = w.bot_said().await;
    let (_, edits) = w.task_view(issue).await.unwrap();
    assert_eq!(edits.iter().filter(|e| new_body(e).contains("is working on it")).count(), 1, "{edits:#?}");
    assert_eq!(bot.iter().filter(|e| body(e).contains("while the homeserver is down")).count(), 1, "{bot:#?}");
    assert_eq!(bot.iter().filter(|e| body(e).contains("Agent **a1**")).count(), 1, "one thread root: {bot:#?}");
}

/// Scenario 5: 10,000 progress lines from one agent in a minute reach the room as a bounded number of
/// messages in the agent's thread, each bounded, with what was left out counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_progress_lines_in_a_minute_make_a_bounded_number_of_messages() {
    let w = World::new().await;
    let (_, task) = w.queued("A chatty agent").await;
    let agent = w.fleet.register("a1", &[], 1).await;
    let a = agent.pull().await.unwrap();
    agent.start(&a).await;
    for i in 0..100u64 {
        let lines: Vec<String> = (0..100).map(|j| format!("line {}", i * 100 + j)).collect();
        progress(&agent, task, &lines).await;
        w.fleet.later(Duration::from_millis(600));
        if i % 5 == 4 {
            agent.heartbeat(&[a.task_id]).await;
            w.fleet.tick().await;
        }
    }
    w.fleet.later(Duration::from_secs(10));
    agent.heartbeat(&[a.task_id]).await;
    w.fleet.tick().await;
    let counted = |msgs: &[Value]| -> (usize, u64) {
        let batches: Vec<&Value> = msgs.iter().filter(|e| body(e).contains("line ")).collect();
        let lines =
            batches.iter().map(|e| body(e).lines().filter(|l| l.starts_with("line ")).count() as u64).sum::<u64>();
        let skipped = batches
            .iter()
            .filter_map(|e| {
                body(e).strip_prefix("… ").and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<u64>().ok())
            })
            .sum::<u64>();
        (batches.len(), lines + skipped)
    };
    eventually("every line is in the room or counted as skipped", || async {
        counted(&w.bot_said().await).1 == 10_000
    })
    .await;
    let bot = w.bot_said().await;
    let (messages, _) = counted(&bot);
    assert!((2..=15).contains(&messages), "{messages} messages for 10,000 lines");
    for e in bot.iter().filter(|e| body(e).contains("line ")) {
        assert!(body(e).lines().filter(|l| l.starts_with("line ")).count() <= 20, "{e}");
        assert_eq!(relation(e).0, "m.thread", "progress goes into the agent's thread: {e}");
    }
    assert!(bot.iter().any(|e| body(e).contains("line 9999")), "the newest lines are kept");
}

/// Scenario 4: in an encrypted room a person's own client (matrix-sdk, with its own keys) reads the bot's
/// notifications decrypted, and its `/fleet status` is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_encrypted_room_the_person_reads_the_news_and_is_answered() {
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

    let cast = encrypted::cast().await;
    let (bot, room, room_id) = (&cast.bot, &cast.room, cast.room_id.clone());

    let forgejo = FakeForgejo::start().await;
    forgejo.create_repo(REPO).await;
    forgejo.add_member(REPO, BOT, BOT_TOKEN, "admin").await;
    let (url, config_room, bot_user) = (forgejo.url().to_string(), room_id.clone(), bot.clone());
    let fleet = Fleet::start_with_forgejo(move |c| configure(c, &url, &bot_user, &config_room)).await;
    cast.bot_is_in(&fleet.bot.as_ref().unwrap().bot().await.device_id()).await;
    synced_once(&fleet.db).await;

    // What the person's client shows: the room's messages, decrypted where it can.
    let shown = || async {
        let mut options = matrix_sdk::room::MessagesOptions::backward();
        options.limit = 50u32.into();
        let Ok(page) = room.messages(options).await else { return Vec::new() };
        page.chunk
            .iter()
            .filter_map(|e| e.raw().get_field::<Value>("content").ok().flatten())
            .filter_map(|c| c["body"].as_str().map(str::to_string))
            .collect::<Vec<String>>()
    };
    let issue = forgejo.create_issue(REPO, BOT, "Secret work", "", &["status:todo"]).await;
    fleet.label(&format!("{REPO}#{issue}"), &["status:todo"]).await.unwrap();
    let agent = fleet.register("a1", &[], 1).await;
    agent.pull().await.unwrap();
    eventually("the person's client reads the assignment, decrypted", || async {
        shown().await.iter().any(|b| b.contains(&format!("{REPO}#{issue}")) && b.contains("assigned to"))
    })
    .await;

    room.send(RoomMessageEventContent::text_plain("/fleet status")).await.unwrap();
    eventually("the person's client reads the status answer, decrypted", || async {
        shown().await.iter().any(|b| b.contains("Fleet status") && b.contains("assigned 1"))
    })
    .await;
    let raw = fleet.outbox_list();
    assert!(raw.iter().all(|r| r.destination != "matrix"), "everything for the room was delivered: {raw:#?}");
    cast.syncing.abort();
}

/// A repository's `.forgejo/fleet.yaml` may send its news to another of the rooms the configuration allows it
/// (`[matrix.repos]`), never to a room of its writers' choosing: that file is refused, and its news stays in
/// the configured rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_chooses_its_room_only_among_those_the_configuration_allows() {
    let carol = Person::login(&synapse().register("carol").await).await;
    let ops = carol.create_room(None, &[]).await;
    let ops_for_config = ops.clone();
    let w = World::with(move |c| {
        let main = c.matrix.rooms[0].clone();
        c.matrix.rooms.push(ops_for_config.clone());
        c.matrix.repos = [(REPO.to_string(), vec![main, ops_for_config])].into();
    })
    .await;
    eventually("the bot joined the ops room", || async {
        carol.membership(&ops, &w.bot.user_id).await.as_deref() == Some("join")
    })
    .await;
    let client =
        forgefleet::integrations::forgejo::ForgejoClient::new(w.forgejo.url(), Secret::new(BOT_TOKEN), None).unwrap();
    let repo = forgefleet::core::RepoName::parse(REPO).unwrap();
    let refresh = |text: String| {
        let (client, repo, w, ops) = (&client, &repo, &w, &ops);
        async move {
            w.forgejo.set_file(REPO, ".forgejo/fleet.yaml", &text).await;
            let main = w.room.clone();
            let allowed = [main.as_str(), ops.as_str()];
            forgefleet::integrations::forgejo::reconcile::refresh_settings(
                client,
                &w.fleet.engine,
                &forgefleet::store::ReadPool::new(w.fleet.db.clone()),
                repo,
                &forgefleet::core::LabelScheme::default(),
                Some(&allowed),
            )
            .await
            .unwrap();
        }
    };

    refresh(format!("matrix:\n  room: \"{ops}\"\n")).await;
    let (issue, _) = w.queued("News for ops").await;
    let agent = w.fleet.register("a1", &[], 2).await;
    agent.pull().await.unwrap();
    let needle = format!("{REPO}#{issue}");
    eventually("the assignment is in the room the repository chose", || async {
        carol.bodies(&ops).await.iter().any(|b| b.contains(&needle) && b.contains("assigned to"))
    })
    .await;
    assert!(!w.bot_said().await.iter().any(|e| body(e).contains(&needle)), "not in the main room");

    refresh("matrix:\n  room: \"!elsewhere:localhost\"\n".to_string()).await;
    let (issue, _) = w.queued("News for the default").await;
    agent.pull().await.unwrap();
    w.task_message(issue, "the assignment is in the repository's first room", |root, _| {
        body(root).contains("assigned to")
    })
    .await;
    eventually("the refused file is explained on the issue", || async {
        w.forgejo
            .comments(REPO, issue)
            .await
            .iter()
            .any(|c| c.body.contains("matrix.room") && c.body.contains("!elsewhere"))
    })
    .await;
}
