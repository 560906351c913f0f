//! `dno-sink --format cim --post URL` against the real binary: alerts relayed by an in-process
//! relay reach a small in-test HTTP OMS as IEC 61968-9 `EndDeviceEvents` XML, in order and
//! once each; the relay is acknowledged only after the OMS answered 2xx; 5xx and 429 are
//! retried; a 400 stops the sink (exit 1) leaving the alert for the next sink; an HTTPS OMS is
//! verified against `--post-ca`. Subscribe mode and push mode.
//!
//! The test OMS answers each request only when the test tells it which status to send, so
//! the relay's cursor can be checked while an alert is held by the OMS.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::pki::{PemPair, Pki};
use common::process::{Running, free_port, read, spawn};
use common::{
    LONG_AGO_MS, TestRelay, bounded, device, eventually, loopback_push, lost, now_ms, push_ukpn,
    restored, valid_mpan,
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

const NAMESPACE: &str = "http://iec.ch/TC57/2011/EndDeviceEvents#";

/// One POST the test OMS received, waiting for the test to choose its answer.
struct Posted {
    content_type: String,
    body: String,
    reply: oneshot::Sender<u16>,
}

impl Posted {
    /// Answers it with `status` and returns what was posted.
    fn answer(self, status: u16) -> (String, Event) {
        let event = Event::parse(&self.body);
        let _ = self.reply.send(status);
        (self.content_type, event)
    }
}

/// The test OMS: an HTTP/1 server on loopback whose requests the test answers one by one.
struct Oms {
    url: String,
    requests: mpsc::Receiver<Posted>,
}

impl Oms {
    /// A plain-HTTP OMS.
    async fn start() -> Self {
        Self::serve(None).await
    }

    /// An HTTPS OMS presenting `pair` (a certificate for `127.0.0.1`).
    async fn start_tls(pair: &PemPair) -> Self {
        let certs = CertificateDer::pem_file_iter(&pair.cert)
            .expect("read the certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM certificates");
        let key = PrivateKeyDer::from_pem_file(&pair.key).expect("read the key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a server certificate");
        Self::serve(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!(
            "{scheme}://{}/oms/end-device-events",
            listener.local_addr().expect("address")
        );
        let (tx, requests) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let tx = tx.clone();
                        async move { Ok::<_, Infallible>(handle(request, tx).await) }
                    });
                    let connection = http1::Builder::new();
                    let _ = match tls {
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                connection
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            Err(_) => return,
                        },
                        None => {
                            connection
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                    };
                });
            }
        });
        Self { url, requests }
    }

    /// The next request, bounded by `common::WAIT`.
    async fn next(&mut self) -> Posted {
        bounded("a POST to the OMS", self.requests.recv())
            .await
            .expect("the OMS server runs")
    }
}

async fn handle(request: Request<Incoming>, tx: mpsc::Sender<Posted>) -> Response<Full<Bytes>> {
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let (reply, answer) = oneshot::channel();
    let status = match tx
        .send(Posted {
            content_type,
            body,
            reply,
        })
        .await
    {
        Ok(()) => answer.await.unwrap_or(500),
        Err(_) => 500,
    };
    let mut response = Response::new(Full::new(Bytes::from(format!("answer {status}"))));
    *response.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    if status == 429 {
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("0"),
        );
    }
    response
}

/// What one `EndDeviceEvents` message says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    mrid: String,
    created: String,
    event_type: String,
    device: String,
    mpan: String,
    details: BTreeMap<String, String>,
}

impl Event {
    fn parse(xml: &str) -> Self {
        let doc = roxmltree::Document::parse(xml).unwrap_or_else(|err| panic!("{err}: {xml}"));
        let root = doc.root_element();
        assert!(root.has_tag_name((NAMESPACE, "EndDeviceEvents")), "{xml}");
        let event = child(root, "EndDeviceEvent");
        let details = event
            .children()
            .filter(|n| n.has_tag_name((NAMESPACE, "EndDeviceEventDetails")))
            .map(|detail| (text(child(detail, "name")), text(child(detail, "value"))))
            .collect();
        Self {
            mrid: text(child(event, "mRID")),
            created: text(child(event, "createdDateTime")),
            event_type: child(event, "EndDeviceEventType")
                .attribute("ref")
                .unwrap_or_default()
                .to_owned(),
            device: text(child(child(event, "Assets"), "mRID")),
            mpan: text(child(child(event, "UsagePoint"), "mRID")),
            details,
        }
    }

