//! Deciding, purely: the planner (desired against observed), adoption, and
//! where each source stands by the plan.

pub mod adoption;
pub mod plan;
pub mod standing;
