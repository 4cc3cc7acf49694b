//! The checks a configuration must pass once it has parsed; every problem is collected, not just the first.

use std::collections::HashMap;

use crate::core::RepoName;

use super::{Config, ConfigError};

/// Every problem with `c`, each with its key path.
pub(crate) fn check(c: &Config) -> Vec<ConfigError> {
    let mut p = Problems(Vec::new());

    if c.server.log_level.trim().is_empty() {
        p.add("server.log_level", "must not be empty; \"info\" is the usual choice");
    } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.server.log_level) {
        p.add(
            "server.log_level",
            format!("is not a valid log filter ({e}); examples: \"info\", \"info,forgefleet=debug\""),
        );
    }
    if c.store.path.as_os_str().is_empty() {
        p.add("store.path", "must not be empty");
    }
    p.positive("api.max_body_bytes", c.api.max_body_bytes as u64);
    p.positive("server.header_read_timeout_secs", c.server.header_read_timeout_secs);
    p.positive("server.request_timeout_secs", c.server.request_timeout_secs);
    p.positive("server.max_connections", c.server.max_connections as u64);

    p.positive("agents.heartbeat_interval_secs", c.agents.heartbeat_interval_secs);
    p.positive("agents.missed_heartbeats", u64::from(c.agents.missed_heartbeats));
    p.positive("agents.start_timeout_secs", c.agents.start_timeout_secs);
    p.positive("agents.max_wait_secs", c.agents.max_wait_secs);
    p.positive("tasks.timeout_mins", c.tasks.timeout_mins);
    p.positive("tasks.check_interval_secs", c.tasks.check_interval_secs);

    for (class, rule) in c.retry.classes() {
        if rule.base_secs == 0 {
            p.add(
                format!("retry.{class}.base_secs"),
                "must be at least 1: the backoff doubles it, and zero stays zero",
            );
        }
        if rule.cap_secs < rule.base_secs {
            p.add(
                format!("retry.{class}.cap_secs"),
                format!(
                    "{} is less than base_secs ({}); the cap must be at least the base",
                    rule.cap_secs, rule.base_secs
                ),
            );
        }
    }

    check_labels(c, &mut p);
    check_forgejo(c, &mut p);
    check_matrix(c, &mut p);
    p.0
}

fn check_labels(c: &Config, p: &mut Problems) {
    let l = &c.labels;
    // A label name is matched exactly against a trimmed label, so stray spaces would never match.
    let names =
        [("todo", &l.todo), ("doing", &l.doing), ("done", &l.done), ("failed", &l.failed), ("blocked", &l.blocked)];
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (key, name) in names {
        let path = format!("labels.{key}");
        if name.trim().is_empty() {
            p.add(path, "must not be empty");
        } else if name.trim() != name.as_str() {
            p.add(path, format!("{name:?} starts or ends with spaces, which label names never match"));
        } else if let Some(first) = seen.insert(name, key) {
            p.add(path, format!("{name:?} is already the label of labels.{first}; each status needs its own label"));
        }
    }
    let prefixes = [
        ("priority_prefix", &l.priority_prefix),
        ("type_prefix", &l.type_prefix),
        ("needs_prefix", &l.needs_prefix),
        ("agent_prefix", &l.agent_prefix),
    ];
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (key, prefix) in prefixes {
        let path = format!("labels.{key}");
        if prefix.is_empty() {
            p.add(path, "must not be empty: an empty prefix would claim every label");
        } else if prefix.trim_start() != prefix.as_str() {
            p.add(path, format!("{prefix:?} starts with spaces, which label names never match"));
        } else if let Some(first) = seen.insert(prefix, key) {
            // Labels are tried against the prefixes in turn, so the later one would never see a label.
            p.add(path, format!("{prefix:?} is already labels.{first}; each kind of label needs its own prefix"));
        }
    }
}

fn check_forgejo(c: &Config, p: &mut Problems) {
    let f = &c.forgejo;
    p.url("forgejo.url", f.url.as_deref());
    if f.url.is_some() && f.token.is_none() {
        p.add("forgejo.token", "is required when forgejo.url is set (or set FORGEFLEET_FORGEJO_TOKEN)");
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, repo) in f.repos.iter().enumerate() {
        let path = format!("forgejo.repos[{i}]");
        if let Err(e) = RepoName::parse(repo) {
            p.add(path, e.to_string());
        } else if let Some(first) = seen.insert(repo, i) {
            p.add(path, format!("{repo:?} is listed twice (also forgejo.repos[{first}])"));
        }
    }
    p.positive("forgejo.reconcile_interval_mins", f.reconcile_interval_mins);
    p.positive("forgejo.full_sweep_hours", f.full_sweep_hours);
    p.positive("forgejo.request_timeout_secs", f.request_timeout_secs);
    p.positive("forgejo.checks_timeout_mins", f.checks_timeout_mins);
    if let Err(why) = f.require_checks.required() {
        p.add("forgejo.require_checks", &why);
    }
    // Both end up in git ref names the agents push: keep to what git accepts everywhere.
    let ref_ok = |s: &str| {
        !s.contains("..")
            && !s.starts_with('/')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
    };
    if f.base_branch.is_empty() || !ref_ok(&f.base_branch) {
        p.add("forgejo.base_branch", "must be a branch name (letters, digits, '/', '-', '_', '.')");
    }
    p.url("forgejo.webhook_url", f.webhook_url.as_deref());
    p.url("forgejo.git_url", f.git_url.as_deref());
    if let Some(path) = &f.ca_file
        && let Err(why) = super::CaBundle::load(path)
    {
        p.add("forgejo.ca_file", why);
    }
    for (agent, login) in &f.agent_users {
        if let Err(e) = crate::core::AgentName::parse(agent) {
            p.add(format!("forgejo.agent_users.{agent}"), e.to_string());
        } else if login.trim().is_empty() {
            p.add(format!("forgejo.agent_users.{agent}"), "must name a Forgejo user");
        }
    }
    if !ref_ok(&f.branch_prefix) {
        p.add("forgejo.branch_prefix", "may hold only letters, digits, '/', '-', '_' and '.'");
    }
}

