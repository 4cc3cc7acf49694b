//! Logging in (a stored session, a password or an access token), and the rooms the bot is allowed in.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomOrAliasId};
use matrix_sdk::store::RoomLoadSettings;
use matrix_sdk::{Client, SessionMeta, SessionTokens};

use super::MatrixError;
use super::session::{self, StoredSession};
use crate::config::MatrixConfig;

/// A logged-in bot: the client and the rooms of its configuration. Cheap to clone.
#[derive(Clone)]
pub struct Bot {
    pub(super) client: Client,
    pub(super) rooms: Rooms,
}

/// The configured rooms, as written in the configuration and as the ids they resolved to.
#[derive(Clone, Default)]
pub(super) struct Rooms(Arc<RwLock<RoomMap>>);

#[derive(Default)]
struct RoomMap {
    /// As configured (`#alias:server` or `!id`) -> room id, for those resolved so far.
    by_name: HashMap<String, OwnedRoomId>,
    /// `matrix.rooms[i]` entries, in order.
    configured: Vec<String>,
}

impl Rooms {
    fn new(configured: &[String]) -> Self {
        let mut map = RoomMap { configured: configured.to_vec(), ..Default::default() };
        for room in configured {
            // A room id needs no lookup; an alias is resolved when the bot joins.
            if let Ok(id) = RoomId::parse(room.as_str()) {
                map.by_name.insert(room.clone(), id);
            }
        }
        Self(Arc::new(RwLock::new(map)))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, RoomMap> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn resolved(&self, name: &str, id: OwnedRoomId) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).by_name.insert(name.to_string(), id);
    }

    /// The id of `room`: a configured name (alias or id), or the id of a configured room.
    pub(super) fn id_of(&self, room: &str) -> Option<OwnedRoomId> {
        let map = self.read();
        map.by_name.get(room).cloned().or_else(|| map.by_name.values().find(|id| id.as_str() == room).cloned())
    }

    /// Whether `id` is one of the configured rooms (as far as their aliases have been resolved).
    pub(super) fn contains(&self, id: &RoomId) -> bool {
        self.read().by_name.values().any(|r| r == id)
    }

    fn configured(&self) -> Vec<String> {
        self.read().configured.clone()
    }
}

impl Bot {
    /// Opens the bot's store in `dir` and logs in: with the session stored there if there is one (the same
    /// device as before), else with the configured password or access token, and stores the session.
    pub async fn connect(config: &MatrixConfig, dir: &Path) -> Result<Bot, MatrixError> {
        let mut bot = Self::log_in(config, dir).await?;
        bot.rooms = Rooms::new(&config.rooms);
        Ok(bot)
    }

    async fn log_in(config: &MatrixConfig, dir: &Path) -> Result<Bot, MatrixError> {
        let url = config
            .homeserver_url
            .as_deref()
            .ok_or_else(|| MatrixError::setting("matrix.homeserver_url", "is not set"))?;
        session::ensure_dir(dir).map_err(|e| MatrixError::Local(format!("cannot create {}: {e}", dir.display())))?;
        let stored = session::load(dir).filter(|s| s.homeserver_url == url);

        if let Some(token) = &config.access_token {
            // The token decides the user and the device; whoami tells both.
            // Asked over plain HTTP: the store is activated only once the user and device are known.
            let (user_id, device_id) = whoami(url, token.expose()).await?;
            if let Some(user) = &config.user
                && !same_user(user, &user_id)
            {
                return Err(MatrixError::setting(
                    "matrix.user",
                    format!("is {user:?}, but matrix.access_token belongs to {user_id}"),
                ));
            }
            let session = MatrixSession {
                meta: SessionMeta { user_id, device_id: device_id.into() },
                tokens: SessionTokens { access_token: token.expose().to_string(), refresh_token: None },
            };
            let client = build_client(url, dir, config).await?;
            return activate(client, session, url, dir).await;
        }

        let password = config
            .password
            .as_ref()
            .ok_or_else(|| MatrixError::setting("matrix.password", "is required (or matrix.access_token) to log in"))?;
        let user = config.user.as_deref().ok_or_else(|| MatrixError::setting("matrix.user", "is not set"))?;
        if let Some(stored) = stored {
            if !same_user(user, &stored.session.meta.user_id) {
                return Err(MatrixError::setting(
                    "matrix.user",
                    format!(
                        "is {user:?}, but the bot's store in {} belongs to {}; move that directory away to start \
                         over as the new user",
                        dir.display(),
                        stored.session.meta.user_id
                    ),
                ));
            }
            match whoami(url, &stored.session.tokens.access_token).await {
                Ok(_) => {
                    let client = build_client(url, dir, config).await?;
                    return activate(client, stored.session, url, dir).await;
                }
                Err(MatrixError::Rejected { .. }) => {
                    // Logged out elsewhere: log in again as the same device, which keeps its keys.
                    tracing::info!(device = %stored.session.meta.device_id, "the stored Matrix session was refused; logging in again");
                    return login(
                        url,
                        dir,
                        config,
                        user,
                        password.expose(),
                        Some(stored.session.meta.device_id.as_str()),
                    )
                    .await;
                }
                Err(e) => return Err(e),
            }
        }
        login(url, dir, config, user, password.expose(), None).await
    }

