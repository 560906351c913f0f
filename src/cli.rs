//! Command-line interface: `serve` flags (each also an `OUTAGE_RELAY_*` environment
//! variable) layered over the TOML config file, layered over the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::config::{Backend, Config, ConfigError, MetricsTls, TlsMode};
use crate::replay::ReplayArgs;
use crate::report::ReportArgs;
use crate::tools::health::HealthArgs;
use crate::tools::publish::PublishArgs;
use crate::tools::sink::SinkArgs;

/// outage-relay: Power Outage and Restoration Alerts to DNOs within the SEC deadlines.
#[derive(Debug, Parser)]
#[command(name = "outage-relay", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(ServeArgs),
    /// Run the reference DNO receiver (push mode) or subscriber (subscribe mode), recording
    /// alerts as JSON Lines or CIM XML and optionally POSTing them to an OMS.
    DnoSink(SinkArgs),
    /// Publish loss/restoration events the way a CSP adapter does.
    Publish(PublishArgs),
    /// Ask a relay's gRPC health service whether it is serving (exit 0) or not (exit 1).
    Health(HealthArgs),
    /// Validate the configuration `serve` would run with (same flags and variables), load the
    /// registry, and print the effective configuration as TOML; exit 64 if it cannot run.
    CheckConfig(ServeArgs),
    /// Run the SLA benchmark: a generated fleet and a scripted scenario against the relay.
    Bench(BenchArgs),
    /// Write the SLA compliance report (compliance.csv, compliance.html) per subscriber, day
    /// and kind, from a data directory or a running relay.
    Report(ReportArgs),
    /// Re-run the accepted events of an embedded data directory through the pipeline on a
    /// simulated clock (optionally with another debounce) and diff the alerts against those
    /// the relay emitted (replayed.csv, emitted.csv, diff.csv).
    Replay(ReplayArgs),
}

fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// `serve` flags; each overrides the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "OUTAGE_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "OUTAGE_RELAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus listen address [default: 127.0.0.1:9464].
    #[arg(long, env = "OUTAGE_RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How /metrics is served: `mutual` (HTTPS, a client certificate of a `metrics` or `admin`
    /// identity required), `server` (HTTPS) or `plaintext`; unset: `server` under
    /// `--tls-mode mutual`, else plaintext, on a loopback `--metrics-listen` only.
    #[arg(long, env = "OUTAGE_RELAY_METRICS_TLS", value_parser = metrics_tls)]
    pub metrics_tls: Option<MetricsTls>,
    /// Data directory of the embedded store [default: outage-relay-data].
    #[arg(long, env = "OUTAGE_RELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Device registry CSV (device_id,mpan_core,gsp_group[,substation_id,feeder_id]).
    #[arg(long, env = "OUTAGE_RELAY_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// Directory Admin.ReloadRegistry may load a file it names from [default: the directory
    /// of --registry].
    #[arg(long, env = "OUTAGE_RELAY_REGISTRY_DIR")]
    pub registry_dir: Option<PathBuf>,
    /// Debounce, e.g. 3m [default: 3m].
    #[arg(long, env = "OUTAGE_RELAY_DEBOUNCE", value_parser = duration)]
    pub debounce: Option<Duration>,
    /// POA delivery window after it is due, e.g. 60s [default: 60s].
    #[arg(long, env = "OUTAGE_RELAY_POA_SLA", value_parser = duration)]
    pub poa_sla: Option<Duration>,
    /// PRA delivery window after restoration, e.g. 60s [default: 60s].
    #[arg(long, env = "OUTAGE_RELAY_PRA_SLA", value_parser = duration)]
    pub pra_sla: Option<Duration>,
    /// Debounce shards; 0 = one per CPU [default: 0].
    #[arg(long, env = "OUTAGE_RELAY_SHARDS")]
    pub shards: Option<usize>,
    /// Events per second one publisher may send; 0 = no limit [default: 250000].
    #[arg(long, env = "OUTAGE_RELAY_PUBLISHER_EVENTS_PER_SECOND")]
    pub publisher_events_per_second: Option<u32>,
    /// `mutual` (TLS with client certificates) or `plaintext`; unset: plaintext, on a loopback
    /// `--listen` only.
    #[arg(long, env = "OUTAGE_RELAY_TLS_MODE", value_parser = tls_mode)]
    pub tls_mode: Option<TlsMode>,
    /// PEM certificate chain the relay presents.
    #[arg(long, env = "OUTAGE_RELAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "OUTAGE_RELAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) client certificates must chain to.
    #[arg(long, env = "OUTAGE_RELAY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) for client certificates, comma-separated;
    /// reloaded when they change.
    #[arg(long, env = "OUTAGE_RELAY_TLS_CRL", value_delimiter = ',')]
    pub tls_crl: Option<Vec<PathBuf>>,
    /// Storage: `embedded` (default), `jetstream` or `memory`.
    #[arg(long, env = "OUTAGE_RELAY_BACKEND", value_parser = backend)]
    pub backend: Option<Backend>,
    /// JetStream servers, comma-separated (`nats://host:4222,...`).
    #[arg(long, env = "OUTAGE_RELAY_JETSTREAM_SERVERS", value_delimiter = ',')]
    pub jetstream_servers: Option<Vec<String>>,
    /// This instance's name among those sharing the JetStream cluster.
    #[arg(long, env = "OUTAGE_RELAY_INSTANCE")]
    pub instance: Option<String>,
}

