//! The repository mirror against the git CLI, both fetching over real smart HTTP from the same `GitServer`
//! (`git http-backend` as a CGI child per request, token auth) in the same run.
//!
//! Run: `cargo bench --bench git` (20,000 commits) or `FORGEFLEET_BENCH_QUICK=1 cargo bench --bench git`
//! (2,000 commits, a smoke test). `docs/git.md` has the numbers of the last run.
//!
//! - first validation: a fresh mirror fetches `main` + `refs/pull/1/head` (the clone-equivalent), against
//!   `git fetch` of the same two refs into a fresh bare repository;
//! - later validation: an up-to-date mirror fetches `main` + a new `refs/pull/N/head` (one new commit on top of
//!   main) and inspects it, against `git fetch` of the same refs into an equally up-to-date bare repository.
//!
//! Targets: later validations within 2x of `git fetch` and under 1 s.

mod common;
#[path = "../tests/support/git.rs"]
mod git;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::median;

use forgefleet::integrations::git::Mirror;
use git::{GIT_TOKEN, GitServer, fast_import, git_command};

const FILES: usize = 200;

fn main() {
    let quick = common::quick();
    let commits = if quick { 2_000 } else { 20_000 };
    let (first_runs, later_runs) = if quick { (3, 5) } else { (5, 11) };
    println!("git mirror benchmark: {commits} commits, {FILES} files, {first_runs} first / {later_runs} later runs");
    println!("git: {}", git_command(Path::new("."), 0).arg("--version").output().map(stdout).unwrap_or_default());

    let root = tempfile::tempdir().unwrap();
    let bare = root.path().join("acme").join("app.git");
    std::fs::create_dir_all(&bare).unwrap();
    git::git(&bare, &["init", "-q", "--bare", "-b", "main"]);

    let started = Instant::now();
    fast_import(&bare, &history(commits));
    let built = started.elapsed();
    git::git(&bare, &["repack", "-adq"]);
    let main_sha = git::git(&bare, &["rev-parse", "refs/heads/main"]);
    let pr1 = new_pull_head(&bare, 1, &main_sha, 1);
    println!(
        "built in {:.2} s with git fast-import (+ repack {:.2} s); pack {} KiB",
        built.as_secs_f64(),
        (started.elapsed() - built).as_secs_f64(),
        dir_size(&bare.join("objects").join("pack")) / 1024
    );

    let server = GitServer::start(root.path());
    let url = server.url_of("acme/app");
    let url_with_token = server.url_with_token("acme/app");
    let work = tempfile::tempdir().unwrap();

    // First validation: the clone-equivalent. Alternate who goes first so neither always gets the warm cache.
    let mut first_gix = Vec::new();
    let mut first_git = Vec::new();
    let mut requests = (0, 0);
    for run in 0..first_runs {
        let mirror_dir = work.path().join(format!("first-mirror-{run}"));
        let git_dir = work.path().join(format!("first-git-{run}"));
        let gix_run = || {
            let before = server.requests();
            let t = Instant::now();
            let mirror = Mirror::open_or_init(&mirror_dir).unwrap();
            mirror.fetch(&url, Some(GIT_TOKEN), &["main", "refs/pull/1/head"]).unwrap();
            let elapsed = t.elapsed();
            assert!(mirror.inspect("main", &pr1).unwrap().head_exists);
            (elapsed, server.requests() - before)
        };
        let git_run = || {
            let before = server.requests();
            let t = Instant::now();
            init_bare(&git_dir);
            git_fetch(&git_dir, &url_with_token, &["main", "refs/pull/1/head"]);
            (t.elapsed(), server.requests() - before)
        };
        let ((a, ra), (b, rb)) = if run % 2 == 0 {
            let a = gix_run();
            (a, git_run())
        } else {
            let b = git_run();
            (gix_run(), b)
        };
        first_gix.push(a);
        first_git.push(b);
        requests = (ra, rb);
        std::fs::remove_dir_all(&git_dir).ok();
        if run + 1 < first_runs {
            std::fs::remove_dir_all(&mirror_dir).ok();
        }
    }

    // Later validations: both sides up to date, then one new pull request head (one new commit) per run.
    let mirror = Mirror::open_or_init(&work.path().join(format!("first-mirror-{}", first_runs - 1))).unwrap();
    let git_dir = work.path().join("later-git");
    init_bare(&git_dir);
    git_fetch(&git_dir, &url_with_token, &["main", "refs/pull/1/head"]);
    let mut later_gix = Vec::new();
    let mut later_fetch_only = Vec::new();
    let mut later_inspect = Vec::new();
    let mut later_git = Vec::new();
    let mut later_requests = (0, 0);
    let mut received = 0;
    for run in 0..later_runs {
        let n = 100 + run as u64;
        let head = new_pull_head(&bare, n, &main_sha, n);
        let pull = format!("refs/pull/{n}/head");
        let gix_run = || {
            let before = server.requests();
            let t = Instant::now();
            let stats = mirror.fetch_with_stats(&url, Some(GIT_TOKEN), &["main", &pull]).unwrap();
            let fetched = t.elapsed();
            let inspection = mirror.inspect("main", &head).unwrap();
            let total = t.elapsed();
            assert!(inspection.head_exists && inspection.tree_changed && inspection.commits.len() == 1);
            (total, fetched, total - fetched, stats.objects_received, server.requests() - before)
        };
        let git_run = || {
            let before = server.requests();
            let t = Instant::now();
            git_fetch(&git_dir, &url_with_token, &["main", &pull]);
            (t.elapsed(), server.requests() - before)
        };
        let ((total, fetched, inspected, objects, rg), (b, rb)) = if run % 2 == 0 {
            let a = gix_run();
            (a, git_run())
        } else {
            let b = git_run();
            (gix_run(), b)
        };
        later_gix.push(total);
        later_fetch_only.push(fetched);
        later_inspect.push(inspected);
        later_git.push(b);
        later_requests = (rg, rb);
        received = objects;
    }

    // Inspecting a pull request forked from half-way back in history: the walk to the merge base is long.
    let old_base = git::git(&bare, &["rev-parse", &format!("main~{}", commits / 2)]);
    let forked = new_pull_head(&bare, 2, &old_base, 2);
    mirror.fetch(&url, Some(GIT_TOKEN), &["main", "refs/pull/2/head"]).unwrap();
    git_fetch(&git_dir, &url_with_token, &["main", "refs/pull/2/head"]);
    let mut deep_gix = Vec::new();
    let mut deep_git = Vec::new();
    let mut deep_files = 0;
    for _ in 0..later_runs {
        let t = Instant::now();
        let inspection = mirror.inspect("main", &forked).unwrap();
        deep_gix.push(t.elapsed());
        assert_eq!(inspection.merge_base.as_deref(), Some(old_base.as_str()));
        assert_eq!(inspection.commits.len(), 1);
        deep_files = inspection.changed_files.len();
        let t = Instant::now();
        let range = format!("main..{forked}");
        let log = git::git(&git_dir, &["rev-list", &range]);
        let numstat = git::git(&git_dir, &["diff", "--numstat", "-M", &format!("main...{forked}")]);
        deep_git.push(t.elapsed());
        assert_eq!(log.lines().count(), 1);
        assert_eq!(numstat.lines().count(), deep_files);
    }

    // Packs pile up, one per fetch that brings something, and gix cannot repack. A later validation (fetch of
    // a new head + inspect) with many small packs, the repack `Mirror::maintain` runs past 50, and after it.
    let pile = 64;
    let mut n = 1_000;
    let mut validate_new_head = |mirror: &Mirror| {
        n += 1;
        let head = new_pull_head(&bare, n, &main_sha, n);
        let pull = format!("refs/pull/{n}/head");
        let t = Instant::now();
        mirror.fetch(&url, Some(GIT_TOKEN), &["main", &pull]).unwrap();
        assert!(mirror.inspect("main", &head).unwrap().tree_changed);
        t.elapsed()
    };
    while mirror.pack_count() < pile {
        validate_new_head(&mirror);
    }
    let piled = mirror.pack_count();
    let with_pile = median((0..later_runs).map(|_| validate_new_head(&mirror)).collect());
    let t = Instant::now();
    let repacked = mirror.maintain(50).unwrap().expect("past 50 packs the mirror is repacked");
    let repack_time = t.elapsed();
    let after_repack = median((0..later_runs).map(|_| validate_new_head(&mirror)).collect());

    let first_gix_median = median(first_gix);
    let first_git_median = median(first_git);
    let later_gix_median = median(later_gix);
    let later_git_median = median(later_git);
    println!();
    println!("| step | forgefleet mirror (gix) | git fetch | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| first validation: fetch main + refs/pull/1/head into an empty repo | {} ms | {} ms | {:.2}x |",
        ms(first_gix_median),
        ms(first_git_median),
        ratio(first_gix_median, first_git_median)
    );
    println!(
        "| later validation: fetch main + 1 new PR head (1 commit) + inspect | {} ms | {} ms | {:.2}x |",
        ms(later_gix_median),
        ms(later_git_median),
        ratio(later_gix_median, later_git_median)
    );
    println!(
        "| - of which fetch / inspect | {} ms / {} ms | | {:.2}x (fetch only) |",
        ms(median(later_fetch_only.clone())),
        ms(median(later_inspect)),
        ratio(median(later_fetch_only), later_git_median)
    );
    let (deep_gix_median, deep_git_median) = (median(deep_gix), median(deep_git));
    println!(
        "| inspect only, PR forked {} commits back ({deep_files} changed files) | {} ms | {} ms \
         (rev-list + diff --numstat) | {:.2}x |",
        commits / 2,
        ms(deep_gix_median),
        ms(deep_git_median),
        ratio(deep_gix_median, deep_git_median)
    );
    println!(
        "| later validation with {piled} packs / after `git repack --geometric=2 -d` ({} -> {} packs, {} ms) | \
         {} ms / {} ms | | {:.2}x |",
        repacked.packs_before,
        repacked.packs_after,
        ms(repack_time),
        ms(with_pile),
        ms(after_repack),
        ratio(after_repack, with_pile)
    );
    println!();
    println!(
        "HTTP requests per operation: first {} (gix) vs {} (git); later {} (gix) vs {} (git). \
         Objects received by a later fetch: {received}.",
        requests.0, requests.1, later_requests.0, later_requests.1
    );
    let within_2x = later_gix_median <= later_git_median * 2;
    let under_1s = later_gix_median < Duration::from_secs(1);
    println!(
        "targets: later validation within 2x of git fetch: {} ({:.2}x); under 1 s: {} ({} ms)",
        verdict(within_2x),
        ratio(later_gix_median, later_git_median),
        verdict(under_1s),
        ms(later_gix_median)
    );
    drop(server);
}

