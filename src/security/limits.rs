//! Limits at the edge against hostile or runaway clients: open streams per connection, and
//! what a caller hears when tonic's decoder refuses its request.
//!
//! tonic refuses a message larger than `limits.max_message_bytes` with `OUT_OF_RANGE`, and
//! bytes that are not the method's protobuf message with `INTERNAL`. gRPC's own servers answer
//! `RESOURCE_EXHAUSTED` to the first, which is what publishers handle as "too much, split or
//! slow down", and `INTERNAL` would tell a caller the relay failed when its request was at
//! fault. [`DecodeRefusalLayer`], around every service the server hosts, rewrites those two
//! refusals to `RESOURCE_EXHAUSTED` and `INVALID_ARGUMENT` and counts them in
//! `outage_relay_calls_refused_total` (`too_large`, `malformed`). It matches the decoder's own
//! messages, not the codes, so a service's own `OUT_OF_RANGE` (a `Subscribe` from a sequence no
//! longer retained) passes unchanged. A unary or server-streaming call carries the refusal in
//! its response headers; a streaming request (`Ingest.Publish`) sees it as an item of its
//! request stream, and the service ends its response with it in the trailers, which are
//! rewritten the same way. (The reflection service ends its stream without an error when its
//! request stream fails, so a refused reflection request has no status to rewrite.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
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

/// The start of tonic's message for a request over its decoding limit (`OUT_OF_RANGE`).
const TOO_LARGE: &str = "Error, decoded message length too large";
/// The start of prost's message for bytes that are not the method's request message (tonic
/// answers it with `INTERNAL`).
const NOT_PROTOBUF: &str = "failed to decode Protobuf message";

const INGEST_PATH: &str = "/outage_relay.v1.Ingest/";

/// Tower layer around every service the server hosts, rewriting the decoder's refusals (see
/// the module doc).
#[derive(Debug, Clone, Copy)]
pub struct DecodeRefusalLayer {
    /// The configured limit, for the message.
    pub limit: usize,
}

impl<S> tower::Layer<S> for DecodeRefusalLayer {
    type Service = DecodeRefusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DecodeRefusals {
            inner,
            limit: self.limit,
        }
    }
}

/// The service [`DecodeRefusalLayer`] wraps around the gRPC router.
#[derive(Debug, Clone)]
pub struct DecodeRefusals<S> {
    inner: S,
    limit: usize,
}

impl<S, B, R> tower::Service<http::Request<B>> for DecodeRefusals<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RefusalBody<R>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = Call {
            limit: self.limit,
            ingest: request.uri().path().starts_with(INGEST_PATH),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            call.rewrite(response.headers_mut());
            Ok(response.map(|inner| RefusalBody { inner, call }))
        })
    }
}

/// A response body whose trailers (the status of a streaming call) are rewritten like the
/// headers of a unary answer.
#[derive(Debug)]
pub struct RefusalBody<R> {
    inner: R,
    call: Call,
}

impl<R> Body for RefusalBody<R>
where
    R: Body + Unpin,
{
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let mut polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            this.call.rewrite(trailers);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One call, as much as its refusal needs.
#[derive(Debug, Clone, Copy)]
struct Call {
    limit: usize,
    /// An `Ingest` call, whose large requests are batches.
    ingest: bool,
}

impl Call {
    /// Rewrites the status in `headers` (a response's headers or trailers) when it is one of
    /// the decoder's refusals, and counts it.
    fn rewrite(self, headers: &mut http::HeaderMap) {
        let Some(code) = headers
            .get(Status::GRPC_STATUS)
            .map(|code| Code::from_bytes(code.as_bytes()))
        else {
            return;
        };
        if !matches!(code, Code::OutOfRange | Code::Internal) {
            return;
        }
        let message = headers
            .get(Status::GRPC_MESSAGE)
            .map(|message| percent_decode(message.as_bytes()))
            .unwrap_or_default();
        let status = match code {
            Code::OutOfRange if message.starts_with(TOO_LARGE) => self.too_large(),
            Code::Internal if message.starts_with(NOT_PROTOBUF) => malformed(&message),
            _ => return,
        };
        if let Err(err) = status.add_header(headers) {
            tracing::warn!(%err, "cannot rewrite a decoder refusal");
        }
    }

    /// The refusal of a request over the limit.
    fn too_large(self) -> Status {
        telemetry::call_refused("too_large");
        let limit = self.limit;
        Status::resource_exhausted(if self.ingest {
            format!("message larger than the limit of {limit} bytes; send smaller batches")
        } else {
            format!("request message larger than the relay's limit of {limit} bytes")
        })
    }
}

/// The refusal of a request that is not the method's protobuf message; `decoder` says why.
fn malformed(decoder: &str) -> Status {
    telemetry::call_refused("malformed");
    Status::invalid_argument(format!(
        "the request is not a valid protobuf message for this method ({decoder})"
    ))
}

/// Reverses gRPC's percent-encoding of `grpc-message`; anything not a valid escape stays as
/// is.
fn percent_decode(text: &[u8]) -> String {
    let hex = |digit: u8| char::from(digit).to_digit(16);
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&byte, tail)) = rest.split_first() {
        let escaped = match tail {
            [high, low, ..] if byte == b'%' => hex(*high)
                .zip(hex(*low))
                .and_then(|(high, low)| u8::try_from(high * 16 + low).ok()),
            _ => None,
        };
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                rest = &tail[2..];
            }
            None => {
                out.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    fn rewritten(code: Code, message: &str, ingest: bool) -> Status {
        let mut headers = http::HeaderMap::new();
        Status::new(code, message)
            .add_header(&mut headers)
            .expect("valid headers");
        Call {
            limit: 4096,
            ingest,
        }
        .rewrite(&mut headers);
        let code = headers
            .get(Status::GRPC_STATUS)
            .map(|code| Code::from_bytes(code.as_bytes()))
            .expect("a status");
        let message = headers
            .get(Status::GRPC_MESSAGE)
            .map(|message| percent_decode(message.as_bytes()))
            .unwrap_or_default();
        Status::new(code, message)
    }

    #[test]
    fn only_the_decoders_refusals_are_rewritten() {
        let large =
            "Error, decoded message length too large: found 5000 bytes, the limit is: 4096 bytes";
        let status = rewritten(Code::OutOfRange, large, true);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status
                .message()
                .contains("4096 bytes; send smaller batches"),
            "{status}"
        );
        let status = rewritten(Code::OutOfRange, large, false);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(!status.message().contains("batches"), "{status}");
        let status = rewritten(
            Code::Internal,
            "failed to decode Protobuf message: invalid wire type value: 6",
            false,
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .ends_with("(failed to decode Protobuf message: invalid wire type value: 6)"),
            "{status}"
        );
        // A service's own OUT_OF_RANGE and INTERNAL pass unchanged.
        for (code, message) in [
            (Code::OutOfRange, "from_sequence 3 is no longer retained"),
            (Code::Internal, "the sink cannot record alerts"),
            (Code::Unavailable, "failed to decode Protobuf message"),
        ] {
            let status = rewritten(code, message, false);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }

    #[test]
    fn grpc_message_decoding_reverses_the_encoding_and_keeps_stray_percents() {
        let mut headers = http::HeaderMap::new();
        Status::internal("a b%c\né")
            .add_header(&mut headers)
            .expect("valid headers");
        let encoded = headers
            .get(Status::GRPC_MESSAGE)
            .expect("a message")
            .as_bytes();
        assert_eq!(percent_decode(encoded), "a b%c\né");
        assert_eq!(percent_decode(b"100% %zz %+1 %4"), "100% %zz %+1 %4");
    }
}
