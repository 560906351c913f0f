//! The relay's service errors and their one mapping to gRPC status codes.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::log::LogError;

/// An error a gRPC call answers with.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such subscriber or device.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this, whoever it is (a registry outside the registry directory).
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was exceeded; retry after the hint.
    #[error("{message}")]
    Exhausted {
        /// What was exceeded.
        message: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// The relay is shutting down or a stage stopped.
    #[error("{0}")]
    Unavailable(String),
    /// A log failure.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl From<RelayError> for Status {
    fn from(err: RelayError) -> Self {
        let message = err.to_string();
        match err {
            RelayError::InvalidArgument(_) => Status::invalid_argument(message),
            RelayError::NotFound(_) => Status::not_found(message),
            RelayError::PermissionDenied(_) => Status::permission_denied(message),
            RelayError::Exhausted { retry_after, .. } => {
                if retry_after.is_zero() {
                    return Status::resource_exhausted(message);
                }
                // The hint twice: `google.rpc.RetryInfo` in the status details for gRPC
                // clients that read rich errors, and plain metadata for everyone else.
                let mut status = Status::with_error_details(
                    Code::ResourceExhausted,
                    message,
                    ErrorDetails::with_retry_info(Some(retry_after)),
                );
                if let Ok(value) = retry_after.as_millis().to_string().parse() {
                    status.metadata_mut().insert("retry-after-ms", value);
                }
                status
            }
            RelayError::Unavailable(_) => Status::unavailable(message),
            RelayError::Log(log) => match log {
                LogError::Gone { .. } | LogError::BeyondHead { .. } => {
                    Status::new(Code::OutOfRange, message)
                }
                LogError::Full(_) => Status::resource_exhausted(message),
                LogError::Unavailable(_) => Status::unavailable(message),
                LogError::Corrupt(_) => Status::data_loss(message),
            },
        }
    }
}

/// An error and its sources on one line (`transport error: tcp connect error: Connection
/// refused`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut last = line.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their source's message; say it once.
        if text != last {
            line.push_str(&format!(": {text}"));
        }
        last = text;
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_grpc_code() {
        let cases = [
            (
                RelayError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (RelayError::NotFound("x".into()), Code::NotFound),
            (
                RelayError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (RelayError::Unavailable("x".into()), Code::Unavailable),
            (
                RelayError::Log(LogError::Gone {
                    requested: 1,
                    first_retained: 5,
                }),
                Code::OutOfRange,
            ),
            (
                RelayError::Log(LogError::Full("disk".into())),
                Code::ResourceExhausted,
            ),
            (
                RelayError::Log(LogError::Unavailable("io".into())),
                Code::Unavailable,
            ),
            (
                RelayError::Log(LogError::Corrupt("crc".into())),
                Code::DataLoss,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn exhaustion_carries_a_retry_hint() {
        let status = Status::from(RelayError::Exhausted {
            message: "shard queue full".into(),
            retry_after: Duration::from_millis(250),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok()),
            Some("250")
        );
        let retry = status.get_details_retry_info().expect("RetryInfo detail");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(250)));
    }
}
