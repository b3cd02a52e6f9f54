//! A development CA folder as `plexus pki` keeps it: `ca.pem` and `ca.key`,
//! every certificate issued recorded in `index.json` (so that one can be
//! revoked by name), and `crl.pem`, the signed revocation list every party
//! loads as `tls.crl`.
//!
//! The CRL is rewritten whole each time, with a CRL number one above the
//! last, so a party that sees two lists can tell which is newer.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ca::{write_file, DevCa, FileMode, IssuedCert, RevokedSerial};
use crate::error::{Result, TlsError};
use crate::identity::{identity_from_cert, validate_name, Role};
use crate::{CA_CERT_FILE, CA_KEY_FILE};

/// Where [`CaDir`] records what it issued and revoked.
pub const INDEX_FILE: &str = "index.json";
/// The revocation list [`CaDir`] writes; parties name it as `tls.crl`.
pub const CRL_FILE: &str = "crl.pem";
/// Default CRL lifetime: a week, so a list that stopped being refreshed
/// (and may be missing a revocation) stops being trusted within days.
pub const CRL_VALIDITY_DAYS: u32 = 7;

/// Why a certificate was revoked (RFC 5280 reason codes that apply to a
/// leaf certificate of a dev CA).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// No reason given.
    #[default]
    Unspecified,
    /// The private key leaked or may have.
    KeyCompromise,
    /// The holder left the network or changed role.
    AffiliationChanged,
    /// Replaced by a newer certificate (rotation).
    Superseded,
    /// The holder stopped operating (a node decommissioned).
    CessationOfOperation,
}

impl RevocationReason {
    /// Every reason, in the order help texts list them.
    pub const ALL: [RevocationReason; 5] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
    ];

    /// The command-line and index spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
        }
    }

    pub(crate) fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        RevocationReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = RevocationReason::ALL.iter().map(|r| r.as_str()).collect();
                format!(
                    "unknown revocation reason \"{s}\" (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// One revocation, as recorded in the index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// When (unix seconds).
    pub revoked_unix: i64,
    /// Why.
    pub reason: RevocationReason,
}

/// One certificate the CA issued.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// Serial number, lowercase hex without leading zero bytes.
    pub serial: String,
    /// `role:name`.
    pub identity: String,
    /// When it was issued (unix seconds).
    pub issued_unix: i64,
    /// When it expires (unix seconds).
    pub not_after_unix: i64,
    /// Set once the certificate is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

impl IndexEntry {
    /// The name part of the identity.
    pub fn name(&self) -> &str {
        self.identity
            .split_once(':')
            .map_or(self.identity.as_str(), |(_, n)| n)
    }
}

/// `index.json`: the certificates a dev CA issued and the CRL number it is at.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CaIndex {
    /// Number of the last CRL written; the next one gets one more.
    pub crl_number: u64,
    /// Every certificate recorded, oldest first.
    pub certificates: Vec<IndexEntry>,
}

/// Which certificates `plexus pki revoke` revokes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokeTarget {
    /// Every certificate issued to this name that is not revoked yet.
    Name(String),
    /// The one certificate with this serial (hex; colons and a `0x` prefix are accepted).
    Serial(String),
}

/// What writing a CRL produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlWritten {
    /// The file written.
    pub path: PathBuf,
    /// Its CRL number.
    pub number: u64,
    /// How many certificates it lists.
    pub revoked: usize,
    /// Until when parties accept it (unix seconds).
    pub next_update_unix: i64,
}

/// A dev CA and its folder.
#[derive(Debug)]
pub struct CaDir {
    dir: PathBuf,
    ca: DevCa,
}

impl CaDir {
    /// Saves `ca` into `dir` with an empty index and an empty CRL valid for
    /// `crl_days`. Replaces a CA already there: callers ask first.
    pub fn create(dir: &Path, ca: DevCa, crl_days: u32) -> Result<CaDir> {
        ca.save(dir)?;
        let ca_dir = CaDir {
            dir: dir.to_owned(),
            ca,
        };
        ca_dir.save_index(&CaIndex::default())?;
        ca_dir.write_crl(crl_days)?;
        Ok(ca_dir)
    }

    /// Opens the CA in `dir` (`ca.pem`, `ca.key`).
    pub fn open(dir: &Path) -> Result<CaDir> {
        let cert = dir.join(CA_CERT_FILE);
        if !cert.is_file() {
            return Err(TlsError::NoCa {
                dir: dir.to_owned(),
            });
        }
        let ca = DevCa::load(&cert, &dir.join(CA_KEY_FILE))?;
        Ok(CaDir {
            dir: dir.to_owned(),
            ca,
        })
    }

