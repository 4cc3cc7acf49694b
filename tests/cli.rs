//! The command line as an operator uses it: exit codes and messages for good and bad input.

mod support;

use support::{Home, stderr, stdout};

#[test]
fn config_check_prints_ok_and_the_effective_settings_with_secrets_masked() {
    let home = Home::with_config("[forgejo]\ntoken = \"very-secret-token\"\nrepos = [\"acme/app\"]\n");
    let out = home.run(&["config", "check", home.config().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ok\n"), "{text}");
    assert!(text.contains("# matrix: off (no [matrix] homeserver_url)"), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:"), "{text}");
    assert!(text.contains("***"), "{text}");
    assert!(!text.contains("very-secret-token"), "a secret leaked: {text}");
}

#[test]
fn a_broken_config_names_each_key_and_exits_2() {
    let home = Home::new();
    let bad = home.dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n\n[tasks]\ntimeout_mins = \"soon\"\n")
        .unwrap();
    let out = home.run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("lisen"), "{text}");
    assert!(text.contains("tasks.timeout_mins"), "{text}");

    // Every command refuses to start on it, with the same explanation.
    let out = std::process::Command::new(support::binary())
        .args(["serve", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("lisen"), "{}", stderr(&out));
}

#[test]
fn a_template_reading_a_name_its_context_lacks_stops_config_check_and_serve_naming_the_file_and_the_name() {
    let home = Home::new();
    let dir = home.dir.path().join("templates");
    std::fs::create_dir_all(&dir).unwrap();
    // `pr_link` is not something the completed comment is given: rendered leniently it would vanish.
    std::fs::write(dir.join("comment_completed.md"), "Done: {{ pr_link }}").unwrap();
    let config = std::fs::read_to_string(home.config()).unwrap();
    let config =
        config.replacen("[server]\n", &format!("[server]\ntemplates_dir = {:?}\n", dir.display().to_string()), 1);
    assert!(config.contains("templates_dir"), "{config}");
    std::fs::write(home.config(), config).unwrap();

    let out = home.run(&["config", "check", home.config().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("comment_completed.md") && text.contains("`pr_link`"), "{text}");
    assert!(text.contains("templates_dir"), "{text}");

    let out = home.run(&["serve"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(msg.contains("comment_completed.md") && msg.contains("`pr_link`"), "{msg}");
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let home = Home::new();
    let out = home.run(&["config", "check", "/nonexistent/forgefleet.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("cannot read"), "{}", stdout(&out));
}

#[test]
fn a_second_serve_on_the_same_database_refuses_and_says_who_holds_it() {
    let home = Home::new();
    let first = home.serve();
    let other = Home::new();
    // Same database, another port: only the lock can stop it.
    let config =
        std::fs::read_to_string(home.config()).unwrap().replace(&home.addr.to_string(), &other.addr.to_string());
    std::fs::write(other.config(), config).unwrap();
    let out = other.run(&["serve"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(msg.contains("in use") && msg.contains(&format!("pid {}", first.child.id())), "{msg}");
    let out = home.run(&["store", "rebuild"]);
    assert_eq!(out.status.code(), Some(2), "rebuild must not run under a live server: {}", stderr(&out));
    assert!(first.stop().success());
}

#[test]
fn a_corrupt_database_is_refused_with_exit_2() {
    let home = Home::new();
    std::fs::create_dir_all(home.db().parent().unwrap()).unwrap();
    std::fs::write(home.db(), b"this is not sqlite at all, just some text that fills the header.....").unwrap();
    for args in [&["serve"][..], &["status"], &["store", "rebuild"]] {
        let out = home.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("not a forgefleet database"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn tasks_and_status_show_the_queue_as_tables_and_json() {
    let home = Home::new();
    support::seed(&home.db(), &[("acme/app#1", &["status:todo", "priority:high"]), ("acme/app#2", &["status:todo"])]);
    let out = home.run(&["tasks"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(table.contains("acme/app#1") && table.contains("high"), "{table}");

    let out = home.run(&["tasks", "--json", "--state", "queued"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tasks"].as_array().unwrap().len(), 2);

    let out = home.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tasks"]["queued"], 2);
    assert_eq!(v["queue"]["high"], 1);
    assert_eq!(v["events"], 2);

    let out = home.run(&["status"]);
    assert!(stdout(&out).contains("queued 2"), "{}", stdout(&out));

    let out = home.run(&["tasks", "--state", "sleeping"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown state"), "{}", stderr(&out));
}

#[test]
fn store_rebuild_reports_what_it_rebuilt() {
    let home = Home::new();
    support::seed(&home.db(), &[("acme/app#1", &["status:todo"])]);
    let out = home.run(&["store", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("rebuilt 1 tasks and 0 agents from 1 events"), "{}", stdout(&out));
}

#[test]
fn status_without_a_database_says_where_it_looked() {
    let home = Home::new();
    let out = home.run(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
}

#[test]
fn status_shows_deliveries_that_wait_and_the_one_that_keeps_failing() {
    use forgefleet::core::{Effect, IssueRef, StatusLabel};
    use forgefleet::engine::{Command as C, Engine, EngineSettings, SystemClock};
    let home = Home::new();
    support::seed(&home.db(), &[("acme/app#1", &["status:todo"])]);
    let out = home.run(&["status"]);
    assert!(stdout(&out).contains("outbox: nothing waiting"), "{}", stdout(&out));

    // Two label writes wait; the first has failed three times (Forgejo says the token may not write).
    {
        let store = forgefleet::store::Store::open(&home.db()).unwrap();
        let mut engine = Engine::new(store, EngineSettings::default(), SystemClock);
        let issue: IssueRef = "acme/app#1".parse().unwrap();
        for _ in 0..2 {
            let effect = Effect::SetStatusLabel { issue: issue.clone(), status: Some(StatusLabel::Doing) };
            engine.execute(C::Enqueue(effect)).unwrap();
        }
        let id = engine.store.read().outbox_due(forgefleet::core::Timestamp(i64::MAX), 1).unwrap()[0].id;
        for _ in 0..3 {
            let error = "Forgejo answered 403: token does not have at least one of required scope(s)".to_string();
            engine.execute(C::OutboxFailed { id, error, retry_in: std::time::Duration::ZERO }).unwrap();
        }
    }
    let out = home.run(&["status"]);
    let text = stdout(&out);
    assert!(text.contains("outbox: 2 waiting (1 failing), the oldest written 20"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("outbox:") && l.ends_with(": forgejo 2")), "{text}");
    assert!(text.contains("worst: #1 forgejo set_status_label after 3 attempts: Forgejo answered 403"), "{text}");
    let out = home.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["outbox"]["waiting"].as_u64(), v["outbox"]["failing"].as_u64()), (Some(2), Some(1)));
    assert_eq!(v["outbox"]["worst"]["attempts"], 3);
    assert_eq!(v["outbox"]["worst"]["destination"], "forgejo");
}
