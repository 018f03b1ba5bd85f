//! Vault as a target (DESIGN.md section 7): a KV v2 client with Vault's
//! Kubernetes auth, on the HTTP stack kube already brings. No token, JWT or
//! secret value ever reaches an error, a log line or a `Debug` output.

pub mod client;