fn backend(text: &str) -> Result<Backend, String> {
    match text {
        "embedded" => Ok(Backend::Embedded),
        "jetstream" => Ok(Backend::Jetstream),
        "memory" => Ok(Backend::Memory),
        other => Err(format!(
            "{other:?} is not \"embedded\", \"jetstream\" or \"memory\""
        )),
    }
}

fn tls_mode(text: &str) -> Result<TlsMode, String> {
    match text {
        "mutual" => Ok(TlsMode::Mutual),
        "plaintext" => Ok(TlsMode::Plaintext),
        other => Err(format!("{other:?} is not \"mutual\" or \"plaintext\"")),
    }
}

fn metrics_tls(text: &str) -> Result<MetricsTls, String> {
    [
        MetricsTls::Mutual,
        MetricsTls::Server,
        MetricsTls::Plaintext,
    ]
    .into_iter()
    .find(|choice| choice.as_str() == text)
    .ok_or_else(|| format!("{text:?} is not \"mutual\", \"server\" or \"plaintext\""))
}

impl ServeArgs {
    /// The effective config: defaults, then the file, then these flags; validated.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(listen) = self.metrics_listen {
            config.metrics_listen = listen;
        }
        if self.metrics_tls.is_some() {
            config.metrics_tls = self.metrics_tls;
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if self.registry.is_some() {
            config.registry = self.registry;
        }
        if self.registry_dir.is_some() {
            config.registry_dir = self.registry_dir;
        }
        if let Some(debounce) = self.debounce {
            config.debounce = debounce;
        }
        if let Some(sla) = self.poa_sla {
            config.poa_sla = sla;
        }
        if let Some(sla) = self.pra_sla {
            config.pra_sla = sla;
        }
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        if let Some(rate) = self.publisher_events_per_second {
            config.limits.publisher_events_per_second = rate;
        }
        if self.tls_mode.is_some() {
            config.tls.mode = self.tls_mode;
        }
        if self.tls_cert.is_some() {
            config.tls.cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            config.tls.key = self.tls_key;
        }
        if self.tls_client_ca.is_some() {
            config.tls.client_ca = self.tls_client_ca;
        }
        if let Some(crl) = self.tls_crl {
            config.tls.crl = crl;
        }
        if let Some(backend) = self.backend {
            config.store.backend = backend;
        }
        if let Some(servers) = self.jetstream_servers {
            config.store.jetstream.servers = servers;
        }
        if self.instance.is_some() {
            config.store.jetstream.instance = self.instance;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["outage-relay", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Serve(args) => args,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "debounce = \"2m\"\npoa_sla = \"30s\"\n").expect("write");
        let config = serve_args(&[
            "--config",
            file.to_str().expect("utf-8"),
            "--debounce",
            "250ms",
        ])
        .into_config()
        .expect("valid");
        assert_eq!(config.debounce, Duration::from_millis(250));
        assert_eq!(config.poa_sla, Duration::from_secs(30));
        assert_eq!(config.pra_sla, Duration::from_secs(60));
    }

    #[test]
    fn durations_accept_human_units_and_refuse_garbage() {
        let args = serve_args(&[
            "--debounce",
            "3m",
            "--poa-sla",
            "60s",
            "--pra-sla",
            "1m 30s",
        ]);
        assert_eq!(args.debounce, Some(Duration::from_secs(180)));
        assert_eq!(args.pra_sla, Some(Duration::from_secs(90)));
        let argv = ["outage-relay", "serve", "--debounce", "soon"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn no_flags_give_the_defaults() {
        let config = serve_args(&[]).into_config().expect("valid");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn an_invalid_combination_is_refused() {
        let err = serve_args(&["--debounce", "0s"])
            .into_config()
            .expect_err("zero debounce");
        assert!(err.to_string().contains("debounce"), "{err}");
    }
}
