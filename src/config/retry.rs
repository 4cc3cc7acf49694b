//! `[retry.<class>]`: the retry budget and backoff of each failure class, defaulting to the core's policy.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::{FailureClass, RetryPolicy, RetryRule};

/// One failure class: retried up to `max_retries` times, waiting `base_secs * 2^n`, at most `cap_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryClassConfig {
    /// Retries before the task fails; 0 never retries. Default: per class, see [`RetryConfig`].
    pub max_retries: u32,
    /// Wait before the first retry, in seconds; doubled for each further retry. Must be above 0.
    /// Default: per class, see [`RetryConfig`].
    pub base_secs: u64,
    /// Longest wait between retries, in seconds; at least `base_secs`. Default: per class, see [`RetryConfig`].
    pub cap_secs: u64,
}

impl RetryClassConfig {
    fn of(policy: &RetryPolicy, class: FailureClass) -> Self {
        // Every class but `cancelled` has a rule in the core's default policy, and `cancelled` has no section.
        let rule = policy.rule(class).copied().expect("the default retry policy has a rule for every retried class");
        Self { max_retries: rule.max_retries, base_secs: rule.base.as_secs(), cap_secs: rule.cap.as_secs() }
    }

    fn rule(&self) -> RetryRule {
        RetryRule {
            max_retries: self.max_retries,
            base: Duration::from_secs(self.base_secs),
            cap: Duration::from_secs(self.cap_secs),
        }
    }
}

/// The retry rules by failure class. There is no `[retry.cancelled]`: a cancelled task is never retried.
///
/// A section that sets only some keys keeps its class's defaults for the others, which is why this is read
/// through a patch rather than with a struct-wide `#[serde(default)]` (that would give every class the same
/// fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, from = "RetryPatch")]
pub struct RetryConfig {
    /// The agent stopped heartbeating. Default: `max_retries = 3, base_secs = 60, cap_secs = 1800`.
    pub agent_lost: RetryClassConfig,
    /// The attempt ran past `tasks.timeout_mins`. Default: `max_retries = 1, base_secs = 300, cap_secs = 3600`.
    pub timeout: RetryClassConfig,
    /// The agent CLI failed. Default: `max_retries = 2, base_secs = 120, cap_secs = 3600`.
    pub agent_error: RetryClassConfig,
    /// The receipt did not check out. Default: `max_retries = 2, base_secs = 60, cap_secs = 1800`.
    pub verification_failed: RetryClassConfig,
    /// The pull request's CI failed or did not finish (where required). Default: `max_retries = 2,
    /// base_secs = 60, cap_secs = 1800`.
    pub checks_failed: RetryClassConfig,
    /// The model provider asked to slow down. Default: `max_retries = 5, base_secs = 600, cap_secs = 14400`.
    pub rate_limited: RetryClassConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        Self {
            agent_lost: RetryClassConfig::of(&p, FailureClass::AgentLost),
            timeout: RetryClassConfig::of(&p, FailureClass::Timeout),
            agent_error: RetryClassConfig::of(&p, FailureClass::AgentError),
            verification_failed: RetryClassConfig::of(&p, FailureClass::VerificationFailed),
            checks_failed: RetryClassConfig::of(&p, FailureClass::ChecksFailed),
            rate_limited: RetryClassConfig::of(&p, FailureClass::RateLimited),
        }
    }
}

impl RetryConfig {
    /// Every configurable class with its rule, in the order of the file.
    pub fn classes(&self) -> [(FailureClass, &RetryClassConfig); 6] {
        [
            (FailureClass::AgentLost, &self.agent_lost),
            (FailureClass::Timeout, &self.timeout),
            (FailureClass::AgentError, &self.agent_error),
            (FailureClass::VerificationFailed, &self.verification_failed),
            (FailureClass::ChecksFailed, &self.checks_failed),
            (FailureClass::RateLimited, &self.rate_limited),
        ]
    }

    /// The core's policy with these rules.
    pub fn policy(&self) -> RetryPolicy {
        self.classes().into_iter().fold(RetryPolicy::default(), |p, (class, c)| p.with_rule(class, c.rule()))
    }
}

/// What a `[retry]` table may say; anything left out keeps the class's default.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RetryPatch {
    agent_lost: ClassPatch,
    timeout: ClassPatch,
    agent_error: ClassPatch,
    verification_failed: ClassPatch,
    checks_failed: ClassPatch,
    rate_limited: ClassPatch,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ClassPatch {
    max_retries: Option<u32>,
    base_secs: Option<u64>,
    cap_secs: Option<u64>,
}

impl ClassPatch {
    fn over(self, d: RetryClassConfig) -> RetryClassConfig {
        RetryClassConfig {
            max_retries: self.max_retries.unwrap_or(d.max_retries),
            base_secs: self.base_secs.unwrap_or(d.base_secs),
            cap_secs: self.cap_secs.unwrap_or(d.cap_secs),
        }
    }
}

impl From<RetryPatch> for RetryConfig {
    fn from(p: RetryPatch) -> Self {
        let d = RetryConfig::default();
        Self {
            agent_lost: p.agent_lost.over(d.agent_lost),
            timeout: p.timeout.over(d.timeout),
            agent_error: p.agent_error.over(d.agent_error),
            verification_failed: p.verification_failed.over(d.verification_failed),
            checks_failed: p.checks_failed.over(d.checks_failed),
            rate_limited: p.rate_limited.over(d.rate_limited),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_defaults_are_the_core_policy() {
        assert_eq!(RetryConfig::default().policy(), RetryPolicy::default());
        let d = RetryConfig::default();
        let as_tuple = |c: &RetryClassConfig| (c.max_retries, c.base_secs, c.cap_secs);
        assert_eq!(as_tuple(&d.agent_lost), (3, 60, 1800));
        assert_eq!(as_tuple(&d.timeout), (1, 300, 3600));
        assert_eq!(as_tuple(&d.agent_error), (2, 120, 3600));
        assert_eq!(as_tuple(&d.verification_failed), (2, 60, 1800));
        assert_eq!(as_tuple(&d.rate_limited), (5, 600, 14400));
    }

    #[test]
    fn a_partial_retry_section_keeps_its_own_class_defaults() {
        let r: RetryConfig = toml::from_str("[timeout]\nmax_retries = 4\n[rate_limited]\ncap_secs = 99999").unwrap();
        assert_eq!(r.timeout, RetryClassConfig { max_retries: 4, base_secs: 300, cap_secs: 3600 });
        assert_eq!(r.rate_limited, RetryClassConfig { max_retries: 5, base_secs: 600, cap_secs: 99999 });
        assert_eq!(r.agent_lost, RetryConfig::default().agent_lost);
        let rule = r.policy().rule(FailureClass::Timeout).copied().unwrap();
        assert_eq!((rule.max_retries, rule.base.as_secs()), (4, 300));
    }
}
