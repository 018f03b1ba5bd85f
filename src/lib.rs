//! push-to-k8s: keeps labelled Secrets from one source namespace present and
//! identical in every namespace that should have them.
//!
//! Data flow (one module, one job):
//! `watch` (caches + dirty keys) → `batch` (quiet window, max wait) →
//! `plan` (desired vs observed, pure) → `push` (paced writes) → API server,
//! with `resync` re-listing periodically as the fallback. `controller` wires
//! them together; `targets` and `replica` hold the pure decisions.

pub mod adoption;
pub mod batch;
pub mod cache;
pub mod cli;
pub mod config;
pub mod conflicts;
pub mod controller;
pub mod demo;
pub mod events;
pub mod fights;
pub mod gate;
pub mod http;
pub mod inspect;
pub mod kinds;
pub mod kube_client;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod pace;
pub mod plan;
pub mod push;
pub mod records;
pub mod remote;
pub mod replica;
pub mod resync;
pub mod retry;
pub mod status;
pub mod targets;
pub mod tracked;
pub mod vault;
pub mod watch;
