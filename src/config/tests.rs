//! The rules of the configuration, checked through `Config::from_toml_str` with an injected environment.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::core::FailureClass;

const EXAMPLE: &str = include_str!("../../config.example.toml");

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(text, &no_env)
}

fn problems(text: &str) -> ConfigErrors {
    parse(text).expect_err("the configuration should have been refused")
}

/// The one problem about `key`, failing with the whole list when there is not exactly one.
fn problem<'a>(errs: &'a ConfigErrors, key: &str) -> &'a str {
    let found = errs.about(key);
    assert_eq!(found.len(), 1, "expected one problem about {key}, got:\n{errs}");
    &found[0].message
}

/// `(section, key)` of every `key = value` line, counting commented-out ones (`# key = value`).
fn keys_of(toml_text: &str) -> BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in toml_text.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = header.to_string();
        } else if let Some((key, _)) = line.trim_start_matches("# ").split_once(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert((section.clone(), key.to_string()));
        }
    }
    keys
}

#[test]
fn no_file_means_every_default() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.log_format, LogFormat::Human);
    assert_eq!(c.server.log_level, "info");
    assert_eq!(c.store.path, Path::new("./forgefleet-data/forgefleet.db"));
    assert_eq!((c.api.operator_token.is_none(), c.api.max_body_bytes), (true, 1_048_576));
    let a = &c.agents;
    assert_eq!(
        (a.heartbeat_interval_secs, a.missed_heartbeats, a.start_timeout_secs, a.max_wait_secs),
        (10, 3, 30, 60)
    );
    assert_eq!((c.tasks.timeout_mins, c.tasks.check_interval_secs, c.tasks.progress_lines_kept), (60, 5, 200));
    assert_eq!((c.forgejo.reconcile_interval_mins, c.forgejo.full_sweep_hours), (5, 24));
    assert!(c.forgejo.url.is_none() && c.forgejo.repos.is_empty() && c.matrix.rooms.is_empty());
    assert_eq!(c.task_timeout().as_secs(), 3600);
    assert_eq!(c.agent_offline_after().as_secs(), 30);
    assert_eq!(c.full_sweep_interval().as_secs(), 24 * 3600);
}

#[test]
fn default_retry_and_labels_are_the_cores() {
    let c = Config::default();
    assert_eq!(c.retry_policy(), crate::core::RetryPolicy::default());
    assert_eq!(c.label_scheme(), crate::core::LabelScheme::default());
    assert!(c.retry_policy().rule(FailureClass::Cancelled).is_none());
}

#[test]
fn settings_from_the_file_reach_the_core_types() {
    let c = parse(
        "[retry.timeout]\nmax_retries = 4\n[labels]\ntodo = \"fleet/todo\"\ndefault_priority = \"low\"\n\
         [tasks]\ntimeout_mins = 90\n",
    )
    .unwrap();
    let rule = c.retry_policy().rule(FailureClass::Timeout).copied().unwrap();
    assert_eq!((rule.max_retries, rule.base.as_secs(), rule.cap.as_secs()), (4, 300, 3600));
    let scheme = c.label_scheme();
    assert_eq!((scheme.todo.as_str(), scheme.default_priority), ("fleet/todo", crate::core::Priority::Low));
    assert_eq!(c.task_timeout().as_secs(), 90 * 60);
}

#[test]
fn env_wins_over_file() {
    let text =
        "[forgejo]\ntoken = \"from-file\"\nwebhook_secret = \"file-hook\"\n[api]\noperator_token = \"op-file\"\n";
    let env = |name: &str| match name {
        "FORGEFLEET_FORGEJO_TOKEN" => Some("from-env".to_string()),
        "FORGEFLEET_MATRIX_PASSWORD" => Some("pw-env".to_string()),
        "FORGEFLEET_AGENTS_REGISTRATION_TOKEN" => Some("reg-env".to_string()),
        _ => None,
    };
    let c = Config::from_toml_str(text, &env).unwrap();
    let shown = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
    assert_eq!(shown(&c.forgejo.token).as_deref(), Some("from-env"));
    assert_eq!(shown(&c.forgejo.webhook_secret).as_deref(), Some("file-hook"), "no env var: the file's value stays");
    assert_eq!(shown(&c.api.operator_token).as_deref(), Some("op-file"));
    assert_eq!(shown(&c.matrix.password).as_deref(), Some("pw-env"));
    assert_eq!(shown(&c.agents.registration_token).as_deref(), Some("reg-env"));
}

