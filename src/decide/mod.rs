//! Deciding, purely: the planner (desired against observed) and adoption.

pub mod adoption;
pub mod plan;
