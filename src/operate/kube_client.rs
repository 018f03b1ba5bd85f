//! Building a Kubernetes client: every request but a watch has a timeout.
//!
//! A request that hangs (an API server, a proxy or a network that stops
//! answering) must not hold a task forever: a write, a list, a Lease renewal.
//! kube's own `read_timeout` is a socket read timeout: it would apply to
//! watches too (a quiet watch reads nothing for minutes) and counts the time
//! a pooled connection sat idle. So instead a layer on top of kube's stack
//! bounds each request by [`REQUEST_TIMEOUT`]:
//! - any request but a watch: its answer, headers *and* body, within the
//!   timeout (the body is read here, which kube does anyway);
//! - a watch (`watch=true` or `watch=1` in the query): only its headers,
//!   which the API server sends at once; the stream that follows is long by
//!   design and guarded by the watcher's own idle timeout (the server-side
//!   `timeoutSeconds` plus a margin, [`crate::observe::watch::config`]).
//!
//! Used for the home cluster (the daemon, `status`, `plan`, the demo) and
//! for every remote cluster ([`crate::targets::remote`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Bytes;
use kube::client::{Body, ClientBuilder};
use tower::{BoxError, Layer, Service};

/// Longest a request (a watch: its headers) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for `config` whose requests are bounded by [`REQUEST_TIMEOUT`].
pub fn build(config: kube::Config) -> Result<kube::Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&Deadline(REQUEST_TIMEOUT))
        .build())
}

/// The layer: bounds each request by its duration (see the module).
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Duration);

impl<S> Layer<S> for Deadline {
    type Service = Bounded<S>;
    fn layer(&self, inner: S) -> Bounded<S> {
        Bounded {
            inner,
            limit: self.0,
        }
    }
}

pub struct Bounded<S> {
    inner: S,
    limit: Duration,
}

/// What a request that took too long fails with.
#[derive(Debug, thiserror::Error)]
#[error("the API server did not answer within {0:?}")]
pub struct TimedOut(Duration);

type Answer<B> = Response<Either<B, Full<Bytes>>>;

impl<S, B> Service<Request<Body>> for Bounded<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Answer<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Answer<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let watch = is_watch(request.uri());
        let limit = self.limit;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let exchange = async {
                let response = answer.await.map_err(Into::into)?;
                if watch {
                    return Ok(response.map(Either::Left));
                }
                let (parts, body) = response.into_parts();
                let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
                Ok(Response::from_parts(parts, Either::Right(Full::new(bytes))))
            };
            tokio::time::timeout(limit, exchange)
                .await
                .unwrap_or_else(|_| Err(Box::new(TimedOut(limit)) as BoxError))
        })
    }
}

/// A watch request: `watch=true` (or `1`) in its query.
fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::StreamBody;
    use http_body_util::combinators::BoxBody;
    use hyper::body::Frame;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, WatchParams};
    use tokio::sync::mpsc;
    use tower_test::mock::{self, Handle};

    type Streamed = BoxBody<Bytes, BoxError>;
    type Mock = Handle<Request<Body>, Response<Streamed>>;

    fn client() -> (kube::Client, Mock) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Streamed>>();
        let service = Deadline(Duration::from_secs(30)).layer(service);
        (kube::Client::new(service, "default"), handle)
    }

    /// A response body fed line by line through the returned sender.
    fn streamed() -> (mpsc::Sender<Bytes>, Streamed) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let frames = futures::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(chunk)), rx))
        });
        (tx, BoxBody::new(StreamBody::new(frames)))
    }

    #[test]
    fn watches_are_told_by_their_query() {
        let w = |u: &str| is_watch(&u.parse().unwrap());
        assert!(w("/api/v1/secrets?watch=true&resourceVersion=5"));
        assert!(w("/api/v1/namespaces/a/secrets?labelSelector=x&watch=1"));
        assert!(!w("/api/v1/secrets?limit=500"));
        assert!(!w("/api/v1/namespaces/watch/secrets/watch"));
        assert!(!w("/api/v1/secrets?labelSelector=watch%3Dtrue"));
    }

    // A GET that never answers fails after the timeout, and so does one
    // whose headers came but whose body stops.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_hangs_fails_after_the_timeout() {
        let (client, mut handle) = client();
        let api: Api<Secret> = Api::namespaced(client, "ns");
        let server = tokio::spawn(async move {
            let (_, never) = handle.next_request().await.expect("a request");
            let (_, send) = handle.next_request().await.expect("a request");
            let (tx, body) = streamed();
            send.send_response(Response::new(body));
            std::future::pending::<()>().await;
            drop((never, tx));
        });
        for what in ["no answer", "a body that stops"] {
            let started = tokio::time::Instant::now();
            let e = api.get("s").await.expect_err(what);
            assert!(
                crate::operate::api_errors::describe(&e).contains("did not answer within 30s"),
                "{what}: {e}"
            );
            assert_eq!(started.elapsed(), Duration::from_secs(30), "{what}");
        }
        server.abort();
    }

    // A watch stays open far longer than the timeout.
    #[tokio::test(start_paused = true)]
    async fn a_watch_is_not_cut_by_the_timeout() {
        let (client, mut handle) = client();
        let api: Api<Secret> = Api::namespaced(client, "ns");
        let (tx, body) = streamed();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a request");
            assert!(is_watch(req.uri()), "{}", req.uri());
            send.send_response(Response::new(body));
            handle
        });
        let mut stream = api
            .watch(&WatchParams::default().timeout(240), "0")
            .await
            .expect("the watch opens")
            .boxed();
        tokio::time::sleep(Duration::from_secs(200)).await;
        let event = serde_json::json!({"type": "ADDED", "object": {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "late", "namespace": "ns", "resourceVersion": "6"}}});
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        tx.send(Bytes::from(line)).await.unwrap();
        let got = stream
            .next()
            .await
            .expect("an event")
            .expect("not an error");
        assert!(
            matches!(got, kube::api::WatchEvent::Added(ref s) if s.metadata.name.as_deref() == Some("late")),
            "{got:?}"
        );
        drop(server);
    }
}