#[test]
fn empty_env_var_is_ignored() {
    let env = |_: &str| Some(String::new());
    let c = Config::from_toml_str("[forgejo]\ntoken = \"from-file\"\n", &env).unwrap();
    assert_eq!(c.forgejo.token.as_ref().map(Secret::expose), Some("from-file"));
    assert!(c.api.operator_token.is_none(), "an empty variable does not set a secret");
}

#[test]
fn an_empty_string_in_the_file_means_unset() {
    let c = parse("[forgejo]\nurl = \"\"\ntoken = \"\"\n[matrix]\nuser = \"\"\n").unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn secret_env_vars_are_named_after_section_and_key() {
    let names: Vec<String> = Config::secret_env_vars().into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        names,
        [
            "FORGEFLEET_API_OPERATOR_TOKEN",
            "FORGEFLEET_AGENTS_REGISTRATION_TOKEN",
            "FORGEFLEET_FORGEJO_TOKEN",
            "FORGEFLEET_FORGEJO_WEBHOOK_SECRET",
            "FORGEFLEET_MATRIX_PASSWORD",
            "FORGEFLEET_MATRIX_ACCESS_TOKEN",
            "FORGEFLEET_MATRIX_STORE_PASSPHRASE",
        ]
    );
    for name in &names {
        assert!(EXAMPLE.contains(name.as_str()), "config.example.toml should mention {name}");
    }
}

#[test]
fn debug_of_config_shows_no_secret() {
    let text = "[api]\noperator_token = \"op-s3cret\"\n[forgejo]\nurl = \"https://f.example\"\n\
                webhook_secret = \"hook-s3cret\"\n[matrix]\nhomeserver_url = \"https://m.example\"\nuser = \"bot\"\n";
    let env = |name: &str| match name {
        "FORGEFLEET_FORGEJO_TOKEN" => Some("tok-s3cret".to_string()),
        "FORGEFLEET_MATRIX_PASSWORD" => Some("pw-s3cret".to_string()),
        "FORGEFLEET_AGENTS_REGISTRATION_TOKEN" => Some("reg-s3cret".to_string()),
        _ => None,
    };
    let c = Config::from_toml_str(text, &env).unwrap();
    for shown in [format!("{c:?}"), format!("{c:#?}"), c.effective_toml()] {
        assert!(!shown.contains("s3cret"), "a secret leaked:\n{shown}");
        assert!(shown.contains("***"));
    }
}

#[test]
fn unknown_key_names_key_and_section() {
    let errs = problems("[server]\nlisen = \"0.0.0.0:80\"\n");
    let why = problem(&errs, "server.lisen");
    assert!(why.contains("unknown key `lisen` in [server]"), "{why}");
    assert!(why.contains("`listen`") && why.contains("line 2, column 1"), "{why}");

    let errs = problems("[retry.timeout]\nbase = 5\n");
    assert!(problem(&errs, "retry.timeout.base").contains("in [retry.timeout]"), "{errs}");

    let errs = problems("[sever]\nlisten = \"0.0.0.0:80\"\n");
    assert!(problem(&errs, "sever").contains("unknown section [sever]"), "{errs}");
}

#[test]
fn retry_for_cancelled_is_refused_with_the_reason() {
    let errs = problems("[retry.cancelled]\nmax_retries = 1\n");
    let why = problem(&errs, "retry.cancelled");
    assert!(why.contains("unknown key `cancelled` in [retry]") && why.contains("never retried"), "{why}");
}

#[test]
fn wrong_type_says_expected_and_found() {
    let errs = problems("[tasks]\ntimeout_mins = \"an hour\"\n");
    let why = problem(&errs, "tasks.timeout_mins");
    assert!(why.starts_with("expected a non-negative integer, found string \"an hour\""), "{why}");

    let errs = problems("[agents]\nmissed_heartbeats = -1\n");
    assert!(problem(&errs, "agents.missed_heartbeats").contains("found integer `-1`"), "{errs}");

    let errs = problems("[server]\nlisten = \"localhost:8080\"\nlog_format = \"xml\"\n");
    assert!(problem(&errs, "server.listen").contains("\"localhost:8080\""), "{errs}");
}