    fn sequence(&self) -> u64 {
        self.details["sequence"]
            .parse()
            .expect("a numeric sequence")
    }
}

/// The child element `name` of `parent`.
fn child<'a, 'input>(
    parent: roxmltree::Node<'a, 'input>,
    name: &str,
) -> roxmltree::Node<'a, 'input> {
    parent
        .children()
        .find(|n| n.has_tag_name((NAMESPACE, name)))
        .unwrap_or_else(|| panic!("no {name} in {}", parent.tag_name().name()))
}

fn text(node: roxmltree::Node<'_, '_>) -> String {
    node.text().unwrap_or_default().to_owned()
}

/// Publishes a restoration learned late for a new device: the relay emits its POA and then
/// its PRA. Returns the device, its MPAN and the restoration time.
async fn outage_and_restoration(relay: &TestRelay, n: u64) -> (String, String, i64) {
    let dev = device(n);
    let mpan = valid_mpan(12, n);
    let restored_at = now_ms() - 50;
    relay
        .publish_ok(vec![restored(
            &dev,
            restored_at,
            Some(restored_at - LONG_AGO_MS),
            Some(&mpan),
        )])
        .await;
    (dev, mpan, restored_at)
}

async fn acked(relay: &TestRelay) -> u64 {
    relay.delivery_status("ukpn").await.acked_sequence
}

