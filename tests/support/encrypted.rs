//! An encrypted room with a person's own matrix-sdk client, for the test binaries that raise their recursion
//! limit (`tokio::spawn` of a matrix-sdk sync needs it): included by path, not through `support`.

use super::support::synapse::{User, synapse};

/// A person's own matrix-sdk client (with its own keys, syncing in the background), logged in as `person`, in
/// a new encrypted room it made with `invite` invited. The sync stops when the returned handle is aborted.
pub async fn encrypted_room(
    person: &User,
    invite: &User,
) -> (matrix_sdk::Client, matrix_sdk::Room, tokio::task::JoinHandle<matrix_sdk::Result<()>>) {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::ruma::api::client::room::create_room;
    use matrix_sdk::ruma::events::InitialStateEvent;
    use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;

    let client = matrix_sdk::Client::builder().homeserver_url(synapse().url()).build().await.unwrap();
    client.matrix_auth().login_username(&person.name, &person.password).send().await.unwrap();
    let mut request = create_room::v3::Request::new();
    request.invite = vec![matrix_sdk::ruma::UserId::parse(invite.user_id.as_str()).unwrap()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any(),
    ];
    let room = client.create_room(request).await.unwrap();
    let syncing = tokio::spawn({
        let client = client.clone();
        async move { client.sync(SyncSettings::default()).await }
    });
    (client, room, syncing)
}

/// A bot user and a person, the person's client, and an encrypted room it made with the bot invited.
pub struct Cast {
    pub bot: User,
    pub bot_id: matrix_sdk::ruma::OwnedUserId,
    pub client: matrix_sdk::Client,
    pub room: matrix_sdk::Room,
    pub room_id: String,
    pub syncing: tokio::task::JoinHandle<matrix_sdk::Result<()>>,
}

pub async fn cast() -> Cast {
    let bot = synapse().register("bot").await;
    let human = synapse().register("human").await;
    let (client, room, syncing) = encrypted_room(&human, &bot).await;
    let bot_id = matrix_sdk::ruma::UserId::parse(bot.user_id.as_str()).unwrap();
    let room_id = room.room_id().to_string();
    Cast { bot, bot_id, client, room, room_id, syncing }
}

impl Cast {
    /// Waits until the person's client sees the bot joined, and knows the bot's device `device` (or it would
    /// encrypt for nobody the bot can decrypt as).
    pub async fn bot_is_in(&self, device: &str) {
        use matrix_sdk::ruma::events::room::member::MembershipState;
        super::support::eventually("the person's client sees the bot in the room", || async {
            self.room
                .get_member_no_sync(&self.bot_id)
                .await
                .ok()
                .flatten()
                .is_some_and(|m| *m.membership() == MembershipState::Join)
        })
        .await;
        let device: matrix_sdk::ruma::OwnedDeviceId = device.into();
        super::support::eventually("the person's client knows the bot's device", || async {
            self.client.encryption().get_device(&self.bot_id, &device).await.ok().flatten().is_some()
        })
        .await;
    }
}
