//! Conflicts: a Secret with the name a copy would have, in a namespace that
//! should get the copy, that push-to-k8s did not create. It is never
//! overwritten or deleted (DESIGN §5); we only need to know where it is, so
//! the planner does not try to create over it.
//!
//! Our watches are label-selected and never see such objects, so they are
//! found by LIST: one metadata-only LIST per name, across all namespaces,
//! with the field selector `metadata.name=<name>`:
//! - at start, after the caches synced and before the first plan, one LIST
//!   per source: the first plan skips those namespaces (no POST, no GET, no
//!   Event per namespace) and one Warning Event per source says how many and
//!   where;
//! - once a minute and after each resync, one LIST per name with known
//!   conflicts, in a task off the control loop: the ones gone (or that became
//!   our copies) are forgotten, and the next plan writes the copy.
//!
//! Conflicts met later (a create refused with AlreadyExists) are recorded by
//! the writer.
//!
//! A source that asks for adoption, with adoption allowed
//! ([`crate::decide::adoption`]), has no conflicts to find: at start it is not
//! listed, and its known conflicts are forgotten whenever it is planned
//! ([`release_for_adoption`]), so the plan creates its copies and the writer
//! adopts what is in the way (or records the conflict again, if that object
//! is never adopted).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::events::EventType;

use crate::decide::plan;
use crate::model::kinds::Kind;
use crate::model::records::{ObjectKey, owned_source_in};
use crate::model::rules::{NamespaceInfo, Scope};
use crate::observe::batch::DirtyKey;
use crate::observe::cache::{Cache, KindCaches};
use crate::operate::api_errors::describe as describe_error;
use crate::operate::metrics::{Metrics, ResultLabels};
use crate::write::events::Events;

const PAGE: u32 = 500;

/// Namespaces shown in a Warning Event; the rest are counted.
const SHOWN: usize = 5;

/// The namespaces, other than `source_namespace`, holding an object of
/// `kind` named `name` that is not our copy of the source `name`: one
/// metadata-only LIST across all namespaces (paginated), whatever the number
/// of namespaces.
pub async fn blocked_namespaces(
    client: &kube::Client,
    kind: Kind,
    (source_namespace, stamp): (&str, Option<&str>),
    name: &str,
    metrics: &Metrics,
) -> kube::Result<BTreeSet<String>> {
    let result = list_blocked(client, kind, (source_namespace, stamp), name).await;
    let label = if result.is_ok() { "ok" } else { "error" };
    metrics
        .conflict_lists
        .get_or_create(&ResultLabels { result: label })
        .inc();
    result
}

async fn list_blocked(
    client: &kube::Client,
    kind: Kind,
    (source_namespace, stamp): (&str, Option<&str>),
    name: &str,
) -> kube::Result<BTreeSet<String>> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
    let mut lp = ListParams::default()
        .fields(&format!("metadata.name={name}"))
        .limit(PAGE);
    let mut blocked = BTreeSet::new();
    loop {
        let page = api.list_metadata(&lp).await?;
        for item in &page.items {
            let m = &item.metadata;
            let Some(ns) = m.namespace.as_deref() else {
                continue;
            };
            // One of our copies (of whichever source) is not a stranger's.
            let ours = owned_source_in(m, source_namespace, stamp).is_some();
            if ns != source_namespace && m.name.as_deref() == Some(name) && !ours {
                blocked.insert(ns.to_string());
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(blocked),
        }
    }
}

