//! `inspect` on repositories built with the git CLI and pushed straight into a mirror directory.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A working repository whose commits are pushed into a `Mirror` on the local file system.
struct Fixture {
    _dir: tempfile::TempDir,
    work: PathBuf,
    mirror: Mirror,
    clock: AtomicU64,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mirror = Mirror::open_or_init(&dir.path().join("mirrors").join("acme").join("app.git")).unwrap();
        let fixture = Fixture { _dir: dir, work, mirror, clock: AtomicU64::new(1_700_000_000) };
        fixture.git(&["init", "-q", "-b", "main"]);
        fixture
    }

    /// Runs git in the work tree without the machine's config, with a fixed identity and a clock that moves
    /// forward one minute per call so commit order is well defined.
    fn git(&self, args: &[&str]) -> String {
        let when = format!("@{} +0000", self.clock.fetch_add(60, Ordering::SeqCst));
        let out = Command::new("git")
            .args(args)
            .current_dir(&self.work)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.test")
            .env("GIT_COMMITTER_NAME", "Test Committer")
            .env("GIT_COMMITTER_EMAIL", "committer@example.test")
            .env("GIT_AUTHOR_DATE", &when)
            .env("GIT_COMMITTER_DATE", &when)
            .output()
            .expect("git is installed");
        assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn write(&self, path: &str, content: &[u8]) {
        let file = self.work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }

    fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            self.write(path, content.as_bytes());
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Pushes every local branch into the mirror under the same name (the test's stand-in for `Mirror::fetch`).
    fn sync(&self) {
        let target = self.mirror.path().to_str().unwrap().to_owned();
        self.git(&["push", "-q", "--force", &target, "refs/heads/*:refs/heads/*"]);
    }

    /// A fixture whose every push lands in the mirror as a pack of its own, as each fetch does (git's own
    /// `gc --auto` after a push is off, so they pile up), with a first commit on `main` already pushed.
    fn piling_packs() -> (Fixture, String) {
        let f = Fixture::new();
        let config = f.mirror.path().join("config");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str("[receive]\n\tunpackLimit = 1\n\tautogc = false\n");
        std::fs::write(&config, text).unwrap();
        let base = f.commit(&[("README.md", "hello\n")], "start");
        f.sync();
        (f, base)
    }

    fn inspect(&self, base: &str, head: &str) -> Inspection {
        self.mirror.inspect(base, head).unwrap()
    }

    /// `git diff --numstat -M base...head` as (path, additions, deletions), `-` for binary counted as 0.
    fn numstat(&self, base: &str, head: &str) -> Vec<(String, u64, u64)> {
        let out = self.git(&["diff", "--numstat", "-M", &format!("{base}...{head}")]);
        let mut rows: Vec<_> = out
            .lines()
            .map(|line| {
                let mut parts = line.splitn(3, '\t');
                let add = parts.next().unwrap().parse().unwrap_or(0);
                let del = parts.next().unwrap().parse().unwrap_or(0);
                (rename_target(parts.next().unwrap()), add, del)
            })
            .collect();
        rows.sort();
        rows
    }
}

/// `old.txt => new.txt` or `dir/{a => b}/f` as numstat prints renames, reduced to the new path.
fn rename_target(path: &str) -> String {
    if let (Some(open), Some(close)) = (path.find('{'), path.find('}')) {
        let inner = &path[open + 1..close];
        let new = inner.split(" => ").nth(1).unwrap_or(inner);
        return format!("{}{}{}", &path[..open], new, &path[close + 1..]).replace("//", "/");
    }
    path.split(" => ").last().unwrap().to_owned()
}

fn summary(inspection: &Inspection) -> Vec<(String, FileStatus, u64, u64)> {
    inspection.changed_files.iter().map(|f| (f.path.clone(), f.status, f.additions, f.deletions)).collect()
}

fn lines(n: usize, prefix: &str) -> String {
    (1..=n).map(|i| format!("{prefix} line {i}\n")).collect()
}

#[test]
fn a_normal_change_lists_its_commits_files_and_lines() {
    let f = Fixture::new();
    let base = f.commit(&[("src/a.txt", &lines(3, "a")), ("README", "hello\n")], "base");
    f.git(&["checkout", "-q", "-b", "feature"]);
    let first = f.commit(&[("src/a.txt", "a line 1\nchanged\na line 3\n")], "change a");
    let head = f.commit(&[("src/b.txt", "one\ntwo\n")], "add b");
    f.sync();

    let got = f.inspect("main", &head);
    assert!(got.head_exists);
    assert_eq!(got.merge_base.as_deref(), Some(base.as_str()));
    assert_eq!(got.commits, vec![head.clone(), first]);
    assert!(got.tree_changed);
    assert_eq!(
        summary(&got),
        vec![("src/a.txt".to_owned(), FileStatus::Modified, 1, 1), ("src/b.txt".to_owned(), FileStatus::Added, 2, 0),]
    );
    assert_eq!((got.additions(), got.deletions()), (3, 1));

    // The same answers with the base given as a full ref name or as a commit id.
    assert_eq!(f.inspect("refs/heads/main", &head), got);
    assert_eq!(f.inspect(&base, &head), got);
}

#[test]
fn an_empty_commit_has_commits_but_no_tree_change() {
    let f = Fixture::new();
    let base = f.commit(&[("a.txt", "a\n")], "base");
    f.git(&["checkout", "-q", "-b", "feature"]);
    let head = f.commit(&[], "nothing at all");
    f.sync();

    let got = f.inspect("main", &head);
    assert!(got.head_exists);
    assert_eq!(got.merge_base.as_deref(), Some(base.as_str()));
    assert_eq!(got.commits, vec![head]);
    assert!(!got.tree_changed);
    assert!(got.changed_files.is_empty());
}

#[test]
fn a_change_that_is_reverted_leaves_the_tree_unchanged() {
    let f = Fixture::new();
    f.commit(&[("a.txt", "a\n")], "base");
    f.git(&["checkout", "-q", "-b", "feature"]);
    f.commit(&[("a.txt", "b\n")], "change");
    let head = f.commit(&[("a.txt", "a\n")], "undo");
    f.sync();

    let got = f.inspect("main", &head);
    assert_eq!(got.commits.len(), 2);
    assert!(!got.tree_changed);
    assert!(got.changed_files.is_empty());
}

#[test]
fn the_head_at_base_has_no_commits() {
    let f = Fixture::new();
    let base = f.commit(&[("a.txt", "a\n")], "base");
    f.sync();

    let got = f.inspect("main", &base);
    assert!(got.head_exists);
    assert_eq!(got.merge_base.as_deref(), Some(base.as_str()));
    assert!(got.commits.is_empty());
    assert!(!got.tree_changed);
}

#[test]
fn a_missing_head_is_not_an_error() {
    let f = Fixture::new();
    f.commit(&[("a.txt", "a\n")], "base");
    f.sync();

    let got = f.inspect("main", "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(got, Inspection::missing_head());
    // A SHA-256 id cannot be in a SHA-1 mirror either.
    assert!(!f.inspect("main", &"ab".repeat(32)).head_exists);

    // A head the working repository has but the mirror was never given.
    f.git(&["checkout", "-q", "-b", "feature"]);
    let unsynced = f.commit(&[("b.txt", "b\n")], "not pushed");
    assert!(!f.inspect("main", &unsynced).head_exists);
}

#[test]
fn bad_input_and_unknown_bases_are_errors_that_say_so() {
    let f = Fixture::new();
    let base = f.commit(&[("a.txt", "a\n")], "base");
    f.sync();

    for bad in ["main", "abc123", "zz23456789abcdef0123456789abcdef01234567"] {
        let err = f.mirror.inspect("main", bad).unwrap_err();
        assert!(matches!(err, GitError::Invalid { what: "head", .. }), "{bad}: {err}");
    }
    let err = f.mirror.inspect("no-such-branch", &base).unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-branch"), "{err}");

    // A tree id is an object in the mirror, but not a commit.
    let tree = f.git(&["rev-parse", "HEAD^{tree}"]);
    let err = f.mirror.inspect("main", &tree).unwrap_err();
    assert!(err.to_string().contains("not a commit"), "{err}");
}

#[test]
fn the_merge_base_stays_put_when_the_base_branch_moves_on() {
    let f = Fixture::new();
    let fork = f.commit(&[("shared.txt", &lines(5, "s"))], "fork point");
    f.git(&["checkout", "-q", "-b", "feature"]);
    let head = f.commit(&[("feature.txt", "f\n")], "feature work");
    f.git(&["checkout", "-q", "main"]);
    let moved = f.commit(&[("main-only.txt", &lines(4, "m")), ("shared.txt", &lines(6, "s"))], "main moves on");
    f.sync();

    let got = f.inspect("main", &head);
    assert_eq!(got.merge_base.as_deref(), Some(fork.as_str()));
    assert_eq!(got.commits, vec![head.clone()]);
    // Only the pull request's own change: not the reverse of what happened on main since the fork.
    assert_eq!(summary(&got), vec![("feature.txt".to_owned(), FileStatus::Added, 1, 0)]);
    assert_ne!(moved, fork);
}

#[test]
fn unrelated_histories_have_no_merge_base_and_everything_is_added() {
    let f = Fixture::new();
    f.commit(&[("a.txt", "a\n")], "base");
    f.git(&["checkout", "-q", "--orphan", "other"]);
    f.git(&["rm", "-q", "-rf", "."]);
    let head = f.commit(&[("x.txt", "x\ny\n")], "unrelated");
    f.sync();

    let got = f.inspect("main", &head);
    assert_eq!(got.merge_base, None);
    assert_eq!(got.commits, vec![head]);
    assert!(got.tree_changed);
    assert_eq!(summary(&got), vec![("x.txt".to_owned(), FileStatus::Added, 2, 0)]);
}

#[test]
fn added_deleted_renamed_and_binary_files_count_like_git_numstat() {
    let f = Fixture::new();
    f.commit(
        &[("docs/old-name.md", &lines(10, "doc")), ("gone.txt", &lines(4, "gone")), ("keep.txt", "keep\n")],
        "base",
    );
    f.write("image.bin", &[0u8, 1, 2, 3, 0, 255, 10, 0]);
    f.commit(&[], "add a binary");
    let base = f.git(&["rev-parse", "HEAD"]);
    f.git(&["checkout", "-q", "-b", "feature"]);
    f.git(&["mv", "docs/old-name.md", "docs/new-name.md"]);
    let mut renamed = lines(10, "doc");
    renamed = renamed.replace("doc line 5\n", "doc line five\n");
    f.git(&["rm", "-q", "gone.txt"]);
    f.write("image.bin", &[0u8, 9, 9, 9, 0, 1]);
    f.write("new-binary.bin", &[0u8, 0, 0, 7]);
    let head = f.commit(&[("docs/new-name.md", &renamed), ("added.txt", &lines(3, "new"))], "reshape");
    f.sync();

    let got = f.inspect("main", &head);
    assert_eq!(got.merge_base.as_deref(), Some(base.as_str()));
    assert_eq!(
        summary(&got),
        vec![
            ("added.txt".to_owned(), FileStatus::Added, 3, 0),
            ("docs/new-name.md".to_owned(), FileStatus::Renamed, 1, 1),
            ("gone.txt".to_owned(), FileStatus::Deleted, 0, 4),
            ("image.bin".to_owned(), FileStatus::Modified, 0, 0),
            ("new-binary.bin".to_owned(), FileStatus::Added, 0, 0),
        ]
    );
    let rename = got.changed_files.iter().find(|c| c.status == FileStatus::Renamed).unwrap();
    assert_eq!(rename.previous_path.as_deref(), Some("docs/old-name.md"));

    // And the same numbers `git diff --numstat -M` prints.
    let ours: Vec<_> = got.changed_files.iter().map(|c| (c.path.clone(), c.additions, c.deletions)).collect();
    assert_eq!(ours, f.numstat("main", &head));
}

#[test]
fn gitattributes_in_the_head_can_mark_text_as_binary() {
    let f = Fixture::new();
    f.commit(&[("data.csv", "a,b\n1,2\n")], "base");
    f.git(&["checkout", "-q", "-b", "feature"]);
    let head = f.commit(&[(".gitattributes", "*.csv binary\n"), ("data.csv", "a,b\n1,2\n3,4\n")], "csv is binary");
    f.sync();

    let got = f.inspect("main", &head);
    assert_eq!(
        summary(&got),
        vec![
            (".gitattributes".to_owned(), FileStatus::Added, 1, 0),
            ("data.csv".to_owned(), FileStatus::Modified, 0, 0),
        ]
    );
}

#[test]
fn open_or_init_reuses_the_mirror_and_refuses_a_work_tree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.git");
    let first = Mirror::open_or_init(&path).unwrap();
    assert!(path.join("HEAD").is_file());
    let again = Mirror::open_or_init(&path).unwrap();
    assert_eq!(first.path(), again.path());

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let status = Command::new("git").args(["init", "-q"]).current_dir(&work).status().unwrap();
    assert!(status.success());
    let err = Mirror::open_or_init(&work).unwrap_err();
    assert!(matches!(err, GitError::Mirror { .. }), "{err}");

    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    assert!(Mirror::open_or_init(&not_a_dir.join("sub")).is_err());
}

#[test]
fn fetch_rejects_bad_urls_and_refspecs_before_touching_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::open_or_init(&dir.path().join("m.git")).unwrap();
    let cases: [(&str, &[&str]); 4] = [
        ("file:///tmp/x.git", &["main"]),
        ("ssh://git@example.test/x.git", &["main"]),
        ("https://bot:secret@example.test/x.git", &["main"]),
        ("https://example.test/x.git", &[]),
    ];
    for (url, specs) in cases {
        let err = mirror.fetch(url, Some("tok"), specs).unwrap_err();
        assert!(matches!(err, GitError::Invalid { .. }), "{url}: {err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

#[test]
fn refspecs_without_a_destination_keep_their_name() {
    assert_eq!(mirror::normalize_refspec("main").unwrap(), "+refs/heads/main:refs/heads/main");
    assert_eq!(mirror::normalize_refspec("refs/pull/7/head").unwrap(), "+refs/pull/7/head:refs/pull/7/head");
    assert_eq!(mirror::normalize_refspec("+refs/heads/*:refs/heads/*").unwrap(), "+refs/heads/*:refs/heads/*");
    assert_eq!(mirror::normalize_refspec("refs/a:refs/b").unwrap(), "refs/a:refs/b");
    assert!(mirror::normalize_refspec("").is_err());
}

#[allow(dead_code)]
fn _assert_send_sync(m: Mirror) -> impl Send + Sync {
    m
}

#[test]
fn each_repository_has_its_own_mirror_directory() {
    let data = std::path::Path::new("/var/lib/forgefleet");
    assert_eq!(Mirror::dir_for(data, "acme/app").unwrap(), data.join("mirrors/acme/app.git"));
    assert_eq!(Mirror::dir_for(data, "acme/app.git").unwrap(), data.join("mirrors/acme/app.git"));
    for bad in ["app", "acme/../x", "../acme", "acme/a/b", "acme/", "/app", "acme/ap p"] {
        assert!(matches!(Mirror::dir_for(data, bad), Err(GitError::Invalid { .. })), "{bad}");
    }
}

#[test]
fn many_small_packs_are_merged_and_everything_stays_readable() {
    let (f, base) = Fixture::piling_packs();
    let mut head = base.clone();
    for i in 0..5 {
        head = f.commit(&[(&format!("src/{i}.rs"), &lines(20, &format!("f{i}")))], &format!("step {i}"));
        f.sync();
    }
    let before = f.mirror.pack_count();
    assert_eq!(before, 6, "one pack per push");
    let expected = summary(&f.inspect(&base, &head));

    assert_eq!(f.mirror.maintain(before).unwrap(), None, "at the limit nothing is done");
    let repacked = f.mirror.maintain(3).unwrap().expect("over the limit the packs are merged");
    assert_eq!(repacked.packs_before, 6);
    assert!(repacked.packs_after < 3, "{repacked:?}");
    assert_eq!(f.mirror.pack_count(), repacked.packs_after);

    // The same mirror handle, and a fresh one, still read every object and ref.
    assert_eq!(summary(&f.inspect(&base, &head)), expected);
    let reopened = Mirror::open_or_init(f.mirror.path()).unwrap();
    assert_eq!(summary(&reopened.inspect("refs/heads/main", &head).unwrap()).len(), 0);
    assert_eq!(summary(&reopened.inspect(&base, &head).unwrap()), expected);
}

#[test]
fn without_git_a_repack_says_what_to_do() {
    let f = Fixture::new();
    f.commit(&[("a", "a\n")], "one");
    f.sync();
    let err = f.mirror.repack_with(std::ffi::OsStr::new("/nonexistent/git")).unwrap_err().to_string();
    assert!(err.contains("install git") && err.contains("delete the mirror"), "{err}");
}

#[test]
fn one_mirror_handle_keeps_reading_while_packs_pile_up() {
    let (f, base) = Fixture::piling_packs();
    // gix sizes its table of pack indexes when the repository is opened; each push (like each fetch) adds a
    // pack that the same handle must then find.
    for i in 0..70 {
        let head = f.commit(&[(&format!("f{i}"), "x\n")], &format!("step {i}"));
        f.sync();
        let inspection = f.mirror.inspect(&base, &head).unwrap_or_else(|e| panic!("after {} packs: {e}", i + 2));
        assert_eq!(inspection.commits.len(), i + 1);
    }
    assert_eq!(f.mirror.pack_count(), 71);
}
