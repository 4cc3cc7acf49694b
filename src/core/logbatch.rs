//! Batching of chatty line streams (an agent's progress) for a chat room: at most one batch per key every
//! `interval`, at most `cap` lines in a batch (the newest; the rest are counted as skipped), so a chatty agent
//! cannot flood the room however much it writes. Time is passed in.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::time::Timestamp;

/// Lines from one key, ready to send, and how many were left out since the previous batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<K> {
    pub key: K,
    pub lines: Vec<String>,
    pub skipped: u64,
}

#[derive(Debug, Clone, Default)]
struct Pending {
    lines: VecDeque<String>,
    skipped: u64,
    last_sent: Option<Timestamp>,
}

#[derive(Debug, Clone)]
pub struct LogBatcher<K: Ord> {
    interval: Duration,
    cap: usize,
    pending: BTreeMap<K, Pending>,
}

impl<K: Ord + Clone> LogBatcher<K> {
    pub fn new(interval: Duration, cap: usize) -> Self {
        LogBatcher { interval, cap: cap.max(1), pending: BTreeMap::new() }
    }

    /// Adds `lines` for `key`; returns its batch if one is due now (the key has been quiet for `interval`).
    pub fn push(&mut self, key: K, lines: impl IntoIterator<Item = String>, now: Timestamp) -> Option<Batch<K>> {
        let p = self.pending.entry(key.clone()).or_default();
        for line in lines {
            p.lines.push_back(line);
            if p.lines.len() > self.cap {
                p.lines.pop_front();
                p.skipped += 1;
            }
        }
        self.take_if_due(&key, now)
    }

    /// Every batch that is due now, oldest key first.
    pub fn due(&mut self, now: Timestamp) -> Vec<Batch<K>> {
        let keys: Vec<K> = self.pending.keys().cloned().collect();
        keys.iter().filter_map(|k| self.take_if_due(k, now)).collect()
    }

    fn take_if_due(&mut self, key: &K, now: Timestamp) -> Option<Batch<K>> {
        let p = self.pending.get_mut(key)?;
        if p.lines.is_empty() && p.skipped == 0 {
            // Quiet for a whole interval since its last batch: forget it (a key per agent that ever spoke).
            if p.last_sent.is_none_or(|t| now >= t + self.interval) {
                self.pending.remove(key);
            }
            return None;
        }
        if p.last_sent.is_some_and(|t| now < t + self.interval) {
            return None;
        }
        p.last_sent = Some(now);
        Some(Batch { key: key.clone(), lines: p.lines.drain(..).collect(), skipped: std::mem::take(&mut p.skipped) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_lines_in_a_minute_make_at_most_one_batch_per_interval_each_bounded() {
        let mut b = LogBatcher::new(Duration::from_secs(5), 20);
        let start = Timestamp(1_000_000);
        let mut batches = Vec::new();
        for i in 0..10_000u64 {
            // 10,000 lines spread over 60 s.
            let now = start + Duration::from_millis(i * 6);
            batches.extend(b.push("a1", [format!("line {i}")], now));
        }
        batches.extend(b.due(start + Duration::from_secs(65)));
        assert!(batches.len() <= 14, "{}", batches.len());
        assert!(batches.iter().all(|x| x.lines.len() <= 20));
        let seen: u64 = batches.iter().map(|x| x.lines.len() as u64 + x.skipped).sum();
        assert_eq!(seen, 10_000, "every line is sent or counted as skipped");
        assert_eq!(batches.last().unwrap().lines.last().unwrap(), "line 9999", "the newest lines are kept");
    }

    #[test]
    fn keys_are_batched_apart_and_a_quiet_key_is_sent_at_once() {
        let mut b = LogBatcher::new(Duration::from_secs(5), 3);
        let t = Timestamp(0) + Duration::from_secs(100);
        assert_eq!(b.push("a", ["1".to_string()], t).unwrap().lines, ["1"]);
        assert!(b.push("a", ["2".to_string()], t + Duration::from_secs(1)).is_none(), "within the interval");
        assert_eq!(b.push("b", ["x".to_string()], t).unwrap().lines, ["x"], "another key is not held back");
        assert!(b.due(t + Duration::from_secs(4)).is_empty());
        let due = b.due(t + Duration::from_secs(5));
        assert_eq!(due, [Batch { key: "a", lines: vec!["2".to_string()], skipped: 0 }]);
        assert!(b.due(t + Duration::from_secs(60)).is_empty());
        assert!(b.pending.is_empty(), "quiet keys are forgotten");
    }
}
