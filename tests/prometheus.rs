//! The Prometheus rules (`deploy/prometheus`) and the Grafana dashboard (`deploy/grafana`)
//! against the relay: every metric they use is one the relay exports, and a real Prometheus
//! scrapes the real relay binary, records its latency histogram and evaluates the alerting
//! rules on it; with the deploy scrape job it scrapes over TLS, presenting a client
//! certificate.
//!
//! Prometheus comes from Debian's `prometheus` package, which the project's test command,
//! `.ci/test`, installs when it is missing.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pki::{PemPair, Pki, SERVER_NAME};
use common::process::{Running, free_port, http_get, read, spawn, spawn_program, wait_healthy};
use common::{bounded, device, lost, now_ms, valid_mpan};
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{AckRequest, EventBatch, SubscribeRequest};
use outage_relay::telemetry;
use serde_json::Value;
use tokio::time::Instant;

/// Bound on waiting for Prometheus to start, scrape and evaluate (it scrapes and evaluates
/// every second here); only turns a hang into a failure.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);

/// The rule whose firing the live test waits for.
const DISCONNECTED_ALERT: &str = "OutageRelaySubscriberDisconnectedWithBacklog";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Files under `dir` (recursively) whose names end with one of `extensions`, sorted.
fn files(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a deploy directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if extensions
                .iter()
                .any(|ext| path.to_string_lossy().ends_with(ext))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Every `outage_relay_[a-z_]+` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "outage_relay_";
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..len].to_owned());
        rest = &tail[len..];
    }
    names
}

const HISTOGRAMS: [&str; 4] = [
    telemetry::EMIT_LAG,
    telemetry::DELIVERY_LATENCY,
    telemetry::INGEST_BATCH_LATENCY,
    telemetry::STORE_COMMIT_LATENCY,
];

/// Every metric name the relay exports (`src/telemetry.rs`).
fn exported() -> BTreeSet<&'static str> {
    let mut names: BTreeSet<&str> = HISTOGRAMS.into_iter().collect();
    names.extend([
        telemetry::EVENTS,
        telemetry::EVENTS_REJECTED,
        telemetry::ALERTS,
        telemetry::ALERTS_PARKED,
        telemetry::SLA_BREACHES,
        telemetry::PENDING_TIMERS,
        telemetry::OPEN_OUTAGES,
        telemetry::BACKLOG,
        telemetry::CONNECTED,
        telemetry::PARKED_NOW,
        telemetry::ALERTS_EXPIRED,
        telemetry::STORE_ERRORS,
        telemetry::INGEST_REFUSED,
        telemetry::CALLS_REFUSED,
        telemetry::TLS_CERT_EXPIRY,
        telemetry::TLS_CLIENT_CA_EXPIRY,
        telemetry::TLS_CRL_NEXT_UPDATE,
        telemetry::TLS_RELOADS,
        telemetry::TLS_RELOAD_FAILING,
        telemetry::PARTITIONS_OWNED,
        telemetry::PARTITION_LAG,
        telemetry::LEASE_CHANGES,
        telemetry::ALERTS_DEDUPLICATED,
        telemetry::JETSTREAM_ERRORS,
        telemetry::OWNER_ERRORS,
        telemetry::LOG_TORN_TAILS,
    ]);
    names
}

/// The exported metric `name` refers to: itself, or the histogram whose `_bucket`, `_count` or
/// `_sum` series it is.
fn base_metric(name: &str) -> &str {
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(base) = name.strip_suffix(suffix)
            && HISTOGRAMS.contains(&base)
        {
            return base;
        }
    }
    name
}