/// Conflicts already in the cluster at start, per source: the namespaces
/// that should get a copy of it but hold an unmanaged Secret of its name.
/// One LIST per source that is pushed at all; a failed LIST is logged and
/// leaves that source's conflicts to be found by the writer.
pub async fn at_start(
    client: &kube::Client,
    caches: &KindCaches,
    namespaces: &Cache<String, NamespaceInfo>,
    scope: &Scope<'_>,
    adoption_allowed: bool,
    metrics: &Metrics,
) -> BTreeMap<String, Vec<String>> {
    let kind = caches.kind;
    let mut sources: Vec<_> = caches
        .sources
        .read(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    sources.sort_by(|a, b| a.0.cmp(&b.0));
    let mut found = BTreeMap::new();
    for (name, source) in &sources {
        // A refused source (bad annotation, identity type, a copy name
        // another source keeps) is not pushed.
        let Ok(rules) = plan::rules(source) else {
            continue;
        };
        if caches
            .sources
            .read(|all| plan::refusal_among(all, name).is_some())
        {
            continue;
        }
        // In a remote cluster: only the sources that want copies there.
        if scope.cluster.is_some_and(|c| !rules.selects_cluster(c)) {
            continue;
        }
        // What is in its way is adopted, not a conflict (the writer decides).
        if crate::decide::adoption::wanted(source, adoption_allowed) {
            continue;
        }
        // Copies are named as the source asks (its own name, or a rename).
        let copy_name = &source.replica.name;
        // A namespace holding our copy holds nothing else of that name: a
        // source whose every wanted namespace has its copy is not listed
        // (at a start in sync: no LIST at all; 1,000 rules' sources took
        // 1,000 LISTs, 90 s, in benches/scale/rules.rs).
        let all_there = namespaces.read(|all| {
            caches.replicas.read(|copies| {
                all.iter().all(|(ns, info)| {
                    !rules.wants(scope, name, ns, info)
                        || copies.contains_key(&ObjectKey::new(kind, ns, copy_name))
                })
            })
        });
        if all_there {
            continue;
        }
        let blocked = match blocked_namespaces(
            client,
            kind,
            (scope.source_namespace, scope.stamp),
            copy_name,
            metrics,
        )
        .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(source = %name, error = %describe_error(&e), "could not list same-named Secrets at start; conflicts will be found when copies are written");
                continue;
            }
        };
        let wanted: Vec<String> = blocked
            .into_iter()
            .filter(|ns| {
                namespaces
                    .get(ns)
                    .is_some_and(|info| rules.wants(scope, name, ns, &info))
            })
            .collect();
        if !wanted.is_empty() {
            found.insert(name.clone(), wanted);
        }
    }
    found
}

/// Record the conflicts found at start (so the first plan skips them), count
/// them, and say so once per source: a log line and one Warning Event with
/// the count and up to five namespaces (and the remote `cluster`, if one).
pub async fn report_at_start(
    found: &BTreeMap<String, Vec<String>>,
    known: &std::sync::Mutex<std::collections::HashSet<ObjectKey>>,
    caches: &KindCaches,
    events: &Events,
    metrics: &Metrics,
    cluster: Option<&str>,
) {
    let kind = caches.kind;
    for (name, namespaces) in found {
        let Some(rec) = caches.sources.get(name) else {
            continue;
        };
        let copy_name = &rec.replica.name;
        {
            let mut known = known.lock().expect("lock");
            for ns in namespaces {
                known.insert(ObjectKey::new(kind, ns, copy_name));
            }
        }
        metrics.conflicts.inc_by(namespaces.len() as u64);
        let note = at_start_note(kind, copy_name, namespaces);
        // In a remote cluster, the Event says which.
        let note = match cluster {
            Some(c) => format!("in cluster {c}: {note}"),
            None => note,
        };
        tracing::warn!(source = %name, kind = kind.label(), conflicts = namespaces.len(), "{note}");
        {
            events
                .publish(
                    &events.source_ref(kind, name, &rec.uid),
                    EventType::Warning,
                    "Conflict",
                    "Plan",
                    note,
                )
                .await;
        }
    }
}

/// The note of a start-up conflict Event: a count and at most [`SHOWN`]
/// namespaces, so a common name in thousands of namespaces is one short Event.
pub fn at_start_note(kind: Kind, name: &str, namespaces: &[String]) -> String {
    let n = namespaces.len();
    let shown = namespaces
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let more = if n > SHOWN {
        format!(" and {} more", n - SHOWN)
    } else {
        String::new()
    };
    let (count, have) = if n == 1 {
        ("1 namespace".to_string(), "has")
    } else {
        (format!("{n} namespaces"), "have")
    };
    format!(
        "{count} already {have} a {kind} named {name} that push-to-k8s does not manage; it is left untouched and gets no copy: {shown}{more}"
    )
}