    /// The bot's own user.
    pub fn user_id(&self) -> OwnedUserId {
        self.client.user_id().map(ToOwned::to_owned).unwrap_or_else(placeholder_user)
    }

    /// The bot's device.
    pub fn device_id(&self) -> String {
        self.client.device_id().map(|d| d.to_string()).unwrap_or_default()
    }

    /// The underlying client, for what this module does not wrap.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The id of a configured room, by the name the configuration gives it (alias or id) or by its id.
    pub fn room_id(&self, room: &str) -> Option<OwnedRoomId> {
        self.rooms.id_of(room)
    }

    /// Joins every configured room it is not in yet; a room it cannot join is logged with its key and
    /// left for later (an invite to it is accepted when it comes).
    pub async fn join_rooms(&self) {
        for (i, room) in self.rooms.configured().iter().enumerate() {
            let key = format!("matrix.rooms[{i}]");
            let Ok(target) = RoomOrAliasId::parse(room.as_str()) else {
                tracing::error!(key, room, "{key}: {room:?} is not a room id or alias");
                continue;
            };
            match self.client.join_room_by_id_or_alias(&target, &[]).await {
                Ok(joined) => {
                    self.rooms.resolved(room, joined.room_id().to_owned());
                    tracing::info!(key, room, room_id = %joined.room_id(), "joined Matrix room");
                }
                Err(e) => {
                    // An alias can still be resolved, so that an invite to the room is recognised.
                    if target.is_room_alias_id()
                        && let Ok(alias) = matrix_sdk::ruma::RoomAliasId::parse(room.as_str())
                        && let Ok(found) = self.client.resolve_room_alias(&alias).await
                    {
                        self.rooms.resolved(room, found.room_id);
                    }
                    tracing::error!(key, room, error = %e, "{key}: cannot join the Matrix room {room}: {e}");
                }
            }
        }
    }

    /// Accepts the invites to configured rooms and declines the others.
    pub(super) async fn answer_invites(&self, invited: impl IntoIterator<Item = OwnedRoomId>) {
        for id in invited {
            let Some(room) = self.client.get_room(&id) else { continue };
            if self.rooms.contains(&id) {
                match room.join().await {
                    Ok(()) => tracing::info!(room_id = %id, "accepted the invite to a configured Matrix room"),
                    Err(e) => tracing::warn!(room_id = %id, error = %e, "cannot accept the invite to {id}"),
                }
            } else {
                match room.leave().await {
                    Ok(()) => tracing::info!(
                        room_id = %id,
                        "declined an invite to a Matrix room that is not in matrix.rooms"
                    ),
                    Err(e) => tracing::warn!(room_id = %id, error = %e, "cannot decline the invite to {id}"),
                }
            }
        }
    }
}

fn placeholder_user() -> OwnedUserId {
    "@unknown:invalid".try_into().expect("a valid user id")
}

/// `configured` (`@name:server` or `name`) names `user`.
fn same_user(configured: &str, user: &OwnedUserId) -> bool {
    if configured.starts_with('@') { configured == user.as_str() } else { configured == user.localpart() }
}

