//! Points in time as plain values: the core never reads a clock, time comes in as an argument.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. Serialized as RFC 3339 text, so the log and the API read as
/// dates; integers (milliseconds) are accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Every event, task row and outbox row holds several: formatted on the stack, without allocating.
        let mut buf = [0u8; 24];
        match self.format_into(&mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.serialize_str(&self.to_rfc3339()),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 date-time or milliseconds since 1970")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
                Timestamp::parse_rfc3339(s).ok_or_else(|| E::custom(format!("{s:?} is not an RFC 3339 date-time")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Timestamp, E> {
                i64::try_from(n).map(Timestamp).map_err(|_| E::custom("timestamp out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }
    pub fn millis(self) -> i64 {
        self.0
    }
    /// RFC 3339 with milliseconds, e.g. `2026-11-24T03:20:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        let mut buf = [0u8; 24];
        if let Some(text) = self.format_into(&mut buf) {
            return text.to_string();
        }
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => format!("@{}ms", self.0),
        }
    }
    /// The RFC 3339 text of a time in the years 0000-9999 (None outside them), written into `buf`.
    /// Days to a civil date by Howard Hinnant's `civil_from_days`.
    fn format_into(self, buf: &mut [u8; 24]) -> Option<&str> {
        // 0000-03-01 .. 9999-12-31, so the year always has four digits.
        if !(-62_162_035_200_000..253_402_300_800_000).contains(&self.0) {
            return None;
        }
        let (days, ms_of_day) = (self.0.div_euclid(86_400_000), self.0.rem_euclid(86_400_000));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let (secs, ms) = (ms_of_day / 1000, ms_of_day % 1000);
        let fields: [(usize, i64, usize); 7] = [
            (0, year, 4),
            (5, month, 2),
            (8, day, 2),
            (11, secs / 3600, 2),
            (14, secs / 60 % 60, 2),
            (17, secs % 60, 2),
            (20, ms, 3),
        ];
        *buf = *b"0000-00-00T00:00:00.000Z";
        for (at, mut value, width) in fields {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        std::str::from_utf8(buf).ok()
    }

    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| Self(t.timestamp_millis()))
    }
    /// How long from `self` until `later` (zero if `later` is not later).
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0).max(0) as u64)
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_millis().min(i64::MAX as u128) as i64))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(d.as_millis().min(i64::MAX as u128) as i64))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// A duration as people write it: "42 s", "10 min", "1 h 2 min", never "0 s".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "under a second".to_string(),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(Duration::from_secs(42)), "42 s");
        assert_eq!(human_duration(Duration::from_millis(400)), "under a second", "never \"0 s\"");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 min");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1 h 2 min");
    }

    #[test]
    fn formats_and_parses_rfc3339() {
        let t = Timestamp(1_795_000_000_123);
        let s = t.to_rfc3339();
        assert!(s.ends_with(".123Z"), "{s}");
        assert_eq!(Timestamp::parse_rfc3339(&s), Some(t));
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn formats_like_chrono_across_the_range() {
        let chrono_text = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        // Edges (epoch, leap days, centuries, the ends of the fast range) and a spread of values between.
        let mut samples =
            vec![0, -1, 951_782_400_000, 951_868_799_999, 4_107_542_400_000, -62_162_035_200_000, 253_402_300_799_999];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push((x % 315_564_000_000_000) as i64 - 62_162_035_200_000);
        }
        for ms in samples {
            assert_eq!(Timestamp(ms).to_rfc3339(), chrono_text(ms), "{ms} ms");
            assert_eq!(Timestamp::parse_rfc3339(&chrono_text(ms)), Some(Timestamp(ms)));
        }
        // Outside four-digit years chrono's own text is used.
        assert_eq!(Timestamp(253_402_300_800_000).to_rfc3339(), chrono_text(253_402_300_800_000));
    }

    #[test]
    fn serializes_as_text_and_reads_text_or_millis() {
        let t = Timestamp(1_795_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, format!("\"{}\"", t.to_rfc3339()));
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert_eq!(serde_json::from_str::<Timestamp>("1795000000123").unwrap(), t);
        assert!(serde_json::from_str::<Timestamp>("\"noon\"").is_err());
    }

    #[test]
    fn arithmetic_saturates_and_until_is_never_negative() {
        let t = Timestamp(1000);
        assert_eq!(t + Duration::from_secs(1), Timestamp(2000));
        assert_eq!(t - Duration::from_secs(1), Timestamp(0));
        assert_eq!(Timestamp(5000).until(Timestamp(1000)), Duration::ZERO);
        assert_eq!(Timestamp(1000).until(Timestamp(5000)), Duration::from_secs(4));
        assert_eq!(Timestamp(i64::MAX - 1) + Duration::from_secs(10), Timestamp(i64::MAX));
    }
}
