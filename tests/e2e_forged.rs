//! Issue 16, defect 7: objects a tenant makes to look like our copies (the
//! managed-by label, a source annotation naming our source namespace, any
//! `copy-name`) in the one namespace it may write. Each was deleted from the
//! one write budget, on the propagation path: 5,000 of them held every other
//! source's propagation for 5,000 / rate seconds. Now a copy under a name no
//! source asks for (nor asked for while the controller ran) is a stray,
//! deleted in a low-priority lane that never holds up a flush.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};

const FORGED: usize = 5_000;
/// Target namespaces (N), quiet window (D, seconds), write rate (R per second).
const N: usize = 50;
const D: u64 = 2;
const R: u64 = 10;

/// An object that passes every ownership rule, named `name`, claiming to be
/// the copy `name` of the source `source_ns/source`.
fn forged(name: &str, source_ns: &str, source: &str) -> Secret {
    let mut annotations = map(&[("push-to-k8s.io/source", &format!("{source_ns}/{source}"))]);
    if name != source {
        annotations.insert("push-to-k8s.io/copy-name".into(), name.into());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(&[("push-to-k8s.io/managed-by", "push-to-k8s")])),
            annotations: Some(annotations),
            ..Default::default()
        },
        data: Some(data_map(&[("k", "forged")])),
        ..Default::default()
    }
}

async fn count(api: &Api<Secret>) -> usize {
    api.list_metadata(&ListParams::default())
        .await
        .expect("list the tenant's Secrets")
        .items
        .len()
}

#[tokio::test]
async fn defect7_forged_copies_never_delay_propagation_beyond_d_plus_n_over_r() {
    let _serial = serial();
    let mut env = TestEnv::new("forged", N).await;
    let _on_panic = env.cleanup_on_panic();
    let tenant = format!("{}-forge", env.id);
    env.create_namespace(&tenant, &[]).await;
    let name = format!("{}-db", env.id);
    // Only the test's own N namespaces (not the tenant's, nor others').
    let mut source = source_secret(&name, &[("k", "v1")]);
    source.metadata.annotations = Some(map(&[(
        "push-to-k8s.io/namespaces",
        &format!("{}-t*", env.id),
    )]));
    env.add_source(&source).await;

    // The tenant forges: half claim sources that do not exist, half claim
    // the real source under names of their own.
    let forge = env.secrets(&tenant);
    let t = Instant::now();
    let made = futures::stream::iter(0..FORGED)
        .map(|i| {
            let (forge, src, name) = (forge.clone(), env.source_ns.clone(), name.clone());
            async move {
                let s = if i % 2 == 0 {
                    let own = format!("gone-{i}");
                    forged(&own, &src, &own)
                } else {
                    forged(&format!("x-{i}"), &src, &name)
                };
                forge.create(&PostParams::default(), &s).await
            }
        })
        .buffer_unordered(16)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    assert_eq!(made, FORGED, "every forged object created");
    eprintln!("forged {FORGED} objects in {:?}", t.elapsed());

    // The controller starts with them there: its first plan collects
    // everything that looks orphaned, forgeries included.
    let d = D.to_string();
    let r = R.to_string();
    let mut daemon = Daemon::start(
        &env.source_ns,
        &[
            ("SECRET_SYNC_DEBOUNCE_SECONDS", d.as_str()),
            ("SECRET_SYNC_RATE_LIMIT", r.as_str()),
            ("SECRET_SYNC_RATE_BURST", "1"),
        ],
    );
    eprintln!("controller log: {}", daemon.log.display());
    daemon.await_ready().await;
    let started = Instant::now();
    // The first copies do not wait behind the forgeries (5,000 deletes at
    // R/s would take over 8 minutes): N creates at R/s after one window.
    let want_v1 = data_map(&[("k", "v1")]);
    until(
        "the first copies in every target namespace",
        Duration::from_secs(60),
        || async {
            let mut missing = Vec::new();
            for ns in &env.targets {
                let ok = env
                    .copy(ns, &name)
                    .await
                    .is_some_and(|c| c.data.as_ref() == Some(&want_v1));
                if !ok {
                    missing.push(ns.clone());
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} missing after {:?}",
                    missing.len(),
                    started.elapsed()
                ))
            }
        },
    )
    .await;
    eprintln!(
        "first copies everywhere {:?} after ready",
        started.elapsed()
    );
    // The stray lane is at work meanwhile.
    until(
        "forged objects being deleted",
        Duration::from_secs(60),
        || async {
            let left = count(&forge).await;
            if left < FORGED {
                Ok(())
            } else {
                Err(format!("{left} left"))
            }
        },
    )
    .await;

    // Note when each target namespace first shows the new data.
    let want = data_map(&[("k", "v2")]);
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let listed = Arc::new(AtomicBool::new(false));
    let watch = {
        let api: Api<Secret> = Api::all(env.client.clone());
        let selector = format!("push-to-k8s.io/source-name={name}");
        let (arrivals, listed, want, name) =
            (arrivals.clone(), listed.clone(), want.clone(), name.clone());
        tokio::spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default().labels(&selector));
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let s = match event {
                    Ok(Event::Apply(s)) | Ok(Event::InitApply(s)) => s,
                    Ok(Event::InitDone) => {
                        listed.store(true, Ordering::SeqCst);
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("test watch error (retrying): {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let at = Instant::now();
                if s.metadata.name.as_deref() == Some(name.as_str())
                    && s.data.as_ref() == Some(&want)
                {
                    let ns = s.metadata.namespace.clone().unwrap_or_default();
                    arrivals.lock().unwrap().entry(ns).or_insert(at);
                }
            }
        })
    };
    eventually(
        "the test's own watch to list the copies",
        Duration::from_secs(30),
        || async { listed.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
    let before = count(&forge).await;

    let changed = Instant::now();
    env.sources()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"stringData": {"k": "v2"}})),
        )
        .await
        .expect("update the source");
    until(
        "the update in every target namespace",
        Duration::from_secs(120),
        || async {
            let n = arrivals.lock().unwrap().len();
            if n == N {
                Ok(())
            } else {
                Err(format!("{n} of {N} after {:?}", changed.elapsed()))
            }
        },
    )
    .await;
    watch.abort();
    let last = *arrivals.lock().unwrap().values().max().unwrap();
    let took = last - changed;
    let bound = Duration::from_secs_f64((D as f64 + N as f64 / R as f64) * 1.1);
    let after = count(&forge).await;
    eprintln!(
        "update reached {N} namespaces in {took:?} (bound {bound:?}) while {} strays were swept ({before} -> {after} forged objects left)",
        before - after
    );
    assert!(
        took <= bound,
        "the update took {took:?} with forged copies around, more than D + N/R + 10% = {bound:?}; log:\n{}",
        daemon
            .logs()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        after < before,
        "the stray lane went on while the update went out"
    );
    // None of the real copies was touched by the lane.
    for ns in &env.targets {
        let c = env.copy(ns, &name).await.expect("a copy");
        assert_eq!(c.data.as_ref(), Some(&want), "{ns}");
    }

    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    let _ = namespaces.delete(&tenant, &Default::default()).await;
    env.teardown().await;
}
