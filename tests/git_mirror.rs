//! forgefleet's repository mirror fetching over real smart HTTP (`git http-backend` behind `GitServer`) with a
//! token, then inspecting what it fetched.

mod support;

use std::path::Path;

use forgefleet::integrations::git::{FileStatus, GitError, Mirror};
use support::git::{GIT_TOKEN, GitServer, TestRepo, count_objects, git};

/// A served repository `acme/app` with `main` (two files) and pull request 1 (one modified, one added file).
struct Scene {
    _root: tempfile::TempDir,
    server: GitServer,
    repo: TestRepo,
    base: String,
    pr1: String,
    _mirror_dir: tempfile::TempDir,
    mirror: Mirror,
}

impl Scene {
    fn new() -> Scene {
        let root = tempfile::tempdir().unwrap();
        let server = GitServer::start(root.path());
        let repo = TestRepo::init_bare(root.path(), "acme/app");
        let base =
            repo.commit(&[("README.md", "# app\n"), ("src/lib.rs", "pub fn one() -> u32 {\n    1\n}\n")], "base");
        repo.push("main");
        repo.checkout("feature");
        let pr1 = repo.commit(
            &[
                ("src/lib.rs", "pub fn one() -> u32 {\n    2 - 1\n}\n"),
                ("src/two.rs", "pub fn two() -> u32 {\n    2\n}\n"),
            ],
            "Closes #1: add two",
        );
        repo.push_pull_head(1, &pr1);
        let mirror_dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open_or_init(&mirror_dir.path().join("acme").join("app.git")).unwrap();
        Scene { _root: root, server, repo, base, pr1, _mirror_dir: mirror_dir, mirror }
    }

    fn url(&self) -> String {
        self.server.url_of("acme/app")
    }

    fn fetch(&self, refspecs: &[&str]) -> forgefleet::integrations::git::FetchStats {
        self.mirror.fetch_with_stats(&self.url(), Some(GIT_TOKEN), refspecs).unwrap()
    }

    fn mirror_ref(&self, name: &str) -> String {
        git(self.mirror.path(), &["rev-parse", name])
    }
}

fn modes(stats: &forgefleet::integrations::git::FetchStats) -> Vec<(String, String)> {
    stats.refs.iter().map(|r| (r.local.clone().unwrap_or_default(), r.mode.clone())).collect()
}

/// True when `needle` appears in any file under `dir`.
fn appears_in_files(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            appears_in_files(&path, needle)
        } else {
            std::fs::read(&path).map(|bytes| bytes.windows(needle.len()).any(|w| w == needle)).unwrap_or(false)
        }
    })
}

#[test]
fn first_fetch_brings_the_branch_and_the_pull_head_and_inspect_reads_them() {
    let s = Scene::new();
    let stats = s.fetch(&["main", "refs/pull/1/head"]);
    assert_eq!(
        modes(&stats),
        vec![("refs/heads/main".to_owned(), "new".to_owned()), ("refs/pull/1/head".to_owned(), "new".to_owned())]
    );
    // base: commit, 2 trees, 2 blobs; pull head: commit, 2 trees, 2 blobs.
    assert_eq!(stats.objects_received, 10);
    assert!(stats.pack_bytes > 0);
    assert_eq!(s.mirror_ref("refs/heads/main"), s.base);
    assert_eq!(s.mirror_ref("refs/pull/1/head"), s.pr1);

    let got = s.mirror.inspect("main", &s.pr1).unwrap();
    assert!(got.head_exists);
    assert_eq!(got.merge_base.as_deref(), Some(s.base.as_str()));
    assert_eq!(got.commits, vec![s.pr1.clone()]);
    assert!(got.tree_changed);
    let files: Vec<_> =
        got.changed_files.iter().map(|f| (f.path.as_str(), f.status, f.additions, f.deletions)).collect();
    assert_eq!(files, vec![("src/lib.rs", FileStatus::Modified, 1, 1), ("src/two.rs", FileStatus::Added, 3, 0)]);

    // The token went over the wire only: not into the mirror's config, refs, logs or packs.
    assert!(!appears_in_files(s.mirror.path(), GIT_TOKEN.as_bytes()));
    let config = std::fs::read_to_string(s.mirror.path().join("config")).unwrap();
    assert!(!config.contains("127.0.0.1"), "no remote is saved: {config}");
}

