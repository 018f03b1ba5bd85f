//! Seeding and clearing the cluster with the bench's own client: target
//! namespaces (only ever added; those beyond a scenario's N are parked),
//! sources of realistic size (Secrets and ConfigMaps), copies seeded in sync
//! through the project's own renderer, unrelated Secrets and ConfigMaps, and
//! a reset between scenarios.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ByteString, NamespaceResourceScope};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use push_to_k8s::model::kinds::Kind;
use push_to_k8s::model::replica::Replica;
use serde::de::DeserializeOwned;

use crate::copies::{self, CopyWatch};
use crate::{LIST_PAGE, PARKED_LABEL, SEED_CONCURRENCY, SOURCE_NS, TARGET_PREFIX};

/// Every unrelated Secret and ConfigMap carries this label (and nothing of ours).
const UNRELATED_SELECTOR: &str = "app=unrelated";

/// The bench's own client (kube's defaults, no client-side throttling) and
/// what it does to the cluster between and inside scenarios.
pub struct Cluster {
    pub client: kube::Client,
}

fn target_name(i: usize) -> String {
    format!("{TARGET_PREFIX}{i:04}")
}

/// Deterministic filler bytes (no secret, just a realistic size), printable.
pub fn filler(seed: &str, len: usize) -> Vec<u8> {
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
pub fn source_secret(name: &str, version: u64) -> Secret {
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
                push_to_k8s::model::vocabulary::SOURCE_LABEL_KEY.to_string(),
                push_to_k8s::model::vocabulary::SOURCE_LABEL_VALUE.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// A ConfigMap source of realistic size: settings as text, a ~1 KiB CA
/// bundle, and a small binary key (`binaryData`).
fn source_config_map(name: &str) -> ConfigMap {
    let text = |s: Vec<u8>| String::from_utf8(s).expect("filler is ASCII");
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                push_to_k8s::model::vocabulary::SOURCE_LABEL_KEY.to_string(),
                push_to_k8s::model::vocabulary::SOURCE_LABEL_VALUE.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "settings.yaml".to_string(),
                format!(
                    "service: {name}\nlog_level: info\ntoken: {}\n",
                    text(filler(name, 32))
                ),
            ),
            ("ca-bundle.crt".to_string(), text(filler(name, 1024))),
        ])),
        binary_data: Some(BTreeMap::from([(
            "keystore.bin".to_string(),
            ByteString(filler(&format!("{name}/bin"), 64)),
        )])),
        ..Default::default()
    }
}

/// An unlabelled object of neither kind's sources or copies, in `ns`.
fn unrelated_meta(name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some(BTreeMap::from([(
            "app".to_string(),
            "unrelated".to_string(),
        )])),
        ..Default::default()
    }
}

pub fn copy_hash(source: &Secret) -> String {
    Replica::render(source, SOURCE_NS).hash
}

/// `Ok` also when the object exists already (a seeding resumed or repeated).
fn created<T>(r: kube::Result<T>) -> kube::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.is_already_exists() => Ok(()),
        Err(e) => Err(e),
    }
}