/// The names the rule files record (`record: NAME`).
fn recorded_names() -> BTreeSet<String> {
    files(&deploy().join("prometheus/rules"), &[".yml"])
        .iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(path).expect("read a rules file");
            text.lines()
                .filter_map(|line| line.trim().strip_prefix("- record:"))
                .map(|name| name.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every `expr` string in a Grafana dashboard.
fn dashboard_exprs(value: &Value, exprs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => exprs.push(expr.clone()),
                    _ => dashboard_exprs(value, exprs),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| dashboard_exprs(v, exprs)),
        _ => {}
    }
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    files(&deploy().join("grafana"), &[".json"])
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read a dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()));
            (path, json)
        })
        .collect()
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_one_the_relay_exports() {
    let exported = exported();
    let mut sources = files(&deploy().join("prometheus"), &[".yml", ".yaml"]);
    sources.extend(files(&deploy().join("grafana"), &[".json"]));
    let mut used = BTreeSet::new();
    for path in &sources {
        let text = std::fs::read_to_string(path).expect("read a deploy file");
        for name in metric_names(&text) {
            assert!(
                exported.contains(base_metric(&name)),
                "{} uses {name}, which the relay does not export (src/telemetry.rs)",
                path.display()
            );
            used.insert(base_metric(&name).to_owned());
        }
    }
    // The rules and the dashboard cover what the issue asks for.
    for needed in [
        telemetry::DELIVERY_LATENCY,
        telemetry::SLA_BREACHES,
        telemetry::BACKLOG,
        telemetry::CONNECTED,
        telemetry::EVENTS,
        telemetry::INGEST_REFUSED,
        telemetry::STORE_ERRORS,
        telemetry::OPEN_OUTAGES,
        telemetry::PARTITION_LAG,
        telemetry::JETSTREAM_ERRORS,
        telemetry::TLS_CERT_EXPIRY,
        telemetry::TLS_CRL_NEXT_UPDATE,
        telemetry::TLS_RELOAD_FAILING,
    ] {
        assert!(used.contains(needed), "nothing in deploy/ uses {needed}");
    }
}

#[test]
fn the_dashboard_uses_only_recorded_series_the_rules_define() {
    let recorded = recorded_names();
    assert!(!recorded.is_empty(), "no recording rules found");
    let (_, dashboard) = dashboards()
        .into_iter()
        .next()
        .expect("a dashboard in deploy/grafana");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no queries");
    for expr in exprs {
        // Recorded series are named level:metric:operation.
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.matches(':').count() == 2 {
                assert!(
                    recorded.contains(word),
                    "the dashboard uses {word}, which no recording rule defines"
                );
            }
        }
    }
}

/// Percent-encodes a query-string value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The path of `program` on `PATH`, if any.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// A Prometheus server on a loopback port, with its own temporary TSDB.
struct Prometheus {
    port: u16,
    dir: PathBuf,
    process: Running,
}

impl Prometheus {
    /// Starts Prometheus with `scrape_configs` (YAML, from `scrape_configs:` on), scraping and
    /// evaluating `rules` every second.
    async fn start(dir: &Path, scrape_configs: &str, rules: &str) -> Self {
        let Some(program) = on_path("prometheus") else {
            panic!(
                "prometheus is not on PATH: run the project's test command, .ci/test, which \
                 installs Debian's prometheus package when it is missing"
            );
        };
        std::fs::write(dir.join("rules.yml"), rules).expect("write the rules copy");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yml\n\
             {scrape_configs}"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let port = free_port().await;
        let process = spawn_program(
            &program.to_string_lossy(),
            &[
                &format!("--config.file={}", dir.join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ],
            &[],
            dir,
            "prometheus",
        );
        Self {
            port,
            dir: dir.to_path_buf(),
            process,
        }
    }

    /// `GET path` on the HTTP API: the `data` of a successful answer, `None` while Prometheus
    /// is not answering yet.
    async fn api(&mut self, path: &str) -> Option<Value> {
        assert!(
            self.process.is_running(),
            "prometheus exited: {}",
            read(&self.dir, "prometheus.err")
        );
        let (status, body) = http_get(self.port, path).await.ok()?;
        if status == 503 {
            return None; // starting up
        }
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("{path}: HTTP {status}, not JSON ({err}): {body}"));
        assert_eq!(json["status"], "success", "{path}: HTTP {status}: {body}");
        Some(json["data"].clone())
    }

