mod support;
use forgefleet::integrations::git::Mirror;
use support::git::{GIT_TOKEN, GitServer, TestRepo};
#[test]
fn scratch() {
    let root = tempfile::tempdir().unwrap();
    let server = GitServer::start(root.path());
    let repo = TestRepo::init_bare(root.path(), "acme/app");
    repo.commit(&[("a", "a\n")], "a");
    repo.push("main");
    let d = tempfile::tempdir().unwrap();
    let m = Mirror::open_or_init(d.path()).unwrap();
    let url = server.url_of("acme/app");
    for (u, t, s) in [
        (url.as_str(), Some("bad"), "main"),
        (url.as_str(), None, "main"),
        (&server.url_of("x/y")[..], Some(GIT_TOKEN), "main"),
        (url.as_str(), Some(GIT_TOKEN), "refs/pull/3/head"),
        ("http://127.0.0.1:1/a.git", Some(GIT_TOKEN), "main"),
    ] {
        let e = m.fetch(u, t, &[s]).unwrap_err();
        println!("{e}\n  {e:?}\n");
    }
    println!("{}", m.inspect("nope", &"a".repeat(40)).map(|i| format!("{i:?}")).unwrap_or_else(|e| e.to_string()));
    let head = repo.head();
    m.fetch(&url, Some(GIT_TOKEN), &["main"]).unwrap();
    println!("{}", m.inspect("nope", &head).unwrap_err());
    println!("requests {}", server.requests());
}