/// A linear history on `main`: commit i rewrites one of `FILES` files (in a few directories) with a few lines.
fn history(commits: usize) -> Vec<u8> {
    let mut stream = Vec::with_capacity(commits * 400);
    for i in 0..commits {
        let when = 1_600_000_000 + i as u64 * 60;
        let path = format!("src/m{}/file{}.rs", i % 10, i % FILES);
        let content = format!(
            "// file {} revision {i}\npub fn value() -> u64 {{\n    {i}\n}}\n\npub const NAME: &str = \"{path}\";\n",
            i % FILES
        );
        let message = format!("change {i}: update {path}\n");
        write!(
            stream,
            "commit refs/heads/main\nmark :{}\nauthor Test Author <author@example.test> {when} +0000\n\
             committer Test Committer <committer@example.test> {when} +0000\ndata {}\n{message}",
            i + 1,
            message.len()
        )
        .unwrap();
        if i > 0 {
            writeln!(stream, "from :{i}").unwrap();
        }
        writeln!(stream, "M 100644 inline {path}\ndata {}\n{content}", content.len()).unwrap();
    }
    stream
}

/// `refs/pull/<n>/head`: one new commit on top of `base` that adds one file. Returns its sha.
fn new_pull_head(bare: &Path, n: u64, base: &str, seed: u64) -> String {
    let when = 1_700_000_000 + seed * 60;
    let content = format!("pull request {n}\nseed {seed}\n");
    let message = format!("Closes #{n}\n");
    let stream = format!(
        "commit refs/pull/{n}/head\nauthor Test Author <author@example.test> {when} +0000\n\
         committer Test Committer <committer@example.test> {when} +0000\ndata {}\n{message}from {base}\n\
         M 100644 inline pulls/{n}.txt\ndata {}\n{content}\n",
        message.len(),
        content.len()
    );
    fast_import(bare, stream.as_bytes());
    git::git(bare, &["rev-parse", &format!("refs/pull/{n}/head")])
}

fn init_bare(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git::git(dir, &["init", "-q", "--bare"]);
}

/// `git fetch` of `refs` (short branch names or full refs) into the same names, forced, like the mirror does.
fn git_fetch(dir: &Path, url: &str, refs: &[&str]) {
    let mut args = vec!["fetch".to_owned(), "-q".to_owned(), "--no-tags".to_owned(), url.to_owned()];
    for r in refs {
        let full = if r.starts_with("refs/") { r.to_string() } else { format!("refs/heads/{r}") };
        args.push(format!("+{full}:{full}"));
    }
    let out = git_command(dir, 0).args(&args).output().unwrap();
    assert!(out.status.success(), "git fetch failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn stdout(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
