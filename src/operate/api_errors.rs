//! The one place an API error is put into words, for the log, Events,
//! `/readyz`, `status` and error values: the API's code and reason, never its
//! message (a server message may quote the object it rejects, and a Secret's
//! value must never reach a log line); for a transport error its cause chain,
//! which carries no object content.

use kube::runtime::watcher;

/// A watch error in a few words, for the log and `/readyz`: the API's code
/// and reason, never its message (which may quote an object).
pub fn describe_watch(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e) => format!("list failed: {}", describe(e)),
        watcher::Error::WatchStartFailed(e) => {
            format!("watch failed to start: {}", describe(e))
        }
        watcher::Error::WatchError(s) => format!("watch error: {} {}", s.code, s.reason),
        watcher::Error::WatchFailed(e) => format!("watch stream failed: {}", describe(e)),
        watcher::Error::NoResourceVersion => "no resourceVersion in the watch result".into(),
    }
}

/// A request error in a few words: for an API error its code and reason
/// only (a server message may quote the object it rejects); for a transport
/// error its cause chain, which carries no object content.
pub fn describe(e: &kube::Error) -> String {
    if let kube::Error::Api(s) = e {
        return format!("{} {}", s.code, s.reason);
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text.replace(['\n', '\r'], " ")
}
