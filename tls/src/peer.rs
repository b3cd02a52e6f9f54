//! Checking a peer's certificate outside a TLS handshake: what a node does
//! with the certificates of the other members of a secure aggregation
//! roster, which reach it through the coordinator, not over a connection.

use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::config::{client_verifier, load_crl, load_roots, TlsFiles};
use crate::crl::RevocationList;
use crate::error::Result;
use crate::identity::{identity_from_cert, Role};

/// The network CA(s) of `tls.ca` and, when `tls.crl` is set, the
/// revocation lists, as a party loaded them.
#[derive(Clone)]
pub struct PeerTrust {
    verifier: Arc<dyn ClientCertVerifier>,
    crl: Option<RevocationList>,
}

impl std::fmt::Debug for PeerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTrust")
            .field("crl", &self.crl.as_ref().map(|c| c.path().to_owned()))
            .finish_non_exhaustive()
    }
}

impl PeerTrust {
    /// Loads `tls.ca` and `tls.crl` as the party's TLS configs do: a
    /// certificate the lists revoke, or whose status they cannot tell, is
    /// refused, and so is anything under an expired list.
    pub fn load(files: &TlsFiles) -> Result<PeerTrust> {
        let (roots, cas) = load_roots(&files.ca)?;
        let crl = load_crl(files, &cas)?;
        let verifier = client_verifier(roots, crl.as_ref(), &files.ca)?;
        Ok(PeerTrust { verifier, crl })
    }

    /// Checks that `certificate` (DER) chains to the network CA, was valid
    /// at `at_unix_ms`, is not revoked, and names `role` and `name` in its
    /// SAN. The error says which rule failed, in lowercase.
    pub fn verify(
        &self,
        certificate: &[u8],
        role: Role,
        name: &str,
        at_unix_ms: i64,
    ) -> std::result::Result<(), String> {
        let der = CertificateDer::from(certificate.to_vec());
        let at =
            UnixTime::since_unix_epoch(std::time::Duration::from_millis(at_unix_ms.max(0) as u64));
        if self.crl.as_ref().is_some_and(|crl| crl.revokes(&der)) {
            return Err("its certificate is revoked by the network's revocation list".into());
        }
        self.verifier
            .verify_client_cert(&der, &[], at)
            .map_err(|e| {
                format!(
                    "its certificate was not issued by the network CA, is not valid now, or its revocation status is unknown ({e})"
                )
            })?;
        let id = identity_from_cert(&der)
            .map_err(|e| format!("its certificate names no plexus identity ({e})"))?;
        if id.role != role || id.name != name {
            return Err(format!(
                "its certificate is for {} \"{}\", not {} \"{name}\"",
                id.role.as_str(),
                id.name,
                role.as_str()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca_dir::{CaDir, RevocationReason, RevokeTarget};
    use crate::DevCa;

    #[test]
    fn peers_are_checked_for_ca_revocation_and_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CaDir::create(tmp.path(), DevCa::generate("t").unwrap(), 7).unwrap();
        for n in ["hospital-a", "hospital-b"] {
            ca.issue(Role::Node, n, &[], &[]).unwrap();
        }
        let der = |n: &str| {
            crate::load_certs(&tmp.path().join(format!("{n}.pem")))
                .unwrap()
                .remove(0)
        };
        let now = chrono_now();
        let files = TlsFiles::in_dir(tmp.path(), "hospital-a");
        let trust = PeerTrust::load(&files).unwrap();
        trust
            .verify(der("hospital-b").as_ref(), Role::Node, "hospital-b", now)
            .unwrap();
        let e = trust
            .verify(der("hospital-b").as_ref(), Role::Node, "hospital-c", now)
            .unwrap_err();
        assert!(e.contains("not node \"hospital-c\""), "{e}");
        // Another CA's certificate.
        let other = tempfile::tempdir().unwrap();
        let foreign = CaDir::create(other.path(), DevCa::generate("o").unwrap(), 7).unwrap();
        foreign.issue(Role::Node, "hospital-b", &[], &[]).unwrap();
        let stranger = crate::load_certs(&other.path().join("hospital-b.pem"))
            .unwrap()
            .remove(0);
        let e = trust
            .verify(stranger.as_ref(), Role::Node, "hospital-b", now)
            .unwrap_err();
        assert!(e.contains("not issued by the network CA"), "{e}");
        // Revoked, with the list loaded again.
        ca.revoke(
            &RevokeTarget::Name("hospital-b".into()),
            RevocationReason::KeyCompromise,
            7,
        )
        .unwrap();
        let trust = PeerTrust::load(&files).unwrap();
        let e = trust
            .verify(der("hospital-b").as_ref(), Role::Node, "hospital-b", now)
            .unwrap_err();
        assert!(e.contains("revoked"), "{e}");
    }

    fn chrono_now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }
}
