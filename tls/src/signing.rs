//! Ed25519 keys for what a party signs beyond TLS: the coordinator's job
//! envelopes (and, later, results and audit checkpoints). The private key
//! is a PKCS#8 PEM file readable by its owner only; the public key is 64
//! hex characters in a text file, easy to compare by eye and to pin in
//! another party's config.

use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PKCS_ED25519};
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::ca::{write_file, FileMode};
use crate::error::{Result, TlsError};

/// A signing key pair.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public_hex())
            .finish_non_exhaustive()
    }
}

/// The files [`SigningKey::generate_into`] writes for `stem`.
pub fn signing_key_files(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}-signing.key")),
        dir.join(format!("{stem}-signing.pub")),
    )
}

impl SigningKey {
    /// Makes a new key pair and writes `STEM-signing.key` (private, mode
    /// 0600) and `STEM-signing.pub` (public, hex) into `dir`.
    pub fn generate_into(dir: &Path, stem: &str) -> Result<(SigningKey, PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::io("create directory", dir, e))?;
        let generated = KeyPair::generate_for(&PKCS_ED25519)
            .map_err(|e| TlsError::rcgen("generate an Ed25519 signing key", e))?;
        let (key_path, pub_path) = signing_key_files(dir, stem);
        write_file(&key_path, &generated.serialize_pem(), FileMode::Private)?;
        let key = Self::load(&key_path)?;
        write_file(
            &pub_path,
            &format!("{}\n", key.public_hex()),
            FileMode::Public,
        )?;
        Ok((key, key_path, pub_path))
    }

    /// Reads a PKCS#8 PEM Ed25519 private key.
    pub fn load(path: &Path) -> Result<SigningKey> {
        let bad = |reason: String| TlsError::SigningKey {
            what: "signing key",
            path: path.to_owned(),
            reason,
        };
        let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| match e {
            rustls_pki_types::pem::Error::Io(source) => TlsError::io("read", path, source),
            other => bad(format!(
                "{other} (expected a PKCS#8 Ed25519 \"PRIVATE KEY\" PEM block, as `plexus pki init` writes)"
            )),
        })?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| bad(format!("not an Ed25519 key ({e})")))?;
        Ok(SigningKey { pair })
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.pair.public_key().as_ref().to_vec())
    }
}

/// A pinned Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey(Vec<u8>);

impl VerifyingKey {
    /// Reads a public key file: 64 hex characters (whitespace around them
    /// is ignored).
    pub fn load(path: &Path) -> Result<VerifyingKey> {
        let text = std::fs::read_to_string(path).map_err(|e| TlsError::io("read", path, e))?;
        Self::from_hex(text.trim()).map_err(|reason| TlsError::SigningKey {
            what: "verifying key",
            path: path.to_owned(),
            reason,
        })
    }

    pub fn from_hex(text: &str) -> std::result::Result<VerifyingKey, String> {
        let bytes = hex::decode(text).map_err(|e| {
            format!("not hexadecimal ({e}); the file should hold the 64 hex characters of a STEM-signing.pub")
        })?;
        if bytes.len() != 32 {
            return Err(format!(
                "{} bytes where an Ed25519 public key has 32",
                bytes.len()
            ));
        }
        Ok(VerifyingKey(bytes))
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

/// Signs with a party's TLS key (its certificate's ECDSA P-256 key), so
/// anyone holding the certificate can check the signature later.
pub struct CertSigner {
    pair: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl CertSigner {
    /// Reads the PKCS#8 PEM key of `tls.key`.
    pub fn load(path: &Path) -> Result<CertSigner> {
        let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| match e {
            rustls_pki_types::pem::Error::Io(source) => TlsError::io("read", path, source),
            other => TlsError::SigningKey {
                what: "signing key",
                path: path.to_owned(),
                reason: format!("{other} (expected the PKCS#8 key `plexus pki issue` writes)"),
            },
        })?;
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| TlsError::SigningKey {
            what: "signing key",
            path: path.to_owned(),
            reason: format!("not an ECDSA P-256 key ({e})"),
        })?;
        Ok(CertSigner { pair, rng })
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default()
    }
}

/// Checks a [`CertSigner`] signature against the signer's certificate.
pub fn verify_by_certificate(
    certificate: &[u8],
    message: &[u8],
    signature: &[u8],
) -> std::result::Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let key = cert.public_key().subject_public_key.data.as_ref();
    UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
        .verify(message, signature)
        .map_err(|_| "the signature does not verify against the certificate's key".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_signs_with_its_tls_key_and_anyone_checks_with_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::DevCa::generate("test CA").unwrap();
        let (cert, key) = ca
            .issue(crate::Role::Node, "hospital-a", &[], &[])
            .unwrap()
            .save(dir.path(), "hospital-a")
            .unwrap();
        let signer = CertSigner::load(&key).unwrap();
        let der = crate::load_certs(&cert).unwrap().remove(0);
        let sig = signer.sign(b"result");
        verify_by_certificate(der.as_ref(), b"result", &sig).unwrap();
        assert!(verify_by_certificate(der.as_ref(), b"resulT", &sig).is_err());
        let other = ca.issue(crate::Role::Node, "hospital-b", &[], &[]).unwrap();
        let (other_cert, _) = other.save(dir.path(), "hospital-b").unwrap();
        let other_der = crate::load_certs(&other_cert).unwrap().remove(0);
        assert!(verify_by_certificate(other_der.as_ref(), b"result", &sig).is_err());
    }

    #[test]
    fn keys_round_trip_through_their_files_and_signatures_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (key, key_path, pub_path) =
            SigningKey::generate_into(dir.path(), "coordinator").unwrap();
        let again = SigningKey::load(&key_path).unwrap();
        assert_eq!(again.public_hex(), key.public_hex());
        let pinned = VerifyingKey::load(&pub_path).unwrap();
        let sig = key.sign(b"job");
        assert!(pinned.verify(b"job", &sig));
        assert!(!pinned.verify(b"jub", &sig));
        // Swapped files are named as such.
        let e = SigningKey::load(&pub_path).unwrap_err().to_string();
        assert!(e.contains("PRIVATE KEY"), "{e}");
        let e = VerifyingKey::load(&key_path).unwrap_err().to_string();
        assert!(e.contains("hex"), "{e}");
    }
}
