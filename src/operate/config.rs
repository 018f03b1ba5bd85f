//! Configuration from environment variables (DESIGN §2).
//!
//! Every variable is read through `envy` into [`RawEnv`], a struct of
//! `Option<String>` fields, and only then validated into the typed [`Config`].
//! Reading strings first (instead of letting envy/serde parse numbers and
//! booleans) is deliberate: it lets us be strict (no surrounding whitespace, no
//! `+5`, no `5.0`, no silent fallback on an empty value) and produce one precise
//! message per variable naming the variable, the value given and what is valid.
//!
//! Any invalid value is a [`ConfigError`]; the binary prints its `Display` (always
//! a single line, the value is `Debug`-quoted so control characters are escaped)
//! and exits with status 2 before touching the cluster.
//!
//! Decisions where the brief was silent (also worth copying into `docs/`):
//! - Variable names are matched exactly (upper case). envy lower-cases names,
//!   so without an exact-name filter `namespace=x` would be read as `NAMESPACE`,
//!   and having both set would be a confusing "duplicate field" error.
//! - `NAMESPACE=""` is an error (an empty value is not a namespace), not the
//!   default: the source namespace decides what gets garbage-collected, so we
//!   never guess it from a mistyped value.
//! - `POD_NAMESPACE` (downward API) is only a fallback: empty is treated as
//!   unset, an invalid non-empty value is an error naming `POD_NAMESPACE`.
//! - Booleans and `LOG_FORMAT` are case-insensitive (`TRUE`, `Json`), because
//!   YAML users write them that way; numbers are not trimmed or signed.
//! - `PROTECTED_NAMESPACES` items may have spaces around the commas
//!   (`kube-system, kube-public`); empty items (`a,,b`, trailing comma) are
//!   errors; duplicates are dropped.
//! - `KUBECONFIG` must be a single existing file: `kube` is handed one path, so
//!   a `:`-separated list (valid for kubectl) is rejected rather than
//!   half-honoured.
//! - When several variables are invalid, the first in the table order of
//!   [`Config`] is reported (one line, one problem).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::kinds::Kind;
use crate::model::names;

/// File the kubelet mounts into every pod with a service account token; its
/// content is the pod's namespace.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Namespace used when nothing else tells us where we run.
pub const DEFAULT_NAMESPACE: &str = "push-to-k8s";

/// Default for `PROTECTED_NAMESPACES`.
pub const DEFAULT_PROTECTED_NAMESPACES: &str = "kube-system,kube-public,kube-node-lease";

/// Typed, validated configuration. Build it with [`Config::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `NAMESPACE`: where the source objects live.
    pub namespace: String,
    /// `ENABLE_SECRET_WATCHER`: `false` means periodic sync only.
    pub enable_secret_watcher: bool,
    /// `ENABLE_PUSH_RULES`: serve PushRules while their CRD is installed.
    pub enable_push_rules: bool,
    /// `ENABLE_CONFIGMAPS`: ConfigMaps are sources too (default); `false`:
    /// no ConfigMap is watched or written, existing ConfigMap copies stay.
    pub enable_configmaps: bool,
    /// `ENABLE_CONFIGMAPS=cleanup`: no ConfigMap source, but our ConfigMap
    /// copies (of this source namespace) are watched and deleted.
    pub cleanup_configmaps: bool,
    /// `ALLOW_ADOPTION`: an unmanaged object in the way of a copy is taken
    /// over when its source asks for it (`push-to-k8s.io/adopt: "true"`);
    /// `false` (default): never, whatever a source asks (DESIGN §5).
    pub allow_adoption: bool,
    /// `SECRET_SYNC_DEBOUNCE_SECONDS`: quiet window of the batcher.
    pub debounce: Duration,
    /// `SECRET_SYNC_MAX_WAIT_SECONDS`: longest a batch waits after its first key.
    pub max_wait: Duration,
    /// `SECRET_SYNC_RATE_LIMIT`: write operations per second (all writers).
    pub rate_limit: NonZeroU32,
    /// `SECRET_SYNC_RATE_BURST`: writes allowed back to back.
    pub rate_burst: NonZeroU32,
    /// `SYNC_INTERVAL` (minutes): periodic full resync.
    pub sync_interval: Duration,
    /// `EXCLUDE_NAMESPACE_LABEL`: namespaces carrying this label key get nothing.
    pub exclude_namespace_label: Option<String>,
    /// `PROTECTED_NAMESPACES`: never receive copies unless a source names them.
    pub protected_namespaces: Vec<String>,
    /// `REQUIRE_NAMESPACE_CONSENT`: only namespaces whose owners accept a
    /// source by label receive its copies (DESIGN §3, `targets.rs`).
    pub require_namespace_consent: bool,
    /// `METRICS_PORT`: port of `/metrics`, `/healthz`, `/readyz`.
    pub metrics_port: u16,
    /// `READY_WATCH_FAILURE_SECONDS`: how long a watch may fail before
    /// `/readyz` reports the controller unready.
    pub ready_watch_failure: Duration,
    /// `DEBUG`: debug logs (`RUST_LOG` overrides).
    pub debug: bool,
    /// `LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// `KUBECONFIG`: explicit kubeconfig file; `None` means in-cluster or the
    /// client's own default (`~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// `LEADER_ELECTION=true`: hold a Lease to write (two or more replicas).
    pub leader_election: Option<LeaderElection>,
    /// `VAULT_ADDR` set: sources annotated with a Vault path are written to
    /// Vault KV v2 too (`vault/`); `None`: the Vault target is off.
    pub vault: Option<VaultConfig>,
    /// `CLUSTER_NAME`: the name our copies in remote clusters carry as their
    /// source cluster; `None`: the uid of the source namespace (read at start).
    pub cluster_name: Option<String>,
}

/// The Vault target's settings (`VAULT_*`), validated whether or not
/// `VAULT_ADDR` is set; the cross-checks (a token file for token auth, the
/// ServiceAccount token for Kubernetes auth) only when it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// `VAULT_ADDR`: `http(s)://host[:port]`.
    pub addr: String,
    pub auth: VaultAuth,
    /// `VAULT_CACERT`: PEM bundle of the CAs to trust for `https`; `None`:
    /// the platform's roots.
    pub ca_cert: Option<PathBuf>,
    /// `VAULT_KV_MOUNT` (default `secret`): the KV v2 mount annotated paths
    /// are in.
    pub kv_mount: String,
    /// `VAULT_RATE_LIMIT` (default 10, 1–100): Vault requests per second.
    pub rate_limit: NonZeroU32,
    /// `VAULT_CHECK_INTERVAL_SECONDS` (default 300): how often every entry's
    /// metadata is read back, to restore entries edited or deleted in Vault.
    pub check_interval: Duration,
}

/// How the controller logs in to Vault (`VAULT_AUTH_METHOD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// Vault's Kubernetes auth method with the pod's ServiceAccount token.
    Kubernetes {
        /// `VAULT_AUTH_MOUNT` (default `kubernetes`).
        mount: String,
        /// `VAULT_ROLE` (default `push-to-k8s`).
        role: String,
        /// `VAULT_SA_TOKEN_PATH`: read at every login (projected tokens rotate).
        jwt_path: PathBuf,
    },
    /// `VAULT_AUTH_METHOD=token`: the token in `VAULT_TOKEN_FILE`, read at
    /// every login (development, or a token managed by an agent).
    TokenFile(PathBuf),
}

/// Where the kubelet mounts the pod's ServiceAccount token.
pub const SERVICE_ACCOUNT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Leader election settings (`LEASE_*`), validated whether or not
/// `LEADER_ELECTION` is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    /// `LEASE_NAME` (default `push-to-k8s`).
    pub lease_name: String,
    /// `LEASE_NAMESPACE` (default: the pod's namespace, else `NAMESPACE`).
    pub lease_namespace: String,
    /// `LEASE_DURATION_SECONDS` (default 15, 3–300): how long a standby waits
    /// for a silent holder before taking over.
    pub duration: Duration,
    /// `LEASE_RENEW_DEADLINE_SECONDS` (default 10, 2–299, less than the
    /// duration): a holder that has not renewed for this long stops writing.
    pub renew_deadline: Duration,
    /// `LEASE_RETRY_PERIOD_SECONDS` (default 2, 1–60, less than the renew
    /// deadline): how often to renew, or to try to acquire.
    pub retry_period: Duration,
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One invalid variable. `Display` is a single line, e.g.
/// `invalid SECRET_SYNC_RATE_LIMIT="0": must be an integer from 1 to 100 (writes per second)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {variable}={value:?}: {valid}")]
pub struct ConfigError {
    /// Name of the environment variable (or the file) the value came from.
    pub variable: &'static str,
    /// The value exactly as given.
    pub value: String,
    /// What would have been accepted (never contains a newline).
    pub valid: String,
}

impl ConfigError {
    fn new(variable: &'static str, value: &str, valid: impl Into<String>) -> Self {
        ConfigError {
            variable,
            value: value.to_owned(),
            valid: valid.into(),
        }
    }
}

