//! Certificate identities: the names a client certificate carries, and the configured map
//! from those names to a role (and, for subscribers, the one feed it may read).
//!
//! Pure and synchronous: the TLS layer has already verified the chain and the validity
//! period; this only decides who the verified certificate belongs to.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A CSP adapter: may call `Ingest` only.
    Publisher,
    /// A DNO: may `Subscribe` to and `Ack` its own feed only.
    Subscriber,
    /// An operator: may call `Admin`, and read `/metrics`.
    Admin,
    /// A scraper (Prometheus): may read `/metrics` only, and call no service.
    Metrics,
}

impl Role {
    /// Whether this role may read `/metrics` when it requires a client certificate
    /// (`metrics_tls = "mutual"`).
    pub fn may_scrape(self) -> bool {
        matches!(self, Self::Metrics | Self::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Publisher => "publisher",
            Self::Subscriber => "subscriber",
            Self::Admin => "admin",
            Self::Metrics => "metrics",
        })
    }
}

/// A caller recognised by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The configured identity the certificate matched (a SAN or the subject CN).
    pub identity: String,
    /// What it may do.
    pub role: Role,
    /// For subscribers, the one feed it may read.
    pub subscriber: Option<String>,
}

/// Why a certificate does not identify a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The leaf certificate could not be parsed.
    #[error("the client certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// None of its names is configured.
    #[error("no configured identity matches the client certificate (names: {0})")]
    Unknown(String),
    /// Its names match more than one configured identity.
    #[error("the client certificate matches several configured identities: {0}")]
    Ambiguous(String),
}

/// The names a certificate answers to: its DNS, URI and email subject alternative names, then
/// its subject common names.
pub fn certificate_names(der: &[u8]) -> Result<Vec<String>, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|err| IdentityError::Unparsable(err.to_string()))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(text)
                | GeneralName::URI(text)
                | GeneralName::RFC822Name(text) => names.push((*text).to_owned()),
                _ => {}
            }
        }
    }
    for common_name in cert.subject().iter_common_name() {
        if let Ok(text) = common_name.as_str() {
            names.push(text.to_owned());
        }
    }
    Ok(names)
}

/// Configured identities, by name.
#[derive(Debug, Clone, Default)]
pub struct IdentityMap {
    by_name: HashMap<String, Arc<Principal>>,
}

impl IdentityMap {
    /// A map of `principals`; a later entry with the same identity replaces an earlier one
    /// (configuration validation refuses duplicates before this).
    pub fn new(principals: impl IntoIterator<Item = Principal>) -> Self {
        Self {
            by_name: principals
                .into_iter()
                .map(|p| (p.identity.clone(), Arc::new(p)))
                .collect(),
        }
    }

    /// The identities of `[[tls.identities]]`.
    pub fn from_config(tls: &crate::config::TlsConfig) -> Self {
        Self::new(tls.identities.iter().map(|entry| Principal {
            identity: entry.identity.clone(),
            role: entry.role,
            subscriber: entry.subscriber.clone(),
        }))
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no identity is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The principal a certificate with `names` belongs to: exactly one configured identity
    /// must match.
    pub fn resolve(&self, names: &[String]) -> Result<Arc<Principal>, IdentityError> {
        let mut found: Option<&Arc<Principal>> = None;
        for name in names {
            if let Some(principal) = self.by_name.get(name) {
                match found {
                    Some(first) if first.identity != principal.identity => {
                        return Err(IdentityError::Ambiguous(format!(
                            "{:?} and {:?}",
                            first.identity, principal.identity
                        )));
                    }
                    _ => found = Some(principal),
                }
            }
        }
        found
            .cloned()
            .ok_or_else(|| IdentityError::Unknown(names.join(", ")))
    }

    /// The principal of a verified leaf certificate.
    pub fn resolve_certificate(&self, der: &[u8]) -> Result<Arc<Principal>, IdentityError> {
        self.resolve(&certificate_names(der)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(identity: &str, role: Role, subscriber: Option<&str>) -> Principal {
        Principal {
            identity: identity.into(),
            role,
            subscriber: subscriber.map(str::to_owned),
        }
    }

    fn map() -> IdentityMap {
        IdentityMap::new([
            principal("adapter.csp.example", Role::Publisher, None),
            principal("spiffe://dno.example/ukpn", Role::Subscriber, Some("ukpn")),
            principal("ops", Role::Admin, None),
        ])
    }

    fn cert_der(sans: &[&str], common_name: &str) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        for san in sans {
            params.subject_alt_names.push(if san.contains("://") {
                rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*san).expect("ascii"))
            } else if san.contains('@') {
                rcgen::SanType::Rfc822Name(rcgen::string::Ia5String::try_from(*san).expect("ascii"))
            } else {
                rcgen::SanType::DnsName(rcgen::string::Ia5String::try_from(*san).expect("ascii"))
            });
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn names_are_sans_then_common_name() {
        let der = cert_der(&["a.example", "spiffe://x/y", "ops@dsp.example"], "the cn");
        let names = certificate_names(&der).expect("parses");
        assert_eq!(
            names,
            ["a.example", "spiffe://x/y", "ops@dsp.example", "the cn"]
        );
    }

    #[test]
    fn a_uri_san_resolves_to_its_subscriber() {
        let der = cert_der(&["spiffe://dno.example/ukpn"], "whatever");
        let who = map().resolve_certificate(&der).expect("known");
        assert_eq!(who.role, Role::Subscriber);
        assert_eq!(who.subscriber.as_deref(), Some("ukpn"));
    }

    #[test]
    fn the_common_name_alone_identifies() {
        let der = cert_der(&[], "ops");
        assert_eq!(
            map().resolve_certificate(&der).expect("known").role,
            Role::Admin
        );
    }

    #[test]
    fn unknown_names_are_refused_and_listed() {
        let der = cert_der(&["stranger.example"], "stranger");
        let err = map().resolve_certificate(&der).expect_err("unknown");
        assert_eq!(
            err,
            IdentityError::Unknown("stranger.example, stranger".into())
        );
    }

    #[test]
    fn a_certificate_matching_two_identities_is_refused() {
        let der = cert_der(&["adapter.csp.example"], "ops");
        assert!(matches!(
            map().resolve_certificate(&der),
            Err(IdentityError::Ambiguous(_))
        ));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            certificate_names(b"not a certificate"),
            Err(IdentityError::Unparsable(_))
        ));
    }
}