#[test]
fn a_secret_of_the_wrong_type_is_not_echoed() {
    let errs = problems("[forgejo]\ntoken = 8675309\n");
    let why = problem(&errs, "forgejo.token");
    assert!(why.contains("expected a string") && !why.contains("8675309"), "{why}");
}

#[test]
fn syntax_error_gives_line_and_column() {
    let errs = problems("[server]\nlisten = \"127.0.0.1:8080\"\nlog_level = info\n");
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = &errs.0[0];
    assert_eq!(e.key, "server.log_level", "{errs}");
    assert!(e.message.contains("line 3, column 13"), "{errs}");

    let errs = problems("[server\n");
    assert!(errs.0[0].key.starts_with("line 1, column "), "{errs}");
}

#[test]
fn problems_in_different_sections_are_all_reported() {
    let errs = problems(
        "[server]\nlisen = 1\n[tasks]\ntimeout_mins = \"x\"\n[retry.agent_lost]\nbase_secs = 0\n[labels]\ntodo = \"\"\n",
    );
    let keys: Vec<_> = errs.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["server.lisen", "tasks.timeout_mins", "retry.agent_lost.base_secs", "labels.todo"], "{errs}");
    assert_eq!(errs.to_string().lines().count(), 4);
}

#[test]
fn invalid_repo_names_are_reported_with_their_index() {
    let errs = problems("[forgejo]\nrepos = [\"acme/ok\", \"no-slash\", \"acme/ok\", \"a b/c\"]\n");
    assert!(problem(&errs, "forgejo.repos[1]").contains("owner/name"), "{errs}");
    assert!(problem(&errs, "forgejo.repos[2]").contains("listed twice"), "{errs}");
    assert!(problem(&errs, "forgejo.repos[3]").contains("\"a b/c\""), "{errs}");
    assert_eq!(errs.0.len(), 3, "{errs}");
    let c = parse("[forgejo]\nrepos = [\"acme/widgets\"]\n").unwrap();
    assert_eq!(c.forgejo.repo_names()[0].owner(), "acme");
}

#[test]
fn retry_cap_below_base_is_rejected() {
    let errs = problems("[retry.timeout]\nbase_secs = 600\ncap_secs = 60\n[retry.agent_error]\nbase_secs = 0\n");
    assert!(problem(&errs, "retry.timeout.cap_secs").contains("less than base_secs (600)"), "{errs}");
    assert!(problem(&errs, "retry.agent_error.base_secs").contains("at least 1"), "{errs}");
    assert!(parse("[retry.timeout]\nbase_secs = 60\ncap_secs = 60\n").is_ok(), "cap = base is fine");
}

#[test]
fn duplicate_status_label_names_are_rejected() {
    let errs =
        problems("[labels]\ndone = \"status:todo\"\nfailed = \" x \"\nneeds_prefix = \"type:\"\nagent_prefix = \"\"\n");
    assert!(problem(&errs, "labels.done").contains("already the label of labels.todo"), "{errs}");
    assert!(problem(&errs, "labels.failed").contains("spaces"), "{errs}");
    assert!(problem(&errs, "labels.needs_prefix").contains("labels.type_prefix"), "{errs}");
    assert!(problem(&errs, "labels.agent_prefix").contains("empty"), "{errs}");
    let errs = problems("[labels]\ndefault_priority = \"urgent\"\n");
    assert!(problem(&errs, "labels.default_priority").contains("`critical`"), "{errs}");
}

#[test]
fn urls_and_the_credentials_they_need_are_checked() {
    let errs = problems(
        "[forgejo]\nurl = \"forgejo.example\"\n[matrix]\nhomeserver_url = \"https://\"\nrooms = [\"general\"]\n",
    );
    assert!(problem(&errs, "forgejo.url").contains("http:// or https://"), "{errs}");
    assert!(problem(&errs, "forgejo.token").contains("FORGEFLEET_FORGEJO_TOKEN"), "{errs}");
    assert!(problem(&errs, "matrix.homeserver_url").contains("no host"), "{errs}");
    problem(&errs, "matrix.user");
    problem(&errs, "matrix.password");
    assert!(problem(&errs, "matrix.rooms[0]").contains("room id"), "{errs}");

    let env = |name: &str| (name == "FORGEFLEET_FORGEJO_TOKEN").then(|| "t".to_string());
    assert!(Config::from_toml_str("[forgejo]\nurl = \"http://localhost:3000\"\n", &env).is_ok(), "the env supplies it");
}

