//! The bot's Matrix session on disk: user, device and access token, kept beside its encrypted store so that a
//! restart logs in as the same device instead of making a new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use matrix_sdk::authentication::matrix::MatrixSession;
use serde::{Deserialize, Serialize};

/// The directory of the bot's Matrix state: `matrix/` beside the database file.
pub fn data_dir(store_path: &Path) -> PathBuf {
    store_path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("matrix")
}

/// What is kept in `session.json`: the session and the homeserver it belongs to.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredSession {
    pub homeserver_url: String,
    #[serde(flatten)]
    pub session: MatrixSession,
}

fn session_file(dir: &Path) -> PathBuf {
    dir.join("session.json")
}

/// Creates `dir` (owner-only: it holds the device's keys) if it is missing.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The stored session, if there is one; a file that does not parse counts as none (and is logged).
pub fn load(dir: &Path) -> Option<StoredSession> {
    let path = session_file(dir);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the stored Matrix session does not parse; logging in again");
            None
        }
    }
}

/// Writes the session readable by the owner only, replacing the file in one step (a crash leaves the old one
/// or the new one, never half of either).
pub fn save(dir: &Path, session: &StoredSession) -> std::io::Result<()> {
    let path = session_file(dir);
    let tmp = dir.join("session.json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(serde_json::to_string_pretty(session).map_err(std::io::Error::other)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use matrix_sdk::{SessionMeta, SessionTokens};

    #[test]
    fn a_session_round_trips_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let dir = data_dir(&dir.path().join("forgefleet.db"));
        ensure_dir(&dir).unwrap();
        assert!(load(&dir).is_none());
        let stored = StoredSession {
            homeserver_url: "http://127.0.0.1:8008".into(),
            session: MatrixSession {
                meta: SessionMeta { user_id: "@bot:localhost".try_into().unwrap(), device_id: "DEV1".into() },
                tokens: SessionTokens { access_token: "syt_secret".into(), refresh_token: None },
            },
        };
        save(&dir, &stored).unwrap();
        let back = load(&dir).unwrap();
        assert_eq!(back.session, stored.session);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("session.json")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
