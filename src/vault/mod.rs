//! The Vault KV v2 target (DESIGN §7, docs/vault.md): sources annotated
//! with a Vault path are also written to Vault, with the ownership rules of
//! a namespace copy. `entry` holds the pure rules, `client` the requests,
//! `target` the worker that runs beside the namespace control loop.

pub mod entry;
pub mod target;