/// Every variable this module reads, exactly as spelled in the environment.
const VARIABLES: &[&str] = &[
    "NAMESPACE",
    "POD_NAMESPACE",
    "ENABLE_SECRET_WATCHER",
    "ENABLE_PUSH_RULES",
    "ENABLE_CONFIGMAPS",
    "ALLOW_ADOPTION",
    "SECRET_SYNC_DEBOUNCE_SECONDS",
    "SECRET_SYNC_MAX_WAIT_SECONDS",
    "SECRET_SYNC_RATE_LIMIT",
    "SECRET_SYNC_RATE_BURST",
    "SYNC_INTERVAL",
    "EXCLUDE_NAMESPACE_LABEL",
    "PROTECTED_NAMESPACES",
    "REQUIRE_NAMESPACE_CONSENT",
    "METRICS_PORT",
    "READY_WATCH_FAILURE_SECONDS",
    "DEBUG",
    "LOG_FORMAT",
    "KUBECONFIG",
    "LEADER_ELECTION",
    "LEASE_NAME",
    "LEASE_NAMESPACE",
    "LEASE_DURATION_SECONDS",
    "LEASE_RENEW_DEADLINE_SECONDS",
    "LEASE_RETRY_PERIOD_SECONDS",
    "VAULT_ADDR",
    "VAULT_AUTH_METHOD",
    "VAULT_AUTH_MOUNT",
    "VAULT_ROLE",
    "VAULT_SA_TOKEN_PATH",
    "VAULT_TOKEN_FILE",
    "VAULT_CACERT",
    "VAULT_KV_MOUNT",
    "VAULT_RATE_LIMIT",
    "VAULT_CHECK_INTERVAL_SECONDS",
    "CLUSTER_NAME",
];

/// One environment variable as users see it: the single description of its
/// name, default and valid values. The Helm chart's `values.schema.json` is
/// generated from [`ENV_VARS`] and `tests/chart.rs` fails while the two
/// disagree; the unit tests below check this table against the parser above,
/// so a variable added to [`VARIABLES`] without a row here fails them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    pub kind: ValueKind,
    pub default: EnvDefault,
    /// One sentence for humans (docs, the chart schema).
    pub description: &'static str,
}

/// What a variable accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// `true` or `false`, any case.
    Bool,
    /// A decimal integer (ASCII digits only) in `min..=max`, narrowed further
    /// by `relation` when there is one.
    Integer {
        min: u64,
        max: u64,
        unit: &'static str,
        relation: Option<Relation>,
    },
    /// A namespace name (DNS-1123 label); with `empty_is_unset`, `""` counts
    /// as not set, otherwise it is invalid.
    Namespace { empty_is_unset: bool },
    /// An object name (DNS-1123 subdomain).
    ObjectName,
    /// Comma-separated namespace names (spaces around commas allowed); `""`
    /// is the empty list.
    NamespaceList,
    /// A label key; `""` counts as not set.
    LabelKey,
    /// One of these words, any case.
    OneOf(&'static [&'static str]),
    /// The path of an existing file; `""` counts as not set.
    File,
    /// An `http://` or `https://` URL of a server (scheme and host, an
    /// optional port, nothing after); `""` counts as not set.
    Url,
    /// A Vault mount or role name: `/`-separated segments of letters,
    /// digits, `.`, `_` and `-` (no `.` or `..` segment); with `slashes:
    /// false` a single segment.
    VaultName { slashes: bool },
}

