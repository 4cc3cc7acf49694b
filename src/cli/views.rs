//! `tasks`, `agents` and `status`: read straight from the database (read-only), so they work with or without `serve`.

use std::collections::BTreeMap;

use serde_json::json;

use super::CliError;
use crate::api::AgentView;
use crate::core::{AgentState, AgentStatus, Priority, TaskState};
use crate::store::Store;

/// Tasks, most recently changed first; `limit` 0 lists them all.
pub fn tasks(store: &Store, state: Option<TaskState>, limit: u32, as_json: bool) -> Result<(), CliError> {
    let limit = if limit == 0 { u32::MAX } else { limit };
    let tasks = store.read().tasks(state, limit)?;
    if as_json {
        println!("{}", json!({ "tasks": tasks }));
        return Ok(());
    }
    if tasks.is_empty() {
        println!("no tasks");
        return Ok(());
    }
    let rows: Vec<[String; 8]> = tasks
        .iter()
        .map(|t| {
            [
                t.id.to_string(),
                t.issue.clone(),
                t.state.to_string(),
                t.priority.to_string(),
                t.attempt.to_string(),
                t.agent.clone().unwrap_or_else(|| "-".into()),
                t.updated_at.clone(),
                shorten(&t.title, 50),
            ]
        })
        .collect();
    print_table(["ID", "ISSUE", "STATE", "PRIORITY", "ATTEMPT", "AGENT", "UPDATED", "TITLE"], &rows);
    Ok(())
}

/// Registered agents (not the deregistered), by name, optionally only those with a status or a capability.
pub fn agents(
    store: &Store,
    status: Option<AgentStatus>,
    capability: Option<&str>,
    as_json: bool,
) -> Result<(), CliError> {
    let agents: Vec<AgentView> = crate::api::agent_views(store.read().agents()?, status, capability);
    if as_json {
        println!("{}", json!({ "agents": agents }));
        return Ok(());
    }
    if agents.is_empty() {
        let filtered = status.is_some() || capability.is_some();
        println!("{}", if filtered { "no agents match" } else { "no agents" });
        return Ok(());
    }
    let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    let rows: Vec<[String; 7]> = agents
        .into_iter()
        .map(|a| {
            [
                a.name,
                a.adapter,
                a.status.as_str().to_string(),
                format!("{}/{}", a.running, a.max_concurrency),
                dash(a.capabilities.join(",")),
                a.last_heartbeat_at.unwrap_or_else(|| "-".into()),
                dash(shorten(&a.version, 30)),
            ]
        })
        .collect();
    print_table(["NAME", "ADAPTER", "STATUS", "RUNNING/SLOTS", "CAPABILITIES", "LAST HEARTBEAT", "VERSION"], &rows);
    Ok(())
}

pub fn status(store: &Store, as_json: bool) -> Result<(), CliError> {
    let r = store.read();
    let events = r.event_count()?;
    let counts = r.counts_by_state()?;
    let by_state: BTreeMap<&str, u64> = TaskState::ALL
        .iter()
        .map(|s| (s.as_str(), counts.iter().find(|(t, _)| t == s).map_or(0, |(_, n)| *n)))
        .collect();
    let depth = r.queue_depth_by_priority()?;
    let queue: BTreeMap<&str, u64> =
        Priority::ALL.iter().map(|p| (p.as_str(), depth.iter().find(|(q, _)| q == p).map_or(0, |(_, n)| *n))).collect();
    let mut agents: BTreeMap<&str, u64> =
        [AgentStatus::Online, AgentStatus::Busy, AgentStatus::Draining, AgentStatus::Offline]
            .iter()
            .map(|s| (s.as_str(), 0))
            .collect();
    for a in r.agents()? {
        if a.agent.state != AgentState::Deregistered {
            *agents.entry(a.agent.status(a.running).as_str()).or_default() += 1;
        }
    }
    let outbox = r.outbox_health()?;
    if as_json {
        println!(
            "{}",
            json!({
                "store": store.path(), "events": events, "tasks": by_state, "queue": queue, "agents": agents,
                "outbox": outbox,
            })
        );
        return Ok(());
    }
    let join = |m: &BTreeMap<&str, u64>, order: &[&str]| {
        order.iter().map(|k| format!("{k} {}", m.get(k).copied().unwrap_or(0))).collect::<Vec<_>>().join(", ")
    };
    let states: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
    let priorities: Vec<&str> = Priority::ALL.iter().map(|p| p.as_str()).collect();
    println!("store:  {} ({events} events)", store.path());
    println!("tasks:  {}", join(&by_state, &states));
    println!("queue:  {}", join(&queue, &priorities));
    println!("agents: {}", join(&agents, &["online", "busy", "draining", "offline"]));
    println!("outbox: {}", outbox_line(&outbox));
    if let Some(w) = &outbox.worst {
        println!(
            "        worst: #{} {} {} after {} attempts: {}",
            w.id,
            printable(&w.destination),
            w.kind,
            w.attempts,
            shorten(&w.last_error, 200)
        );
    }
    if outbox.dead > 0 {
        let by: Vec<String> = outbox.dead_by_destination.iter().map(|(d, n)| format!("{} {n}", printable(d))).collect();
        println!(
            "        {} dead ({}; can never be delivered as they are): `forgefleet outbox list`, then `outbox retry|drop ID`",
            outbox.dead,
            by.join(", ")
        );
    }
    Ok(())
}