async fn build_client(url: &str, dir: &Path, config: &MatrixConfig) -> Result<Client, MatrixError> {
    let passphrase = config.store_passphrase.as_ref().map(|s| s.expose().to_string());
    Client::builder().homeserver_url(url).sqlite_store(dir, passphrase.as_deref()).build().await.map_err(|e| match e {
        matrix_sdk::ClientBuildError::SqliteStore(e) => MatrixError::setting(
            "matrix.store_passphrase",
            format!(
                "cannot open the bot's store in {}: {e} (a different passphrase than the store was made with?)",
                dir.display()
            ),
        ),
        other => MatrixError::setting("matrix.homeserver_url", format!("{url}: {other}")),
    })
}

async fn activate(client: Client, session: MatrixSession, url: &str, dir: &Path) -> Result<Bot, MatrixError> {
    let stored = StoredSession { homeserver_url: url.to_string(), session: session.clone() };
    client
        .matrix_auth()
        .restore_session(session, RoomLoadSettings::default())
        .await
        .map_err(|e| MatrixError::Local(format!("cannot restore the Matrix session: {e}")))?;
    session::save(dir, &stored).map_err(|e| MatrixError::Local(format!("cannot store the Matrix session: {e}")))?;
    Ok(Bot { client, rooms: Rooms::default() })
}

async fn login(
    url: &str,
    dir: &Path,
    config: &MatrixConfig,
    user: &str,
    password: &str,
    device_id: Option<&str>,
) -> Result<Bot, MatrixError> {
    let client = build_client(url, dir, config).await?;
    let mut request =
        client.matrix_auth().login_username(user, password).initial_device_display_name(&config.device_name);
    if let Some(device) = device_id {
        request = request.device_id(device);
    }
    let response = request.send().await.map_err(|e| classify(url, "matrix.password", &e))?;
    let session = MatrixSession::from(&response);
    tracing::info!(user = %session.meta.user_id, device = %session.meta.device_id, "logged in to Matrix");
    session::save(dir, &StoredSession { homeserver_url: url.to_string(), session })
        .map_err(|e| MatrixError::Local(format!("cannot store the Matrix session: {e}")))?;
    Ok(Bot { client, rooms: Rooms::default() })
}

/// Who the access token belongs to, and its device.
async fn whoami(url: &str, token: &str) -> Result<(OwnedUserId, String), MatrixError> {
    #[derive(serde::Deserialize)]
    struct WhoAmI {
        user_id: OwnedUserId,
        device_id: Option<String>,
    }
    let endpoint = format!("{}/_matrix/client/v3/account/whoami", url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .get(&endpoint)
        .bearer_auth(token)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| MatrixError::Unreachable { url: url.to_string(), detail: e.to_string() })?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let body = response.text().await.unwrap_or_default();
        return Err(MatrixError::Rejected { key: "matrix.access_token", detail: format!("{status}: {body}") });
    }
    if !status.is_success() {
        return Err(MatrixError::Unreachable { url: url.to_string(), detail: format!("whoami answered {status}") });
    }
    let who: WhoAmI = response
        .json()
        .await
        .map_err(|e| MatrixError::Unreachable { url: url.to_string(), detail: format!("whoami: {e}") })?;
    let device = who.device_id.ok_or_else(|| {
        MatrixError::setting("matrix.access_token", "belongs to no device (an appservice token?); use a user's token")
    })?;
    Ok((who.user_id, device))
}

/// A failed request as the operator should read it: refused credentials name `key`, a homeserver that could
/// not be reached names the URL.
pub(super) fn classify(url: &str, key: &'static str, e: &matrix_sdk::Error) -> MatrixError {
    match e.client_api_error_kind() {
        Some(ErrorKind::Forbidden | ErrorKind::UnknownToken(_) | ErrorKind::UserDeactivated) => {
            MatrixError::Rejected { key, detail: e.to_string() }
        }
        Some(_) => MatrixError::Other(e.to_string()),
        None => MatrixError::Unreachable { url: url.to_string(), detail: e.to_string() },
    }
}
