//! The agent's sandbox, tried as a hostile agent would: the real `forgefleet agent` with the `command`
//! adapter standing for any agent that runs commands, two slots working on two tasks at once, against an
//! in-process forgefleet, the fake Forgejo and real git. Every attack is recorded by the agent itself in its
//! own checkout (which the runner commits), and checked from outside too.

mod support;

use std::process::Command;

use forgefleet::agent::check::{self, Forgejo as Check};
use support::eventually;
use support::runner::{AGENT_TOKEN, AGENT_USER, REPO, World};

/// Tries each attack and writes one line per attack into `attempts.txt`: `<attack>: <what happened>`.
/// `RUNNER`, `CONFIG` and `WORK` are filled in by the test; the runner's host pid comes in the prompt.
const HOSTILE: &str = r#"
r() { echo "$1: $2" >> attempts.txt; }
P=$(printf '%s' "$FORGEFLEET_PROMPT" | grep -o 'runner-pid-[0-9]*' | head -n 1 | cut -d- -f3)
r runner-pid "$P"
echo "mine $FORGEFLEET_TASK_ID" > secret.txt
touch started; while [ ! -e go ]; do sleep 0.05; done; rm -f started go
if [ -n "$P" ] && grep -q FORGEFLEET /proc/$P/environ 2>/dev/null; then r runner-environ read; else r runner-environ blocked; fi
found=blocked; for f in /proc/[0-9]*/environ; do grep -q "TOKEN_VALUE" "$f" 2>/dev/null && found=read; done; r any-environ $found
if env | grep -q "TOKEN_VALUE"; then r own-environment read; else r own-environment blocked; fi
if cat "CONFIG" > /dev/null 2>&1; then r runner-config read; else r runner-config blocked; fi
if [ -e "WORK/pids" ] || [ -e "WORK/agent-token" ]; then r runner-files seen; else r runner-files blocked; fi
if (mkdir -p "WORK/repos/acme/app.git/hooks" && echo 'exit 0' > "WORK/repos/acme/app.git/hooks/pre-push") 2>/dev/null && [ -e "WORK/repos/acme/app.git/objects" ]; then r cache-hook written; else r cache-hook blocked; fi
echo x > "HOST_TMP" 2>/dev/null; r host-tmp tried
if kill -9 "$P" 2>/dev/null; then r kill-runner signalled; else r kill-runner blocked; fi
# Up the chain of parents it can see, never past the runner (so that, unsandboxed, it hits nothing else).
p=$PPID; while [ -n "$p" ] && [ "$p" -gt 1 ]; do kill -9 "$p" 2>/dev/null; [ "$p" = "$P" ] && break; p=$(cut -d' ' -f4 /proc/$p/stat 2>/dev/null); done
[ "$PPID" = 1 ] && kill -9 1 2>/dev/null
r kill-parents survived
other=blocked; for d in "WORK/worktrees/"*; do [ "$d" != "$PWD" ] && [ -e "$d/secret.txt" ] && other=read; done; r other-checkout $other
homes=$(ls "WORK/homes" | wc -l); r other-homes "$homes visible"
echo "Tried everything."
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_agent_reaches_nothing_outside_its_checkout_and_its_tasks_still_complete() {
    let w = World::new(|_| {}).await;
    let work = w.root.path().join("agent/work");
    let config = w.root.path().join("agent/agent.toml");
    let host_tmp = std::env::temp_dir().join(format!("forgefleet-hostile-{}", std::process::id()));
    let script = HOSTILE
        .replace("TOKEN_VALUE", AGENT_TOKEN)
        .replace("CONFIG", &config.display().to_string())
        .replace("WORK", &work.display().to_string())
        .replace("HOST_TMP", &host_tmp.display().to_string());
    let sections = format!("max_concurrency = 2\n\n[command]\nrun = [\"sh\", \"-c\", {script:?}]\n");
    let mut agent = w.agent_with(&sections, "command", &[]);
    let runner = agent.pid();
    let body = format!("Please do it. runner-pid-{runner}");
    let (_, one) = w.queued_with_body("First", &body).await;
    let (_, two) = w.queued_with_body("Second", &body).await;
    // Both attempts run at once, each with its secret written, before either tries the other's checkout.
    eventually("both agents run at once", || async { w.checkouts_with("started").len() == 2 }).await;
    for checkout in w.checkouts() {
        std::fs::write(checkout.join("go"), "").unwrap();
    }
    for task in [one, two] {
        eventually("both tasks are completed", || async { w.state(task).await == "completed" }).await;
    }
    let bare = w.root.path().join("git").join(format!("{REPO}.git"));
    for task in [one, two] {
        let t = w.task(task).await;
        let head = t["task"]["receipt"]["head_sha"].as_str().unwrap().to_string();
        let attempts = support::git::git(&bare, &["show", &format!("{head}:attempts.txt")]);
        assert!(
            attempts.lines().any(|l| l == format!("runner-pid: {runner}")),
            "the prompt names the runner: {attempts}"
        );
        for line in [
            "runner-environ: blocked",
            "any-environ: blocked",
            "own-environment: blocked",
            "runner-config: blocked",
            "runner-files: blocked",
            "other-homes: 1 visible",
            "cache-hook: blocked",
            "kill-runner: blocked",
            "kill-parents: survived",
            "other-checkout: blocked",
        ] {
            assert!(attempts.lines().any(|l| l == line), "task {task}: {line:?} not in:\n{attempts}");
        }
    }
    assert!(agent.running(), "the runner survived its agents:\n{}", agent.log());
    assert!(!work.join("repos/acme/app.git/hooks/pre-push").exists(), "a hook reached the runner's cache");
    assert!(!host_tmp.exists(), "the agent wrote into the host's /tmp");
}

