//! The Matrix bot against a real Synapse: logging in and keeping its device, its rooms, the inbox that records
//! each message once across restarts, gaps and replays, sending (idempotent, threads, edits), an encrypted
//! room, and `serve` with a bot that cannot log in. What the bot sent is checked as a second client sees it.

#![recursion_limit = "256"]

#[path = "support/encrypted.rs"]
mod encrypted;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use forgefleet::config::{Config, Secret};
use forgefleet::engine::{self, Engine, EngineHandle, EngineSettings, SystemClock};
use forgefleet::integrations::matrix::{self, Bot, MatrixHandle, MessageRelation, OutgoingMessage, TIMELINE_LIMIT};
use forgefleet::store::Store;
use serde_json::{Value, json};
use support::synapse::{Person, User, synapse};
use support::{Home, eventually};

/// A forgefleet home with the bot configured: its data directory and configuration.
struct BotHome {
    _dir: tempfile::TempDir,
    config: Config,
}

impl BotHome {
    fn new(bot: &User, rooms: &[&str]) -> BotHome {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.store.path = dir.path().join("data").join("forgefleet.db");
        config.matrix.homeserver_url = Some(synapse().url());
        config.matrix.user = Some(bot.name.clone());
        config.matrix.password = Some(Secret::new(bot.password.clone()));
        config.matrix.store_passphrase = Some(Secret::new("test passphrase"));
        config.matrix.rooms = rooms.iter().map(|r| r.to_string()).collect();
        BotHome { _dir: dir, config }
    }

    fn db(&self) -> PathBuf {
        self.config.store.path.clone()
    }

    fn matrix_dir(&self) -> PathBuf {
        matrix::session::data_dir(&self.db())
    }

    /// Starts the engine and the bot, as `serve` does, and waits until the bot has logged in and joined.
    async fn start(&self) -> Running {
        let store = Store::open(&self.db()).unwrap();
        let (engine, thread) = engine::spawn(Engine::new(store, EngineSettings::default(), SystemClock), ());
        let handle = matrix::spawn(&self.config, engine.clone()).expect("a homeserver is configured");
        let bot = tokio::time::timeout(Duration::from_secs(60), handle.bot()).await.expect("the bot logs in");
        Running { handle, bot, engine, thread: Some(thread) }
    }

    /// The inbox's message bodies, oldest first.
    fn inbox(&self) -> Vec<String> {
        let store = Store::open_read_only(&self.db()).unwrap();
        store.read().matrix_inbox(10_000).unwrap().into_iter().map(|r| r.message.body).collect()
    }

    fn token(&self) -> Option<String> {
        Store::open_read_only(&self.db()).ok()?.read().matrix_next_batch().unwrap()
    }

    /// Waits until the bot has recorded a sync token: its first sync is done.
    async fn synced(&self) {
        eventually("the bot has synced once", || async { self.token().is_some() }).await;
    }

    async fn inbox_holds(&self, expected: &[&str]) {
        let what = format!("the inbox holds {expected:?}");
        eventually(&what, || async { self.inbox() == expected }).await;
    }
}

struct Running {
    handle: MatrixHandle,
    bot: Bot,
    engine: EngineHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the bot and the engine, as stopping `serve` does.
    async fn stop(mut self) {
        self.handle.stop().await;
        drop(self.bot);
        drop(self.engine);
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join().unwrap()).await.unwrap();
    }
}

fn text(room: &str, txn: &str, body: &str, relation: Option<MessageRelation>) -> OutgoingMessage {
    OutgoingMessage {
        room: room.to_string(),
        txn_id: txn.to_string(),
        body: body.to_string(),
        html: Some(format!("<p>{body}</p>")),
        mentions: vec![],
        relation,
    }
}

