//! Certificate file configuration and the rustls configs built from it.
//!
//! Both sides trust only the Plexus CA and both present a certificate: the
//! coordinator must know which hospital a connection belongs to, and a node
//! must not send aggregates to anyone but the coordinator. Configs always use
//! the ring provider explicitly so nothing depends on a process-wide default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::crl::RevocationList;
use crate::error::{Result, TlsError};

/// ALPN protocol for gRPC over HTTP/2.
const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol of the coordinator's HTTP/JSON API's clients.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The three PEM files every Plexus party needs, and the revocation list
/// it checks peers against.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s) trusted for peers.
    pub ca: PathBuf,
    /// This party's certificate (chain), leaf first.
    pub cert: PathBuf,
    /// This party's private key.
    pub key: PathBuf,
    /// Certificate revocation list(s) of the CA(s) in `ca` (`crl.pem` from
    /// `plexus pki`). When set, a peer whose certificate is listed, or whose
    /// revocation status the lists cannot tell, is refused, and an expired
    /// list is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
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
        let crl = self.crl.as_ref().map(|crl| {
            (
                "crl",
                crl,
                "copy the crl.pem kept next to the network's ca.pem (`plexus pki crl` writes a fresh one), or leave tls.crl out",
            )
        });
        for (field, path, hint) in checks.into_iter().chain(crl) {
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

    /// The files of certificate `name` in a folder laid out by [`CaDir`]:
    /// `ca.pem`, `<name>.pem`, `<name>.key`, and `crl.pem` when the folder
    /// has one (folders made before revocation lists existed do not).
    ///
    /// [`CaDir`]: crate::CaDir
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        let crl = dir.join(crate::CRL_FILE);
        TlsFiles {
            ca: dir.join(crate::CA_CERT_FILE),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            crl: crl.is_file().then_some(crl),
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
            crl: self.crl.as_ref().map(abs),
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

pub(crate) fn load_roots(path: &Path) -> Result<(RootCertStore, Vec<CertificateDer<'static>>)> {
    let mut roots = RootCertStore::empty();
    let certs = load_certs(path)?;
    for cert in &certs {
        roots.add(cert.clone()).map_err(|e| TlsError::Pem {
            what: "a trusted ca",
            path: path.to_owned(),
            reason: format!("{e} (tls.ca must hold the plexus ca certificate)"),
        })?;
    }
    Ok((roots, certs))
}

/// The verifier of client certificates against the network CA(s) and,
/// when set, the revocation list: a server's handshakes and a node's check
/// of its secure aggregation peers use the same one.
pub(crate) fn client_verifier(
    roots: RootCertStore,
    crl: Option<&RevocationList>,
    ca: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if let Some(crl) = crl {
        // Unknown status stays an error (rustls' default): with a list
        // configured, a certificate it cannot vouch for is refused.
        verifier = verifier
            .with_crls(crl.ders())
            .enforce_revocation_expiration();
    }
    verifier.build().map_err(|source| TlsError::Verifier {
        path: ca.to_path_buf(),
        source,
    })
}

pub(crate) fn load_crl(
    files: &TlsFiles,
    cas: &[CertificateDer<'_>],
) -> Result<Option<RevocationList>> {
    files
        .crl
        .as_deref()
        .map(|path| RevocationList::load(path, cas))
        .transpose()
}

/// A server config and what it was built from, for logs and for cutting
/// connections a newer revocation list revokes.
#[derive(Clone, Debug)]
pub struct LoadedServer {
    /// The config new connections are accepted with.
    pub config: Arc<ServerConfig>,
    /// The revocation list, when `tls.crl` is set.
    pub crl: Option<RevocationList>,
    /// Serial (hex) of the certificate this server presents.
    pub cert_serial: String,
}

impl LoadedServer {
    /// Loads everything [`server_config`] does and keeps the parts.
    pub fn load(files: &TlsFiles) -> Result<LoadedServer> {
        files.validate()?;
        let (roots, cas) = load_roots(&files.ca)?;
        let crl = load_crl(files, &cas)?;
        let certs = load_certs(&files.cert)?;
        let cert_serial =
            crate::identity::serial_from_cert(&certs[0]).map_err(|e| TlsError::Pem {
                what: "certificates",
                path: files.cert.clone(),
                reason: format!("the first certificate cannot be parsed: {e}"),
            })?;
        let key = load_key(&files.key)?;
        let provider = provider();
        let verifier = client_verifier(roots, crl.as_ref(), &files.ca)?;
        let config_err = |source| TlsError::Config {
            side: "server",
            source,
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_client_cert_verifier(Arc::new(crate::verifier::NamingVerifier {
                inner: verifier,
            }))
            .with_single_cert(certs, key)
            .map_err(config_err)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Ok(LoadedServer {
            config: Arc::new(config),
            crl,
            cert_serial,
        })
    }
}

/// Server config for the coordinator: TLS 1.3/1.2, ALPN `h2` (gRPC) and `http/1.1` (the HTTP/JSON API), and a client
/// certificate signed by the CA (and not revoked, with `tls.crl`) is mandatory.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    Ok(LoadedServer::load(files)?.config)
}

/// Client config for nodes and the CLI: trusts only the Plexus CA (never the
/// system roots, so a TLS-inspecting proxy cannot intercept), checks the
/// server against `tls.crl` when set, and presents our certificate.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    files.validate()?;
    let (roots, cas) = load_roots(&files.ca)?;
    let crl = load_crl(files, &cas)?;
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = provider();
    let mut verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = &crl {
        verifier = verifier
            .with_crls(crl.ders())
            .enforce_revocation_expiration();
    }
    let verifier = verifier.build().map_err(|source| TlsError::Verifier {
        path: files.ca.clone(),
        source,
    })?;
    let config_err = |source| TlsError::Config {
        side: "client",
        source,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .map_err(config_err)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A node's client config and the key it signs results with, loaded
/// together so that after a rotation the certificate presented and the
/// key results are signed with always belong together (the coordinator
/// checks each result against the connection's certificate; rustls
/// refuses a key that does not match the certificate).
pub fn client_credentials(files: &TlsFiles) -> Result<(Arc<ClientConfig>, crate::CertSigner)> {
    let config = client_config(files)?;
    let signer = crate::CertSigner::load(&files.key)?;
    Ok((config, signer))
}
