//! A small Vault client: KV v2 reads and check-and-set writes, with a token from
//! Vault's Kubernetes auth (or a token, for development).
//!
//! Built on the HTTP stack kube already uses (hyper, hyper-rustls with ring), so
//! it adds no crate to the build. What it never does: put a token, a JWT, a
//! secret value or any response body into an error, a log line or a `Debug`
//! output. Vault's error bodies can echo what was sent, so answers are
//! classified by status code only; [`Error`]'s messages are fixed text, status
//! codes, paths and transport errors.
//!
//! Token lifecycle: one login at a time (a tokio mutex around the token);
//! the token is replaced when less than a third of its lease remains, so no
//! request goes out with a token about to expire; a request answered 403 is
//! sent once more after a fresh login (the token may have been revoked, or
//! Vault restarted without its tokens).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

/// The largest answer read from Vault; a KV v2 entry is at most about 1 MiB
/// by default (Vault's `max_request_size` is 32 MiB, but Kubernetes Secrets
/// are at most 1 MiB).
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// How a [`VaultClient`] gets its token.
#[derive(Clone)]
pub enum Auth {
    /// Vault's Kubernetes auth: POST /v1/auth/{mount}/login {role, jwt}; the JWT is read
    /// fresh from `jwt_path` at every login (projected tokens rotate).
    Kubernetes {
        mount: String,
        role: String,
        jwt_path: PathBuf,
    },
    /// A token read from a file at every (re)login, for development.
    TokenFile(PathBuf),
    /// A fixed token (development; never logged, never in Debug output).
    Token(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => f
                .debug_struct("Kubernetes")
                .field("mount", mount)
                .field("role", role)
                .field("jwt_path", jwt_path)
                .finish(),
            Auth::TokenFile(path) => f.debug_tuple("TokenFile").field(path).finish(),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// Where Vault is and how to talk to it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `http://127.0.0.1:8200` or `https://vault.example:8200` (a trailing slash is fine).
    pub addr: String,
    pub auth: Auth,
    /// A PEM bundle of the CAs to trust, with an `https` address; `None`: the
    /// platform's roots (rustls-platform-verifier, as kube does).
    pub ca_cert: Option<PathBuf>,
    /// The KV v2 mount, e.g. `secret`.
    pub kv_mount: String,
    /// The limit for one HTTP request (connect, send, read the answer).
    pub timeout: Duration,
}

/// The metadata of a KV v2 entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub current_version: u64,
    /// custom_metadata (string map; empty when none)
    pub custom: BTreeMap<String, String>,
    /// the current version is soft-deleted or destroyed (or there is no version at all)
    pub current_deleted: bool,
}

/// Why a Vault call failed. Never carries a token, a JWT, a value or a
/// response body.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings, or a KV path, are not usable.
    #[error("Vault client configuration: {0}")]
    Config(String),
    /// No connection to Vault, or it broke (refused, DNS, TLS handshake, reset).
    #[error("cannot reach Vault: {0}")]
    Unreachable(String),
    /// One request took longer than the configured timeout.
    #[error("Vault did not answer within the request timeout")]
    Timeout,
    /// 403, also after a fresh login: the role's policy does not allow this.
    #[error(
        "Vault denied the request (403 after a fresh login): the role's policy does not allow it"
    )]
    PermissionDenied,
    /// A check-and-set write found another current version than the one given.
    #[error(
        "Vault refused the write: check-and-set mismatch (the entry changed since it was read)"
    )]
    CasMismatch,
    /// 404 on a write: no such mount or route.
    #[error("Vault answered 404 Not Found: is the KV v2 mount right?")]
    NotFound,
    /// 429 or 5xx (sealed, standby, overloaded, internal error): try later.
    #[error("Vault is unavailable (HTTP {0})")]
    Unavailable(u16),
    /// Any other unexpected status.
    #[error("Vault answered HTTP {0}")]
    Status(u16),
    /// Could not log in.
    #[error("Vault login failed: {0}")]
    Login(#[from] LoginError),
    /// A 2xx answer that is not what Vault sends (says which part, never the body).
    #[error("unexpected answer from Vault: {0}")]
    BadResponse(&'static str),
    /// A write answered 403 was not sent again after the fresh login: the
    /// write gate closed meanwhile (see [`VaultClient::resend_only_while`]).
    #[error("not sent again after a fresh login: the write gate closed")]
    GateClosed,
}

/// Why a login failed (Vault unreachable or unavailable during a login is
/// [`Error::Unreachable`], [`Error::Timeout`] or [`Error::Unavailable`]).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("cannot read the {what} file {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} file {} is empty", path.display())]
    Empty { what: &'static str, path: PathBuf },
    #[error("the token contains characters not allowed in an HTTP header")]
    BadToken,
    /// Vault answered the Kubernetes login with this 4xx status: a wrong
    /// role, a ServiceAccount or namespace the role is not bound to, a JWT
    /// Vault does not accept, or the auth method not configured.
    #[error(
        "Vault refused the login (HTTP {status}): check the role, the ServiceAccount and namespace it is bound to, and the auth mount"
    )]
    Refused { status: u16 },
    /// Vault answered the token lookup with this 4xx status: the token
    /// expired, was revoked, or is unknown to this Vault.
    #[error("Vault refused the token (HTTP {status}): expired, revoked or unknown")]
    TokenRefused { status: u16 },
}

impl Error {
    /// Whether the same call may succeed later without any change: Vault was
    /// unreachable, slow or unavailable. A [`Error::CasMismatch`] is not: read again first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable(_) | Error::Timeout | Error::Unavailable(_)
        )
    }

    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Unreachable(_) => "unreachable",
            Error::Timeout => "timeout",
            Error::PermissionDenied => "permission_denied",
            Error::CasMismatch => "cas_mismatch",
            Error::NotFound => "not_found",
            Error::Unavailable(_) => "unavailable",
            Error::Status(_) => "status",
            Error::Login(_) => "login",
            Error::BadResponse(_) => "bad_response",
            Error::GateClosed => "gate_closed",
        }
    }
}

/// Whether `p` is a usable KV path (relative to the mount, e.g.
/// `push-to-k8s/team-a/db`); the reason when not. Accepted paths need no
/// percent-encoding.
pub fn valid_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("the path is empty".into());
    }
    if let Some(c) = p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
    {
        return Err(format!(
            "the path contains {c:?}; allowed are letters, digits, '.', '_', '-' and '/'"
        ));
    }
    if p.starts_with('/') || p.ends_with('/') {
        return Err("the path starts or ends with '/'".into());
    }
    if p.contains("//") {
        return Err("the path contains '//'".into());
    }
    if p.split('/').any(|s| s == "." || s == "..") {
        return Err("the path contains a '.' or '..' segment".into());
    }
    Ok(())
}