/// A bound an integer has relative to another variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Not less than the named variable's value.
    AtLeast(&'static str),
    /// Less than the named variable's value.
    LessThan(&'static str),
}

/// A variable's value when it is not set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvDefault {
    /// Exactly as if this value had been given.
    Value(&'static str),
    /// Worked out from something else, as described.
    Derived(&'static str),
}

const fn int(min: u64, max: u64, unit: &'static str) -> ValueKind {
    ValueKind::Integer {
        min,
        max,
        unit,
        relation: None,
    }
}

/// Every variable of [`VARIABLES`], described for users.
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar {
        name: "NAMESPACE",
        kind: ValueKind::Namespace {
            empty_is_unset: false,
        },
        default: EnvDefault::Derived(
            "POD_NAMESPACE, else the service-account namespace file, else push-to-k8s",
        ),
        description: "Namespace of the sources (Secrets and ConfigMaps labelled push-to-k8s=source); it must exist.",
    },
    EnvVar {
        name: "POD_NAMESPACE",
        kind: ValueKind::Namespace {
            empty_is_unset: true,
        },
        default: EnvDefault::Derived("unset (the chart sets it to the pod's namespace)"),
        description: "The namespace the pod runs in: the default of NAMESPACE.",
    },
    EnvVar {
        name: "ENABLE_SECRET_WATCHER",
        kind: ValueKind::Bool,
        default: EnvDefault::Value("true"),
        description: "Watch the sources; false: read them at start and at each periodic sync only.",
    },
    EnvVar {
        name: "ENABLE_PUSH_RULES",
        kind: ValueKind::Bool,
        default: EnvDefault::Value("true"),
        description: "Serve PushRules (docs/pushrule.md) while their CRD is installed; false: rules are not watched (their copies are left as they are). One release per cluster serves them.",
    },
    EnvVar {
        name: "ENABLE_CONFIGMAPS",
        kind: ValueKind::OneOf(&["true", "false", "cleanup"]),
        default: EnvDefault::Value("true"),
        description: "ConfigMaps labelled push-to-k8s=source are sources too; false: no ConfigMap is watched or written (copies stay); cleanup: every ConfigMap copy of this source namespace is deleted.",
    },
    EnvVar {
        name: "ALLOW_ADOPTION",
        kind: ValueKind::Bool,
        default: EnvDefault::Value("false"),
        description: "An unmanaged object in the way of a copy is taken over when its source asks for it (push-to-k8s.io/adopt).",
    },
    EnvVar {
        name: "SECRET_SYNC_DEBOUNCE_SECONDS",
        kind: int(1, 60, "seconds"),
        default: EnvDefault::Value("5"),
        description: "Quiet window before a batch of changes is planned.",
    },
    EnvVar {
        name: "SECRET_SYNC_MAX_WAIT_SECONDS",
        kind: ValueKind::Integer {
            min: 1,
            max: 600,
            unit: "seconds",
            relation: Some(Relation::AtLeast("SECRET_SYNC_DEBOUNCE_SECONDS")),
        },
        default: EnvDefault::Derived("3 x SECRET_SYNC_DEBOUNCE_SECONDS"),
        description: "A batch is planned at the latest this long after its first change; not less than SECRET_SYNC_DEBOUNCE_SECONDS.",
    },
    EnvVar {
        name: "SECRET_SYNC_RATE_LIMIT",
        kind: int(1, 100, "writes per second"),
        default: EnvDefault::Value("10"),
        description: "Write requests per second, all writes together.",
    },
    EnvVar {
        name: "SECRET_SYNC_RATE_BURST",
        kind: int(1, 100, "writes"),
        default: EnvDefault::Value("1"),
        description: "Writes allowed back to back before pacing applies.",
    },
    EnvVar {
        name: "SYNC_INTERVAL",
        kind: int(1, 1440, "minutes"),
        default: EnvDefault::Value("15"),
        description: "Periodic full resync, in minutes.",
    },
    EnvVar {
        name: "EXCLUDE_NAMESPACE_LABEL",
        kind: ValueKind::LabelKey,
        default: EnvDefault::Value(""),
        description: "Namespaces carrying this label key get no copies; empty: none excluded by label.",
    },
    EnvVar {
        name: "PROTECTED_NAMESPACES",
        kind: ValueKind::NamespaceList,
        default: EnvDefault::Value(DEFAULT_PROTECTED_NAMESPACES),
        description: "Namespaces copied to only when a source names them exactly.",
    },
    EnvVar {
        name: "REQUIRE_NAMESPACE_CONSENT",
        kind: ValueKind::Bool,
        default: EnvDefault::Value("false"),
        description: "Only namespaces whose owners accept a source by label receive its copies.",
    },
    EnvVar {
        name: "METRICS_PORT",
        kind: int(1, 65535, ""),
        default: EnvDefault::Value("9090"),
        description: "Port of /metrics, /healthz and /readyz.",
    },
    EnvVar {
        name: "READY_WATCH_FAILURE_SECONDS",
        kind: int(1, 600, "seconds"),
        default: EnvDefault::Value("10"),
        description: "/readyz reports unready once a watch has been failing for longer than this.",
    },
    EnvVar {
        name: "DEBUG",
        kind: ValueKind::Bool,
        default: EnvDefault::Value("false"),
        description: "Debug logs for push-to-k8s (RUST_LOG overrides).",
    },
    EnvVar {
        name: "LOG_FORMAT",
        kind: ValueKind::OneOf(&["text", "json"]),
        default: EnvDefault::Value("text"),
        description: "Log line format (stderr).",
    },
    EnvVar {
        name: "KUBECONFIG",
        kind: ValueKind::File,
        default: EnvDefault::Derived("in-cluster, else ~/.kube/config"),
        description: "Kubeconfig file of the cluster to manage (one path).",
    },
    EnvVar {
        name: "CLUSTER_NAME",
        kind: ValueKind::ObjectName,
        default: EnvDefault::Derived("the uid of the NAMESPACE namespace"),
        description: "This cluster's name on the copies it pushes to remote clusters (push-to-k8s.io/source-cluster); give each source cluster its own.",
    },
    EnvVar {
        name: "LEADER_ELECTION",
        kind: ValueKind::Bool,
        default: EnvDefault::Value("false"),
        description: "Hold a Lease to write, for two or more replicas; a standby writes nothing.",
    },
    EnvVar {
        name: "LEASE_NAME",
        kind: ValueKind::ObjectName,
        default: EnvDefault::Value("push-to-k8s"),
        description: "Name of the Lease.",
    },
    EnvVar {
        name: "LEASE_NAMESPACE",
        kind: ValueKind::Namespace {
            empty_is_unset: false,
        },
        default: EnvDefault::Derived("POD_NAMESPACE, else NAMESPACE"),
        description: "Namespace of the Lease.",
    },
    EnvVar {
        name: "LEASE_DURATION_SECONDS",
        kind: int(3, 300, "seconds"),
        default: EnvDefault::Value("15"),
        description: "How long a standby waits for a silent holder before taking over.",
    },
    EnvVar {
        name: "LEASE_RENEW_DEADLINE_SECONDS",
        kind: ValueKind::Integer {
            min: 2,
            max: 299,
            unit: "seconds",
            relation: Some(Relation::LessThan("LEASE_DURATION_SECONDS")),
        },
        default: EnvDefault::Derived("10, at most LEASE_DURATION_SECONDS - 1"),
        description: "A holder that has not renewed for this long stops writing; less than LEASE_DURATION_SECONDS.",
    },
    EnvVar {
        name: "LEASE_RETRY_PERIOD_SECONDS",
        kind: ValueKind::Integer {
            min: 1,
            max: 60,
            unit: "seconds",
            relation: Some(Relation::LessThan("LEASE_RENEW_DEADLINE_SECONDS")),
        },
        default: EnvDefault::Derived("2, less than LEASE_RENEW_DEADLINE_SECONDS"),
        description: "How often the holder renews, and a standby tries to acquire; less than LEASE_RENEW_DEADLINE_SECONDS.",
    },
    EnvVar {
        name: "VAULT_ADDR",
        kind: ValueKind::Url,
        default: EnvDefault::Value(""),
        description: "Vault server (http(s)://host[:port]); sources annotated push-to-k8s.io/vault-path are also written to its KV v2 mount. Empty: the Vault target is off.",
    },
    EnvVar {
        name: "VAULT_AUTH_METHOD",
        kind: ValueKind::OneOf(&["kubernetes", "token"]),
        default: EnvDefault::Value("kubernetes"),
        description: "kubernetes: Vault's Kubernetes auth with the pod's ServiceAccount token; token: the token in VAULT_TOKEN_FILE (development).",
    },
    EnvVar {
        name: "VAULT_AUTH_MOUNT",
        kind: ValueKind::VaultName { slashes: true },
        default: EnvDefault::Value("kubernetes"),
        description: "Mount path of Vault's Kubernetes auth method.",
    },
    EnvVar {
        name: "VAULT_ROLE",
        kind: ValueKind::VaultName { slashes: false },
        default: EnvDefault::Value("push-to-k8s"),
        description: "Role of Vault's Kubernetes auth method to log in as.",
    },
    EnvVar {
        name: "VAULT_SA_TOKEN_PATH",
        kind: ValueKind::File,
        default: EnvDefault::Derived(SERVICE_ACCOUNT_TOKEN_FILE),
        description: "ServiceAccount token presented to Vault's Kubernetes auth; read again at every login.",
    },
    EnvVar {
        name: "VAULT_TOKEN_FILE",
        kind: ValueKind::File,
        default: EnvDefault::Value(""),
        description: "File holding the Vault token for VAULT_AUTH_METHOD=token; read again at every login.",
    },
    EnvVar {
        name: "VAULT_CACERT",
        kind: ValueKind::File,
        default: EnvDefault::Value(""),
        description: "PEM file of the CA certificates to trust for an https VAULT_ADDR; empty: the system's roots.",
    },
    EnvVar {
        name: "VAULT_KV_MOUNT",
        kind: ValueKind::VaultName { slashes: true },
        default: EnvDefault::Value("secret"),
        description: "Mount path of the KV version 2 secrets engine that annotated paths are in.",
    },
    EnvVar {
        name: "VAULT_RATE_LIMIT",
        kind: int(1, 100, "requests per second"),
        default: EnvDefault::Value("10"),
        description: "Vault requests per second (writes, deletes and checks together), apart from the Kubernetes limit.",
    },
    EnvVar {
        name: "VAULT_CHECK_INTERVAL_SECONDS",
        kind: int(5, 86400, "seconds"),
        default: EnvDefault::Value("300"),
        description: "How often each Vault entry's metadata is read back, so an entry edited or deleted in Vault is restored.",
    },
];

/// [`ENV_VARS`] checked against the parser: every variable has a row, and
/// each row's kind, range and default are what [`Config::from_vars`] does.
#[cfg(test)]
mod env_vars_tests {
    use super::*;

    fn load(vars: &[(&str, String)]) -> Result<Config, ConfigError> {
        Config::from_vars_with_sa_file(
            vars.iter().map(|(k, v)| (k.to_string(), v.clone())),
            Path::new("/nonexistent-on-purpose/serviceaccount/namespace"),
        )
    }

    fn row(name: &str) -> &'static EnvVar {
        ENV_VARS
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name} has no row in config::ENV_VARS"))
    }

    /// Values of other variables that give `name` its widest range: the
    /// variable it must stay below at its maximum, the one it must reach at
    /// its minimum (and so on down the chain).
    fn companions(name: &str) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let ValueKind::Integer {
            relation: Some(relation),
            ..
        } = row(name).kind
        {
            let (other, at_max) = match relation {
                Relation::LessThan(other) => (other, true),
                Relation::AtLeast(other) => (other, false),
            };
            let ValueKind::Integer { min, max, .. } = row(other).kind else {
                panic!("{name} is related to {other}, which is not an integer");
            };
            out.extend(companions(other));
            let value = if at_max { max } else { min };
            out.push((row(other).name, value.to_string()));
        }
        out
    }

    /// Every boolean turned away from its default, so that settings used only
    /// behind a switch (`LEASE_*` behind `LEADER_ELECTION`) are in effect.
    fn switches_flipped() -> Vec<(&'static str, String)> {
        ENV_VARS
            .iter()
            .filter(|v| v.kind == ValueKind::Bool)
            .map(|v| {
                let flipped = v.default != EnvDefault::Value("true");
                (v.name, flipped.to_string())
            })
            .collect()
    }

    fn check(name: &'static str, value: &str) -> Result<Config, ConfigError> {
        let mut vars = switches_flipped();
        // Kubernetes auth to Vault needs a ServiceAccount token file to exist.
        if name != "VAULT_SA_TOKEN_PATH" {
            let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
            vars.push(("VAULT_SA_TOKEN_PATH", file.to_owned()));
        }
        vars.extend(companions(name));
        vars.push((name, value.to_owned()));
        load(&vars)
    }

    #[test]
    fn every_variable_has_exactly_one_row() {
        for name in VARIABLES {
            let rows = ENV_VARS.iter().filter(|v| v.name == *name).count();
            assert_eq!(
                rows, 1,
                "{name} is read by config.rs: describe it once in config::ENV_VARS (kind, default, description), then regenerate the chart schema: UPDATE_VALUES_SCHEMA=1 cargo test --test chart values_schema_env"
            );
        }
        for var in ENV_VARS {
            assert!(
                VARIABLES.contains(&var.name),
                "config::ENV_VARS describes {}, which config.rs does not read",
                var.name
            );
        }
    }

    #[test]
    fn defaults_are_what_an_unset_variable_gives() {
        for base in [Vec::new(), switches_flipped()] {
            for var in ENV_VARS {
                if let EnvDefault::Value(value) = var.default {
                    let mut vars: Vec<_> = base
                        .iter()
                        .filter(|(n, _)| *n != var.name)
                        .cloned()
                        .collect();
                    let unset = load(&vars).unwrap();
                    vars.push((var.name, value.to_owned()));
                    let given = load(&vars).unwrap_or_else(|e| {
                        panic!("{}: default {value:?} is invalid: {e}", var.name)
                    });
                    assert_eq!(given, unset, "{}={value:?} is not the default", var.name);
                }
            }
        }
    }

    #[test]
    fn kinds_and_ranges_are_what_the_parser_accepts() {
        for var in ENV_VARS {
            let name = var.name;
            let accepted: Vec<String>;
            let rejected: Vec<String>;
            match var.kind {
                ValueKind::Bool => {
                    accepted = vec!["true".into(), "FALSE".into()];
                    rejected = vec!["".into(), "yes".into(), "1".into()];
                }
                ValueKind::Integer { min, max, .. } => {
                    accepted = vec![min.to_string(), max.to_string()];
                    let out_of_range: Vec<u64> =
                        min.checked_sub(1).into_iter().chain([max + 1]).collect();
                    rejected = out_of_range
                        .iter()
                        .map(u64::to_string)
                        .chain(["".into(), format!("+{min}"), format!(" {min}")])
                        .collect();
                    for bad in out_of_range {
                        let e = check(name, &bad.to_string()).unwrap_err();
                        let range = format!("from {min} to {max}");
                        assert!(
                            e.valid.contains(&range),
                            "{name}={bad}: {e} (table: {range})"
                        );
                    }
                }
                ValueKind::Namespace { empty_is_unset } => {
                    accepted = vec!["ok-ns".into(), "a".repeat(63)];
                    rejected = vec!["Bad".into(), "a.b".into(), "a".repeat(64)];
                    let empty = check(name, "");
                    assert_eq!(empty.is_ok(), empty_is_unset, "{name}=\"\": {empty:?}");
                }
                ValueKind::ObjectName => {
                    accepted = vec!["ok.name-1".into(), "a".repeat(253)];
                    rejected = vec!["".into(), "Bad".into(), "a".repeat(254)];
                }
                ValueKind::NamespaceList => {
                    accepted = vec!["".into(), "a".into(), "a, b ,c".into()];
                    rejected = vec!["a,,b".into(), "a,".into(), "A".into()];
                }
                ValueKind::LabelKey => {
                    accepted = vec!["".into(), "x".into(), "example.com/No_Sync.v1".into()];
                    rejected = vec!["-x".into(), "x/".into(), "a b".into()];
                }
                ValueKind::OneOf(words) => {
                    accepted = words
                        .iter()
                        .flat_map(|w| [w.to_string(), w.to_uppercase()])
                        .collect();
                    rejected = vec!["".into(), "other".into()];
                }
                ValueKind::File => {
                    accepted = vec![
                        "".into(),
                        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into(),
                    ];
                    rejected = vec!["/nonexistent-on-purpose".into()];
                }
                ValueKind::Url => {
                    accepted = vec![
                        "".into(),
                        "http://127.0.0.1:8200".into(),
                        "https://vault.example.com".into(),
                        "https://[::1]:8200/".into(),
                    ];
                    rejected = vec![
                        "vault:8200".into(),
                        "ftp://x".into(),
                        "http://".into(),
                        "http://x:0".into(),
                        "http://x/v1".into(),
                    ];
                }
                ValueKind::VaultName { slashes } => {
                    accepted = vec!["secret".into(), "kv_2.x-y".into()];
                    rejected = vec![
                        "".into(),
                        "a b".into(),
                        "/x".into(),
                        "x/".into(),
                        "..".into(),
                    ];
                    assert_eq!(check(name, "team/kv").is_ok(), slashes, "{name}=team/kv");
                }
            }
            for value in &accepted {
                if let Err(e) = check(name, value) {
                    panic!("{name}={value:?} is valid by config::ENV_VARS, but: {e}");
                }
            }
            for value in &rejected {
                match check(name, value) {
                    Err(e) => assert_eq!(e.variable, name, "{name}={value:?}: {e}"),
                    Ok(_) => {
                        panic!("{name}={value:?} is invalid by config::ENV_VARS, but accepted")
                    }
                }
            }
        }
    }
}

