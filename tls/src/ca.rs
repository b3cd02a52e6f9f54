//! A small certificate authority for development, demos and tests.
//!
//! Real deployments may bring their own PKI as long as leaf certificates carry
//! the `spiffe://plexus/<role>/<name>` URI SAN; this CA exists so that
//! `plexus pki init|issue` and the test sandboxes need no openssl.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, DnsName};
use time::{Duration, OffsetDateTime};

use crate::error::{Result, TlsError};
use crate::identity::{Identity, Role};

/// How long a generated CA is valid: long enough to outlive any demo or pilot.
pub const CA_VALIDITY_DAYS: u32 = 3650;

/// Default leaf validity; short enough that a leaked key expires within a study cycle.
pub const LEAF_VALIDITY_DAYS: u32 = 365;

/// Certificates are back-dated by this much so that peers with slightly slow clocks accept them.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// File names written by [`DevCa::save`].
pub const CA_CERT_FILE: &str = "ca.pem";
/// Private key file name written by [`DevCa::save`].
pub const CA_KEY_FILE: &str = "ca.key";

/// A CA certificate and its signing key.
pub struct DevCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer's own Debug elides the key; so do we.
        f.debug_struct("DevCa")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// A freshly issued leaf certificate and its private key, both PEM encoded.
#[derive(Clone)]
pub struct IssuedCert {
    /// Who the certificate names.
    pub identity: Identity,
    /// The certificate's serial number, lowercase hex: what a CRL lists to revoke it.
    pub serial: String,
    /// When the certificate expires (unix seconds).
    pub not_after_unix: i64,
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_after_unix", &self.not_after_unix)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

impl IssuedCert {
    /// Writes `<stem>.pem` and `<stem>.key` (mode 0600) into `dir`, creating it
    /// if needed and overwriting earlier files so that re-issuing is one command.
    /// Returns the paths written, certificate first.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir).map_err(|e| TlsError::io("create directory", dir, e))?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&cert, &self.cert_pem, FileMode::Public)?;
        write_file(&key, &self.key_pem, FileMode::Private)?;
        Ok((cert, key))
    }
}

