//! Per copy, whether a planned write may go in this flush: a copy waiting
//! out a retry backoff waits; a copy something keeps changing back is
//! repaired ever more rarely ([`crate::targets::cluster::fights`]). The
//! leader/shutdown gate every request asks is [`crate::write::gate::WriteGate`].

use std::time::Duration;

use kube::runtime::events::EventType;

use crate::decide::plan::Action;
use crate::model::records::ObjectKey;
use crate::observe::cache::Caches;
use crate::targets::cluster::fights::{Decision, Fights};
use crate::targets::cluster::writer::{Outcome, Writer};
use crate::write::retry::RetryQueue;

/// Per-copy state that decides whether a planned write may go now: the
/// retry queue (a failed copy waits out its backoff) and the fight tracker
/// (a copy something keeps changing back is repaired ever more rarely).
pub struct Admission<'a> {
    pub retry: &'a mut RetryQueue,
    pub fights: &'a mut Fights,
}

impl Admission<'_> {
    /// Keep the actions that may be written now; hold the others.
    pub async fn admit(
        &mut self,
        caches: &Caches,
        writer: &Writer,
        actions: Vec<Action>,
    ) -> Vec<Action> {
        let mut now = Vec::with_capacity(actions.len());
        for action in actions {
            let key = action.key();
            let repair = matches!(action, Action::Update { .. } | Action::Replace { .. })
                .then(|| repair_of(caches, &key))
                .flatten();
            // A held copy waits, unless it is held for a fight and its source
            // changed since: new content (a rotated credential) goes at once.
            let new_content = repair.is_none() && self.fights.fought(&key);
            if self.retry.holds(&key) && !new_content {
                continue;
            }
            if let Some(hash) = repair
                && let Decision::Hold { delay, first } = self.fights.repair(&key, &hash)
            {
                let attempts = self.retry.attempts(&key);
                self.retry.hold(key.clone(), attempts, delay);
                if first {
                    report_fight(caches, writer, &key, delay).await;
                }
                continue;
            }
            now.push(action);
        }
        now
    }

    pub fn record(&mut self, outcomes: Vec<(ObjectKey, Outcome)>) {
        for (key, outcome) in outcomes {
            match outcome {
                Outcome::Failed(_) => {
                    let delay = self.retry.failed(key.clone());
                    tracing::debug!(copy = %key, delay_s = delay.as_secs(), "retrying later");
                }
                // Not sent: whoever leads next plans it again.
                Outcome::Abandoned => {}
                _ => self.retry.succeeded(&key),
            }
        }
    }

    /// Forget copies whose namespace, or whose source and copy, are gone.
    pub fn prune(&mut self, caches: &Caches, writer: &Writer) {
        let exists = |k: &ObjectKey| caches.of(k.kind).replicas.get(k).is_some();
        self.retry.retain(|k| {
            caches.namespaces.get(&k.namespace).is_some()
                && (exists(k) || caches.of(k.kind).source_of(k).is_some())
        });
        self.fights.retain(exists);
        writer
            .accepted
            .lock()
            .expect("lock")
            .retain(|k, _| exists(k));
    }
}

/// If writing `key` now would repair a copy whose source did not change
/// since our last write (someone changed the copy), the content hash it
/// restores.
fn repair_of(caches: &Caches, key: &ObjectKey) -> Option<String> {
    let of = caches.of(key.kind);
    let copy = of.replicas.get(key)?;
    let desired = of.sources.get(&copy.source.to_string())?.replica.hash;
    copy.has_hash(&desired).then_some(desired)
}

async fn report_fight(caches: &Caches, writer: &Writer, key: &ObjectKey, delay: Duration) {
    writer.metrics().fights.inc();
    tracing::warn!(copy = %key, hold_s = delay.as_secs(), "copy keeps being changed by someone else; repairing it with backoff");
    let of = caches.of(key.kind);
    if let Some(source) = of.source_of(key)
        && let Some(rec) = of.sources.get(&source)
    {
        let events = &writer.events;
        events
            .publish(
                &events.source_ref(key.kind, &source, &rec.uid),
                EventType::Warning,
                "CopyFought",
                "Push",
                format!(
                    "the copy in {} keeps being changed back by someone else (a controller, a policy, a webhook); repairs now wait {}s and then twice as long each time, at most 1h",
                    writer.place(&key.namespace),
                    delay.as_secs()
                ),
            )
            .await;
    }
}
