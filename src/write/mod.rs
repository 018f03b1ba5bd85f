//! What every target writes through: the leader/shutdown gate, pacing,
//! retries and Events.

pub mod events;
pub mod gate;
pub mod pace;
pub mod retry;

use std::sync::Arc;

use crate::observe::cache::Caches;
use crate::operate::http::Health;
use crate::operate::metrics::Metrics;

/// What every target reads, writes through and reports to: the caches, the
/// write gate, Events, metrics and health. One value handed to each target
/// instead of five arguments.
#[derive(Clone)]
pub struct Context {
    pub caches: Arc<Caches>,
    pub gate: Arc<gate::WriteGate>,
    pub events: Arc<events::Events>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}
