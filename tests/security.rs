//! Who may see what, over real mutual TLS on loopback with certificates made at test time:
//! each role allowed and refused, no DNO reading another's alerts by any call, expired and
//! untrusted certificates refused, push receivers verified. And what the relay answers the
//! callers it serves: oversized and unreadable requests refused alike on every service and
//! counted, registry reloads kept to the registry directory and never quoting a file, and
//! reflection in both of its versions.

mod common;

use std::path::Path;

use bytes::{Buf as _, BufMut as _};

use common::pki::{PemPair, Pki, SERVER_NAME, tls_channel};
use common::{LONG_AGO_MS, TestRelay, bounded, device, eventually, lost, now_ms, valid_mpan};
use outage_relay::config::{Config, IdentityConfig, PushConfig, TlsMode};
use outage_relay::proto::admin_client::AdminClient;
use outage_relay::proto::alert_feed_client::AlertFeedClient;
use outage_relay::proto::ingest_client::IngestClient;
use outage_relay::proto::{
    AckRequest, EventBatch, GetDeliveryStatusRequest, GetDeviceStateRequest,
    ListOpenOutagesRequest, ListParkedAlertsRequest, ReloadRegistryRequest, SubscribeRequest,
    SummaryRequest,
};
use outage_relay::security::Role;
use outage_relay::tools::sink::{ReceivedAlerts, RecordOptions, Recorder, serve_receiver};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ServerTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PUBLISHER: &str = "spiffe://csp.test/adapter-1";
const UKPN: &str = "spiffe://dno.test/ukpn";
const NGED: &str = "spiffe://dno.test/nged";
const ADMIN: &str = "spiffe://dsp.test/ops";
const SCRAPER: &str = "spiffe://dsp.test/prometheus";

/// The certificates of one test: a CA the relay trusts and one it does not.
struct Certs {
    _dir: TempDir,
    pki: Pki,
    rogue: Pki,
    server: PemPair,
    publisher: PemPair,
    ukpn: PemPair,
    nged: PemPair,
    admin: PemPair,
    scraper: PemPair,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path(), "dsp");
        let rogue = Pki::new(dir.path(), "rogue");
        Self {
            server: pki.server("relay"),
            publisher: pki.client("publisher", PUBLISHER),
            ukpn: pki.client("ukpn", UKPN),
            nged: pki.client("nged", NGED),
            admin: pki.client("admin", ADMIN),
            scraper: pki.client("scraper", SCRAPER),
            pki,
            rogue,
            _dir: dir,
        }
    }

    fn configure(&self, config: &mut Config) {
        config.tls.mode = Some(TlsMode::Mutual);
        config.tls.cert = Some(self.server.cert.clone());
        config.tls.key = Some(self.server.key.clone());
        config.tls.client_ca = Some(self.pki.ca.clone());
        let identity = |identity: &str, role, subscriber: Option<&str>| IdentityConfig {
            identity: identity.to_owned(),
            role,
            subscriber: subscriber.map(str::to_owned),
        };
        config.tls.identities = vec![
            identity(PUBLISHER, Role::Publisher, None),
            identity(UKPN, Role::Subscriber, Some("ukpn")),
            identity(NGED, Role::Subscriber, Some("nged")),
            identity(ADMIN, Role::Admin, None),
            identity(SCRAPER, Role::Metrics, None),
        ];
    }

    async fn relay(&self) -> TestRelay {
        TestRelay::start_with(|config, _| self.configure(config)).await
    }
}

async fn channel(relay: &TestRelay, ca: &Path, client: Option<&PemPair>) -> Channel {
    bounded("a TLS connection", tls_channel(relay.addr, ca, client))
        .await
        .expect("the TLS handshake succeeds")
}

/// An old outage of a UKPN supply (distributor 12): its POA is due at once.
fn ukpn_outage(n: u64) -> EventBatch {
    EventBatch {
        events: vec![lost(
            &device(n),
            now_ms() - LONG_AGO_MS,
            Some(&valid_mpan(12, n)),
        )],
        batch_id: n,
    }
}

fn subscribe(subscriber: &str) -> SubscribeRequest {
    SubscribeRequest {
        subscriber: subscriber.to_owned(),
        from_sequence: 0,
    }
}