/// Forget the `known` conflicts of the sources of this kind that `keys`
/// plan and that may adopt (they ask, and `allowed`): the plan then creates
/// those copies, and the writer adopts the objects in their way. So a source
/// that asks for adoption after its conflicts were recorded adopts them as
/// soon as its change is planned. Returns how many were forgotten.
pub fn release_for_adoption(
    known: &Mutex<HashSet<ObjectKey>>,
    caches: &KindCaches,
    keys: &[DirtyKey],
    allowed: bool,
) -> usize {
    if !allowed {
        return 0;
    }
    let kind = caches.kind;
    let all = keys.contains(&DirtyKey::All);
    let copy_names: HashSet<String> = caches.sources.read(|sources| {
        let adopting = |name: &String| {
            sources
                .get(name)
                .filter(|s| crate::decide::adoption::wanted(s, true))
                .map(|s| s.replica.name.clone())
        };
        if all {
            sources.keys().filter_map(adopting).collect()
        } else {
            keys.iter()
                .filter_map(|k| match k {
                    DirtyKey::Source(k, name) if *k == kind => adopting(name),
                    _ => None,
                })
                .collect()
        }
    });
    if copy_names.is_empty() {
        return 0;
    }
    let mut known = known.lock().expect("lock");
    let before = known.len();
    known.retain(|k| k.kind != kind || !copy_names.contains(&k.name));
    before - known.len()
}

