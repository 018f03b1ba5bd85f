//! Connecting to a cluster, and the demo: when no cluster is configured at
//! all and we run from a source checkout, start the project's own local
//! control plane, seed a labelled Secret and a few namespaces, and run the
//! controller against it (`cargo run --release`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::operate::config::Config;

/// The control-plane script of the checkout this binary was built from.
const CONTROL_PLANE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/control-plane/cp.sh");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KUBECONFIG file that is not a usable kubeconfig: a bad setting.
    #[error("invalid KUBECONFIG={path:?}: not a usable kubeconfig file ({message})")]
    Kubeconfig { path: PathBuf, message: String },
    #[error(
        "no cluster configured (no KUBECONFIG, not in a pod, no ~/.kube/config) and no local control plane script at {0}"
    )]
    NoCluster(String),
    #[error("the local control plane did not start: {0}")]
    ControlPlane(String),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// `status` and `plan` look at a configured cluster only, never a demo.
    #[error("no cluster configured: set KUBECONFIG, run in a pod, or create ~/.kube/config ({0})")]
    NotConfigured(String),
}

impl Error {
    /// 2 for a setting the user must fix (like every other bad setting), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Kubeconfig { .. } | Error::NotConfigured(_) => 2,
            _ => 1,
        }
    }
}

async fn from_file(path: &Path) -> Result<kube::Config, Error> {
    // One line, whatever the YAML parser said.
    let fail = |message: String| Error::Kubeconfig {
        path: path.to_path_buf(),
        message: message.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| fail(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| fail(e.to_string()))
}

/// A client for the configured cluster, or for a demo control plane.
pub async fn client(cfg: &Config) -> Result<kube::Client, Error> {
    let kube_config = match &cfg.kubeconfig {
        Some(path) => from_file(path).await?,
        None => match kube::Config::infer().await {
            Ok(c) => c,
            Err(infer_error) => {
                if !Path::new(CONTROL_PLANE).exists() {
                    return Err(Error::NoCluster(format!("{CONTROL_PLANE} ({infer_error})")));
                }
                let path = start_control_plane().await?;
                let c = from_file(&path).await?;
                let client = crate::operate::kube_client::build(c.clone())?;
                seed(&client, cfg).await?;
                c
            }
        },
    };
    Ok(crate::operate::kube_client::build(with_user_agent(
        kube_config,
    ))?)
}

/// Every request says which replica sent it (the API server's audit log records the user
/// agent): `push-to-k8s/VERSION (POD_NAME)`, the chart setting POD_NAME (downward API).
fn with_user_agent(mut c: kube::Config) -> kube::Config {
    let agent = match std::env::var("POD_NAME") {
        Ok(pod) if !pod.is_empty() => format!("push-to-k8s/{} ({pod})", env!("CARGO_PKG_VERSION")),
        _ => format!("push-to-k8s/{}", env!("CARGO_PKG_VERSION")),
    };
    if let Ok(v) = http::HeaderValue::from_str(&agent) {
        c.headers
            .retain(|(name, _)| name != http::header::USER_AGENT);
        c.headers.push((http::header::USER_AGENT, v));
    }
    c
}

/// A client for the configured cluster (KUBECONFIG, in-cluster, or
/// ~/.kube/config), never a demo: for `status` and `plan`.
pub async fn configured_client(cfg: &Config) -> Result<kube::Client, Error> {
    let kube_config = match &cfg.kubeconfig {
        Some(path) => from_file(path).await?,
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::NotConfigured(one_line(&e.to_string())))?,
    };
    Ok(crate::operate::kube_client::build(kube_config)?)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn start_control_plane() -> Result<PathBuf, Error> {
    tracing::info!(
        script = CONTROL_PLANE,
        "demo: no cluster configured; starting the local control plane"
    );
    let up = tokio::process::Command::new("bash")
        .arg(CONTROL_PLANE)
        .arg("up")
        .status()
        .await
        .map_err(|e| Error::ControlPlane(e.to_string()))?;
    if !up.success() {
        return Err(Error::ControlPlane(format!(
            "{CONTROL_PLANE} up exited with {up}"
        )));
    }
    let env = tokio::process::Command::new("bash")
        .arg(CONTROL_PLANE)
        .arg("env")
        .output()
        .await
        .map_err(|e| Error::ControlPlane(e.to_string()))?;
    let text = String::from_utf8_lossy(&env.stdout);
    let path = text
        .trim()
        .strip_prefix("export KUBECONFIG=")
        .ok_or_else(|| Error::ControlPlane(format!("unexpected output of `cp.sh env`: {text}")))?;
    Ok(PathBuf::from(path))
}

/// Demo objects: the source namespace, three namespaces and one labelled Secret.
async fn seed(client: &kube::Client, cfg: &Config) -> Result<(), Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [cfg.namespace.as_str(), "demo-a", "demo-b", "demo-c"] {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        ignore_exists(namespaces.create(&PostParams::default(), &ns).await)?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let source = Secret {
        metadata: ObjectMeta {
            name: Some("demo-credentials".into()),
            labels: Some(BTreeMap::from([(
                crate::model::vocabulary::SOURCE_LABEL_KEY.to_string(),
                crate::model::vocabulary::SOURCE_LABEL_VALUE.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            ("username".to_string(), ByteString(b"demo".to_vec())),
            (
                "password".to_string(),
                ByteString(b"not-a-real-password".to_vec()),
            ),
        ])),
        ..Secret::default()
    };
    ignore_exists(secrets.create(&PostParams::default(), &source).await)?;
    tracing::info!(
        "demo: Secret {}/demo-credentials is labelled push-to-k8s=source; watch the copies with \
         `eval $(tests/control-plane/cp.sh env); kubectl get secrets -A -l {}`",
        cfg.namespace,
        crate::model::vocabulary::MANAGED_SELECTOR
    );
    Ok(())
}

fn ignore_exists<T>(r: kube::Result<T>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
