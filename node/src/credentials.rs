//! The node's TLS credentials: re-read from `[tls]` at every (re)connect,
//! so a rotated certificate or a new revocation list is used at the next
//! connection without a restart.

use std::sync::{Arc, Mutex, RwLock};

use tracing::error;

use plexus_tls::{CertSigner, ClientConfig, TlsFiles};

use crate::error::{NodeError, Result};

/// The key results are signed with: always the key of the certificate the
/// current connection presented, since the coordinator checks each result
/// against that certificate.
pub struct ResultSigner(RwLock<Arc<CertSigner>>);

impl ResultSigner {
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signer = self.0.read().expect("signer lock").clone();
        signer.sign(message)
    }

    fn replace(&self, signer: Arc<CertSigner>) {
        *self.0.write().expect("signer lock") = signer;
    }
}

/// Loads the `[tls]` files for each connection, falling back to the last
/// files that loaded when the current ones do not (a rotation half done,
/// a mistyped copy), so a node keeps its link while the files are fixed.
pub struct Credentials {
    files: TlsFiles,
    signer: Arc<ResultSigner>,
    last_good: Mutex<(Arc<ClientConfig>, Arc<CertSigner>)>,
}

impl Credentials {
    /// Loads the files once; unusable files stop the node at start-up.
    pub fn load(files: TlsFiles) -> Result<Self> {
        let (config, signer) =
            plexus_tls::client_credentials(&files).map_err(|e| NodeError::Tls(e.to_string()))?;
        let signer = Arc::new(signer);
        Ok(Credentials {
            files,
            signer: Arc::new(ResultSigner(RwLock::new(signer.clone()))),
            last_good: Mutex::new((config, signer)),
        })
    }

    /// What signs results: shared with the job runner.
    pub fn signer(&self) -> Arc<ResultSigner> {
        self.signer.clone()
    }

    /// The client config for a new connection, re-read from the files; the
    /// result signer switches to the same files' key.
    pub fn for_connection(&self) -> Arc<ClientConfig> {
        let mut last_good = self.last_good.lock().expect("credentials lock");
        match plexus_tls::client_credentials(&self.files) {
            Ok((config, signer)) => {
                *last_good = (config, Arc::new(signer));
            }
            Err(e) => error!(
                error = %e,
                "the [tls] files cannot be used; connecting with the ones loaded last until they are fixed"
            ),
        }
        self.signer.replace(last_good.1.clone());
        last_good.0.clone()
    }
}
