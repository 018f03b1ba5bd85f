//! The real Prometheus and promtool (issue 20): Debian's `prometheus` package,
//! unpacked into the cache by `cp.sh prom-build` (never installed), the alert
//! rules rendered from the chart (one source of truth), and a Prometheus server
//! on loopback with its HTTP API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use super::http_get::http_get;
use super::{cp, unique};

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/push-to-k8s");

/// The directory holding `prometheus` and `promtool` (`cp.sh prom-bin`, which
/// fetches the package first if needed and fails loudly if it cannot).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(cp(&["prom-bin"]).trim());
        for tool in ["prometheus", "promtool"] {
            assert!(
                dir.join(tool).is_file(),
                "cp.sh prom-bin named {}, which holds no {tool}",
                dir.display()
            );
        }
        dir
    })
}

pub fn promtool() -> Command {
    Command::new(bin_dir().join("promtool"))
}

/// The chart's PrometheusRule, `helm template`d for release `release` in
/// `namespace` with `extra` `--set` values: its `spec.groups`.
pub fn chart_rule_groups(release: &str, namespace: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "helm",
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ];
    for e in extra {
        args.extend(["--set", e]);
    }
    let yaml = cp(&args);
    let rule: Value = serde_saphyr::from_str(&yaml)
        .unwrap_or_else(|e| panic!("the rendered PrometheusRule is not YAML: {e}\n{yaml}"));
    assert_eq!(rule["kind"], "PrometheusRule", "{yaml}");
    let groups = rule["spec"]["groups"].clone();
    assert!(
        groups.as_array().is_some_and(|g| !g.is_empty()),
        "no spec.groups in\n{yaml}"
    );
    groups
}

/// A plain Prometheus rules file (JSON is YAML) of `groups`.
pub fn rules_file(groups: &Value, dir: &Path) -> PathBuf {
    let path = dir.join("push-to-k8s.rules.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({ "groups": groups })).unwrap(),
    )
    .unwrap();
    path
}

