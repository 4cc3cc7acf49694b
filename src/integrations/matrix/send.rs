//! Sending: a message with a plain and an HTML body and explicit mentions, as a thread reply or an edit,
//! under a transaction id the caller chooses, so that sending it again never posts twice.

use matrix_sdk::ruma::events::Mentions;
use matrix_sdk::ruma::events::relation::Thread;
use matrix_sdk::ruma::events::room::message::{Relation, ReplacementMetadata, RoomMessageEventContent};
use matrix_sdk::ruma::{EventId, OwnedEventId, OwnedTransactionId, OwnedUserId, UserId};

use super::Bot;

/// A message to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// A configured room, by the name the configuration gives it (`#alias:server`, `!id`) or by its id.
    pub room: String,
    /// The transaction id of `PUT /send/{txnId}`: the same id again (a retry after a crash) yields the same
    /// event instead of a second one. An outbox row's id makes a good one.
    pub txn_id: String,
    /// The plain text, for clients that show no HTML and for notifications.
    pub body: String,
    /// The HTML `formatted_body`, if any. Text from agents and issues in it must be escaped by the caller.
    pub html: Option<String>,
    /// The users the message pings (`m.mentions`); empty pings no one, whatever the text says.
    pub mentions: Vec<String>,
    pub relation: Option<MessageRelation>,
}

/// Where a message hangs.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageRelation {
    /// A reply in the thread of this root event.
    Thread { root: String },
    /// An edit (`m.replace`) of this event: clients show the new text in its place.
    Replace { event_id: String },
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Not one of `matrix.rooms`, or not joined (yet): sending may work once the bot is in it.
    #[error("{0} is not a room the bot is in (matrix.rooms)")]
    UnknownRoom(String),
    /// The message itself is wrong (an id that does not parse): sending it again cannot help.
    #[error("{0}")]
    Invalid(String),
    /// The homeserver refused or could not be reached; 429s were already waited out.
    #[error("sending to Matrix failed: {0}")]
    Matrix(#[from] matrix_sdk::Error),
}

impl SendError {
    /// Whether trying again later can succeed.
    pub fn is_permanent(&self) -> bool {
        match self {
            SendError::Invalid(_) => true,
            SendError::UnknownRoom(_) => false,
            SendError::Matrix(e) => {
                e.as_client_api_error().is_some_and(|api| api.status_code.is_client_error() && api.status_code != 429)
            }
        }
    }
}

impl Bot {
    /// Sends `message` and returns its event id. In an encrypted room it is encrypted for the members'
    /// devices. A 429 is waited out for its `retry_after_ms` (matrix-sdk's request retries).
    pub async fn send(&self, message: &OutgoingMessage) -> Result<OwnedEventId, SendError> {
        let room_id = self.room_id(&message.room).ok_or_else(|| SendError::UnknownRoom(message.room.clone()))?;
        let room = self.client.get_room(&room_id).ok_or_else(|| SendError::UnknownRoom(message.room.clone()))?;
        let content = content(message)?;
        let txn: OwnedTransactionId = message.txn_id.as_str().into();
        Ok(room.send(content).with_transaction_id(txn).await?.response.event_id)
    }
}

fn content(message: &OutgoingMessage) -> Result<RoomMessageEventContent, SendError> {
    let mentions = message
        .mentions
        .iter()
        .map(|u| UserId::parse(u.as_str()).map_err(|e| SendError::Invalid(format!("mention {u:?}: {e}"))))
        .collect::<Result<Vec<OwnedUserId>, _>>()?;
    let event = |id: &str| EventId::parse(id).map_err(|e| SendError::Invalid(format!("event id {id:?}: {e}")));
    let base = match &message.html {
        Some(html) => RoomMessageEventContent::text_html(&message.body, html),
        None => RoomMessageEventContent::text_plain(&message.body),
    };
    // Always explicit: an absent m.mentions lets clients guess pings from the text, which agents write.
    let mut content = base.add_mentions(Mentions::with_user_ids(mentions));
    match &message.relation {
        None => {}
        Some(MessageRelation::Thread { root }) => {
            let root = event(root)?;
            content.relates_to = Some(Relation::Thread(Thread::plain(root.clone(), root)));
        }
        Some(MessageRelation::Replace { event_id }) => {
            let mentions = content.mentions.clone();
            content = content.make_replacement(ReplacementMetadata::new(event(event_id)?, None));
            // The fallback keeps its own explicit mentions, so that the edit pings no one new by accident.
            content.mentions = mentions.or_else(|| Some(Mentions::new()));
        }
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(relation: Option<MessageRelation>) -> OutgoingMessage {
        OutgoingMessage {
            room: "!r".into(),
            txn_id: "t1".into(),
            body: "task 7 started".into(),
            html: Some("task <b>7</b> started".into()),
            mentions: vec![],
            relation,
        }
    }

    #[test]
    fn every_message_carries_explicit_mentions_and_its_relation() {
        let json = |m: &OutgoingMessage| serde_json::to_value(content(m).unwrap()).unwrap();
        let plain = json(&message(None));
        assert_eq!(plain["m.mentions"], serde_json::json!({}), "{plain}");
        assert_eq!(plain["formatted_body"], "task <b>7</b> started");

        let thread = json(&message(Some(MessageRelation::Thread { root: "$root".into() })));
        assert_eq!(thread["m.relates_to"]["rel_type"], "m.thread", "{thread}");
        assert_eq!(thread["m.relates_to"]["event_id"], "$root");

        let edit = json(&message(Some(MessageRelation::Replace { event_id: "$first".into() })));
        assert_eq!(edit["m.relates_to"]["rel_type"], "m.replace", "{edit}");
        assert_eq!(edit["m.relates_to"]["event_id"], "$first");
        assert_eq!(edit["m.new_content"]["body"], "task 7 started");
        assert_eq!(edit["body"], "* task 7 started");
        assert_eq!(edit["m.mentions"], serde_json::json!({}), "{edit}");

        let mut bad = message(None);
        bad.mentions = vec!["alice".into()];
        assert!(matches!(content(&bad), Err(SendError::Invalid(_))));
    }
}
