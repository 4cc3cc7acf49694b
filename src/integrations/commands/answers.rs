//! What read commands answer, in words for the person who asked: the fleet's status, its agents, the queue,
//! one task. Plain text with light Markdown, the same in an issue comment and in a chat room.

use std::fmt::Write;

use crate::core::{AgentState, AgentStatus, IssueRef, Priority, TaskState, Timestamp};
use crate::store::ReadView;

/// How far back `/fleet status` counts failures.
const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// The fleet at a glance, as `/fleet status` answers it: agents (status, running task, last heartbeat), the
/// queue by priority, tasks by state, and the failures of the last 24 hours by class.
pub fn status_text(r: ReadView<'_>, now: Timestamp) -> crate::store::Result<String> {
    let counts = r.counts_by_state()?;
    let count = |s: TaskState| counts.iter().find(|(t, _)| *t == s).map_or(0, |(_, n)| *n);
    let tasks: Vec<String> = TaskState::ALL.iter().map(|s| format!("{} {}", s.as_str(), count(*s))).collect();
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
    let failures = r.failures_since(now - FAILURE_WINDOW)?;
    let failures = if failures.is_empty() {
        "none".to_string()
    } else {
        failures.iter().map(|(class, n)| format!("{class} {n}")).collect::<Vec<_>>().join(", ")
    };
    Ok(format!(
        "Fleet status:\n\n- tasks: {}\n- queue: {}\n- agents: {}\n- failures in the last 24 h: {failures}\n\n{}",
        tasks.join(", "),
        queue_line(r)?,
        agents.join(", "),
        agents_text(r, now)?
    ))
}

fn queue_line(r: ReadView<'_>) -> crate::store::Result<String> {
    let depth = r.queue_depth_by_priority()?;
    Ok(Priority::ALL
        .iter()
        .map(|p| format!("{p} {}", depth.iter().find(|(q, _)| q == p).map_or(0, |(_, n)| *n)))
        .collect::<Vec<_>>()
        .join(", "))
}

/// `/fleet agents`: each agent that has not said goodbye, with its status, what it runs and when it was last
/// heard from.
pub fn agents_text(r: ReadView<'_>, now: Timestamp) -> crate::store::Result<String> {
    let mut out = String::from("Agents:\n");
    let mut any = false;
    for a in r.agents()? {
        if a.agent.state == AgentState::Deregistered {
            continue;
        }
        any = true;
        let mut running = Vec::new();
        for (task, attempt) in r.leases_of(a.agent.id)? {
            let issue = r.task(task)?.map(|t| t.issue.to_string()).unwrap_or_default();
            running.push(format!("{issue} (task {task}, attempt {attempt})"));
        }
        let heard = a.last_heartbeat_at.map_or("never".to_string(), |t| ago(t, now));
        let _ = writeln!(
            out,
            "- `{}` ({}): {}, {}/{} slots; last heartbeat {heard}",
            a.agent.name,
            a.agent.adapter,
            a.agent.status(a.running).as_str(),
            a.running,
            a.agent.max_concurrency,
        );
        if !running.is_empty() {
            let _ = writeln!(out, "  running {}", running.join(", "));
        }
    }
    if !any {
        out.push_str("- none registered\n");
    }
    Ok(out.trim_end().to_string())
}

/// `/fleet queue`: the queued tasks, highest priority first.
pub fn queue_text(r: ReadView<'_>) -> crate::store::Result<String> {
    let queued = r.tasks(Some(TaskState::Queued), 200)?;
    let mut out = format!("Queue: {}\n", queue_line(r)?);
    let mut queued: Vec<_> = queued.into_iter().collect();
    queued.sort_by_key(|t| (std::cmp::Reverse(t.priority), t.id));
    for t in queued.iter().take(20) {
        let wait = t.not_before.as_ref().map(|n| format!(", not before {n}")).unwrap_or_default();
        let _ = writeln!(out, "- {} {}: {} (task {}, attempt {}{wait})", t.priority, t.issue, t.title, t.id, t.attempt);
    }
    if queued.len() > 20 {
        let _ = writeln!(out, "- and {} more", queued.len() - 20);
    }
    Ok(out.trim_end().to_string())
}

/// `/fleet show owner/repo#N`: the task's state, attempts, last failure, the receipt's checks and its pull
/// request. `None` when the issue has no task.
pub fn show_text(r: ReadView<'_>, issue: &IssueRef) -> crate::store::Result<Option<String>> {
    let Some(t) = r.task_by_issue(issue)? else { return Ok(None) };
    let mut out =
        format!("Task {} for {}: {}\n\n- state: {}, attempt {}\n", t.id, t.issue, t.title, t.state.as_str(), t.attempt);
    if let Some(lease) = &t.lease {
        let agent = r.agent(lease.agent)?.map(|a| a.name.to_string()).unwrap_or_else(|| lease.agent.to_string());
        let _ =
            writeln!(out, "- held by `{agent}` (attempt {}), deadline {}", lease.attempt, lease.deadline.to_rfc3339());
    }
    if let Some(f) = &t.last_failure {
        // The message may be an agent's or a CI job's words: inert, on one line.
        let message: String = f.message.chars().take(200).collect();
        let _ = writeln!(
            out,
            "- last failure: attempt {}, {}: {}",
            f.attempt,
            f.class.as_str(),
            crate::core::text::code(&message)
        );
    }
    // The question itself is the agent's text: it is on the issue, fenced, and not repeated here.
    match &t.question {
        Some(q) if q.answer.is_none() => {
            let _ = writeln!(out, "- attempt {} asked a question on the issue; `/answer <text>` answers it", q.attempt);
        }
        Some(q) => {
            let by = q.answered_by.as_deref().unwrap_or("someone");
            let _ = writeln!(out, "- attempt {}'s question was answered by {by}", q.attempt);
        }
        None => {}
    }
    if let Some(receipt) = &t.receipt {
        let _ = writeln!(out, "- pull request #{} (head {})", receipt.pr_number, receipt.head_sha);
    }
    if let Some(v) = &t.validation {
        for c in &v.checks {
            let _ = writeln!(out, "  - {} {}: {}", if c.passed { "✓" } else { "✗" }, c.name, c.detail);
        }
    }
    Ok(Some(out.trim_end().to_string()))
}

/// "42 s ago", "5 min ago", "3 h ago".
fn ago(t: Timestamp, now: Timestamp) -> String {
    let s = (now.0 - t.0).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}
