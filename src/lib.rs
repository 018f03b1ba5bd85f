//! push-to-k8s: keeps labelled Secrets and ConfigMaps present and identical in
//! every namespace that should have them, in registered clusters and in Vault.
//!
//! The tree is the flow; dependencies run one way, top to bottom
//! (`tests/layering.rs` fails on a cycle or an upward import):
//!
//! - [`inspect`]: `status` and `plan`, the I/O part and the pure report.
//! - [`controller`]: wiring only: preflight, lease, write gate, targets, fan-out, shutdown.
//! - [`targets`]: where copies go: this cluster's namespaces and each registered
//!   cluster ([`targets::cluster`], [`targets::remote`]), and Vault ([`targets::vault`]).
//! - [`write`]: what every target writes through: the leader/shutdown gate,
//!   pacing, retries, Events.
//! - [`decide`]: the pure planner and adoption: desired against observed.
//! - [`observe`]: watches, caches, the periodic resync, batching of dirty keys.
//! - [`operate`]: configuration, CLI, lease, health, metrics, logging, API clients.
//! - [`model`]: the vocabulary (every label and annotation), kinds, names, the
//!   annotation rules, replica rendering and records, and the PushRule API
//!   (issue 19; not wired into the controller yet).
//! - `fixtures` (test builds only): the mock API server of the unit tests, and
//!   the source Secrets and copy records they build.

pub mod controller;
pub mod decide;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod inspect;
pub mod model;
pub mod observe;
pub mod operate;
pub mod targets;
pub mod write;
