//! The Matrix bot's inbox: messages from its rooms, recorded once each together with the sync token.

use rusqlite::params;

use super::{ReadView, Result, WriteTx};
use crate::core::Timestamp;

/// The `meta` key of the Matrix sync token (`next_batch`) the bot resumes from.
pub const MATRIX_NEXT_BATCH: &str = "matrix.next_batch";

/// A text message seen in one of the bot's rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxMessage {
    pub event_id: String,
    /// The room's id (`!id` or `!id:server`).
    pub room: String,
    pub sender: String,
    pub body: String,
    /// The homeserver's timestamp of the event, in milliseconds.
    pub origin_server_ts: i64,
}

/// An inbox row with what the store adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    pub message: InboxMessage,
    pub received_at: Timestamp,
    pub handled_at: Option<Timestamp>,
}

impl WriteTx<'_> {
    /// Records `messages` (those already recorded are left as they are) and moves the sync token to
    /// `next_batch`, in this one transaction: a crash before the commit replays the same sync, and the
    /// replay finds its messages recorded. Returns the messages that were new, which the caller handles in
    /// the same transaction ([`WriteTx::matrix_handled`]).
    pub fn record_matrix_sync<'m>(
        &self,
        next_batch: &str,
        messages: &'m [InboxMessage],
        at: Timestamp,
    ) -> Result<Vec<&'m InboxMessage>> {
        let mut insert = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO matrix_inbox (event_id, room, sender, body, origin_server_ts, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut new = Vec::new();
        for m in messages {
            if insert.execute(params![m.event_id, m.room, m.sender, m.body, m.origin_server_ts, at.0])? == 1 {
                new.push(m);
            }
        }
        self.set_meta(MATRIX_NEXT_BATCH, next_batch)?;
        Ok(new)
    }

    /// The command path took the message (its commands, if any, are queued).
    pub fn matrix_handled(&self, event_id: &str, at: Timestamp) -> Result<()> {
        self.tx
            .prepare_cached("UPDATE matrix_inbox SET handled_at = ?2 WHERE event_id = ?1 AND handled_at IS NULL")?
            .execute(params![event_id, at.0])?;
        Ok(())
    }

    /// Remembers the event a message key (`task:12`, `agent:3`) was first posted as: later news edits it or
    /// hangs in its thread.
    pub fn set_matrix_message(&self, key: &str, room: &str, event_id: &str, at: Timestamp) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO matrix_messages (key, room, event_id, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(key) DO NOTHING",
            )?
            .execute(params![key, room, event_id, at.0])?;
        Ok(())
    }
}

impl ReadView<'_> {
    /// The Matrix sync token the bot stopped at, if it ever synced.
    pub fn matrix_next_batch(&self) -> Result<Option<String>> {
        self.meta(MATRIX_NEXT_BATCH)
    }

    /// The room and event a message key was first posted as.
    pub fn matrix_message(&self, key: &str) -> Result<Option<(String, String)>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .prepare_cached("SELECT room, event_id FROM matrix_messages WHERE key = ?1")?
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// The inbox in the order messages arrived, oldest first, at most `limit`.
    pub fn matrix_inbox(&self, limit: u32) -> Result<Vec<InboxRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT event_id, room, sender, body, origin_server_ts, received_at, handled_at
             FROM matrix_inbox ORDER BY rowid LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(InboxRow {
                message: InboxMessage {
                    event_id: r.get(0)?,
                    room: r.get(1)?,
                    sender: r.get(2)?,
                    body: r.get(3)?,
                    origin_server_ts: r.get(4)?,
                },
                received_at: Timestamp(r.get(5)?),
                handled_at: r.get::<_, Option<i64>>(6)?.map(Timestamp),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
