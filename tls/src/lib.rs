//! Plexus mutual TLS.
//!
//! Nodes inside hospitals dial out to the coordinator; every connection is
//! mutually authenticated against a Plexus CA and every certificate carries
//! exactly one identity `spiffe://plexus/<role>/<name>`. This crate issues such
//! certificates ([`DevCa`], [`CaDir`]) and revokes them (`crl.pem`), builds
//! rustls configs from PEM files ([`server_config`], [`client_config`]),
//! re-reads the server's files when they change ([`ServerTls`]), terminates TLS for tonic servers
//! ([`incoming`], [`require_role`]) and dials the coordinator, optionally via an
//! HTTP CONNECT proxy ([`connect`]).
//!
//! All configs use the ring provider explicitly; nothing here installs or
//! depends on a process-wide default crypto provider.

#![forbid(unsafe_code)]

mod admission;
mod ca;
mod ca_dir;
mod client;
mod config;
mod crl;
mod error;
mod identity;
mod peer;
mod primed;
mod reload;
mod server;
mod signing;
mod verifier;

pub use admission::Limits as HandshakeLimits;
pub use ca::{
    DevCa, IssuedCert, RevokedSerial, CA_CERT_FILE, CA_KEY_FILE, CA_VALIDITY_DAYS,
    LEAF_VALIDITY_DAYS,
};
pub use ca_dir::{
    normalize_serial, serial_hex, CaDir, CaIndex, CrlWritten, IndexEntry, Revocation,
    RevocationReason, RevokeTarget, CRL_FILE, CRL_VALIDITY_DAYS, INDEX_FILE,
};
pub use client::{connect, dial, ConnectOptions};
pub use config::{
    client_config, client_credentials, load_certs, load_key, provider, server_config, LoadedServer,
    TlsFiles, ALPN_HTTP1,
};
pub use crl::RevocationList;
pub use error::{Result, TlsError};
pub use identity::{
    identity_from_cert, serial_from_cert, validate_name, Identity, Role, MAX_NAME_LEN, URI_PREFIX,
};
pub use peer::PeerTrust;
pub use reload::{ServerTls, DEFAULT_RELOAD_INTERVAL};
pub use server::{
    incoming, incoming_with_limits, incoming_with_timeout, peer, require_role, Incoming, PeerInfo,
    TlsConn, HANDSHAKE_TIMEOUT,
};
pub use signing::{
    signing_key_files, verify_by_certificate, verify_issued_by, CertSigner, SigningKey,
    VerifyingKey,
};

/// Re-exported so callers can name config and certificate types without
/// depending on matching versions themselves.
pub use rustls::{ClientConfig, ServerConfig};
pub use rustls_pki_types::CertificateDer;
