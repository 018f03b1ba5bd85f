//! A registration's kubeconfig: read from the Secret, checked, turned into a
//! client. Pure apart from [`client`].
//!
//! A registration Secret is written by whoever may write Secrets in the
//! source namespace, and the controller acts on it with its own process.
//! So a kubeconfig may only carry what it needs inline: the server, its CA
//! (`certificate-authority-data`), and a token, a client certificate and key
//! (`client-certificate-data`, `client-key-data`) or a user name and
//! password. Anything that would make the controller read one of its own
//! files (`certificate-authority`, `tokenFile`, `client-certificate`,
//! `client-key`: its own ServiceAccount token, say, sent to any server) or
//! run a program (`exec`, `auth-provider`) is refused, with the field named.
//!
//! No error here quotes the kubeconfig: a parse error is reported by line and
//! column only (a YAML library's message can quote the value it choked on).

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why a registration's kubeconfig is not used: value-free, for an Event,
/// a log line and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the Secret has no data key {0:?}")]
    Missing(&'static str),
    #[error("the kubeconfig is not UTF-8 text")]
    NotText,
    #[error("the kubeconfig does not parse as a kubeconfig{0}")]
    Parse(String),
    #[error(
        "the kubeconfig uses {0}, which would make push-to-k8s read its own files or run a program; only inline credentials are accepted (certificate-authority-data, token, client-certificate-data and client-key-data)"
    )]
    Field(&'static str),
    #[error("the kubeconfig has no current context, or its context names no cluster or user")]
    NoContext,
    #[error("the kubeconfig cannot be used: {0}")]
    Unusable(String),
}

/// The kubeconfig in `data` (a Secret's data) under `key`, checked.
pub fn parse(data: Option<&[u8]>, key: &'static str) -> Result<Kubeconfig, Refused> {
    let bytes = data.ok_or(Refused::Missing(key))?;
    let text = std::str::from_utf8(bytes).map_err(|_| Refused::NotText)?;
    let config = Kubeconfig::from_yaml(text).map_err(|e| Refused::Parse(locate(&e)))?;
    check(&config)?;
    Ok(config)
}

/// Where a parse error is, never what it quotes: ` at line L column C`
/// when the message has it (the YAML library's message can go on to quote
/// the input), else nothing.
fn locate(e: &kube::config::KubeconfigError) -> String {
    let text = e.to_string();
    let number = |s: &str| -> Option<String> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        (!digits.is_empty()).then_some(digits)
    };
    let Some(at) = text.find("line ") else {
        return String::new();
    };
    let rest = &text[at + "line ".len()..];
    let Some(line) = number(rest) else {
        return String::new();
    };
    let column = rest[line.len()..].strip_prefix(" column ").and_then(number);
    match column {
        Some(column) => format!(" at line {line} column {column}"),
        None => format!(" at line {line}"),
    }
}

/// Only inline credentials, and a current context that names a cluster and
/// a user.
pub fn check(config: &Kubeconfig) -> Result<(), Refused> {
    for named in &config.clusters {
        let Some(c) = &named.cluster else { continue };
        if c.certificate_authority.is_some() {
            return Err(Refused::Field("certificate-authority (a file)"));
        }
    }
    for named in &config.auth_infos {
        let Some(a) = &named.auth_info else { continue };
        let refused = [
            (a.exec.is_some(), "exec (a program)"),
            (a.auth_provider.is_some(), "auth-provider (a plugin)"),
            (a.token_file.is_some(), "tokenFile (a file)"),
            (
                a.client_certificate.is_some(),
                "client-certificate (a file)",
            ),
            (a.client_key.is_some(), "client-key (a file)"),
        ];
        if let Some((_, field)) = refused.iter().find(|(used, _)| *used) {
            return Err(Refused::Field(field));
        }
    }
    let current = config
        .current_context
        .as_deref()
        .ok_or(Refused::NoContext)?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .ok_or(Refused::NoContext)?;
    if context.cluster.is_empty() || context.user.as_deref().is_none_or(str::is_empty) {
        return Err(Refused::NoContext);
    }
    Ok(())
}

/// A client for the checked kubeconfig's current context.
pub async fn client(config: Kubeconfig) -> Result<kube::Client, Refused> {
    Ok(clients(config).await?.requests)
}

/// How long a request to a remote API server may go unanswered (connect,
/// send, or wait for the next bytes of the reply) before it fails: a
/// cluster that hangs fails its requests instead of holding its task.
/// (Kept here, for the remote clients only.)
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// The same bound for a watch's connection: a watch waits on the server by
/// design (the server ends it after at most `timeoutSeconds`, 290 s, and
/// sends bookmarks meanwhile), so its reads may wait longer.
pub const WATCH_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(330);

/// The two clients of one remote cluster: one for requests (every read and
/// write but watches) with [`REQUEST_TIMEOUT`], one for its watches. Both
/// also carry the deadline every client of ours has (`kube_client`: a
/// non-watch request's whole answer, a watch's headers).
pub struct Clients {
    pub requests: kube::Client,
    pub watches: kube::Client,
}

