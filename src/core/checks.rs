//! CI as a receipt check: which commit statuses a repository requires on the pull request's head, and what
//! a set of statuses means for the task (still pending, passed, failed). Pure: the statuses come in as data.

use super::text::code;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::time::Timestamp;

/// Which commit statuses must succeed on the pull request's head before the task is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequiredChecks {
    /// Every status on the commit (Forgejo's combined state); at least one must be there.
    All,
    /// These contexts (e.g. `ci/build`, or a Forgejo Actions job's `Workflow / job (event)`), each present and
    /// successful; other statuses are not waited for.
    Named(Vec<String>),
}

impl fmt::Display for RequiredChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequiredChecks::All => f.write_str("every check on the head commit"),
            RequiredChecks::Named(names) => {
                let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                write!(f, "the check(s) {}", quoted.join(", "))
            }
        }
    }
}

/// How people write the requirement, in the configuration and in `fleet.yaml`: `false` (none), `true`
/// (every check on the head commit) or a list of check names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChecksSetting {
    Flag(bool),
    Names(Vec<String>),
}

impl Default for ChecksSetting {
    fn default() -> Self {
        ChecksSetting::Flag(false)
    }
}

impl ChecksSetting {
    /// What is required, or `None`; an empty list or an empty name is an error, said for people.
    pub fn required(&self) -> Result<Option<RequiredChecks>, String> {
        match self {
            ChecksSetting::Flag(false) => Ok(None),
            ChecksSetting::Flag(true) => Ok(Some(RequiredChecks::All)),
            ChecksSetting::Names(names) if names.is_empty() => {
                Err("an empty list requires nothing: write `false`, `true` (every check) or the checks' names".into())
            }
            ChecksSetting::Names(names) if names.iter().any(|n| n.trim().is_empty()) => {
                Err("a check's name must not be empty".into())
            }
            ChecksSetting::Names(names) => Ok(Some(RequiredChecks::Named(names.clone()))),
        }
    }
}

/// A task whose receipt checked out and that now waits for the pull request's CI. The agent's part is over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwaitedChecks {
    pub pr_number: u64,
    /// The verified head: the statuses are read on this commit.
    pub head_sha: String,
    pub required: RequiredChecks,
    /// When it started waiting.
    pub since: Timestamp,
    /// Past this with checks still pending, the attempt fails (`checks_failed`).
    pub deadline: Timestamp,
}

/// One commit status as Forgejo reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    pub context: String,
    /// `pending`, `success`, `error`, `failure` or `warning`.
    pub state: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub target_url: String,
}

impl CommitStatus {
    fn failed(&self) -> bool {
        matches!(self.state.as_str(), "failure" | "error")
    }

    /// `warning` is a finished check that did not fail (Forgejo ranks it between success and failure).
    fn succeeded(&self) -> bool {
        matches!(self.state.as_str(), "success" | "warning" | "skipped")
    }

    /// `name` (state): description <url>, for a comment or a prompt.
    pub fn describe(&self) -> String {
        // Every part is the CI's word, and CI runs the pull request's code: inert text only.
        let mut s = format!("{} ({})", code(&self.context), self.state);
        if !self.description.trim().is_empty() {
            s.push_str(&format!(": {}", code(self.description.trim())));
        }
        if !self.target_url.trim().is_empty() {
            s.push_str(&format!(" {}", code(self.target_url.trim())));
        }
        s
    }
}

/// What the statuses on the head say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksVerdict {
    /// Nothing failed yet and something required has not finished (or not reported at all).
    Pending { waiting_for: Vec<String> },
    /// Every required check succeeded.
    Passed { checks: Vec<CommitStatus> },
    /// A required check failed or errored.
    Failed { failing: Vec<CommitStatus> },
}

impl ChecksVerdict {
    /// For people: which checks passed, what is still awaited, or which failed and why.
    pub fn explain(&self) -> String {
        match self {
            ChecksVerdict::Pending { waiting_for } if waiting_for.is_empty() => {
                "no check has reported on the head commit yet".into()
            }
            ChecksVerdict::Pending { waiting_for } => format!("waiting for {}", waiting_for.join(", ")),
            ChecksVerdict::Passed { checks } => {
                let names: Vec<String> = checks.iter().map(|c| code(&c.context)).collect();
                format!("CI passed on the head commit: {}", names.join(", "))
            }
            ChecksVerdict::Failed { failing } => {
                let what: Vec<String> = failing.iter().map(CommitStatus::describe).collect();
                format!("CI failed on the head commit: {}", what.join("; "))
            }
        }
    }
}

