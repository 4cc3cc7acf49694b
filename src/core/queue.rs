//! Queue order and routing: which waiting task an agent gets next.

use std::cmp::Ordering;

use super::agent::Agent;
use super::ids::{AgentId, TaskId};
use super::labels::{Priority, TaskSpec};
use super::time::Timestamp;

/// What the queue orders by, as kept in the store's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueKey {
    pub priority: Priority,
    pub queued_at: Timestamp,
    pub task: TaskId,
}

/// Most urgent first; among equals the one waiting longest; ids break ties so the order is total.
pub fn queue_order(a: &QueueKey, b: &QueueKey) -> Ordering {
    a.priority
        .cmp(&b.priority)
        // Older first: the person who asked first waits least.
        .then_with(|| a.queued_at.cmp(&b.queued_at))
        // Stable and total, so two pickers never disagree.
        .then_with(|| a.task.cmp(&b.task))
}

/// A queued task that goes on from an agent's earlier work is kept for that agent until `until`
/// ([`preferred_until`]), while it is there to take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preference {
    pub agent: AgentId,
    pub until: Timestamp,
}

/// Until when a queued task that goes on from an agent's work is kept for that agent: `window` from the moment
/// it became ready (`requeued_at`, or its retry's backoff end when later). None for a zero window.
pub fn preferred_until(
    requeued_at: Timestamp,
    not_before: Option<Timestamp>,
    window: std::time::Duration,
) -> Option<Timestamp> {
    (!window.is_zero()).then(|| requeued_at.max(not_before.unwrap_or(requeued_at)) + window)
}

/// A queued task waiting for an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: QueueKey,
    pub spec: TaskSpec,
    pub not_before: Option<Timestamp>,
    pub prefer: Option<Preference>,
}

/// Whether a retried task's backoff has passed.
pub fn is_ready(not_before: Option<Timestamp>, now: Timestamp) -> bool {
    not_before.is_none_or(|t| t <= now)
}

/// Whether a candidate is kept for another agent than `agent` now: its preference window runs and the
/// preferred agent is `present` (online, not draining; asked only when it matters).
fn kept_for_another(c: &Candidate, agent: AgentId, now: Timestamp, present: &mut impl FnMut(AgentId) -> bool) -> bool {
    c.prefer.is_some_and(|p| p.agent != agent && now < p.until && present(p.agent))
}

/// The first candidate, in queue order, that `agent` may take now while running `running` tasks. A task kept
/// for another agent (see [`Preference`]) is skipped while that agent is `present`.
/// `candidates` must already be in queue order (the store reads them so); they are walked lazily.
pub fn pick_next<I>(
    candidates: I,
    agent: &Agent,
    running: u32,
    now: Timestamp,
    mut present: impl FnMut(AgentId) -> bool,
) -> Option<TaskId>
where
    I: IntoIterator<Item = Candidate>,
{
    // An agent that could not take even a task asking nothing (offline, draining, full) need not look.
    if !agent.can_take(&TaskSpec::default(), running) {
        return None;
    }
    candidates
        .into_iter()
        .find(|c| {
            is_ready(c.not_before, now)
                && agent.can_take(&c.spec, running)
                && !kept_for_another(c, agent.id, now, &mut present)
        })
        .map(|c| c.key.task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::agent::tests::agent;
    use crate::core::ids::AgentName;

    fn key(task: i64, priority: Priority, queued_at: i64) -> QueueKey {
        QueueKey { priority, queued_at: Timestamp(queued_at), task: TaskId(task) }
    }

    #[test]
    fn queue_is_ordered_by_priority_then_age_then_id() {
        let mut keys = [
            key(1, Priority::Low, 0),
            key(2, Priority::High, 50),
            key(3, Priority::High, 10),
            key(4, Priority::Critical, 99),
            key(6, Priority::Medium, 5),
            key(5, Priority::Medium, 5),
        ];
        keys.sort_by(queue_order);
        let ids: Vec<i64> = keys.iter().map(|k| k.task.0).collect();
        assert_eq!(ids, [4, 3, 2, 5, 6, 1]);
    }

    fn candidates(specs: &[(i64, TaskSpec, Option<i64>)]) -> Vec<Candidate> {
        specs
            .iter()
            .map(|(id, spec, nb)| Candidate {
                key: key(*id, spec.priority, *id),
                spec: spec.clone(),
                not_before: nb.map(Timestamp),
                prefer: None,
            })
            .collect()
    }

    fn spec(needs: &[&str], pin: Option<&str>) -> TaskSpec {
        TaskSpec {
            needs: needs.iter().map(|s| s.to_string()).collect(),
            agent: pin.map(|p| AgentName::parse(p).unwrap()),
            ..TaskSpec::default()
        }
    }

    #[test]
    fn an_agent_skips_tasks_it_cannot_do_and_gets_the_first_it_can() {
        let specs = vec![
            (1, spec(&["gpu"], None), None),
            (2, spec(&[], Some("other")), None),
            (3, spec(&["rust"], None), None),
        ];
        let a = agent(1, "a1", &["rust"], 1);
        assert_eq!(pick_next(candidates(&specs), &a, 0, Timestamp(0), |_| true), Some(TaskId(3)));
        let gpu = agent(2, "g", &["gpu", "rust"], 1);
        assert_eq!(pick_next(candidates(&specs), &gpu, 0, Timestamp(0), |_| true), Some(TaskId(1)));
        let other = agent(3, "other", &[], 1);
        assert_eq!(pick_next(candidates(&specs), &other, 0, Timestamp(0), |_| true), Some(TaskId(2)));
    }

    #[test]
    fn a_task_in_backoff_waits_until_its_time() {
        let specs = vec![(1, spec(&[], None), Some(1000))];
        let a = agent(1, "a1", &[], 1);
        assert_eq!(pick_next(candidates(&specs), &a, 0, Timestamp(999), |_| true), None);
        assert_eq!(pick_next(candidates(&specs), &a, 0, Timestamp(1000), |_| true), Some(TaskId(1)));
    }

    #[test]
    fn a_full_agent_gets_nothing() {
        let specs = vec![(1, spec(&[], None), None)];
        let a = agent(1, "a1", &[], 2);
        assert_eq!(pick_next(candidates(&specs), &a, 2, Timestamp(0), |_| true), None);
        assert_eq!(pick_next(candidates(&specs), &a, 1, Timestamp(0), |_| true), Some(TaskId(1)));
    }

    #[test]
    fn a_task_kept_for_its_earlier_agent_waits_for_it_while_the_window_runs_and_it_is_there() {
        let mut c = candidates(&[(1, spec(&[], None), None)]);
        c[0].prefer = Some(Preference { agent: AgentId(1), until: Timestamp(500) });
        let (earlier, other) = (agent(1, "a1", &[], 1), agent(2, "a2", &[], 1));
        assert_eq!(pick_next(c.clone(), &other, 0, Timestamp(499), |_| true), None, "kept for a1");
        assert_eq!(pick_next(c.clone(), &earlier, 0, Timestamp(0), |_| true), Some(TaskId(1)), "a1 takes it");
        assert_eq!(pick_next(c.clone(), &other, 0, Timestamp(500), |_| true), Some(TaskId(1)), "the window ended");
        assert_eq!(pick_next(c, &other, 0, Timestamp(0), |a| a != AgentId(1)), Some(TaskId(1)), "a1 is gone");
    }
}
