//! The Vault client (`src/targets/vault/client.rs`) against a real Vault (`cp.sh
//! vault-up`: dev mode on loopback, KV v2 at `secret/`) with Kubernetes auth
//! against the real test control plane: logins with ServiceAccount tokens from
//! the TokenRequest API, check-and-set writes, metadata, soft deletes through
//! the CLI, short-lived and revoked tokens, Vault killed and started again,
//! TLS with `vault server -dev-tls`. No error shows a value, a token or a JWT.
//!
//! Each test takes the [`serial`] lock (it also guards Vault, which one of
//! them kills) and writes under its own KV path, below a prefix per role.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use push_to_k8s::targets::vault::client::{Auth, Error, LoginError, Settings, VaultClient};

/// The ServiceAccount every test logs in as (in its own namespace).
const SA: &str = "vault-client";
/// Role and policy (KV v2 `secret/p2k-vc/*`) of most tests.
const ROLE: &str = "p2k-vc";
/// Role with tokens of 4 s TTL, 8 s max TTL (KV v2 `secret/p2k-vc-short/*`).
const SHORT_ROLE: &str = "p2k-vc-short";
/// A value that must never show in an error.
const VALUE: &str = "s3cr3t-VALUE-never-shown";
const TIMEOUT: Duration = Duration::from_secs(5);

fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `cp.sh vault-env`: Vault's address (the root token stays with `cp.sh vault`).
fn vault_addr() -> String {
    let env = cp(&["vault-env"]);
    env.split_whitespace()
        .find_map(|w| w.strip_prefix("VAULT_ADDR="))
        .expect("VAULT_ADDR in `cp.sh vault-env`")
        .to_string()
}

/// One test's Kubernetes side: a namespace (deleted at the end, also on a
/// panic), its ServiceAccount, a role bound to it and a token file.
struct Fixture {
    ns: String,
    /// The ServiceAccount's JWT, from the TokenRequest API.
    jwt_path: PathBuf,
    jwt: String,
    addr: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.jwt_path);
        let ns = self.ns.clone();
        run_detached(move || async move {
            let c = client().await;
            let _ = Api::<Namespace>::all(c)
                .delete(&ns, &DeleteParams::default())
                .await;
        });
    }
}

