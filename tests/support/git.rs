//! Real git for tests: a smart-HTTP server that runs `git http-backend` (the CGI that ships with git) for every
//! request, and repositories built with the git CLI.
//!
//! [`GitServer::start`] serves every bare repository under a root directory on `http://127.0.0.1:PORT/<path>`,
//! requiring a token like Forgejo does: `Authorization: Basic <user:TOKEN>` (any user name) or
//! `Authorization: token TOKEN`; anything else gets 401 with `WWW-Authenticate: Basic realm="git"`. The server has
//! its own tokio runtime on its own threads, so it keeps answering while a test blocks in a (blocking) fetch, from
//! plain `#[test]`s and from async tests on any runtime flavour. Dropping it stops the server and kills any CGI
//! child still running. [`router`] gives the same handler to mount inside another axum app.
//!
//! Request bodies are buffered and handed to the CGI with an exact `CONTENT_LENGTH`, so chunked uploads work; a
//! `Content-Encoding: gzip` body (the git CLI gzips requests over 1 KiB) is passed through with
//! `HTTP_CONTENT_ENCODING`, and `git http-backend` inflates it itself.
//!
//! Every git command here runs without the machine's config (`GIT_CONFIG_GLOBAL=/dev/null`,
//! `GIT_CONFIG_NOSYSTEM=1`) and with a fixed author, committer and a clock that moves one minute per command.
//!
//! Also compiled standalone by `benches/git.rs` (`#[path]`), so it only uses dev-dependencies.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The token [`GitServer::start`] requires.
pub const GIT_TOKEN: &str = "git-test-token";

/// A running smart-HTTP git server over the bare repositories under one root directory.
pub struct GitServer {
    addr: std::net::SocketAddr,
    token: String,
    tokens: Tokens,
    root: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    children: Children,
    requests: Arc<AtomicU64>,
}

/// PIDs of the CGI children still running, so dropping the server can kill them.
type Children = Arc<Mutex<HashMap<u64, u32>>>;

/// Every token the server takes (like the tokens of several Forgejo users).
type Tokens = Arc<Mutex<Vec<String>>>;

struct Shared {
    root: PathBuf,
    tokens: Tokens,
    backend: PathBuf,
    children: Children,
    next_child: AtomicU64,
    requests: Arc<AtomicU64>,
}

impl GitServer {
    /// Serves every bare repository under `root`, requiring [`GIT_TOKEN`].
    pub fn start(root: &Path) -> GitServer {
        GitServer::start_with_token(root, GIT_TOKEN)
    }

    pub fn start_with_token(root: &Path, token: &str) -> GitServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("git-server")
            .enable_all()
            .build()
            .expect("git server runtime");
        let children: Children = Arc::default();
        let tokens: Tokens = Arc::new(Mutex::new(vec![token.to_owned()]));
        let requests = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            root: root.to_owned(),
            tokens: tokens.clone(),
            backend: http_backend(),
            children: children.clone(),
            next_child: AtomicU64::new(0),
            requests: requests.clone(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind git server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("git server listener");
            let _ = axum::serve(listener, router_with(shared)).await;
        });
        GitServer {
            addr,
            token: token.to_owned(),
            tokens,
            root: root.to_owned(),
            runtime: Some(runtime),
            children,
            requests,
        }
    }

    /// `http://127.0.0.1:PORT/acme/app.git` for `acme/app` (or `acme/app.git`).
    pub fn url_of(&self, repo: &str) -> String {
        let repo = repo.trim_matches('/');
        let suffix = if repo.ends_with(".git") { "" } else { ".git" };
        format!("http://{}/{repo}{suffix}", self.addr)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Takes `token` as well from now on (another Forgejo user's, e.g. an agent's).
    pub fn allow_token(&self, token: &str) {
        self.tokens.lock().unwrap().push(token.to_owned());
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// HTTP requests answered so far (401s included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// `url_of(repo)` with the token as Basic password in the URL, for the git CLI.
    pub fn url_with_token(&self, repo: &str) -> String {
        self.url_of(repo).replacen("http://", &format!("http://forgefleet:{}@", self.token), 1)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            stop_runtime(runtime);
        }
        let pids: Vec<u32> = self.children.lock().unwrap().drain().map(|(_, pid)| pid).collect();
        for pid in pids {
            // SAFETY: plain kill(2) of a child this server spawned and has not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// Stops a test server's own runtime. Blocking on the shutdown is not allowed inside an async context;
/// there, it finishes behind the caller.
pub fn stop_runtime(runtime: tokio::runtime::Runtime) {
    if tokio::runtime::Handle::try_current().is_ok() {
        runtime.shutdown_background();
    } else {
        runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    }
}

/// The same handler [`GitServer`] uses, to mount in another axum app (e.g. behind a fake Forgejo's clone URLs).
/// `PATH_INFO` is the request path as the router sees it, relative to `root`.
pub fn router(root: &Path, token: &str) -> axum::Router {
    router_with(Arc::new(Shared {
        root: root.to_owned(),
        tokens: Arc::new(Mutex::new(vec![token.to_owned()])),
        backend: http_backend(),
        children: Arc::default(),
        next_child: AtomicU64::new(0),
        requests: Arc::default(),
    }))
}

fn router_with(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(shared)
}

/// `$(git --exec-path)/git-http-backend`.
pub fn http_backend() -> PathBuf {
    let out = Command::new("git").arg("--exec-path").output().expect("git is installed");
    assert!(out.status.success(), "git --exec-path failed");
    let dir = String::from_utf8(out.stdout).unwrap();
    let backend = Path::new(dir.trim()).join("git-http-backend");
    assert!(backend.exists(), "no git-http-backend at {}", backend.display());
    backend
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let tokens = shared.tokens.lock().unwrap().clone();
    let Some(user) = authorized_user(request.headers(), &tokens) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
            "authentication required\n",
        )
            .into_response();
    };
    match run_cgi(&shared, user, request).await {
        Ok(response) => response,
        Err(message) => (StatusCode::INTERNAL_SERVER_ERROR, format!("git http-backend: {message}\n")).into_response(),
    }
}

/// The user name when the request carries the token (Basic password, or `token`/`Bearer` scheme).
fn authorized_user(headers: &HeaderMap, tokens: &[String]) -> Option<String> {
    let known = |t: &str| tokens.iter().any(|k| k == t);
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (user, password) = decoded.split_once(':')?;
            known(password).then(|| if user.is_empty() { "token".to_owned() } else { user.to_owned() })
        }
        "token" | "bearer" => known(credentials).then(|| "token".to_owned()),
        _ => None,
    }
}

