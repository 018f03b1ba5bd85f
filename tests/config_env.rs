//! Start-up contract of the built binary (DESIGN §2): any invalid configuration
//! variable stops the program before it touches the cluster, with exit status 2
//! and exactly one line on stderr naming the variable and the value given.
//!
//! Each case runs the binary with an otherwise empty environment (only `PATH`,
//! and `HOME` pointing at an empty scratch directory so no `~/.kube/config` can
//! be found) plus the one bad variable. If the binary tried to reach a cluster
//! it would hang or fail differently; a 20 s limit turns a hang into a failure.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_push-to-k8s");
const LIMIT: Duration = Duration::from_secs(20);
const WORKERS: usize = 4;

/// Set once a case hit LIMIT: the remaining cases are skipped (and reported)
/// rather than each waiting out its own LIMIT.
static HUNG: AtomicBool = AtomicBool::new(false);

/// Invalid values for every variable (strings; a non-UTF-8 case is separate).
const CASES: &[(&str, &[&str])] = &[
    (
        "NAMESPACE",
        &["", "Foo", "-foo", "foo_bar", " foo", "foo\nbar"],
    ),
    ("POD_NAMESPACE", &["Bad", "a.b", "x-"]),
    ("ENABLE_SECRET_WATCHER", &["", "yes", "1", " true"]),
    ("ENABLE_CONFIGMAPS", &["", "no", "0", "False "]),
    ("ALLOW_ADOPTION", &["", "yes", "1", " true", "True "]),
    (
        "SECRET_SYNC_DEBOUNCE_SECONDS",
        &[
            "",
            "0",
            "61",
            "+5",
            "5.0",
            " 5",
            "abc",
            "99999999999999999999",
        ],
    ),
    (
        "SECRET_SYNC_MAX_WAIT_SECONDS",
        &["", "0", "601", "4", "-1", "1e2"],
    ),
    (
        "SECRET_SYNC_RATE_LIMIT",
        &["", "0", "101", "ten", "10 ", "0x10"],
    ),
    ("SECRET_SYNC_RATE_BURST", &["", "0", "101", "1.5"]),
    ("SYNC_INTERVAL", &["", "0", "1441", "15m", "\t15"]),
    (
        "EXCLUDE_NAMESPACE_LABEL",
        &["-x", "a b", "/x", "x/", "a/b/c", "Example.com/x", "x=y"],
    ),
    (
        "PROTECTED_NAMESPACES",
        &[",", "a,,b", "kube-system,Kube-Public", " "],
    ),
    ("REQUIRE_NAMESPACE_CONSENT", &["", "yes", "1", " true"]),
    ("METRICS_PORT", &["", "0", "65536", "-1", "http", "9090\n"]),
    (
        "READY_WATCH_FAILURE_SECONDS",
        &["", "0", "601", "10s", "+10", " 10", "1.5"],
    ),
    ("DEBUG", &["", "on", "0", "false "]),
    ("LOG_FORMAT", &["", "logfmt", "JSON "]),
    (
        "KUBECONFIG",
        &[
            "/nonexistent-on-purpose",
            "/",
            "/nonexistent-a:/nonexistent-b",
        ],
    ),
    (
        "VAULT_ADDR",
        &[
            "vault:8200",
            "ftp://vault",
            "http://",
            "http://v:99999",
            "http://v/v1",
        ],
    ),
    ("VAULT_AUTH_METHOD", &["", "approle", "Token "]),
    ("VAULT_AUTH_MOUNT", &["", "/kubernetes", "a//b", "a b"]),
    ("VAULT_ROLE", &["", "a/b", "r le"]),
    ("VAULT_SA_TOKEN_PATH", &["/nonexistent-on-purpose", "/"]),
    ("VAULT_TOKEN_FILE", &["/nonexistent-on-purpose"]),
    ("VAULT_CACERT", &["/nonexistent-on-purpose"]),
    ("VAULT_KV_MOUNT", &["", "secret/", "..", "kv 2"]),
    ("VAULT_RATE_LIMIT", &["", "0", "101", "5/s"]),
    ("VAULT_CHECK_INTERVAL_SECONDS", &["", "4", "86401", "1m"]),
];

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Empty scratch HOME, removed on drop.
struct ScratchHome(PathBuf);