fn check_matrix(c: &Config, p: &mut Problems) {
    let m = &c.matrix;
    p.url("matrix.homeserver_url", m.homeserver_url.as_deref());
    if m.homeserver_url.is_some() {
        match (&m.password, &m.access_token) {
            (None, None) => p.add(
                "matrix.password",
                "is required when matrix.homeserver_url is set, or matrix.access_token instead \
                 (or set FORGEFLEET_MATRIX_PASSWORD or FORGEFLEET_MATRIX_ACCESS_TOKEN)",
            ),
            (Some(_), Some(_)) => p.add(
                "matrix.access_token",
                "cannot be set together with matrix.password: the bot logs in with one of them, keep one",
            ),
            _ => {}
        }
        if m.access_token.is_none() && m.user.is_none() {
            p.add(
                "matrix.user",
                "is required when matrix.homeserver_url is set (only an access_token login may leave it out)",
            );
        }
    }
    if let Some(user) = &m.user
        && (user.contains(char::is_whitespace) || user == "@" || (user.starts_with('@') && !user.contains(':')))
    {
        p.add("matrix.user", format!("{user:?} is not a Matrix user (\"@name:server\" or \"name\")"));
    }
    if m.device_name.trim().is_empty() {
        p.add("matrix.device_name", "must not be empty; \"forgefleet\" is the default");
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, room) in m.rooms.iter().enumerate() {
        let path = format!("matrix.rooms[{i}]");
        if !is_room(room) {
            p.add(path, format!("{room:?} is not a room id (\"!id:server\") or alias (\"#name:server\")"));
        } else if let Some(first) = seen.insert(room, i) {
            p.add(path, format!("{room:?} is listed twice (also matrix.rooms[{first}])"));
        }
    }
    let listed = |room: &str| m.rooms.iter().any(|r| r == room);
    if let Some(room) = &m.default_room
        && !listed(room)
    {
        p.add("matrix.default_room", format!("{room:?} is not one of matrix.rooms; add it there first"));
    }
    p.positive("matrix.progress_interval_secs", m.progress_interval_secs);
    p.positive("matrix.progress_max_lines", m.progress_max_lines as u64);
    for (i, admin) in m.admins.iter().enumerate() {
        if !is_user_id(admin) {
            p.add(format!("matrix.admins[{i}]"), format!("{admin:?} is not a full Matrix user id (\"@name:server\")"));
        }
    }
    for (user, login) in &m.users {
        let path = format!("matrix.users.\"{user}\"");
        if !is_user_id(user) {
            p.add(path, format!("{user:?} is not a full Matrix user id (\"@name:server\")"));
        } else if login.trim().is_empty() {
            p.add(path, "must name a Forgejo user");
        }
    }
    for (repo, rooms) in &m.repos {
        let path = format!("matrix.repos.\"{repo}\"");
        if let Err(e) = RepoName::parse(repo) {
            p.add(path, e.to_string());
        } else if rooms.is_empty() {
            p.add(path, "must list at least one room (its first is the repository's default)");
        } else if let Some(room) = rooms.iter().find(|r| !listed(r)) {
            p.add(path, format!("{room:?} is not one of matrix.rooms; a repository may only use rooms listed there"));
        }
    }
}

/// A room id or alias. Newer room versions drop the `:server` part of room ids, so only the sigil is certain.
fn is_room(room: &str) -> bool {
    (room.starts_with('!') || room.starts_with('#')) && room.len() >= 2 && !room.contains(char::is_whitespace)
}

fn is_user_id(user: &str) -> bool {
    user.strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(name, server)| !name.is_empty() && !server.is_empty() && !user.contains(char::is_whitespace))
}

pub(crate) struct Problems(pub(crate) Vec<ConfigError>);

impl Problems {
    pub(crate) fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(key, message));
    }

    pub(crate) fn positive(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.add(key, "must be at least 1");
        }
    }

    pub(crate) fn url(&mut self, key: &str, url: Option<&str>) {
        let Some(url) = url else { return };
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        match rest {
            None => self.add(key, format!("{url:?} is not a URL starting with http:// or https://")),
            Some(rest) if rest.is_empty() || rest.starts_with('/') => self.add(key, format!("{url:?} names no host")),
            Some(_) if url.contains(char::is_whitespace) => self.add(key, format!("{url:?} contains spaces")),
            Some(_) => {}
        }
    }
}