type Https = HttpsConnector<HttpConnector>;

/// A Vault client; cheap to clone (one connection pool and one token, shared).
#[derive(Clone)]
pub struct VaultClient {
    inner: Arc<Inner>,
}

/// See [`VaultClient::resend_only_while`].
type ResendGate = Box<dyn Fn() -> bool + Send + Sync>;

struct Inner {
    /// Asked before a write answered 403 is sent again after a fresh login
    /// (unset: always sent again).
    resend_while: std::sync::OnceLock<ResendGate>,
    http: HyperClient<Https, Full<Bytes>>,
    /// The address without a trailing slash.
    base: String,
    auth: Login,
    kv_mount: String,
    timeout: Duration,
    session: tokio::sync::Mutex<Option<Session>>,
    logins: AtomicU64,
    last_login_failed: AtomicBool,
    generation: AtomicU64,
}

/// [`Auth`] with the fixed token wrapped so that it is zeroed on drop.
enum Login {
    Kubernetes {
        mount: String,
        role: String,
        jwt_path: PathBuf,
    },
    TokenFile(PathBuf),
    Token(Arc<SecretString>),
}

/// A token in use.
struct Session {
    token: Arc<SecretString>,
    /// Which login gave it: a 403 clears the session only if nobody logged in since.
    generation: u64,
    /// Taken before the login request was sent: the lease runs from about then.
    obtained: Instant,
    /// `None`: no expiry (a root token).
    lease: Option<Duration>,
}

impl Session {
    /// Whether the token can still be used at `now`: more than a third of its lease remains.
    fn fresh(&self, now: Instant) -> bool {
        match self.lease {
            None => true,
            Some(lease) => now.saturating_duration_since(self.obtained) < lease * 2 / 3,
        }
    }
}

fn lease(seconds: u64) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.inner.auth {
            Login::Kubernetes { mount, role, .. } => {
                format!("kubernetes (mount {mount}, role {role})")
            }
            Login::TokenFile(path) => format!("token file {}", path.display()),
            Login::Token(_) => "token (redacted)".to_string(),
        };
        f.debug_struct("VaultClient")
            .field("addr", &self.inner.base)
            .field("kv_mount", &self.inner.kv_mount)
            .field("auth", &auth)
            .field("logins", &self.logins())
            .finish()
    }
}

/// One answer: its status and its body (never shown anywhere).
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    fn json<T: for<'de> Deserialize<'de>>(&self, what: &'static str) -> Result<T, Error> {
        // serde's messages can quote the input: never passed on.
        serde_json::from_slice(&self.body).map_err(|_| Error::BadResponse(what))
    }
}

/// A non-2xx status as an error (403 is handled before, by the caller).
fn status_error(status: StatusCode) -> Error {
    match status.as_u16() {
        403 => Error::PermissionDenied,
        404 => Error::NotFound,
        s @ (412 | 429 | 500..=599) => Error::Unavailable(s),
        s => Error::Status(s),
    }
}

