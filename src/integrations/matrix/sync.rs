//! Syncing: every text message in the bot's rooms reaches the inbox once, across restarts and crashes.
//!
//! The sync token lives in forgefleet's own store, written in the same transaction as the messages it moves
//! past (`Command::MatrixSynced`). A crash before that commit replays the same sync on the next start, and
//! the replay finds its messages recorded already (keyed by event id): nothing is lost, nothing is recorded
//! twice. On the very first start (no token yet) the rooms' history is skipped, so old commands never run.

use std::time::Duration;

use matrix_sdk::Room;
use matrix_sdk::config::{SyncSettings, SyncToken};
use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::filter::{FilterDefinition, RoomEventFilter, RoomFilter};
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::{MessageType, Relation};
use matrix_sdk::ruma::events::{AnySyncMessageLikeEvent, AnySyncStateEvent, AnySyncTimelineEvent};
use matrix_sdk::ruma::{UInt, UserId};
use matrix_sdk::sync::SyncResponse;

use super::Bot;
use crate::engine::{Command, EngineError, EngineHandle};
use crate::store::InboxMessage;

/// Events per room one sync returns at most; more than that since the last sync is a gap (`limited`),
/// which is backfilled from `/messages`.
pub const TIMELINE_LIMIT: u32 = 20;

/// How long the homeserver holds a sync open when nothing happens.
const LONG_POLL: Duration = Duration::from_secs(30);

/// Backfill page size.
const PAGE: u32 = 100;

fn settings(token: SyncToken) -> SyncSettings {
    let mut timeline = RoomEventFilter::default();
    timeline.limit = Some(UInt::from(TIMELINE_LIMIT));
    let mut room = RoomFilter::default();
    room.timeline = timeline;
    let mut filter = FilterDefinition::default();
    filter.room = room;
    SyncSettings::new().token(token).timeout(LONG_POLL).filter(Filter::FilterDefinition(filter))
}

/// Syncs until the engine stops: records each sync's messages and token through the engine, answers
/// invites. A failed sync is tried again from the same token after a pause.
pub async fn run(bot: Bot, engine: EngineHandle, mut token: Option<String>) -> Result<(), EngineError> {
    let mut pause = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let first = token.is_none();
        let requested = token.clone().map_or(SyncToken::NoToken, SyncToken::Specific);
        let response = match bot.client.sync_once(settings(requested)).await {
            Ok(r) => r,
            Err(e) => {
                pause.wait_after("Matrix sync failed (matrix.homeserver_url); trying again", &e).await;
                continue;
            }
        };
        pause.reset();
        bot.answer_invites(response.rooms.invited.keys().cloned()).await;
        let messages = if first {
            // The first start: what is in the rooms already is history, never commands to run.
            tracing::info!("first Matrix sync: the rooms' history is skipped");
            Vec::new()
        } else {
            match collect(&bot, &response, token.as_deref().unwrap_or_default()).await {
                Ok(m) => m,
                Err(e) => {
                    // The token does not move: the next sync returns the same gap and the backfill is retried.
                    pause.wait_after("Matrix backfill failed; syncing again", &e).await;
                    continue;
                }
            }
        };
        let next_batch = response.next_batch.clone();
        let count = messages.len();
        match engine.send(Command::MatrixSynced { next_batch: next_batch.clone(), messages }).await {
            Ok(reply) => {
                if count > 0 {
                    tracing::debug!(?reply, "Matrix messages recorded");
                }
                token = Some(next_batch);
            }
            Err(EngineError::Stopped) => return Err(EngineError::Stopped),
            Err(e) => pause.wait_after("cannot record a Matrix sync; it is fetched again", &e).await,
        }
    }
}

/// The text messages of a sync in the configured rooms, oldest first, with the gaps of limited timelines
/// filled from `/messages` starting at `since` (the token this sync started from).
async fn collect(bot: &Bot, response: &SyncResponse, since: &str) -> Result<Vec<InboxMessage>, matrix_sdk::Error> {
    let me = bot.user_id();
    let mut out = Vec::new();
    for (room_id, update) in &response.rooms.joined {
        if !bot.rooms.contains(room_id) {
            continue;
        }
        let events = &update.timeline.events;
        // The bot's own join in this timeline: what comes before it is the room's history, not for the bot.
        let joined_at = events.iter().rposition(|e| is_own_join(e, &me));
        let start = joined_at.map_or(0, |i| i + 1);
        if joined_at.is_none()
            && update.timeline.limited
            && let (Some(prev_batch), Some(room)) = (&update.timeline.prev_batch, bot.client.get_room(room_id))
        {
            let filled = backfill(&room, since, prev_batch, &me).await?;
            tracing::info!(room_id = %room_id, messages = filled.len(), "backfilled a gap in the Matrix timeline");
            out.extend(filled);
        }
        out.extend(events[start..].iter().filter_map(|e| text_message(e, room_id.as_str(), &me)));
    }
    Ok(out)
}

