//! Plexus mutual TLS.
//!
//! Nodes inside hospitals dial out to the coordinator; every connection is
//! mutually authenticated against a Plexus CA and every certificate carries
//! exactly one identity `spiffe://plexus/<role>/<name>`. This crate issues such
//! certificates ([`DevCa`]), builds rustls configs from PEM files
//! ([`server_config`], [`client_config`]), terminates TLS for tonic servers
//! ([`incoming`], [`require_role`]) and dials the coordinator, optionally via an
//! HTTP CONNECT proxy ([`connect`]).
//!
//! All configs use the ring provider explicitly; nothing here installs or
//! depends on a process-wide default crypto provider.

#![forbid(unsafe_code)]

mod ca;
mod client;
mod config;
mod error;
mod identity;
mod server;
mod signing;

pub use ca::{DevCa, IssuedCert, CA_CERT_FILE, CA_KEY_FILE, CA_VALIDITY_DAYS, LEAF_VALIDITY_DAYS};
pub use client::{connect, dial, ConnectOptions};
pub use config::{client_config, load_certs, load_key, provider, server_config, TlsFiles};
pub use error::{Result, TlsError};
pub use identity::{identity_from_cert, validate_name, Identity, Role, MAX_NAME_LEN, URI_PREFIX};
pub use server::{
    incoming, incoming_with_timeout, peer, require_role, Incoming, PeerInfo, TlsConn,
    HANDSHAKE_TIMEOUT,
};
pub use signing::{
    signing_key_files, verify_by_certificate, verify_issued_by, CertSigner, SigningKey,
    VerifyingKey,
};

/// Re-exported so callers can name config and certificate types without
/// depending on matching versions themselves.
pub use rustls::{ClientConfig, ServerConfig};
pub use rustls_pki_types::CertificateDer;
