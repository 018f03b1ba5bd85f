//! The user-facing vocabulary: every label, annotation, field manager and
//! Vault metadata key the product reads or writes, in one file that reads
//! against the README's "Labels and annotations" tables (`tests/vocabulary.rs`
//! checks that each `push-to-k8s.io/` key here is documented there).
//!
//! Only constants live here; what a value means is decided where it is read
//! (rules, adoption, replica rendering, the Vault entry, registrations).

// ---- Sources, copies and discovery (set on every copy we write) ----

/// Label selecting sources in the source namespace.
pub const SOURCE_LABEL_KEY: &str = "push-to-k8s";
pub const SOURCE_LABEL_VALUE: &str = "source";
pub const SOURCE_SELECTOR: &str = "push-to-k8s=source";
/// Label that lets us list our replicas with a selector.
pub const MANAGED_LABEL_KEY: &str = "push-to-k8s.io/managed-by";
pub const MANAGED_LABEL_VALUE: &str = "push-to-k8s";
pub const MANAGED_SELECTOR: &str = "push-to-k8s.io/managed-by=push-to-k8s";
/// `namespace/name` of the source (annotation: object names may exceed 63 chars).
pub const SOURCE_ANNOTATION: &str = "push-to-k8s.io/source";
/// On a copy in a remote cluster: the source cluster it comes from
/// (`CLUSTER_NAME`), so two controllers in two source clusters never take each
/// other's copies. Copies in this cluster do not carry it; a copy here that
/// does belongs to another cluster's controller.
pub const SOURCE_CLUSTER_ANNOTATION: &str = "push-to-k8s.io/source-cluster";
/// Discovery labels: the source's name and namespace, so `kubectl get
/// secrets,configmaps -A -l push-to-k8s.io/source-namespace=NS,push-to-k8s.io/source-name=NAME`
/// lists every copy of one source. A name that is not a valid label value is
/// replaced by its `replica::discovery_value`.
pub const SOURCE_NAME_LABEL: &str = "push-to-k8s.io/source-name";
pub const SOURCE_NAMESPACE_LABEL: &str = "push-to-k8s.io/source-namespace";
/// On a source: the name its copies get (default: the source's own name).
/// On a renamed copy: the name it was given, so a copy saved under yet
/// another name is never taken for ours (docs/architecture.md, "Ownership").
pub const COPY_NAME_ANNOTATION: &str = "push-to-k8s.io/copy-name";
/// Hash of everything we set, so an unchanged source never becomes a write.
pub const HASH_ANNOTATION: &str = "push-to-k8s.io/content-hash";
/// Prefix of every annotation that steers push-to-k8s (never copied).
pub const CONTROL_PREFIX: &str = "push-to-k8s.io/";
/// Our field manager for server-side apply.
pub const FIELD_MANAGER: &str = "push-to-k8s";

// ---- Adoption (on a source) ----

/// On a source: `"true"` asks that an unmanaged object in the way of one of
/// its copies be taken over (if the controller allows adoption); `"false"`
/// or absent: never. Any other value refuses the source like any bad
/// annotation.
pub const ADOPT_ANNOTATION: &str = "push-to-k8s.io/adopt";

// ---- Targeting (annotations on a source, labels on a namespace) ----

/// Comma-separated namespace names and globs (`team-*`, `?` = one character).
/// Absent or empty means all namespaces.
pub const NAMESPACES_ANNOTATION: &str = "push-to-k8s.io/namespaces";
/// Comma-separated namespace names and globs that never get a copy; exclusions always win.
pub const EXCLUDE_NAMESPACES_ANNOTATION: &str = "push-to-k8s.io/exclude-namespaces";
/// A Kubernetes label selector (kubectl syntax) the namespace's labels must match.
pub const NAMESPACE_SELECTOR_ANNOTATION: &str = "push-to-k8s.io/namespace-selector";
/// Comma-separated names and globs of registered remote clusters (`*`: every
/// one) that also get the source's copies (docs/remote-clusters.md). Absent
/// or empty means none: only this cluster, as always.
pub const CLUSTERS_ANNOTATION: &str = "push-to-k8s.io/clusters";
/// Comma-separated data keys and globs (`tls.*`, `*.crt`) a copy holds.
/// Absent or empty means every key.
pub const INCLUDE_KEYS_ANNOTATION: &str = "push-to-k8s.io/include-keys";
/// Comma-separated data keys and globs a copy never holds; exclusions always win.
pub const EXCLUDE_KEYS_ANNOTATION: &str = "push-to-k8s.io/exclude-keys";
/// Namespace label: with the value `all`, the namespace accepts copies of every
/// source. Only consulted in consent mode (`REQUIRE_NAMESPACE_CONSENT`).
pub const ACCEPT_LABEL: &str = "push-to-k8s.io/accept";
/// The value of [`ACCEPT_LABEL`] that accepts every source.
pub const ACCEPT_ALL: &str = "all";
/// Namespace label prefix: `accept.push-to-k8s.io/<source name>: "true"` accepts
/// copies of that one source (a Secret or a ConfigMap of that name). One label per
/// source, because a label value cannot hold a list of names that may contain dots.
pub const ACCEPT_SOURCE_PREFIX: &str = "accept.push-to-k8s.io/";
/// The value of an [`ACCEPT_SOURCE_PREFIX`] label that accepts its source.
pub const ACCEPT_SOURCE_VALUE: &str = "true";
/// Namespace label, any value: the namespace gets no copy of any source, whatever
/// a source or the configuration asks for. Honoured with consent mode on or off.
pub const OPT_OUT_LABEL: &str = "push-to-k8s.io/opt-out";
/// Namespace label prefix, any value: `opt-out.push-to-k8s.io/<source name>`
/// refuses copies of that one source.
pub const OPT_OUT_SOURCE_PREFIX: &str = "opt-out.push-to-k8s.io/";