/// Runs `forgefleet agent` on a valid configuration with `PATH` set to `path`, and returns its exit code and
/// standard error. It never gets as far as the server.
fn start_with_path(extra: &str, path: &std::ffi::OsStr) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let text = format!(
        "[agent]\nname = \"a1\"\nserver = \"http://127.0.0.1:9\"\nregistration_token = \"r\"\nforgejo_url = \"http://127.0.0.1:9\"\nforgejo_token = \"f\"\n\
         work_dir = {:?}\n{extra}\n[command]\nrun = [\"true\"]\n",
        dir.path().join("work")
    );
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(support::binary())
        .args(["agent", "--config"])
        .arg(&config)
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Refusing is at once; a runner that started goes on trying to register: stop it after a moment.
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_runner_refuses_to_start_without_bubblewrap_and_says_how_to_fix_it() {
    let empty = tempfile::tempdir().unwrap();
    let (code, err) = start_with_path("", empty.path().as_os_str());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`bwrap` is not on PATH"), "{err}");
    assert!(err.contains("apt-get install bubblewrap") && err.contains("sandbox = \"none\""), "{err}");
}

#[test]
fn the_runner_refuses_to_start_where_bubblewrap_cannot_make_namespaces() {
    // A bwrap that fails as it does where user namespaces are not allowed.
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("bwrap");
    std::fs::write(&fake, "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path =
        std::env::join_paths([bin.path(), std::path::Path::new("/usr/bin"), std::path::Path::new("/bin")]).unwrap();
    let (code, err) = start_with_path("", &path);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot create the agent sandbox") && err.contains("No permissions to create new namespace"),
        "{err}"
    );
    assert!(err.contains("unprivileged_userns_clone"), "{err}");
}

#[test]
fn without_a_sandbox_the_runner_starts_and_warns() {
    let empty = tempfile::tempdir().unwrap();
    let (code, err) = start_with_path("sandbox = \"none\"\n", empty.path().as_os_str());
    assert_eq!(code, None, "it kept running, trying to reach the server: {err}");
    assert!(err.contains("sandbox = \\\"none\\\"") || err.contains("sandbox = \"none\""), "{err}");
    assert!(err.contains("can read its configuration"), "{err}");
}

