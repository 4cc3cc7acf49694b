//! Opening, creating and fetching into the bare mirror.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gix::protocol::transport::client::blocking_io::http;
use gix::remote::Direction;

use super::{BASIC_AUTH_USER, GitError, describe};

/// How long one HTTP request of a fetch (including streaming the pack) may take before it is abandoned.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A bare repository in forgefleet's data directory mirroring one Forgejo repository.
///
/// Cheap to clone and `Send + Sync`. Each call opens the repository afresh (about a millisecond), so it sees
/// the packs on disk as they are now: gix sizes its table of pack indexes when it opens a repository, and a
/// handle kept open while fetches add pack after pack runs out of room after about 30 of them. Fetches into the
/// same directory are serialized within the process; inspections run in parallel with them.
#[derive(Clone)]
pub struct Mirror {
    path: PathBuf,
    locks: Arc<MirrorLocks>,
    request_timeout: Duration,
    ca: Option<crate::config::CaBundle>,
}

/// Shared by every `Mirror` opened on the same directory in this process. Fetches are serialised by `fetch`;
/// fetches and inspections read the packs under `packs` (shared), which a repack takes alone.
#[derive(Default)]
struct MirrorLocks {
    fetch: Mutex<()>,
    packs: RwLock<()>,
}

/// What a repack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repacked {
    pub packs_before: usize,
    pub packs_after: usize,
    pub elapsed: Duration,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("path", &self.path).finish_non_exhaustive()
    }
}

/// What one fetch did: how much it transferred and which refs moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Objects in the pack the server sent; 0 when nothing new was needed.
    pub objects_received: u64,
    /// Size of that pack on disk, in bytes.
    pub pack_bytes: u64,
    /// One entry per remote ref matched by the refspecs.
    pub refs: Vec<RefUpdate>,
}

/// A ref the fetch considered, as `git fetch` would print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The ref on the server, e.g. `refs/pull/1/head`.
    pub remote: String,
    /// The ref in the mirror it was stored as.
    pub local: Option<String>,
    /// The object id the server advertised for it.
    pub target: Option<String>,
    /// `new`, `fast-forward`, `forced-update`, `up-to-date`, or `rejected (...)`.
    pub mode: String,
}

