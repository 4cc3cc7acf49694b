//! The label mapping: from an issue's labels to a task spec, and from a task's state to its `status:*` label.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ids::AgentName;

/// How urgent a task is. Declared most urgent first, so `Ord` sorts the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Medium,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Medium, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
    /// 0 for critical .. 3 for low: the sort key kept in the store.
    pub fn rank(self) -> i64 {
        self as i64
    }
    pub fn from_rank(rank: i64) -> Option<Self> {
        Priority::ALL.get(usize::try_from(rank).ok()?).copied()
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown priority {s:?}; expected critical, high, medium or low"))
    }
}

/// What a task asks of the fleet, read from its labels.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskSpec {
    pub priority: Priority,
    /// From `type:*`, e.g. `bug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// From `needs:*`: capabilities an agent must have.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub needs: BTreeSet<String>,
    /// From `agent:*`: only this agent may take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentName>,
}

/// The `status:*` labels forgefleet owns. Exactly one is on a tracked issue at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusLabel {
    Todo,
    Doing,
    Done,
    Failed,
    /// The agent waits for a person's answer.
    Blocked,
}

impl StatusLabel {
    /// In scheme order: the order an issue's status labels are read in.
    pub const ALL: [StatusLabel; 5] =
        [StatusLabel::Todo, StatusLabel::Doing, StatusLabel::Done, StatusLabel::Failed, StatusLabel::Blocked];
}

/// The names of the labels forgefleet reads and writes. Every name is configurable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelScheme {
    pub todo: String,
    pub doing: String,
    pub done: String,
    pub failed: String,
    /// Settings stored by a forgefleet that had no `blocked` status read as the default name.
    #[serde(default = "default_blocked")]
    pub blocked: String,
    pub priority_prefix: String,
    pub type_prefix: String,
    pub needs_prefix: String,
    pub agent_prefix: String,
    pub default_priority: Priority,
}

fn default_blocked() -> String {
    LabelScheme::default().blocked
}

impl Default for LabelScheme {
    fn default() -> Self {
        Self {
            todo: "status:todo".into(),
            doing: "status:doing".into(),
            done: "status:done".into(),
            failed: "status:failed".into(),
            blocked: "status:blocked".into(),
            priority_prefix: "priority:".into(),
            type_prefix: "type:".into(),
            needs_prefix: "needs:".into(),
            agent_prefix: "agent:".into(),
            default_priority: Priority::Medium,
        }
    }
}

/// What a set of labels says about an issue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelReading {
    /// Every `status:*` label present, in scheme order (todo, doing, done, failed, blocked).
    pub statuses: Vec<StatusLabel>,
    pub spec: TaskSpec,
    /// Labels that look like ours but say nothing we understand, with the reason.
    pub problems: Vec<String>,
}

impl LabelReading {
    pub fn wants_work(&self) -> bool {
        self.statuses.contains(&StatusLabel::Todo)
    }
}

/// Which labels to add and remove so that exactly the wanted status label remains.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelChange {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl LabelChange {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

impl LabelScheme {
    pub fn status_name(&self, s: StatusLabel) -> &str {
        match s {
            StatusLabel::Todo => &self.todo,
            StatusLabel::Doing => &self.doing,
            StatusLabel::Done => &self.done,
            StatusLabel::Failed => &self.failed,
            StatusLabel::Blocked => &self.blocked,
        }
    }

    fn status_of(&self, label: &str) -> Option<StatusLabel> {
        StatusLabel::ALL.into_iter().find(|s| self.status_name(*s) == label)
    }

    /// Reads an issue's labels. Several priorities: the most urgent wins. Several agent pins: the task cannot
    /// be routed, which is reported as a problem and the first pin is kept.
    pub fn read<S: AsRef<str>>(&self, labels: &[S]) -> LabelReading {
        let mut r = LabelReading {
            spec: TaskSpec { priority: self.default_priority, ..TaskSpec::default() },
            ..Default::default()
        };
        let mut priority: Option<Priority> = None;
        for label in labels {
            let label = label.as_ref().trim();
            if let Some(s) = self.status_of(label) {
                if !r.statuses.contains(&s) {
                    r.statuses.push(s);
                }
            } else if let Some(p) = label.strip_prefix(&self.priority_prefix) {
                match p.parse::<Priority>() {
                    Ok(p) => priority = Some(priority.map_or(p, |q| q.min(p))),
                    Err(why) => r.problems.push(format!("label {label:?}: {why}")),
                }
            } else if let Some(t) = label.strip_prefix(&self.type_prefix) {
                if !t.is_empty() && r.spec.kind.is_none() {
                    r.spec.kind = Some(t.to_string());
                }
            } else if let Some(n) = label.strip_prefix(&self.needs_prefix) {
                if n.is_empty() {
                    r.problems.push(format!("label {label:?} names no capability"));
                } else {
                    r.spec.needs.insert(n.to_string());
                }
            } else if let Some(a) = label.strip_prefix(&self.agent_prefix) {
                match AgentName::parse(a) {
                    Ok(name) if r.spec.agent.is_none() => r.spec.agent = Some(name),
                    Ok(_) => r.problems.push(format!(
                        "label {label:?}: the task is already pinned to agent {}; only one agent label counts",
                        r.spec.agent.as_ref().map(|a| a.as_str()).unwrap_or_default(),
                    )),
                    Err(e) => r.problems.push(format!("label {label:?}: {e}")),
                }
            }
        }
        r.statuses.sort_by_key(|s| *s as u8);
        if let Some(p) = priority {
            r.spec.priority = p;
        }
        r
    }