#[test]
fn a_wrong_or_missing_token_is_an_auth_error_that_says_so() {
    let s = Scene::new();
    let wrong = "not-the-token-4711";
    let err = s.mirror.fetch(&s.url(), Some(wrong), &["main"]).unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("authentication failed") && text.contains("did not accept the token"), "{text}");
    assert!(!text.contains(wrong), "the token must not be in the message: {text}");

    let err = s.mirror.fetch(&s.url(), None, &["main"]).unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("no token was given"), "{err}");

    // Nothing was fetched, and the mirror is still usable with the right token.
    assert!(!s.mirror.inspect(&s.base, &s.pr1).map(|i| i.head_exists).unwrap_or(false));
    s.fetch(&["main", "refs/pull/1/head"]);
    assert!(s.mirror.inspect("main", &s.pr1).unwrap().head_exists);
}

#[test]
fn a_second_fetch_transfers_only_the_new_commit() {
    let s = Scene::new();
    s.fetch(&["main", "refs/pull/1/head"]);
    let before = count_objects(s.mirror.path());

    // Pull request 2: one more commit on top of pull request 1, adding one top-level file.
    let pr2 = s.repo.commit(&[("CHANGELOG.md", "- two\n")], "Closes #2: changelog");
    s.repo.push_pull_head(2, &pr2);
    let stats = s.fetch(&["main", "refs/pull/2/head"]);
    assert_eq!(
        modes(&stats),
        vec![
            ("refs/heads/main".to_owned(), "up-to-date".to_owned()),
            ("refs/pull/2/head".to_owned(), "new".to_owned())
        ]
    );
    // Exactly the new commit, its root tree and the new blob: nothing the mirror already had.
    assert_eq!(stats.objects_received, 3);
    assert_eq!(count_objects(s.mirror.path()), before + 3);

    let got = s.mirror.inspect("main", &pr2).unwrap();
    assert_eq!(got.commits, vec![pr2.clone(), s.pr1.clone()]);
    assert_eq!(got.changed_files.len(), 3);

    // Nothing new at all: no pack.
    let stats = s.fetch(&["main", "refs/pull/2/head"]);
    assert_eq!(stats.objects_received, 0);
    assert!(stats.refs.iter().all(|r| r.mode == "up-to-date"), "{stats:?}");
    assert_eq!(count_objects(s.mirror.path()), before + 3);
}

#[test]
fn after_a_force_push_the_new_head_is_fetched_and_the_old_one_stays_in_the_mirror() {
    let s = Scene::new();
    s.fetch(&["main", "refs/pull/1/head"]);
    let old = s.pr1.clone();

    // The author rewrites the pull request: same base, a different single commit.
    s.repo.reset_hard(&s.base);
    let new = s.repo.commit(&[("src/three.rs", "pub fn three() -> u32 {\n    3\n}\n")], "Closes #1: add three instead");
    s.repo.force_push("feature", &new);
    s.repo.push_pull_head(1, &new);

    let stats = s.fetch(&["main", "refs/pull/1/head"]);
    assert_eq!(stats.refs[1].local.as_deref(), Some("refs/pull/1/head"));
    assert_eq!(stats.refs[1].mode, "forced-update");
    assert_eq!(s.mirror_ref("refs/pull/1/head"), new);

    let got = s.mirror.inspect("main", &new).unwrap();
    assert_eq!(got.commits, vec![new.clone()]);
    let files: Vec<_> = got.changed_files.iter().map(|f| (f.path.as_str(), f.status, f.additions)).collect();
    assert_eq!(files, vec![("src/three.rs", FileStatus::Added, 3)]);

    // The mirror never deletes objects: the replaced head is still there and inspectable. Whether a receipt's
    // head is the pull request's *current* head is the Forgejo API check's job, not the mirror's.
    let stale = s.mirror.inspect("main", &old).unwrap();
    assert!(stale.head_exists);
    assert_eq!(stale.commits, vec![old.clone()]);

    // A mirror that first fetches after the force-push never sees the old head.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Mirror::open_or_init(fresh_dir.path()).unwrap();
    fresh.fetch(&s.url(), Some(GIT_TOKEN), &["main", "refs/pull/1/head"]).unwrap();
    assert!(!fresh.inspect("main", &old).unwrap().head_exists);
    assert!(fresh.inspect("main", &new).unwrap().head_exists);
}