/// A transport error with its causes, e.g. "client error (Connect): tcp
/// connect error: Connection refused (os error 111)". Transport errors never
/// contain request headers or bodies.
fn transport_detail(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

fn config(what: impl Into<String>) -> Error {
    Error::Config(what.into())
}

/// The base address: http or https, a host, no user info, query or fragment.
fn base_address(addr: &str) -> Result<(String, bool), Error> {
    let trimmed = addr.trim();
    let uri: Uri = trimmed
        .parse()
        .map_err(|_| config(format!("the Vault address {trimmed:?} is not a URL")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(config(format!(
                "the Vault address {trimmed:?} must start with http:// or https://"
            )));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(config(format!("the Vault address {trimmed:?} has no host")));
    };
    if authority.as_str().contains('@') {
        // Not echoed: user info may be a password.
        return Err(config(
            "the Vault address must not contain user info (user@)",
        ));
    }
    if uri.query().is_some() || trimmed.contains('#') {
        return Err(config(format!(
            "the Vault address {trimmed:?} must not have a query or fragment"
        )));
    }
    // A path prefix (a proxy in front of Vault) is kept, without its trailing slash.
    let base = format!(
        "{}://{authority}{}",
        if https { "https" } else { "http" },
        uri.path().trim_end_matches('/')
    );
    Ok((base, https))
}

/// The trusted roots from a PEM bundle.
fn root_store(path: &Path) -> Result<rustls::RootCertStore, Error> {
    let pem = std::fs::read(path).map_err(|e| {
        config(format!(
            "cannot read the Vault CA bundle {}: {e}",
            path.display()
        ))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            config(format!(
                "the Vault CA bundle {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
        roots.add(cert).map_err(|e| {
            config(format!(
                "the Vault CA bundle {} holds a certificate that cannot be used: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(config(format!(
            "the Vault CA bundle {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn tls_config(https: bool, ca_cert: Option<&Path>) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config(format!("TLS setup: {e}")))?;
    let config_ = match ca_cert {
        Some(path) => builder.with_root_certificates(root_store(path)?),
        // Plain http: TLS is never used; no trust store needed.
        None if !https => builder.with_root_certificates(rustls::RootCertStore::empty()),
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| config(format!("TLS setup with the platform's roots: {e}")))?
        }
    };
    Ok(config_.with_no_client_auth())
}

impl VaultClient {
    /// Checks the settings and reads the CA bundle; no request is sent.
    pub fn new(settings: Settings) -> Result<VaultClient, Error> {
        let (base, https) = base_address(&settings.addr)?;
        if settings.ca_cert.is_some() && !https {
            return Err(config(format!(
                "a CA bundle is given but the Vault address {base:?} is not https"
            )));
        }
        valid_path(&settings.kv_mount)
            .map_err(|why| config(format!("the KV mount {:?}: {why}", settings.kv_mount)))?;
        if settings.timeout.is_zero() {
            return Err(config("the request timeout is zero"));
        }
        let auth = match settings.auth {
            Auth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                valid_path(&mount)
                    .map_err(|why| config(format!("the Kubernetes auth mount {mount:?}: {why}")))?;
                if role.trim().is_empty() {
                    return Err(config("the Vault role is empty"));
                }
                Login::Kubernetes {
                    mount,
                    role,
                    jwt_path,
                }
            }
            Auth::TokenFile(path) => Login::TokenFile(path),
            Auth::Token(token) => {
                if token.trim().is_empty() {
                    return Err(config("the Vault token is empty"));
                }
                Login::Token(Arc::new(SecretString::from(token.trim().to_string())))
            }
        };

        let tls = tls_config(https, settings.ca_cert.as_deref())?;
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder = if https {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        let connector = builder.enable_http1().wrap_connector(connector);
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);

        Ok(VaultClient {
            inner: Arc::new(Inner {
                resend_while: std::sync::OnceLock::new(),
                http,
                base,
                auth,
                kv_mount: settings.kv_mount,
                timeout: settings.timeout,
                session: tokio::sync::Mutex::new(None),
                logins: AtomicU64::new(0),
                last_login_failed: AtomicBool::new(false),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// Log in now (or make sure the token is valid). Every operation calls this itself.
    ///
    /// With a token (fixed or from a file) this looks the token up
    /// (`auth/token/lookup-self`, allowed by Vault's `default` policy).
    /// A write answered 403 (the token revoked or expired early) is sent
    /// again after a fresh login only while `open` says so: the writer's
    /// gate, asked before the first send, is asked again before the second
    /// ([`Error::GateClosed`] otherwise). Set once; later calls are ignored.
    pub fn resend_only_while(&self, open: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.inner.resend_while.set(Box::new(open));
    }

    pub async fn ensure_login(&self) -> Result<(), Error> {
        self.token().await.map(|_| ())
    }

    /// GET /v1/{mount}/metadata/{path}; Ok(None) on 404.
    pub async fn read_metadata(&self, path: &str) -> Result<Option<Metadata>, Error> {
        let api = self.kv("metadata", path)?;
        let answer = self.call(Method::GET, &api, None).await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let m: MetadataAnswer =
                    answer.json("KV metadata not as KV v2 gives it (is the mount KV v2?)")?;
                Ok(Some(m.data.into_metadata(now_unix())))
            }
            s => Err(status_error(s)),
        }
    }

    /// POST /v1/{mount}/metadata/{path} {"custom_metadata": {...}} (creates the
    /// metadata entry if absent; replaces its custom metadata).
    pub async fn write_metadata(
        &self,
        path: &str,
        custom: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let api = self.kv("metadata", path)?;
        let body = json!({ "custom_metadata": custom });
        let answer = self.call(Method::POST, &api, Some(body)).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(status_error(answer.status))
        }
    }

    /// POST /v1/{mount}/data/{path} {"options":{"cas":cas},"data":{...}}: returns the new version.
    /// cas = 0 means "only if no version exists". A CAS mismatch is [`Error::CasMismatch`].
    pub async fn write_data(
        &self,
        path: &str,
        data: &BTreeMap<String, String>,
        cas: u64,
    ) -> Result<u64, Error> {
        let api = self.kv("data", path)?;
        let body = json!({ "options": { "cas": cas }, "data": data });
        let answer = self.call(Method::POST, &api, Some(body)).await?;
        match answer.status {
            s if s.is_success() => {
                let a: WriteAnswer =
                    answer.json("a KV write without a version (is the mount KV v2?)")?;
                Ok(a.data.version)
            }
            StatusCode::BAD_REQUEST if mentions_cas(&answer.body) => Err(Error::CasMismatch),
            s => Err(status_error(s)),
        }
    }

    /// GET /v1/{mount}/data/{path}: the current version's data and its
    /// version; Ok(None) on 404 (also when the current version is deleted).
    /// A value that is not a JSON string (not written by this client) comes
    /// back as its JSON text.
    pub async fn read_data(
        &self,
        path: &str,
    ) -> Result<Option<(BTreeMap<String, String>, u64)>, Error> {
        let api = self.kv("data", path)?;
        let answer = self.call(Method::GET, &api, None).await?;
        match answer.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let a: ReadAnswer =
                    answer.json("a KV read without data and version (is the mount KV v2?)")?;
                let Some(data) = a.data.data else {
                    return Ok(None);
                };
                let values = data
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => (k, s),
                        other => (k, other.to_string()),
                    })
                    .collect();
                Ok(Some((values, a.data.metadata.version)))
            }
            s => Err(status_error(s)),
        }
    }

    /// DELETE /v1/{mount}/metadata/{path}: every version and the metadata.
    /// Deleting what does not exist succeeds.
    pub async fn delete_all(&self, path: &str) -> Result<(), Error> {
        let api = self.kv("metadata", path)?;
        let answer = self.call(Method::DELETE, &api, None).await?;
        if answer.status.is_success() || answer.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(status_error(answer.status))
        }
    }

    /// How many logins were made (for a metric): Kubernetes logins, or token
    /// lookups with a token; failed ones included.
    pub fn logins(&self) -> u64 {
        self.inner.logins.load(Ordering::Relaxed)
    }

    /// Whether the last login failed (none yet: false).
    pub fn last_login_failed(&self) -> bool {
        self.inner.last_login_failed.load(Ordering::Relaxed)
    }

    /// The KV v2 mount.
    pub fn kv_mount(&self) -> &str {
        &self.inner.kv_mount
    }

    /// `/v1/{mount}/{kind}/{path}`, the path checked.
    fn kv(&self, kind: &str, path: &str) -> Result<String, Error> {
        valid_path(path).map_err(|why| config(format!("KV path {path:?}: {why}")))?;
        Ok(format!("/v1/{}/{kind}/{path}", self.inner.kv_mount))
    }

    /// A request with the token; on 403 once more after a fresh login.
    async fn call(&self, method: Method, api: &str, body: Option<Value>) -> Result<Answer, Error> {
        let body = match body {
            Some(v) => Bytes::from(serde_json::to_vec(&v).expect("a JSON value serialises")),
            None => Bytes::new(),
        };
        let (token, generation) = self.token().await?;
        let answer = self
            .send(method.clone(), api, Some(&token), body.clone())
            .await?;
        if answer.status != StatusCode::FORBIDDEN {
            return Ok(answer);
        }
        self.forget(generation).await;
        let (token, _) = self.token().await?;
        // The write's gate check came before the first send; a login round
        // trip lies between it and this one.
        if method != Method::GET && self.inner.resend_while.get().is_some_and(|open| !open()) {
            return Err(Error::GateClosed);
        }
        let answer = self.send(method, api, Some(&token), body).await?;
        if answer.status == StatusCode::FORBIDDEN {
            return Err(Error::PermissionDenied);
        }
        Ok(answer)
    }

    /// The current token, logging in first when there is none or it is
    /// about to expire. One login at a time: concurrent callers wait for it.
    async fn token(&self) -> Result<(Arc<SecretString>, u64), Error> {
        let mut session = self.inner.session.lock().await;
        if let Some(s) = session.as_ref().filter(|s| s.fresh(Instant::now())) {
            return Ok((s.token.clone(), s.generation));
        }
        *session = None;
        self.inner.logins.fetch_add(1, Ordering::Relaxed);
        let result = self.login().await;
        self.inner
            .last_login_failed
            .store(result.is_err(), Ordering::Relaxed);
        let new = result?;
        let out = (new.token.clone(), new.generation);
        *session = Some(new);
        Ok(out)
    }

    /// Drop the token of login `generation` (answered 403), unless a newer one replaced it.
    async fn forget(&self, generation: u64) {
        let mut session = self.inner.session.lock().await;
        if session.as_ref().is_some_and(|s| s.generation == generation) {
            *session = None;
        }
    }

    async fn login(&self) -> Result<Session, Error> {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let started = Instant::now();
        match &self.inner.auth {
            Login::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                let jwt = read_secret_file("ServiceAccount token (JWT)", jwt_path)?;
                let body = serde_json::to_vec(&json!({ "role": role, "jwt": jwt.expose_secret() }))
                    .expect("a JSON value serialises");
                let api = format!("/v1/auth/{mount}/login");
                let answer = self
                    .send(Method::POST, &api, None, Bytes::from(body))
                    .await?;
                login_status(answer.status, |status| LoginError::Refused { status })?;
                let a: LoginAnswer = answer.json("login")?;
                if a.auth.client_token.is_empty() {
                    return Err(Error::BadResponse("login without a client token"));
                }
                Ok(Session {
                    token: Arc::new(SecretString::from(a.auth.client_token)),
                    generation,
                    obtained: started,
                    lease: lease(a.auth.lease_duration),
                })
            }
            Login::TokenFile(path) => {
                let token = Arc::new(read_secret_file("Vault token", path)?);
                let ttl = self.lookup_self(&token).await?;
                Ok(Session {
                    token,
                    generation,
                    obtained: started,
                    lease: lease(ttl),
                })
            }
            Login::Token(token) => {
                self.lookup_self(token).await?;
                // A fixed token cannot be replaced: no point checking it again before a 403.
                Ok(Session {
                    token: token.clone(),
                    generation,
                    obtained: started,
                    lease: None,
                })
            }
        }
    }

    /// GET auth/token/lookup-self: the token's remaining TTL in seconds (0: none).
    async fn lookup_self(&self, token: &SecretString) -> Result<u64, Error> {
        let answer = self
            .send(
                Method::GET,
                "/v1/auth/token/lookup-self",
                Some(token),
                Bytes::new(),
            )
            .await?;
        login_status(answer.status, |status| LoginError::TokenRefused { status })?;
        let a: LookupAnswer = answer.json("token lookup")?;
        Ok(a.data.ttl)
    }

    /// One HTTP request, bounded by the timeout. Logs method, path, status
    /// and time taken at debug level; nothing else.
    async fn send(
        &self,
        method: Method,
        api: &str,
        token: Option<&SecretString>,
        body: Bytes,
    ) -> Result<Answer, Error> {
        let uri: Uri = format!("{}{api}", self.inner.base)
            .parse()
            .map_err(|_| config(format!("cannot form a URL for {api}")))?;
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("X-Vault-Request", "true");
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token.expose_secret())
                .map_err(|_| Error::Login(LoginError::BadToken))?;
            value.set_sensitive(true);
            request = request.header("X-Vault-Token", value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| config(format!("cannot form a request for {api}")))?;

        let started = Instant::now();
        let exchange = async {
            let response = self
                .inner
                .http
                .request(request)
                .await
                .map_err(|e| Error::Unreachable(transport_detail(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        Error::BadResponse("an answer larger than 8 MiB")
                    } else {
                        Error::Unreachable(transport_detail(&*e))
                    }
                })?
                .to_bytes();
            Ok::<_, Error>(Answer { status, body })
        };
        let result = tokio::time::timeout(self.inner.timeout, exchange)
            .await
            .unwrap_or(Err(Error::Timeout));
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(a) => {
                tracing::debug!(%method, path = api, status = a.status.as_u16(), elapsed_ms, "vault request")
            }
            Err(e) => {
                tracing::debug!(%method, path = api, reason = e.reason(), elapsed_ms, "vault request failed")
            }
        }
        result
    }
}

/// A login or token lookup answered: 2xx is fine, 429/5xx is Vault being
/// unavailable, any other status (400 bad role, 403 bad JWT or token) is
/// `refused` (the [`LoginError`] variant for that status).
fn login_status(status: StatusCode, refused: fn(u16) -> LoginError) -> Result<(), Error> {
    match status.as_u16() {
        200..=299 => Ok(()),
        s @ (412 | 429 | 500..=599) => Err(Error::Unavailable(s)),
        s => Err(Error::Login(refused(s))),
    }
}

/// Whether a 400 answer is KV v2's check-and-set refusal ("check-and-set
/// parameter did not match the current version"). Only looked at, never shown.
fn mentions_cas(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<String>,
    }
    serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.iter().any(|m| m.contains("check-and-set")))
        .unwrap_or(false)
}