fn check_config(server: &str, token: &str, work: &std::path::Path) -> forgefleet::agent::config::AgentConfig {
    let text = format!(
        "[agent]\nname = \"a1\"\nserver = {server:?}\nregistration_token = \"r\"\nforgejo_url = \"http://127.0.0.1:9\"\nforgejo_token = {token:?}\n\
         work_dir = {work:?}\n\n[command]\nrun = [\"sh\", \"-c\", \"true\"]\n"
    );
    forgefleet::agent::config::AgentConfig::from_toml_str(&text, &|_| None).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_check_says_ok_for_each_part_that_works_and_why_for_each_that_does_not() {
    let w = World::new(|_| {}).await;
    let work = w.root.path().join("check-work");
    let git_url = w.git.base_url();
    let target = Check { url: Some(w.forgejo.url()), git_url: Some(&git_url), repo: Some(REPO) };
    let lines = check::report(&check_config(&w.fleet.base, AGENT_TOKEN, &work), target).await;
    let shown: Vec<String> = lines.iter().map(ToString::to_string).collect();
    assert!(lines.iter().all(|l| l.result.is_ok()), "{shown:#?}");
    let whats: Vec<&str> = lines.iter().map(|l| l.what).collect();
    assert_eq!(whats, ["sandbox", "adapter", "server", "forgejo token", "forgejo repository", "git push"]);
    assert!(shown[0].starts_with("sandbox: ok (bubblewrap 0.") && shown[0].ends_with("namespaces work)"), "{shown:?}");
    assert!(shown[1].contains("command: /") && shown[1].ends_with("/sh)"), "{shown:?}");
    assert!(shown[3].contains(AGENT_USER), "{shown:?}");
    // Nothing was pushed: the probe is a dry run.
    assert_eq!(w.repo.remote_ref("refs/heads/forgefleet/check-push"), None);

    // The server unreachable, the token refused by Forgejo and by git.
    let lines = check::report(&check_config("http://127.0.0.1:9", "wrong-token", &work), target).await;
    let shown: Vec<String> = lines.iter().map(ToString::to_string).collect();
    assert!(lines[0].result.is_ok() && lines[1].result.is_ok(), "{shown:?}");
    assert!(shown[2].starts_with("server: GET http://127.0.0.1:9/healthz"), "{shown:?}");
    assert!(shown[3].starts_with("forgejo token: GET ") && shown[3].contains("401"), "{shown:?}");
    assert!(lines.iter().skip(4).all(|l| l.result.is_err()), "{shown:?}");
}

#[test]
fn agent_check_on_the_command_line_prints_a_line_each_and_fails_when_one_is_not_ok() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let text = format!(
        "[agent]\nname = \"a1\"\nserver = \"http://127.0.0.1:9\"\nregistration_token = \"r\"\nforgejo_url = \"http://127.0.0.1:9\"\nforgejo_token = \"f\"\n\
         work_dir = {:?}\n\n[command]\nrun = [\"sh\", \"-c\", \"true\"]\n",
        dir.path().join("work")
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(support::binary()).args(["agent", "--check", "--config"]).arg(&config).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("sandbox: ok (bubblewrap"), "{stdout}");
    assert!(lines[1].starts_with("adapter: ok (command: "), "{stdout}");
    assert!(lines[2].starts_with("server: GET http://127.0.0.1:9/healthz: "), "{stdout}");
    assert!(
        lines[3].starts_with("forgejo token: GET http://127.0.0.1:9/"),
        "the configured Forgejo is probed: {stdout}"
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
}

/// Runs one task whose agent tries to connect to the forgefleet server from inside its sandbox, with
/// `network` set as given; answers what the agent recorded.
async fn reach_the_server(network: &str) -> String {
    let w = World::new(|_| {}).await;
    let port = w.fleet.base.rsplit(':').next().unwrap().trim_end_matches('/').to_string();
    let script = format!(
        "if perl -MIO::Socket::INET -e 'exit(IO::Socket::INET->new(PeerAddr => \"127.0.0.1:{port}\", Timeout => 5) ? 0 : 1)'; \
         then echo reached > net.txt; else echo unreachable > net.txt; fi; echo 'Tried the network.'"
    );
    let sections = format!("network = {network:?}\n\n[command]\nrun = [\"sh\", \"-c\", {script:?}]\n");
    let (_, task) = w.queued("Network").await;
    let _agent = w.agent_with(&sections, "command", &[]);
    eventually("the task is completed", || async { w.state(task).await == "completed" }).await;
    let head = w.task(task).await["task"]["receipt"]["head_sha"].as_str().unwrap().to_string();
    let bare = w.root.path().join("git").join(format!("{REPO}.git"));
    support::git::git(&bare, &["show", &format!("{head}:net.txt")]).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_network_none_the_agent_reaches_nothing_and_with_host_it_reaches_the_hosts_network() {
    assert_eq!(reach_the_server("none").await, "unreachable");
    assert_eq!(reach_the_server("host").await, "reached");
}