impl Mirror {
    /// Opens the bare repository at `dir`, creating it (and missing parent directories) when there is none yet.
    ///
    /// The mirror reads only its own config: the machine's `~/.gitconfig`, system config and `GIT_*` variables
    /// (credential helpers, `url.insteadOf`, proxies) do not change what forgefleet fetches or how.
    pub fn open_or_init(dir: &Path) -> Result<Mirror, GitError> {
        let fail = |message: String| GitError::Mirror { path: dir.to_owned(), message };
        let repo = if dir.join("HEAD").exists() || dir.join(".git").exists() {
            gix::ThreadSafeRepository::open_opts(dir, open_options()).map_err(|e| fail(describe(&e)))?
        } else {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("could not create the directory: {e}")))?;
            gix::ThreadSafeRepository::init_opts(
                dir,
                gix::create::Kind::Bare,
                gix::create::Options::default(),
                open_options(),
            )
            .map_err(|e| fail(describe(&e)))?
        };
        if repo.work_dir().is_some() {
            return Err(fail("is a repository with a work tree, not a bare mirror".into()));
        }
        Ok(Mirror { path: dir.to_owned(), locks: locks_for(dir), request_timeout: DEFAULT_REQUEST_TIMEOUT, ca: None })
    }

    /// Where the mirror of Forgejo repository `repo` (`owner/name`) lives under forgefleet's data directory:
    /// `<data_dir>/mirrors/<owner>/<name>.git`.
    pub fn dir_for(data_dir: &Path, repo: &str) -> Result<PathBuf, GitError> {
        let invalid = || GitError::Invalid { what: "repository name", message: format!("{repo:?} is not owner/name") };
        let (owner, name) = repo.trim().trim_end_matches(".git").split_once('/').ok_or_else(invalid)?;
        let ok = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok(owner) || !ok(name) {
            return Err(invalid());
        }
        Ok(data_dir.join("mirrors").join(owner).join(format!("{name}.git")))
    }

    /// Limits how long each HTTP request of a fetch may take, the pack download included (default 10 minutes).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Mirror {
        self.request_timeout = timeout;
        self
    }

    /// Trusts the CA certificates of `ca` too (besides the public roots) when fetching over HTTPS.
    pub fn with_ca(mut self, ca: Option<crate::config::CaBundle>) -> Mirror {
        self.ca = ca;
        self
    }

    /// The mirror's directory (the bare repository's git dir).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fetches `refspecs` from `url` (http or https) into the mirror, sending `token` as the HTTP Basic password.
    ///
    /// A refspec without `:` is stored under the same name and force-updated, so `refs/pull/1/head` lands in
    /// `refs/pull/1/head` of the mirror; a short name like `main` means `refs/heads/main`. Explicit `src:dst`
    /// refspecs are used as given. Tags are never followed. Only objects the mirror lacks are transferred: the
    /// negotiation offers every ref the mirror already has. A refspec naming one exact ref the server does not have
    /// fails with [`GitError::NotFound`].
    pub fn fetch(&self, url: &str, token: Option<&str>, refspecs: &[&str]) -> Result<(), GitError> {
        self.fetch_with_stats(url, token, refspecs).map(drop)
    }

    /// [`Mirror::fetch`], also saying how much was transferred and which refs moved.
    pub fn fetch_with_stats(&self, url: &str, token: Option<&str>, refspecs: &[&str]) -> Result<FetchStats, GitError> {
        install_crypto_provider();
        let parsed = check_url(url)?;
        if refspecs.is_empty() {
            return Err(GitError::Invalid { what: "refspec", message: "no refspecs to fetch".into() });
        }
        let specs = refspecs.iter().map(|s| normalize_refspec(s)).collect::<Result<Vec<_>, _>>()?;

        let _serialized = self.locks.fetch.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _packs = self.reading();
        let repo = self.repo()?;
        let remote = repo
            .remote_at_without_url_rewrite(parsed)
            .map_err(|e| GitError::Invalid { what: "url", message: describe(&e) })?
            .with_refspecs(specs.iter().map(String::as_str), Direction::Fetch)
            .map_err(|e| GitError::Invalid { what: "refspec", message: describe(&e) })?
            .with_fetch_tags(gix::remote::fetch::Tags::None);

        let options = self.http_options(&repo, url, token)?;
        let connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| classify_fetch_error(&e, url, token.is_some()))?
            // Never ask credential helpers or a terminal: the token (if any) is already in the request headers,
            // and a server still answering 401 is an authentication failure.
            .with_credentials(|_action| Ok(None))
            .with_transport_options(Box::new(options));
        let prepared = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| classify_fetch_error(&e, url, token.is_some()))?;

        // Every exact ref asked for must exist on the server: say which do not before fetching anything.
        let missing: Vec<&str> = specs
            .iter()
            .enumerate()
            .filter(|(index, _)| {
                !prepared.ref_map().mappings.iter().any(|m| {
                    matches!(m.spec_index, gix::remote::fetch::refmap::SpecIndex::ExplicitInRemote(i) if i == *index)
                })
            })
            .map(|(_, spec)| spec.trim_start_matches('+').split(':').next().unwrap_or_default())
            .filter(|source| !source.contains('*') && !is_hex_id(source))
            .collect();
        if !missing.is_empty() {
            return Err(GitError::NotFound { what: format!("{} on {url}", missing.join(", ")) });
        }

        let outcome = prepared
            .with_reflog_message(gix::remote::fetch::RefLogMessage::Prefixed { action: "forgefleet fetch".into() })
            .receive(gix::progress::Discard, &AtomicBool::new(false))
            .map_err(|e| classify_fetch_error(&e, url, token.is_some()))?;
        let ref_map = &outcome.ref_map;

        let mut stats = FetchStats::default();
        let update_refs = match &outcome.status {
            gix::remote::fetch::Status::NoPackReceived { update_refs, .. } => update_refs,
            gix::remote::fetch::Status::Change { write_pack_bundle, update_refs, .. } => {
                stats.objects_received = u64::from(write_pack_bundle.index.num_objects);
                stats.pack_bytes =
                    write_pack_bundle.data_path.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
                // gix leaves the `.keep` file only when no ref moved; nothing needs the protection here.
                if let Some(keep) = &write_pack_bundle.keep_path {
                    let _ = std::fs::remove_file(keep);
                }
                update_refs
            }
        };
        for (update, mapping) in update_refs.updates.iter().zip(&ref_map.mappings) {
            let (remote, target) = match &mapping.remote {
                gix::remote::fetch::refmap::Source::ObjectId(id) => (id.to_string(), Some(id.to_string())),
                gix::remote::fetch::refmap::Source::Ref(r) => {
                    let (name, target, _peeled) = r.unpack();
                    (name.to_string(), target.map(|t| t.to_string()))
                }
            };
            stats.refs.push(RefUpdate {
                remote,
                local: mapping.local.as_ref().map(|l| l.to_string()),
                target,
                mode: update.mode.to_string(),
            });
        }
        Ok(stats)
    }

    pub(super) fn repo(&self) -> Result<gix::Repository, GitError> {
        gix::open_opts(&self.path, open_options())
            .map_err(|e| GitError::Mirror { path: self.path.clone(), message: describe(&e) })
    }

    /// Holds off a repack while the caller reads objects.
    pub(super) fn reading(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.locks.packs.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many pack files the mirror has.
    pub fn pack_count(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.path.join("objects").join("pack")) else { return 0 };
        entries.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "pack")).count()
    }

    /// Keeps the number of packs in check: every fetch that brings something writes one pack, and gix (which
    /// cannot repack) has to look through all of them. Past `pack_limit` packs, runs
    /// `git repack --geometric=2 -d`, which merges the small packs and leaves the big one alone, so the count
    /// stays logarithmic in the number of objects without rewriting the whole repository each time. None when
    /// there were not enough packs to bother.
    ///
    /// Needs the `git` program (2.33 or later); without it the error says so, and the mirror still works.
    pub fn maintain(&self, pack_limit: usize) -> Result<Option<Repacked>, GitError> {
        if self.pack_count() <= pack_limit {
            return Ok(None);
        }
        self.repack_with(std::ffi::OsStr::new("git")).map(Some)
    }

    pub(super) fn repack_with(&self, git: &std::ffi::OsStr) -> Result<Repacked, GitError> {
        let fail = |message: String| GitError::Mirror { path: self.path.clone(), message };
        let _serialized = self.locks.fetch.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _alone = self.locks.packs.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (packs_before, started) = (self.pack_count(), Instant::now());
        // Like the fetches, the repack reads only the mirror's own config.
        let out = std::process::Command::new(git)
            .arg("--git-dir")
            .arg(&self.path)
            .args(["repack", "--geometric=2", "-d", "-q"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => fail(format!(
                    "{packs_before} packs and no `{}` program to repack them with: install git (2.33 or later), or \
                     delete the mirror (it is a cache)",
                    git.to_string_lossy()
                )),
                _ => fail(format!("could not run `{} repack`: {e}", git.to_string_lossy())),
            })?;
        if !out.status.success() {
            return Err(fail(format!(
                "`git repack` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Repacked { packs_before, packs_after: self.pack_count(), elapsed: started.elapsed() })
    }

    fn http_options(&self, repo: &gix::Repository, url: &str, token: Option<&str>) -> Result<http::Options, GitError> {
        // Checked when the configuration was read; gix's reqwest is another version, so it parses them again.
        let roots = match &self.ca {
            Some(ca) => reqwest_gix::Certificate::from_pem_bundle(ca.pem())
                .map_err(|e| GitError::Invalid { what: "CA certificates", message: e.to_string() })?,
            None => Vec::new(),
        };
        // Start from what the mirror's own config says about http (user agent, redirects, ...), then add ours.
        let mut options = repo
            .transport_options(url, None)
            .ok()
            .flatten()
            .and_then(|any| any.downcast::<http::Options>().ok())
            .map(|boxed| *boxed)
            .unwrap_or_default();
        if let Some(token) = token {
            // In memory only: the header is neither in the URL nor in the repository config. With a configured
            // header gix refuses to follow redirects, so the token cannot leak to another host that way.
            let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_AUTH_USER}:{token}"));
            options.extra_headers.push(format!("Authorization: Basic {credentials}"));
        }
        options.connect_timeout = Some(CONNECT_TIMEOUT);
        let timeout = self.request_timeout;
        options.backend = Some(Arc::new(Mutex::new(http::reqwest::Options {
            configure_client: Some(Box::new(move |builder| {
                let builder = builder.timeout(timeout);
                Ok(roots.iter().cloned().fold(builder, |b, cert| b.add_root_certificate(cert)))
            })),
            configure_request: None,
        })));
        Ok(options)
    }
}

fn open_options() -> gix::open::Options {
    gix::open::Options::isolated()
}

/// One set of locks per mirror directory in this process, shared by every `Mirror` opened on it.
fn locks_for(dir: &Path) -> Arc<MirrorLocks> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<MirrorLocks>>>> = OnceLock::new();
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(key).or_default().clone()
}

/// gix's reqwest client uses rustls without a built-in crypto provider (the built-in one would be aws-lc-rs, a
/// large C build); give it ring, which the rest of forgefleet's TLS already uses. Harmless if one is installed.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn check_url(url: &str) -> Result<gix::Url, GitError> {
    let parsed = gix::url::parse(gix::bstr::BStr::new(url))
        .map_err(|e| GitError::Invalid { what: "url", message: e.to_string() })?;
    match parsed.scheme {
        gix::url::Scheme::Http | gix::url::Scheme::Https => {}
        ref other => {
            return Err(GitError::Invalid {
                what: "url",
                message: format!("{url}: only http and https are supported, not {}", other.as_str()),
            });
        }
    }
    if parsed.password().is_some() {
        return Err(GitError::Invalid {
            what: "url",
            message: "credentials in the URL are not accepted; pass the token separately".into(),
        });
    }
    Ok(parsed)
}