impl DevCa {
    /// Creates a new self-signed CA with an ECDSA P-256 key, valid for ten years.
    pub fn generate(common_name: &str) -> Result<DevCa> {
        let key = KeyPair::generate().map_err(|e| TlsError::rcgen("generate the ca key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::rcgen("self-sign the ca certificate", e))?;
        Ok(DevCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA written by [`DevCa::save`] (or any CA with a PKCS#8/SEC1 key rcgen can read).
    pub fn load(cert_pem_path: &Path, key_pem_path: &Path) -> Result<DevCa> {
        let cert_pem = fs::read_to_string(cert_pem_path)
            .map_err(|e| TlsError::io("read the ca certificate", cert_pem_path, e))?;
        let key_pem = fs::read_to_string(key_pem_path)
            .map_err(|e| TlsError::io("read the ca key", key_pem_path, e))?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::Pem {
                what: "the ca certificate",
                path: cert_pem_path.to_owned(),
                reason: format!("{e} (expected a \"BEGIN CERTIFICATE\" block)"),
            })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
            what: "the ca private key",
            path: key_pem_path.to_owned(),
            reason: format!("{e} (expected a pkcs#8 ecdsa or ed25519 private key)"),
        })?;
        check_ca(&cert_der, &key, cert_pem_path, key_pem_path)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| TlsError::InvalidCa {
            path: cert_pem_path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(DevCa {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it if needed.
    ///
    /// Existing files are replaced: that orphans every certificate the old CA
    /// issued, so callers such as `plexus pki init` must ask before calling this
    /// on a directory that already holds a CA.
    pub fn save(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir).map_err(|e| TlsError::io("create directory", dir, e))?;
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        write_file(&cert, &self.cert_pem, FileMode::Public)?;
        write_file(&key, &self.issuer.key().serialize_pem(), FileMode::Private)?;
        Ok((cert, key))
    }

    /// The CA certificate, to hand to every party as `tls.ca`.
    pub fn ca_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER form.
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a leaf certificate valid for [`LEAF_VALIDITY_DAYS`].
    ///
    /// `dns_names` and `ip_addrs` are only needed for certificates that serve
    /// (the coordinator): clients check the server name against them.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
    ) -> Result<IssuedCert> {
        self.issue_with_validity(role, name, dns_names, ip_addrs, LEAF_VALIDITY_DAYS)
    }

    /// Like [`DevCa::issue`] with an explicit validity in days (at least 1).
    pub fn issue_with_validity(
        &self,
        role: Role,
        name: &str,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
        valid_days: u32,
    ) -> Result<IssuedCert> {
        let identity = Identity::new(role, name)?;
        let what = format!("issue a certificate for {identity}");
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&identity.to_string());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, valid_days.max(1));
        let serial = random_serial().map_err(|e| TlsError::rcgen(what.clone(), e))?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));

        let uri = identity
            .to_uri()
            .try_into()
            .map_err(|e| TlsError::rcgen(what.clone(), e))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for dns in dns_names {
            DnsName::try_from(dns.as_str()).map_err(|e| TlsError::InvalidDnsName {
                name: dns.clone(),
                reason: e.to_string(),
            })?;
            let ia5 = dns
                .as_str()
                .try_into()
                .map_err(|e| TlsError::rcgen(what.clone(), e))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params
            .subject_alt_names
            .extend(ip_addrs.iter().copied().map(SanType::IpAddress));

        let key = KeyPair::generate().map_err(|e| TlsError::rcgen(what.clone(), e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| TlsError::rcgen(what, e))?;
        Ok(IssuedCert {
            identity,
            serial: hex::encode(serial),
            not_after_unix: params.not_after.unix_timestamp(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate revocation list listing `revoked`, valid from an
    /// hour ago (clock skew) until `valid_days` days from now. `crl_number`
    /// must grow with every list so a party can tell the newer of two.
    pub fn sign_crl(
        &self,
        revoked: &[RevokedSerial],
        crl_number: u64,
        valid_days: u32,
    ) -> Result<String> {
        let now = OffsetDateTime::now_utc();
        self.sign_crl_between(
            revoked,
            crl_number,
            (now - CLOCK_SKEW).unix_timestamp(),
            (now + Duration::days(i64::from(valid_days.max(1)))).unix_timestamp(),
        )
    }

    /// [`DevCa::sign_crl`] with explicit this-update and next-update times
    /// (unix seconds), e.g. to make an already expired list for a test.
    pub fn sign_crl_between(
        &self,
        revoked: &[RevokedSerial],
        crl_number: u64,
        this_update_unix: i64,
        next_update_unix: i64,
    ) -> Result<String> {
        let now = OffsetDateTime::now_utc();
        let what = || format!("sign certificate revocation list number {crl_number}");
        let time = |unix: i64| {
            OffsetDateTime::from_unix_timestamp(unix)
                .map_err(|_| TlsError::rcgen(what(), rcgen::Error::Time))
        };
        let revoked_certs = revoked
            .iter()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&r.serial),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_unix).unwrap_or(now),
                reason_code: Some(r.reason.to_rcgen()),
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: time(this_update_unix)?,
            next_update: time(next_update_unix)?,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| TlsError::rcgen(what(), e))?;
        crl.pem().map_err(|e| TlsError::rcgen(what(), e))
    }
}

/// One certificate a CRL revokes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedSerial {
    /// Serial number (big-endian bytes).
    pub serial: Vec<u8>,
    /// When the CA revoked it (unix seconds).
    pub revoked_unix: i64,
    /// Why.
    pub reason: crate::ca_dir::RevocationReason,
}

/// 16 random bytes, positive and without a leading zero byte, so the hex
/// of the bytes is exactly how every X.509 parser prints the serial.
fn random_serial() -> std::result::Result<[u8; 16], rcgen::Error> {
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    serial[0] = (serial[0] & 0x3f) | 0x40;
    Ok(serial)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Plexus");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + Duration::days(i64::from(days));
}

/// Catches the two mistakes that would otherwise surface much later as
/// "unknown issuer": a key from another CA, and a leaf passed as the CA.
fn check_ca(
    der: &CertificateDer<'_>,
    key: &KeyPair,
    cert_path: &Path,
    key_path: &Path,
) -> Result<()> {
    let invalid = |reason: String| TlsError::InvalidCa {
        path: cert_path.to_owned(),
        reason,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| invalid(e.to_string()))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| invalid(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(invalid(
            "it is not a ca certificate (no basic constraints ca=true); pass the ca.pem written by `plexus pki init`"
                .to_owned(),
        ));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(invalid(format!(
            "the key in \"{}\" does not belong to this certificate; pass the matching ca.key",
            key_path.display()
        )));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileMode {
    Public,
    /// Owner read/write only, set at creation so the key is never briefly world-readable.
    Private,
}

/// Writes `contents` to a temporary file next to `path`, then renames it
/// into place: a daemon that re-reads its certificate files (rotation) or
/// the CRL never sees a half-written file.
pub(crate) fn write_file(path: &Path, contents: &str, mode: FileMode) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = write_new(&temp, contents, mode)
        .and_then(|()| fs::rename(&temp, path).map_err(|e| TlsError::io("replace", path, e)));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

fn write_new(path: &Path, contents: &str, mode: FileMode) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if mode == FileMode::Private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts
        .open(path)
        .map_err(|e| TlsError::io("create", path, e))?;
    // A leftover file keeps its old mode through `open`; tighten it explicitly.
    #[cfg(unix)]
    if mode == FileMode::Private {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| TlsError::io("restrict permissions of", path, e))?;
    }
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| TlsError::io("write", path, e))
}