async fn run_cgi(shared: &Arc<Shared>, user: String, request: Request) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| format!("reading the request: {e}"))?;
    let header_str = |name: HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);

    let mut command = tokio::process::Command::new(&shared.backend);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", &user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(content_type) = header_str(header::CONTENT_TYPE) {
        command.env("CONTENT_TYPE", content_type);
    }
    if let Some(encoding) = header_str(header::CONTENT_ENCODING) {
        command.env("HTTP_CONTENT_ENCODING", encoding);
    }
    if let Some(protocol) = header_str(HeaderName::from_static("git-protocol")) {
        command.env("GIT_PROTOCOL", protocol);
    }
    let mut child = command.spawn().map_err(|e| format!("could not start {}: {e}", shared.backend.display()))?;
    let key = shared.next_child.fetch_add(1, Ordering::SeqCst);
    if let Some(pid) = child.id() {
        shared.children.lock().unwrap().insert(key, pid);
    }

    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Feed the body while the CGI may already be writing its answer: neither side can block the other.
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
        let _ = stdin.shutdown().await;
    });
    let children = shared.children.clone();
    tokio::spawn(async move {
        let mut errors = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut errors).await;
        let status = child.wait().await;
        children.lock().unwrap().remove(&key);
        if !errors.is_empty() {
            eprintln!("git http-backend ({status:?}): {}", String::from_utf8_lossy(&errors).trim_end());
        }
    });

    // CGI response: header lines (`Status: 404 Not Found`, `Content-Type: ...`), a blank line, then the body.
    let mut stdout = BufReader::new(stdout);
    let mut response = Response::builder().status(StatusCode::OK);
    loop {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).await.map_err(|e| format!("reading the CGI headers: {e}"))?;
        let line = line.trim_end_matches(['\r', '\n']);
        if n == 0 || line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("malformed CGI header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse::<u16>().ok());
            let code = code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(format!("bad CGI status {value:?}"))?;
            response = response.status(code);
        } else {
            let name =
                HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| format!("CGI header {name:?}: {e}"))?;
            let value = HeaderValue::from_str(value).map_err(|e| format!("CGI header value {value:?}: {e}"))?;
            response = response.header(name, value);
        }
    }
    response.body(Body::from_stream(tokio_util::io::ReaderStream::new(stdout))).map_err(|e| e.to_string())
}

/// A `git` command with no machine config, a fixed identity, and `when` (seconds since the epoch) as the date.
pub fn git_command(dir: &Path, when: u64) -> Command {
    let date = format!("@{when} +0000");
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.test")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.test")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date);
    command
}

