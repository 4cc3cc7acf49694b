//! Failure classes and the retry policy: how often each kind of failure is retried, and how long to wait.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::time::Timestamp;

/// Why an attempt ended without success. Each class has its own retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The agent stopped heartbeating (or never started the task in time).
    AgentLost,
    /// The task ran past its time limit.
    Timeout,
    /// The agent CLI failed.
    AgentError,
    /// The receipt did not check out.
    VerificationFailed,
    /// The pull request's CI failed (or did not finish in time), where the repository requires it.
    ChecksFailed,
    /// The model provider said to slow down: wait longer.
    RateLimited,
    /// Someone cancelled it: never retried.
    Cancelled,
}

impl FailureClass {
    /// A sentence for people about what the class means.
    pub fn explain(self) -> &'static str {
        match self {
            FailureClass::AgentLost => "The agent stopped answering (no heartbeats), so its work was taken back.",
            FailureClass::Timeout => "The task ran past its time limit.",
            FailureClass::AgentError => "The agent's command failed.",
            FailureClass::VerificationFailed => "The pull request the agent reported did not check out.",
            FailureClass::ChecksFailed => "The pull request's CI checks failed or did not finish in time.",
            FailureClass::RateLimited => "The model provider asked to slow down.",
            FailureClass::Cancelled => "It was cancelled.",
        }
    }

    pub const ALL: [FailureClass; 7] = [
        FailureClass::AgentLost,
        FailureClass::Timeout,
        FailureClass::AgentError,
        FailureClass::VerificationFailed,
        FailureClass::ChecksFailed,
        FailureClass::RateLimited,
        FailureClass::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::AgentLost => "agent_lost",
            FailureClass::Timeout => "timeout",
            FailureClass::AgentError => "agent_error",
            FailureClass::VerificationFailed => "verification_failed",
            FailureClass::ChecksFailed => "checks_failed",
            FailureClass::RateLimited => "rate_limited",
            FailureClass::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailureClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureClass::ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown failure class {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// How one failure class is retried: up to `max_retries` times, waiting `base * 2^n`, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryRule {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryRule {
    /// The wait before retry number `n` (0 for the first retry).
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.cap).min(self.cap)
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum RetryDecision {
    /// Queue the next attempt, not before the given time.
    Retry { not_before: Timestamp, retries_left: u32 },
    /// The budget of this class is spent (or the class is never retried).
    GiveUp,
}

/// The retry rules of every class except `cancelled`, which is never retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    rules: BTreeMap<FailureClass, RetryRule>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        let rule = |max_retries, base, cap| RetryRule { max_retries, base, cap };
        let rules = BTreeMap::from([
            (FailureClass::AgentLost, rule(3, min(1), min(30))),
            (FailureClass::Timeout, rule(1, min(5), min(60))),
            (FailureClass::AgentError, rule(2, min(2), min(60))),
            (FailureClass::VerificationFailed, rule(2, min(1), min(30))),
            // A red CI is worth a couple of tries on the same branch; a person looks after that.
            (FailureClass::ChecksFailed, rule(2, min(1), min(30))),
            // Providers ask for patience: wait longer and try more often.
            (FailureClass::RateLimited, rule(5, min(10), min(240))),
        ]);
        Self { rules }
    }
}

impl RetryPolicy {
    /// Replaces the rule of one class. `cancelled` is never retried, so a rule for it is ignored.
    pub fn with_rule(mut self, class: FailureClass, rule: RetryRule) -> Self {
        if class != FailureClass::Cancelled {
            self.rules.insert(class, rule);
        }
        self
    }

    pub fn rule(&self, class: FailureClass) -> Option<&RetryRule> {
        self.rules.get(&class)
    }

    /// Decides the fate of a task whose attempt failed with `class`, given how many retries of that class
    /// it has had already.
    pub fn decide(&self, class: FailureClass, retries_used: u32, now: Timestamp) -> RetryDecision {
        match self.rules.get(&class) {
            Some(rule) if retries_used < rule.max_retries => RetryDecision::Retry {
                not_before: now + rule.backoff(retries_used),
                retries_left: rule.max_retries - retries_used - 1,
            },
            _ => RetryDecision::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_000_000);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryRule { max_retries: 10, base: secs(60), cap: secs(300) };
        let waits: Vec<_> = (0..5).map(|n| r.backoff(n).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 300, 300]);
        assert_eq!(r.backoff(200), secs(300), "huge exponents saturate at the cap");
    }

    #[test]
    fn every_class_gets_its_own_decision() {
        let p = RetryPolicy::default();
        for class in FailureClass::ALL {
            let first = p.decide(class, 0, NOW);
            match class {
                FailureClass::Cancelled => assert_eq!(first, RetryDecision::GiveUp),
                _ => {
                    let rule = p.rule(class).unwrap();
                    assert_eq!(
                        first,
                        RetryDecision::Retry { not_before: NOW + rule.base, retries_left: rule.max_retries - 1 },
                        "{class}"
                    );
                    assert_eq!(p.decide(class, rule.max_retries, NOW), RetryDecision::GiveUp, "{class}");
                    let last = p.decide(class, rule.max_retries - 1, NOW);
                    assert!(matches!(last, RetryDecision::Retry { retries_left: 0, .. }), "{class}: {last:?}");
                }
            }
        }
    }

    #[test]
    fn rate_limited_waits_longer_than_agent_errors() {
        let p = RetryPolicy::default();
        let wait = |c| match p.decide(c, 0, NOW) {
            RetryDecision::Retry { not_before, .. } => not_before.0 - NOW.0,
            RetryDecision::GiveUp => panic!("{c} should retry"),
        };
        assert!(wait(FailureClass::RateLimited) > wait(FailureClass::AgentError));
    }

    #[test]
    fn a_zero_budget_never_retries_and_cancelled_cannot_be_configured() {
        let none = RetryRule { max_retries: 0, base: secs(1), cap: secs(1) };
        let p = RetryPolicy::default()
            .with_rule(FailureClass::Timeout, none)
            .with_rule(FailureClass::Cancelled, RetryRule { max_retries: 9, ..none });
        assert_eq!(p.decide(FailureClass::Timeout, 0, NOW), RetryDecision::GiveUp);
        assert_eq!(p.decide(FailureClass::Cancelled, 0, NOW), RetryDecision::GiveUp);
    }

    #[test]
    fn class_names_parse_and_say_what_is_expected() {
        for c in FailureClass::ALL {
            assert_eq!(c.as_str().parse::<FailureClass>().unwrap(), c);
        }
        let err = "oops".parse::<FailureClass>().unwrap_err();
        assert!(err.contains("agent_lost") && err.contains("rate_limited"), "{err}");
    }
}