impl ScratchHome {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("push-to-k8s-config-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch HOME");
        ScratchHome(dir)
    }
}

impl Drop for ScratchHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary with only PATH, HOME and `name=value`; kills it after LIMIT.
fn run_with(home: &ScratchHome, name: &str, value: &OsString) -> Result<Outcome, String> {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home.0)
        .env(name, value)
        .current_dir(&home.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {BIN}: {e}"))?;

    // Drain the pipes on threads so a chatty child can never block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            HUNG.store(true, Ordering::Relaxed);
            return Err(format!(
                "still running after {LIMIT:?}; killed (did it try to reach a cluster?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Outcome {
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    })
}

/// Checks one case; returns a description of what is wrong, if anything.
fn check(home: &ScratchHome, name: &str, value: OsString) -> Option<String> {
    let shown = value.to_string_lossy().into_owned();
    let outcome = match run_with(home, name, &value) {
        Ok(o) => o,
        Err(e) => return Some(format!("{name}={shown:?}: {e}")),
    };
    let mut problems = Vec::new();
    if outcome.status.code() != Some(2) {
        problems.push(format!("exit status {:?}, want code 2", outcome.status));
    }
    let lines: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.len() != 1 {
        problems.push(format!(
            "stderr has {} non-empty lines, want exactly 1",
            lines.len()
        ));
    }
    if !outcome.stderr.contains(name) {
        problems.push("stderr does not name the variable".into());
    }
    // The value is shown Debug-quoted (control characters escaped, which is what
    // keeps the message on one line), so look for that form.
    if !outcome.stderr.contains(&format!("{shown:?}")) {
        problems.push("stderr does not show the value given".into());
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "{name}={shown:?}: {}\n    stderr: {:?}\n    stdout: {:?}",
            problems.join("; "),
            outcome.stderr,
            outcome.stdout
        ))
    }
}

#[test]
fn every_invalid_variable_exits_2_with_one_line_before_touching_the_cluster() {
    let home = ScratchHome::new();
    let mut cases: Vec<(&str, OsString)> = CASES
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |v| (*name, OsString::from(v))))
        .collect();
    // A value that is not UTF-8 must be an error too, not a panic.
    cases.push(("NAMESPACE", OsString::from_vec(b"ns-\xff".to_vec())));
    // KUBECONFIG files that exist but are no usable kubeconfig: still a bad
    // setting (exit 2, one line), found before any request is made.
    for (file, text) in [
        ("garbage.kubeconfig", "{{{ not: [yaml\n  - at all\n"),
        ("empty.kubeconfig", "apiVersion: v1\nkind: Config\n"),
    ] {
        let path = home.0.join(file);
        std::fs::write(&path, text).expect("write kubeconfig");
        cases.push(("KUBECONFIG", path.into_os_string()));
    }

    // A few workers, so a binary that hangs costs one LIMIT, not one per case.
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                while !HUNG.load(Ordering::Relaxed) {
                    let Some((name, value)) = cases.get(next.fetch_add(1, Ordering::Relaxed))
                    else {
                        break;
                    };
                    if let Some(f) = check(&home, name, value.clone()) {
                        failures.lock().unwrap().push(f);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });

    let failures = failures.into_inner().unwrap();
    let done = done.into_inner();
    assert!(
        failures.is_empty() && done == cases.len(),
        "{} of {} cases failed ({} not run after a hang):\n{}",
        failures.len(),
        cases.len(),
        cases.len() - done,
        failures.join("\n")
    );
}
