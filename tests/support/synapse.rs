//! A real Matrix homeserver for the tests: Synapse from PyPI, one per test binary on 127.0.0.1, stopped by a
//! watchdog when the test binary exits, with per-test users registered through the shared-secret admin API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

/// The shared secret of the test homeserver's admin registration.
const SHARED_SECRET: &str = "forgefleet-test-registration-secret";
/// The server name: user ids are `@name:localhost`.
pub const SERVER_NAME: &str = "localhost";

/// The test binary's homeserver.
pub struct Synapse {
    pub addr: SocketAddr,
    /// Kept open for the life of the test binary: the watchdog stops Synapse when it closes.
    _watchdog_stdin: Mutex<ChildStdin>,
    _watchdog: Mutex<Child>,
}

/// A registered user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub user_id: String,
    pub password: String,
}

/// The homeserver of this test binary, started (and Synapse installed) on first use.
pub fn synapse() -> &'static Synapse {
    static ONE: OnceLock<Synapse> = OnceLock::new();
    ONE.get_or_init(start)
}

impl Synapse {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registers a user whose name starts with `prefix` and is unique in this test binary's run.
    pub async fn register(&self, prefix: &str) -> User {
        self.register_as(prefix, false).await
    }

    /// Registers a server admin (for the admin API: rate limit overrides).
    pub async fn register_admin(&self, prefix: &str) -> User {
        self.register_as(prefix, true).await
    }

    async fn register_as(&self, prefix: &str, admin: bool) -> User {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let password = format!("{name}-password");
        let endpoint = format!("{}/_synapse/admin/v1/register", self.url());
        let http = reqwest::Client::new();
        let nonce: serde_json::Value = http.get(&endpoint).send().await.unwrap().json().await.unwrap();
        let nonce = nonce["nonce"].as_str().unwrap().to_string();
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SHARED_SECRET.as_bytes()).unwrap();
        let role = if admin { "admin" } else { "notadmin" };
        mac.update(format!("{nonce}\0{name}\0{password}\0{role}").as_bytes());
        let mac: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let body = serde_json::json!({
            "nonce": nonce, "username": name, "password": password, "admin": admin, "mac": mac,
        });
        let response = http.post(&endpoint).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "registering {name}: {}", response.text().await.unwrap());
        User { user_id: format!("@{name}:{SERVER_NAME}"), name, password }
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/synapse-venv`, with Synapse installed into it if it is not there yet (`.ci/run` does it first).
fn venv() -> PathBuf {
    let venv = manifest_dir().join("target").join("synapse-venv");
    let python = venv.join("bin").join("python");
    let installed = || {
        Command::new(&python).args(["-c", "import synapse"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    if installed() {
        return venv;
    }
    // Several test binaries may get here at once: one installs, the others wait for it.
    let lock = manifest_dir().join("target").join("synapse-venv.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let status = Command::new("flock")
        .arg(&lock)
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "{py} -c 'import synapse' 2>/dev/null || (python3 -m venv {venv} && {venv}/bin/pip install -q matrix-synapse)",
            py = python.display(),
            venv = venv.display()
        ))
        .status()
        .expect("flock and python3 are needed to install Synapse");
    assert!(status.success() && installed(), "installing Synapse into {} failed", venv.display());
    venv
}

fn start() -> Synapse {
    let venv = venv();
    let dir = tempfile::Builder::new().prefix("forgefleet-synapse-").tempdir().unwrap().keep();
    let addr = super::free_addr();
    write_config(&dir, addr);
    // The watchdog: starts Synapse, waits until its stdin closes (the test binary exited, however it ended),
    // then stops Synapse and removes its directory.
    let script = format!(
        "{python} -m synapse.app.homeserver -c {dir}/homeserver.yaml >{dir}/stdout.log 2>&1 &\n\
         pid=$!\n\
         cat >/dev/null\n\
         kill -TERM $pid 2>/dev/null\n\
         wait $pid\n\
         rm -rf {dir}\n",
        python = venv.join("bin").join("python").display(),
        dir = dir.display()
    );
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = watchdog.stdin.take().unwrap();
    wait_until_up(addr, &dir, &mut watchdog);
    Synapse { addr, _watchdog_stdin: Mutex::new(stdin), _watchdog: Mutex::new(watchdog) }
}

fn wait_until_up(addr: SocketAddr, dir: &Path, watchdog: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = watchdog.try_wait() {
            panic!("Synapse's watchdog exited with {status}");
        }
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(b"GET /_matrix/client/versions HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
    let log2 = std::fs::read_to_string(dir.join("homeserver.log")).unwrap_or_default();
    panic!("Synapse did not answer on {addr} within 90 s:\n{log}\n{log2}");
}

fn write_config(dir: &Path, addr: SocketAddr) {
    let key: [u8; 32] = rand::random();
    let key = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key);
    std::fs::write(dir.join("signing.key"), format!("ed25519 a_test {key}\n")).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("log.yaml"),
        format!(
            "version: 1\nformatters:\n  precise:\n    format: '%(asctime)s %(name)s %(levelname)s %(message)s'\n\
             handlers:\n  file:\n    class: logging.FileHandler\n    formatter: precise\n    filename: {d}/homeserver.log\n\
             root:\n  level: WARNING\n  handlers: [file]\ndisable_existing_loggers: false\n"
        ),
    )
    .unwrap();
    // Tests log in and send far faster than people: every rate limit is raised, or they fail by the fifth
    // login (../shared/matrix/README.md).
    let fast = "{per_second: 1000, burst_count: 10000}";
    let limits = [
        "rc_message",
        "rc_registration",
        "rc_joins_per_room",
        "rc_room_creation",
        "rc_admin_redaction",
        "rc_3pid_validation",
        "rc_delayed_event_mgmt",
        "rc_profile",
        "rc_user_directory",
    ]
    .iter()
    .map(|k| format!("{k}: {fast}\n"))
    .collect::<String>();
    let config = format!(
        "server_name: \"{SERVER_NAME}\"\n\
         listeners:\n  - port: {port}\n    bind_addresses: ['127.0.0.1']\n    type: http\n    tls: false\n    x_forwarded: false\n    resources:\n      - names: [client]\n        compress: false\n\
         database:\n  name: sqlite3\n  args:\n    database: {d}/homeserver.db\n\
         log_config: {d}/log.yaml\n\
         media_store_path: {d}/media\n\
         signing_key_path: {d}/signing.key\n\
         registration_shared_secret: \"{SHARED_SECRET}\"\n\
         macaroon_secret_key: \"forgefleet-test-macaroon\"\n\
         form_secret: \"forgefleet-test-form\"\n\
         report_stats: false\n\
         trusted_key_servers: []\n\
         suppress_key_server_warning: true\n\
         federation_domain_whitelist: []\n\
         presence:\n  enabled: false\n\
         {limits}\
         rc_login:\n  address: {fast}\n  account: {fast}\n  failed_attempts: {fast}\n\
         rc_joins:\n  local: {fast}\n  remote: {fast}\n\
         rc_invites:\n  per_room: {fast}\n  per_user: {fast}\n  per_issuer: {fast}\n\
         rc_presence:\n  per_user: {fast}\n",
        port = addr.port(),
    );
    std::fs::write(dir.join("homeserver.yaml"), config).unwrap();
}

/// A client of the client-server API, as a person's Matrix client talks to the homeserver.
#[derive(Clone)]
pub struct Person {
    pub token: String,
    pub user_id: String,
    pub http: reqwest::Client,
}

pub fn api(path: &str) -> String {
    format!("{}/_matrix/client/v3{}", synapse().url(), path)
}

/// `#` must not end a URL path.
pub fn enc(id: &str) -> String {
    id.replace('#', "%23")
}

