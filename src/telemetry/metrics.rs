//! The `/metrics` page: counters kept as the engine commits, gauges read from the store when scraped.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::{Priority, TaskState};
use crate::engine::BatchObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    /// As the outbox writes it; a row from a newer forgefleet shows its own.
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabel {
    priority: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    tasks: Family<StateLabel, Gauge>,
    queue_depth: Family<PriorityLabel, Gauge>,
    events: Counter,
    commands: Counter,
    append_seconds: Histogram,
    outbox_waiting: Gauge,
    outbox_failing: Gauge,
    outbox_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    outbox_dead: Family<DestinationLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("forgefleet");
        let tasks = Family::<StateLabel, Gauge>::default();
        let queue_depth = Family::<PriorityLabel, Gauge>::default();
        let events = Counter::default();
        let commands = Counter::default();
        // From 50 µs to about 1.6 s: a group commit is normally well under a millisecond.
        let append_seconds = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(50e-6, 2.0, 16));
        registry.register("tasks", "Tasks by state", tasks.clone());
        registry.register("queue_depth", "Queued tasks by priority", queue_depth.clone());
        registry.register("events_appended", "Events appended to the log", events.clone());
        registry.register("commands", "Commands applied by the engine", commands.clone());
        registry.register(
            "event_append_seconds",
            "Time from the start of a command's transaction to its commit",
            append_seconds.clone(),
        );
        let (outbox_waiting, outbox_failing) = (Gauge::default(), Gauge::default());
        let outbox_oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "outbox_waiting",
            "Side effects (labels, comments, ...) not delivered yet",
            outbox_waiting.clone(),
        );
        registry.register(
            "outbox_failing",
            "Undelivered side effects that failed at least once",
            outbox_failing.clone(),
        );
        registry.register(
            "outbox_oldest_waiting_timestamp_seconds",
            "When the oldest undelivered side effect was written (Unix time; 0: none waits)",
            outbox_oldest.clone(),
        );
        let outbox_dead = Family::<DestinationLabel, Gauge>::default();
        registry.register(
            "outbox_dead",
            "Side effects that can never be delivered as they are, stopped until an operator retries or drops them, by destination",
            outbox_dead.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            tasks,
            queue_depth,
            events,
            commands,
            append_seconds,
            outbox_waiting,
            outbox_failing,
            outbox_oldest,
            outbox_dead,
        }
    }

    /// Sets the outbox gauges just before a scrape.
    pub fn set_outbox(&self, health: &crate::store::OutboxHealth) {
        self.outbox_waiting.set(health.waiting as i64);
        self.outbox_failing.set(health.failing as i64);
        self.outbox_oldest.set(health.oldest.map_or(0.0, |t| t.0 as f64 / 1000.0));
        // Every known destination reads 0 when it has none, so an alert sees it go back down.
        for d in crate::core::Destination::ALL {
            self.outbox_dead.get_or_create(&DestinationLabel { destination: d.as_str().to_string() }).set(0);
        }
        for (destination, n) in &health.dead_by_destination {
            self.outbox_dead.get_or_create(&DestinationLabel { destination: destination.clone() }).set(*n as i64);
        }
    }

    /// Sets the gauges read from the store just before a scrape. States and priorities with no tasks read 0.
    pub fn set_tasks(&self, by_state: &[(TaskState, u64)], by_priority: &[(Priority, u64)]) {
        for s in TaskState::ALL {
            let n = by_state.iter().find(|(t, _)| *t == s).map_or(0, |(_, n)| *n);
            self.tasks.get_or_create(&StateLabel { state: s.as_str() }).set(n as i64);
        }
        for p in Priority::ALL {
            let n = by_priority.iter().find(|(q, _)| *q == p).map_or(0, |(_, n)| *n);
            self.queue_depth.get_or_create(&PriorityLabel { priority: p.as_str() }).set(n as i64);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

impl BatchObserver for std::sync::Arc<Metrics> {
    fn committed(&self, commands: usize, events: u64, elapsed: Duration) {
        self.commands.inc_by(commands as u64);
        self.events.inc_by(events);
        for _ in 0..commands {
            self.append_seconds.observe(elapsed.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_state_and_priority_and_the_counters() {
        let m = std::sync::Arc::new(Metrics::new());
        m.set_tasks(&[(TaskState::Queued, 3)], &[(Priority::High, 2)]);
        m.set_outbox(&crate::store::OutboxHealth {
            waiting: 4,
            waiting_by_destination: [("forgejo".to_string(), 4)].into(),
            failing: 1,
            oldest: Some(crate::core::Timestamp(1_795_000_000_500)),
            worst: None,
            dead: 2,
            dead_by_destination: [("matrix".to_string(), 2)].into(),
        });
        m.committed(2, 5, Duration::from_micros(300));
        let text = m.render();
        assert!(text.contains("forgefleet_tasks{state=\"queued\"} 3"), "{text}");
        assert!(text.contains("forgefleet_tasks{state=\"failed\"} 0"), "{text}");
        assert!(text.contains("forgefleet_queue_depth{priority=\"high\"} 2"), "{text}");
        assert!(text.contains("forgefleet_outbox_waiting 4\n"), "{text}");
        assert!(text.contains("forgefleet_outbox_failing 1\n"), "{text}");
        assert!(text.contains("forgefleet_outbox_dead{destination=\"matrix\"} 2\n"), "{text}");
        assert!(text.contains("forgefleet_outbox_dead{destination=\"forgejo\"} 0\n"), "{text}");
        assert!(text.contains("forgefleet_outbox_oldest_waiting_timestamp_seconds 1795000000.5\n"), "{text}");
        assert!(text.contains("forgefleet_events_appended_total 5"), "{text}");
        assert!(text.contains("forgefleet_event_append_seconds_count 2"), "{text}");
    }
}