/// The environment as envy sees it: strings only, `None` when unset. envy
/// lower-cases variable names, hence lower-case field names.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    namespace: Option<String>,
    pod_namespace: Option<String>,
    enable_secret_watcher: Option<String>,
    enable_push_rules: Option<String>,
    enable_configmaps: Option<String>,
    allow_adoption: Option<String>,
    secret_sync_debounce_seconds: Option<String>,
    secret_sync_max_wait_seconds: Option<String>,
    secret_sync_rate_limit: Option<String>,
    secret_sync_rate_burst: Option<String>,
    sync_interval: Option<String>,
    exclude_namespace_label: Option<String>,
    protected_namespaces: Option<String>,
    require_namespace_consent: Option<String>,
    metrics_port: Option<String>,
    ready_watch_failure_seconds: Option<String>,
    debug: Option<String>,
    log_format: Option<String>,
    kubeconfig: Option<String>,
    leader_election: Option<String>,
    lease_name: Option<String>,
    lease_namespace: Option<String>,
    lease_duration_seconds: Option<String>,
    lease_renew_deadline_seconds: Option<String>,
    lease_retry_period_seconds: Option<String>,
    vault_addr: Option<String>,
    vault_auth_method: Option<String>,
    vault_auth_mount: Option<String>,
    vault_role: Option<String>,
    vault_sa_token_path: Option<String>,
    vault_token_file: Option<String>,
    vault_cacert: Option<String>,
    vault_kv_mount: Option<String>,
    vault_rate_limit: Option<String>,
    vault_check_interval_seconds: Option<String>,
    cluster_name: Option<String>,
}

const NAMESPACE_RULE: &str = "must be a namespace name: 1 to 63 characters of lowercase letters, digits and '-', starting and ending with a letter or digit";
const BOOL_RULE: &str = "must be true or false";

impl Config {
    /// The kinds of source this instance replicates.
    pub fn kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| *k == Kind::Secret || self.enable_configmaps || self.cleanup_configmaps)
            .collect()
    }

    /// The kinds whose sources are read: those replicated, less a kind
    /// being cleaned up (its copies all go, as if every source were gone).
    pub fn source_kinds(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| *k == Kind::Secret || self.enable_configmaps)
            .collect()
    }

    /// Reads and validates the process environment.
    ///
    /// Uses `vars_os` rather than `std::env::vars()` because the latter panics on
    /// any non-UTF-8 variable, even one we do not care about. A non-UTF-8 value
    /// of one of *our* variables is reported as a `ConfigError`.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().and_then(known_variable) else {
                continue;
            };
            vars.push((name.to_owned(), utf8_value(name, value)?));
        }
        Self::from_vars(vars)
    }

    /// Same as [`Config::from_env`], from an explicit list of `(name, value)`
    /// pairs (later pairs win over earlier ones with the same name). Unknown
    /// names are ignored.
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(
        vars: I,
    ) -> Result<Config, ConfigError> {
        Self::from_vars_with_sa_file(vars, Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE))
    }

    /// [`Config::from_vars`] with the service-account namespace file injectable,
    /// so the fallback chain can be tested without a pod.
    fn from_vars_with_sa_file<I: IntoIterator<Item = (String, String)>>(
        vars: I,
        sa_namespace_file: &Path,
    ) -> Result<Config, ConfigError> {
        // Exact-name filter + de-duplication before envy (see module docs).
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(name, _)| known_variable(name).is_some())
            .collect();
        let raw: RawEnv = envy::from_iter(vars).map_err(|e| {
            // Unreachable with all-string fields, but never panic on input.
            ConfigError::new("environment", "", e.to_string().replace('\n', " "))
        })?;
        Self::validate(raw, sa_namespace_file)
    }

    fn validate(raw: RawEnv, sa_namespace_file: &Path) -> Result<Config, ConfigError> {
        let namespace = resolve_namespace(&raw, sa_namespace_file)?;

        let enable_secret_watcher = match &raw.enable_secret_watcher {
            None => true,
            Some(v) => parse_bool("ENABLE_SECRET_WATCHER", v)?,
        };
        let enable_push_rules = match &raw.enable_push_rules {
            None => true,
            Some(v) => parse_bool("ENABLE_PUSH_RULES", v)?,
        };
        let (enable_configmaps, cleanup_configmaps) = match &raw.enable_configmaps {
            None => (true, false),
            Some(v) if v.eq_ignore_ascii_case("cleanup") => (false, true),
            Some(v) => match parse_bool("ENABLE_CONFIGMAPS", v) {
                Ok(b) => (b, false),
                Err(_) => {
                    return Err(ConfigError::new(
                        "ENABLE_CONFIGMAPS",
                        v,
                        "must be true, false or cleanup",
                    ));
                }
            },
        };
        let allow_adoption = match &raw.allow_adoption {
            None => false,
            Some(v) => parse_bool("ALLOW_ADOPTION", v)?,
        };

        let debounce_secs = match &raw.secret_sync_debounce_seconds {
            None => 5,
            Some(v) => parse_int("SECRET_SYNC_DEBOUNCE_SECONDS", v, 1, 60, " (seconds)")?,
        };
        let max_wait_secs = match &raw.secret_sync_max_wait_seconds {
            // Default keeps the documented ratio; 3 x 60 = 180 stays within 1..=600.
            None => 3 * debounce_secs,
            Some(v) => {
                let n = parse_int("SECRET_SYNC_MAX_WAIT_SECONDS", v, 1, 600, " (seconds)")?;
                // A max wait shorter than the quiet window would make the
                // debounce meaningless; reject instead of silently clamping.
                if n < debounce_secs {
                    return Err(ConfigError::new(
                        "SECRET_SYNC_MAX_WAIT_SECONDS",
                        v,
                        format!(
                            "must be an integer from 1 to 600 (seconds) and not less than SECRET_SYNC_DEBOUNCE_SECONDS ({debounce_secs})"
                        ),
                    ));
                }
                n
            }
        };

        let rate_limit = match &raw.secret_sync_rate_limit {
            None => 10,
            Some(v) => parse_int("SECRET_SYNC_RATE_LIMIT", v, 1, 100, " (writes per second)")?,
        };
        let rate_burst = match &raw.secret_sync_rate_burst {
            None => 1,
            Some(v) => parse_int("SECRET_SYNC_RATE_BURST", v, 1, 100, " (writes)")?,
        };
        let sync_interval_min = match &raw.sync_interval {
            None => 15,
            Some(v) => parse_int("SYNC_INTERVAL", v, 1, 1440, " (minutes)")?,
        };

        let exclude_namespace_label = match raw.exclude_namespace_label.as_deref() {
            None | Some("") => None,
            Some(v) => {
                if let Err(reason) = names::label_key(v) {
                    return Err(ConfigError::new(
                        "EXCLUDE_NAMESPACE_LABEL",
                        v,
                        format!(
                            "must be empty or a label key: an optional DNS subdomain prefix (at most 253 characters of lowercase letters, digits, '-' and '.') and '/', then a name of 1 to 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit ({reason})"
                        ),
                    ));
                }
                Some(v.to_owned())
            }
        };

        let protected_namespaces = parse_namespace_list(
            "PROTECTED_NAMESPACES",
            raw.protected_namespaces
                .as_deref()
                .unwrap_or(DEFAULT_PROTECTED_NAMESPACES),
        )?;
        let require_namespace_consent = match &raw.require_namespace_consent {
            None => false,
            Some(v) => parse_bool("REQUIRE_NAMESPACE_CONSENT", v)?,
        };

        let metrics_port = match &raw.metrics_port {
            None => 9090,
            Some(v) => parse_int("METRICS_PORT", v, 1, 65535, "")?,
        };
        let ready_watch_failure_secs = match &raw.ready_watch_failure_seconds {
            None => 10,
            Some(v) => parse_int("READY_WATCH_FAILURE_SECONDS", v, 1, 600, " (seconds)")?,
        };

        let debug = match &raw.debug {
            None => false,
            Some(v) => parse_bool("DEBUG", v)?,
        };

        let log_format = match &raw.log_format {
            None => LogFormat::Text,
            Some(v) if v.eq_ignore_ascii_case("text") => LogFormat::Text,
            Some(v) if v.eq_ignore_ascii_case("json") => LogFormat::Json,
            Some(v) => return Err(ConfigError::new("LOG_FORMAT", v, "must be text or json")),
        };

        let kubeconfig = match raw.kubeconfig.as_deref() {
            None | Some("") => None,
            Some(v) => Some(check_kubeconfig(v)?),
        };
        let lease = leader_election(&raw, &namespace)?;
        let leader_election = match &raw.leader_election {
            None => false,
            Some(v) => parse_bool("LEADER_ELECTION", v)?,
        }
        .then_some(lease);
        let vault = vault(&raw)?;
        let cluster_name = match &raw.cluster_name {
            None => None,
            Some(v) => {
                names::dns1123_subdomain(v).map_err(|reason| {
                    ConfigError::new(
                        "CLUSTER_NAME",
                        v,
                        format!("must be a name: 1 to 253 characters of lowercase letters, digits, '-' and '.' ({reason})"),
                    )
                })?;
                Some(v.clone())
            }
        };

        Ok(Config {
            namespace,
            enable_secret_watcher,
            enable_push_rules,
            enable_configmaps,
            cleanup_configmaps,
            allow_adoption,
            debounce: Duration::from_secs(debounce_secs),
            max_wait: Duration::from_secs(max_wait_secs),
            rate_limit: nonzero(rate_limit),
            rate_burst: nonzero(rate_burst),
            sync_interval: Duration::from_secs(sync_interval_min * 60),
            exclude_namespace_label,
            protected_namespaces,
            require_namespace_consent,
            metrics_port: u16::try_from(metrics_port).expect("range-checked to 1..=65535"),
            ready_watch_failure: Duration::from_secs(ready_watch_failure_secs),
            debug,
            log_format,
            kubeconfig,
            leader_election,
            vault,
            cluster_name,
        })
    }
}

