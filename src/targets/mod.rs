//! Where copies go: this cluster's namespaces and each registered cluster
//! (`cluster`, `remote`), and Vault (`vault`).

pub mod cluster;
pub mod remote;
pub mod vault;
