//! Who a peer is, as far as Plexus is concerned.
//!
//! The identity travels inside the certificate as a single URI SAN
//! `spiffe://plexus/<role>/<name>`. Putting it in a SAN (rather than the
//! subject CN) follows SPIFFE practice: SANs are structured, the CN is
//! free text that tools rewrite. Authorisation decisions in the coordinator
//! are taken on the [`Role`] alone, so the role is part of the signed
//! certificate and cannot be claimed by a peer at runtime.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::error::{Result, TlsError};

/// The URI prefix under which Plexus identities live.
pub const URI_PREFIX: &str = "spiffe://plexus/";

/// Longest allowed identity name; keeps names usable as file stems and log fields.
pub const MAX_NAME_LEN: usize = 64;

/// What a certificate holder is allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A data node inside a hospital; dials out to the coordinator.
    Node,
    /// Submits studies and reads released results.
    Researcher,
    /// Reads the audit log.
    Auditor,
    /// The coordinator server itself.
    Coordinator,
    /// Operates the deployment (registers nodes, approves studies).
    Admin,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 5] = [
        Role::Node,
        Role::Researcher,
        Role::Auditor,
        Role::Coordinator,
        Role::Admin,
    ];

    /// The role names as listed in error messages.
    pub const ALL_NAMES: &'static str = "node, researcher, auditor, coordinator, admin";

    /// The lowercase name used in URIs, config files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Researcher => "researcher",
            Role::Auditor => "auditor",
            Role::Coordinator => "coordinator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| TlsError::UnknownRole {
                given: s.to_owned(),
            })
    }
}

/// A peer's verified identity: its role and its name within that role.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What the peer may do.
    pub role: Role,
    /// Which one it is, e.g. a hospital's node name.
    pub name: String,
}

impl Identity {
    /// Builds an identity, rejecting names that would not survive a URI or a file name.
    pub fn new(role: Role, name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        validate_name(&name)?;
        Ok(Identity { role, name })
    }

    /// The URI SAN form, `spiffe://plexus/<role>/<name>`.
    pub fn to_uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.role, self.name)
    }

    /// Parses the URI SAN form.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let invalid = |reason: String| TlsError::InvalidIdentity {
            given: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| invalid(format!("it must start with \"{URI_PREFIX}\"")))?;
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| invalid("expected spiffe://plexus/<role>/<name>".to_owned()))?;
        let role = role.parse::<Role>().map_err(|e| invalid(e.to_string()))?;
        Identity::new(role, name).map_err(|e| invalid(e.to_string()))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

/// Parses the `role:name` display form, as typed on command lines.
impl FromStr for Identity {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self> {
        let (role, name) = s.split_once(':').ok_or_else(|| TlsError::InvalidIdentity {
            given: s.to_owned(),
            reason: "expected <role>:<name>, e.g. node:hospital-a".to_owned(),
        })?;
        Identity::new(role.parse()?, name)
    }
}

/// Checks the name syntax: ASCII letters, digits, `.`, `_`, `-`, `@`, 1 to 64 characters.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason: String| TlsError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid(
            "it is empty; give a name like \"hospital-a\"".to_owned(),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "it is {} characters long, the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(invalid(format!(
            "character {c:?} is not allowed (use ascii letters, digits, '.', '_', '-', '@')"
        )));
    }
    Ok(())
}

/// A certificate's serial number as lowercase hex without leading zero
/// bytes: how `plexus pki list` shows it and a CRL names the certificate.
pub fn serial_from_cert(der: &CertificateDer<'_>) -> Result<String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::CertParse {
            reason: e.to_string(),
        })?;
    Ok(crate::ca_dir::serial_hex(cert.raw_serial()))
}

/// Reads the Plexus identity out of a DER certificate.
///
/// Exactly one `spiffe://plexus/...` URI SAN must be present; other URI SANs
/// are ignored so that certificates can also carry unrelated identities.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Result<Identity> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::CertParse {
            reason: e.to_string(),
        })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::CertParse {
            reason: format!("subject alternative names: {e}"),
        })?
        .ok_or(TlsError::NoIdentity)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with(URI_PREFIX) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(TlsError::NoIdentity),
        [uri] => Identity::from_uri(uri),
        _ => Err(TlsError::AmbiguousIdentity {
            count: uris.len(),
            uris: uris.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_unknown_role_lists_choices() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        let err = "doctor".parse::<Role>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown role \"doctor\" (expected one of: node, researcher, auditor, coordinator, admin)"
        );
    }

    #[test]
    fn identity_uri_and_display_round_trip() {
        let id = Identity::new(Role::Node, "hospital-a").unwrap();
        assert_eq!(id.to_uri(), "spiffe://plexus/node/hospital-a");
        assert_eq!(id.to_string(), "node:hospital-a");
        assert_eq!(Identity::from_uri(&id.to_uri()).unwrap(), id);
        assert_eq!("node:hospital-a".parse::<Identity>().unwrap(), id);
        let admin = Identity::new(Role::Admin, "ops@site_1.x").unwrap();
        assert_eq!(Identity::from_uri(&admin.to_uri()).unwrap(), admin);
    }

    #[test]
    fn bad_names_and_uris_are_rejected() {
        assert!(Identity::new(Role::Node, "").is_err());
        assert!(Identity::new(Role::Node, "a".repeat(65)).is_err());
        assert!(Identity::new(Role::Node, "a".repeat(64)).is_ok());
        assert!(Identity::new(Role::Node, "a/b").is_err());
        assert!(Identity::new(Role::Node, "é").is_err());
        assert!(Identity::from_uri("spiffe://plexus/node/a/b").is_err());
        assert!(Identity::from_uri("spiffe://plexus/doctor/a").is_err());
        assert!(Identity::from_uri("spiffe://other/node/a").is_err());
        assert!(Identity::from_uri("spiffe://plexus/node").is_err());
    }
}
