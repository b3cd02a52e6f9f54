//! Certificate file configuration and the rustls configs built from it.
//!
//! Both sides trust only the Plexus CA and both present a certificate: the
//! coordinator must know which hospital a connection belongs to, and a node
//! must not send aggregates to anyone but the coordinator. Configs always use
//! the ring provider explicitly so nothing depends on a process-wide default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TlsError};

/// ALPN protocol for gRPC over HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// The three PEM files every Plexus party needs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s) trusted for peers.
    pub ca: PathBuf,
    /// This party's certificate (chain), leaf first.
    pub cert: PathBuf,
    /// This party's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Checks that every file exists, naming the field and path of the first that does not.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            (
                "ca",
                &self.ca,
                "copy the ca.pem made by `plexus pki init` there, or fix the path",
            ),
            (
                "cert",
                &self.cert,
                "run `plexus pki issue` to create a certificate, or fix the path",
            ),
            (
                "key",
                &self.key,
                "run `plexus pki issue` to create a certificate and key, or fix the path",
            ),
        ];
        for (field, path, hint) in checks {
            if !path.is_file() {
                return Err(TlsError::MissingFile {
                    field,
                    path: path.clone(),
                    hint,
                });
            }
        }
        Ok(())
    }

    /// The files of certificate `name` in a folder laid out by [`DevCa::save`]
    /// and [`IssuedCert::save`](crate::IssuedCert::save): `ca.pem`,
    /// `<name>.pem`, `<name>.key`.
    ///
    /// [`DevCa::save`]: crate::DevCa::save
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join(crate::CA_CERT_FILE),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// Resolves relative paths against `base`, typically the config file's directory,
    /// so a config works regardless of the daemon's working directory.
    pub fn resolve(&self, base: &Path) -> TlsFiles {
        let abs = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        TlsFiles {
            ca: abs(&self.ca),
            cert: abs(&self.cert),
            key: abs(&self.key),
        }
    }
}

/// The crypto provider every Plexus config is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Loads every certificate in a PEM file; errors if there is none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem_err = |reason: String| TlsError::Pem {
        what: "certificates",
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificates", e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(
            "the file holds no \"BEGIN CERTIFICATE\" block; is it the key or an empty file?"
                .to_owned(),
        ));
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, "a private key", e))
}

fn pem_error(path: &Path, what: &'static str, e: rustls_pki_types::pem::Error) -> TlsError {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::Io(source) => TlsError::io("read", path, source),
        E::NoItemsFound => TlsError::Pem {
            what,
            path: path.to_owned(),
            reason: "the file holds no matching pem block; check that tls.cert and tls.key are not swapped"
                .to_owned(),
        },
        other => TlsError::Pem {
            what,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "a trusted ca",
            path: path.to_owned(),
            reason: format!("{e} (tls.ca must hold the plexus ca certificate)"),
        })?;
    }
    Ok(roots)
}

/// Server config for the coordinator: TLS 1.3/1.2, ALPN `h2`, and a client
/// certificate signed by the CA is mandatory.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    files.validate()?;
    let roots = Arc::new(load_roots(&files.ca)?);
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|source| TlsError::Verifier {
            path: files.ca.clone(),
            source,
        })?;
    let config_err = |source| TlsError::Config {
        side: "server",
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(config_err)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Client config for nodes and the CLI: trusts only the Plexus CA (never the
/// system roots, so a TLS-inspecting proxy cannot intercept) and presents our certificate.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    files.validate()?;
    let roots = load_roots(&files.ca)?;
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let config_err = |source| TlsError::Config {
        side: "client",
        source,
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(config_err)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}