#[test]
fn zero_intervals_are_rejected() {
    let errs = problems(
        "[agents]\nheartbeat_interval_secs = 0\n[tasks]\ncheck_interval_secs = 0\n[api]\nmax_body_bytes = 0\n",
    );
    for key in ["agents.heartbeat_interval_secs", "tasks.check_interval_secs", "api.max_body_bytes"] {
        assert!(problem(&errs, key).contains("at least 1"), "{errs}");
    }
}

#[test]
fn a_bad_log_level_is_refused() {
    let errs = problems("[server]\nlog_level = \"forgefleet=loud\"\n");
    problem(&errs, "server.log_level");
    assert!(parse("[server]\nlog_level = \"warn,forgefleet=debug\"\n").is_ok());
}

#[test]
fn example_file_equals_defaults() {
    assert_eq!(parse(EXAMPLE).unwrap(), Config::default());
}

#[test]
fn example_file_shows_every_key() {
    let every_key = keys_of(&Config::default().effective_toml());
    assert!(every_key.len() > 40, "{every_key:?}");
    assert_eq!(keys_of(EXAMPLE), every_key, "config.example.toml and Config disagree on the keys");
}

#[test]
fn effective_toml_masks_secrets_and_round_trips() {
    let mut c = Config::default();
    c.server.log_format = LogFormat::Json;
    c.store.path = "/var/lib/forgefleet/db.sqlite".into();
    c.retry.rate_limited.cap_secs = 99_999;
    c.forgejo.url = Some("https://forgejo.example".into());
    c.forgejo.token = Some(Secret::new("tok-s3cret"));
    c.forgejo.repos = vec!["acme/widgets".into(), "acme/gadgets".into()];
    c.matrix.rooms = vec!["#fleet:example.org".into()];

    let text = c.effective_toml();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("token = \"***\""), "a set secret shows as ***:\n{text}");
    assert!(text.contains("webhook_secret = \"\""), "an unset secret shows as empty:\n{text}");

    let mut back = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back.forgejo.token.as_ref().map(Secret::expose), Some("***"));
    back.forgejo.token = c.forgejo.token.clone();
    assert_eq!(back, c);
}

#[test]
fn load_reads_a_file_and_names_one_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forgefleet.toml");
    std::fs::write(&path, "[tasks]\ntimeout_mins = 15\n").unwrap();
    assert_eq!(Config::load(Some(&path)).unwrap().tasks.timeout_mins, 15);

    let missing = dir.path().join("missing.toml");
    let errs = Config::load(Some(&missing)).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].key, missing.display().to_string());
    assert!(errs.0[0].message.contains("cannot read") && errs.0[0].message.contains("os error"), "{errs}");
}

#[test]
fn a_ca_file_must_hold_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let errs = problems(&format!("[forgejo]\nca_file = {:?}\n", missing));
    assert!(problem(&errs, "forgejo.ca_file").contains("cannot read"), "{errs}");

    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    let errs = problems(&format!("[forgejo]\nca_file = {:?}\n", junk));
    assert!(problem(&errs, "forgejo.ca_file").contains("holds no certificate"), "{errs}");

    let good = dir.path().join("ca.pem");
    let ca = rcgen::generate_simple_self_signed(vec!["forgejo.internal".to_string()]).unwrap();
    std::fs::write(&good, format!("# our CA\n{}", ca.cert.pem())).unwrap();
    let config = parse(&format!("[forgejo]\nca_file = {:?}\n", good)).unwrap();
    assert_eq!(config.forgejo.ca().unwrap().unwrap().certificates().len(), 1);
}

#[test]
fn matrix_defaults_are_the_contracts() {
    let m = parse("").unwrap().matrix;
    assert!(!m.enabled());
    assert_eq!((m.device_name.as_str(), m.progress_interval_secs, m.progress_max_lines), ("forgefleet", 5, 20));
    assert_eq!(m.notify, NotifyKind::ALL.to_vec());
    assert_eq!(m.default_room(), None);
}