/// Judges the statuses of one commit. A context reported more than once counts by its latest report, which
/// Forgejo lists first, as it does in the combined status.
pub fn judge(required: &RequiredChecks, statuses: &[CommitStatus]) -> ChecksVerdict {
    let mut latest: Vec<&CommitStatus> = Vec::new();
    for s in statuses {
        if !latest.iter().any(|l| l.context == s.context) {
            latest.push(s);
        }
    }
    let relevant: Vec<&CommitStatus> = match required {
        RequiredChecks::All => latest,
        RequiredChecks::Named(names) => latest.into_iter().filter(|s| names.contains(&s.context)).collect(),
    };
    let failing: Vec<CommitStatus> = relevant.iter().filter(|s| s.failed()).map(|s| (*s).clone()).collect();
    if !failing.is_empty() {
        return ChecksVerdict::Failed { failing };
    }
    let mut waiting_for: Vec<String> = relevant.iter().filter(|s| !s.succeeded()).map(|s| code(&s.context)).collect();
    if let RequiredChecks::Named(names) = required {
        for n in names {
            if !relevant.iter().any(|s| &s.context == n) {
                waiting_for.push(format!("{} (not reported yet)", code(n)));
            }
        }
    }
    if relevant.is_empty() || !waiting_for.is_empty() {
        return ChecksVerdict::Pending { waiting_for };
    }
    ChecksVerdict::Passed { checks: relevant.into_iter().cloned().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_ci_says_is_inert_text_in_a_comment() {
        // CI runs the pull request's code: a job may name itself, describe itself and link anywhere.
        let hostile = CommitStatus {
            context: "build `@alice`".into(),
            state: "failure".into(),
            description: "![x](http://evil/x.png)\n/retry".into(),
            target_url: "http://ci> @bob".into(),
        };
        let said = ChecksVerdict::Failed { failing: vec![hostile] }.explain();
        assert_eq!(
            said,
            "CI failed on the head commit: `` build `@alice` `` (failure): `![x](http://evil/x.png) /retry` \
             `http://ci> @bob`"
        );
        assert!(crate::core::commands::parse(&said, crate::core::commands::Place::Issue).is_empty());
    }

    fn status(context: &str, state: &str) -> CommitStatus {
        CommitStatus {
            context: context.into(),
            state: state.into(),
            description: format!("{context} is {state}"),
            target_url: format!("https://ci.example/{context}"),
        }
    }

    #[test]
    fn with_every_check_required_nothing_reported_is_pending_and_one_failure_fails() {
        let all = RequiredChecks::All;
        assert_eq!(judge(&all, &[]), ChecksVerdict::Pending { waiting_for: vec![] });
        let v = judge(&all, &[status("build", "success"), status("lint", "pending")]);
        assert_eq!(v, ChecksVerdict::Pending { waiting_for: vec!["`lint`".into()] });
        let v = judge(&all, &[status("build", "success"), status("lint", "pending"), status("test", "error")]);
        let ChecksVerdict::Failed { failing } = &v else { panic!("{v:?}") };
        assert_eq!(failing.len(), 1);
        assert!(v.explain().contains("`test` (error): `test is error` `https://ci.example/test`"), "{}", v.explain());
        let v = judge(&all, &[status("build", "success"), status("lint", "warning")]);
        assert!(matches!(v, ChecksVerdict::Passed { ref checks } if checks.len() == 2), "{v:?}");
    }

    #[test]
    fn named_checks_wait_for_each_name_and_ignore_the_rest() {
        let named = RequiredChecks::Named(vec!["build".into(), "test".into()]);
        let v = judge(&named, &[status("build", "success"), status("flaky", "failure")]);
        assert_eq!(v, ChecksVerdict::Pending { waiting_for: vec!["`test` (not reported yet)".into()] });
        let v = judge(&named, &[status("build", "success"), status("test", "success"), status("flaky", "failure")]);
        assert!(matches!(v, ChecksVerdict::Passed { ref checks } if checks.len() == 2), "{v:?}");
        let v = judge(&named, &[status("test", "failure")]);
        assert!(matches!(v, ChecksVerdict::Failed { .. }), "a failure decides before the rest report: {v:?}");
    }

    #[test]
    fn the_setting_is_a_flag_or_a_list_of_names() {
        let read = |json: &str| serde_json::from_str::<ChecksSetting>(json).unwrap().required();
        assert_eq!(read("false"), Ok(None));
        assert_eq!(read("true"), Ok(Some(RequiredChecks::All)));
        assert_eq!(read(r#"["ci/build"]"#), Ok(Some(RequiredChecks::Named(vec!["ci/build".into()]))));
        assert!(read("[]").unwrap_err().contains("requires nothing"));
        assert!(read(r#"[" "]"#).unwrap_err().contains("must not be empty"));
        assert!(serde_json::from_str::<ChecksSetting>("3").is_err());
    }

    #[test]
    fn a_context_counts_by_its_latest_report() {
        // Forgejo lists the newest status of a context first: a re-run that passed outweighs the old failure.
        let v = judge(&RequiredChecks::All, &[status("build", "success"), status("build", "failure")]);
        assert!(matches!(v, ChecksVerdict::Passed { .. }), "{v:?}");
        let v = judge(&RequiredChecks::All, &[status("build", "failure"), status("build", "success")]);
        assert!(matches!(v, ChecksVerdict::Failed { .. }), "{v:?}");
    }
}
