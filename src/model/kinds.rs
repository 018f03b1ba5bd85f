//! The kinds of object push-to-k8s replicates: Secrets and ConfigMaps. Each
//! kind is described once here and used by the watches, the resync, the
//! planner, the writer and the conflict checks alike; the rest of the code is
//! the same for every kind. Adding a kind is a variant here and its
//! rendering in [`crate::model::replica`].

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ApiResource;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    ConfigMap,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Secret, Kind::ConfigMap];

    /// The Kubernetes kind (`Secret`), for Events and messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        }
    }

    /// A bounded metric label and log field (`secret`).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::ConfigMap => "configmap",
        }
    }

    /// What the API calls it, for requests through [`kube::api::DynamicObject`].
    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Secret => ApiResource::erase::<Secret>(&()),
            Kind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_names_its_api() {
        let paths: Vec<_> = Kind::ALL
            .iter()
            .map(|k| (k.api_resource().plural, k.api_resource().api_version))
            .collect();
        assert_eq!(
            paths,
            [
                ("secrets".to_string(), "v1".to_string()),
                ("configmaps".to_string(), "v1".to_string())
            ]
        );
    }
}