    /// The CA itself.
    pub fn ca(&self) -> &DevCa {
        &self.ca
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `crl.pem` in the folder.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join(CRL_FILE)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join(INDEX_FILE)
    }

    /// The index; empty for a folder made before the index existed.
    pub fn index(&self) -> Result<CaIndex> {
        let path = self.index_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CaIndex::default()),
            Err(e) => return Err(TlsError::io("read", path, e)),
        };
        serde_json::from_str(&text).map_err(|e| TlsError::CaIndex {
            path,
            reason: format!(
                "{e} (restore it from a backup; it records which certificates are revoked)"
            ),
        })
    }

    fn save_index(&self, index: &CaIndex) -> Result<()> {
        let mut text = serde_json::to_string_pretty(index).map_err(|e| TlsError::CaIndex {
            path: self.index_path(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        write_file(&self.index_path(), &text, FileMode::Public)
    }

    /// Issues a certificate, writes `<name>.pem` and `<name>.key` and
    /// records it in the index. Returns the certificate and the paths.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        dns_names: &[String],
        ip_addrs: &[IpAddr],
    ) -> Result<(IssuedCert, PathBuf, PathBuf)> {
        let issued = self.ca.issue(role, name, dns_names, ip_addrs)?;
        let mut index = self.index()?;
        let (cert, key) = issued.save(&self.dir, name)?;
        index.certificates.push(IndexEntry {
            serial: issued.serial.clone(),
            identity: issued.identity.to_string(),
            issued_unix: OffsetDateTime::now_utc().unix_timestamp(),
            not_after_unix: issued.not_after_unix,
            revoked: None,
        });
        self.save_index(&index)?;
        Ok((issued, cert, key))
    }

    /// Revokes `target`, records it and rewrites `crl.pem`. Returns the
    /// entries revoked now and the CRL written.
    pub fn revoke(
        &self,
        target: &RevokeTarget,
        reason: RevocationReason,
        crl_days: u32,
    ) -> Result<(Vec<IndexEntry>, CrlWritten)> {
        let mut index = self.index()?;
        // Certificates issued before the index existed are still in the
        // folder as <name>.pem: adopt them so they can be revoked too.
        for found in self.scan_folder()? {
            if !index.certificates.iter().any(|e| e.serial == found.serial) {
                index.certificates.push(found);
            }
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let chosen: Vec<usize> = match target {
            RevokeTarget::Name(name) => {
                validate_name(name)?;
                let all: Vec<usize> = (0..index.certificates.len())
                    .filter(|&i| index.certificates[i].name() == name)
                    .collect();
                if all.is_empty() {
                    return Err(TlsError::NotIssued {
                        what: format!("no certificate was issued to \"{name}\""),
                        dir: self.dir.clone(),
                    });
                }
                let live: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|&i| index.certificates[i].revoked.is_none())
                    .collect();
                if live.is_empty() {
                    return Err(TlsError::AlreadyRevoked {
                        what: format!("every certificate issued to \"{name}\""),
                        serials: all
                            .iter()
                            .map(|&i| index.certificates[i].serial.clone())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                live
            }
            RevokeTarget::Serial(given) => {
                let serial = normalize_serial(given)?;
                let Some(i) = index.certificates.iter().position(|e| e.serial == serial) else {
                    return Err(TlsError::NotIssued {
                        what: format!("no certificate with serial {serial} was issued by this ca"),
                        dir: self.dir.clone(),
                    });
                };
                if index.certificates[i].revoked.is_some() {
                    return Err(TlsError::AlreadyRevoked {
                        what: format!("the certificate of {}", index.certificates[i].identity),
                        serials: serial,
                    });
                }
                vec![i]
            }
        };
        for &i in &chosen {
            index.certificates[i].revoked = Some(Revocation {
                revoked_unix: now,
                reason,
            });
        }
        let revoked = chosen
            .iter()
            .map(|&i| index.certificates[i].clone())
            .collect();
        let crl = self.write_crl_with(&mut index, crl_days)?;
        Ok((revoked, crl))
    }

    /// Re-signs `crl.pem` with the same revocations, a new number and a
    /// fresh validity of `crl_days`: run it before the current list expires.
    pub fn write_crl(&self, crl_days: u32) -> Result<CrlWritten> {
        let mut index = self.index()?;
        self.write_crl_with(&mut index, crl_days)
    }

    fn write_crl_with(&self, index: &mut CaIndex, crl_days: u32) -> Result<CrlWritten> {
        let revoked: Vec<RevokedSerial> = index
            .certificates
            .iter()
            .filter_map(|e| {
                let r = e.revoked.as_ref()?;
                Some(hex::decode(&e.serial).map(|serial| RevokedSerial {
                    serial,
                    revoked_unix: r.revoked_unix,
                    reason: r.reason,
                }))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| TlsError::CaIndex {
                path: self.index_path(),
                reason: format!(
                    "a serial is not hexadecimal ({e}); restore the file from a backup"
                ),
            })?;
        let number = index.crl_number + 1;
        let pem = self.ca.sign_crl(&revoked, number, crl_days)?;
        // The index first: a crash in between leaves a number used twice
        // at worst, never a revocation recorded nowhere.
        index.crl_number = number;
        self.save_index(index)?;
        let path = self.crl_path();
        write_file(&path, &pem, FileMode::Public)?;
        Ok(CrlWritten {
            path,
            number,
            revoked: revoked.len(),
            next_update_unix: OffsetDateTime::now_utc().unix_timestamp()
                + i64::from(crl_days.max(1)) * 86_400,
        })
    }

    /// Leaf certificates of this CA lying in the folder as `<name>.pem`.
    fn scan_folder(&self) -> Result<Vec<IndexEntry>> {
        let ca_subject = {
            let (_, ca) = x509_parser::parse_x509_certificate(self.ca.ca_cert_der().as_ref())
                .map_err(|e| TlsError::CertParse {
                    reason: e.to_string(),
                })?;
            ca.subject().as_raw().to_vec()
        };
        let entries =
            std::fs::read_dir(&self.dir).map_err(|e| TlsError::io("list", &self.dir, e))?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let file_name = entry.file_name();
            if path.extension().is_none_or(|x| x != "pem")
                || file_name == CA_CERT_FILE
                || file_name == CRL_FILE
            {
                continue;
            }
            let Ok(certs) = crate::config::load_certs(&path) else {
                continue;
            };
            let Some(der) = certs.first() else { continue };
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
                continue;
            };
            if cert.issuer().as_raw() != ca_subject.as_slice() {
                continue;
            }
            let Ok(identity) = identity_from_cert(der) else {
                continue;
            };
            found.push(IndexEntry {
                serial: serial_hex(cert.raw_serial()),
                identity: identity.to_string(),
                issued_unix: cert.validity().not_before.timestamp(),
                not_after_unix: cert.validity().not_after.timestamp(),
                revoked: None,
            });
        }
        Ok(found)
    }
}

/// Lowercase hex of a serial's bytes without leading zero bytes (DER adds
/// one to keep a serial with its high bit set positive).
pub fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    hex::encode(&bytes[start..])
}

/// Accepts a serial as people copy it: `AB:CD:...` (openssl), `0xabcd`, any case.
pub fn normalize_serial(given: &str) -> Result<String> {
    let invalid = |reason: &str| TlsError::InvalidSerial {
        given: given.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = given.trim();
    let digits: String = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed)
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if digits.is_empty() {
        return Err(invalid("it is empty"));
    }
    if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            "only hexadecimal digits (and ':' between bytes) are allowed",
        ));
    }
    if digits.len() > 42 {
        return Err(invalid("a certificate serial has at most 20 bytes"));
    }
    let even = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = hex::decode(&even).map_err(|_| invalid("it is not hexadecimal"))?;
    Ok(serial_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_normalized_as_people_copy_them() {
        assert_eq!(normalize_serial("AB:CD:01").unwrap(), "abcd01");
        assert_eq!(normalize_serial("0x00abcd").unwrap(), "abcd");
        assert_eq!(normalize_serial(" 4a1 ").unwrap(), "04a1");
        assert_eq!(serial_hex(&[0, 0x80, 1]), "8001");
        assert_eq!(serial_hex(&[0]), "00");
        let e = normalize_serial("xyz").unwrap_err().to_string();
        assert_eq!(
            e,
            "serial \"xyz\" is invalid: only hexadecimal digits (and ':' between bytes) are allowed"
        );
        assert!(normalize_serial("").is_err());
        assert!(normalize_serial(&"a".repeat(43)).is_err());
    }

    #[test]
    fn reasons_round_trip_and_unknown_ones_list_the_choices() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>().unwrap(), r);
        }
        let e = "lost".parse::<RevocationReason>().unwrap_err();
        assert!(e.contains("key-compromise, affiliation-changed"), "{e}");
    }
}