    /// The result vector of the instant query `query`.
    async fn query(&mut self, query: &str) -> Option<Vec<Value>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(query)))
            .await?;
        data["result"].as_array().cloned()
    }

    /// Polls `check` with this server until it returns `Some` (bounded by
    /// [`PROMETHEUS_WAIT`]); `what` names it in the failure.
    async fn until<T>(
        &mut self,
        what: &str,
        mut check: impl AsyncFnMut(&mut Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        loop {
            if let Some(value) = check(self).await {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; prometheus log:\n{}",
                read(&self.dir, "prometheus.err")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The value of a single-sample query result, if there is exactly one sample.
fn single_value(result: &[Value]) -> Option<f64> {
    match result {
        [sample] => sample["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// The deploy rules with every `for:` shortened to 1 s, so that alerts fire within the test.
fn rules_with_short_for() -> String {
    let path = deploy().join("prometheus/rules/outage-relay.yml");
    let rules = std::fs::read_to_string(path).expect("read the rules");
    assert!(rules.contains(DISCONNECTED_ALERT));
    rules
        .lines()
        .map(|line| match line.split_once("for:") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 1s"),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_relay_and_evaluates_the_rules() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let grpc_port = free_port().await;
    let metrics_port = free_port().await;
    let listen = format!("127.0.0.1:{grpc_port}");
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let url = format!("http://{listen}");
    let _relay = spawn(
        &[
            "serve",
            "--listen",
            &listen,
            "--metrics-listen",
            &metrics_listen,
            "--debounce",
            "1s",
        ],
        dir.path(),
        "serve",
    );
    let scrape = format!(
        "scrape_configs:\n  - job_name: outage-relay\n    static_configs:\n      \
         - targets: [\"127.0.0.1:{metrics_port}\"]\n"
    );
    let mut prometheus = Prometheus::start(dir.path(), &scrape, &rules_with_short_for()).await;

    let channel = wait_healthy(&url, dir.path()).await;

    // Prometheus has scraped the relay before any alert exists, so the histogram's increase
    // is seen by rate().
    prometheus
        .until("a first scrape of the relay", async |p| {
            let result = p.query(r#"up{job="outage-relay"}"#).await?;
            (single_value(&result)? == 1.0).then_some(())
        })
        .await;

    // ukpn is subscribed and acknowledges its POA; enwl has no subscriber, so its POA waits.
    let mut feed = AlertFeedClient::new(channel.clone());
    let mut stream = bounded(
        "Subscribe",
        feed.subscribe(SubscribeRequest {
            subscriber: "ukpn".into(),
            from_sequence: 0,
        }),
    )
    .await
    .expect("Subscribe")
    .into_inner();
    let long_ago = now_ms() - 10_000;
    let events = vec![
        lost(&device(0x7001), long_ago, Some(&valid_mpan(12, 7001))),
        lost(&device(0x7002), long_ago, Some(&valid_mpan(16, 7002))),
    ];
    let ack = bounded(
        "PublishBatch",
        IngestClient::new(channel.clone()).publish_batch(EventBatch {
            events,
            batch_id: 1,
        }),
    )
    .await
    .expect("PublishBatch")
    .into_inner();
    assert_eq!(ack.accepted, 2, "{ack:?}");
    let poa = bounded("the ukpn POA", stream.message())
        .await
        .expect("a healthy stream")
        .expect("an alert");
    bounded(
        "Ack",
        feed.ack(AckRequest {
            subscriber: "ukpn".into(),
            sequence: poa.sequence,
        }),
    )
    .await
    .expect("Ack");

    // The latency histogram, as Prometheus stored it.
    prometheus
        .until("the delivery histogram's count", async |p| {
            let result = p
                .query(r#"outage_relay_alert_delivery_seconds_count{subscriber="ukpn",kind="poa"}"#)
                .await?;
            (single_value(&result)? == 1.0).then_some(())
        })
        .await;
    prometheus
        .until("the emission lag histogram's count", async |p| {
            let result = p
                .query(r#"outage_relay_alert_emit_lag_seconds_count{kind="poa"}"#)
                .await?;
            (single_value(&result)? == 2.0).then_some(())
        })
        .await;
    // The recording rule built on the histogram's 60 s bucket: one alert, within the SLA.
    let compliance = prometheus
        .until("ukpn's SLA compliance", async |p| {
            let result = p
                .query(r#"subscriber_kind:outage_relay_alert_delivery_seconds:sla_compliance_5m{subscriber="ukpn",kind="poa"}"#)
                .await?;
            single_value(&result)
        })
        .await;
    assert_eq!(compliance, 1.0);

    // enwl: not connected, one undelivered alert: the rule fires, for enwl only.
    let firing = prometheus
        .until("the disconnected-with-backlog alert to fire", async |p| {
            let alerts = p.api("/api/v1/alerts").await?["alerts"].as_array()?.clone();
            let ours: Vec<Value> = alerts
                .into_iter()
                .filter(|a| a["labels"]["alertname"] == DISCONNECTED_ALERT)
                .collect();
            ours.iter().any(|a| a["state"] == "firing").then_some(ours)
        })
        .await;
    let subscribers: Vec<&str> = firing
        .iter()
        .filter_map(|a| a["labels"]["subscriber"].as_str())
        .collect();
    assert_eq!(subscribers, ["enwl"], "{firing:?}");
    assert_eq!(firing[0]["labels"]["severity"], "page");

    // Every rule has been evaluated against the real relay's series without error.
    let rules = prometheus
        .until("every rule to be evaluated", async |p| {
            let groups = p.api("/api/v1/rules").await?["groups"].as_array()?.clone();
            let rules: Vec<Value> = groups
                .iter()
                .filter_map(|g| g["rules"].as_array())
                .flatten()
                .cloned()
                .collect();
            rules
                .iter()
                .all(|r| r["health"] != "unknown")
                .then_some(rules)
        })
        .await;
    assert!(rules.len() >= 10, "{rules:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // Every dashboard query is valid PromQL that this Prometheus can run.
    for (path, dashboard) in dashboards() {
        let mut exprs = Vec::new();
        dashboard_exprs(&dashboard, &mut exprs);
        for expr in exprs {
            let query = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*")
                .replace("$subscriber", ".*");
            assert!(!query.contains('$'), "{}: {expr}", path.display());
            let answer = prometheus.query(&query).await;
            assert!(answer.is_some(), "{}: {query}", path.display());
        }
    }
}

/// The scrape job of deploy/prometheus/prometheus.yml (`scheme: https` and its `tls_config`)
/// pointed at `127.0.0.1:port`, trusting `ca` for the relay's certificate, with the
/// `cert_file` and `key_file` of `client` that the file says to add for
/// `metrics_tls = "mutual"`.
fn deploy_scrape_over_mutual_tls(port: u16, ca: &Path, client: &PemPair) -> String {
    let path = deploy().join("prometheus/prometheus.yml");
    let text = std::fs::read_to_string(path).expect("read the deploy prometheus.yml");
    let (_, jobs) = text
        .split_once("scrape_configs:")
        .expect("a scrape_configs section");
    let replace = |text: String, from: &str, to: &str| {
        assert!(
            text.contains(from),
            "deploy/prometheus/prometheus.yml has no {from:?}: {text}"
        );
        text.replace(from, to)
    };
    let jobs = replace(
        format!("scrape_configs:{jobs}"),
        "scheme: https",
        "scheme: https",
    );
    let jobs = replace(jobs, "outage-relay:9464", &format!("127.0.0.1:{port}"));
    let jobs = replace(
        jobs,
        "server_name: outage-relay",
        &format!("server_name: {SERVER_NAME}"),
    );
    replace(
        jobs,
        "ca_file: /etc/prometheus/outage-relay-tls/ca.crt",
        &format!(
            "ca_file: {}\n      cert_file: {}\n      key_file: {}",
            ca.display(),
            client.cert.display(),
            client.key.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_relay_over_mutual_tls_with_the_deploy_scrape_job() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = Pki::new(dir.path(), "dsp");
    let server = pki.server("relay");
    let client = pki.client("prometheus", "spiffe://dsp.test/prometheus");
    let (grpc_port, metrics_port) = (free_port().await, free_port().await);
    let config = format!(
        "listen = \"127.0.0.1:{grpc_port}\"\n\
         metrics_listen = \"127.0.0.1:{metrics_port}\"\n\
         metrics_tls = \"mutual\"\n\
         data_dir = \"data\"\n\
         [tls]\n\
         mode = \"mutual\"\n\
         cert = {:?}\n\
         key = {:?}\n\
         client_ca = {:?}\n\
         [[tls.identities]]\n\
         identity = \"spiffe://dsp.test/prometheus\"\n\
         role = \"metrics\"\n",
        server.cert.display().to_string(),
        server.key.display().to_string(),
        pki.ca.display().to_string(),
    );
    let config_path = dir.path().join("relay.toml");
    std::fs::write(&config_path, config).expect("write the relay config");
    let _relay = spawn(
        &["serve", "--config", &config_path.display().to_string()],
        dir.path(),
        "serve",
    );
    let scrape = deploy_scrape_over_mutual_tls(metrics_port, &pki.ca, &client);
    let mut prometheus = Prometheus::start(dir.path(), &scrape, "groups: []\n").await;

    prometheus
        .until("a scrape of the relay over mutual TLS", async |p| {
            let result = p.query(r#"up{job="outage-relay"}"#).await?;
            (single_value(&result)? == 1.0).then_some(())
        })
        .await;
    let connected = prometheus
        .until("ukpn's connection gauge", async |p| {
            let result = p
                .query(r#"outage_relay_subscriber_connected{subscriber="ukpn"}"#)
                .await?;
            single_value(&result)
        })
        .await;
    assert_eq!(connected, 0.0, "{}", read(dir.path(), "serve.err"));
}
