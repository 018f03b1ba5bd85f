//! Observing clusters: one description per watched thing, the watches and
//! caches it feeds, the periodic resync, and the batching of dirty keys.

pub mod batch;
pub mod cache;
pub mod resync;
pub mod tracked;
pub mod watch;
