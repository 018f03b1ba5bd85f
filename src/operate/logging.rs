//! The log subscriber: `RUST_LOG` (or `DEBUG`) picks the levels, and the
//! caps below hold whatever it says.

use tracing::Level;
use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};

/// Dependencies that could print raw HTTP traffic (request and response
/// bodies, so Secret values) at debug or trace. They never log below `info`,
/// whatever `RUST_LOG` says (`trace`, `TRACE`, `hyper=trace`, a bare target).
const CAPPED: &[&str] = &[
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tower",
    "tower_http",
    "kube_client",
];

/// Whether an event of `target` at `level` is held back by the caps.
pub fn capped(target: &str, level: &Level) -> bool {
    *level > Level::INFO
        && CAPPED.iter().any(|c| {
            target
                .strip_prefix(c)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// A subscriber writing to `writer` with the levels of `filter` (RUST_LOG
/// syntax), and the caps applied as a separate filter: they can only ever
/// lower what `filter` lets through, never raise it.
pub fn subscriber<W>(
    filter: &str,
    writer: W,
    ansi: bool,
    json: bool,
) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let env = EnvFilter::builder().parse_lossy(filter);
    let caps = filter_fn(|meta| !capped(meta.target(), meta.level()));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let layer = if json {
        fmt.json().with_filter(caps).boxed()
    } else {
        fmt.with_filter(caps).boxed()
    };
    tracing_subscriber::registry().with(env).with(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn logged(filter: &str) -> String {
        let buf = Buf::default();
        let sub = subscriber(filter, buf.clone(), false, false);
        tracing::subscriber::with_default(sub, || {
            tracing::trace!(target: "hyper::proto::h1::io", "hyper-trace");
            tracing::debug!(target: "h2::codec", "h2-debug");
            tracing::debug!(target: "kube_client::client", "kube-debug");
            tracing::info!(target: "hyper::client", "hyper-info");
            tracing::trace!(target: "push_to_k8s::targets::cluster::writer", "ours-trace");
            tracing::trace!(target: "hyperactive", "not-capped");
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    // Issue 7, defect 11: the caps hold whatever RUST_LOG says.
    #[test]
    fn log_caps_hold_whatever_rust_log_says() {
        for filter in [
            "trace",
            "TRACE",
            "hyper=trace,h2=trace,kube_client=trace",
            "hyper",
            "Debug",
            "h2=TRACE,trace",
        ] {
            let out = logged(filter);
            for hidden in ["hyper-trace", "h2-debug", "kube-debug"] {
                assert!(
                    !out.contains(hidden),
                    "RUST_LOG={filter}: {hidden} logged:\n{out}"
                );
            }
            assert!(
                out.contains("hyper-info"),
                "RUST_LOG={filter}: info of a capped target is kept"
            );
        }
        // The caps never raise a level.
        let out = logged("warn");
        assert!(!out.contains("hyper-info"), "{out}");
        // Our own traces follow RUST_LOG.
        assert!(logged("trace").contains("ours-trace"));
        assert!(logged("TRACE").contains("not-capped"));
        assert!(!logged("info").contains("ours-trace"));
    }
}
