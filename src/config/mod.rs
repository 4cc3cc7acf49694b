//! The configuration of forgefleet: one TOML file, every key optional, secrets also from the environment.
//!
//! [`Config::load`] reads the file, applies `FORGEFLEET_<SECTION>_<KEY>` environment variables to the
//! secrets and checks everything, reporting every problem at once with the key it concerns.
//! `config.example.toml` at the crate root shows every key with its default; `docs/configuration.md` explains
//! them.

mod ca;
mod errors;
pub(crate) mod load;
mod retry;
pub(crate) mod secret;
pub(crate) mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::{LabelScheme, Priority, RepoName, RetryPolicy};

pub use ca::CaBundle;
pub use errors::{ConfigError, ConfigErrors};
pub use retry::{RetryClassConfig, RetryConfig};
pub use secret::Secret;

/// The whole configuration. `Config::default()` is what forgefleet runs with when there is no file.
///
/// Read it with [`Config::load`] or [`Config::from_toml_str`]: deserializing it directly skips the
/// environment overrides and the checks, and stops at the first problem.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: where the HTTP API listens, and logging.
    pub server: ServerConfig,
    /// `[store]`: the SQLite database.
    pub store: StoreConfig,
    /// `[api]`: the operator API.
    pub api: ApiConfig,
    /// `[agents]`: registration, heartbeats and long polls.
    pub agents: AgentsConfig,
    /// `[tasks]`: time limits and progress logs.
    pub tasks: TasksConfig,
    /// `[retry.<class>]`: the retry budget and backoff of each failure class. Default: `RetryPolicy::default()`.
    pub retry: RetryConfig,
    /// `[labels]`: the names of the labels forgefleet reads and writes. Default: `LabelScheme::default()`.
    pub labels: LabelsConfig,
    /// `[forgejo]`: the Forgejo instance and the repositories watched.
    pub forgejo: ForgejoConfig,
    /// `[matrix]`: the chat bot.
    pub matrix: MatrixConfig,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event, for a terminal.
    #[default]
    Human,
    /// One JSON object per line, for a log collector.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port the HTTP API listens on; an IP address, host names are not resolved.
    /// Default: `"127.0.0.1:8080"`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// `"human"` or `"json"`. Default: `"human"`.
    pub log_format: LogFormat,
    /// Which log lines to keep, as a tracing `EnvFilter` directive such as `"info,forgefleet=debug"`;
    /// `RUST_LOG`, when set, is up to the program that sets up logging. Default: `"info"`.
    pub log_level: String,
    /// A directory of templates (issue comments, chat messages) that replace the built-in ones of the same
    /// file name; see `templates/` in the source for the names and the values each receives. Default: unset
    /// (the built-in templates).
    #[serde(with = "secret::optional")]
    pub templates_dir: Option<PathBuf>,
    /// A connection must send a request's complete headers within this many seconds of opening, or of the
    /// answer to its previous request: slow senders and idle keep-alive connections are closed after it. A
    /// request being answered (a long-poll waiting for work) is not idle. Default: 30 (above the agents'
    /// heartbeat interval, so their kept-alive connections are reused).
    pub header_read_timeout_secs: u64,
    /// How long one request may take, reading its body included; long-polls get their own wait on top.
    /// Default: 30.
    pub request_timeout_secs: u64,
    /// Open connections at most; one more is answered 503 and closed. Lowered at start to what the open-file
    /// limit allows (the soft limit is raised to the hard one first). Default: 10000 (the design promises
    /// 5,000 connected agents).
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            log_format: LogFormat::Human,
            log_level: "info".into(),
            templates_dir: None,
            header_read_timeout_secs: 30,
            request_timeout_secs: 30,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite database file, created if missing; a relative path is relative to the current directory.
    /// Default: `"./forgefleet-data/forgefleet.db"`.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("./forgefleet-data/forgefleet.db") }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer token for the operator API (status, retry, ...). Secret; env `FORGEFLEET_API_OPERATOR_TOKEN`.
    /// Default: unset, and then the operator API answers 401 to everyone.
    #[serde(with = "secret::optional")]
    pub operator_token: Option<Secret>,
    /// Largest request body accepted, in bytes; larger requests get 413. Default: `1048576` (1 MiB).
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { operator_token: None, max_body_bytes: 1024 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// The token an agent shows to register. Secret; env `FORGEFLEET_AGENTS_REGISTRATION_TOKEN`.
    /// Default: unset, and then no agent can register.
    #[serde(with = "secret::optional")]
    pub registration_token: Option<Secret>,
    /// Seconds between heartbeats, told to each agent when it registers. Default: `10`.
    pub heartbeat_interval_secs: u64,
    /// Heartbeats an agent may miss before it counts as offline and its tasks as `agent_lost`. Default: `3`.
    pub missed_heartbeats: u32,
    /// Seconds an agent has to start an assigned task before the assignment counts as `agent_lost`.
    /// Default: `30`.
    pub start_timeout_secs: u64,
    /// Longest long poll on `POST /assignments/next`, in seconds; an agent asking for longer waits this long.
    /// Default: `60`.
    pub max_wait_secs: u64,
    /// Seconds a task that goes on from an agent's earlier work (a round of changes on its pull request, an
    /// answered question, a retry on its branch) is kept for that agent, so it can resume its CLI session,
    /// while that agent is online and not draining; then any agent may take it. `0`: no preference.
    /// Default: `120`.
    pub prefer_same_agent_secs: u64,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            registration_token: None,
            heartbeat_interval_secs: 10,
            missed_heartbeats: 3,
            start_timeout_secs: 30,
            max_wait_secs: 60,
            prefer_same_agent_secs: 120,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Minutes an attempt may run before it fails with `timeout`. Default: `60`.
    pub timeout_mins: u64,
    /// Seconds between checks for timed-out tasks and lost agents. Default: `5`.
    pub check_interval_secs: u64,
    /// Progress lines kept per attempt; older ones are dropped. Default: `200`.
    pub progress_lines_kept: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self { timeout_mins: 60, check_interval_secs: 5, progress_lines_kept: 200 }
    }
}