impl Cluster {
    pub fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn config_maps(&self, ns: &str) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// How many namespaces the cluster has (every one is in a resync's list).
    pub async fn namespace_count(&self) -> Result<usize> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let mut lp = ListParams::default().limit(LIST_PAGE as u32);
        let mut n = 0;
        loop {
            let page = api.list_metadata(&lp).await?;
            n += page.items.len();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => return Ok(n),
            }
        }
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
                        data: Some(BTreeMap::from([
                            ("token".to_string(), ByteString(filler(&name, 64))),
                            ("ca.crt".to_string(), ByteString(filler("u", 1024))),
                        ])),
                        metadata: unrelated_meta(name),
                        ..Default::default()
                    };
                    created(api.create(&PostParams::default(), &s).await)
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .context("create unrelated Secrets")?;
        Ok(())
    }

    /// `count` unlabelled ConfigMaps (a CA bundle and settings, like the
    /// sources) spread over the first `namespaces` targets.
    pub async fn create_unrelated_config_maps(
        &self,
        count: usize,
        namespaces: usize,
    ) -> Result<()> {
        futures::stream::iter(0..count)
            .map(|j| {
                let api = self.config_maps(&target_name(j % namespaces));
                async move {
                    let name = format!("unrelated-{j}");
                    let mut cm = source_config_map(&name);
                    cm.metadata = unrelated_meta(name);
                    created(api.create(&PostParams::default(), &cm).await)
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .context("create unrelated ConfigMaps")?;
        Ok(())
    }

    /// Create `names` as sources of `kind` (Secrets as [`source_secret`],
    /// ConfigMaps as [`source_config_map`]); returns the copy each renders to
    /// with the project's own renderer, exactly what the controller writes.
    pub async fn create_rendered_sources(
        &self,
        kind: Kind,
        names: &[String],
    ) -> Result<Vec<Replica>> {
        futures::stream::iter(names.to_vec())
            .map(|name| async move {
                let pp = PostParams::default();
                match kind {
                    Kind::Secret => self
                        .secrets(SOURCE_NS)
                        .create(&pp, &source_secret(&name, 0))
                        .await
                        .map(|s| Replica::render(&s, SOURCE_NS)),
                    Kind::ConfigMap => self
                        .config_maps(SOURCE_NS)
                        .create(&pp, &source_config_map(&name))
                        .await
                        .map(|c| Replica::render_config_map(&c, SOURCE_NS)),
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect()
            .await
            .with_context(|| format!("create {kind} sources"))
    }

    /// Create the copies of `replicas` in the target namespaces numbered
    /// `namespaces` as the controller would: its own rendering, created with
    /// its field manager, so a controller started over them finds every copy
    /// in sync. Only the bench's client paces this (no rate limit), which is
    /// what makes 100,000 copies practical. Returns the number created.
    pub async fn seed_copies(
        &self,
        replicas: &[Replica],
        namespaces: Range<usize>,
    ) -> Result<usize> {
        let jobs: Vec<(String, &Replica)> = namespaces
            .flat_map(|i| replicas.iter().map(move |r| (target_name(i), r)))
            .collect();
        let count = jobs.len();
        let pp = PostParams {
            field_manager: Some(push_to_k8s::model::vocabulary::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        futures::stream::iter(jobs)
            .map(|(ns, r)| {
                let pp = &pp;
                async move {
                    match r.kind {
                        Kind::Secret => {
                            created(self.secrets(&ns).create(pp, &r.to_secret(&ns)).await)
                        }
                        Kind::ConfigMap => created(
                            self.config_maps(&ns)
                                .create(pp, &r.to_config_map(&ns))
                                .await,
                        ),
                    }
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .context("seed copies")?;
        Ok(count)
    }

    /// Copies of `kind` in the cluster carrying one of `hashes` (a paginated
    /// metadata list).
    pub async fn count_copies(&self, kind: Kind, hashes: &HashSet<String>) -> Result<usize> {
        const MANAGED: &str = copies::MANAGED_SELECTOR;
        let metas = match kind {
            Kind::Secret => self.metadata_everywhere::<Secret>(MANAGED).await?,
            Kind::ConfigMap => self.metadata_everywhere::<ConfigMap>(MANAGED).await?,
        };
        Ok(metas
            .iter()
            .filter(|m| {
                m.annotations
                    .as_ref()
                    .and_then(|a| a.get(copies::HASH_ANNOTATION))
                    .is_some_and(|h| hashes.contains(h))
            })
            .count())
    }

    /// The metadata of every `K` in every namespace matching `selector`, in
    /// pages.
    async fn metadata_everywhere<K>(&self, selector: &str) -> Result<Vec<ObjectMeta>>
    where
        K: kube::Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let mut lp = ListParams::default()
            .labels(selector)
            .limit(LIST_PAGE as u32);
        let mut out = Vec::new();
        loop {
            let page = api.list_metadata(&lp).await?;
            out.extend(page.items.into_iter().map(|m| m.metadata));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => return Ok(out),
            }
        }
    }

    /// Delete every `K` matching `selector`, in every namespace that has one
    /// (one collection delete per namespace); how many there were.
    async fn delete_everywhere<K>(&self, selector: &str) -> Result<usize>
    where
        K: kube::Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let metas = self.metadata_everywhere::<K>(selector).await?;
        let namespaces: HashSet<String> =
            metas.iter().filter_map(|m| m.namespace.clone()).collect();
        futures::stream::iter(namespaces)
            .map(|ns| {
                let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
                async move {
                    api.delete_collection(
                        &DeleteParams::default(),
                        &ListParams::default().labels(selector),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .with_context(|| format!("delete {selector} {}", K::plural(&Default::default())))?;
        Ok(metas.len())
    }

    /// Delete every source, every copy and every unrelated object, of both
    /// kinds (no controller may run).
    pub async fn reset(&self, watch: &CopyWatch) -> Result<()> {
        let start = Instant::now();
        let sources = ListParams::default().labels(push_to_k8s::model::vocabulary::SOURCE_SELECTOR);
        let dp = DeleteParams::default();
        self.secrets(SOURCE_NS)
            .delete_collection(&dp, &sources)
            .await?;
        self.config_maps(SOURCE_NS)
            .delete_collection(&dp, &sources)
            .await?;
        let mut deleted = 0;
        for selector in [copies::MANAGED_SELECTOR, UNRELATED_SELECTOR] {
            deleted += self.delete_everywhere::<Secret>(selector).await?;
            deleted += self.delete_everywhere::<ConfigMap>(selector).await?;
        }
        let timeout = Duration::from_secs(300 + deleted as u64 / 100);
        watch
            .wait("every copy to be gone", timeout, |s| s.copies.is_empty())
            .await?;
        println!(
            "bench: reset (sources, and {deleted} copies and unrelated objects deleted) in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