impl Person {
    pub async fn login(user: &User) -> Person {
        let http = reqwest::Client::new();
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.name},
            "password": user.password,
        });
        let answer: Value = http.post(api("/login")).json(&body).send().await.unwrap().json().await.unwrap();
        let token = answer["access_token"].as_str().unwrap_or_else(|| panic!("login: {answer}")).to_string();
        Person { token, user_id: user.user_id.clone(), http }
    }

    /// A request to the client-server API (`path` after `/_matrix/client/v3`).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_url(method, &api(path), body).await
    }

    pub async fn call_url(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A public room, with `alias` (its local part) if given; `invite` are invited.
    pub async fn create_room(&self, alias: Option<&str>, invite: &[&str]) -> String {
        self.create_room_with("public_chat", alias, invite).await
    }

    /// A room only the invited may join.
    pub async fn create_private_room(&self) -> String {
        self.create_room_with("private_chat", None, &[]).await
    }

    pub async fn create_room_with(&self, preset: &str, alias: Option<&str>, invite: &[&str]) -> String {
        let mut body = json!({"preset": preset, "invite": invite});
        if let Some(alias) = alias {
            body["room_alias_name"] = json!(alias);
        }
        let (status, answer) = self.call(reqwest::Method::POST, "/createRoom", Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        answer["room_id"].as_str().unwrap().to_string()
    }

    pub async fn say(&self, room: &str, body: &str) -> String {
        let txn: u64 = rand::random();
        let path = format!("/rooms/{}/send/m.room.message/{txn}", enc(room));
        let (status, answer) =
            self.call(reqwest::Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": body}))).await;
        assert_eq!(status, 200, "{answer}");
        answer["event_id"].as_str().unwrap().to_string()
    }

    pub async fn invite(&self, room: &str, user: &str) {
        let path = format!("/rooms/{}/invite", enc(room));
        let (status, answer) = self.call(reqwest::Method::POST, &path, Some(json!({"user_id": user}))).await;
        assert_eq!(status, 200, "{answer}");
    }

    pub async fn membership(&self, room: &str, user: &str) -> Option<String> {
        let path = format!("/rooms/{}/state/m.room.member/{user}", enc(room));
        let (status, answer) = self.call(reqwest::Method::GET, &path, None).await;
        (status == 200).then(|| answer["membership"].as_str().unwrap_or_default().to_string())
    }

    pub async fn event(&self, room: &str, event_id: &str) -> Value {
        let (status, answer) =
            self.call(reqwest::Method::GET, &format!("/rooms/{}/event/{event_id}", enc(room)), None).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// The bodies of the room's newest messages, oldest first.
    pub async fn bodies(&self, room: &str) -> Vec<String> {
        self.messages(room)
            .await
            .iter()
            .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The room's newest messages (`m.room.message` only), oldest first.
    pub async fn messages(&self, room: &str) -> Vec<Value> {
        let path = format!("/rooms/{}/messages?dir=b&limit=100", enc(room));
        let (status, answer) = self.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{answer}");
        let mut events: Vec<Value> =
            answer["chunk"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.message").cloned().collect();
        events.reverse();
        events
    }
}