/// Vault up, a fresh namespace and ServiceAccount, and `cp.sh vault-k8s-auth
/// ARGS... SA NS` (a role's name is fixed: recording it again replaces it).
async fn fixture(auth_args: &[&str]) -> Fixture {
    cp(&["vault-up"]);
    let c = client().await;
    let ns = unique("vc");
    Api::<Namespace>::all(c.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    Api::<ServiceAccount>::namespaced(c, &ns)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(SA.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create ServiceAccount");
    let mut args = vec!["vault-k8s-auth"];
    args.extend_from_slice(auth_args);
    args.extend_from_slice(&[SA, &ns]);
    cp(&args);
    let jwt = service_account_jwt(&ns, SA);
    let jwt_path = std::env::temp_dir().join(format!("{}.jwt", unique("push-to-k8s-vault")));
    write_private(&jwt_path, &jwt);
    Fixture {
        ns,
        jwt_path,
        jwt,
        addr: vault_addr(),
    }
}

/// A token for `ns/sa` from the TokenRequest API (as kubelet projects one).
fn service_account_jwt(ns: &str, sa: &str) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.args(["create", "token", sa, "-n", ns, "--duration=1h"])
        .env("KUBECONFIG", &control_plane().kubeconfig);
    run(cmd).trim().to_string()
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("open secret file");
    writeln!(f, "{text}").expect("write secret file");
}

fn settings(addr: &str, auth: Auth) -> Settings {
    Settings {
        addr: addr.to_string(),
        auth,
        ca_cert: None,
        kv_mount: "secret".into(),
        timeout: TIMEOUT,
    }
}

fn kubernetes_auth(f: &Fixture, role: &str) -> Auth {
    Auth::Kubernetes {
        mount: "kubernetes".into(),
        role: role.into(),
        jwt_path: f.jwt_path.clone(),
    }
}

fn client_for(f: &Fixture, role: &str) -> VaultClient {
    VaultClient::new(settings(&f.addr, kubernetes_auth(f, role))).expect("client")
}

/// Display, alternate Display and Debug of `e`, checked free of every secret.
fn assert_shows_no_secret(e: &Error, secrets: &[&str]) {
    let shown = format!("{e} | {e:#} | {e:?} | {e:#?}");
    for s in secrets.iter().chain([&VALUE]) {
        assert!(!s.is_empty());
        assert!(!shown.contains(s), "a secret shows in {shown}");
    }
}

#[tokio::test]
async fn login_round_trip_cas_metadata_soft_delete_and_delete_all() {
    let _s = serial();
    let f = fixture(&["--role", ROLE, "--prefix", ROLE]).await;
    let vault = client_for(&f, ROLE);
    let path = format!("{ROLE}/{}/db", f.ns);

    vault.ensure_login().await.expect("Kubernetes login");
    assert_eq!(vault.logins(), 1);
    assert!(!vault.last_login_failed());
    assert_eq!(vault.read_metadata(&path).await.unwrap(), None);
    assert_eq!(vault.read_data(&path).await.unwrap(), None);

    // Ours first (custom metadata), then the first version only if none exists.
    let custom = map(&[("managed-by", "push-to-k8s"), ("source", "ns/db")]);
    vault.write_metadata(&path, &custom).await.unwrap();
    let m = vault.read_metadata(&path).await.unwrap().expect("metadata");
    assert_eq!((m.current_version, m.current_deleted), (0, true));
    assert_eq!(m.custom, custom);
    let v1 = map(&[("user", "app"), ("password", VALUE)]);
    assert_eq!(vault.write_data(&path, &v1, 0).await.unwrap(), 1);
    assert_eq!(vault.read_data(&path).await.unwrap(), Some((v1.clone(), 1)));

    // Check-and-set: a stale version is refused, the current one accepted.
    let e = vault.write_data(&path, &v1, 0).await.unwrap_err();
    assert!(matches!(e, Error::CasMismatch), "{e:?}");
    assert!(!e.is_retryable());
    assert_eq!(e.reason(), "cas_mismatch");
    assert_shows_no_secret(&e, &[&f.jwt]);
    let v2 = map(&[("user", "app"), ("password", "second")]);
    assert_eq!(vault.write_data(&path, &v2, 1).await.unwrap(), 2);
    let e = vault.write_data(&path, &v1, 1).await.unwrap_err();
    assert!(matches!(e, Error::CasMismatch), "{e:?}");
    assert_eq!(vault.read_data(&path).await.unwrap(), Some((v2.clone(), 2)));

    // The custom metadata stays with new versions.
    let m = vault.read_metadata(&path).await.unwrap().expect("metadata");
    assert_eq!((m.current_version, m.current_deleted), (2, false));
    assert_eq!(m.custom, custom);

    // Someone soft-deletes the current version with the CLI.
    cp(&["vault", "kv", "delete", &format!("secret/{path}")]);
    let m = vault.read_metadata(&path).await.unwrap().expect("metadata");
    assert_eq!((m.current_version, m.current_deleted), (2, true));
    assert_eq!(m.custom, custom);
    assert_eq!(vault.read_data(&path).await.unwrap(), None);
    // A write with the current version brings it back as version 3.
    assert_eq!(vault.write_data(&path, &v2, 2).await.unwrap(), 3);
    assert_eq!(vault.read_data(&path).await.unwrap(), Some((v2, 3)));

    // Every version and the metadata go; deleting again is fine.
    vault.delete_all(&path).await.unwrap();
    assert_eq!(vault.read_metadata(&path).await.unwrap(), None);
    assert_eq!(vault.read_data(&path).await.unwrap(), None);
    vault.delete_all(&path).await.unwrap();
    // A first write after that needs cas 0 again.
    assert_eq!(vault.write_data(&path, &v1, 0).await.unwrap(), 1);
    vault.delete_all(&path).await.unwrap();
    assert_eq!(vault.logins(), 1, "one token served every call");
}

#[tokio::test]
async fn short_lived_tokens_are_replaced_before_they_expire() {
    let _s = serial();
    let f = fixture(&[
        "--role",
        SHORT_ROLE,
        "--prefix",
        SHORT_ROLE,
        "--ttl",
        "4s",
        "--max-ttl",
        "8s",
    ])
    .await;
    let vault = client_for(&f, SHORT_ROLE);
    let path = format!("{SHORT_ROLE}/{}/db", f.ns);
    let started = Instant::now();
    let mut version = 0;
    let mut writes = 0;
    // ~20 s of one write a second: five times the TTL, more than twice the max TTL.
    while started.elapsed() < Duration::from_secs(20) {
        let data = map(&[("n", &writes.to_string())]);
        version = vault
            .write_data(&path, &data, version)
            .await
            .unwrap_or_else(|e| panic!("write {writes} after {:?}: {e}", started.elapsed()));
        writes += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(version, writes);
    assert!(writes >= 18, "{writes} writes");
    let logins = vault.logins();
    // A new token each ~2.7 s (two thirds of 4 s): about 8 in 20 s.
    assert!(logins > 2, "{logins} logins in 20 s of 4 s tokens");
    assert!(!vault.last_login_failed());
    vault.delete_all(&path).await.unwrap();
}

#[tokio::test]
async fn revoked_tokens_are_replaced_by_a_fresh_login() {
    let _s = serial();
    let f = fixture(&["--role", ROLE, "--prefix", ROLE]).await;
    let path = format!("{ROLE}/{}/db", f.ns);

    // Kubernetes auth: every token this auth mount issued is revoked.
    let vault = client_for(&f, ROLE);
    assert_eq!(
        vault
            .write_data(&path, &map(&[("a", "1")]), 0)
            .await
            .unwrap(),
        1
    );
    assert_eq!(vault.logins(), 1);
    cp(&["vault", "token", "revoke", "-mode=path", "auth/kubernetes/"]);
    assert_eq!(
        vault
            .write_data(&path, &map(&[("a", "2")]), 1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(vault.logins(), 2, "one fresh login after the 403");

    // A token file: its token revoked, a new one written to the file.
    let create = || {
        let policy = format!("-policy={ROLE}");
        cp(&[
            "vault",
            "token",
            "create",
            &policy,
            "-ttl=1h",
            "-field=token",
        ])
        .trim()
        .to_string()
    };
    let first = create();
    let token_path = std::env::temp_dir().join(format!("{}.token", unique("push-to-k8s-vault")));
    write_private(&token_path, &first);
    let vault = VaultClient::new(settings(&f.addr, Auth::TokenFile(token_path.clone()))).unwrap();
    assert_eq!(vault.read_data(&path).await.unwrap().unwrap().1, 2);
    assert_eq!(vault.logins(), 1);
    cp(&["vault", "token", "revoke", &first]);
    let second = create();
    write_private(&token_path, &second);
    assert_eq!(
        vault
            .write_data(&path, &map(&[("a", "3")]), 2)
            .await
            .unwrap(),
        3
    );
    assert_eq!(vault.logins(), 2);

    // Revoked and not replaced: the login (a token lookup) is refused; no token shows.
    cp(&["vault", "token", "revoke", &second]);
    let e = vault.read_data(&path).await.unwrap_err();
    assert!(
        matches!(e, Error::Login(LoginError::TokenRefused { status: 403 })),
        "{e:?}"
    );
    assert!(vault.last_login_failed());
    assert_shows_no_secret(&e, &[&first, &second, &f.jwt]);
    let _ = std::fs::remove_file(&token_path);
    client_for(&f, ROLE).delete_all(&path).await.unwrap();
}

/// Issue 16 item 4, inside the client: a write answered 403 is sent again
/// after a fresh login only while the writer's gate is open; with the gate
/// closed in between, nothing more reaches Vault (the worker asked the gate
/// before the first send; a login round trip lies between it and the second).
#[tokio::test]
async fn a_write_is_not_sent_again_after_a_fresh_login_once_the_gate_closed() {
    let _s = serial();
    let f = fixture(&["--role", ROLE, "--prefix", ROLE]).await;
    let path = format!("{ROLE}/{}/gated", f.ns);
    let vault = client_for(&f, ROLE);
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gate = open.clone();
    vault.resend_only_while(move || gate.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(
        vault
            .write_data(&path, &map(&[("a", "1")]), 0)
            .await
            .unwrap(),
        1
    );
    cp(&["vault", "token", "revoke", "-mode=path", "auth/kubernetes/"]);
    open.store(false, std::sync::atomic::Ordering::SeqCst);
    let e = vault
        .write_data(&path, &map(&[("a", "2")]), 1)
        .await
        .expect_err("not sent again with the gate closed");
    assert!(matches!(e, Error::GateClosed), "{e}");
    assert_eq!(vault.logins(), 2, "the fresh login happened");
    let meta = vault
        .read_metadata(&path)
        .await
        .unwrap()
        .expect("the entry");
    assert_eq!(meta.current_version, 1, "the write was not sent again");
    // Open again: the same write goes through.
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        vault
            .write_data(&path, &map(&[("a", "2")]), 1)
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn refusals_show_no_value_token_or_jwt() {
    let _s = serial();
    let f = fixture(&["--role", ROLE, "--prefix", ROLE]).await;
    let vault = client_for(&f, ROLE);
    let secret = map(&[("password", VALUE)]);

    // Outside the role's prefix: denied, also after the one fresh login.
    let outside = format!("elsewhere/{}/db", f.ns);
    let e = vault.write_data(&outside, &secret, 0).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied), "{e:?}");
    assert!(!e.is_retryable());
    assert_eq!(e.reason(), "permission_denied");
    assert_shows_no_secret(&e, &[&f.jwt]);
    assert_eq!(vault.logins(), 2);
    let e = vault.write_metadata(&outside, &secret).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied), "{e:?}");
    assert_shows_no_secret(&e, &[&f.jwt]);
    let e = vault.read_metadata(&outside).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied), "{e:?}");
    // A path this client never sends.
    let e = vault.read_data(&format!("{ROLE}/../x")).await.unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");

    // Logins Vault refuses: no such role; a ServiceAccount the role is not bound to.
    let nobody = VaultClient::new(settings(&f.addr, kubernetes_auth(&f, "no-such-role"))).unwrap();
    let e = nobody.ensure_login().await.unwrap_err();
    assert!(
        matches!(e, Error::Login(LoginError::Refused { .. })),
        "{e:?}"
    );
    assert_shows_no_secret(&e, &[&f.jwt]);
    assert!(nobody.last_login_failed());
    let other_sa = Api::<ServiceAccount>::namespaced(client().await, &f.ns);
    other_sa
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("not-bound".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let other_jwt = service_account_jwt(&f.ns, "not-bound");
    let other_path = std::env::temp_dir().join(format!("{}.jwt", unique("push-to-k8s-vault")));
    write_private(&other_path, &other_jwt);
    let unbound = VaultClient::new(settings(
        &f.addr,
        Auth::Kubernetes {
            mount: "kubernetes".into(),
            role: ROLE.into(),
            jwt_path: other_path.clone(),
        },
    ))
    .unwrap();
    let e = unbound.read_data(&format!("{ROLE}/x")).await.unwrap_err();
    assert!(
        matches!(e, Error::Login(LoginError::Refused { .. })),
        "{e:?}"
    );
    assert_shows_no_secret(&e, &[&f.jwt, &other_jwt]);
    let _ = std::fs::remove_file(other_path);
}

#[tokio::test]
async fn vault_down_is_retryable_and_recovered_after_a_restart() {
    let _s = serial();
    let f = fixture(&["--role", ROLE, "--prefix", ROLE]).await;
    let vault = client_for(&f, ROLE);
    let path = format!("{ROLE}/{}/db", f.ns);
    assert_eq!(
        vault
            .write_data(&path, &map(&[("a", VALUE)]), 0)
            .await
            .unwrap(),
        1
    );

    cp(&["vault-kill"]);
    // Started again whatever happens below: later tests need it.
    struct StartVault;
    impl Drop for StartVault {
        fn drop(&mut self) {
            let _ = control_plane().command(&["vault-start"]).output();
        }
    }
    let restart = StartVault;
    let started = Instant::now();
    let e = vault.read_data(&path).await.unwrap_err();
    assert!(started.elapsed() < TIMEOUT, "took {:?}", started.elapsed());
    assert!(e.is_retryable(), "{e:?}");
    assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
    assert_eq!(e.reason(), "unreachable");
    assert_shows_no_secret(&e, &[&f.jwt]);
    let e = vault
        .write_data(&path, &map(&[("a", VALUE)]), 1)
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert_shows_no_secret(&e, &[&f.jwt]);

    // Dev mode starts empty: the entry and every token are gone; the role is
    // applied again by cp.sh, so the old token's 403 leads to a fresh login.
    drop(restart);
    let logins = vault.logins();
    let after = until("Vault answers again", Duration::from_secs(60), || async {
        vault.read_data(&path).await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(after, None, "dev-mode Vault starts empty");
    assert!(vault.logins() > logins, "a fresh login after the restart");
    assert_eq!(
        vault
            .write_data(&path, &map(&[("a", "b")]), 0)
            .await
            .unwrap(),
        1
    );
    vault.delete_all(&path).await.unwrap();
}

/// A second Vault, `vault server -dev -dev-tls`, that this test starts and
/// stops itself (cp.sh runs only a plain-http one).
struct TlsVault {
    child: Child,
    dir: PathBuf,
    addr: String,
    token: String,
}

impl Drop for TlsVault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The vault binary `cp.sh vault-build` made (its cache path, as cp.sh computes it).
fn vault_binary() -> PathBuf {
    cp(&["vault-build"]);
    let script = std::fs::read_to_string(cp_script()).unwrap();
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("VAULT_VERSION="))
        .expect("VAULT_VERSION in cp.sh");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join(format!("push-to-k8s/vault-{version}/bin/vault"))
}

async fn tls_vault() -> TlsVault {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(unique("push-to-k8s-vault-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let token = format!("root-{}", unique("tls"));
    let config = dir.join("vault.hcl");
    std::fs::write(&config, "ui = false\ndisable_mlock = true\n").unwrap();
    let log = std::fs::File::create(dir.join("vault.log")).unwrap();
    let child = Command::new(vault_binary())
        .args(["server", "-dev", "-dev-tls", "-dev-no-store-token"])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg(format!("-dev-root-token-id={token}"))
        .arg(format!("-dev-tls-cert-dir={}", dir.display()))
        .arg(format!("-config={}", config.display()))
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start vault -dev-tls");
    let v = TlsVault {
        child,
        addr: format!("https://127.0.0.1:{port}"),
        dir,
        token,
    };
    let ca = v.dir.join("vault-ca.pem");
    let dir = v.dir.clone();
    until(
        "the -dev-tls Vault answers",
        Duration::from_secs(60),
        || async {
            let mut s = settings(&v.addr, Auth::Token(v.token.clone()));
            s.ca_cert = Some(ca.clone());
            let probe = VaultClient::new(s).map_err(|e| e.to_string())?;
            probe.ensure_login().await.map_err(|e| {
                let log = std::fs::read_to_string(dir.join("vault.log")).unwrap_or_default();
                let tail: Vec<_> = log.lines().rev().take(3).collect();
                format!("{e}; log tail: {}", tail.join(" / "))
            })
        },
    )
    .await;
    v
}

#[tokio::test]
async fn https_with_the_ca_bundle_and_not_without_it() {
    // Its own Vault: no shared state, no lock.
    let tls = tls_vault().await;
    let ca = tls.dir.join("vault-ca.pem");
    let mut s = settings(&tls.addr, Auth::Token(tls.token.clone()));
    s.ca_cert = Some(ca);
    let vault = VaultClient::new(s).unwrap();
    let data = map(&[("k", VALUE)]);
    assert_eq!(vault.write_data("tls/db", &data, 0).await.unwrap(), 1);
    assert_eq!(vault.read_data("tls/db").await.unwrap(), Some((data, 1)));

    // The platform's roots do not trust the dev CA: a TLS error, retryable, saying why.
    let untrusting = VaultClient::new(settings(&tls.addr, Auth::Token(tls.token.clone()))).unwrap();
    let e = untrusting.read_data("tls/db").await.unwrap_err();
    assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert_shows_no_secret(&e, &[&tls.token]);
    // Nor does another CA: the test control plane's.
    let kubeconfig = kube::config::Kubeconfig::read_from(&control_plane().kubeconfig).unwrap();
    let other_ca = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.certificate_authority.clone())
        .expect("the control plane's CA file");
    let mut s = settings(&tls.addr, Auth::Token(tls.token.clone()));
    s.ca_cert = Some(other_ca.into());
    let e = VaultClient::new(s)
        .unwrap()
        .ensure_login()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unreachable(_)), "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert_shows_no_secret(&e, &[&tls.token]);
}
