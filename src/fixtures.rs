//! The mock API server of the unit tests that pin exact API calls (test
//! builds only): a kube client whose every request reaches the test and
//! nothing else, the answers the API server gives, and the named
//! conversations more than one test module has (an Event posted, a LIST by
//! name, a failure status).
//!
//! A test drives both ends: the code under test on the client, the test on
//! the [`ApiServer`], answering each request it expects and asserting at the
//! end that no other came ([`ApiServer::done`]).

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