/// The label names, as in [`LabelScheme`]; the defaults are `LabelScheme::default()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelsConfig {
    /// Queues an issue. Default: `"status:todo"`.
    pub todo: String,
    /// Set when an agent has the task. Default: `"status:doing"`.
    pub doing: String,
    /// Set when the receipt checked out. Default: `"status:done"`.
    pub done: String,
    /// Set when the retries are spent. Default: `"status:failed"`.
    pub failed: String,
    /// Set while the agent waits for a person's answer to its question (`/answer`). Default:
    /// `"status:blocked"`.
    pub blocked: String,
    /// Prefix of the priority labels (`<prefix>critical|high|medium|low`). Default: `"priority:"`.
    pub priority_prefix: String,
    /// Prefix of the task type labels (`<prefix>bug`). Default: `"type:"`.
    pub type_prefix: String,
    /// Prefix of the capability labels (`<prefix>rust`). Default: `"needs:"`.
    pub needs_prefix: String,
    /// Prefix of the labels that pin a task to an agent (`<prefix>claude-1`). Default: `"agent:"`.
    pub agent_prefix: String,
    /// Priority of an issue without a priority label: critical, high, medium or low. Default: `"medium"`.
    pub default_priority: Priority,
}

impl Default for LabelsConfig {
    fn default() -> Self {
        let s = LabelScheme::default();
        Self {
            todo: s.todo,
            doing: s.doing,
            done: s.done,
            failed: s.failed,
            blocked: s.blocked,
            priority_prefix: s.priority_prefix,
            type_prefix: s.type_prefix,
            needs_prefix: s.needs_prefix,
            agent_prefix: s.agent_prefix,
            default_priority: s.default_priority,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForgejoConfig {
    /// Base URL of the Forgejo instance, `http://` or `https://`. Default: unset (no Forgejo: nothing is
    /// watched).
    #[serde(with = "secret::optional")]
    pub url: Option<String>,
    /// API token of the bot account; required when `url` is set. Secret; env `FORGEFLEET_FORGEJO_TOKEN`.
    /// Default: unset.
    #[serde(with = "secret::optional")]
    pub token: Option<Secret>,
    /// Shared secret that signs webhook deliveries. Secret; env `FORGEFLEET_FORGEJO_WEBHOOK_SECRET`.
    /// Default: unset, and then every webhook delivery is refused (polling still works).
    #[serde(with = "secret::optional")]
    pub webhook_secret: Option<Secret>,
    /// The bot account's user name, so that forgefleet can tell its own comments and label changes from
    /// people's. Default: unset.
    #[serde(with = "secret::optional")]
    pub bot_user: Option<String>,
    /// Base URL for git over HTTP(S) (`<git_url>/<owner>/<name>.git`), when it differs from `url`. forgefleet
    /// fetches pull requests into its own mirror from there to check receipts. Default: unset (`url`).
    #[serde(with = "secret::optional")]
    pub git_url: Option<String>,
    /// A PEM file of extra CA certificates to trust for the Forgejo API and git over HTTPS: for a Forgejo
    /// whose certificate comes from a private CA. Added to the public web roots, never instead of them.
    /// Default: unset.
    #[serde(with = "secret::optional")]
    pub ca_file: Option<PathBuf>,
    /// Watched repositories as `owner/name`. Default: `[]`.
    pub repos: Vec<String>,
    /// Minutes between polls for issues changed since the last one, the safety net for lost webhooks.
    /// Default: `5`.
    pub reconcile_interval_mins: u64,
    /// Hours between full sweeps of every open issue, which catch what `since` polling cannot. Default: `24`.
    pub full_sweep_hours: u64,
    /// The branch agents base their work on and open pull requests against, until forgefleet has read the
    /// repository's own default branch. Default: `"main"`.
    pub base_branch: String,
    /// Agents push their work to `<branch_prefix>issue-<N>-attempt-<A>`. Default: `"forgefleet/"`.
    pub branch_prefix: String,
    /// The address Forgejo delivers webhooks to, as `forgefleet forgejo setup` registers it, e.g.
    /// `"https://fleet.example.com/api/v1/webhooks/forgejo"`. Default: unset (setup then needs `--webhook-url`).
    #[serde(with = "secret::optional")]
    pub webhook_url: Option<String>,
    /// Post a comment when an agent starts on an issue. Default: `true`.
    pub comment_on_start: bool,
    /// Seconds one request to Forgejo may take, its answer included. Default: `20`.
    pub request_timeout_secs: u64,
    /// CI as a receipt check: `false`, `true` (every commit status on the pull request's head must succeed) or
    /// a list of status names (contexts). A repository's `fleet.yaml` may set its own. Default: `false`.
    pub require_checks: crate::core::ChecksSetting,
    /// Minutes a task waits for required checks before its attempt fails with `checks_failed`. Default: `60`.
    pub checks_timeout_mins: u64,
    /// What a completed task does when its pull request is closed without merging: `"requeue"` (a fresh
    /// attempt), `"fail"` or `"nothing"` (recorded, the task stays completed). A repository's `fleet.yaml` may
    /// set its own. Default: `"nothing"`.
    pub on_pr_closed: crate::core::OnPullClosed,
    /// How many rounds of changes people may ask for on a completed task's pull request (a review that
    /// requests changes, or `/fleet fix`), each a new attempt on the same branch and pull request; `0` turns
    /// them off. A repository's `fleet.yaml` may set its own. Default: `3`.
    pub review_rounds: u32,
    /// Whether any comment by a person with write permission on a blocked task's issue answers its question,
    /// as `/answer <the comment>` would (`false`: only `/answer` does). A repository's `fleet.yaml` may set its
    /// own. Default: `false`.
    pub answer_any_comment: bool,
    /// What happens when a completed task's pull request stops merging because its base branch moved
    /// (Forgejo's `mergeable: false`): `true` queues a round on the same branch in which an agent merges the
    /// base branch in and resolves the conflicts (a round of `review_rounds`); `false` only tells the issue and
    /// the chat room. A repository's `fleet.yaml` may set its own. Default: `false`.
    pub auto_rebase: bool,
    /// Forgejo users of agents, `agent name = "login"`: the user becomes the assignee while the
    /// agent works on it. Default: empty.
    pub agent_users: std::collections::BTreeMap<String, String>,
}

impl Default for ForgejoConfig {
    fn default() -> Self {
        Self {
            url: None,
            git_url: None,
            ca_file: None,
            token: None,
            webhook_secret: None,
            bot_user: None,
            repos: Vec::new(),
            reconcile_interval_mins: 5,
            full_sweep_hours: 24,
            request_timeout_secs: 20,
            require_checks: Default::default(),
            checks_timeout_mins: 60,
            on_pr_closed: Default::default(),
            review_rounds: 3,
            answer_any_comment: false,
            auto_rebase: false,
            base_branch: "main".into(),
            branch_prefix: "forgefleet/".into(),
            webhook_url: None,
            comment_on_start: true,
            agent_users: Default::default(),
        }
    }
}

impl ForgejoConfig {
    /// The extra CA certificates of `ca_file`, if set. After a successful [`Config::load`] it reads.
    pub fn ca(&self) -> Result<Option<CaBundle>, String> {
        self.ca_file.as_deref().map(CaBundle::load).transpose()
    }

    /// The watched repositories; entries that do not parse are skipped, which after a successful
    /// [`Config::load`] is none of them.
    pub fn repo_names(&self) -> Vec<RepoName> {
        self.repos.iter().filter_map(|r| RepoName::parse(r).ok()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatrixConfig {
    /// Base URL of the homeserver, `http://` or `https://`. Default: unset (no Matrix bot: nothing of Matrix
    /// starts).
    #[serde(with = "secret::optional")]
    pub homeserver_url: Option<String>,
    /// The bot's user, `@name:server` or just `name`; required with `password`. With `access_token` it may be
    /// left out (the homeserver says whose token it is); if given, it must be the token's user. Default: unset.
    #[serde(with = "secret::optional")]
    pub user: Option<String>,
    /// The bot's password: forgefleet logs in with it once and keeps the session (docs/matrix.md). Exactly one
    /// of `password` and `access_token` is required when `homeserver_url` is set. Secret; env
    /// `FORGEFLEET_MATRIX_PASSWORD`. Default: unset.
    #[serde(with = "secret::optional")]
    pub password: Option<Secret>,
    /// An access token of the bot's account, instead of a password (the token's device is then the bot's
    /// device). Secret; env `FORGEFLEET_MATRIX_ACCESS_TOKEN`. Default: unset.
    #[serde(with = "secret::optional")]
    pub access_token: Option<Secret>,
    /// The display name of the device a password login creates. Default: `"forgefleet"`.
    pub device_name: String,
    /// Encrypts the bot's Matrix store (its encryption keys and room state, `<store dir>/matrix/`). Losing it
    /// or the store means a new device and no access to earlier encrypted messages. Secret; env
    /// `FORGEFLEET_MATRIX_STORE_PASSPHRASE`. Default: unset (the store is kept unencrypted on disk).
    #[serde(with = "secret::optional")]
    pub store_passphrase: Option<Secret>,
    /// Rooms the bot joins and posts to, as ids (`!id:server`, `!id`) or aliases (`#name:server`); invites to
    /// other rooms are declined. Default: `[]`.
    pub rooms: Vec<String>,
    /// The room a repository without a room of its own (`[matrix.repos]`) reports to; one of `rooms`.
    /// Default: unset (the first of `rooms`).
    #[serde(with = "secret::optional")]
    pub default_room: Option<String>,
    /// Which notifications the rooms get. Default: all of them (see [`NotifyKind`]).
    pub notify: Vec<NotifyKind>,
    /// An agent's progress lines go into its thread at most once per this many seconds. Default: `5`.
    pub progress_interval_secs: u64,
    /// At most this many progress lines per message; the rest are counted as skipped. Default: `20`.
    pub progress_max_lines: usize,
    /// Matrix users (`@user:server`) who may run every command in every repository. Default: `[]`.
    pub admins: Vec<String>,
    /// `[matrix.users]`: Matrix user -> Forgejo login, `"@alice:example.com" = "alice"`. A mapped user may run
    /// the commands that change things where that Forgejo user has write permission. Default: empty.
    pub users: BTreeMap<String, String>,
    /// `[matrix.repos]`: `"owner/repo" = ["!room:server", ...]`, the rooms a repository's notifications may
    /// go to (the first is its default; each must be in `rooms`). A repository's `.forgejo/fleet.yaml` may
    /// choose only among these. Default: empty (every repository reports to `default_room`).
    pub repos: BTreeMap<String, Vec<String>>,
}

impl Default for MatrixConfig {
    fn default() -> Self {
        Self {
            homeserver_url: None,
            user: None,
            password: None,
            access_token: None,
            device_name: "forgefleet".into(),
            store_passphrase: None,
            rooms: Vec::new(),
            default_room: None,
            notify: NotifyKind::ALL.to_vec(),
            progress_interval_secs: 5,
            progress_max_lines: 20,
            admins: Vec::new(),
            users: BTreeMap::new(),
            repos: BTreeMap::new(),
        }
    }
}

impl MatrixConfig {
    /// Whether the bot runs: a homeserver is configured.
    pub fn enabled(&self) -> bool {
        self.homeserver_url.is_some()
    }

    /// The room notifications go to when a repository has none of its own: `default_room`, else the first
    /// of `rooms`.
    pub fn default_room(&self) -> Option<&str> {
        self.default_room.as_deref().or(self.rooms.first().map(String::as_str))
    }

    /// The rooms `repo`'s notifications may go to, its default first: its own `[matrix.repos]` entry, else
    /// the default room.
    pub fn rooms_for(&self, repo: &RepoName) -> Vec<&str> {
        match self.repos.get(repo.as_str()) {
            Some(rooms) if !rooms.is_empty() => rooms.iter().map(String::as_str).collect(),
            _ => self.default_room().into_iter().collect(),
        }
    }
}

/// A kind of notification a room can get (`[matrix] notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    Assigned,
    Started,
    Completed,
    VerificationFailed,
    Retrying,
    TimedOut,
    Failed,
    Cancelled,
    Blocked,
    AgentOnline,
    AgentDraining,
    AgentOffline,
    AgentLost,
    Progress,
}

impl NotifyKind {
    /// Every kind, the default of `notify`.
    pub const ALL: [NotifyKind; 14] = [
        NotifyKind::Assigned,
        NotifyKind::Started,
        NotifyKind::Completed,
        NotifyKind::VerificationFailed,
        NotifyKind::Retrying,
        NotifyKind::TimedOut,
        NotifyKind::Failed,
        NotifyKind::Cancelled,
        NotifyKind::Blocked,
        NotifyKind::AgentOnline,
        NotifyKind::AgentDraining,
        NotifyKind::AgentOffline,
        NotifyKind::AgentLost,
        NotifyKind::Progress,
    ];

    /// Its name in the configuration, which is the chat notification's kind (`core::CHAT_KINDS`).
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Assigned => "assigned",
            NotifyKind::Started => "started",
            NotifyKind::Completed => "completed",
            NotifyKind::VerificationFailed => "verification_failed",
            NotifyKind::Retrying => "retrying",
            NotifyKind::TimedOut => "timed_out",
            NotifyKind::Failed => "failed",
            NotifyKind::Cancelled => "cancelled",
            NotifyKind::Blocked => "blocked",
            NotifyKind::AgentOnline => "agent_online",
            NotifyKind::AgentDraining => "agent_draining",
            NotifyKind::AgentOffline => "agent_offline",
            NotifyKind::AgentLost => "agent_lost",
            NotifyKind::Progress => "progress",
        }
    }
}

impl Config {
    /// The retry policy of the core with this configuration's rules.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.policy()
    }

    /// The label scheme of the core with this configuration's names.
    pub fn label_scheme(&self) -> LabelScheme {
        let l = self.labels.clone();
        LabelScheme {
            todo: l.todo,
            doing: l.doing,
            done: l.done,
            failed: l.failed,
            blocked: l.blocked,
            priority_prefix: l.priority_prefix,
            type_prefix: l.type_prefix,
            needs_prefix: l.needs_prefix,
            agent_prefix: l.agent_prefix,
            default_priority: l.default_priority,
        }
    }

    /// How long an attempt may run before it times out.
    pub fn task_timeout(&self) -> Duration {
        minutes(self.tasks.timeout_mins)
    }

    /// How often timeouts and lost agents are looked for.
    pub fn task_check_interval(&self) -> Duration {
        Duration::from_secs(self.tasks.check_interval_secs)
    }

    /// The heartbeat interval agents are told to keep.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.agents.heartbeat_interval_secs)
    }

    /// Silence after which an agent is offline: the heartbeat interval times the heartbeats it may miss.
    pub fn agent_offline_after(&self) -> Duration {
        self.heartbeat_interval().saturating_mul(self.agents.missed_heartbeats)
    }

    /// How long an agent has to start an assigned task.
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.agents.start_timeout_secs)
    }

    /// The longest long poll for an assignment.
    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.agents.max_wait_secs)
    }

    /// How often issues changed since the last poll are fetched.
    pub fn reconcile_interval(&self) -> Duration {
        minutes(self.forgejo.reconcile_interval_mins)
    }

    /// How often every open issue is swept.
    pub fn full_sweep_interval(&self) -> Duration {
        minutes(self.forgejo.full_sweep_hours.saturating_mul(60))
    }
}

/// std's own error says only "invalid socket address syntax"; this one shows the value and an example.
fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "expected an IP address and port such as \"127.0.0.1:8080\" or \"[::]:8080\", found {text:?} \
             (host names are not resolved)"
        ))
    })
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m.saturating_mul(60))
}
