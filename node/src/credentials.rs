//! The node's TLS credentials: re-read from `[tls]` at every (re)connect,
//! so a rotated certificate or a new revocation list is used at the next
//! connection without a restart.

use std::sync::{Arc, Mutex, RwLock};

use tracing::error;

use plexus_tls::{CertSigner, ClientConfig, PeerTrust, TlsFiles};

use crate::error::{NodeError, Result};

/// The node's key, the certificate it belongs to, and what peers'
/// certificates are checked against: loaded together from one reading of
/// the `[tls]` files.
struct Keys {
    signer: CertSigner,
    /// DER of the node's own certificate.
    certificate: Vec<u8>,
    trust: PeerTrust,
}

/// The key results are signed with: always the key of the certificate the
/// current connection presented, since the coordinator checks each result
/// against that certificate. Secure aggregation's key bundles are signed
/// with it too, and carry the certificate; the roster's other members are
/// checked against the network CA and CRL loaded with it.
pub struct ResultSigner(RwLock<Arc<Keys>>);

impl ResultSigner {
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let keys = self.0.read().expect("signer lock").clone();
        keys.signer.sign(message)
    }

    /// Signs `message` and returns the signature with the certificate
    /// (DER) whose key made it.
    pub fn sign_with_certificate(&self, message: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let keys = self.0.read().expect("signer lock").clone();
        (keys.signer.sign(message), keys.certificate.clone())
    }

    /// The network CA and revocation lists as last loaded.
    pub fn trust(&self) -> PeerTrust {
        self.0.read().expect("signer lock").trust.clone()
    }

    fn replace(&self, keys: Arc<Keys>) {
        *self.0.write().expect("signer lock") = keys;
    }
}

/// One reading of the `[tls]` files: the client config, the key, its
/// certificate and the trust anchors. The certificate is read apart from
/// the config, so the key is checked against it: a rotation caught half
/// way through is a failed load, not a key signing for another certificate.
fn load(files: &TlsFiles) -> Result<(Arc<ClientConfig>, Keys)> {
    let (config, signer) = plexus_tls::client_credentials(files)?;
    let certificate = plexus_tls::load_certs(&files.cert)?
        .into_iter()
        .next()
        .ok_or_else(|| NodeError::NoCertificate(files.cert.clone()))?
        .as_ref()
        .to_vec();
    let probe = b"plexus-node: the key belongs to the certificate";
    plexus_tls::verify_by_certificate(&certificate, probe, &signer.sign(probe))
        .map_err(|_| NodeError::KeyMismatch(files.cert.clone()))?;
    let trust = PeerTrust::load(files)?;
    Ok((
        config,
        Keys {
            signer,
            certificate,
            trust,
        },
    ))
}

/// Loads the `[tls]` files for each connection, falling back to the last
/// files that loaded when the current ones do not (a rotation half done,
/// a mistyped copy), so a node keeps its link while the files are fixed.
pub struct Credentials {
    files: TlsFiles,
    signer: Arc<ResultSigner>,
    last_good: Mutex<(Arc<ClientConfig>, Arc<Keys>)>,
}

impl Credentials {
    /// Loads the files once; unusable files stop the node at start-up.
    pub fn load(files: TlsFiles) -> Result<Self> {
        let (config, keys) = load(&files)?;
        let keys = Arc::new(keys);
        Ok(Credentials {
            files,
            signer: Arc::new(ResultSigner(RwLock::new(keys.clone()))),
            last_good: Mutex::new((config, keys)),
        })
    }

    /// What signs results: shared with the job runner.
    pub fn signer(&self) -> Arc<ResultSigner> {
        self.signer.clone()
    }

    /// The client config for a new connection, re-read from the files; the
    /// result signer switches to the same files' key.
    pub async fn for_connection(&self) -> Arc<ClientConfig> {
        let files = self.files.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&files)).await;
        let mut last_good = self.last_good.lock().expect("credentials lock");
        match loaded {
            Ok(Ok((config, keys))) => {
                *last_good = (config, Arc::new(keys));
            }
            Ok(Err(e)) => error!(
                error = %e,
                "the [tls] files cannot be used; connecting with the ones loaded last until they are fixed"
            ),
            Err(e) => error!(
                error = %e,
                "reading the [tls] files was interrupted; connecting with the ones loaded last"
            ),
        }
        self.signer.replace(last_good.1.clone());
        last_good.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_tls::{CaDir, DevCa, Role};

    fn serial(path: &std::path::Path) -> String {
        plexus_tls::serial_from_cert(&plexus_tls::load_certs(path).unwrap()[0]).unwrap()
    }

    #[tokio::test]
    async fn each_connection_rereads_the_files_and_keeps_the_last_good_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CaDir::create(tmp.path(), DevCa::generate("t").unwrap(), 7).unwrap();
        let (_, cert, _) = ca.issue(Role::Node, "hospital-a", &[], &[]).unwrap();
        let creds = Credentials::load(TlsFiles::in_dir(tmp.path(), "hospital-a")).unwrap();
        let signer = creds.signer();
        let first_cert = std::fs::read(&cert).unwrap();
        let first_der = plexus_tls::load_certs(&cert).unwrap().remove(0);
        let first = creds.for_connection().await;

        // Rotated: the next connection gets a new config, and results are
        // signed with the new key.
        ca.issue(Role::Node, "hospital-a", &[], &[]).unwrap();
        let second = creds.for_connection().await;
        assert!(!Arc::ptr_eq(&first, &second));
        let new_der = plexus_tls::load_certs(&cert).unwrap().remove(0);
        assert_ne!(
            serial(&cert),
            plexus_tls::serial_from_cert(&first_der).unwrap()
        );
        let sig = signer.sign(b"result");
        plexus_tls::verify_by_certificate(new_der.as_ref(), b"result", &sig).unwrap();
        assert!(plexus_tls::verify_by_certificate(first_der.as_ref(), b"result", &sig).is_err());

        // Half a rotation (the old certificate back, the new key left):
        // the pair does not match, so the last good pair stays in use.
        std::fs::write(&cert, &first_cert).unwrap();
        let third = creds.for_connection().await;
        assert!(Arc::ptr_eq(&second, &third));
        let sig = signer.sign(b"result");
        plexus_tls::verify_by_certificate(new_der.as_ref(), b"result", &sig).unwrap();
        let e = plexus_tls::client_credentials(&TlsFiles::in_dir(tmp.path(), "hospital-a"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("check that tls.cert and tls.key belong together"),
            "{e}"
        );
    }
}