/// For a test's rendering only: every alert's `for:` set to `for_`, and every
/// range selector (`[5m]`, `[1h]`) to `window`, so a condition fires and
/// resolves within a test's time. The expressions are otherwise unchanged.
pub fn shortened(groups: &Value, for_: &str, window: &str) -> Value {
    let mut groups = groups.clone();
    for group in groups.as_array_mut().unwrap() {
        for rule in group["rules"].as_array_mut().unwrap() {
            if rule.get("for").is_some() {
                rule["for"] = json!(for_);
            }
            let expr = rule["expr"].as_str().unwrap().to_string();
            let mut out = String::new();
            let mut rest = expr.as_str();
            while let Some(at) = rest.find('[') {
                out.push_str(&rest[..at]);
                let end = rest[at..].find(']').expect("unclosed [") + at;
                out.push_str(&format!("[{window}]"));
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            rule["expr"] = json!(out);
        }
    }
    groups
}

/// The names of every alert in `groups`.
pub fn alert_names(groups: &Value) -> Vec<String> {
    groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

/// A scrape target: a job name, `127.0.0.1:port`, and labels added to its series.
pub struct Target<'a> {
    pub job: &'a str,
    pub port: u16,
    pub labels: &'a [(&'a str, &'a str)],
}

/// A Prometheus server on loopback, in its own directory; stopped on drop.
pub struct Prometheus {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

impl Prometheus {
    /// Start Prometheus scraping `targets` every `interval` and evaluating
    /// `rules` (a rules file) as often; wait until it is ready.
    pub async fn start(targets: &[Target<'_>], rules: Option<&Path>, interval: &str) -> Prometheus {
        let scrape: Vec<Value> = targets
            .iter()
            .map(|t| {
                let labels: serde_json::Map<String, Value> = t
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                json!({
                    "job_name": t.job,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{ "targets": [format!("127.0.0.1:{}", t.port)], "labels": labels }],
                })
            })
            .collect();
        Prometheus::start_with(scrape, rules, interval).await
    }

    /// Start Prometheus with `scrape` as its `scrape_configs` (any Prometheus
    /// scrape configuration, e.g. [`file_sd_job`]), evaluating `rules` every
    /// `interval`; wait until it is ready. It listens on loopback.
    pub async fn start_with(
        scrape: Vec<Value>,
        rules: Option<&Path>,
        interval: &str,
    ) -> Prometheus {
        let dir = std::env::temp_dir().join(unique("push-to-k8s-prometheus"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = json!({
            "global": { "scrape_interval": interval, "evaluation_interval": interval },
            "scrape_configs": scrape,
        });
        if let Some(rules) = rules {
            config["rule_files"] = json!([rules]);
        }
        let config_path = dir.join("prometheus.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let port = super::daemon::free_port().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin_dir().join("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1d")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start prometheus: {e}"));
        let mut p = Prometheus {
            child: Some(child),
            port,
            dir,
        };
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("prometheus exited with {status}; log:\n{}", p.log());
            }
            if matches!(http_get(port, "/-/ready").await, Some((200, _))) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "prometheus not ready within 60 s; log:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: the `data` of a successful answer, else the error.
    pub async fn api(&self, path: &str) -> Result<Value, String> {
        let (code, body) = http_get(self.port, &format!("/api/v1/{path}"))
            .await
            .ok_or_else(|| "prometheus did not answer".to_string())?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {code}, not JSON ({e}): {body}"))?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!("HTTP {code}: {} {}", v["errorType"], v["error"]))
        }
    }

    /// An instant query: its `data` (`resultType`, `result`), or the error.
    pub async fn query(&self, promql: &str) -> Result<Value, String> {
        self.api(&format!("query?query={}", encode(promql))).await
    }

    /// A range query over the last `seconds` with `step` seconds.
    pub async fn query_range(
        &self,
        promql: &str,
        seconds: u64,
        step: u64,
    ) -> Result<Value, String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.api(&format!(
            "query_range?query={}&start={}&end={now}&step={step}",
            encode(promql),
            now - seconds
        ))
        .await
    }

    /// Every alert Prometheus holds now (pending or firing), from /api/v1/alerts.
    pub async fn alerts(&self) -> Result<Vec<Value>, String> {
        Ok(self.api("alerts").await?["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The state of alert `name` (`pending`, `firing`), `None` when inactive.
    pub async fn alert_state(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self
            .alerts()
            .await?
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap_or_default().to_string())
            .max_by_key(|s| s == "firing"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A scrape job `job` whose targets Prometheus reads from the file `file`
/// (file-based service discovery, re-read when it changes): for targets that
/// come and go while it runs, such as Pods. Scraped every `interval`.
pub fn file_sd_job(job: &str, file: &Path, interval: &str) -> Value {
    json!({
        "job_name": job,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "file_sd_configs": [{ "files": [file], "refresh_interval": "2s" }],
    })
}

/// Write `targets` (an address `host:port` and its labels, each) to the file
/// service discovery file `file`, atomically (Prometheus never reads half).
pub fn write_file_sd(file: &Path, targets: &[(String, Vec<(&str, String)>)]) {
    let groups: Vec<Value> = targets
        .iter()
        .map(|(addr, labels)| {
            let labels: serde_json::Map<String, Value> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            json!({ "targets": [addr], "labels": labels })
        })
        .collect();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&groups).unwrap()).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// Percent-encoding of a query parameter's value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------- the dashboard

pub const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/helm/push-to-k8s/dashboards/push-to-k8s.json"
);

/// The dashboard JSON in the repository (the chart's ConfigMap carries it).
pub fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, those inside rows included.
pub fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
    }
    out
}

/// Every PromQL query of the dashboard, with where it is: each panel target's
/// `expr`, and each query variable's `label_values(metric, label)` as the
/// PromQL Grafana runs for it (`count by (label) (metric)`).
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("a target without expr");
            out.push((
                format!("panel {:?} target {}", p["title"], t["refId"]),
                expr.to_string(),
            ));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .expect("a query variable's query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", v["name"]));
        let (metric, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        out.push((
            format!("variable {}", v["name"]),
            format!("count by ({}) ({})", label.trim(), metric.trim()),
        ));
    }
    out
}

/// `expr` with Grafana's variables replaced: the built-in intervals by
/// `interval`, and `$name` / `${name}` by `vars`. Panics on a variable left.
pub fn concrete(expr: &str, interval: &str, vars: &[(&str, &str)]) -> String {
    let mut s = expr.to_string();
    for builtin in ["$__rate_interval", "$__interval", "$__range"] {
        s = s.replace(builtin, interval);
    }
    for (k, v) in vars {
        s = s
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    assert!(!s.contains('$'), "a Grafana variable is left in {s}");
    s
}