fn ack(subscriber: &str) -> AckRequest {
    AckRequest {
        subscriber: subscriber.to_owned(),
        sequence: 1,
    }
}

/// Every call a caller could make, with the code it got (`Ok` mapped to `Code::Ok`).
async fn every_call(channel: Channel, feed_of: &str) -> Vec<(&'static str, Code)> {
    fn code<T>(result: Result<T, tonic::Status>) -> Code {
        result.map_or_else(|status| status.code(), |_| Code::Ok)
    }
    let mut ingest = IngestClient::new(channel.clone());
    let mut feed = AlertFeedClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);
    let publish = code(ingest.publish_batch(ukpn_outage(900)).await);
    let publish_stream = match ingest
        .publish(futures::stream::iter([ukpn_outage(901)]))
        .await
    {
        Ok(response) => code(response.into_inner().message().await),
        Err(status) => status.code(),
    };
    vec![
        ("Ingest.PublishBatch", publish),
        ("Ingest.Publish", publish_stream),
        (
            "AlertFeed.Subscribe",
            code(feed.subscribe(subscribe(feed_of)).await),
        ),
        ("AlertFeed.Ack", code(feed.ack(ack(feed_of)).await)),
        (
            "AlertFeed.WatchSummaries",
            code(
                feed.watch_summaries(SummaryRequest {
                    subscriber: feed_of.to_owned(),
                    interval: None,
                })
                .await,
            ),
        ),
        (
            "Admin.GetDeviceState",
            code(
                admin
                    .get_device_state(GetDeviceStateRequest {
                        device_id: device(1),
                    })
                    .await,
            ),
        ),
        (
            "Admin.ListOpenOutages",
            code(
                admin
                    .list_open_outages(ListOpenOutagesRequest::default())
                    .await,
            ),
        ),
        (
            "Admin.ListParkedAlerts",
            code(
                admin
                    .list_parked_alerts(ListParkedAlertsRequest::default())
                    .await,
            ),
        ),
        (
            "Admin.GetDeliveryStatus",
            code(
                admin
                    .get_delivery_status(GetDeliveryStatusRequest {
                        subscriber: feed_of.to_owned(),
                    })
                    .await,
            ),
        ),
        (
            "Admin.ReloadRegistry",
            code(
                admin
                    .reload_registry(ReloadRegistryRequest::default())
                    .await,
            ),
        ),
    ]
}

fn codes_of<'a>(calls: &'a [(&'static str, Code)], prefix: &str) -> Vec<(&'a str, Code)> {
    calls
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, code)| (*name, *code))
        .collect()
}

