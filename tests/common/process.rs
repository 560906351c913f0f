//! Child processes for the tests that run real programs (the compiled `outage-relay` binary,
//! Prometheus): free loopback ports, processes killed when a test ends, output captured to
//! files, and plain HTTP/1.0 GETs over a tokio `TcpStream`.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::WAIT;

/// The compiled `outage-relay` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_outage-relay");

/// A loopback port on which nothing listens (bound, then released), from 10000–19999: below
/// the kernel's ephemeral range (32768–60999 by default), from which port 0 binds and the
/// local ends of outgoing connections are drawn alike: a port found by binding port 0 could
/// become the local end of a connection before the program meant to listen on it started,
/// and stay busy as long as that connection (a relay failed to start for a whole minute with
/// "Address already in use" that way). `.ci/nats-cluster` picks its ports from 20000–32000.
pub async fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TRIED: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for _ in 0..10_000 {
        let tried = TRIED.fetch_add(1, Ordering::Relaxed);
        let offset = seed.wrapping_add(tried.wrapping_mul(7_919)) % 10_000;
        let port = 10_000 + u16::try_from(offset).expect("below 10000");
        if TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 10000-19999");
}

/// A child process, killed if the test ends while it still runs.
pub struct Running {
    child: Child,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded by [`WAIT`]) for the process to exit.
    pub async fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("query the child") {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `program` with `args` in `dir`, stdout and stderr going to `dir/{name}.out` and
/// `dir/{name}.err`, with `env` added to the environment.
pub fn spawn_program(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
    name: &str,
) -> Running {
    let stdout = std::fs::File::create(dir.join(format!("{name}.out"))).expect("stdout file");
    let stderr = std::fs::File::create(dir.join(format!("{name}.err"))).expect("stderr file");
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|err| panic!("start {program}: {err}"));
    Running { child }
}

/// Starts the `outage-relay` binary with `args` (see [`spawn_program`]), logging at `info`.
pub fn spawn(args: &[&str], dir: &Path, name: &str) -> Running {
    spawn_program(BIN, args, &[("OUTAGE_RELAY_LOG", "info")], dir, name)
}

/// The contents of `dir/name`, or "" if it cannot be read.
pub fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Runs the binary to completion (bounded by [`WAIT`]): exit status, stdout, stderr.
pub async fn run_to_exit(args: &[&str], dir: &Path, name: &str) -> (ExitStatus, String, String) {
    let mut running = spawn(args, dir, name);
    let status = running.exit().await;
    let out = read(dir, &format!("{name}.out"));
    let err = read(dir, &format!("{name}.err"));
    (status, out, err)
}

/// `GET path` on `127.0.0.1:port` over plain HTTP/1.0: the status code and the body, or the
/// connection error.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    http_get_over(stream, &format!("127.0.0.1:{port}"), path).await
}

/// `GET path` with `Host: host` over an open connection (plain or TLS), read to its end:
/// the status code and the body.
pub async fn http_get_over<S>(
    mut stream: S,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    Ok((status, body.to_owned()))
}

/// `GET /metrics` from the relay's metrics listener; returns the body.
pub async fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics")
        .await
        .expect("connect to the metrics listener");
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the relay at `url` reports SERVING on `grpc.health.v1`, failing with its log
/// (`serve.err` in `dir`) if it never does within [`WAIT`].
pub async fn wait_healthy(url: &str, dir: &Path) -> tonic::transport::Channel {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let channel = super::connect(url).await;
    let mut health = HealthClient::new(channel.clone());
    let deadline = Instant::now() + WAIT;
    loop {
        let check = health.check(HealthCheckRequest::default()).await;
        if check.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
            return channel;
        }
        assert!(
            Instant::now() < deadline,
            "the relay never became healthy: {}",
            read(dir, "serve.err")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