    /// The label changes that leave `want` as the only status label (or none when `want` is `None`).
    pub fn status_change<S: AsRef<str>>(&self, current: &[S], want: Option<StatusLabel>) -> LabelChange {
        let mut change = LabelChange::default();
        let mut has_want = false;
        for label in current {
            let label = label.as_ref();
            match self.status_of(label) {
                Some(s) if Some(s) == want => has_want = true,
                Some(_) => change.remove.push(label.to_string()),
                None => {}
            }
        }
        if let (Some(w), false) = (want, has_want) {
            change.add.push(self.status_name(w).to_string());
        }
        change
    }

    /// Every label name forgefleet may write or route on with a fixed name, for creating them in a repository.
    pub fn managed_labels(&self) -> Vec<String> {
        let mut v = StatusLabel::ALL.iter().map(|s| self.status_name(*s).to_string()).collect::<Vec<_>>();
        v.extend(Priority::ALL.iter().map(|p| format!("{}{}", self.priority_prefix, p)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(labels: &[&str]) -> LabelReading {
        LabelScheme::default().read(labels)
    }

    #[test]
    fn todo_with_priority_type_needs_and_pin_becomes_a_spec() {
        let r =
            read(&["status:todo", "priority:high", "type:bug", "needs:rust", "needs:gpu", "agent:claude-1", "other"]);
        assert!(r.wants_work());
        assert_eq!(r.spec.priority, Priority::High);
        assert_eq!(r.spec.kind.as_deref(), Some("bug"));
        assert_eq!(r.spec.needs.iter().map(String::as_str).collect::<Vec<_>>(), ["gpu", "rust"]);
        assert_eq!(r.spec.agent.as_ref().map(|a| a.as_str()), Some("claude-1"));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn no_priority_label_means_the_default_and_the_most_urgent_of_several_wins() {
        assert_eq!(read(&["status:todo"]).spec.priority, Priority::Medium);
        assert_eq!(read(&["priority:low", "priority:critical", "priority:high"]).spec.priority, Priority::Critical);
        let custom = LabelScheme { default_priority: Priority::Low, ..LabelScheme::default() };
        assert_eq!(custom.read(&["status:todo"]).spec.priority, Priority::Low);
    }

    #[test]
    fn labels_we_cannot_understand_are_reported_not_guessed() {
        let r = read(&["priority:urgent", "agent:two words", "needs:", "agent:a", "agent:b"]);
        assert_eq!(r.spec.priority, Priority::Medium);
        assert_eq!(r.spec.agent.as_ref().map(|a| a.as_str()), Some("a"));
        assert_eq!(r.problems.len(), 4, "{:?}", r.problems);
        assert!(r.problems[0].contains("priority:urgent"));
    }

    #[test]
    fn label_names_are_configurable() {
        let s = LabelScheme {
            todo: "fleet/todo".into(),
            priority_prefix: "prio-".into(),
            needs_prefix: "cap-".into(),
            ..LabelScheme::default()
        };
        let r = s.read(&["fleet/todo", "prio-low", "cap-docker", "status:todo"]);
        assert_eq!(r.statuses, [StatusLabel::Todo]);
        assert_eq!(r.spec.priority, Priority::Low);
        assert!(r.spec.needs.contains("docker"));
        assert!(!s.read(&["status:todo"]).wants_work());
    }

    #[test]
    fn status_change_leaves_exactly_one_status_label() {
        let s = LabelScheme::default();
        let c = s.status_change(&["status:todo", "status:done", "type:bug"], Some(StatusLabel::Doing));
        assert_eq!(c.add, ["status:doing"]);
        assert_eq!(c.remove, ["status:todo", "status:done"]);
        assert!(s.status_change(&["status:doing", "x"], Some(StatusLabel::Doing)).is_empty());
        let c = s.status_change(&["status:doing"], None);
        assert_eq!((c.add.len(), c.remove.as_slice()), (0, ["status:doing".to_string()].as_slice()));
    }

    #[test]
    fn statuses_are_read_in_scheme_order_without_repeats() {
        let r = read(&["status:failed", "status:todo", "status:todo"]);
        assert_eq!(r.statuses, [StatusLabel::Todo, StatusLabel::Failed]);
    }

    #[test]
    fn priority_ranks_round_trip_and_sort_most_urgent_first() {
        for p in Priority::ALL {
            assert_eq!(Priority::from_rank(p.rank()), Some(p));
        }
        assert!(Priority::Critical < Priority::Low);
        assert_eq!(Priority::from_rank(9), None);
        assert_eq!(LabelScheme::default().managed_labels().len(), 9);
    }
}