/// The `VAULT_*` settings: each checked whether or not `VAULT_ADDR` is set
/// (a typo must not wait for the day Vault is switched on), `None` unless it is.
fn vault(raw: &RawEnv) -> Result<Option<VaultConfig>, ConfigError> {
    let addr = match raw.vault_addr.as_deref() {
        None | Some("") => None,
        Some(v) => Some(check_url("VAULT_ADDR", v)?),
    };
    let token_auth = match &raw.vault_auth_method {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("kubernetes") => false,
        Some(v) if v.eq_ignore_ascii_case("token") => true,
        Some(v) => {
            return Err(ConfigError::new(
                "VAULT_AUTH_METHOD",
                v,
                "must be kubernetes or token",
            ));
        }
    };
    let name = |variable: &'static str, value: &Option<String>, default: &str, slashes| {
        let v = value.as_deref().unwrap_or(default);
        check_vault_name(variable, v, slashes).map(|()| v.to_owned())
    };
    let auth_mount = name(
        "VAULT_AUTH_MOUNT",
        &raw.vault_auth_mount,
        "kubernetes",
        true,
    )?;
    let role = name("VAULT_ROLE", &raw.vault_role, "push-to-k8s", false)?;
    let kv_mount = name("VAULT_KV_MOUNT", &raw.vault_kv_mount, "secret", true)?;
    let file = |variable: &'static str, value: &Option<String>| match value.as_deref() {
        None | Some("") => Ok(None),
        Some(v) => check_file(variable, v).map(Some),
    };
    let sa_token = file("VAULT_SA_TOKEN_PATH", &raw.vault_sa_token_path)?;
    let token_file = file("VAULT_TOKEN_FILE", &raw.vault_token_file)?;
    let ca_cert = file("VAULT_CACERT", &raw.vault_cacert)?;
    let rate_limit = match &raw.vault_rate_limit {
        None => 10,
        Some(v) => parse_int("VAULT_RATE_LIMIT", v, 1, 100, " (requests per second)")?,
    };
    let check_secs = match &raw.vault_check_interval_seconds {
        None => 300,
        Some(v) => parse_int("VAULT_CHECK_INTERVAL_SECONDS", v, 5, 86400, " (seconds)")?,
    };
    let Some(addr) = addr else {
        return Ok(None);
    };
    let auth = if token_auth {
        let Some(path) = token_file else {
            return Err(ConfigError::new(
                "VAULT_TOKEN_FILE",
                "",
                "must be the path of an existing file holding the Vault token when VAULT_AUTH_METHOD=token",
            ));
        };
        VaultAuth::TokenFile(path)
    } else {
        let jwt_path = match sa_token {
            Some(path) => path,
            None => check_file("VAULT_SA_TOKEN_PATH", SERVICE_ACCOUNT_TOKEN_FILE).map_err(|e| {
                ConfigError::new(
                    "VAULT_SA_TOKEN_PATH",
                    SERVICE_ACCOUNT_TOKEN_FILE,
                    format!("{} (Kubernetes auth to Vault needs the ServiceAccount token; outside a pod set VAULT_SA_TOKEN_PATH, or VAULT_AUTH_METHOD=token)", e.valid),
                )
            })?,
        };
        VaultAuth::Kubernetes {
            mount: auth_mount,
            role,
            jwt_path,
        }
    };
    Ok(Some(VaultConfig {
        addr,
        auth,
        ca_cert,
        kv_mount,
        rate_limit: nonzero(rate_limit),
        check_interval: Duration::from_secs(check_secs),
    }))
}

/// `http://host[:port]` or `https://host[:port]` (a trailing `/` is
/// dropped); host a DNS name, an IPv4 address or a bracketed IPv6 address.
fn check_url(variable: &'static str, value: &str) -> Result<String, ConfigError> {
    const RULE: &str = "must be empty or a server URL: http:// or https://, a host name or IP address, an optional :port (1 to 65535), and nothing after";
    let bad = || ConfigError::new(variable, value, RULE);
    let trimmed = value.strip_suffix('/').unwrap_or(value);
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (inside, after) = v6.split_once(']').ok_or_else(bad)?;
        inside.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (inside, after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        || host.parse::<std::net::Ipv6Addr>().is_ok();
    if !host_ok {
        return Err(bad());
    }
    if let Some(p) = port
        && (p.is_empty()
            || !p.bytes().all(|b| b.is_ascii_digit())
            || !matches!(p.parse::<u32>(), Ok(1..=65535)))
    {
        return Err(bad());
    }
    Ok(trimmed.to_owned())
}

/// A Vault mount path or role name (see [`ValueKind::VaultName`]).
fn check_vault_name(variable: &'static str, value: &str, slashes: bool) -> Result<(), ConfigError> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    let ok = if slashes {
        value.split('/').all(segment_ok)
    } else {
        segment_ok(value)
    };
    if ok {
        return Ok(());
    }
    let rule = if slashes {
        "must be a Vault mount path: '/'-separated segments of letters, digits, '.', '_' and '-' (no empty, '.' or '..' segment, no leading or trailing '/')"
    } else {
        "must be a Vault role name: 1 to 128 letters, digits, '.', '_' and '-'"
    };
    Err(ConfigError::new(variable, value, rule))
}

/// The path of an existing regular file.
fn check_file(variable: &'static str, value: &str) -> Result<PathBuf, ConfigError> {
    existing_file(
        variable,
        value,
        "must be empty or the path of an existing file",
    )
}

/// `value` as the path of an existing regular file; else an error saying
/// `rule` and why not.
fn existing_file(variable: &'static str, value: &str, rule: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(value);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(ConfigError::new(
            variable,
            value,
            format!("{rule}; it is not a regular file"),
        )),
        Err(e) => Err(ConfigError::new(
            variable,
            value,
            format!("{rule}; {}", e.to_string().replace('\n', " ")),
        )),
    }
}