#[test]
fn matrix_needs_exactly_one_way_to_log_in() {
    let errs = problems("[matrix]\nhomeserver_url = \"http://127.0.0.1:8008\"\nuser = \"bot\"\n");
    assert!(problem(&errs, "matrix.password").contains("FORGEFLEET_MATRIX_ACCESS_TOKEN"), "{errs}");

    let both = "[matrix]\nhomeserver_url = \"http://h\"\nuser = \"bot\"\npassword = \"p\"\naccess_token = \"t\"\n";
    let errs = problems(both);
    assert!(problem(&errs, "matrix.access_token").contains("matrix.password"), "{errs}");

    let env = |name: &str| (name == "FORGEFLEET_MATRIX_ACCESS_TOKEN").then(|| "syt_token".to_string());
    let c = Config::from_toml_str("[matrix]\nhomeserver_url = \"http://h\"\n", &env).unwrap();
    assert_eq!(c.matrix.access_token.as_ref().map(Secret::expose), Some("syt_token"), "a token needs no user");
    assert!(c.matrix.enabled());
}

#[test]
fn matrix_rooms_users_and_repos_are_checked_against_each_other() {
    let errs = problems(
        "[matrix]\nrooms = [\"#a:x\", \"#a:x\", \"!b\"]\ndefault_room = \"#c:x\"\nadmins = [\"alice\"]\n\
         progress_interval_secs = 0\nnotify = [\"assigned\"]\ndevice_name = \" \"\n\
         [matrix.users]\n\"@bob\" = \"bob\"\n\"@carol:x\" = \"\"\n\
         [matrix.repos]\n\"acme/app\" = [\"#elsewhere:x\"]\n\"nope\" = [\"#a:x\"]\n\"acme/empty\" = []\n",
    );
    assert!(problem(&errs, "matrix.rooms[1]").contains("listed twice"), "{errs}");
    assert!(problem(&errs, "matrix.default_room").contains("not one of matrix.rooms"), "{errs}");
    assert!(problem(&errs, "matrix.admins[0]").contains("@name:server"), "{errs}");
    assert!(problem(&errs, "matrix.progress_interval_secs").contains("at least 1"), "{errs}");
    assert!(problem(&errs, "matrix.device_name").contains("empty"), "{errs}");
    assert!(problem(&errs, "matrix.users.\"@bob\"").contains("@name:server"), "{errs}");
    assert!(problem(&errs, "matrix.users.\"@carol:x\"").contains("Forgejo user"), "{errs}");
    assert!(problem(&errs, "matrix.repos.\"acme/app\"").contains("#elsewhere:x"), "{errs}");
    assert!(problem(&errs, "matrix.repos.\"nope\"").contains("owner/name"), "{errs}");
    assert!(problem(&errs, "matrix.repos.\"acme/empty\"").contains("at least one room"), "{errs}");
    assert_eq!(errs.0.len(), 10, "{errs}");

    let errs = problems("[matrix]\nnotify = [\"everything\"]\n");
    assert!(problem(&errs, "matrix.notify[0]").contains("`agent_lost`"), "{errs}");
}

#[test]
fn a_repository_reports_to_its_own_rooms_else_the_default() {
    let c = parse(
        "[matrix]\nrooms = [\"#all:x\", \"#app:x\", \"!ops\"]\ndefault_room = \"!ops\"\n\
         [matrix.repos]\n\"acme/app\" = [\"#app:x\", \"#all:x\"]\n",
    )
    .unwrap();
    let app = RepoName::parse("acme/app").unwrap();
    let other = RepoName::parse("acme/other").unwrap();
    assert_eq!(c.matrix.rooms_for(&app), ["#app:x", "#all:x"]);
    assert_eq!(c.matrix.rooms_for(&other), ["!ops"]);
    let c = parse("[matrix]\nrooms = [\"#all:x\"]\n").unwrap();
    assert_eq!(c.matrix.default_room(), Some("#all:x"), "the first room when default_room is unset");
}

#[test]
fn every_notify_kind_is_a_chat_kind_by_the_same_name() {
    let names: Vec<&str> = NotifyKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, crate::core::CHAT_KINDS);
    for k in NotifyKind::ALL {
        assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.as_str()));
    }
}