/// The messages between `from` (a sync token) and `to` (the limited timeline's `prev_batch`), oldest first.
async fn backfill(room: &Room, from: &str, to: &str, me: &UserId) -> Result<Vec<InboxMessage>, matrix_sdk::Error> {
    let mut out = Vec::new();
    let mut from = from.to_string();
    loop {
        let mut options = MessagesOptions::forward().from(from.as_str());
        options.to = Some(to.to_string());
        options.limit = UInt::from(PAGE);
        let page = room.messages(options).await?;
        out.extend(page.chunk.iter().filter_map(|e| text_message(e, room.room_id().as_str(), me)));
        match page.end {
            Some(end) if !page.chunk.is_empty() && end != from => from = end,
            _ => return Ok(out),
        }
    }
}

fn is_own_join(event: &TimelineEvent, me: &UserId) -> bool {
    let Ok(AnySyncTimelineEvent::State(AnySyncStateEvent::RoomMember(member))) = event.raw().deserialize() else {
        return false;
    };
    let Some(original) = member.as_original() else { return false };
    original.state_key == me
        && original.content.membership == MembershipState::Join
        && original.unsigned.prev_content.as_ref().map(|p| &p.membership) != Some(&MembershipState::Join)
}

/// A text message from someone else, as the inbox keeps it. Edits are left out: a command runs from the
/// message it was first sent in.
fn text_message(event: &TimelineEvent, room: &str, me: &UserId) -> Option<InboxMessage> {
    let parsed = match event.raw().deserialize() {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "skipping a Matrix event that does not parse");
            return None;
        }
    };
    if let AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomEncrypted(e)) = &parsed {
        tracing::warn!(event_id = %e.event_id(), room, "a Matrix message could not be decrypted; it is skipped");
        return None;
    }
    let AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(message)) = parsed else {
        return None;
    };
    let original = message.as_original()?;
    if original.sender == me || matches!(original.content.relates_to, Some(Relation::Replacement(_))) {
        return None;
    }
    let MessageType::Text(text) = &original.content.msgtype else { return None };
    Some(InboxMessage {
        event_id: original.event_id.to_string(),
        room: room.to_string(),
        sender: original.sender.to_string(),
        body: text.body.clone(),
        origin_server_ts: i64::from(original.origin_server_ts.0),
    })
}

/// Doubling pauses between failed attempts, from `first` up to `cap`.
pub(super) struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(first: Duration, cap: Duration) -> Self {
        Self { first, cap, next: first }
    }

    pub(super) fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.cap);
        now
    }

    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }

    /// Logs `what` went wrong and why; the pause to sleep before trying again.
    pub(super) fn wait_after(&mut self, what: &str, error: &dyn std::fmt::Display) -> tokio::time::Sleep {
        let wait = self.next();
        tracing::warn!(error = %error, retry_in = ?wait, "{what}");
        tokio::time::sleep(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_starts_over_after_a_success() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let seen: Vec<u64> = (0..5).map(|_| b.next().as_secs()).collect();
        assert_eq!(seen, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next().as_secs(), 1);
    }

    #[test]
    fn only_text_from_others_that_is_not_an_edit_reaches_the_inbox() {
        let me = UserId::parse("@bot:localhost").unwrap();
        let event = |json: serde_json::Value| TimelineEvent::from_plaintext(serde_json::from_value(json).unwrap());
        let text = |sender: &str, content: serde_json::Value| {
            event(serde_json::json!({
                "type": "m.room.message", "event_id": "$e1", "sender": sender,
                "origin_server_ts": 1_700_000_000_000u64, "content": content,
            }))
        };
        let got = text_message(
            &text("@alice:localhost", serde_json::json!({"msgtype": "m.text", "body": "/fleet status"})),
            "!r",
            &me,
        )
        .unwrap();
        assert_eq!(
            (got.body.as_str(), got.sender.as_str(), got.origin_server_ts),
            ("/fleet status", "@alice:localhost", 1_700_000_000_000)
        );
        assert!(
            text_message(&text("@bot:localhost", serde_json::json!({"msgtype": "m.text", "body": "x"})), "!r", &me)
                .is_none()
        );
        assert!(
            text_message(&text("@alice:localhost", serde_json::json!({"msgtype": "m.notice", "body": "x"})), "!r", &me)
                .is_none()
        );
        let edit = serde_json::json!({
            "msgtype": "m.text", "body": "* x",
            "m.new_content": {"msgtype": "m.text", "body": "x"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$e0"},
        });
        assert!(text_message(&text("@alice:localhost", edit), "!r", &me).is_none());
    }
}
