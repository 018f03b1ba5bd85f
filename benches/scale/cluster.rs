//! Seeding and clearing the cluster with the bench's own client: target
//! namespaces (only ever added; those beyond a scenario's N are parked),
//! sources of realistic size, unrelated Secrets, and a reset between scenarios.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use push_to_k8s::replica::{self, Replica};

use crate::copies::{self, CopyWatch};
use crate::{PARKED_LABEL, SEED_CONCURRENCY, SOURCE_NS, TARGET_PREFIX};

/// The bench's own client (kube's defaults, no client-side throttling) and
/// what it does to the cluster between and inside scenarios.
pub struct Cluster {
    pub client: kube::Client,
}

fn target_name(i: usize) -> String {
    format!("{TARGET_PREFIX}{i:04}")
}

/// Deterministic filler bytes (no secret, just a realistic size).
fn filler(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        x = (x ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(x % 64) as usize]
        })
        .collect()
}

/// A source of realistic size: a user name, a password and a ~1 KiB certificate.
fn source_secret(name: &str, version: u64) -> Secret {
    let data = BTreeMap::from([
        (
            "username".to_string(),
            ByteString(format!("svc-{name}").into_bytes()),
        ),
        (
            "password".to_string(),
            ByteString(filler(&format!("{name}/{version}"), 32)),
        ),
        ("ca.crt".to_string(), ByteString(filler(name, 1024))),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                replica::SOURCE_LABEL_KEY.to_string(),
                replica::SOURCE_LABEL_VALUE.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

fn copy_hash(source: &Secret) -> String {
    Replica::render(source, SOURCE_NS).hash
}

impl Cluster {
    pub fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn ensure_source_namespace(&self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if api.get_metadata_opt(SOURCE_NS).await?.is_none() {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(SOURCE_NS.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            api.create(&PostParams::default(), &ns).await?;
        }
        Ok(())
    }

    /// Make exactly `bench-t0000 .. bench-t{n-1}` targets: create what is
    /// missing, park (label) every other bench namespace, unpark these.
    /// Only call while no controller runs, or when growing.
    pub async fn set_targets(&self, n: usize) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let existing: HashMap<String, bool> = api
            .list_metadata(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|m| {
                let name = m.metadata.name?;
                let parked = m
                    .metadata
                    .labels
                    .is_some_and(|l| l.contains_key(PARKED_LABEL));
                name.starts_with(TARGET_PREFIX).then_some((name, parked))
            })
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Job {
            Create,
            Park,
            Unpark,
        }
        let start = Instant::now();
        let mut jobs = Vec::new();
        for i in 0..n {
            let name = target_name(i);
            match existing.get(&name) {
                None => jobs.push((name, Job::Create)),
                Some(true) => jobs.push((name, Job::Unpark)),
                Some(false) => {}
            }
        }
        for (name, parked) in &existing {
            let idx: usize = name[TARGET_PREFIX.len()..].parse().unwrap_or(usize::MAX);
            if idx >= n && !parked {
                jobs.push((name.clone(), Job::Park));
            }
        }
        let created = jobs.iter().filter(|j| j.1 == Job::Create).count();
        let patched = jobs.len() - created;
        futures::stream::iter(jobs)
            .map(|(name, job)| {
                let api = api.clone();
                async move {
                    let label = |v: serde_json::Value| {
                        serde_json::json!({"metadata": {"labels": {PARKED_LABEL: v}}})
                    };
                    let pp = PatchParams::default();
                    match job {
                        Job::Create => {
                            let ns = Namespace {
                                metadata: ObjectMeta {
                                    name: Some(name),
                                    ..Default::default()
                                },
                                ..Default::default()
                            };
                            api.create(&PostParams::default(), &ns).await.map(|_| ())
                        }
                        Job::Park => api
                            .patch(&name, &pp, &Patch::Merge(&label("true".into())))
                            .await
                            .map(|_| ()),
                        Job::Unpark => api
                            .patch(&name, &pp, &Patch::Merge(&label(serde_json::Value::Null)))
                            .await
                            .map(|_| ()),
                    }
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        if created + patched > 0 {
            println!(
                "bench: {n} target namespaces ({created} created, {patched} relabelled in {:.1} s)",
                start.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Create (or overwrite) `names` as sources; returns their expected copy hashes.
    pub async fn create_sources(&self, names: &[String]) -> Result<HashMap<String, String>> {
        let api = self.secrets(SOURCE_NS);
        futures::stream::iter(names.to_vec())
            .map(|name| {
                let api = api.clone();
                async move {
                    let s = api
                        .create(&PostParams::default(), &source_secret(&name, 0))
                        .await?;
                    Ok::<_, kube::Error>((name, copy_hash(&s)))
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect()
            .await
            .context("create sources")
    }

    /// Change one source's password; returns the copies' new expected hash.
    pub async fn update_source(&self, name: &str, version: u64) -> Result<String> {
        let api = self.secrets(SOURCE_NS);
        let data = source_secret(name, version).data.unwrap_or_default();
        let p = serde_json::json!({"data": {"password": data["password"]}});
        let s = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&p))
            .await
            .with_context(|| format!("update source {name}"))?;
        Ok(copy_hash(&s))
    }

    /// `count` unlabelled Secrets spread over the first `namespaces` targets.
    pub async fn create_unrelated(&self, count: usize, namespaces: usize) -> Result<()> {
        futures::stream::iter(0..count)
            .map(|j| {
                let api = self.secrets(&target_name(j % namespaces));
                async move {
                    let name = format!("unrelated-{j}");
                    let s = Secret {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            labels: Some(BTreeMap::from([(
                                "app".to_string(),
                                "unrelated".to_string(),
                            )])),
                            ..Default::default()
                        },
                        data: Some(BTreeMap::from([
                            ("token".to_string(), ByteString(filler(&name, 64))),
                            ("ca.crt".to_string(), ByteString(filler("u", 1024))),
                        ])),
                        ..Default::default()
                    };
                    match api.create(&PostParams::default(), &s).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(e)) if e.is_already_exists() => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .context("create unrelated Secrets")?;
        Ok(())
    }

    /// Delete every source and every copy (no controller may run).
    pub async fn reset(&self, watch: &CopyWatch) -> Result<()> {
        let start = Instant::now();
        self.secrets(SOURCE_NS)
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(replica::SOURCE_SELECTOR),
            )
            .await?;
        let namespaces: HashSet<String> =
            watch.with(|s| s.copies.keys().map(|k| k.0.clone()).collect());
        futures::stream::iter(namespaces)
            .map(|ns| {
                let api = self.secrets(&ns);
                async move {
                    api.delete_collection(
                        &DeleteParams::default(),
                        &ListParams::default().labels(copies::MANAGED_SELECTOR),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        watch
            .wait("every copy to be gone", Duration::from_secs(300), |s| {
                s.copies.is_empty()
            })
            .await?;
        println!(
            "bench: reset (sources and copies deleted) in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
