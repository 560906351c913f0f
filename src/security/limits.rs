//! Limits at the edge against hostile or runaway clients: open streams per connection, and
//! the status of a message larger than `limits.max_message_bytes`.
//!
//! tonic refuses an oversized message with `OUT_OF_RANGE`; gRPC's own servers answer
//! `RESOURCE_EXHAUSTED`, which is what publishers handle as "too much, split or slow down".
//! [`OversizeLayer`] rewrites it for `Ingest`, the only service whose requests can be large
//! and which never answers `OUT_OF_RANGE` itself. A streaming `Publish` sees the same refusal
//! as an item of its request stream and maps it in the service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tonic::codegen::http;
use tonic::{Code, Status};

use crate::error::RelayError;
use crate::telemetry;

/// Counts open long-lived streams per connection (a connection is one remote address and
/// port) and refuses one over the limit.
#[derive(Debug)]
pub struct StreamLimiter {
    max: usize,
    open: Mutex<HashMap<SocketAddr, usize>>,
}

/// One open stream; dropping it frees its place.
#[derive(Debug)]
pub struct StreamPermit {
    limiter: Arc<StreamLimiter>,
    connection: SocketAddr,
}

impl StreamLimiter {
    /// A limiter allowing `max` open streams per connection.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more stream on `connection`; calls with no known address (not over
    /// TCP) are not counted.
    pub fn acquire(
        self: &Arc<Self>,
        connection: Option<SocketAddr>,
    ) -> Result<Option<StreamPermit>, RelayError> {
        let Some(connection) = connection else {
            return Ok(None);
        };
        let mut open = self.open.lock();
        let count = open.entry(connection).or_insert(0);
        if *count >= self.max {
            telemetry::call_refused("too_many_streams");
            return Err(RelayError::Exhausted {
                message: format!(
                    "this connection already has {} open streams, the limit; close one or open another connection",
                    self.max
                ),
                retry_after: std::time::Duration::from_secs(1),
            });
        }
        *count += 1;
        Ok(Some(StreamPermit {
            limiter: Arc::clone(self),
            connection,
        }))
    }

    /// Streams open on `connection`.
    pub fn open_on(&self, connection: SocketAddr) -> usize {
        self.open.lock().get(&connection).copied().unwrap_or(0)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock();
        if let Some(count) = open.get_mut(&self.connection) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.connection);
            }
        }
    }
}

/// The refusal of a message over `limit` bytes.
pub fn oversize_status(limit: usize) -> Status {
    telemetry::call_refused("too_large");
    Status::resource_exhausted(format!(
        "message larger than the limit of {limit} bytes; send smaller batches"
    ))
}

/// Maps a request-stream item refused by the decoder for its size to [`oversize_status`].
pub fn map_stream_error(status: Status, limit: usize) -> Status {
    if status.code() == Code::OutOfRange {
        oversize_status(limit)
    } else {
        status
    }
}

/// Tower layer rewriting `Ingest`'s oversize refusals to `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone, Copy)]
pub struct OversizeLayer {
    /// The configured limit, for the message.
    pub limit: usize,
}

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversize {
            inner,
            limit: self.limit,
        }
    }
}

/// The service [`OversizeLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct Oversize<S> {
    inner: S,
    limit: usize,
}

const INGEST_PATH: &str = "/outage_relay.v1.Ingest/";

impl<S, B, R> tower::Service<http::Request<B>> for Oversize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let ingest = request.uri().path().starts_with(INGEST_PATH);
        let limit = self.limit;
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let out_of_range = response
                .headers()
                .get("grpc-status")
                .is_some_and(|code| code.as_bytes() == b"11");
            if ingest && out_of_range {
                let status = oversize_status(limit);
                let headers = response.headers_mut();
                headers.insert("grpc-status", http::HeaderValue::from_static("8"));
                if let Ok(message) = http::HeaderValue::from_str(&percent_encode(status.message()))
                {
                    headers.insert("grpc-message", message);
                }
            }
            Ok(response)
        })
    }
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` stays as is.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn streams_are_counted_per_connection_and_freed_on_drop() {
        let limiter = StreamLimiter::new(2);
        let first = limiter.acquire(Some(addr(1))).expect("room");
        let _second = limiter.acquire(Some(addr(1))).expect("room");
        let third = limiter.acquire(Some(addr(1)));
        assert!(matches!(third, Err(RelayError::Exhausted { .. })));
        let _other = limiter
            .acquire(Some(addr(2)))
            .expect("another connection has room");
        drop(first);
        assert_eq!(limiter.open_on(addr(1)), 1);
        let _again = limiter.acquire(Some(addr(1))).expect("room again");
    }

    #[test]
    fn only_out_of_range_stream_items_become_resource_exhausted() {
        assert_eq!(
            map_stream_error(Status::out_of_range("too big"), 10).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            map_stream_error(Status::cancelled("gone"), 10).code(),
            Code::Cancelled
        );
    }

    #[test]
    fn grpc_message_encoding_keeps_ascii_and_escapes_the_rest() {
        assert_eq!(percent_encode("a b%c\né"), "a b%25c%0A%C3%A9");
    }
}
