//! The relay under test: this same binary started as a child `serve` (registry, a fresh data
//! directory, compressed debounce and SLA windows, free loopback ports), or a running relay
//! given by `--target` (its registry is replaced with the fleet's through
//! `Admin.ReloadRegistry`). Also the Admin queries the benchmark makes of it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::model::Timing;
use crate::proto::admin_client::AdminClient;
use crate::proto::{GetDeliveryStatusRequest, ListParkedAlertsRequest, ReloadRegistryRequest};

/// Bound on the child's start (loading a large registry included).
const START_LIMIT: Duration = Duration::from_secs(300);
/// Bound on one Admin call.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// A subscriber of the relay, as `GetDeliveryStatus` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// Its name.
    pub name: String,
    /// The distributor IDs it owns.
    pub distributor_ids: Vec<u8>,
    /// `subscribe` or `push`.
    pub mode: String,
    /// Its log's head sequence now.
    pub head: u64,
}

/// The relay under test.
#[derive(Debug)]
pub struct Relay {
    /// Its gRPC URL.
    pub url: String,
    /// The `serve` command line of a child relay.
    pub command: Option<String>,
    child: Option<Child>,
    data_dir: Option<PathBuf>,
    log: Option<PathBuf>,
    probe: Probe,
}

/// Admin queries to the relay; cheap to clone.
#[derive(Debug, Clone)]
pub struct Probe {
    admin: AdminClient<Channel>,
}

impl Relay {
    /// Starts `exe serve` on free ports with `registry`, a fresh `data_dir` (removed again at
    /// [`Relay::stop`]) and `timing`'s debounce and windows; its log goes to `log`.
    pub async fn spawn(
        exe: &Path,
        registry: &Path,
        data_dir: &Path,
        log: &Path,
        timing: &Timing,
        config: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let (grpc, metrics) = free_ports()?;
        let mut args: Vec<String> = [
            "serve".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{grpc}"),
            "--metrics-listen".to_owned(),
            format!("127.0.0.1:{metrics}"),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--registry".to_owned(),
            registry.display().to_string(),
            "--debounce".to_owned(),
            format!("{}ms", timing.debounce_ms),
            "--poa-sla".to_owned(),
            format!("{}ms", timing.poa_window_ms),
            "--pra-sla".to_owned(),
            format!("{}ms", timing.pra_window_ms),
            // The benchmark measures the relay, not the per-publisher limit (all its
            // publishers share one address).
            "--publisher-events-per-second".to_owned(),
            "0".to_owned(),
        ]
        .into();
        if let Some(config) = config {
            args.extend(["--config".to_owned(), config.display().to_string()]);
        }
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating the relay log {}", log.display()))?;
        let child = Command::new(exe)
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let url = format!("http://127.0.0.1:{grpc}");
        let mut relay = Self {
            probe: Probe {
                admin: AdminClient::new(Endpoint::from_shared(url.clone())?.connect_lazy()),
            },
            url,
            command: Some(format!("{} {}", exe.display(), args.join(" "))),
            child: Some(child),
            data_dir: Some(data_dir.to_owned()),
            log: Some(log.to_owned()),
        };
        relay.wait_serving().await?;
        Ok(relay)
    }

    /// A running relay at `url`; its registry is replaced with `registry` (a path the relay
    /// can read: the benchmark and the relay share a machine, and the relay's `registry_dir`
    /// holds it).
    pub async fn target(url: &str, registry: &Path) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(CALL_LIMIT)
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let mut admin = AdminClient::new(channel);
        let path = std::fs::canonicalize(registry)?.display().to_string();
        let reloaded = admin
            .reload_registry(ReloadRegistryRequest { path })
            .await
            .context("Admin.ReloadRegistry with the generated fleet")?
            .into_inner();
        tracing::info!(
            devices = reloaded.devices,
            "target relay's registry replaced"
        );
        Ok(Self {
            url: url.to_owned(),
            command: None,
            child: None,
            data_dir: None,
            log: None,
            probe: Probe { admin },
        })
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        let endpoint = Endpoint::from_shared(self.url.clone())?.connect_timeout(CALL_LIMIT);
        loop {
            if let Some(exit) = self.exited() {
                anyhow::bail!("the relay exited during start ({exit})");
            }
            if let Ok(channel) = endpoint.connect().await {
                let mut health = HealthClient::new(channel);
                let check = health.check(HealthCheckRequest::default());
                if let Ok(Ok(response)) = tokio::time::timeout(CALL_LIMIT, check).await
                    && response.get_ref().status == ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("the relay did not start serving within {START_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The child's process ID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// If the child has exited: its status and the tail of its log.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        let tail = self
            .log
            .as_ref()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(10)..].join("\n")
            })
            .unwrap_or_default();
        Some(format!("{status}; log tail:\n{tail}"))
    }

    /// Admin queries to this relay.
    pub fn probe(&self) -> Probe {
        self.probe.clone()
    }

    /// Stops a child relay (SIGKILL: the run's data is thrown away) and removes its data
    /// directory. Nothing to do for a `--target` relay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Probe {
    /// The relay's subscribers.
    pub async fn subscribers(&self) -> anyhow::Result<Vec<SubscriberInfo>> {
        let mut admin = self.admin.clone();
        let status = tokio::time::timeout(
            CALL_LIMIT,
            admin.get_delivery_status(GetDeliveryStatusRequest::default()),
        )
        .await
        .context("GetDeliveryStatus timed out")??
        .into_inner();
        Ok(status
            .subscribers
            .into_iter()
            .map(|s| SubscriberInfo {
                name: s.subscriber,
                distributor_ids: s
                    .distributor_ids
                    .iter()
                    .filter_map(|d| u8::try_from(*d).ok())
                    .collect(),
                mode: s.mode,
                head: s.head_sequence,
            })
            .collect())
    }

    /// Unacknowledged alerts over every subscriber, and the relay's own SLA breach count.
    pub async fn backlog(&self) -> Option<(u64, u64)> {
        let mut admin = self.admin.clone();
        let request = admin.get_delivery_status(GetDeliveryStatusRequest::default());
        let status = tokio::time::timeout(CALL_LIMIT, request).await.ok()?.ok()?;
        Some(
            status
                .get_ref()
                .subscribers
                .iter()
                .fold((0, 0), |(b, s), x| (b + x.backlog, s + x.sla_breaches)),
        )
    }

    /// Alerts parked for want of a subscriber.
    pub async fn parked(&self) -> Option<u64> {
        let mut admin = self.admin.clone();
        let request = admin.list_parked_alerts(ListParkedAlertsRequest { limit: 1 });
        let parked = tokio::time::timeout(CALL_LIMIT, request).await.ok()?.ok()?;
        Some(parked.get_ref().total)
    }
}

/// Two loopback ports nothing listens on (bound together, then released).
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}
