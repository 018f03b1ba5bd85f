//! One Kubernetes cluster's namespaces: writing copies, fights, conflicts.

pub mod admit;
pub mod conflicts;
pub mod fights;
pub mod lane;
pub mod writer;