/// Of the `known` conflicts, those no longer blocked (the object is gone,
/// or is our copy now): one LIST per distinct name. A name whose LIST fails
/// keeps its conflicts until the next recheck.
pub async fn recheck(
    client: &kube::Client,
    (source_namespace, stamp): (&str, Option<&str>),
    known: Vec<ObjectKey>,
    metrics: &Metrics,
) -> Vec<ObjectKey> {
    let mut by_name: BTreeMap<(Kind, String), Vec<ObjectKey>> = BTreeMap::new();
    for key in known {
        by_name
            .entry((key.kind, key.name.clone()))
            .or_default()
            .push(key);
    }
    let mut gone = Vec::new();
    for ((kind, name), keys) in by_name {
        match blocked_namespaces(client, kind, (source_namespace, stamp), &name, metrics).await {
            Ok(blocked) => {
                gone.extend(keys.into_iter().filter(|k| !blocked.contains(&k.namespace)))
            }
            Err(e) => {
                tracing::debug!(name = %name, error = %describe_error(&e), "conflict recheck could not list; trying again later")
            }
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vocabulary::{MANAGED_LABEL_KEY, MANAGED_LABEL_VALUE, SOURCE_ANNOTATION};
    use crate::observe::cache::Caches;
    use http::StatusCode;

    use crate::fixtures::{self, ApiServer as ApiHandle};
    use serde_json::{Value, json};

    fn mock() -> (kube::Client, ApiHandle) {
        fixtures::client()
    }

    fn item(ns: &str, name: &str, ours_for: Option<&str>) -> Value {
        let mut meta = json!({"name": name, "namespace": ns, "uid": format!("{ns}-uid")});
        if let Some(src) = ours_for {
            meta["labels"] = json!({MANAGED_LABEL_KEY: MANAGED_LABEL_VALUE});
            meta["annotations"] = json!({SOURCE_ANNOTATION: src});
        }
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta})
    }

    /// Answer the next request, which must be the metadata LIST of every
    /// Secret named `name`, with `items`.
    async fn expect_list(h: &mut ApiHandle, name: &str, items: Vec<Value>) {
        fixtures::expect_secrets_named(h, name, items).await;
    }

    fn key(ns: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::Secret,
            namespace: ns.into(),
            name: name.into(),
        }
    }

    // Issue 7, defect 6: conflicts were rechecked by one GET per blocked
    // copy, on the control loop. Now: one LIST per name, whatever the number
    // of namespaces, and nothing else.
    #[tokio::test]
    async fn defect6_recheck_is_one_metadata_list_per_conflicting_name() {
        let (client, mut handle) = mock();
        let known = vec![
            key("a", "db"),
            key("b", "db"),
            key("c", "db"),
            key("d", "db"),
            key("a", "api"),
        ];
        let metrics = Metrics::new();
        let task = tokio::spawn(async move {
            let mut gone = recheck(&client, ("src", None), known, &metrics).await;
            gone.sort();
            (gone, metrics.encode())
        });
        // Names in order: api, then db.
        expect_list(&mut handle, "api", vec![item("a", "api", None)]).await;
        expect_list(
            &mut handle,
            "db",
            vec![
                // still blocking
                item("a", "db", None),
                // c: deleted (not listed); d: now our copy of src/db
                item("d", "db", Some("src/db")),
                // b: marked as a copy of another controller's source: still not ours
                item("b", "db", Some("elsewhere/db")),
                // the source itself is never a conflict
                item("src", "db", None),
            ],
        )
        .await;
        let (gone, text) = tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("recheck finished")
            .unwrap();
        fixtures::done(handle).await;
        assert_eq!(gone, vec![key("c", "db"), key("d", "db")]);
        assert!(
            text.contains("push_to_k8s_conflict_lists_total{result=\"ok\"} 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn defect6_a_failed_recheck_list_keeps_the_conflicts() {
        let (client, mut handle) = mock();
        let metrics = Metrics::new();
        let task = tokio::spawn(async move {
            recheck(&client, ("src", None), vec![key("a", "db")], &metrics).await
        });
        let (_, send) = handle.next_request().await.unwrap();
        fixtures::reply(
            send,
            StatusCode::FORBIDDEN,
            fixtures::failure(403, "Forbidden"),
        );
        assert_eq!(task.await.unwrap(), vec![]);
    }

    fn source(
        name: &str,
        annotations: &[(&str, &str)],
    ) -> (String, crate::model::records::SourceRecord) {
        let s = crate::fixtures::labelled_secret("src", name, annotations, &[]);
        crate::model::records::SourceRecord::from_secret(&s, "src").expect("a source")
    }

    // Issue 7, defect 6: at start, conflicts were found by a failed POST, a
    // GET and an Event per namespace. Now: one LIST per source, before the
    // first plan, keeping only namespaces that should get the copy.
    #[tokio::test]
    async fn defect6_conflicts_at_start_come_from_one_list_per_source() {
        use crate::model::rules::NamespaceInfo;
        let (client, mut handle) = mock();
        let caches = std::sync::Arc::new(Caches::new());
        for (name, annotations) in [
            ("db", &[][..]),
            ("only-a", &[("push-to-k8s.io/namespaces", "a")][..]),
            // Refused (does not parse): not pushed, so not listed either.
            ("bad", &[("push-to-k8s.io/namespace-selector", "in (")][..]),
        ] {
            let (k, v) = source(name, annotations);
            caches.of(Kind::Secret).sources.set(k, Some(v));
        }
        let info = |labels: &[(&str, &str)], terminating| NamespaceInfo {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            terminating,
        };
        for (ns, i) in [
            ("src", info(&[], false)),
            ("a", info(&[], false)),
            ("b", info(&[], false)),
            ("gone", info(&[], true)),
            ("opted-out", info(&[("no-copies", "")], false)),
            ("kube-system", info(&[], false)),
        ] {
            caches.namespaces.set(ns.to_string(), Some(i));
        }
        let metrics = Metrics::new();
        let c = caches.clone();
        let task = tokio::spawn(async move {
            let protected = vec!["kube-system".to_string()];
            let scope = Scope {
                source_namespace: "src",
                exclude_label: Some("no-copies"),
                protected: &protected,
                require_consent: false,
                cluster: None,
                stamp: None,
            };
            at_start(
                &client,
                c.of(Kind::Secret),
                &c.namespaces,
                &scope,
                false,
                &metrics,
            )
            .await
        });
        let everywhere = |name: &str| {
            [
                "src",
                "a",
                "b",
                "gone",
                "opted-out",
                "kube-system",
                "not-cached",
            ]
            .iter()
            .map(|ns| item(ns, name, None))
            .collect::<Vec<_>>()
        };
        expect_list(&mut handle, "db", everywhere("db")).await;
        expect_list(&mut handle, "only-a", everywhere("only-a")).await;
        let found = tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("scan finished")
            .unwrap();
        fixtures::done(handle).await;
        assert_eq!(
            found,
            BTreeMap::from([
                ("db".to_string(), vec!["a".to_string(), "b".to_string()]),
                ("only-a".to_string(), vec!["a".to_string()]),
            ])
        );
    }

    /// A cache of Secret sources with `annotations` each, and namespaces
    /// `a` and `b`.
    fn adoption_caches(sources: &[(&str, &[(&str, &str)])]) -> std::sync::Arc<Caches> {
        let caches = std::sync::Arc::new(Caches::new());
        for (name, annotations) in sources {
            let (k, v) = source(name, annotations);
            caches.of(Kind::Secret).sources.set(k, Some(v));
        }
        for ns in ["src", "a", "b"] {
            caches
                .namespaces
                .set(ns.to_string(), Some(Default::default()));
        }
        caches
    }

    const ADOPTS: &[(&str, &str)] = &[(crate::model::vocabulary::ADOPT_ANNOTATION, "true")];

    // Issue 8, adoption: a source that may adopt has no conflicts at start
    // (no LIST), so the first plan creates its copies and the writer adopts.
    // Asking without ALLOW_ADOPTION is no adoption: it is listed as before.
    #[tokio::test]
    async fn a_source_that_may_adopt_is_not_listed_at_start() {
        for allowed in [true, false] {
            let (client, mut handle) = mock();
            let caches = adoption_caches(&[("db", &[]), ("takes", ADOPTS)]);
            let metrics = Metrics::new();
            let task = tokio::spawn(async move {
                let scope = Scope {
                    source_namespace: "src",
                    exclude_label: None,
                    protected: &[],
                    require_consent: false,
                    cluster: None,
                    stamp: None,
                };
                let of = caches.of(Kind::Secret);
                at_start(&client, of, &caches.namespaces, &scope, allowed, &metrics).await
            });
            expect_list(&mut handle, "db", vec![item("a", "db", None)]).await;
            if !allowed {
                expect_list(&mut handle, "takes", vec![item("b", "takes", None)]).await;
            }
            let found = tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .expect("scan finished")
                .unwrap();
            assert!(
                handle.next_request().await.is_none(),
                "an unexpected extra request (allowed: {allowed})"
            );
            let mut want = BTreeMap::from([("db".to_string(), vec!["a".to_string()])]);
            if !allowed {
                want.insert("takes".to_string(), vec!["b".to_string()]);
            }
            assert_eq!(found, want, "allowed: {allowed}");
        }
    }

    // Issue 8, adoption: conflicts recorded before the source asked for
    // adoption are forgotten when its change is planned (or everything is),
    // never those of other sources, and never without ALLOW_ADOPTION.
    #[test]
    fn conflicts_of_a_source_that_may_adopt_are_forgotten_when_it_is_planned() {
        let caches = adoption_caches(&[
            ("db", &[]),
            ("takes", ADOPTS),
            (
                "declines",
                &[(crate::model::vocabulary::ADOPT_ANNOTATION, "false")],
            ),
        ]);
        let of = caches.of(Kind::Secret);
        let all = [
            key("a", "db"),
            key("a", "takes"),
            key("b", "takes"),
            key("a", "declines"),
        ];
        let known = |keys: &[ObjectKey]| Mutex::new(keys.iter().cloned().collect::<HashSet<_>>());
        let left = |k: &Mutex<HashSet<ObjectKey>>| {
            let mut v: Vec<_> = k.lock().unwrap().iter().cloned().collect();
            v.sort();
            v
        };
        let source_key = |n: &str| DirtyKey::Source(Kind::Secret, n.into());
        let cases: &[(&[DirtyKey], bool, usize)] = &[
            (&[DirtyKey::All], true, 2),
            (&[source_key("takes")], true, 2),
            (&[source_key("db"), source_key("declines")], true, 0),
            (&[DirtyKey::Namespace("a".into())], true, 0),
            (
                &[DirtyKey::Source(Kind::ConfigMap, "takes".into())],
                true,
                0,
            ),
            (&[DirtyKey::All], false, 0),
            (&[source_key("takes")], false, 0),
        ];
        for (keys, allowed, forgotten) in cases {
            let k = known(&all);
            assert_eq!(
                release_for_adoption(&k, of, keys, *allowed),
                *forgotten,
                "{keys:?} allowed {allowed}"
            );
            if *forgotten > 0 {
                assert_eq!(left(&k), vec![key("a", "db"), key("a", "declines")]);
            } else {
                assert_eq!(left(&k).len(), all.len());
            }
        }
    }

    #[test]
    fn defect6_start_up_conflicts_are_one_short_note_per_source() {
        let many: Vec<String> = (0..1000).map(|i| format!("team-{i}")).collect();
        assert_eq!(
            at_start_note(Kind::Secret, "db", &many),
            "1000 namespaces already have a Secret named db that push-to-k8s does not manage; it is left untouched and gets no copy: team-0, team-1, team-2, team-3, team-4 and 995 more"
        );
        assert_eq!(
            at_start_note(Kind::Secret, "db", &["a".to_string()]),
            "1 namespace already has a Secret named db that push-to-k8s does not manage; it is left untouched and gets no copy: a"
        );
    }
}