/// `dno-sink` subscribed to `relay` as UKPN, posting CIM to `oms`, with `extra` flags.
fn subscribed_sink(
    relay: &TestRelay,
    oms: &Oms,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Running {
    let output = dir.join(format!("{name}.xml")).display().to_string();
    let mut args = vec![
        "dno-sink",
        "--subscribe",
        &relay.url,
        "--subscriber",
        "ukpn",
        "--format",
        "cim",
        "--post",
        &oms.url,
        "--output",
        &output,
    ];
    args.extend(extra);
    spawn(&args, dir, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_mode_posts_a_poa_and_a_pra_as_cim() {
    let relay = TestRelay::start().await;
    let mut oms = Oms::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (dev, mpan, restored_at) = outage_and_restoration(&relay, 0x9001).await;

    let mut sink = subscribed_sink(&relay, &oms, dir.path(), "sink", &["--once-count", "2"]);
    let (content_type, poa) = oms.next().await.answer(200);
    assert_eq!(content_type, "application/xml");
    let (_, pra) = oms.next().await.answer(204);
    let status = sink.exit().await;
    assert!(status.success(), "{}", read(dir.path(), "sink.err"));

    let lost_at = outage_relay::domain::UtcMillis(restored_at - LONG_AGO_MS).to_string();
    let restored = outage_relay::domain::UtcMillis(restored_at).to_string();
    assert_eq!(poa.event_type, "3.26.0.47");
    assert!(poa.mrid.starts_with("poa-"), "{poa:?}");
    assert_eq!(poa.created, lost_at);
    assert_eq!(
        (poa.device.as_str(), poa.mpan.as_str()),
        (dev.as_str(), mpan.as_str())
    );
    assert_eq!(poa.sequence(), 1);
    assert_eq!(poa.details["subscriber"], "ukpn");
    assert_eq!(poa.details["distributor_id"], "12");
    assert_eq!(poa.details["learned_late"], "true");
    assert!(!poa.details.contains_key("outage_duration_ms"), "{poa:?}");
    assert_eq!(pra.event_type, "3.26.0.216");
    assert!(pra.mrid.starts_with("pra-"), "{pra:?}");
    assert_eq!(pra.created, restored);
    assert_eq!(pra.details["restored_at"], restored);
    assert_eq!(pra.details["lost_at"], lost_at);
    assert_eq!(pra.details["outage_duration_ms"], LONG_AGO_MS.to_string());
    assert_eq!(
        (pra.device.as_str(), pra.mpan.as_str()),
        (dev.as_str(), mpan.as_str())
    );
    assert_eq!(pra.sequence(), 2);
    for key in ["due_at", "deadline", "emitted_at", "gsp_group", "phase"] {
        assert!(
            poa.details.contains_key(key) && pra.details.contains_key(key),
            "{key}"
        );
    }

    // The file holds the same messages, one per line.
    let lines: Vec<Event> = read(dir.path(), "sink.xml")
        .lines()
        .map(Event::parse)
        .collect();
    assert_eq!(lines, [poa, pra]);
    assert_eq!(acked(&relay).await, 2);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_mode_retries_5xx_and_429_and_acks_only_after_the_oms_took_the_alert() {
    let relay = TestRelay::start().await;
    let mut oms = Oms::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    outage_and_restoration(&relay, 0x9002).await;
    let mut sink = subscribed_sink(&relay, &oms, dir.path(), "sink", &[]);

    let mut answered = Vec::new();
    for status in [503, 429, 500, 200] {
        let request = oms.next().await;
        // The OMS holds the first alert: nothing may be acknowledged yet.
        assert_eq!(acked(&relay).await, 0);
        answered.push((status, request.answer(status).1));
    }
    let request = oms.next().await;
    // The OMS holds the second: at most the first may be acknowledged.
    assert!(acked(&relay).await <= 1);
    answered.push((200, request.answer(200).1));
    eventually("the relay to record both acks", || async {
        (acked(&relay).await == 2).then_some(())
    })
    .await;

    let first = &answered[0].1;
    assert!(
        answered[..4].iter().all(|(_, event)| event == first),
        "retries resend the message"
    );
    assert_eq!(first.sequence(), 1);
    assert_eq!(answered[4].1.sequence(), 2);
    let accepted: Vec<u64> = answered
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, event)| event.sequence())
        .collect();
    assert_eq!(accepted, [1, 2], "each alert accepted once, in order");
    assert!(sink.is_running());
    let lines: Vec<Event> = read(dir.path(), "sink.xml")
        .lines()
        .map(Event::parse)
        .collect();
    assert_eq!(
        lines.iter().map(Event::sequence).collect::<Vec<_>>(),
        [1, 2]
    );
    sink.kill();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_mode_a_400_stops_the_sink_and_leaves_the_alert_for_the_next_one() {
    let relay = TestRelay::start().await;
    let mut oms = Oms::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    outage_and_restoration(&relay, 0x9003).await;

    let mut sink = subscribed_sink(&relay, &oms, dir.path(), "refused", &[]);
    let (_, poa) = oms.next().await.answer(200);
    let (_, pra) = oms.next().await.answer(400);
    let status = sink.exit().await;
    let log = read(dir.path(), "refused.err");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("refused") && log.contains("400"), "{log}");
    assert_eq!(
        acked(&relay).await,
        1,
        "the accepted POA is acknowledged, the PRA is not"
    );
    let lines: Vec<Event> = read(dir.path(), "refused.xml")
        .lines()
        .map(Event::parse)
        .collect();
    assert_eq!(lines, [poa], "the refused alert is not recorded");

    // A new sink gets the refused alert again, and only it.
    let mut again = subscribed_sink(&relay, &oms, dir.path(), "again", &["--once-count", "1"]);
    let (_, resent) = oms.next().await.answer(200);
    assert!(
        again.exit().await.success(),
        "{}",
        read(dir.path(), "again.err")
    );
    assert_eq!(resent, pra);
    assert_eq!(acked(&relay).await, 2);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mode_posts_retries_and_acks_after_the_oms_took_the_alert() {
    let port = free_port().await;
    let relay = TestRelay::start_with(|config, _| push_ukpn(config, loopback_push(port))).await;
    let mut oms = Oms::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let listen = format!("127.0.0.1:{port}");
    let mut sink = spawn(
        &[
            "dno-sink", "--listen", &listen, "--format", "cim", "--post", &oms.url, "--quiet",
        ],
        dir.path(),
        "push",
    );
    let dev = device(0x9004);
    relay
        .publish_ok(vec![lost(
            &dev,
            now_ms() - LONG_AGO_MS,
            Some(&valid_mpan(12, 0x9004)),
        )])
        .await;
    let (dev2, _, _) = outage_and_restoration(&relay, 0x9005).await;

    let mut events = Vec::new();
    for status in [503, 503, 200] {
        let request = oms.next().await;
        assert_eq!(
            acked(&relay).await,
            0,
            "nothing acknowledged while the OMS holds alert 1"
        );
        let (_, event) = request.answer(status);
        if status == 200 {
            events.push(event);
        }
    }
    for held in 2..=3 {
        let request = oms.next().await;
        assert!(
            acked(&relay).await < held,
            "alert {held} acknowledged before the OMS took it"
        );
        events.push(request.answer(200).1);
    }
    eventually("the relay to record the acks", || async {
        (acked(&relay).await == 3).then_some(())
    })
    .await;
    let summary: Vec<_> = events
        .iter()
        .map(|event| {
            (
                event.sequence(),
                event.event_type.as_str(),
                event.device.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "3.26.0.47", dev.as_str()),
            (2, "3.26.0.47", dev2.as_str()),
            (3, "3.26.0.216", dev2.as_str()),
        ]
    );
    assert!(sink.is_running(), "{}", read(dir.path(), "push.err"));
    sink.kill();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_mode_a_400_stops_the_sink_and_leaves_the_alert_for_the_next_one() {
    let port = free_port().await;
    let relay = TestRelay::start_with(|config, _| push_ukpn(config, loopback_push(port))).await;
    let mut oms = Oms::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let listen = format!("127.0.0.1:{port}");
    let url = oms.url.clone();
    let push_sink = |name: &str| {
        spawn(
            &[
                "dno-sink", "--listen", &listen, "--format", "cim", "--post", &url, "--quiet",
            ],
            dir.path(),
            name,
        )
    };
    let mut sink = push_sink("refused");
    outage_and_restoration(&relay, 0x9006).await;
    let (_, poa) = oms.next().await.answer(200);
    let (_, pra) = oms.next().await.answer(400);
    let status = sink.exit().await;
    let log = read(dir.path(), "refused.err");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("refused") && log.contains("400"), "{log}");
    assert_eq!((poa.sequence(), pra.sequence()), (1, 2));
    eventually("the relay to record the POA's ack", || async {
        (acked(&relay).await == 1).then_some(())
    })
    .await;

    // The next sink on the same address gets the refused PRA again, and only it.
    let mut again = push_sink("again");
    let (_, resent) = oms.next().await.answer(200);
    assert_eq!(resent, pra);
    eventually("the relay to record the PRA's ack", || async {
        (acked(&relay).await == 2).then_some(())
    })
    .await;
    assert!(again.is_running(), "{}", read(dir.path(), "again.err"));
    again.kill();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_oms_is_verified_against_post_ca() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = Pki::new(dir.path(), "oms");
    let mut oms = Oms::start_tls(&pki.loopback_server("oms-server")).await;
    assert!(oms.url.starts_with("https://127.0.0.1:"), "{}", oms.url);
    outage_and_restoration(&relay, 0x9007).await;

    // A sink trusting another CA cannot reach the OMS: the alert stays unacknowledged.
    let other = Pki::new(dir.path(), "other");
    let other_ca = other.ca.display().to_string();
    let mut untrusting = subscribed_sink(
        &relay,
        &oms,
        dir.path(),
        "untrusting",
        &["--post-ca", &other_ca],
    );
    eventually("a certificate error in the sink's log", || async {
        let log = read(dir.path(), "untrusting.err");
        log.contains("invalid peer certificate").then_some(())
    })
    .await;
    assert_eq!(acked(&relay).await, 0);
    untrusting.kill();

    let ca = pki.ca.display().to_string();
    let mut sink = subscribed_sink(
        &relay,
        &oms,
        dir.path(),
        "sink",
        &["--post-ca", &ca, "--once-count", "2"],
    );
    let (content_type, poa) = oms.next().await.answer(200);
    assert_eq!(content_type, "application/xml");
    let (_, pra) = oms.next().await.answer(200);
    assert!(
        sink.exit().await.success(),
        "{}",
        read(dir.path(), "sink.err")
    );
    assert_eq!((poa.event_type.as_str(), poa.sequence()), ("3.26.0.47", 1));
    assert_eq!((pra.event_type.as_str(), pra.sequence()), ("3.26.0.216", 2));
    assert_eq!(acked(&relay).await, 2);
    relay.stop().await;
}
