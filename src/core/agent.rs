//! Agents: who they are, what they can do, and whether a task fits them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::event::Event;
use super::ids::{AgentId, AgentName};
use super::labels::TaskSpec;
use super::task::TransitionError;
use super::time::Timestamp;

/// The lifecycle state stored for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Online,
    /// Takes no new work; finishes what it has.
    Draining,
    /// Missed its heartbeats; its tasks were requeued.
    Offline,
    /// Said goodbye; its tasks were requeued.
    Deregistered,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Online => "online",
            AgentState::Draining => "draining",
            AgentState::Offline => "offline",
            AgentState::Deregistered => "deregistered",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [AgentState::Online, AgentState::Draining, AgentState::Offline, AgentState::Deregistered]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// What operators see: derived from the stored state and the running count, never stored twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Online,
    Busy,
    Offline,
    Draining,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Busy => "busy",
            AgentStatus::Offline => "offline",
            AgentStatus::Draining => "draining",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    pub name: AgentName,
    /// `claude-code`, `codex`, `command`, or whatever the agent says it runs.
    pub adapter: String,
    pub capabilities: BTreeSet<String>,
    pub max_concurrency: u32,
    pub version: String,
    /// Hash of the current token; the token itself is never stored.
    pub token_hash: String,
    pub state: AgentState,
    pub registered_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Agent {
    /// A new agent from its registration event.
    pub fn registered(e: &Event) -> Option<Agent> {
        match e {
            Event::AgentRegistered { agent, name, adapter, capabilities, max_concurrency, version, token_hash, at } => {
                Some(Agent {
                    id: *agent,
                    name: name.clone(),
                    adapter: adapter.clone(),
                    capabilities: capabilities.clone(),
                    max_concurrency: *max_concurrency,
                    version: version.clone(),
                    token_hash: token_hash.clone(),
                    state: AgentState::Online,
                    registered_at: *at,
                    updated_at: *at,
                })
            }
            _ => None,
        }
    }

    /// Applies one of this agent's events. Re-registration refreshes everything and brings it back online.
    pub fn apply(&mut self, e: &Event) -> Result<(), TransitionError> {
        use AgentState::*;
        let illegal = || TransitionError::Agent { agent: self.id, from: self.state, event: e.kind() };
        let (next, at) = match e {
            Event::AgentRegistered { .. } => {
                let fresh = Agent::registered(e).ok_or_else(illegal)?;
                *self = Agent { registered_at: self.registered_at, ..fresh };
                return Ok(());
            }
            Event::AgentDraining { at, .. } if self.state == Online => (Draining, at),
            Event::AgentOffline { at, .. } if matches!(self.state, Online | Draining) => (Offline, at),
            Event::AgentOnline { at, .. } if self.state == Offline => (Online, at),
            Event::AgentDeregistered { at, .. } if self.state != Deregistered => (Deregistered, at),
            _ => return Err(illegal()),
        };
        self.state = next;
        self.updated_at = *at;
        Ok(())
    }

    pub fn status(&self, running: u32) -> AgentStatus {
        match self.state {
            AgentState::Offline | AgentState::Deregistered => AgentStatus::Offline,
            AgentState::Draining => AgentStatus::Draining,
            AgentState::Online if running >= self.max_concurrency => AgentStatus::Busy,
            AgentState::Online => AgentStatus::Online,
        }
    }

    /// Whether this agent may take a task with `spec` while it runs `running` tasks: it is online, has a free
    /// slot, has every capability the task needs, and the task is not pinned to another agent.
    pub fn can_take(&self, spec: &TaskSpec, running: u32) -> bool {
        self.state == AgentState::Online
            && running < self.max_concurrency
            && spec.needs.is_subset(&self.capabilities)
            && spec.agent.as_ref().is_none_or(|pin| *pin == self.name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn agent(id: i64, name: &str, caps: &[&str], slots: u32) -> Agent {
        let e = Event::AgentRegistered {
            agent: AgentId(id),
            name: AgentName::parse(name).unwrap(),
            adapter: "command".into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            max_concurrency: slots,
            version: "1".into(),
            token_hash: "h".into(),
            at: Timestamp(0),
        };
        Agent::registered(&e).unwrap()
    }

    fn spec(needs: &[&str], pin: Option<&str>) -> TaskSpec {
        TaskSpec {
            needs: needs.iter().map(|c| c.to_string()).collect(),
            agent: pin.map(|p| AgentName::parse(p).unwrap()),
            ..TaskSpec::default()
        }
    }

    #[test]
    fn an_agent_takes_only_tasks_whose_needs_it_has() {
        let a = agent(1, "a1", &["rust", "gpu"], 2);
        assert!(a.can_take(&spec(&[], None), 0));
        assert!(a.can_take(&spec(&["rust", "gpu"], None), 0));
        assert!(!a.can_take(&spec(&["rust", "docker"], None), 0));
    }

    #[test]
    fn a_pinned_task_goes_only_to_its_agent() {
        let a = agent(1, "a1", &[], 1);
        assert!(a.can_take(&spec(&[], Some("a1")), 0));
        assert!(!a.can_take(&spec(&[], Some("a2")), 0));
    }

    #[test]
    fn concurrency_slots_are_respected_and_full_means_busy() {
        let a = agent(1, "a1", &[], 2);
        assert!(a.can_take(&spec(&[], None), 1));
        assert!(!a.can_take(&spec(&[], None), 2));
        assert_eq!(a.status(1), AgentStatus::Online);
        assert_eq!(a.status(2), AgentStatus::Busy);
    }

    #[test]
    fn draining_and_offline_agents_take_nothing() {
        let mut a = agent(1, "a1", &[], 4);
        a.apply(&Event::AgentDraining { agent: a.id, at: Timestamp(5) }).unwrap();
        assert_eq!(a.status(0), AgentStatus::Draining);
        assert!(!a.can_take(&spec(&[], None), 0));
        a.apply(&Event::AgentOffline { agent: a.id, at: Timestamp(6) }).unwrap();
        assert_eq!(a.status(0), AgentStatus::Offline);
        assert!(!a.can_take(&spec(&[], None), 0));
    }

    #[test]
    fn agent_transitions_that_do_not_apply_are_errors() {
        let mut a = agent(1, "a1", &[], 1);
        let online = Event::AgentOnline { agent: a.id, at: Timestamp(1) };
        assert!(matches!(a.apply(&online), Err(TransitionError::Agent { from: AgentState::Online, .. })));
        a.apply(&Event::AgentDeregistered { agent: a.id, at: Timestamp(2) }).unwrap();
        for e in [
            Event::AgentDraining { agent: a.id, at: Timestamp(3) },
            Event::AgentOffline { agent: a.id, at: Timestamp(3) },
            Event::AgentDeregistered { agent: a.id, at: Timestamp(3) },
            online,
        ] {
            assert!(a.apply(&e).is_err(), "{e:?}");
        }
        assert_eq!(a.state, AgentState::Deregistered);
    }

    #[test]
    fn re_registering_refreshes_the_agent_and_brings_it_back() {
        let mut a = agent(1, "a1", &["x"], 1);
        a.apply(&Event::AgentOffline { agent: a.id, at: Timestamp(3) }).unwrap();
        let b = agent(1, "a1", &["y"], 3);
        let e = Event::AgentRegistered {
            agent: a.id,
            name: a.name.clone(),
            adapter: "codex".into(),
            capabilities: b.capabilities.clone(),
            max_concurrency: 3,
            version: "2".into(),
            token_hash: "new".into(),
            at: Timestamp(9),
        };
        a.apply(&e).unwrap();
        assert_eq!((a.state, a.max_concurrency, a.token_hash.as_str()), (AgentState::Online, 3, "new"));
        assert_eq!(a.registered_at, Timestamp(0), "first registration time is kept");
        assert!(a.capabilities.contains("y") && !a.capabilities.contains("x"));
    }
}