pub async fn clients(config: Kubeconfig) -> Result<Clients, Refused> {
    let cfg = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .map_err(|e| Refused::Unusable(kind_of(&e)))?;
    let build = |read: std::time::Duration| {
        let mut cfg = cfg.clone();
        cfg.connect_timeout = Some(std::time::Duration::from_secs(10));
        cfg.read_timeout = Some(read);
        cfg.write_timeout = Some(REQUEST_TIMEOUT);
        crate::operate::kube_client::build(cfg)
            .map_err(|e| Refused::Unusable(crate::operate::api_errors::describe(&e)))
    };
    Ok(Clients {
        requests: build(REQUEST_TIMEOUT)?,
        watches: build(WATCH_READ_TIMEOUT)?,
    })
}

/// The API server a kubeconfig's current context names, normalised for
/// comparison (scheme and host lower-cased, no trailing `/`, the default
/// port made explicit): two registrations of one server are refused.
pub fn server(config: &Kubeconfig) -> Option<String> {
    let current = config.current_context.as_deref()?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == current)?
        .context
        .as_ref()?;
    let server = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)?
        .cluster
        .as_ref()?
        .server
        .as_deref()?;
    let uri: http::Uri = server.trim().parse().ok()?;
    let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "http" { 80 } else { 443 });
    let path = uri.path().trim_end_matches('/');
    Some(format!("{scheme}://{host}:{port}{path}"))
}

fn kind_of(e: &kube::config::KubeconfigError) -> String {
    use kube::config::KubeconfigError as E;
    match e {
        E::LoadContext(_) | E::LoadClusterOfContext(_) => {
            "its current context names a cluster or user it does not define".into()
        }
        E::ParseClusterUrl(_) => "the cluster's server is not a URL".into(),
        E::ParseCertificates(_) => "a certificate does not parse".into(),
        _ => "its credentials or certificates cannot be loaded".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: v1
kind: Config
clusters:
- name: east
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: Zm9v
users:
- name: pusher
  user:
    token: not-a-real-token
contexts:
- name: east
  context: {cluster: east, user: pusher}
current-context: east
";

    fn with(replace: &str, by: &str) -> String {
        GOOD.replace(replace, by)
    }

    // Issue 16, item 5: one server, however its URL is spelled.
    #[test]
    fn the_server_url_is_normalised() {
        let of = |server: &str| server_of(&GOOD.replace("https://127.0.0.1:6443", server));
        let want = Some("https://127.0.0.1:6443".to_string());
        for same in [
            "https://127.0.0.1:6443",
            "https://127.0.0.1:6443/",
            "HTTPS://127.0.0.1:6443",
        ] {
            assert_eq!(of(same), want, "{same}");
        }
        assert_eq!(of("https://10.0.0.1"), Some("https://10.0.0.1:443".into()));
        assert_eq!(
            of("https://Example.test/k8s/"),
            Some("https://example.test:443/k8s".into())
        );
        assert_ne!(of("https://127.0.0.1:6444"), want);
        assert_ne!(
            of("https://localhost:6443"),
            want,
            "told apart by identity at connect"
        );
    }

    fn server_of(text: &str) -> Option<String> {
        server(&parse(Some(text.as_bytes()), "kubeconfig").unwrap())
    }

    #[test]
    fn inline_credentials_are_accepted() {
        assert!(parse(Some(GOOD.as_bytes()), "kubeconfig").is_ok());
    }

    #[test]
    fn files_programs_and_plugins_are_refused_with_the_field_named() {
        let cases = [
            (
                with(
                    "certificate-authority-data: Zm9v",
                    "certificate-authority: /etc/ca.crt",
                ),
                "certificate-authority",
            ),
            (
                with(
                    "token: not-a-real-token",
                    "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
                ),
                "tokenFile",
            ),
            (
                with(
                    "token: not-a-real-token",
                    "client-certificate: /tmp/c.crt\n    client-key-data: Zm9v",
                ),
                "client-certificate",
            ),
            (
                with("token: not-a-real-token", "client-key: /tmp/c.key"),
                "client-key",
            ),
            (
                with(
                    "token: not-a-real-token",
                    "exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: [-c, id]}",
                ),
                "exec",
            ),
            (
                with("token: not-a-real-token", "auth-provider: {name: gcp}"),
                "auth-provider",
            ),
        ];
        for (text, field) in cases {
            let err = parse(Some(text.as_bytes()), "kubeconfig").unwrap_err();
            assert!(
                matches!(&err, Refused::Field(f) if f.starts_with(field)),
                "{field}: {err:?}"
            );
        }
    }

    #[test]
    fn a_missing_or_broken_kubeconfig_is_refused_without_quoting_it() {
        let refused = |bytes: Option<&[u8]>| parse(bytes, "kubeconfig").unwrap_err();
        assert_eq!(refused(None), Refused::Missing("kubeconfig"));
        assert_eq!(refused(Some(&[0xff, 0xfe])), Refused::NotText);
        // A value that does not fit its field: the message must not quote it.
        let broken = with(
            "current-context: east",
            "current-context: [s3cr3t-value-here]",
        );
        let err = parse(Some(broken.as_bytes()), "kubeconfig").unwrap_err();
        assert!(matches!(err, Refused::Parse(_)), "{err:?}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(err.to_string().ends_with(" at line 15 column 18"), "{err}");
        let no_context = with("current-context: east", "current-context: west");
        assert_eq!(refused(Some(no_context.as_bytes())), Refused::NoContext);
    }
}