// ---- Remote clusters (a registration Secret in the source namespace) ----

/// The label that registers a cluster; its value is the cluster's name.
pub const CLUSTER_LABEL: &str = "push-to-k8s.io/cluster";
/// The data key of a registration Secret that holds the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";

// ---- Vault (annotations on a source; custom metadata on the entries we write) ----

/// The KV v2 path (inside `VAULT_KV_MOUNT`) a source is written to.
pub const PATH_ANNOTATION: &str = "push-to-k8s.io/vault-path";
/// Prepended to every key of the entry (`app_` turns `user` into `app_user`).
pub const KEY_PREFIX_ANNOTATION: &str = "push-to-k8s.io/vault-key-prefix";
/// `"true"`: the entry stays in Vault when the source, its label or its
/// Vault path goes.
pub const PRESERVE_ANNOTATION: &str = "push-to-k8s.io/vault-preserve-on-delete";
/// Custom metadata keys on entries we wrote.
pub const META_MANAGED_BY: &str = "managed-by";
pub const META_SOURCE: &str = "source";
pub const META_SOURCE_KIND: &str = "source-kind";
pub const META_HASH: &str = "content-hash";
pub const META_VERSION: &str = "version";
/// The cluster that wrote the entry (the source-cluster stamp of copies in
/// remote clusters: `CLUSTER_NAME`, or the source namespace's uid).
pub const META_CLUSTER: &str = "source-cluster";
/// On an entry we are creating: the content hash of the data about to be
/// written (the metadata is written first, the data second, then the
/// metadata again without it).
pub const META_PENDING: &str = "pending";

// ---- The PushRule API (issue 19, helm/push-to-k8s/files/pushrule-crd.yaml) ----

/// The API group of [`crate::model::pushrule::PushRule`].
pub const PUSHRULE_GROUP: &str = "push-to-k8s.io";
/// Its served and stored version.
pub const PUSHRULE_VERSION: &str = "v1alpha1";
pub const PUSHRULE_KIND: &str = "PushRule";
pub const PUSHRULE_PLURAL: &str = "pushrules";
/// The CRD that serves PushRules.
pub const PUSHRULE_CRD: &str = "pushrules.push-to-k8s.io";
/// On a rule's copy: the rule it came from (a labelled source's copy has none).
pub const RULE_ANNOTATION: &str = "push-to-k8s.io/rule";
/// On a rule with `deletionPolicy: Delete`: its copies are deleted before it goes.
pub const RULE_FINALIZER: &str = "push-to-k8s.io/copies";

// Workload-driven Vault (vault-sync-operator's annotations, on Deployments in
// the namespaces a PushRule's `workloadVault` names; docs/vault.md).
/// The Vault path a Deployment pushes the Secrets it references to.
pub const WORKLOAD_PATH_ANNOTATION: &str = "vault-sync.io/path";
/// Which Secrets and keys, with which prefix (JSON), all in one entry.
pub const WORKLOAD_SECRETS_ANNOTATION: &str = "vault-sync.io/secrets";
/// `"true"`: the entries stay when the Deployment goes.
pub const WORKLOAD_PRESERVE_ANNOTATION: &str = "vault-sync.io/preserve-on-delete";
/// The kind an entry pushed for a workload names as its source.
pub const WORKLOAD_KIND: &str = "Deployment";