#[test]
fn missing_repositories_refs_and_servers_are_told_apart() {
    let s = Scene::new();
    let err = s.mirror.fetch(&s.server.url_of("acme/nope"), Some(GIT_TOKEN), &["main"]).unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");

    let err = s.mirror.fetch(&s.url(), Some(GIT_TOKEN), &["main", "refs/pull/9/head"]).unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("refs/pull/9/head"), "{err}");
    let err = s.mirror.fetch(&s.url(), Some(GIT_TOKEN), &["refs/pull/9/head"]).unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");
    // Nothing was stored for the refs that did exist either: a fetch is all or nothing.
    assert!(!s.mirror.inspect("main", &s.pr1).unwrap().head_exists);
    assert!(matches!(s.mirror.inspect("main", &s.base), Ok(i) if !i.head_exists));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = s.mirror.fetch(&format!("http://{closed}/acme/app.git"), Some(GIT_TOKEN), &["main"]).unwrap_err();
    assert!(matches!(err, GitError::Network { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[test]
fn concurrent_fetches_into_one_mirror_both_succeed() {
    let s = Scene::new();
    let url = s.url();
    let url = url.as_str();
    std::thread::scope(|scope| {
        let a = scope.spawn(|| s.mirror.fetch(url, Some(GIT_TOKEN), &["main", "refs/pull/1/head"]));
        let other = Mirror::open_or_init(s.mirror.path()).unwrap();
        let b = scope.spawn(move || other.fetch(url, Some(GIT_TOKEN), &["refs/pull/1/head"]));
        a.join().unwrap().unwrap();
        b.join().unwrap().unwrap();
    });
    assert!(s.mirror.inspect("main", &s.pr1).unwrap().head_exists);
}

#[test]
fn the_server_speaks_smart_http_to_the_git_cli_including_gzipped_requests() {
    let s = Scene::new();
    // 40 pull heads make the fetch request larger than 1 KiB, which the git CLI sends gzip-compressed.
    for n in 10..50 {
        let sha = s.repo.commit(&[("n.txt", &format!("{n}\n"))], &format!("pr {n}"));
        s.repo.push_pull_head(n, &sha);
    }
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "--bare"]);
    git(dir.path(), &["fetch", "-q", &s.server.url_with_token("acme/app"), "+refs/pull/*/head:refs/pull/*/head"]);
    assert_eq!(git(dir.path(), &["for-each-ref", "--count=100", "refs/pull/"]).lines().count(), 41);

    let out = support::git::git_command(dir.path(), 0).args(["ls-remote", &s.url()]).output().unwrap();
    assert!(!out.status.success(), "no token, no access");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_accepts_the_token_scheme_and_challenges_without_it() {
    let s = tokio::task::spawn_blocking(Scene::new).await.unwrap();
    let url = format!("{}/info/refs?service=git-upload-pack", s.url());
    let client = reqwest::Client::new();

    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Basic realm=\"git\"");

    let response = client.get(&url).header("Authorization", format!("token {GIT_TOKEN}")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-git-upload-pack-advertisement");

    let response = client.get(&url).basic_auth("oauth2", Some(GIT_TOKEN)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = client.get(&url).basic_auth("oauth2", Some("nope")).send().await.unwrap();
    assert_eq!(response.status(), 401);

    // The mirror's blocking fetch from inside an async test, the way forgefleet runs it.
    let mirror = s.mirror.clone();
    let repo_url = s.url();
    tokio::task::spawn_blocking(move || mirror.fetch(&repo_url, Some(GIT_TOKEN), &["main"])).await.unwrap().unwrap();
    drop(s);
}