/// The `LEASE_*` settings: the renew deadline below the duration and the
/// retry period below the renew deadline, so a holder that cannot renew stops
/// writing before a standby can take over.
fn leader_election(raw: &RawEnv, namespace: &str) -> Result<LeaderElection, ConfigError> {
    let lease_name = match &raw.lease_name {
        None => "push-to-k8s".to_string(),
        Some(v) => {
            names::dns1123_subdomain(v).map_err(|reason| {
                ConfigError::new(
                    "LEASE_NAME",
                    v,
                    format!("must be an object name: 1 to 253 characters of lowercase letters, digits, '-' and '.' ({reason})"),
                )
            })?;
            v.clone()
        }
    };
    let lease_namespace = match &raw.lease_namespace {
        Some(v) => {
            names::dns1123_label(v).map_err(|reason| {
                ConfigError::new("LEASE_NAMESPACE", v, format!("{NAMESPACE_RULE} ({reason})"))
            })?;
            v.clone()
        }
        None => raw
            .pod_namespace
            .clone()
            .filter(|p| names::dns1123_label(p).is_ok())
            .unwrap_or_else(|| namespace.to_string()),
    };
    let duration = match &raw.lease_duration_seconds {
        None => 15,
        Some(v) => parse_int("LEASE_DURATION_SECONDS", v, 3, 300, " (seconds)")?,
    };
    let renew = match &raw.lease_renew_deadline_seconds {
        None => 10.min(duration - 1),
        Some(v) => parse_int(
            "LEASE_RENEW_DEADLINE_SECONDS",
            v,
            2,
            duration - 1,
            " (seconds, less than LEASE_DURATION_SECONDS)",
        )?,
    };
    let retry = match &raw.lease_retry_period_seconds {
        // renew >= 2, so 1 ..= renew - 1 is never empty.
        None => 2.min(renew - 1),
        Some(v) => parse_int(
            "LEASE_RETRY_PERIOD_SECONDS",
            v,
            1,
            (renew - 1).min(60),
            " (seconds, less than LEASE_RENEW_DEADLINE_SECONDS)",
        )?,
    };
    Ok(LeaderElection {
        lease_name,
        lease_namespace,
        duration: Duration::from_secs(duration),
        renew_deadline: Duration::from_secs(renew),
        retry_period: Duration::from_secs(retry),
    })
}

/// Returns the canonical spelling if `name` is one of our variables.
fn known_variable(name: &str) -> Option<&'static str> {
    VARIABLES.iter().copied().find(|v| *v == name)
}

fn utf8_value(name: &'static str, value: OsString) -> Result<String, ConfigError> {
    value
        .into_string()
        .map_err(|raw| ConfigError::new(name, &raw.to_string_lossy(), "must be valid UTF-8"))
}

fn nonzero(n: u64) -> NonZeroU32 {
    u32::try_from(n)
        .ok()
        .and_then(NonZeroU32::new)
        .expect("range-checked to 1..=100")
}

/// `NAMESPACE`, else `POD_NAMESPACE`, else the service-account file, else the
/// built-in default. Whatever is chosen must be a DNS-1123 label.
fn resolve_namespace(raw: &RawEnv, sa_namespace_file: &Path) -> Result<String, ConfigError> {
    let (variable, value): (&'static str, String) = if let Some(v) = &raw.namespace {
        ("NAMESPACE", v.clone())
    } else if let Some(v) = raw.pod_namespace.as_ref().filter(|v| !v.is_empty()) {
        ("POD_NAMESPACE", v.clone())
    } else {
        match std::fs::read_to_string(sa_namespace_file) {
            Ok(content) if !content.trim().is_empty() => {
                (SERVICE_ACCOUNT_NAMESPACE_FILE, content.trim().to_owned())
            }
            _ => return Ok(DEFAULT_NAMESPACE.to_owned()),
        }
    };
    match names::dns1123_label(&value) {
        Ok(()) => Ok(value),
        Err(reason) => Err(ConfigError::new(
            variable,
            &value,
            format!("{NAMESPACE_RULE} ({reason})"),
        )),
    }
}

fn parse_bool(variable: &'static str, value: &str) -> Result<bool, ConfigError> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ConfigError::new(variable, value, BOOL_RULE))
    }
}

