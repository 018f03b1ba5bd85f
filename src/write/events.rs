//! Kubernetes Events on the source objects: the one place that publishes
//! them. Only names, namespaces, counts and reasons ever go into a note;
//! never a value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::model::kinds::Kind;
use crate::write::gate::WriteGate;

/// Publishes Events on sources, and remembers the notes that must be said
/// once per change rather than once per flush (a refused source).
pub struct Events {
    client: kube::Client,
    /// Events are writes too: only while this instance leads.
    gate: Arc<WriteGate>,
    reporter: Reporter,
    source_namespace: String,
    /// Per source: the uid and note of the refusal last reported.
    refusals: Mutex<HashMap<(Kind, String), (String, String)>>,
}

impl Events {
    pub fn new(
        client: kube::Client,
        reporter: Reporter,
        source_namespace: String,
        gate: Arc<WriteGate>,
    ) -> Events {
        Events {
            client,
            gate,
            reporter,
            source_namespace,
            refusals: Mutex::default(),
        }
    }

    pub fn source_ref(&self, kind: Kind, name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(kind.name().into()),
            namespace: Some(self.source_namespace.clone()),
            name: Some(name.to_string()),
            uid: Some(uid.to_string()),
            ..ObjectReference::default()
        }
    }

    /// Should a refusal of `source` (object `uid`) with `note` be reported?
    /// Yes the first time, and again only when the note or the object
    /// changed: a bad annotation is one Event per change, not one per flush.
    pub fn first_refusal(&self, kind: Kind, source: &str, uid: &str, note: &str) -> bool {
        let mut seen = self.refusals.lock().expect("lock");
        let now = (uid.to_string(), note.to_string());
        let key = (kind, source.to_string());
        if seen.get(&key) == Some(&now) {
            return false;
        }
        seen.insert(key, now);
        true
    }

    /// Forget refusals of sources that are no longer refused (fixed or
    /// gone), so a later refusal is reported again.
    pub fn retain_refusals(&self, still: impl Fn(Kind, &str) -> bool) {
        self.refusals
            .lock()
            .expect("lock")
            .retain(|(kind, source), _| still(*kind, source));
    }

    pub async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        if !self.gate.open() {
            return;
        }
        let mut note = note;
        note.truncate(1000);
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        // A fresh recorder per Event: kube's recorder folds Events with the same
        // reason into one series and keeps the *first* note, which would hide
        // the second conflicting namespace and every later count.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&ev, reference).await {
            tracing::warn!(reason, error = %crate::operate::api_errors::describe(&e), "could not publish Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 7, defect 7: an invalid annotation is reported once per change.
    #[tokio::test]
    async fn invalid_annotation_warning_is_one_event_per_change() {
        let (client, _server) = crate::fixtures::client();
        let events = Events::new(
            client,
            Reporter {
                controller: "t".into(),
                instance: None,
            },
            "src".into(),
            Arc::new(WriteGate::single(tokio_util::sync::CancellationToken::new())),
        );
        assert!(events.first_refusal(Kind::Secret, "db", "u1", "bad glob"));
        assert!(!events.first_refusal(Kind::Secret, "db", "u1", "bad glob"));
        assert!(!events.first_refusal(Kind::Secret, "db", "u1", "bad glob"));
        // The annotation changed (still bad): say so once more.
        assert!(events.first_refusal(Kind::Secret, "db", "u1", "bad selector"));
        assert!(!events.first_refusal(Kind::Secret, "db", "u1", "bad selector"));
        // Another source is independent.
        assert!(events.first_refusal(Kind::Secret, "api", "u2", "bad selector"));
        // Fixed, then broken again with the same text: reported again.
        events.retain_refusals(|_, s| s != "db");
        assert!(events.first_refusal(Kind::Secret, "db", "u1", "bad selector"));
        // Deleted and recreated with the same bad annotation: a new object.
        assert!(events.first_refusal(Kind::Secret, "db", "u3", "bad selector"));
    }
}