/// `forgefleet outbox list`: what waits, dead letters first.
pub fn outbox(store: &Store, limit: u32, as_json: bool) -> Result<(), CliError> {
    let rows = store.read().outbox_list(limit)?;
    if as_json {
        println!("{}", json!({ "outbox": rows }));
        return Ok(());
    }
    if rows.is_empty() {
        println!("nothing waits in the outbox");
        return Ok(());
    }
    println!("{:>6}  {:<6}  {:<8}  {:<18}  {:<24}  {:>5}  last error", "ID", "STATE", "TO", "KIND", "ISSUE", "TRIES");
    for r in rows {
        let state = if r.dead_at.is_some() { "dead" } else { "wait" };
        println!(
            "{:>6}  {:<6}  {:<8}  {:<18}  {:<24}  {:>5}  {}",
            r.id,
            state,
            printable(&r.destination),
            r.kind,
            r.issue.as_deref().unwrap_or("-"),
            r.attempts,
            shorten(r.last_error.as_deref().unwrap_or(""), 120)
        );
    }
    Ok(())
}

/// "3 waiting (1 failing), the oldest written 2026-11-24T06:00:00.000Z", or "nothing waiting".
fn outbox_line(o: &crate::store::OutboxHealth) -> String {
    match o.oldest {
        Some(oldest) if o.waiting > 0 => {
            let by: Vec<String> =
                o.waiting_by_destination.iter().map(|(d, n)| format!("{} {n}", printable(d))).collect();
            format!("{} waiting ({} failing), the oldest written {oldest}: {}", o.waiting, o.failing, by.join(", "))
        }
        _ => "nothing waiting".to_string(),
    }
}

/// Agent text as the terminal should show it, on one line: control characters (escape sequences, carriage
/// returns, newlines that would fake lines of forgefleet's own) are written out as `\u{1b}`, `\n` and the like
/// instead of being obeyed.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Left-aligned columns, two spaces apart.
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `tasks show ID`: everything about one task, the receipt and each check first.
pub fn task(store: &Store, id: crate::core::TaskId, as_json: bool) -> Result<(), CliError> {
    let r = store.read();
    let task = r.task(id)?.ok_or_else(|| CliError::usage(format!("task {id} not found")))?;
    let events = r.task_events(id)?;
    let progress = r.progress(id, 200)?;
    if as_json {
        let events: Vec<_> = events.iter().map(|(seq, e)| json!({"seq": seq, "event": e})).collect();
        let progress: Vec<_> =
            progress.iter().map(|(attempt, at, line)| json!({"attempt": attempt, "at": at, "line": line})).collect();
        println!("{}", json!({"task": task, "events": events, "progress": progress}));
        return Ok(());
    }
    println!("task {}: {} \"{}\"", task.id, task.issue, task.title);
    println!("state:    {} (attempt {}, priority {})", task.state, task.attempt, task.spec.priority);
    if let Some(l) = &task.lease {
        let agent = r.agent(l.agent)?.map(|a| a.name.to_string()).unwrap_or_else(|| l.agent.to_string());
        println!("lease:    {agent}, attempt {}, deadline {}", l.attempt, l.deadline);
    } else if let Some(agent) = r.did_attempt(task.id, task.attempt)?.filter(|_| task.state.is_terminal()) {
        println!("agent:    {} (attempt {})", agent.name, task.attempt);
    }
    if let Some(f) = &task.last_failure {
        println!("failure:  attempt {} {}: {}", f.attempt, f.class, f.message);
    }
    if let Some(q) = &task.question {
        println!("question: attempt {}: {}", q.attempt, printable(&q.text));
        match (&q.answer, &q.answered_by) {
            (Some(a), by) => println!("answer:   {} ({})", printable(a), by.as_deref().unwrap_or("someone")),
            (None, _) => println!("answer:   none yet (`/answer <text>` on the issue)"),
        }
    }
    let spent: Vec<(u32, &crate::core::Spent)> = events
        .iter()
        .filter_map(|(_, e)| match e {
            crate::core::Event::AttemptFailed { attempt, spent: Some(s), .. } => Some((*attempt, s)),
            _ => None,
        })
        .collect();
    for (attempt, s) in &spent {
        let cost = s.cost_usd.map(|c| format!(", ${c:.2}")).unwrap_or_default();
        println!(
            "spent:    attempt {attempt} (failed): tokens {} in / {} out{cost}",
            s.usage.input_tokens, s.usage.output_tokens
        );
    }
    if let Some(rc) = &task.receipt {
        println!("receipt:  pull request #{} at {}", rc.pr_number, rc.head_sha);
        if !rc.summary.is_empty() {
            println!("          {}", printable(&rc.summary));
        }
        let cost = rc.cost_usd.map(|c| format!(", ${c:.2}")).unwrap_or_default();
        println!("          tokens {} in / {} out{cost}", rc.usage.input_tokens, rc.usage.output_tokens);
    }
    if let Some(v) = &task.validation {
        println!("checks:");
        for c in &v.checks {
            println!("  [{}] {}: {}", if c.passed { "ok" } else { "FAILED" }, c.name, c.detail);
        }
        if !v.files.is_empty() {
            println!("files (from git):");
            for f in &v.files {
                println!("  {} {} (+{} -{})", f.status, f.path, f.additions, f.deletions);
            }
        }
    }
    if !progress.is_empty() {
        println!("progress (newest {}):", progress.len());
        for (attempt, at, line) in &progress {
            println!("  {at} [attempt {attempt}] {}", printable(line));
        }
    }
    println!("history:");
    for (seq, e) in events {
        println!("  {seq:>6} {} {}", e.at(), e.kind());
    }
    Ok(())
}
