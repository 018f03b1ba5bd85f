//! What every target writes through: the leader/shutdown gate, pacing,
//! retries and Events.

pub mod events;
pub mod gate;
pub mod pace;
pub mod retry;