fn all(calls: &[(&str, Code)], code: Code) -> bool {
    calls.iter().all(|(_, c)| *c == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_may_publish_and_nothing_else() {
    let certs = Certs::new();
    let relay = certs.relay().await;
    let calls = every_call(
        channel(&relay, &certs.pki.ca, Some(&certs.publisher)).await,
        "ukpn",
    )
    .await;
    assert!(all(&codes_of(&calls, "Ingest."), Code::Ok), "{calls:?}");
    assert!(
        all(&codes_of(&calls, "AlertFeed."), Code::PermissionDenied),
        "{calls:?}"
    );
    assert!(
        all(&codes_of(&calls, "Admin."), Code::PermissionDenied),
        "{calls:?}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_identity_may_call_no_service() {
    let certs = Certs::new();
    let relay = certs.relay().await;
    let calls = every_call(
        channel(&relay, &certs.pki.ca, Some(&certs.scraper)).await,
        "ukpn",
    )
    .await;
    assert!(all(&calls, Code::PermissionDenied), "{calls:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_may_use_admin_only() {
    let certs = Certs::new();
    let relay = certs.relay().await;
    let calls = every_call(
        channel(&relay, &certs.pki.ca, Some(&certs.admin)).await,
        "ukpn",
    )
    .await;
    let admin = codes_of(&calls, "Admin.");
    // ReloadRegistry fails for its own reason (no registry file configured), past the check.
    let expected = |name: &str| {
        if name == "Admin.ReloadRegistry" {
            Code::InvalidArgument
        } else {
            Code::Ok
        }
    };
    assert!(
        admin.iter().all(|(name, code)| *code == expected(name)),
        "{calls:?}"
    );
    assert!(
        all(&codes_of(&calls, "Ingest."), Code::PermissionDenied),
        "{calls:?}"
    );
    assert!(
        all(&codes_of(&calls, "AlertFeed."), Code::PermissionDenied),
        "{calls:?}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dno_reads_its_own_feed_and_no_other_by_any_call() {
    let certs = Certs::new();
    let relay = certs.relay().await;
    let publisher = channel(&relay, &certs.pki.ca, Some(&certs.publisher)).await;
    let ack = IngestClient::new(publisher)
        .publish_batch(ukpn_outage(1))
        .await
        .expect("the publisher publishes")
        .into_inner();
    assert_eq!(ack.accepted, 1);

    // UKPN receives its POA and acknowledges it.
    let ukpn = channel(&relay, &certs.pki.ca, Some(&certs.ukpn)).await;
    let mut feed = AlertFeedClient::new(ukpn.clone());
    let mut stream = feed
        .subscribe(subscribe("ukpn"))
        .await
        .expect("UKPN subscribes to its own feed")
        .into_inner();
    let alert = bounded("UKPN's POA", stream.message())
        .await
        .expect("the stream stays up")
        .expect("an alert");
    assert_eq!(alert.device_id, device(1));
    feed.ack(AckRequest {
        subscriber: "ukpn".into(),
        sequence: alert.sequence,
    })
    .await
    .expect("UKPN acknowledges its own feed");
    feed.watch_summaries(SummaryRequest {
        subscriber: "ukpn".into(),
        interval: None,
    })
    .await
    .expect("UKPN watches its own summaries");

    // NGED, also a subscriber, reaches UKPN's alerts by no call at all.
    let nged = channel(&relay, &certs.pki.ca, Some(&certs.nged)).await;
    let calls = every_call(nged.clone(), "ukpn").await;
    assert!(
        calls
            .iter()
            .all(|(_, code)| *code == Code::PermissionDenied),
        "{calls:?}"
    );
    // Nor by naming a feed that does not exist (no existence oracle), while its own is fine.
    let mut nged_feed = AlertFeedClient::new(nged);
    let unknown = nged_feed
        .subscribe(subscribe("nobody"))
        .await
        .expect_err("not its feed");
    assert_eq!(unknown.code(), Code::PermissionDenied);
    nged_feed
        .subscribe(subscribe("nged"))
        .await
        .expect("NGED subscribes to its own feed");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_or_an_unknown_one_is_unauthenticated() {
    let certs = Certs::new();
    let relay = certs.relay().await;
    let stranger = certs.pki.client("stranger", "spiffe://elsewhere.test/who");
    for (who, client) in [
        ("no certificate", None),
        ("unknown identity", Some(&stranger)),
    ] {
        let calls = every_call(channel(&relay, &certs.pki.ca, client).await, "ukpn").await;
        assert!(
            calls.iter().all(|(_, code)| *code == Code::Unauthenticated),
            "{who}: {calls:?}"
        );
    }
    // Health answers over TLS without a certificate (for probes).
    let mut health = HealthClient::new(channel(&relay, &certs.pki.ca, None).await);
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    relay.stop().await;
}

/// A handshake the relay refuses leaves the client with no working channel: either the
/// connection fails, or its first call does.
async fn refused(relay: &TestRelay, ca: &Path, client: &PemPair) -> bool {
    match tls_channel(relay.addr, ca, Some(client)).await {
        Err(_) => true,
        Ok(channel) => IngestClient::new(channel)
            .publish_batch(ukpn_outage(77))
            .await
            .is_err_and(|status| {
                // TLS 1.3 clients finish their side before the server checks their
                // certificate, so the refusal shows as the connection going away.
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                )
            }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_untrusted_certificates_are_refused() {
    let certs = Certs::new();
    let relay = certs.relay().await;
    let expired = certs.pki.expired_client("expired", PUBLISHER);
    let untrusted = certs.rogue.client("untrusted", PUBLISHER);
    assert!(refused(&relay, &certs.pki.ca, &expired).await, "expired");
    assert!(
        refused(&relay, &certs.pki.ca, &untrusted).await,
        "untrusted"
    );
    // Plaintext to a TLS listener gets nowhere either.
    let plain = common::connect(&relay.url).await;
    assert!(
        IngestClient::new(plain)
            .publish_batch(ukpn_outage(78))
            .await
            .is_err()
    );
    // The same identity with a valid certificate is served.
    let ok = channel(&relay, &certs.pki.ca, Some(&certs.publisher)).await;
    IngestClient::new(ok)
        .publish_batch(ukpn_outage(79))
        .await
        .expect("a valid publisher certificate is served");
    relay.stop().await;
}

/// Hosts an `AlertReceiver` with `server`'s certificate, requiring client certificates from
/// `client_ca`; returns its URL and what it receives.
async fn receiver(
    server: &PemPair,
    client_ca: &Path,
    stop: &CancellationToken,
) -> (String, ReceivedAlerts) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = ReceivedAlerts::new();
    let recorder = Recorder::open(RecordOptions {
        keep: Some(received.clone()),
        ..RecordOptions::default()
    })
    .expect("recorder");
    let tls = ServerTlsConfig::new()
        .identity(server.identity())
        .client_ca_root(Certificate::from_pem(
            std::fs::read(client_ca).expect("read CA"),
        ));
    tokio::spawn(serve_receiver(listener, recorder, stop.clone(), Some(tls)));
    (format!("https://127.0.0.1:{port}"), received)
}

fn push_to(config: &mut Config, endpoint: &str, ca: &Path) {
    common::push_ukpn(
        config,
        PushConfig {
            endpoint: endpoint.to_owned(),
            ca: Some(ca.to_owned()),
            domain: Some(SERVER_NAME.to_owned()),
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_delivers_only_to_a_receiver_with_a_trusted_certificate() {
    let certs = Certs::new();
    let stop = CancellationToken::new();
    // UKPN's receiver, certified by the CA the relay trusts for UKPN, verifying the relay.
    let genuine = certs.pki.server("ukpn-receiver");
    let (url, recorder) = receiver(&genuine, &certs.pki.ca, &stop).await;
    let relay = TestRelay::start_with(|config, _| {
        certs.configure(config);
        push_to(config, &url, &certs.pki.ca);
    })
    .await;
    let publisher = channel(&relay, &certs.pki.ca, Some(&certs.publisher)).await;
    IngestClient::new(publisher)
        .publish_batch(ukpn_outage(5))
        .await
        .expect("published");
    let alerts = bounded("the pushed POA", recorder.wait_for(1)).await;
    assert_eq!(alerts[0].device_id, device(5));
    relay.stop().await;

    // An impostor at UKPN's address with a certificate from another CA gets nothing.
    let impostor = certs.rogue.server("impostor");
    let (url, recorder) = receiver(&impostor, &certs.pki.ca, &stop).await;
    let relay = TestRelay::start_with(|config, _| {
        certs.configure(config);
        push_to(config, &url, &certs.pki.ca);
    })
    .await;
    let publisher = channel(&relay, &certs.pki.ca, Some(&certs.publisher)).await;
    IngestClient::new(publisher)
        .publish_batch(ukpn_outage(6))
        .await
        .expect("published");
    let admin = channel(&relay, &certs.pki.ca, Some(&certs.admin)).await;
    let mut admin = AdminClient::new(admin);
    let error = eventually("the push failure to be reported", || {
        let mut admin = admin.clone();
        async move {
            let status = admin
                .get_delivery_status(GetDeliveryStatusRequest {
                    subscriber: "ukpn".into(),
                })
                .await
                .ok()?
                .into_inner()
                .subscribers
                .pop()?;
            (!status.last_error.is_empty()).then_some(status.last_error)
        }
    })
    .await;
    assert!(error.contains("certificate"), "{error}");
    assert!(recorder.snapshot().is_empty());
    let status = admin
        .get_delivery_status(GetDeliveryStatusRequest {
            subscriber: "ukpn".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.subscribers[0].acked_sequence, 0, "{status:?}");
    stop.cancel();
    relay.stop().await;
}

/// Requests as bytes, sent as they are, and answers read as bytes: what a typed client
/// cannot send.
#[derive(Debug, Clone, Copy, Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `path` with `request` as its one request message and returns the status the call
/// ends with; an answer instead of a refusal fails the test.
async fn raw_call(channel: Channel, path: &'static str, request: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    bounded("the channel to be ready", grpc.ready())
        .await
        .expect("the channel is ready");
    let call = grpc.streaming(
        tonic::Request::new(futures::stream::iter([request])),
        PathAndQuery::from_static(path),
        RawBytes,
    );
    match bounded(path, call).await {
        Err(status) => status,
        Ok(response) => match bounded(path, response.into_inner().message()).await {
            Err(status) => status,
            Ok(answer) => panic!("{path} answered {answer:?} instead of refusing"),
        },
    }
}

/// Every method the relay hosts, with the certificate allowed to call it (health needs
/// none). Reflection is left out: its service ends its stream without a status when it
/// cannot read a request, so there is no refusal to see.
fn every_method(certs: &Certs) -> Vec<(&'static str, Option<&PemPair>)> {
    let (publisher, ukpn, admin) = (
        Some(&certs.publisher),
        Some(&certs.ukpn),
        Some(&certs.admin),
    );
    vec![
        ("/outage_relay.v1.Ingest/Publish", publisher),
        ("/outage_relay.v1.Ingest/PublishBatch", publisher),
        ("/outage_relay.v1.AlertFeed/Subscribe", ukpn),
        ("/outage_relay.v1.AlertFeed/Ack", ukpn),
        ("/outage_relay.v1.AlertFeed/WatchSummaries", ukpn),
        ("/outage_relay.v1.Admin/GetDeviceState", admin),
        ("/outage_relay.v1.Admin/ListOpenOutages", admin),
        ("/outage_relay.v1.Admin/ListParkedAlerts", admin),
        ("/outage_relay.v1.Admin/ReloadRegistry", admin),
        ("/outage_relay.v1.Admin/GetDeliveryStatus", admin),
        ("/outage_relay.v1.Admin/GetClusterStatus", admin),
        ("/grpc.health.v1.Health/Check", None),
        ("/grpc.health.v1.Health/Watch", None),
    ]
}

// The two tests below are the only ones in this binary whose calls count as `too_large` or
// `malformed`, so each can expect exact counts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_resource_exhausted_on_every_service_and_counted() {
    let certs = Certs::new();
    let relay = certs.relay().await;
    let limit = relay.config.limits.max_message_bytes;
    assert_eq!(limit, 4 * 1024 * 1024, "the default limit");
    let before = common::calls_refused("too_large").await;
    let methods = every_method(&certs);
    for (path, client) in &methods {
        let channel = channel(&relay, &certs.pki.ca, *client).await;
        let refused = raw_call(channel, path, vec![0; 5 * 1024 * 1024]).await;
        assert_eq!(refused.code(), Code::ResourceExhausted, "{path}: {refused}");
        assert!(
            refused
                .message()
                .contains(&format!("limit of {limit} bytes")),
            "{path}: {refused}"
        );
        assert_eq!(
            refused.message().contains("send smaller batches"),
            path.starts_with("/outage_relay.v1.Ingest/"),
            "{path}: {refused}"
        );
    }
    // The feed's own OUT_OF_RANGE (a sequence beyond the head) is left as it is, uncounted.
    let ukpn = channel(&relay, &certs.pki.ca, Some(&certs.ukpn)).await;
    let beyond = AlertFeedClient::new(ukpn)
        .subscribe(SubscribeRequest {
            subscriber: "ukpn".into(),
            from_sequence: 5,
        })
        .await
        .expect_err("nothing is at sequence 5 yet");
    assert_eq!(beyond.code(), Code::OutOfRange, "{beyond}");
    assert_eq!(
        common::calls_refused("too_large").await - before,
        methods.len() as u64
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_protobuf_are_invalid_argument_on_every_service_and_counted() {
    let certs = Certs::new();
    let relay = certs.relay().await;
    let before = common::calls_refused("malformed").await;
    let methods = every_method(&certs);
    for (path, client) in &methods {
        let channel = channel(&relay, &certs.pki.ca, *client).await;
        // 'n' is field 13 with wire type 6, which does not exist: no message type reads it.
        let refused = raw_call(channel, path, b"not protobuf".to_vec()).await;
        assert_eq!(refused.code(), Code::InvalidArgument, "{path}: {refused}");
        assert!(
            refused
                .message()
                .starts_with("the request is not a valid protobuf message"),
            "{path}: {refused}"
        );
    }
    assert_eq!(
        common::calls_refused("malformed").await - before,
        methods.len() as u64
    );
    relay.stop().await;
}

/// The first line of `/etc/passwd`: what a reload must never show.
const PASSWD_LINE: &str = "root:x:0:0:root:/root:/bin/bash";

/// A relay under mutual TLS whose registry is `registries/registry.csv` in its temporary
/// directory (one device, `device(1)`), beside `outside/`: a valid registry listing
/// `device(2)` and a password file.
async fn relay_with_a_registry_directory(certs: &Certs) -> TestRelay {
    TestRelay::start_with(|config, dir| {
        certs.configure(config);
        let registries = dir.join("registries");
        let outside = dir.join("outside");
        for made in [&registries, &outside, &registries.join("sub")] {
            std::fs::create_dir(made).expect("make a directory");
        }
        let mpan = valid_mpan(12, 1);
        config.registry = Some(common::write_registry(
            &registries,
            "registry.csv",
            &[(&device(1), &mpan, "_C")],
        ));
        let mpan = valid_mpan(12, 2);
        common::write_registry(&outside, "registry.csv", &[(&device(2), &mpan, "_C")]);
        std::fs::write(outside.join("passwd"), format!("{PASSWD_LINE}\n")).expect("write");
    })
    .await
}

async fn reload(admin: &mut AdminClient<Channel>, path: &str) -> Result<u64, tonic::Status> {
    bounded(
        "ReloadRegistry",
        admin.reload_registry(ReloadRegistryRequest { path: path.into() }),
    )
    .await
    .map(|response| response.into_inner().devices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_reload_loads_only_from_the_registry_directory() {
    let certs = Certs::new();
    let relay = relay_with_a_registry_directory(&certs).await;
    let dir = relay.dir.path().to_owned();
    let registries = dir.join("registries");
    let outside = dir.join("outside");
    std::os::unix::fs::symlink(outside.join("registry.csv"), registries.join("link.csv"))
        .expect("symlink");
    std::os::unix::fs::symlink(outside.join("passwd"), registries.join("passwd")).expect("symlink");
    std::os::unix::fs::symlink(&outside, registries.join("out")).expect("symlink");
    let show = |path: &std::path::Path| path.display().to_string();
    let mut admin = AdminClient::new(channel(&relay, &certs.pki.ca, Some(&certs.admin)).await);

    let outside_the_directory = [
        "/etc/passwd".to_owned(),
        show(&registries.join("../../../../../../../../../../../../etc/passwd")),
        "../../../../../../../../../../../../etc/passwd".to_owned(),
        show(&outside.join("passwd")),
        show(&outside.join("registry.csv")),
        show(&registries.join("../outside/registry.csv")),
        "../outside/registry.csv".to_owned(),
        "link.csv".to_owned(),
        "passwd".to_owned(),
        "out/registry.csv".to_owned(),
        // Missing files outside answer the same: a reload cannot probe the file system.
        "/nonexistent/registry.csv".to_owned(),
        "../outside/missing.csv".to_owned(),
    ];
    for path in &outside_the_directory {
        let refused = reload(&mut admin, path).await.expect_err(path);
        assert_eq!(refused.code(), Code::PermissionDenied, "{path}: {refused}");
        assert!(
            refused
                .message()
                .contains("not a file in the registry directory"),
            "{path}: {refused}"
        );
        assert!(!refused.message().contains("root:"), "{path}: {refused}");
    }
    // Nothing was loaded: device 2 (listed only outside) is still unknown.
    let state = admin
        .get_device_state(GetDeviceStateRequest {
            device_id: device(2),
        })
        .await
        .expect("GetDeviceState")
        .into_inner();
    assert_eq!(state.mpan_core, "", "{state:?}");

    // Inside the directory: by relative name, by absolute path, in a subdirectory, and the
    // configured file when the request names none.
    common::write_registry(&registries, "next.csv", &[]);
    let mpan = valid_mpan(12, 3);
    common::write_registry(
        &registries.join("sub"),
        "more.csv",
        &[(&device(3), &mpan, "_C")],
    );
    for (path, devices) in [
        ("next.csv".to_owned(), 0),
        (show(&registries.join("next.csv")), 0),
        ("sub/more.csv".to_owned(), 1),
        ("sub/../registry.csv".to_owned(), 1),
        (String::new(), 1),
    ] {
        let loaded = reload(&mut admin, &path).await;
        assert_eq!(
            loaded.as_ref().map_err(tonic::Status::code),
            Ok(&devices),
            "{path:?}: {loaded:?}"
        );
    }
    let missing = reload(&mut admin, "missing.csv")
        .await
        .expect_err("no such file");
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing}");
    assert!(missing.message().contains("cannot read"), "{missing}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registry_names_the_line_and_the_reason_never_the_content() {
    let certs = Certs::new();
    let relay = relay_with_a_registry_directory(&certs).await;
    let registries = relay.dir.path().join("registries");
    std::fs::write(
        registries.join("passwd.csv"),
        format!("{PASSWD_LINE}\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"),
    )
    .expect("write");
    std::fs::write(
        registries.join("bad.csv"),
        format!(
            "device_id,mpan_core,gsp_group\n{PASSWD_LINE}\n{PASSWD_LINE},{},_C\n{},{PASSWD_LINE},_C\n",
            valid_mpan(12, 4),
            device(4)
        ),
    )
    .expect("write");
    let mut admin = AdminClient::new(channel(&relay, &certs.pki.ca, Some(&certs.admin)).await);

    let named = |file: &str| registries.join(file).display().to_string();
    let refused = reload(&mut admin, &named("passwd.csv"))
        .await
        .expect_err("not a registry");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(
        refused
            .message()
            .contains("line 1: not the header \"device_id,mpan_core,gsp_group\""),
        "{refused}"
    );
    assert!(!refused.message().contains("root"), "{refused}");

    let refused = reload(&mut admin, &named("bad.csv"))
        .await
        .expect_err("bad rows");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    for reason in [
        "line 2: expected 3 fields (device_id,mpan_core,gsp_group), found 1",
        "line 3: device_id is not an EUI-64",
        "line 4: mpan_core is not 13 digits",
    ] {
        assert!(refused.message().contains(reason), "{reason}: {refused}");
    }
    assert!(!refused.message().contains("root"), "{refused}");
    relay.stop().await;
}

/// Asks reflection `version` (`v1` or `v1alpha`, whose generated types differ only by module)
/// to list the services and describe Admin, and checks both answers.
macro_rules! check_reflection {
    ($version:ident, $probe:expr, $expected:expr) => {{
        use tonic_reflection::pb::$version as pb;
        let label = stringify!($version);
        let mut client = pb::server_reflection_client::ServerReflectionClient::new($probe);
        let requests = [
            pb::server_reflection_request::MessageRequest::ListServices(String::new()),
            pb::server_reflection_request::MessageRequest::FileContainingSymbol(
                "outage_relay.v1.Admin".into(),
            ),
        ]
        .map(|request| pb::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        });
        let mut answers = bounded(
            "ServerReflectionInfo",
            client.server_reflection_info(futures::stream::iter(requests)),
        )
        .await
        .unwrap_or_else(|status| panic!("{label} reflection answers: {status}"))
        .into_inner();
        let listed = bounded("a reflection answer", answers.message())
            .await
            .expect("a healthy stream")
            .and_then(|answer| answer.message_response);
        let Some(pb::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            listed
        else {
            panic!("{label}: expected a service list, got {listed:?}");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(
            $expected.iter().all(|name| names.contains(name)),
            "{label}: {names:?}"
        );
        let described = bounded("a reflection answer", answers.message())
            .await
            .expect("a healthy stream")
            .and_then(|answer| answer.message_response);
        assert!(
            matches!(
                described,
                Some(pb::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files))
                    if !files.file_descriptor_proto.is_empty()
            ),
            "{label}: {described:?}"
        );
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_in_v1_and_v1alpha() {
    let certs = Certs::new();
    let relay = certs.relay().await;
    // Like health, reflection answers anyone who completes the handshake.
    let probe = channel(&relay, &certs.pki.ca, None).await;
    let expected = [
        "outage_relay.v1.Ingest",
        "outage_relay.v1.AlertFeed",
        "outage_relay.v1.Admin",
        "grpc.health.v1.Health",
    ];
    check_reflection!(v1, probe.clone(), expected);
    check_reflection!(v1alpha, probe, expected);
    relay.stop().await;
}
