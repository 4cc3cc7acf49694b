//! What comment commands answer, in words for the person who wrote them: the fleet's status, and why a command
//! does not apply to a task as it is (never an internal event name).

use crate::core::{AgentState, AgentStatus, Priority, Task, TaskState};
use crate::store::ReadView;

/// The fleet at a glance, as `/fleet status` answers it: tasks by state, the queue by priority, agents.
pub fn status_text(r: ReadView<'_>) -> crate::store::Result<String> {
    let counts = r.counts_by_state()?;
    let count = |s: TaskState| counts.iter().find(|(t, _)| *t == s).map_or(0, |(_, n)| *n);
    let tasks: Vec<String> = TaskState::ALL.iter().map(|s| format!("{} {}", s.as_str(), count(*s))).collect();
    let depth = r.queue_depth_by_priority()?;
    let queue: Vec<String> = Priority::ALL
        .iter()
        .map(|p| format!("{p} {}", depth.iter().find(|(q, _)| q == p).map_or(0, |(_, n)| *n)))
        .collect();
    let mut agents =
        [(AgentStatus::Online, 0u64), (AgentStatus::Busy, 0), (AgentStatus::Draining, 0), (AgentStatus::Offline, 0)];
    for a in r.agents()? {
        if a.agent.state != AgentState::Deregistered {
            let status = a.agent.status(a.running);
            if let Some(slot) = agents.iter_mut().find(|(s, _)| *s == status) {
                slot.1 += 1;
            }
        }
    }
    let agents: Vec<String> = agents.iter().map(|(s, n)| format!("{} {n}", s.as_str())).collect();
    Ok(format!(
        "Fleet status:\n\n- tasks: {}\n- queue: {}\n- agents: {}",
        tasks.join(", "),
        queue.join(", "),
        agents.join(", ")
    ))
}

/// A task's state as a person reads it after "task 22 is ...".
fn described(state: TaskState) -> &'static str {
    match state {
        TaskState::Queued => "queued",
        TaskState::Assigned => "assigned to an agent",
        TaskState::Running => "running",
        TaskState::Validating => "being checked (its receipt arrived)",
        TaskState::Completed => "already completed",
        TaskState::Failed => "already failed",
        TaskState::AgentLost => "waiting for another attempt (its agent was lost)",
        TaskState::Cancelled => "already cancelled",
    }
}

/// Why `/retry` or `/cancel` does not apply to `task` as it is; `None` when it does.
pub fn not_applicable(word: &str, task: &Task) -> Option<String> {
    let applies = match word {
        "retry" => matches!(task.state, TaskState::Failed | TaskState::Cancelled),
        "cancel" => !task.state.is_terminal(),
        _ => true,
    };
    let only = match word {
        "retry" => "`/retry` only applies to failed or cancelled tasks",
        _ => "`/cancel` only applies to tasks that are queued or under way",
    };
    (!applies).then(|| format!("task {} is {}; {only}", task.id, described(task.state)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Event, IssueRef, TaskId, TaskSpec, Timestamp};

    #[test]
    fn a_command_that_does_not_apply_says_so_in_words() {
        let e = Event::TaskQueued {
            task: TaskId(22),
            issue: IssueRef { repo: crate::core::RepoName::parse("a/b").unwrap(), number: 1 },
            title: String::new(),
            body: String::new(),
            labels: vec![],
            spec: TaskSpec::default(),
            at: Timestamp(0),
            issue_id: None,
        };
        let mut t = Task::queued(&e).unwrap();
        assert_eq!(not_applicable("cancel", &t), None);
        let why = not_applicable("retry", &t).unwrap();
        assert_eq!(why, "task 22 is queued; `/retry` only applies to failed or cancelled tasks");
        t.state = TaskState::Completed;
        assert_eq!(
            not_applicable("retry", &t).unwrap(),
            "task 22 is already completed; `/retry` only applies to failed or cancelled tasks"
        );
        assert!(not_applicable("cancel", &t).unwrap().contains("already completed"));
        t.state = TaskState::Failed;
        assert_eq!(not_applicable("retry", &t), None);
    }
}
