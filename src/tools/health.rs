//! `outage-relay health`: asks a relay's `grpc.health.v1.Health/Check` whether it is serving,
//! for container health checks and scripts. Exit code 0 when the answer is `SERVING`, 1 for
//! anything else (not serving, unknown service, no answer), always with a one-line message.

use std::process::ExitCode;
use std::time::Duration;

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::tls_args::TlsArgs;
use crate::error::error_chain;

/// Flags of `outage-relay health`.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthArgs {
    /// The relay's gRPC endpoint (`https://` with `--tls-ca`).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// TLS to the relay; health needs no client certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Service to ask about; "" (the default) is the relay as a whole.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub service: String,
    /// Bound on connecting plus the call, e.g. 5s.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Asks the health service; `Ok` with the line to print when it answered `SERVING`, `Err` with
/// the reason otherwise.
pub async fn check(args: &HealthArgs) -> Result<String, String> {
    let what = format!("{} service {:?}", args.target, args.service);
    let endpoint = args
        .tls
        .endpoint(&args.target)
        .map_err(|err| format!("{what}: {err:#}"))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let answer = tokio::time::timeout(args.timeout, async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|err| format!("cannot connect: {}", error_chain(&err)))?;
        let request = HealthCheckRequest {
            service: args.service.clone(),
        };
        HealthClient::new(channel)
            .check(request)
            .await
            .map(|response| response.into_inner().status)
            .map_err(|status| match status.code() {
                Code::NotFound => "unknown service (NOT_FOUND)".to_owned(),
                code => format!("{code:?}: {}", status.message()),
            })
    })
    .await
    .map_err(|_| format!("{what}: no answer within {:?}", args.timeout))?;
    match answer.map(ServingStatus::try_from) {
        Ok(Ok(ServingStatus::Serving)) => Ok(format!("{what}: SERVING")),
        Ok(Ok(status)) => Err(format!("{what}: {}", status.as_str_name())),
        Ok(Err(unknown)) => Err(format!("{what}: unknown status {}", unknown.0)),
        Err(reason) => Err(format!("{what}: {reason}")),
    }
}

/// Runs `outage-relay health`: prints one line (stdout when serving, stderr otherwise) and
/// returns the exit code, 0 only for `SERVING`.
pub async fn run(args: HealthArgs) -> ExitCode {
    match check(&args).await {
        Ok(line) => {
            println!("outage-relay health: {line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            eprintln!("outage-relay health: {line}");
            ExitCode::FAILURE
        }
    }
}
