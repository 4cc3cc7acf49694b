//! Side effects a change asks for: written to the outbox in the same transaction as the change itself.

use serde::{Deserialize, Serialize};

use super::ids::IssueRef;
use super::labels::StatusLabel;
use super::task::Task;

/// Something to do in the outside world because a task changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// Leave `status` as the issue's only `status:*` label.
    SetStatusLabel { issue: IssueRef, status: StatusLabel },
}

impl Effect {
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::SetStatusLabel { .. } => "set_status_label",
        }
    }
}

/// The effects of one task going from `before` (None: it did not exist) to `after`.
/// A new task needs no label: its issue carries `status:todo` already, which is why it exists.
pub fn effects_of(before: Option<&Task>, after: &Task) -> Vec<Effect> {
    let was = before.map(|t| t.state.status_label()).unwrap_or(StatusLabel::Todo);
    let now = after.state.status_label();
    if was == now {
        return Vec::new();
    }
    vec![Effect::SetStatusLabel { issue: after.issue.clone(), status: now }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Event;
    use crate::core::ids::{AgentId, RepoName, TaskId};
    use crate::core::labels::TaskSpec;
    use crate::core::time::Timestamp;

    #[test]
    fn only_a_change_of_status_label_is_an_effect() {
        let q = Event::TaskQueued {
            task: TaskId(1),
            issue: IssueRef { repo: RepoName::parse("a/b").unwrap(), number: 1 },
            title: "t".into(),
            body: "".into(),
            labels: vec![],
            spec: TaskSpec::default(),
            at: Timestamp(0),
        };
        let queued = Task::queued(&q).unwrap();
        assert!(effects_of(None, &queued).is_empty());
        let mut assigned = queued.clone();
        assigned
            .apply(&Event::TaskAssigned {
                task: TaskId(1),
                attempt: 1,
                agent: AgentId(1),
                at: Timestamp(1),
                start_by: Timestamp(2),
                deadline: Timestamp(3),
                request_key: None,
            })
            .unwrap();
        assert_eq!(
            effects_of(Some(&queued), &assigned),
            [Effect::SetStatusLabel { issue: queued.issue.clone(), status: StatusLabel::Doing }]
        );
        let mut started = assigned.clone();
        started.apply(&Event::TaskStarted { task: TaskId(1), attempt: 1, at: Timestamp(2) }).unwrap();
        assert!(effects_of(Some(&assigned), &started).is_empty());
    }
}
