//! Component lifecycles and the readiness they add up to.
//!
//! Each long-running part of a service (a consumer, the producer, the
//! WebSocket listener) registers a named component and moves it through
//! explicit states. `/healthz` answers 200 while the process is up and no
//! component has failed; `/readyz` answers 200 only when every component is
//! `Ready` — a draining edge turns unready first, so load balancers stop
//! sending it new connections.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// The lifecycle of one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum ComponentState {
    Starting,
    Ready,
    /// Working but impaired (an engine is down and being retried).
    Degraded(String),
    Draining,
    Stopped,
    Failed(String),
}

/// The set of components of one service instance.
#[derive(Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, ComponentState>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_map().entries(self.snapshot()).finish()
    }
}

/// A handle a component uses to report its own state.
#[derive(Clone, Debug)]
pub struct ComponentHandle {
    health: Health,
    name: String,
}

impl ComponentHandle {
    pub fn set(&self, state: ComponentState) {
        let mut components = self.health.components.lock().expect("health lock poisoned");
        components.insert(self.name.clone(), state);
    }

    pub fn state(&self) -> ComponentState {
        let components = self.health.components.lock().expect("health lock poisoned");
        components
            .get(&self.name)
            .cloned()
            .unwrap_or(ComponentState::Stopped)
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a component in `Starting` state.
    pub fn component(&self, name: impl Into<String>) -> ComponentHandle {
        let handle = ComponentHandle {
            health: self.clone(),
            name: name.into(),
        };
        handle.set(ComponentState::Starting);
        handle
    }

    pub fn snapshot(&self) -> BTreeMap<String, ComponentState> {
        self.components
            .lock()
            .expect("health lock poisoned")
            .clone()
    }

    /// Every component is `Ready` (degraded counts as not ready).
    pub fn is_ready(&self) -> bool {
        let components = self.snapshot();
        !components.is_empty()
            && components
                .values()
                .all(|state| *state == ComponentState::Ready)
    }

    /// No component has failed.
    pub fn is_live(&self) -> bool {
        !self
            .snapshot()
            .values()
            .any(|state| matches!(state, ComponentState::Failed(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_component() {
        let health = Health::new();
        assert!(!health.is_ready());
        let producer = health.component("producer");
        let consumer = health.component("consumer");
        producer.set(ComponentState::Ready);
        assert!(!health.is_ready());
        consumer.set(ComponentState::Ready);
        assert!(health.is_ready());
        consumer.set(ComponentState::Degraded("cassandra down".into()));
        assert!(!health.is_ready() && health.is_live());
        consumer.set(ComponentState::Failed("gave up".into()));
        assert!(!health.is_live());
    }
}
