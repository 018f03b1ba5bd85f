//! The mock API server of the unit tests that pin exact API calls (test
//! builds only): a kube client whose every request reaches the test and
//! nothing else, the answers the API server gives, and the named
//! conversations more than one test module has (an Event posted, a LIST by
//! name, a failure status).
//!
//! A test drives both ends: the code under test on the client, the test on
//! the [`ApiServer`], answering each request it expects and asserting at the
//! end that no other came ([`ApiServer::done`]).
//!
//! Also the objects more than one test module builds: a labelled source
//! Secret and the record of its copy as we would write it.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

/// The test's end of the mock API server.
pub type ApiServer = Handle<Request<Body>, Response<Body>>;
/// The way back for one request's answer.
pub type Reply = SendResponse<Response<Body>>;

/// A client talking to the returned mock API server only.
pub fn client() -> (kube::Client, ApiServer) {
    let (service, server) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), server)
}

/// The next request: its method, URI, JSON body (`Null` when empty or not
/// JSON) and the way to answer it. Fails the test if the client is gone.
pub async fn next(server: &mut ApiServer) -> (Method, String, Value, Reply) {
    let (req, send) = server.next_request().await.expect("another request");
    let (method, uri) = (req.method().clone(), req.uri().to_string());
    let bytes = req.into_body().collect_bytes().await.expect("request body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (method, uri, body, send)
}

/// Answers one request with `code` and the JSON `body`.
pub fn reply(send: Reply, code: StatusCode, body: Value) {
    let bytes = serde_json::to_vec(&body).expect("JSON");
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(bytes))
            .expect("response"),
    );
}

/// Asserts that the client sends nothing more (call once every client
/// handle is dropped, or it waits for them).
pub async fn done(mut server: ApiServer) {
    assert!(
        server.next_request().await.is_none(),
        "an unexpected extra request"
    );
}

/// The API server's `Status` for a failed request.
pub fn failure(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "code": code, "message": reason})
}

/// The API server's answer to a successful DELETE.
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})
}

/// Scenario: the next request posts an Event with `reason` in namespace
/// `namespace`, and holds no data `value`; it is answered as created.
pub async fn expect_event(server: &mut ApiServer, namespace: &str, reason: &str, value: &str) {
    let (method, uri, body, send) = next(server).await;
    assert_eq!(method, Method::POST, "{uri}");
    assert!(
        uri.starts_with(&format!(
            "/apis/events.k8s.io/v1/namespaces/{namespace}/events"
        )),
        "{uri}"
    );
    assert_eq!(body["reason"], reason);
    assert!(
        !body.to_string().contains(value),
        "no value in Events: {body}"
    );
    reply(send, StatusCode::CREATED, body);
}

/// Scenario: the next request is the cluster-wide metadata LIST of every
/// Secret named `name` (the start-up and recheck conflict LIST); it is
/// answered with `items` (`PartialObjectMetadata`).
pub async fn expect_secrets_named(server: &mut ApiServer, name: &str, items: Vec<Value>) {
    let (req, send) = server.next_request().await.expect("a LIST");
    assert_eq!(req.method(), Method::GET);
    assert_eq!(
        req.uri().to_string(),
        format!("/api/v1/secrets?&fieldSelector=metadata.name%3D{name}&limit=500")
    );
    let accept = req.headers()["accept"].to_str().expect("accept header");
    assert!(
        accept.contains("PartialObjectMetadataList"),
        "metadata only: {accept}"
    );
    reply(
        send,
        StatusCode::OK,
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
               "metadata": {"resourceVersion": "7"}, "items": items}),
    );
}

/// The answer to a LIST at `uri` in a cluster that holds only the
/// namespaces `namespaces` (name, uid): those for a LIST of namespaces, an
/// empty list for anything else.
pub fn only_namespaces(uri: &str, namespaces: &[(&str, &str)]) -> Value {
    let items: Vec<Value> = if uri.starts_with("/api/v1/namespaces?") {
        namespaces
            .iter()
            .map(|(name, uid)| json!({"metadata": {"name": name, "uid": uid}}))
            .collect()
    } else {
        Vec::new()
    };
    json!({"apiVersion": "v1", "kind": "List",
           "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Scenario: the next request that is not a watch (its method, URI and the
/// way to answer it); watches met on the way are parked in `parked`, never
/// answered, like watches with nothing to say.
pub async fn next_besides_watches(
    server: &mut ApiServer,
    parked: &mut Vec<Reply>,
) -> (Method, String, Reply) {
    loop {
        let (req, send) = server.next_request().await.expect("another request");
        let uri = req.uri().to_string();
        if uri.contains("watch=true") {
            parked.push(send);
        } else {
            return (req.method().clone(), uri, send);
        }
    }
}

/// What [`capture_logs`] captured.
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("UTF-8 logs")
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line and span of this thread, at every level, until the guard
/// is dropped.
///
/// `tracing` caches whether a log statement is wanted once per process,
/// asking the subscriber of whichever thread reaches it first; a test on
/// another thread without one would have it cached as never wanted, and
/// the capture would miss it (this made a secrecy test fail now and then).
/// So a global subscriber that wants nothing but asks every time is
/// installed first, and the cache is rebuilt once the capture is on.
pub fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    static ANCHOR: std::sync::Once = std::sync::Once::new();
    ANCHOR.call_once(|| {
        let _ = tracing::subscriber::set_global_default(AskEveryTime);
    });
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    (logs, guard)
}

/// The global subscriber of the test binary: records nothing, and has
/// every log statement asked again each time (see [`capture_logs`]).
struct AskEveryTime;

impl tracing::Subscriber for AskEveryTime {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ---- Objects the planner's and the report's tests build ----

/// A labelled source Secret `namespace/name` holding `k: value`, with
/// `annotations`.
pub fn source_secret(
    namespace: &str,
    name: &str,
    value: &str,
    annotations: &[(&str, &str)],
) -> k8s_openapi::api::core::v1::Secret {
    labelled_secret(namespace, name, annotations, &[("k", value.as_bytes())])
}

/// A labelled source Secret `namespace/name` (uid `uid-<name>`) with
/// `annotations` and `data`.
pub fn labelled_secret(
    namespace: &str,
    name: &str,
    annotations: &[(&str, &str)],
    data: &[(&str, &[u8])],
) -> k8s_openapi::api::core::v1::Secret {
    use crate::model::vocabulary::{SOURCE_LABEL_KEY, SOURCE_LABEL_VALUE};
    use std::collections::BTreeMap;
    k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(BTreeMap::from([(
                SOURCE_LABEL_KEY.to_string(),
                SOURCE_LABEL_VALUE.to_string(),
            )])),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The record of a copy of `s` (a source in `source_namespace`) in `ns`,
/// exactly as we would write it.
pub fn copy_record(
    source_namespace: &str,
    ns: &str,
    s: &k8s_openapi::api::core::v1::Secret,
) -> (
    crate::model::records::ObjectKey,
    crate::model::records::ReplicaRecord,
) {
    use crate::model::records::{ReplicaRecord, as_written_by_us};
    let mut c =
        as_written_by_us(crate::model::replica::Replica::render(s, source_namespace).to_secret(ns));
    c.metadata.uid = Some(format!("uid-{ns}"));
    c.metadata.resource_version = Some("7".into());
    ReplicaRecord::from_meta(
        crate::model::kinds::Kind::Secret,
        &c.metadata,
        source_namespace,
    )
    .unwrap()
}