/// A bot user, a person, a room the person made with the bot invited, and a home for the bot in that room.
async fn cast() -> (User, Person, String, BotHome) {
    let s = synapse();
    let bot = s.register("bot").await;
    let alice = Person::login(&s.register("alice").await).await;
    let room = alice.create_room(None, &[&bot.user_id]).await;
    let home = BotHome::new(&bot, &[&room]);
    (bot, alice, room, home)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_login_keeps_one_device_across_restarts() {
    let (bot, alice, room, home) = cast().await;
    let running = home.start().await;
    let device = running.bot.device_id();
    assert!(!device.is_empty());
    assert_eq!(running.bot.user_id().as_str(), bot.user_id);
    running.stop().await;

    let session = home.matrix_dir().join("session.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&session).unwrap().permissions().mode() & 0o777, 0o600);
    let stored = std::fs::read_to_string(&session).unwrap();
    assert!(stored.contains(&device), "{stored}");

    let running = home.start().await;
    assert_eq!(running.bot.device_id(), device, "a restart reuses the device");
    let bot_person = Person { token: access_token(&home), user_id: bot.user_id.clone(), http: reqwest::Client::new() };
    let (_, devices) = bot_person.call(reqwest::Method::GET, "/devices", None).await;
    // Registration made a device of its own; forgefleet made one, once.
    let ours: Vec<&Value> =
        devices["devices"].as_array().unwrap().iter().filter(|d| d["display_name"] == "forgefleet").collect();
    assert_eq!(ours.len(), 1, "one forgefleet device after two starts: {devices}");
    assert_eq!(ours[0]["device_id"], device.as_str());
    assert_eq!(alice.membership(&room, &bot.user_id).await.as_deref(), Some("join"));
    running.stop().await;

    // The store opens only with the passphrase it was made with, and the refusal names the key.
    let mut other = home.config.matrix.clone();
    other.store_passphrase = Some(Secret::new("another passphrase"));
    let refused = Bot::connect(&other, &home.matrix_dir()).await.err().expect("a wrong passphrase is refused");
    assert!(refused.to_string().starts_with("matrix.store_passphrase:"), "{refused}");
}

fn access_token(home: &BotHome) -> String {
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(home.matrix_dir().join("session.json")).unwrap()).unwrap();
    stored["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_token_login_is_the_tokens_user_and_device() {
    let (bot, _alice, _room, mut home) = cast().await;
    let token_login = Person::login(&bot).await;
    let (_, whoami) = token_login.call(reqwest::Method::GET, "/account/whoami", None).await;
    home.config.matrix.password = None;
    home.config.matrix.user = None;
    home.config.matrix.access_token = Some(Secret::new(token_login.token.clone()));
    let running = home.start().await;
    assert_eq!(running.bot.user_id().as_str(), bot.user_id);
    assert_eq!(running.bot.device_id(), whoami["device_id"].as_str().unwrap());
    running.stop().await;

    // A token of somebody else than matrix.user is refused with the key named.
    home.config.matrix.user = Some("@someone-else:localhost".into());
    let dir = tempfile::tempdir().unwrap();
    let refused = Bot::connect(&home.config.matrix, dir.path()).await.err().expect("refused");
    assert!(refused.to_string().starts_with("matrix.user:"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_joins_by_alias_accepts_invites_to_its_rooms_and_declines_the_others() {
    let s = synapse();
    let bot = s.register("bot").await;
    let alice = Person::login(&s.register("alice").await).await;
    let alias_local = format!("fleet-{}", bot.name);
    let room = alice.create_room(Some(&alias_local), &[]).await;
    let alias = format!("#{alias_local}:{}", support::synapse::SERVER_NAME);
    // A configured room the bot cannot join yet: invite-only, and nobody has invited it.
    let private = alice.create_private_room().await;
    let home = BotHome::new(&bot, &[&alias, &private]);
    let running = home.start().await;
    assert_eq!(alice.membership(&room, &bot.user_id).await.as_deref(), Some("join"));
    assert_eq!(running.bot.room_id(&alias).unwrap().as_str(), room, "the alias resolves to the room");
    assert_eq!(alice.membership(&private, &bot.user_id).await, None, "not joined without an invite");
    alice.invite(&private, &bot.user_id).await;
    eventually("the invite to a configured room is accepted", || async {
        alice.membership(&private, &bot.user_id).await.as_deref() == Some("join")
    })
    .await;

    let elsewhere = alice.create_room(None, &[]).await;
    alice.invite(&elsewhere, &bot.user_id).await;
    eventually("the invite elsewhere is declined", || async {
        alice.membership(&elsewhere, &bot.user_id).await.as_deref() == Some("leave")
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_skipped_on_the_first_start_and_a_message_sent_while_stopped_is_recorded_once() {
    let (_bot, alice, room, home) = cast().await;
    alice.say(&room, "/retry acme/app#1 (old: before the bot ever ran)").await;
    let running = home.start().await;
    home.synced().await;
    alice.say(&room, "live").await;
    home.inbox_holds(&["live"]).await;
    running.stop().await;

    alice.say(&room, "/retry acme/app#2 (while stopped)").await;
    let running = home.start().await;
    home.inbox_holds(&["live", "/retry acme/app#2 (while stopped)"]).await;
    running.stop().await;

    // Another restart finds nothing new.
    let running = home.start().await;
    alice.say(&room, "after").await;
    home.inbox_holds(&["live", "/retry acme/app#2 (while stopped)", "after"]).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_one_sync_is_backfilled_in_order() {
    let (_bot, alice, room, home) = cast().await;
    let running = home.start().await;
    home.synced().await;
    running.stop().await;

    let sent: Vec<String> = (0..TIMELINE_LIMIT + 10).map(|i| format!("message {i}")).collect();
    for body in &sent {
        alice.say(&room, body).await;
    }
    let running = home.start().await;
    let expected: Vec<&str> = sent.iter().map(String::as_str).collect();
    home.inbox_holds(&expected).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_replayed_after_a_crash_records_nothing_twice() {
    let (_bot, alice, room, home) = cast().await;
    let running = home.start().await;
    home.synced().await;
    let before = home.token().unwrap();
    alice.say(&room, "one").await;
    alice.say(&room, "two").await;
    home.inbox_holds(&["one", "two"]).await;
    running.stop().await;

    // As if the process had died before its token moved on: the same events come again from the older token.
    let mut store = Store::open(&home.db()).unwrap();
    let tx = store.write().unwrap();
    tx.set_meta(forgefleet::store::MATRIX_NEXT_BATCH, &before).unwrap();
    tx.commit().unwrap();
    drop(store);
    let running = home.start().await;
    eventually("the replayed sync moved the token on", || async { home.token().as_deref() != Some(&before) }).await;
    alice.say(&room, "three").await;
    home.inbox_holds(&["one", "two", "three"]).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_twice_with_one_transaction_id_posts_one_event() {
    let (_bot, alice, room, home) = cast().await;
    let running = home.start().await;
    let first = running.bot.send(&text(&room, "outbox-1", "task 1 assigned", None)).await.unwrap();
    let again = running.bot.send(&text(&room, "outbox-1", "task 1 assigned", None)).await.unwrap();
    assert_eq!(first, again);
    running.stop().await;
    // After a restart (the same device and token), too: a crash between send and commit posts once.
    let running = home.start().await;
    let after_restart = running.bot.send(&text(&room, "outbox-1", "task 1 assigned", None)).await.unwrap();
    assert_eq!(first, after_restart);
    assert_eq!(alice.bodies(&room).await, ["task 1 assigned"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_send_waits_for_retry_after_and_goes_through() {
    let (bot, alice, room, home) = cast().await;
    // The test homeserver's limits are raised for everyone; this bot gets one message a second, burst one.
    let admin = Person::login(&synapse().register_admin("admin").await).await;
    let limit = format!("{}/_synapse/admin/v1/users/{}/override_ratelimit", synapse().url(), bot.user_id);
    let (status, answer) =
        admin.call_url(reqwest::Method::POST, &limit, Some(json!({"messages_per_second": 1, "burst_count": 1}))).await;
    assert_eq!(status, 200, "{answer}");
    let running = home.start().await;
    let started = std::time::Instant::now();
    for i in 0..3 {
        running.bot.send(&text(&room, &format!("limited-{i}"), &format!("update {i}"), None)).await.unwrap();
    }
    // Three messages at one a second: the second and third were answered 429 and sent after the wait.
    assert!(started.elapsed() >= Duration::from_millis(1500), "no 429 was waited out: {:?}", started.elapsed());
    assert_eq!(alice.bodies(&room).await, ["update 0", "update 1", "update 2"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_replies_and_edits_carry_their_relations_and_explicit_mentions() {
    let (_bot, alice, room, home) = cast().await;
    let running = home.start().await;
    let b = &running.bot;
    let root = b.send(&text(&room, "root", "agent claude-1", None)).await.unwrap();
    let thread = MessageRelation::Thread { root: root.to_string() };
    let mut reply = text(&room, "progress-1", "compiling <crate>", Some(thread));
    reply.mentions = vec![alice.user_id.clone()];
    let reply = b.send(&reply).await.unwrap();
    let edit = MessageRelation::Replace { event_id: root.to_string() };
    let edited = b.send(&text(&room, "root-edit", "agent claude-1: busy", Some(edit))).await.unwrap();

    let root_seen = alice.event(&room, root.as_str()).await;
    assert_eq!(root_seen["content"]["m.mentions"], json!({}), "{root_seen}");
    assert_eq!(root_seen["content"]["formatted_body"], "<p>agent claude-1</p>");

    let reply_seen = alice.event(&room, reply.as_str()).await;
    assert_eq!(reply_seen["content"]["m.relates_to"]["rel_type"], "m.thread", "{reply_seen}");
    assert_eq!(reply_seen["content"]["m.relates_to"]["event_id"], root.as_str());
    assert_eq!(reply_seen["content"]["m.mentions"]["user_ids"], json!([alice.user_id]));

    let edit_seen = alice.event(&room, edited.as_str()).await;
    let content = &edit_seen["content"];
    assert_eq!(content["m.relates_to"]["rel_type"], "m.replace", "{edit_seen}");
    assert_eq!(content["m.relates_to"]["event_id"], root.as_str());
    assert_eq!(content["m.new_content"]["body"], "agent claude-1: busy");
    assert_eq!(content["body"], "* agent claude-1: busy");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_works_both_ways() {
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

    let cast = encrypted::cast().await;
    let (bot, room, room_id) = (&cast.bot, &cast.room, cast.room_id.clone());

    let home = BotHome::new(bot, &[&room_id]);
    let running = home.start().await;
    home.synced().await;
    cast.bot_is_in(running.bot.device_id().as_str()).await;
    room.send(RoomMessageEventContent::text_plain("/fleet status")).await.unwrap();
    home.inbox_holds(&["/fleet status"]).await;

    let sent = running.bot.send(&text(&room_id, "secret-1", "3 agents, 2 tasks queued", None)).await.unwrap();
    let raw = raw_event(&home, &room_id, sent.as_str()).await;
    assert_eq!(raw["type"], "m.room.encrypted", "the bot's message is encrypted on the wire: {raw}");
    eventually("the human's client decrypts the bot's message", || async {
        let Ok(event) = room.event(&sent, None).await else { return false };
        let content = event.raw().get_field::<Value>("content").ok().flatten().unwrap_or_default();
        content["body"] == "3 agents, 2 tasks queued"
    })
    .await;
    cast.syncing.abort();
    running.stop().await;
}

/// The event as the homeserver keeps it, read with the bot's own token.
async fn raw_event(home: &BotHome, room: &str, event_id: &str) -> Value {
    let reader = Person { token: access_token(home), user_id: String::new(), http: reqwest::Client::new() };
    reader.event(room, event_id).await
}

#[test]
fn serve_keeps_running_when_the_bot_cannot_log_in() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bot = rt.block_on(synapse().register("bot"));
    let wrong = Home::with_config(&format!(
        "[matrix]\nhomeserver_url = \"{}\"\nuser = \"{}\"\npassword = \"not-the-password\"\nrooms = [\"!nowhere\"]\n",
        synapse().url(),
        bot.name
    ));
    let nowhere = support::free_addr();
    let unreachable = Home::with_config(&format!(
        "[matrix]\nhomeserver_url = \"http://{nowhere}\"\nuser = \"bot\"\npassword = \"x\"\n"
    ));
    let unknown_room = Home::with_config(&format!(
        "[matrix]\nhomeserver_url = \"{}\"\nuser = \"{}\"\npassword = \"{}\"\nrooms = [\"#no-such-room:localhost\"]\n",
        synapse().url(),
        bot.name,
        bot.password
    ));
    for (home, key) in
        [(wrong, "matrix.password"), (unreachable, "matrix.homeserver_url"), (unknown_room, "matrix.rooms[0]")]
    {
        let server = home.serve();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !support::strip_ansi(&server.log_text()).contains(&format!("{key}:")) {
            assert!(std::time::Instant::now() < deadline, "no message naming {key}: {}", server.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        let health = rt.block_on(async { reqwest::get(server.url("/healthz")).await.unwrap().status() });
        assert_eq!(health, 200, "serve runs the rest: {}", server.log_text());
        assert!(server.stop().success());
    }
}

#[test]
fn serve_starts_the_bot_and_a_killed_serve_loses_no_message() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (bot, alice, room, _) = rt.block_on(cast());
    let home = Home::with_config(&format!(
        "[matrix]\nhomeserver_url = \"{}\"\nuser = \"{}\"\npassword = \"{}\"\nrooms = [\"{room}\"]\n",
        synapse().url(),
        bot.name,
        bot.password
    ));
    let check = home.run(&["config", "check", home.config().to_str().unwrap()]);
    assert!(support::stdout(&check).contains("# matrix: on"), "{}", support::stdout(&check));
    let read = |db: &std::path::Path| {
        let store = Store::open_read_only(db).ok()?;
        let view = store.read();
        let bodies: Vec<String> = view.matrix_inbox(100).ok()?.into_iter().map(|r| r.message.body).collect();
        Some((view.matrix_next_batch().ok()?, bodies))
    };
    let server = home.serve();
    rt.block_on(eventually("the bot started by serve has synced", || async {
        read(&home.db()).is_some_and(|(token, _)| token.is_some())
    }));
    rt.block_on(alice.say(&room, "one"));
    rt.block_on(eventually("one is recorded", || async { read(&home.db()).is_some_and(|(_, b)| b == ["one"]) }));
    drop(server); // SIGKILL: no shutdown at all

    rt.block_on(alice.say(&room, "two"));
    let server = home.serve();
    rt.block_on(eventually("two is recorded, one not again", || async {
        read(&home.db()).is_some_and(|(_, b)| b == ["one", "two"])
    }));
    assert!(server.stop().success());
    assert!(home.dir.path().join("data").join("matrix").join("session.json").exists());
}