pub(super) fn normalize_refspec(spec: &str) -> Result<String, GitError> {
    let spec = spec.trim();
    if spec.is_empty() || spec.starts_with('^') {
        return Err(GitError::Invalid { what: "refspec", message: format!("{spec:?} is not a ref to fetch") });
    }
    if spec.contains(':') {
        return Ok(spec.to_owned());
    }
    let source = spec.trim_start_matches('+');
    if is_hex_id(source) {
        // Fetching one object by id: nothing to store it under.
        return Ok(source.to_owned());
    }
    let full = if source.starts_with("refs/") { source.to_owned() } else { format!("refs/heads/{source}") };
    Ok(format!("+{full}:{full}"))
}

fn is_hex_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Sorts a gix fetch failure into auth / not found / corrupt / network, with a message saying which.
fn classify_fetch_error(err: &gix::Error, url: &str, had_token: bool) -> GitError {
    let mut status = None;
    let mut auth_required = false;
    for e in all_errors(err) {
        if let Some(r) = e.downcast_ref::<reqwest_gix::Error>()
            && let Some(s) = r.status()
        {
            status = Some(s.as_u16());
        }
        if e.downcast_ref::<gix::protocol::transport::client::AuthenticationRequired>().is_some() {
            auth_required = true;
        }
    }
    let detail = describe(err);
    let url = url.to_owned();
    if status == Some(401) || auth_required || err.is_unauthenticated() {
        let message = if had_token {
            "the server answered 401 Unauthorized: it did not accept the token"
        } else {
            "the server answered 401 Unauthorized and no token was given"
        };
        return GitError::Auth { url, message: message.into() };
    }
    if status == Some(403) || err.is_permission_denied() {
        return GitError::Auth {
            url,
            message: format!("the server answered 403 Forbidden: the token may not read this repository ({detail})"),
        };
    }
    if status == Some(404) || err.is_not_found() {
        return GitError::NotFound { what: format!("repository {url} ({detail})") };
    }
    if err.is_corrupted() {
        return GitError::Corrupt { message: format!("while fetching from {url}: {detail}") };
    }
    GitError::Network { url, message: detail }
}

/// The gix error frames and every source below each of them.
fn all_errors(err: &gix::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    for frame in err.iter_errors() {
        let mut current = Some(frame);
        while let Some(e) = current {
            out.push(e);
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && let Some(inner) = io.get_ref()
            {
                out.push(inner);
            }
            current = e.source();
        }
    }
    out
}
