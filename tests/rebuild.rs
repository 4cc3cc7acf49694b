//! `store rebuild` recomputes exactly the live projections, after long random scenarios.

use std::collections::BTreeSet;
use std::time::Duration;

use forgefleet::core::{
    AgentId, AgentName, Check, CommitSha, FailureClass, Receipt, TaskId, Timestamp, Usage, Validation,
};
use forgefleet::engine::{Command, Engine, EngineSettings, IssueObservation, ManualClock, Registration, Reply};
use forgefleet::store::Store;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every row of the projection tables, as text, in a stable order.
fn snapshot(store: &Store) -> Vec<String> {
    let conn = store.connection();
    let mut out = Vec::new();
    for (table, order) in [("tasks", "id"), ("agents", "id"), ("leases", "task_id")] {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY {order}")).unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect();
                Ok(format!("{table}: {}", cells.join(" | ")))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

const LABELS: &[&str] = &["priority:high", "priority:low", "priority:critical", "needs:gpu", "agent:a1", "type:bug"];
const CLASSES: [FailureClass; 5] = [
    FailureClass::AgentError,
    FailureClass::Timeout,
    FailureClass::RateLimited,
    FailureClass::VerificationFailed,
    FailureClass::AgentLost,
];

fn random_command(rng: &mut StdRng, engine: &Engine) -> Command {
    let mut agent = AgentId(rng.random_range(1..=6));
    let task = TaskId(rng.random_range(1..=60));
    let current = engine.store.read().task(task).unwrap();
    let attempt = current.as_ref().map_or(1, |t| t.attempt);
    // Mostly the leaseholder speaks about its task; sometimes a stranger does, which must be refused.
    if let Some(lease) = current.and_then(|t| t.lease).filter(|_| rng.random_bool(0.8)) {
        agent = lease.agent;
    }
    match rng.random_range(0..100) {
        0..=19 => {
            let mut labels: Vec<String> =
                LABELS.iter().filter(|_| rng.random_bool(0.2)).map(|l| l.to_string()).collect();
            match rng.random_range(0..10) {
                0..=6 => labels.push("status:todo".into()),
                7 => labels.push("status:doing".into()),
                _ => {}
            }
            Command::ObserveIssue(IssueObservation {
                issue: format!("acme/app#{}", rng.random_range(1..=60)).parse().unwrap(),
                title: format!("title {}", rng.random_range(0..3)),
                body: String::new(),
                labels,
                open: rng.random_bool(0.9),
                issue_id: None,
            })
        }
        20..=24 => {
            let caps: BTreeSet<String> =
                if rng.random_bool(0.3) { ["gpu".to_string()].into() } else { BTreeSet::new() };
            Command::RegisterAgent(Registration {
                name: AgentName::parse(&format!("a{}", rng.random_range(1..=6))).unwrap(),
                adapter: "command".into(),
                capabilities: caps,
                max_concurrency: rng.random_range(1..=3),
                version: "1".into(),
                token_hash: format!("h{}", rng.random::<u32>()),
            })
        }
        25..=39 => Command::NextAssignment {
            agent,
            request_key: rng.random_bool(0.5).then(|| format!("k{}", rng.random_range(0..20))),
        },
        40..=49 => Command::StartTask { agent, task, attempt },
        50..=57 => Command::Heartbeat { agent, running: vec![task] },
        58..=63 => Command::FailTask {
            agent,
            task,
            attempt,
            class: CLASSES[rng.random_range(0..CLASSES.len())],
            message: "it broke".into(),
        },
        64..=71 => Command::SubmitReceipt {
            agent,
            task,
            attempt,
            receipt: Receipt {
                pr_number: rng.random_range(1..100),
                head_sha: CommitSha::parse(&format!("{:040x}", rng.random::<u64>())).unwrap(),
                summary: "did it".into(),
                usage: Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() },
                cost_usd: Some(0.01),
                duration_secs: Some(3),
                session_id: None,
                artifacts: vec![],
            },
        },
        72..=77 => {
            // A verdict about a task that is being validated, when there is one.
            let validating = engine.store.read().tasks(Some(forgefleet::core::TaskState::Validating), 10).unwrap();
            let (task, attempt) = match validating.first() {
                Some(t) => (t.id, t.attempt),
                None => (task, attempt),
            };
            Command::FinishValidation {
                task,
                attempt,
                validation: Validation {
                    checks: vec![Check {
                        name: "head_matches".into(),
                        passed: rng.random_bool(0.7),
                        detail: "x".into(),
                    }],
                    files: vec![],
                },
            }
        }
        78..=80 => Command::CancelTask { task, reason: "operator".into() },
        81..=83 => Command::RetryTask { task, by: "operator".into() },
        84..=85 => Command::DrainAgent { agent },
        86..=87 => Command::DeregisterAgent { agent },
        _ => Command::Tick,
    }
}

#[test]
fn rebuilt_projections_equal_the_live_ones_after_long_random_scenarios() {
    for seed in 1..=4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let mut engine = Engine::new(Store::open_in_memory().unwrap(), EngineSettings::default(), clock.clone());
        let mut ok = 0;
        for _ in 0..4000 {
            if rng.random_bool(0.2) {
                clock.advance(Duration::from_secs(rng.random_range(1..900)));
            }
            let batch: Vec<Command> = (0..rng.random_range(1..4)).map(|_| random_command(&mut rng, &engine)).collect();
            ok += engine.execute_batch(batch).iter().filter(|r| r.is_ok()).count();
        }
        let kinds: BTreeSet<String> = {
            let conn = engine.store.connection();
            let mut stmt = conn.prepare("SELECT DISTINCT kind FROM events").unwrap();
            stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
        };
        // The scenario must have walked the whole machine, or equality would prove little.
        assert!(kinds.len() >= 15, "seed {seed}: only {kinds:?}");
        assert!(ok > 1000, "seed {seed}: only {ok} commands applied");

        let live = snapshot(&engine.store);
        let report = engine.store.rebuild().unwrap();
        let rebuilt = snapshot(&engine.store);
        assert_eq!(report.events, engine.store.read().event_count().unwrap());
        assert_eq!(live.len(), rebuilt.len(), "seed {seed}");
        for (a, b) in live.iter().zip(&rebuilt) {
            assert_eq!(a, b, "seed {seed}");
        }
        // A second rebuild is a fixed point.
        engine.store.rebuild().unwrap();
        assert_eq!(snapshot(&engine.store), rebuilt);
        // And the engine goes on working on the rebuilt tables.
        assert!(matches!(engine.execute(Command::Tick), Ok(Reply::Ticked(_))));
    }
}
