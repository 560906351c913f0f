//! Who may see what: mutual TLS on the gRPC listener, certificate identities mapped to roles,
//! and the checks every call passes before it reaches a service.
//!
//! An outage alert says when a home has no power, so each DNO may read only its own feed.
//! With `tls.mode = "mutual"` a client certificate (verified against `tls.client_ca`, chain and
//! validity period, by rustls) identifies a caller through [`identity::IdentityMap`]:
//!
//! | call                        | allowed to                          |
//! |-----------------------------|-------------------------------------|
//! | `Ingest.*`                  | publishers                          |
//! | `AlertFeed.Subscribe`/`Ack` | the subscriber named in the request |
//! | `Admin.*`                   | admins                              |
//! | health, reflection          | anyone who completes the handshake  |
//! | `/metrics` (`metrics_tls = "mutual"`) | metrics identities and admins |
//!
//! No certificate, or one no configured identity matches: `UNAUTHENTICATED`. A known identity
//! calling outside its role, or naming another DNO's feed: `PERMISSION_DENIED`. An untrusted or
//! expired certificate, or one revoked by a `tls.crl` list, never completes the TLS handshake;
//! certificates, keys, CAs and CRLs are reloaded when they change ([`reload`]). In plaintext
//! mode (allowed on a loopback address by default, elsewhere only when configured explicitly)
//! there is no identity and every call is allowed; the relay logs that at start.
//!
//! `/metrics` follows the same rule (`metrics_tls`, [`crate::config::MetricsTls`]): over TLS
//! with the relay's certificate under mutual TLS, optionally requiring a client certificate
//! of a `metrics` (or `admin`) identity; plaintext beyond loopback only when chosen, and then
//! logged as a warning. A `metrics` identity may call no service.

pub mod identity;
pub mod limits;
pub mod reload;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::{Request, Status};

pub use identity::{IdentityMap, Principal, Role};

use crate::telemetry;

/// Who is calling, as the checks found it; stored in each request's extensions.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Plaintext mode: no identity, every call allowed.
    Anonymous,
    /// A caller identified by its client certificate.
    Known(Arc<Principal>),
}

impl Caller {
    /// The caller of a request that passed a [`Guard`]; a request that did not is refused.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
    }

    /// Whether the caller may subscribe to, ack and read the feed of `subscriber`.
    pub fn may_read(&self, subscriber: &str) -> Result<(), Status> {
        match self {
            Self::Anonymous => Ok(()),
            Self::Known(principal) if principal.subscriber.as_deref() == Some(subscriber) => Ok(()),
            Self::Known(principal) => {
                telemetry::call_refused("permission_denied");
                Err(Status::permission_denied(format!(
                    "identity {:?} may not read the feed of {subscriber:?}",
                    principal.identity
                )))
            }
        }
    }

    /// The key rate limits count this caller under: its identity, or in plaintext mode its
    /// address.
    pub fn limit_key(&self, remote: Option<SocketAddr>) -> String {
        match self {
            Self::Known(principal) => principal.identity.clone(),
            Self::Anonymous => {
                remote.map_or_else(|| "unknown".to_owned(), |addr| addr.ip().to_string())
            }
        }
    }
}

/// The check in front of every service: finds the caller and refuses the wrong role.
#[derive(Debug, Clone)]
pub enum Guard {
    /// Plaintext: everyone is [`Caller::Anonymous`].
    Open,
    /// Mutual TLS: callers are found by their certificate.
    Mutual(Arc<IdentityMap>),
}

impl Guard {
    /// The caller of `request`.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let Self::Mutual(identities) = self else {
            return Ok(Caller::Anonymous);
        };
        let certificates = request.peer_certs();
        let Some(leaf) = certificates.as_deref().and_then(|certs| certs.first()) else {
            telemetry::call_refused("unauthenticated");
            return Err(Status::unauthenticated(
                "a client certificate is required: connect with mutual TLS",
            ));
        };
        identities
            .resolve_certificate(leaf.as_ref())
            .map(Caller::Known)
            .map_err(|err| {
                telemetry::call_refused("unauthenticated");
                tracing::debug!(remote = ?request.remote_addr(), %err, "call refused");
                Status::unauthenticated(err.to_string())
            })
    }

    /// A tonic interceptor admitting only callers in `role` (everyone in plaintext mode) and
    /// recording the [`Caller`] for the service.
    pub fn require(
        &self,
        role: Role,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static
    {
        let guard = self.clone();
        move |mut request: Request<()>| {
            let caller = guard.caller(&request)?;
            if let Caller::Known(principal) = &caller
                && principal.role != role
            {
                telemetry::call_refused("permission_denied");
                return Err(Status::permission_denied(format!(
                    "identity {:?} is a {}; this service needs a {role}",
                    principal.identity, principal.role
                )));
            }
            request.extensions_mut().insert(caller);
            Ok(request)
        }
    }
}