/// Feeds a `git fast-import` stream into the bare repository `bare` (refs may move backwards: `--force`).
pub fn fast_import(bare: &Path, stream: &[u8]) {
    use std::io::Write as _;
    let mut child = git_command(bare, 0)
        .args(["fast-import", "--quiet", "--force"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stream).unwrap();
    assert!(child.wait().unwrap().success(), "git fast-import failed");
}

/// Runs git in `dir` like [`git_command`] and returns its trimmed stdout; panics with stderr if it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    run(git_command(dir, 1_700_000_000).args(args))
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("git is installed");
    assert!(out.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository under a [`GitServer`] root plus a working clone to make commits in and push from.
pub struct TestRepo {
    /// `root/<name>.git`.
    pub bare: PathBuf,
    /// The working clone (in its own temporary directory, not under the served root).
    pub work: PathBuf,
    /// `acme/app`.
    pub name: String,
    _work_dir: tempfile::TempDir,
    clock: AtomicU64,
}

impl TestRepo {
    /// [`TestRepo::init_bare`] with `files` committed on `main` and pushed.
    pub fn with_main(root: &Path, name: &str, files: &[(&str, &str)]) -> TestRepo {
        let repo = TestRepo::init_bare(root, name);
        repo.commit(files, "start");
        repo.push("main");
        repo
    }

    /// Creates `root/<name>.git` (bare, default branch `main`) and a working clone with `origin` pointing at it.
    pub fn init_bare(root: &Path, name: &str) -> TestRepo {
        let name = name.trim_end_matches(".git").trim_matches('/').to_owned();
        let bare = root.join(format!("{name}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        let work_dir = tempfile::tempdir().unwrap();
        let work = work_dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let repo = TestRepo { bare, work, name, _work_dir: work_dir, clock: AtomicU64::new(1_700_000_000) };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["remote", "add", "origin", repo.bare.to_str().unwrap()]);
        repo
    }

    /// Runs git in the working clone; each call is one minute later than the one before.
    pub fn git(&self, args: &[&str]) -> String {
        let when = self.clock.fetch_add(60, Ordering::SeqCst);
        run(git_command(&self.work, when).args(args))
    }

    /// Writes `files` (creating directories), commits everything, returns the new commit's sha.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            self.write(path, content.as_bytes());
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.head()
    }

    /// A commit that changes nothing.
    pub fn commit_empty(&self, message: &str) -> String {
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    /// Writes one file in the work tree without committing (binary content welcome).
    pub fn write(&self, path: &str, content: &[u8]) {
        let file = self.work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }

    /// Deletes one file from the work tree and the index, without committing.
    pub fn remove(&self, path: &str) {
        self.git(&["rm", "-q", path]);
    }

    /// `git mv`, without committing.
    pub fn rename(&self, from: &str, to: &str) {
        self.git(&["mv", from, to]);
    }

    /// The sha of the commit checked out.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// Switches to `branch`, creating it at the current commit when it does not exist yet.
    pub fn checkout(&self, branch: &str) {
        let exists = git_command(&self.work, 0)
            .args(["rev-parse", "--verify", "-q", &format!("refs/heads/{branch}")])
            .output()
            .unwrap()
            .status
            .success();
        if exists {
            self.git(&["checkout", "-q", branch]);
        } else {
            self.git(&["checkout", "-q", "-b", branch]);
        }
    }

    /// Points the checked-out branch at `sha` (work tree included).
    pub fn reset_hard(&self, sha: &str) {
        self.git(&["reset", "-q", "--hard", sha]);
    }

    /// Pushes the local `branch` to the bare repository.
    pub fn push(&self, branch: &str) {
        self.git(&["push", "-q", "origin", &format!("refs/heads/{branch}:refs/heads/{branch}")]);
    }

    /// Creates or moves `refs/pull/<n>/head` in the bare repository, as Forgejo does for pull request `n`.
    pub fn push_pull_head(&self, n: u64, sha: &str) {
        self.git(&["push", "-q", "origin", &format!("+{sha}:refs/pull/{n}/head")]);
    }

    /// Moves `branch` in the bare repository to `sha`, even when that is not a fast-forward.
    pub fn force_push(&self, branch: &str, sha: &str) {
        self.git(&["push", "-q", "origin", &format!("+{sha}:refs/heads/{branch}")]);
    }

    /// What a ref in the bare repository points at, if it exists.
    pub fn remote_ref(&self, name: &str) -> Option<String> {
        let out = git_command(&self.bare, 0).args(["rev-parse", "--verify", "-q", name]).output().unwrap();
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// The number of objects in a repository (loose and packed), from `git count-objects -v`.
pub fn count_objects(git_dir: &Path) -> u64 {
    let out = git(git_dir, &["count-objects", "-v"]);
    out.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(key, _)| *key == "count" || *key == "in-pack")
        .map(|(_, value)| value.trim().parse::<u64>().unwrap_or(0))
        .sum()
}
