//! Identifiers and hashes as newtypes, so a task id can never be passed where an agent id is meant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: {why}")]
pub struct InvalidId {
    pub what: &'static str,
    pub value: String,
    pub why: &'static str,
}

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.parse::<i64>() {
                    Ok(n) if n > 0 => Ok(Self(n)),
                    _ => Err(InvalidId { what: stringify!($name), value: s.to_string(), why: "expected a positive whole number" }),
                }
            }
        }
    };
}

int_id!(
    /// A task: one per (repository, issue), kept across attempts.
    TaskId
);
int_id!(
    /// A registered agent; stable across re-registrations of the same name.
    AgentId
);

/// An agent's unique name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl AgentName {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let bad = |why| Err(InvalidId { what: "agent name", value: s.to_string(), why });
        if s.is_empty() || s.len() > 64 {
            return bad("it must be 1 to 64 characters long");
        }
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return bad("only letters, digits, '.', '_' and '-' are allowed");
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentName {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<AgentName> for String {
    fn from(n: AgentName) -> String {
        n.0
    }
}
impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A repository as `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let bad = |why| Err(InvalidId { what: "repository", value: s.to_string(), why });
        let Some((owner, name)) = s.split_once('/') else {
            return bad("expected owner/name");
        };
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 100
                && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !part_ok(owner) || !part_ok(name) {
            return bad("expected owner/name made of letters, digits, '.', '_' and '-'");
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn owner(&self) -> &str {
        self.0.split_once('/').map(|(o, _)| o).unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.0.split_once('/').map(|(_, n)| n).unwrap_or_default()
    }
}

impl FromStr for RepoName {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for RepoName {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<RepoName> for String {
    fn from(n: RepoName) -> String {
        n.0
    }
}
impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One issue of one repository: what a task is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IssueRef {
    pub repo: RepoName,
    pub number: u64,
}

impl fmt::Display for IssueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.repo, self.number)
    }
}

impl FromStr for IssueRef {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| InvalidId { what: "issue", value: s.to_string(), why };
        let (repo, number) = s.rsplit_once('#').ok_or_else(|| bad("expected owner/name#number"))?;
        let number = match number.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad("the issue number must be a positive whole number")),
        };
        Ok(Self { repo: RepoName::parse(repo)?, number })
    }
}

/// A git commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitSha(String);

impl CommitSha {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if !(s.len() == 40 || s.len() == 64) || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(InvalidId {
                what: "commit",
                value: s.to_string(),
                why: "expected 40 or 64 hexadecimal digits",
            });
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CommitSha {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}
impl From<CommitSha> for String {
    fn from(n: CommitSha) -> String {
        n.0
    }
}
impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_are_checked() {
        assert!(AgentName::parse("claude-1.box_a").is_ok());
        assert!(AgentName::parse("").is_err());
        assert!(AgentName::parse("has space").is_err());
        assert!(AgentName::parse(&"x".repeat(65)).is_err());
        let err = serde_json::from_str::<AgentName>("\"a/b\"").unwrap_err();
        assert!(err.to_string().contains("only letters"), "{err}");
    }

    #[test]
    fn repo_names_need_owner_and_name() {
        let r = RepoName::parse("acme/widgets").unwrap();
        assert_eq!((r.owner(), r.name()), ("acme", "widgets"));
        for bad in ["acme", "/x", "x/", "a/b/c", "a b/c"] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issue_refs_round_trip() {
        let i: IssueRef = "acme/widgets#12".parse().unwrap();
        assert_eq!(i.number, 12);
        assert_eq!(i.to_string(), "acme/widgets#12");
        assert!("acme/widgets#0".parse::<IssueRef>().is_err());
        assert!("acme/widgets".parse::<IssueRef>().is_err());
    }

    #[test]
    fn commit_shas_are_hex_and_lowercased() {
        let s = CommitSha::parse(&"AB".repeat(20)).unwrap();
        assert_eq!(s.as_str(), "ab".repeat(20));
        assert!(CommitSha::parse("abc").is_err());
        assert!(CommitSha::parse(&"g".repeat(40)).is_err());
    }

    #[test]
    fn numeric_ids_must_be_positive() {
        assert_eq!("7".parse::<TaskId>().unwrap(), TaskId(7));
        assert!("0".parse::<TaskId>().is_err());
        assert!("x".parse::<AgentId>().is_err());
    }
}
