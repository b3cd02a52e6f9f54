//! The crate's single error type.
//!
//! Every message says what went wrong and, where the operator can do
//! something about it, what to do next: these errors end up in the terminal of
//! a hospital IT person who did not write this code.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Result alias used throughout `plexus-tls`.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// Everything that can go wrong while issuing, loading or using certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A role string is not one of the known roles.
    #[error(
        "unknown role \"{given}\" (expected one of: {})",
        crate::identity::Role::ALL_NAMES
    )]
    UnknownRole {
        /// What was given.
        given: String,
    },

    /// An identity name does not follow the allowed syntax.
    #[error("identity name \"{name}\" is invalid: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it is rejected.
        reason: String,
    },

    /// A `role:name` or `spiffe://plexus/...` string could not be parsed.
    #[error("identity \"{given}\" is invalid: {reason}")]
    InvalidIdentity {
        /// The string as given.
        given: String,
        /// Why it is rejected.
        reason: String,
    },

    /// A certificate could not be parsed as X.509.
    #[error("certificate could not be parsed: {reason}")]
    CertParse {
        /// Parser message.
        reason: String,
    },

    /// A certificate carries no Plexus identity.
    #[error(
        "certificate has no plexus identity (expected one uri san \"spiffe://plexus/<role>/<name>\"; \
         issue certificates with `plexus pki issue`)"
    )]
    NoIdentity,

    /// A certificate carries more than one Plexus identity, which would be ambiguous.
    #[error(
        "certificate has {count} plexus identities ({uris}); a certificate must name exactly one, reissue it"
    )]
    AmbiguousIdentity {
        /// How many were found.
        count: usize,
        /// The URIs, comma separated.
        uris: String,
    },

    /// A file named in the TLS configuration does not exist.
    #[error("tls.{field} file \"{}\" does not exist ({hint})", path.display())]
    MissingFile {
        /// Which `TlsFiles` field.
        field: &'static str,
        /// The path that was checked.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },

    /// Reading or writing a file failed.
    #[error("could not {action} \"{}\": {source}", path.display())]
    Io {
        /// What was being done, e.g. "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A PEM file could not be parsed or holds nothing usable.
    #[error("could not load {what} from \"{}\": {reason}", path.display())]
    Pem {
        /// What was expected, e.g. "certificates" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed, including a hint.
        reason: String,
    },

    /// A signing or verifying key file holds no usable Ed25519 key.
    #[error("could not load the {what} from \"{}\": {reason}", path.display())]
    SigningKey {
        /// "signing key" or "verifying key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why, with what to do.
        reason: String,
    },

    /// `tls.crl` cannot be used.
    #[error("tls.crl \"{}\" cannot be used: {reason}", path.display())]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// Why, with what to do.
        reason: String,
    },

    /// A folder holds no CA to issue or revoke with.
    #[error("no ca in \"{}\" (run `plexus pki init --dir {}` first, or pass the --dir that holds ca.pem and ca.key)", dir.display(), dir.display())]
    NoCa {
        /// The folder.
        dir: PathBuf,
    },

    /// The CA's index of issued certificates cannot be read or written.
    #[error("the ca index \"{}\" is unusable: {reason}", path.display())]
    CaIndex {
        /// The index file.
        path: PathBuf,
        /// Why, with what to do.
        reason: String,
    },

    /// Nothing matches what was asked to be revoked.
    #[error("{what} (`plexus pki list --dir {}` shows the certificates this ca issued)", dir.display())]
    NotIssued {
        /// What was not found.
        what: String,
        /// The CA folder.
        dir: PathBuf,
    },

    /// What was asked to be revoked is revoked already.
    #[error("{what} is already revoked (serial {serials}); `plexus pki crl` re-issues the list if parties need a fresh copy")]
    AlreadyRevoked {
        /// What.
        what: String,
        /// Its serial(s).
        serials: String,
    },

    /// A serial number given on the command line is not one.
    #[error("serial \"{given}\" is invalid: {reason}")]
    InvalidSerial {
        /// As given.
        given: String,
        /// Why.
        reason: String,
    },

    /// The loaded CA is not usable as a CA.
    #[error("ca certificate \"{}\" is unusable: {reason}", path.display())]
    InvalidCa {
        /// The CA certificate file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// rcgen refused to build or sign a certificate.
    #[error("could not {action}: {source}")]
    Rcgen {
        /// What was being done.
        action: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },

    /// A DNS name given for a certificate is not a valid DNS name.
    #[error("dns name \"{name}\" is invalid for a certificate ({reason}); pass a host name like \"coordinator.example.org\"")]
    InvalidDnsName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },

    /// rustls rejected the configuration (for example a key that does not match the certificate).
    #[error("could not build the tls {side} configuration: {source} (check that tls.cert and tls.key belong together)")]
    Config {
        /// "server" or "client".
        side: &'static str,
        /// rustls error.
        #[source]
        source: rustls::Error,
    },

    /// The peer certificate verifier could not be built.
    #[error("could not build the certificate verifier from \"{}\": {source}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// rustls error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// An endpoint string is not `https://host:port`.
    #[error("endpoint \"{endpoint}\" is invalid: {reason}")]
    InvalidEndpoint {
        /// As given.
        endpoint: String,
        /// Why.
        reason: String,
    },

    /// A proxy string is not `http://host:port`.
    #[error("proxy \"{proxy}\" is invalid: {reason}")]
    InvalidProxy {
        /// As given.
        proxy: String,
        /// Why.
        reason: String,
    },

    /// The TLS server name is not a valid DNS name or IP address.
    #[error("server name \"{name}\" is not a valid dns name or ip address")]
    InvalidServerName {
        /// As given.
        name: String,
    },

    /// A host name could not be resolved.
    #[error("could not resolve \"{host}\": {source} (check the host name and the dns settings of this machine)")]
    Resolve {
        /// host:port being resolved.
        host: String,
        /// Resolver error.
        #[source]
        source: io::Error,
    },

    /// A TCP connection could not be opened.
    #[error("could not connect to {addr}: {source}{hint}")]
    Connect {
        /// What was dialled (may say "proxy ...").
        addr: String,
        /// Socket error.
        #[source]
        source: io::Error,
        /// Extra advice, starting with " (" or empty.
        hint: String,
    },

    /// The HTTP CONNECT proxy did not open a tunnel.
    #[error("proxy {proxy} refused to tunnel to {target}: \"{status_line}\" (check the proxy allow-list and credentials)")]
    ProxyRefused {
        /// The proxy address.
        proxy: String,
        /// host:port asked for.
        target: String,
        /// The response's status line.
        status_line: String,
    },

    /// The proxy spoke something that is not HTTP/1.x or broke the connection.
    #[error("proxy {proxy} sent an invalid reply to CONNECT {target}: {reason}")]
    ProxyProtocol {
        /// The proxy address.
        proxy: String,
        /// host:port asked for.
        target: String,
        /// What was wrong.
        reason: String,
    },

    /// The TLS handshake failed.
    #[error("tls handshake with {addr} failed: {source}{hint}")]
    Handshake {
        /// The peer.
        addr: String,
        /// tokio-rustls error (wraps the rustls error).
        #[source]
        source: io::Error,
        /// Extra advice, starting with " (" or empty.
        hint: String,
    },

    /// Connecting took longer than allowed.
    #[error("timed out after {}s connecting to {addr} (is the address right and reachable from here? is a proxy needed?)", after.as_secs_f32())]
    Timeout {
        /// What was dialled.
        addr: String,
        /// The limit.
        after: Duration,
    },

    /// tonic could not set up the gRPC channel.
    /// The server's certificate is valid but not a coordinator's.
    #[error("the server at {addr} presented the certificate of {identity}, not of a coordinator; check the coordinator address (another network member's certificate must not stand in for the coordinator)")]
    NotCoordinator {
        /// Where we dialled.
        addr: String,
        /// Who answered.
        identity: String,
    },
    #[error("could not open a grpc channel to {endpoint}: {reason}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// The error chain, flattened.
        reason: String,
    },
}

impl TlsError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        TlsError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn rcgen(action: impl Into<String>, source: rcgen::Error) -> Self {
        TlsError::Rcgen {
            action: action.into(),
            source,
        }
    }

    /// A handshake the server cut off (reset or aborted), as a listener
    /// under a flood of connections sheds some: worth trying again.
    pub(crate) fn shed(&self) -> bool {
        matches!(
            self,
            TlsError::Handshake { source, .. }
                if matches!(
                    source.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                )
        )
    }
}