/// Strict decimal integer in `min..=max`: ASCII digits only, so whitespace,
/// signs, decimals, hex and empty strings are all rejected; overflow is just
/// "out of range".
fn parse_int(
    variable: &'static str,
    value: &str,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<u64, ConfigError> {
    let err = || {
        ConfigError::new(
            variable,
            value,
            format!("must be an integer from {min} to {max}{unit}"),
        )
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(err()),
    }
}

/// Comma-separated namespace names; empty string means "none".
fn parse_namespace_list(variable: &'static str, value: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    if value.is_empty() {
        return Ok(out);
    }
    for item in value.split(',') {
        let name = item.trim();
        if let Err(reason) = names::dns1123_label(name) {
            return Err(ConfigError::new(
                variable,
                value,
                format!(
                    "item {name:?} is not a namespace name ({reason}); must be empty or a comma-separated list of namespace names (1 to 63 characters of lowercase letters, digits and '-', starting and ending with a letter or digit)"
                ),
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

fn check_kubeconfig(value: &str) -> Result<PathBuf, ConfigError> {
    existing_file(
        "KUBECONFIG",
        value,
        "must be the path of an existing kubeconfig file (one path, ':'-separated lists are not supported)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_SA_FILE: &str = "/nonexistent-on-purpose/serviceaccount/namespace";

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars_with_sa_file(
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            Path::new(NO_SA_FILE),
        )
    }

    fn ok(vars: &[(&str, &str)]) -> Config {
        load(vars).unwrap_or_else(|e| panic!("{vars:?} should be valid, got: {e}"))
    }

    fn err(vars: &[(&str, &str)]) -> ConfigError {
        match load(vars) {
            Ok(c) => panic!("{vars:?} should be invalid, got {c:?}"),
            Err(e) => e,
        }
    }

    /// Unique scratch directory under the system temp dir (no tempfile dep).
    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "push-to-k8s-config-test-{}-{tag}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn vault_is_off_without_an_address_and_checked_with_one() {
        assert_eq!(ok(&[("VAULT_ROLE", "r")]).vault, None);
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let c = ok(&[
            ("VAULT_ADDR", "http://127.0.0.1:8200/"),
            ("VAULT_SA_TOKEN_PATH", file),
            ("VAULT_ROLE", "sync"),
            ("VAULT_KV_MOUNT", "team/kv"),
        ]);
        assert_eq!(
            c.vault,
            Some(VaultConfig {
                addr: "http://127.0.0.1:8200".into(),
                auth: VaultAuth::Kubernetes {
                    mount: "kubernetes".into(),
                    role: "sync".into(),
                    jwt_path: file.into(),
                },
                ca_cert: None,
                kv_mount: "team/kv".into(),
                rate_limit: NonZeroU32::new(10).unwrap(),
                check_interval: Duration::from_secs(300),
            })
        );
        // Token auth needs its file; Kubernetes auth needs the token file,
        // which exists only in a pod.
        let e = err(&[
            ("VAULT_ADDR", "http://v:8200"),
            ("VAULT_AUTH_METHOD", "token"),
        ]);
        assert_eq!(e.variable, "VAULT_TOKEN_FILE", "{e}");
        let e = err(&[("VAULT_ADDR", "http://v:8200")]);
        assert_eq!(e.variable, "VAULT_SA_TOKEN_PATH", "{e}");
        assert!(e.to_string().contains("VAULT_AUTH_METHOD=token"), "{e}");
        let c = ok(&[
            ("VAULT_ADDR", "https://v"),
            ("VAULT_AUTH_METHOD", "TOKEN"),
            ("VAULT_TOKEN_FILE", file),
        ]);
        assert_eq!(c.vault.unwrap().auth, VaultAuth::TokenFile(file.into()));
    }

    #[test]
    fn defaults_with_empty_environment() {
        let c = ok(&[]);
        assert_eq!(
            c,
            Config {
                namespace: "push-to-k8s".into(),
                enable_secret_watcher: true,
                enable_push_rules: true,
                enable_configmaps: true,
                cleanup_configmaps: false,
                allow_adoption: false,
                debounce: Duration::from_secs(5),
                max_wait: Duration::from_secs(15),
                rate_limit: NonZeroU32::new(10).unwrap(),
                rate_burst: NonZeroU32::new(1).unwrap(),
                sync_interval: Duration::from_secs(15 * 60),
                exclude_namespace_label: None,
                protected_namespaces: vec![
                    "kube-system".into(),
                    "kube-public".into(),
                    "kube-node-lease".into()
                ],
                require_namespace_consent: false,
                metrics_port: 9090,
                ready_watch_failure: Duration::from_secs(10),
                debug: false,
                log_format: LogFormat::Text,
                kubeconfig: None,
                leader_election: None,
                vault: None,
                cluster_name: None,
            }
        );
    }

    #[test]
    fn unknown_and_wrong_case_variables_are_ignored() {
        let c = ok(&[
            ("namespace", "BAD NAME"),
            ("Metrics_Port", "0"),
            ("HOME", "/root"),
            ("SOMETHING_ELSE", ""),
        ]);
        assert_eq!(c.namespace, "push-to-k8s");
        assert_eq!(c.metrics_port, 9090);
    }

    #[test]
    fn later_duplicate_wins() {
        let c = ok(&[("METRICS_PORT", "0"), ("METRICS_PORT", "8080")]);
        assert_eq!(c.metrics_port, 8080);
    }

    #[test]
    fn valid_values_and_edges() {
        // (vars, check) — min, max and ordinary values of every variable.
        type Check = fn(&Config) -> bool;
        let ns63 = "a".repeat(63);
        let key63 = "A".repeat(63);
        let key_prefix253 = format!("{}/n", "a".repeat(253));
        let key_long_prefix_label = format!("{}.example.com/n", "a".repeat(64));
        let cases: &[(&[(&str, &str)], Check)] = &[
            (&[("NAMESPACE", "a")], |c| c.namespace == "a"),
            (&[("NAMESPACE", "0")], |c| c.namespace == "0"),
            (&[("NAMESPACE", "team-1")], |c| c.namespace == "team-1"),
            (&[("NAMESPACE", &ns63)], |c| c.namespace.len() == 63),
            (&[("NAMESPACE", "src"), ("POD_NAMESPACE", "pod")], |c| {
                c.namespace == "src"
            }),
            (&[("POD_NAMESPACE", "pod-ns")], |c| c.namespace == "pod-ns"),
            (&[("POD_NAMESPACE", "")], |c| c.namespace == "push-to-k8s"),
            (&[("ENABLE_CONFIGMAPS", "false")], |c| {
                !c.enable_configmaps && c.kinds() == [Kind::Secret]
            }),
            (&[("ALLOW_ADOPTION", "true")], |c| c.allow_adoption),
            (&[("ALLOW_ADOPTION", "TRUE")], |c| c.allow_adoption),
            (&[("ALLOW_ADOPTION", "false")], |c| !c.allow_adoption),
            (&[("ENABLE_CONFIGMAPS", "Cleanup")], |c| {
                c.cleanup_configmaps
                    && c.kinds() == [Kind::Secret, Kind::ConfigMap]
                    && c.source_kinds() == [Kind::Secret]
            }),
            (&[("ENABLE_CONFIGMAPS", "true")], |c| {
                c.kinds() == [Kind::Secret, Kind::ConfigMap]
            }),
            (&[("ENABLE_SECRET_WATCHER", "true")], |c| {
                c.enable_secret_watcher
            }),
            (&[("ENABLE_SECRET_WATCHER", "false")], |c| {
                !c.enable_secret_watcher
            }),
            (&[("ENABLE_SECRET_WATCHER", "FALSE")], |c| {
                !c.enable_secret_watcher
            }),
            (&[("ENABLE_SECRET_WATCHER", "True")], |c| {
                c.enable_secret_watcher
            }),
            (&[("SECRET_SYNC_DEBOUNCE_SECONDS", "1")], |c| {
                c.debounce == Duration::from_secs(1) && c.max_wait == Duration::from_secs(3)
            }),
            (&[("SECRET_SYNC_DEBOUNCE_SECONDS", "60")], |c| {
                c.debounce == Duration::from_secs(60) && c.max_wait == Duration::from_secs(180)
            }),
            (&[("SECRET_SYNC_DEBOUNCE_SECONDS", "007")], |c| {
                c.debounce == Duration::from_secs(7)
            }),
            (&[("SECRET_SYNC_MAX_WAIT_SECONDS", "5")], |c| {
                c.max_wait == Duration::from_secs(5)
            }),
            (&[("SECRET_SYNC_MAX_WAIT_SECONDS", "600")], |c| {
                c.max_wait == Duration::from_secs(600)
            }),
            (
                &[
                    ("SECRET_SYNC_DEBOUNCE_SECONDS", "1"),
                    ("SECRET_SYNC_MAX_WAIT_SECONDS", "1"),
                ],
                |c| c.max_wait == Duration::from_secs(1),
            ),
            (
                &[
                    ("SECRET_SYNC_DEBOUNCE_SECONDS", "60"),
                    ("SECRET_SYNC_MAX_WAIT_SECONDS", "60"),
                ],
                |c| c.max_wait == c.debounce,
            ),
            (&[("SECRET_SYNC_RATE_LIMIT", "1")], |c| {
                c.rate_limit.get() == 1
            }),
            (&[("SECRET_SYNC_RATE_LIMIT", "100")], |c| {
                c.rate_limit.get() == 100
            }),
            (&[("SECRET_SYNC_RATE_BURST", "1")], |c| {
                c.rate_burst.get() == 1
            }),
            (&[("SECRET_SYNC_RATE_BURST", "100")], |c| {
                c.rate_burst.get() == 100
            }),
            (&[("SYNC_INTERVAL", "1")], |c| {
                c.sync_interval == Duration::from_secs(60)
            }),
            (&[("SYNC_INTERVAL", "1440")], |c| {
                c.sync_interval == Duration::from_secs(86_400)
            }),
            (&[("EXCLUDE_NAMESPACE_LABEL", "")], |c| {
                c.exclude_namespace_label.is_none()
            }),
            (&[("EXCLUDE_NAMESPACE_LABEL", "x")], |c| {
                c.exclude_namespace_label.as_deref() == Some("x")
            }),
            (&[("EXCLUDE_NAMESPACE_LABEL", "push-to-k8s/exclude")], |c| {
                c.exclude_namespace_label.as_deref() == Some("push-to-k8s/exclude")
            }),
            (
                &[("EXCLUDE_NAMESPACE_LABEL", "example.com/No_Sync.v1")],
                |c| c.exclude_namespace_label.as_deref() == Some("example.com/No_Sync.v1"),
            ),
            (&[("EXCLUDE_NAMESPACE_LABEL", &key63)], |c| {
                c.exclude_namespace_label.as_ref().map(String::len) == Some(63)
            }),
            (&[("EXCLUDE_NAMESPACE_LABEL", &key_prefix253)], |c| {
                c.exclude_namespace_label.as_ref().map(String::len) == Some(255)
            }),
            // Kubernetes limits the prefix as a whole, not each of its labels.
            (
                &[("EXCLUDE_NAMESPACE_LABEL", &key_long_prefix_label)],
                |c| c.exclude_namespace_label.as_ref().map(String::len) == Some(78),
            ),
            (&[("PROTECTED_NAMESPACES", "")], |c| {
                c.protected_namespaces.is_empty()
            }),
            (&[("PROTECTED_NAMESPACES", "kube-system")], |c| {
                c.protected_namespaces == ["kube-system"]
            }),
            (&[("PROTECTED_NAMESPACES", "a, b ,a")], |c| {
                c.protected_namespaces == ["a", "b"]
            }),
            (&[("REQUIRE_NAMESPACE_CONSENT", "true")], |c| {
                c.require_namespace_consent
            }),
            (&[("REQUIRE_NAMESPACE_CONSENT", "False")], |c| {
                !c.require_namespace_consent
            }),
            (&[("METRICS_PORT", "1")], |c| c.metrics_port == 1),
            (&[("METRICS_PORT", "65535")], |c| c.metrics_port == 65535),
            (&[("READY_WATCH_FAILURE_SECONDS", "1")], |c| {
                c.ready_watch_failure == Duration::from_secs(1)
            }),
            (&[("READY_WATCH_FAILURE_SECONDS", "600")], |c| {
                c.ready_watch_failure == Duration::from_secs(600)
            }),
            (&[("DEBUG", "true")], |c| c.debug),
            (&[("DEBUG", "TRUE")], |c| c.debug),
            (&[("DEBUG", "false")], |c| !c.debug),
            (&[("LOG_FORMAT", "text")], |c| {
                c.log_format == LogFormat::Text
            }),
            (&[("LOG_FORMAT", "json")], |c| {
                c.log_format == LogFormat::Json
            }),
            (&[("LOG_FORMAT", "JSON")], |c| {
                c.log_format == LogFormat::Json
            }),
            (&[("KUBECONFIG", "")], |c| c.kubeconfig.is_none()),
        ];
        for (vars, check) in cases {
            let c = ok(vars);
            assert!(check(&c), "{vars:?} gave unexpected {c:?}");
        }
    }

    #[test]
    fn invalid_values_name_variable_value_and_rule() {
        let long_label = "a".repeat(64);
        let long_prefix = format!("{}/n", "a".repeat(254));
        let long_key_name = "a".repeat(64);
        // (variable, bad value, expected fragment of `valid`)
        let cases: &[(&str, &str, &str)] = &[
            // NAMESPACE: empty, upper case, bad edges, bad chars, too long, whitespace.
            ("NAMESPACE", "", "namespace name"),
            ("NAMESPACE", "Foo", "namespace name"),
            ("NAMESPACE", "-foo", "namespace name"),
            ("NAMESPACE", "foo-", "namespace name"),
            ("NAMESPACE", "foo_bar", "namespace name"),
            ("NAMESPACE", "foo.bar", "namespace name"),
            ("NAMESPACE", " foo", "namespace name"),
            ("NAMESPACE", "foo\n", "namespace name"),
            ("NAMESPACE", &long_label, "1 to 63"),
            // ... and the reason names the rule that was broken.
            ("NAMESPACE", "foo.bar", "(must not contain dots)"),
            (
                "NAMESPACE",
                &long_label,
                "(must be no more than 63 characters)",
            ),
            ("POD_NAMESPACE", "Bad", "namespace name"),
            ("POD_NAMESPACE", &long_label, "namespace name"),
            // Booleans.
            ("ENABLE_SECRET_WATCHER", "", "true or false"),
            ("ENABLE_CONFIGMAPS", "no", "true, false or cleanup"),
            ("ALLOW_ADOPTION", "", "true or false"),
            ("ALLOW_ADOPTION", "yes", "true or false"),
            ("ALLOW_ADOPTION", "1", "true or false"),
            ("ALLOW_ADOPTION", " true", "true or false"),
            ("ENABLE_SECRET_WATCHER", "yes", "true or false"),
            ("ENABLE_SECRET_WATCHER", "1", "true or false"),
            ("ENABLE_SECRET_WATCHER", " true", "true or false"),
            ("ENABLE_SECRET_WATCHER", "true ", "true or false"),
            ("DEBUG", "", "true or false"),
            ("DEBUG", "on", "true or false"),
            ("DEBUG", "0", "true or false"),
            ("DEBUG", "false\n", "true or false"),
            // Numbers: below min, above max, empty, signs, decimals, words,
            // whitespace, hex, overflow of u64.
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "0", "from 1 to 60"),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "61", "from 1 to 60"),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "", "from 1 to 60"),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "+5", "from 1 to 60"),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "-5", "from 1 to 60"),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "5.0", "from 1 to 60"),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "5s", "from 1 to 60"),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", " 5", "from 1 to 60"),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "5 ", "from 1 to 60"),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "abc", "from 1 to 60"),
            (
                "SECRET_SYNC_DEBOUNCE_SECONDS",
                "99999999999999999999999",
                "from 1 to 60",
            ),
            ("SECRET_SYNC_MAX_WAIT_SECONDS", "0", "from 1 to 600"),
            ("SECRET_SYNC_MAX_WAIT_SECONDS", "601", "from 1 to 600"),
            ("SECRET_SYNC_MAX_WAIT_SECONDS", "", "from 1 to 600"),
            (
                "SECRET_SYNC_MAX_WAIT_SECONDS",
                "4",
                "not less than SECRET_SYNC_DEBOUNCE_SECONDS (5)",
            ),
            ("SECRET_SYNC_MAX_WAIT_SECONDS", "1e2", "from 1 to 600"),
            (
                "SECRET_SYNC_MAX_WAIT_SECONDS",
                "18446744073709551616",
                "from 1 to 600",
            ),
            ("SECRET_SYNC_RATE_LIMIT", "0", "from 1 to 100"),
            ("SECRET_SYNC_RATE_LIMIT", "101", "from 1 to 100"),
            ("SECRET_SYNC_RATE_LIMIT", "", "from 1 to 100"),
            ("SECRET_SYNC_RATE_LIMIT", "ten", "from 1 to 100"),
            ("SECRET_SYNC_RATE_LIMIT", "0x10", "from 1 to 100"),
            ("SECRET_SYNC_RATE_LIMIT", "4294967297", "from 1 to 100"),
            ("SECRET_SYNC_RATE_BURST", "0", "from 1 to 100"),
            ("SECRET_SYNC_RATE_BURST", "101", "from 1 to 100"),
            ("SECRET_SYNC_RATE_BURST", "", "from 1 to 100"),
            ("SECRET_SYNC_RATE_BURST", "1.5", "from 1 to 100"),
            ("SYNC_INTERVAL", "0", "from 1 to 1440"),
            ("SYNC_INTERVAL", "1441", "from 1 to 1440"),
            ("SYNC_INTERVAL", "", "from 1 to 1440"),
            ("SYNC_INTERVAL", "15m", "from 1 to 1440"),
            ("SYNC_INTERVAL", "\t15", "from 1 to 1440"),
            ("METRICS_PORT", "0", "from 1 to 65535"),
            ("METRICS_PORT", "65536", "from 1 to 65535"),
            ("METRICS_PORT", "", "from 1 to 65535"),
            ("METRICS_PORT", "-1", "from 1 to 65535"),
            ("METRICS_PORT", "http", "from 1 to 65535"),
            ("METRICS_PORT", "９０９０", "from 1 to 65535"), // full-width digits
            ("READY_WATCH_FAILURE_SECONDS", "0", "1 to 600 (seconds)"),
            ("READY_WATCH_FAILURE_SECONDS", "601", "1 to 600 (seconds)"),
            ("READY_WATCH_FAILURE_SECONDS", "", "1 to 600 (seconds)"),
            ("READY_WATCH_FAILURE_SECONDS", "10s", "1 to 600 (seconds)"),
            ("READY_WATCH_FAILURE_SECONDS", " 10", "1 to 600 (seconds)"),
            // Label keys.
            ("EXCLUDE_NAMESPACE_LABEL", "-x", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", "x-", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", "a b", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", " x", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", "/x", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", "x/", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", "a/b/c", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", "Example.com/x", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", "example..com/x", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", "x=y", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", "é", "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", &long_key_name, "label key"),
            ("EXCLUDE_NAMESPACE_LABEL", &long_prefix, "label key"),
            (
                "EXCLUDE_NAMESPACE_LABEL",
                &long_prefix,
                "(prefix part must be no more than 253 characters)",
            ),
            (
                "EXCLUDE_NAMESPACE_LABEL",
                "x/",
                "(name part must be non-empty)",
            ),
            // Namespace lists.
            ("PROTECTED_NAMESPACES", ",", "item \"\""),
            ("PROTECTED_NAMESPACES", "a,,b", "item \"\""),
            ("PROTECTED_NAMESPACES", "a,", "item \"\""),
            ("PROTECTED_NAMESPACES", " ", "item \"\""),
            (
                "PROTECTED_NAMESPACES",
                "kube-system,Kube-Public",
                "item \"Kube-Public\"",
            ),
            ("PROTECTED_NAMESPACES", "a;b", "item \"a;b\""),
            (
                "PROTECTED_NAMESPACES",
                "a,b.c",
                "item \"b.c\" is not a namespace name (must not contain dots)",
            ),
            ("PROTECTED_NAMESPACES", &long_label, "namespace names"),
            ("REQUIRE_NAMESPACE_CONSENT", "", "true or false"),
            ("REQUIRE_NAMESPACE_CONSENT", "yes", "true or false"),
            ("REQUIRE_NAMESPACE_CONSENT", "1", "true or false"),
            ("REQUIRE_NAMESPACE_CONSENT", "true ", "true or false"),
            // Enumerations.
            ("LOG_FORMAT", "", "text or json"),
            ("LOG_FORMAT", "logfmt", "text or json"),
            ("LOG_FORMAT", " json", "text or json"),
            // Paths.
            (
                "KUBECONFIG",
                "/nonexistent-on-purpose",
                "existing kubeconfig file",
            ),
            ("KUBECONFIG", "/", "not a regular file"),
            (
                "KUBECONFIG",
                "/etc/hostname-nope:/also-nope",
                "':'-separated",
            ),
        ];
        for (variable, value, fragment) in cases {
            let e = err(&[(variable, value)]);
            assert_eq!(e.variable, *variable, "for {variable}={value:?}: {e}");
            assert_eq!(e.value, *value, "for {variable}={value:?}: {e}");
            assert!(e.valid.contains(fragment), "for {variable}={value:?}: {e}");
            let shown = e.to_string();
            assert_eq!(shown.lines().count(), 1, "not one line: {shown:?}");
            assert!(shown.contains(variable), "{shown}");
            assert!(shown.contains(&format!("{value:?}")), "{shown}");
            assert!(!shown.ends_with('\n'));
        }
    }

    #[test]
    fn max_wait_is_checked_against_explicit_debounce() {
        let e = err(&[
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "30"),
            ("SECRET_SYNC_MAX_WAIT_SECONDS", "29"),
        ]);
        assert_eq!(e.variable, "SECRET_SYNC_MAX_WAIT_SECONDS");
        assert!(e.valid.contains("(30)"), "{e}");
    }

    #[test]
    fn display_format_is_exact() {
        let e = err(&[("SECRET_SYNC_RATE_LIMIT", "0")]);
        assert_eq!(
            e.to_string(),
            "invalid SECRET_SYNC_RATE_LIMIT=\"0\": must be an integer from 1 to 100 (writes per second)"
        );
    }

    #[test]
    fn first_invalid_variable_in_table_order_is_reported() {
        let e = err(&[("METRICS_PORT", "0"), ("SYNC_INTERVAL", "0")]);
        assert_eq!(e.variable, "SYNC_INTERVAL");
    }

    #[test]
    fn namespace_from_service_account_file() {
        let dir = scratch_dir("sa");
        let file = dir.join("namespace");

        std::fs::write(&file, "from-file\n").unwrap();
        let load_with = |vars: &[(&str, &str)]| {
            Config::from_vars_with_sa_file(
                vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
                &file,
            )
        };
        assert_eq!(load_with(&[]).unwrap().namespace, "from-file");
        // POD_NAMESPACE and NAMESPACE take precedence over the file.
        assert_eq!(
            load_with(&[("POD_NAMESPACE", "pod")]).unwrap().namespace,
            "pod"
        );
        assert_eq!(
            load_with(&[("NAMESPACE", "explicit")]).unwrap().namespace,
            "explicit"
        );

        // Whitespace-only file: fall back to the default.
        std::fs::write(&file, "  \n").unwrap();
        assert_eq!(load_with(&[]).unwrap().namespace, "push-to-k8s");

        // Invalid content is an error that names the file.
        std::fs::write(&file, "Not_Valid\n").unwrap();
        let e = load_with(&[]).unwrap_err();
        assert_eq!(e.variable, SERVICE_ACCOUNT_NAMESPACE_FILE);
        assert_eq!(e.value, "Not_Valid");

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kubeconfig_existing_file_is_accepted() {
        let dir = scratch_dir("kubeconfig");
        let file = dir.join("config");
        std::fs::write(&file, "apiVersion: v1\nkind: Config\n").unwrap();
        let c = ok(&[("KUBECONFIG", file.to_str().unwrap())]);
        assert_eq!(c.kubeconfig.as_deref(), Some(file.as_path()));
        // A directory is not a kubeconfig.
        let e = err(&[("KUBECONFIG", dir.to_str().unwrap())]);
        assert_eq!(e.variable, "KUBECONFIG");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn display_of_control_characters_stays_on_one_line() {
        for value in ["a\nb", "\r\n", "x\u{2028}y", "5\n\n"] {
            let e = err(&[("SYNC_INTERVAL", value)]);
            let shown = e.to_string();
            assert!(!shown.contains('\n') && !shown.contains('\r'), "{shown:?}");
            assert_eq!(e.value, value);
        }
    }
}