/// A file's trimmed content, which must not be empty. Read without tokio's
/// `fs` (not enabled in this build): a token file is small and local.
fn read_secret_file(what: &'static str, path: &Path) -> Result<SecretString, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| LoginError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(LoginError::Empty {
            what,
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(SecretString::from(trimmed.to_string()))
}

fn now_unix() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

// ---- Vault's answers (only the fields used)

#[derive(Deserialize)]
struct LoginAnswer {
    auth: LoginAuth,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
}

#[derive(Deserialize)]
struct LookupAnswer {
    data: LookupData,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
}

#[derive(Deserialize)]
struct WriteAnswer {
    data: WriteData,
}

#[derive(Deserialize)]
struct WriteData {
    version: u64,
}

#[derive(Deserialize)]
struct ReadAnswer {
    data: ReadData,
}

#[derive(Deserialize)]
struct ReadData {
    data: Option<BTreeMap<String, Value>>,
    metadata: VersionInfo,
}

#[derive(Deserialize)]
struct MetadataAnswer {
    data: MetadataData,
}

#[derive(Deserialize)]
struct MetadataData {
    #[serde(default)]
    current_version: u64,
    #[serde(default)]
    custom_metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    versions: BTreeMap<String, VersionInfo>,
}

#[derive(Deserialize, Default)]
struct VersionInfo {
    #[serde(default)]
    version: u64,
    /// RFC 3339; empty when not deleted. May lie in the future (a mount's
    /// `delete_version_after`): deleted only once it has passed.
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

impl VersionInfo {
    fn deleted_at(&self, now_unix: i64) -> bool {
        if self.destroyed {
            return true;
        }
        if self.deletion_time.is_empty() {
            return false;
        }
        // An unreadable time counts as deleted: Vault's own format always parses.
        self.deletion_time
            .parse::<k8s_openapi::jiff::Timestamp>()
            .map(|t| t.as_second() <= now_unix)
            .unwrap_or(true)
    }
}

impl MetadataData {
    fn into_metadata(self, now_unix: i64) -> Metadata {
        let current_deleted = self.current_version == 0
            || self
                .versions
                .get(&self.current_version.to_string())
                .is_none_or(|v| v.deleted_at(now_unix));
        Metadata {
            current_version: self.current_version,
            custom: self.custom_metadata.unwrap_or_default(),
            current_deleted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const TOKEN: &str = "hvs.TOPSECRET-token-value";
    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.SECRET-jwt-payload.sig";
    const VALUE: &str = "SECRET-VALUE-hunter2";

    fn settings(addr: &str, auth: Auth) -> Settings {
        Settings {
            addr: addr.to_string(),
            auth,
            ca_cert: None,
            kv_mount: "secret".into(),
            timeout: Duration::from_secs(5),
        }
    }

    fn assert_clean(text: &str) {
        for secret in [TOKEN, JWT, VALUE, "TOPSECRET", "SECRET-jwt", "SECRET-VALUE"] {
            assert!(!text.contains(secret), "{secret:?} shown in {text:?}");
        }
    }

    fn assert_error_clean(e: &Error) {
        assert_clean(&e.to_string());
        assert_clean(&format!("{e:?}"));
        assert_clean(&format!("{e:#?}"));
    }

    #[test]
    fn paths() {
        for ok in ["a", "push-to-k8s/team-a/db", "a.b_c-d/E9", "a/.x/b..c"] {
            assert_eq!(valid_path(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("/a", "starts or ends"),
            ("a/", "starts or ends"),
            ("a//b", "'//'"),
            ("a/../b", "'..'"),
            ("..", "'..'"),
            ("a/./b", "'.'"),
            ("a b", "' '"),
            ("a?b", "'?'"),
            ("a%2fb", "'%'"),
            ("é", "'é'"),
            ("a#b", "'#'"),
        ] {
            let e = valid_path(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn debug_output_has_no_token() {
        let s = settings("http://127.0.0.1:1", Auth::Token(TOKEN.into()));
        assert_clean(&format!("{s:?}"));
        assert_clean(&format!("{s:#?}"));
        assert!(format!("{s:?}").contains("Token(<redacted>)"));
        let client = VaultClient::new(s).unwrap();
        assert_clean(&format!("{client:?}"));
        let k = Auth::Kubernetes {
            mount: "kubernetes".into(),
            role: "r".into(),
            jwt_path: "/var/run/token".into(),
        };
        assert!(format!("{k:?}").contains("/var/run/token"));
    }

    #[test]
    fn settings_are_checked() {
        let bad = |s: Settings, want: &str| {
            let e = VaultClient::new(s).expect_err(want);
            assert!(matches!(e, Error::Config(_)), "{e:?}");
            assert!(e.to_string().contains(want), "{e} lacks {want:?}");
            assert!(!e.is_retryable());
            assert_eq!(e.reason(), "config");
        };
        let token = || Auth::Token("t".into());
        bad(settings("127.0.0.1:8200", token()), "http:// or https://");
        bad(settings("ftp://h", token()), "http:// or https://");
        bad(settings("http://", token()), "not a URL");
        bad(settings("http:///x", token()), "not a URL");
        bad(settings("http://h:1?x=1", token()), "query");
        bad(
            settings("https://user:pw-SECRET@h", token()),
            "must not contain user info",
        );
        let e = VaultClient::new(settings("https://user:pw-SECRET@h", token())).unwrap_err();
        assert!(!e.to_string().contains("pw-SECRET"));
        bad(
            settings("http://h", Auth::Token("  ".into())),
            "token is empty",
        );
        let mut s = settings("http://h", token());
        s.kv_mount = "/secret/".into();
        bad(s, "KV mount");
        let mut s = settings("http://h", token());
        s.timeout = Duration::ZERO;
        bad(s, "timeout");
        bad(
            settings(
                "http://h",
                Auth::Kubernetes {
                    mount: "kubernetes".into(),
                    role: "".into(),
                    jwt_path: "/t".into(),
                },
            ),
            "role is empty",
        );
        // The CA bundle: missing, not PEM, given with http.
        let mut s = settings("https://h", token());
        s.ca_cert = Some("/nonexistent/vault-ca.pem".into());
        bad(
            s,
            "cannot read the Vault CA bundle /nonexistent/vault-ca.pem",
        );
        let dir = std::env::temp_dir().join(format!("vault-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let mut s = settings("https://h", token());
        s.ca_cert = Some(junk.clone());
        bad(s, "holds no PEM certificate");
        let mut s = settings("http://h", token());
        s.ca_cert = Some(junk);
        bad(s, "is not https");
        std::fs::remove_dir_all(&dir).unwrap();
        // Fine: a trailing slash, https with the platform's roots.
        assert_eq!(
            base_address(" http://127.0.0.1:8200/ ").unwrap(),
            ("http://127.0.0.1:8200".to_string(), false)
        );
        assert_eq!(
            base_address("https://h/vault/").unwrap(),
            ("https://h/vault".to_string(), true)
        );
        VaultClient::new(settings("https://vault.example:8200", token())).unwrap();
    }

    #[test]
    fn token_is_replaced_when_a_third_of_its_lease_remains() {
        let t0 = Instant::now();
        let s = |lease| Session {
            token: Arc::new(SecretString::from("t".to_string())),
            generation: 1,
            obtained: t0,
            lease,
        };
        let ten = s(Some(Duration::from_secs(10)));
        assert!(ten.fresh(t0));
        assert!(ten.fresh(t0 + Duration::from_millis(6600)));
        assert!(!ten.fresh(t0 + Duration::from_millis(6700)));
        assert!(!ten.fresh(t0 + Duration::from_secs(11)));
        assert!(s(None).fresh(t0 + Duration::from_secs(1_000_000)));
        assert_eq!(lease(0), None);
        assert_eq!(lease(3), Some(Duration::from_secs(3)));
    }

    #[test]
    fn metadata_deleted_or_not() {
        let parse = |v: Value| {
            serde_json::from_value::<MetadataData>(v)
                .unwrap()
                .into_metadata(1_700_000_000)
        };
        let m = parse(json!({
            "current_version": 2,
            "custom_metadata": {"managed-by": "push-to-k8s"},
            "versions": {
                "1": {"deletion_time": "2020-01-01T00:00:00Z", "destroyed": false},
                "2": {"deletion_time": "", "destroyed": false}
            }
        }));
        assert_eq!(
            m,
            Metadata {
                current_version: 2,
                custom: BTreeMap::from([("managed-by".into(), "push-to-k8s".into())]),
                current_deleted: false
            }
        );
        let deleted = |v: Value| parse(v).current_deleted;
        assert!(deleted(
            json!({"current_version": 0, "custom_metadata": null, "versions": {}})
        ));
        assert!(deleted(
            json!({"current_version": 3, "versions": {"1": {}}})
        ));
        assert!(deleted(json!({"current_version": 1, "versions": {
            "1": {"deletion_time": "2023-01-01T10:00:00.123456789Z", "destroyed": false}}})));
        assert!(deleted(json!({"current_version": 1, "versions": {
            "1": {"deletion_time": "", "destroyed": true}}})));
        // A deletion scheduled for later (delete_version_after) has not happened yet.
        assert!(!deleted(json!({"current_version": 1, "versions": {
            "1": {"deletion_time": "2999-01-01T00:00:00Z", "destroyed": false}}})));
        assert!(
            parse(json!({"current_version": 0, "custom_metadata": null}))
                .custom
                .is_empty()
        );
    }

    #[test]
    fn errors_classify() {
        assert!(matches!(
            status_error(StatusCode::NOT_FOUND),
            Error::NotFound
        ));
        assert!(matches!(
            status_error(StatusCode::SERVICE_UNAVAILABLE),
            Error::Unavailable(503)
        ));
        assert!(matches!(
            status_error(StatusCode::TOO_MANY_REQUESTS),
            Error::Unavailable(429)
        ));
        assert!(matches!(
            status_error(StatusCode::BAD_REQUEST),
            Error::Status(400)
        ));
        assert!(status_error(StatusCode::BAD_GATEWAY).is_retryable());
        assert!(!Error::CasMismatch.is_retryable());
        assert!(!Error::PermissionDenied.is_retryable());
        assert!(Error::Timeout.is_retryable());
        assert!(mentions_cas(
            br#"{"errors":["check-and-set parameter did not match the current version"]}"#
        ));
        assert!(!mentions_cas(br#"{"errors":["invalid"]}"#));
        assert!(!mentions_cas(b"check-and-set but not JSON"));
    }

    // ---- against a fake Vault on loopback: exact requests, scripted answers

    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        path: String,
        token: Option<String>,
        vault_request: bool,
        body: Value,
    }

    type Answerer = dyn Fn(&Seen, usize) -> (u16, Value) + Send + Sync;

    struct Fake {
        addr: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Fake {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// A server answering each request with `answer(request, index)` after `delay`.
    async fn fake(
        delay: Duration,
        answer: impl Fn(&Seen, usize) -> (u16, Value) + Send + Sync + 'static,
    ) -> Fake {
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let answer: Arc<Answerer> = Arc::new(answer);
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let log = log.clone();
            let answer = answer.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    token: parts
                        .headers
                        .get("x-vault-token")
                        .map(|v| v.to_str().unwrap().to_string()),
                    vault_request: parts
                        .headers
                        .get("x-vault-request")
                        .is_some_and(|v| v == "true"),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                };
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(seen.clone());
                    log.len() - 1
                };
                tokio::time::sleep(delay).await;
                let (status, body) = answer(&seen, index);
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { addr, seen }
    }

    fn jwt_file() -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "vault-client-test-jwt-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&path, format!("{JWT}\n")).unwrap();
        path
    }

    fn rand_suffix() -> u64 {
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    fn kubernetes(addr: &str, jwt_path: PathBuf) -> VaultClient {
        VaultClient::new(settings(
            addr,
            Auth::Kubernetes {
                mount: "kubernetes".into(),
                role: "push".into(),
                jwt_path,
            },
        ))
        .unwrap()
    }

    fn login_answer(token: &str, lease: u64) -> (u16, Value) {
        (
            200,
            json!({"auth": {"client_token": token, "lease_duration": lease, "renewable": true}}),
        )
    }

    fn read_answer(version: u64) -> (u16, Value) {
        (
            200,
            json!({"data": {"data": {"k": VALUE, "n": 5}, "metadata": {"version": version, "deletion_time": "", "destroyed": false}}}),
        )
    }

    fn is_login(s: &Seen) -> bool {
        s.path == "/v1/auth/kubernetes/login"
    }

    #[tokio::test]
    async fn kubernetes_login_then_requests_with_the_token() {
        let vault = fake(Duration::ZERO, |s, _| {
            if is_login(s) {
                login_answer(TOKEN, 3600)
            } else if s.method == "GET" {
                read_answer(7)
            } else {
                (200, json!({"data": {"version": 8}}))
            }
        })
        .await;
        let jwt = jwt_file();
        let client = kubernetes(&vault.addr, jwt.clone());
        assert_eq!(client.logins(), 0);
        let (data, version) = client.read_data("push/a/db").await.unwrap().unwrap();
        assert_eq!(version, 7);
        assert_eq!(data["k"], VALUE);
        assert_eq!(data["n"], "5", "a non-string value comes back as JSON text");
        let data = BTreeMap::from([("k".to_string(), "v".to_string())]);
        assert_eq!(client.write_data("push/a/db", &data, 7).await.unwrap(), 8);
        assert_eq!(client.logins(), 1);
        assert!(!client.last_login_failed());

        let seen = vault.seen();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].path, "/v1/auth/kubernetes/login");
        assert_eq!(seen[0].body, json!({"role": "push", "jwt": JWT}));
        assert_eq!(seen[0].token, None);
        assert_eq!(
            (seen[1].method.as_str(), seen[1].path.as_str()),
            ("GET", "/v1/secret/data/push/a/db")
        );
        assert_eq!(seen[2].path, "/v1/secret/data/push/a/db");
        assert_eq!(
            seen[2].body,
            json!({"options": {"cas": 7}, "data": {"k": "v"}})
        );
        for s in &seen[1..] {
            assert_eq!(s.token.as_deref(), Some(TOKEN));
        }
        assert!(seen.iter().all(|s| s.vault_request));
        std::fs::remove_file(jwt).unwrap();
    }

    #[tokio::test]
    async fn metadata_requests() {
        let vault = fake(Duration::ZERO, |s, _| {
            match (s.method.as_str(), s.path.as_str()) {
                (_, "/v1/auth/kubernetes/login") => login_answer(TOKEN, 0),
                ("GET", "/v1/secret/metadata/gone") => (404, json!({"errors": []})),
                ("GET", _) => (
                    200,
                    json!({"data": {"current_version": 1, "custom_metadata": {"a": "b"},
                "versions": {"1": {"deletion_time": "", "destroyed": false}}}}),
                ),
                ("DELETE", "/v1/secret/metadata/gone") => (404, json!({"errors": []})),
                _ => (204, Value::Null),
            }
        })
        .await;
        let jwt = jwt_file();
        let client = kubernetes(&vault.addr, jwt.clone());
        let custom = BTreeMap::from([("a".to_string(), "b".to_string())]);
        client.write_metadata("p/x", &custom).await.unwrap();
        let m = client.read_metadata("p/x").await.unwrap().unwrap();
        assert_eq!(
            (m.current_version, m.custom, m.current_deleted),
            (1, custom, false)
        );
        assert_eq!(client.read_metadata("gone").await.unwrap(), None);
        client.delete_all("p/x").await.unwrap();
        client.delete_all("gone").await.unwrap();
        let seen: Vec<_> = vault
            .seen()
            .into_iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        assert_eq!(
            seen,
            [
                "POST /v1/auth/kubernetes/login",
                "POST /v1/secret/metadata/p/x",
                "GET /v1/secret/metadata/p/x",
                "GET /v1/secret/metadata/gone",
                "DELETE /v1/secret/metadata/p/x",
                "DELETE /v1/secret/metadata/gone",
            ]
        );
        assert_eq!(vault.seen()[1].body, json!({"custom_metadata": {"a": "b"}}));
        // A bad path is refused before any request.
        let e = client.read_data("a/../b").await.unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        assert_eq!(vault.seen().len(), 6);
        std::fs::remove_file(jwt).unwrap();
    }

    #[tokio::test]
    async fn a_403_is_retried_once_after_a_fresh_login() {
        // Login 1 gives token-1, which Vault no longer accepts; login 2 gives token-2.
        let logins = Arc::new(AtomicU64::new(0));
        let l = logins.clone();
        let vault = fake(Duration::ZERO, move |s, _| {
            if is_login(s) {
                let n = l.fetch_add(1, Ordering::SeqCst) + 1;
                login_answer(&format!("token-{n}"), 3600)
            } else if s.token.as_deref() == Some("token-1") {
                (403, json!({"errors": ["permission denied"]}))
            } else {
                read_answer(1)
            }
        })
        .await;
        let jwt = jwt_file();
        let client = kubernetes(&vault.addr, jwt.clone());
        client.read_data("p").await.unwrap().unwrap();
        client.read_data("p").await.unwrap().unwrap();
        assert_eq!(client.logins(), 2);
        let tokens: Vec<_> = vault.seen().into_iter().map(|s| s.token).collect();
        assert_eq!(
            tokens,
            [
                None,
                Some("token-1".into()),
                None,
                Some("token-2".into()),
                Some("token-2".into())
            ]
        );
        std::fs::remove_file(jwt).unwrap();
    }

    #[tokio::test]
    async fn a_second_403_is_permission_denied_and_shows_nothing_secret() {
        // Vault's error bodies may echo what was sent: this one echoes everything.
        let vault = fake(Duration::ZERO, |s, _| {
            if is_login(s) {
                login_answer(TOKEN, 3600)
            } else {
                (
                    403,
                    json!({"errors": [format!("permission denied {TOKEN} {VALUE} {}", s.body)]}),
                )
            }
        })
        .await;
        let jwt = jwt_file();
        let client = kubernetes(&vault.addr, jwt.clone());
        let data = BTreeMap::from([("k".to_string(), VALUE.to_string())]);
        let e = client.write_data("outside", &data, 0).await.unwrap_err();
        assert!(matches!(e, Error::PermissionDenied), "{e:?}");
        assert!(!e.is_retryable());
        assert_eq!(e.reason(), "permission_denied");
        assert_error_clean(&e);
        assert_eq!(client.logins(), 2);
        assert_eq!(vault.seen().len(), 4);
        std::fs::remove_file(jwt).unwrap();
    }

    #[tokio::test]
    async fn cas_mismatch_and_other_statuses() {
        let vault = fake(Duration::ZERO, |s, _| match s.path.as_str() {
            "/v1/auth/kubernetes/login" => login_answer(TOKEN, 3600),
            "/v1/secret/data/cas" => (
                400,
                json!({"errors": [
                format!("check-and-set parameter did not match the current version {VALUE}")]}),
            ),
            "/v1/secret/data/bad" => (400, json!({"errors": [format!("no {VALUE}")]})),
            "/v1/secret/data/sealed" => (503, json!({"errors": ["Vault is sealed"]})),
            "/v1/secret/data/nomount" => (404, json!({"errors": []})),
            "/v1/secret/data/huge" => (
                200,
                json!({"data": {"version": 1, "pad": "x".repeat(9 << 20)}}),
            ),
            _ => (200, json!({"unexpected": VALUE})),
        })
        .await;
        let jwt = jwt_file();
        let client = kubernetes(&vault.addr, jwt.clone());
        let data = BTreeMap::from([("k".to_string(), VALUE.to_string())]);
        let write = |p: &'static str| {
            let client = client.clone();
            let data = data.clone();
            async move { client.write_data(p, &data, 3).await.unwrap_err() }
        };
        let e = write("cas").await;
        assert!(matches!(e, Error::CasMismatch), "{e:?}");
        assert_error_clean(&e);
        let e = write("bad").await;
        assert!(matches!(e, Error::Status(400)), "{e:?}");
        assert_error_clean(&e);
        let e = write("sealed").await;
        assert!(
            matches!(e, Error::Unavailable(503)) && e.is_retryable(),
            "{e:?}"
        );
        let e = write("nomount").await;
        assert!(matches!(e, Error::NotFound), "{e:?}");
        let e = write("huge").await;
        assert!(matches!(e, Error::BadResponse(_)), "{e:?}");
        let e = write("garbage").await;
        assert!(matches!(e, Error::BadResponse(_)), "{e:?}");
        assert_error_clean(&e);
        std::fs::remove_file(jwt).unwrap();
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_login() {
        let vault = fake(Duration::from_millis(50), |s, _| {
            if is_login(s) {
                login_answer(TOKEN, 3600)
            } else {
                read_answer(1)
            }
        })
        .await;
        let jwt = jwt_file();
        let client = kubernetes(&vault.addr, jwt.clone());
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move { c.read_data("p").await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap().unwrap();
        }
        assert_eq!(client.logins(), 1);
        assert_eq!(vault.seen().iter().filter(|s| is_login(s)).count(), 1);
        std::fs::remove_file(jwt).unwrap();
    }

    #[tokio::test]
    async fn a_short_lease_is_replaced_before_it_ends() {
        let vault = fake(Duration::ZERO, |s, _| {
            if is_login(s) {
                login_answer(TOKEN, 1)
            } else {
                read_answer(1)
            }
        })
        .await;
        let jwt = jwt_file();
        let client = kubernetes(&vault.addr, jwt.clone());
        client.read_data("p").await.unwrap();
        client.read_data("p").await.unwrap();
        assert_eq!(client.logins(), 1, "a fresh token is reused");
        // Two thirds of the 1 s lease are gone: a new login first.
        tokio::time::sleep(Duration::from_millis(700)).await;
        client.read_data("p").await.unwrap();
        assert_eq!(client.logins(), 2);
        std::fs::remove_file(jwt).unwrap();
    }

    #[tokio::test]
    async fn login_failures_name_the_cause_not_the_jwt() {
        let vault = fake(Duration::ZERO, |s, _| {
            (
                400,
                json!({"errors": [format!("invalid role name {}", s.body)]}),
            )
        })
        .await;
        let jwt = jwt_file();
        let client = kubernetes(&vault.addr, jwt.clone());
        let e = client.ensure_login().await.unwrap_err();
        assert!(
            matches!(e, Error::Login(LoginError::Refused { status: 400 })),
            "{e:?}"
        );
        assert!(!e.is_retryable());
        assert_eq!(e.reason(), "login");
        assert_error_clean(&e);
        assert_eq!(client.logins(), 1);
        assert!(client.last_login_failed());

        let missing = PathBuf::from("/nonexistent/vault-jwt");
        let e = kubernetes(&vault.addr, missing)
            .ensure_login()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vault-jwt"), "{e}");
        std::fs::write(&jwt, "\n").unwrap();
        let e = client.ensure_login().await.unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        std::fs::remove_file(jwt).unwrap();
    }

    #[tokio::test]
    async fn token_auth_looks_the_token_up() {
        let vault = fake(Duration::ZERO, |s, _| match s.path.as_str() {
            "/v1/auth/token/lookup-self" if s.token.as_deref() == Some(TOKEN) => {
                (200, json!({"data": {"ttl": 0}}))
            }
            "/v1/auth/token/lookup-self" => (403, json!({"errors": ["permission denied"]})),
            _ => read_answer(2),
        })
        .await;
        let client = VaultClient::new(settings(&vault.addr, Auth::Token(TOKEN.into()))).unwrap();
        client.ensure_login().await.unwrap();
        assert_eq!(client.read_data("p").await.unwrap().unwrap().1, 2);
        assert_eq!(client.logins(), 1);

        let file = jwt_file();
        std::fs::write(&file, "hvs.other-SECRET\n").unwrap();
        let client =
            VaultClient::new(settings(&vault.addr, Auth::TokenFile(file.clone()))).unwrap();
        let e = client.ensure_login().await.unwrap_err();
        assert!(
            matches!(e, Error::Login(LoginError::TokenRefused { status: 403 })),
            "{e:?}"
        );
        assert!(!format!("{e} {e:?}").contains("other-SECRET"));
        // The file is read again at the next login.
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        client.ensure_login().await.unwrap();
        assert!(!client.last_login_failed());
        std::fs::remove_file(file).unwrap();
    }

    #[tokio::test]
    async fn unreachable_and_timeout_are_retryable() {
        // A port nobody listens on (bound, then closed).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = VaultClient::new(settings(
            &format!("http://127.0.0.1:{port}"),
            Auth::Token(TOKEN.into()),
        ))
        .unwrap();
        let e = client.read_data("p").await.unwrap_err();
        assert!(
            matches!(e, Error::Unreachable(_)) && e.is_retryable(),
            "{e:?}"
        );
        assert_error_clean(&e);

        let vault = fake(Duration::from_secs(30), |_, _| (200, json!({}))).await;
        let mut s = settings(&vault.addr, Auth::Token(TOKEN.into()));
        s.timeout = Duration::from_millis(300);
        let client = VaultClient::new(s).unwrap();
        let started = Instant::now();
        let e = client.ensure_login().await.unwrap_err();
        assert!(matches!(e, Error::Timeout) && e.is_retryable(), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// Every log line and span of the client, at every level, over logins,
    /// writes, reads, a 403 and a CAS mismatch: no token, JWT or value.
    #[tokio::test]
    async fn logs_show_no_secret() {
        let (logs, _guard) = crate::fixtures::capture_logs();

        let vault = fake(Duration::ZERO, |s, _| match s.path.as_str() {
            "/v1/auth/kubernetes/login" => login_answer(TOKEN, 3600),
            "/v1/secret/data/denied" => (403, json!({"errors": [format!("denied {}", s.body)]})),
            "/v1/secret/data/cas" => (
                400,
                json!({"errors": [
                format!("check-and-set parameter did not match the current version {}", s.body)]}),
            ),
            _ if s.method == "GET" => read_answer(1),
            _ => (200, json!({"data": {"version": 2}})),
        })
        .await;
        let jwt = jwt_file();
        let client = kubernetes(&vault.addr, jwt.clone());
        let data = BTreeMap::from([("k".to_string(), VALUE.to_string())]);
        client.write_data("ok", &data, 1).await.unwrap();
        client.read_data("ok").await.unwrap();
        client.write_data("denied", &data, 1).await.unwrap_err();
        client.write_data("cas", &data, 1).await.unwrap_err();
        std::fs::remove_file(jwt).unwrap();

        let logs = logs.text();
        assert!(logs.contains("vault request"), "no log captured: {logs}");
        assert!(logs.contains("/v1/secret/data/denied"), "{logs}");
        assert_clean(&logs);
    }
}
