//! Certificate revocation lists as a party loads them (`tls.crl`).
//!
//! Everything that can be checked without a peer is checked here, at
//! start-up and at every reload, so that a wrong file is an error naming
//! the file instead of every later handshake failing: each list must parse,
//! come from a CA in `tls.ca` and carry that CA's signature, and must not
//! have expired; and every CA in `tls.ca` needs a list, because a
//! certificate whose revocation status is unknown is refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::ca_dir::serial_hex;
use crate::error::{Result, TlsError};

/// How a party learns it must act: the hint every expiry error ends with.
const REFRESH_HINT: &str =
    "run `plexus pki crl --dir <ca folder>` where the network ca is kept and copy the new crl.pem here";

/// The revocation lists of `tls.crl`, checked against the CAs of `tls.ca`.
#[derive(Clone, Debug)]
pub struct RevocationList {
    path: PathBuf,
    ders: Vec<CertificateRevocationListDer<'static>>,
    /// (issuer name as DER, serial hex) of every revoked certificate.
    revoked: HashSet<(Vec<u8>, String)>,
    next_update_unix: i64,
    numbers: Vec<String>,
}

impl RevocationList {
    /// Loads and checks `path` against the trusted CAs `cas`, now.
    pub fn load(path: &Path, cas: &[CertificateDer<'_>]) -> Result<RevocationList> {
        Self::load_at(path, cas, OffsetDateTime::now_utc().unix_timestamp())
    }

    /// [`RevocationList::load`] as of `now_unix`.
    pub fn load_at(
        path: &Path,
        cas: &[CertificateDer<'_>],
        now_unix: i64,
    ) -> Result<RevocationList> {
        let bad = |reason: String| TlsError::Crl {
            path: path.to_owned(),
            reason,
        };
        let ders = CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| match e {
                rustls_pki_types::pem::Error::Io(source) => TlsError::io("read", path, source),
                other => bad(other.to_string()),
            })?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("{e} (expected \"BEGIN X509 CRL\" blocks)")))?;
        if ders.is_empty() {
            return Err(bad(format!(
                "the file holds no \"BEGIN X509 CRL\" block; {REFRESH_HINT}"
            )));
        }
        let cas = cas
            .iter()
            .map(|der| {
                x509_parser::parse_x509_certificate(der.as_ref())
                    .map(|(_, c)| c)
                    .map_err(|e| TlsError::CertParse {
                        reason: format!("a certificate in tls.ca: {e}"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut covered = vec![false; cas.len()];
        let mut revoked = HashSet::new();
        let mut next_update_unix = i64::MAX;
        let mut numbers = Vec::new();
        for (i, der) in ders.iter().enumerate() {
            let which = if ders.len() == 1 {
                "the list".to_owned()
            } else {
                format!("list {} of {}", i + 1, ders.len())
            };
            let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
                .map_err(|e| bad(format!("{which} cannot be parsed: {e}")))?;
            let issuer = crl.issuer();
            let Some(ca) = cas
                .iter()
                .position(|ca| ca.subject().as_raw() == issuer.as_raw())
            else {
                return Err(bad(format!(
                    "{which} was issued by \"{issuer}\", which is not a ca in tls.ca; use the crl.pem of the ca that issued the network's certificates"
                )));
            };
            crl.verify_signature(cas[ca].public_key()).map_err(|_| {
                bad(format!(
                    "{which} names \"{issuer}\" but is not signed by that ca's key in tls.ca (a list of another ca with the same name, e.g. after `plexus pki init --force`?); use the crl.pem written next to the ca.pem in use"
                ))
            })?;
            let Some(next_update) = crl.next_update() else {
                return Err(bad(format!(
                    "{which} has no next update time, so its expiry cannot be checked; {REFRESH_HINT}"
                )));
            };
            let next_update = next_update.timestamp();
            if next_update <= now_unix {
                return Err(bad(format!(
                    "{which} expired at {}; {REFRESH_HINT}",
                    utc(next_update)
                )));
            }
            next_update_unix = next_update_unix.min(next_update);
            covered[ca] = true;
            numbers.push(
                crl.crl_number()
                    .map_or_else(|| "none".to_owned(), |n| n.to_string()),
            );
            for r in crl.iter_revoked_certificates() {
                revoked.insert((issuer.as_raw().to_vec(), serial_hex(r.raw_serial())));
            }
        }
        if let Some(missing) = covered.iter().position(|c| !c) {
            return Err(bad(format!(
                "it has no list from the ca \"{}\" in tls.ca, so every certificate that ca issued would be refused (revocation status unknown); add that ca's crl to the file",
                cas[missing].subject()
            )));
        }
        Ok(RevocationList {
            path: path.to_owned(),
            ders,
            revoked,
            next_update_unix,
            numbers,
        })
    }

    /// The file the lists came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lists, for rustls.
    pub fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.ders.clone()
    }

    /// The earliest next-update time of the lists (unix seconds): after it
    /// every handshake is refused until a fresh list is installed.
    pub fn next_update_unix(&self) -> i64 {
        self.next_update_unix
    }

    /// How many certificates the lists revoke.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// The CRL numbers, comma separated (for logs).
    pub fn numbers(&self) -> String {
        self.numbers.join(", ")
    }

    /// Whether the lists revoke `cert` (matched by issuer and serial, as
    /// RFC 5280 identifies a certificate). Used to cut connections that
    /// were opened before a revocation; new connections are checked by rustls.
    pub fn revokes(&self, cert: &CertificateDer<'_>) -> bool {
        match x509_parser::parse_x509_certificate(cert.as_ref()) {
            Ok((_, c)) => self
                .revoked
                .contains(&(c.issuer().as_raw().to_vec(), serial_hex(c.raw_serial()))),
            Err(_) => false,
        }
    }
}

/// A unix time as RFC 3339 UTC.
pub(crate) fn utc(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("unix time {unix}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca_dir::{CaDir, RevocationReason, RevokeTarget, CRL_FILE};
    use crate::{DevCa, Role};

    fn ca_der(dir: &CaDir) -> Vec<CertificateDer<'static>> {
        vec![dir.ca().ca_cert_der().clone()]
    }

    fn cert_der(path: &Path) -> CertificateDer<'static> {
        crate::load_certs(path).unwrap().remove(0)
    }

    #[test]
    fn a_new_ca_writes_an_empty_list_that_parses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::create(tmp.path(), DevCa::generate("t").unwrap(), 7).unwrap();
        let list = RevocationList::load(&tmp.path().join(CRL_FILE), &ca_der(&dir)).unwrap();
        assert_eq!(list.revoked_count(), 0);
        assert_eq!(list.numbers(), "1");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let left = list.next_update_unix() - now;
        assert!((7 * 86_400 - 60..=7 * 86_400).contains(&left), "{left}");
    }

    #[test]
    fn revoking_by_name_lists_every_certificate_of_that_name_and_only_those() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::create(tmp.path(), DevCa::generate("t").unwrap(), 7).unwrap();
        let (old_b, _, _) = dir.issue(Role::Node, "node-b", &[], &[]).unwrap();
        let old_b_der = cert_der(&tmp.path().join("node-b.pem"));
        let (new_b, b_pem, _) = dir.issue(Role::Node, "node-b", &[], &[]).unwrap();
        let (_, a_pem, _) = dir.issue(Role::Node, "node-a", &[], &[]).unwrap();
        assert_ne!(old_b.serial, new_b.serial);

        let (revoked, crl) = dir
            .revoke(
                &RevokeTarget::Name("node-b".into()),
                RevocationReason::KeyCompromise,
                3,
            )
            .unwrap();
        let serials: Vec<&str> = revoked.iter().map(|e| e.serial.as_str()).collect();
        assert_eq!(serials, [old_b.serial.as_str(), new_b.serial.as_str()]);
        assert_eq!((crl.number, crl.revoked), (2, 2));

        let list = RevocationList::load(&crl.path, &ca_der(&dir)).unwrap();
        assert!(list.revokes(&old_b_der));
        assert!(list.revokes(&cert_der(&b_pem)));
        assert!(!list.revokes(&cert_der(&a_pem)));
        assert_eq!(list.numbers(), "2");

        // What rcgen wrote is what an independent parser reads back.
        let der = CertificateRevocationListDer::from_pem_file(&crl.path).unwrap();
        let (_, parsed) = x509_parser::parse_x509_crl(der.as_ref()).unwrap();
        let listed: Vec<String> = parsed
            .iter_revoked_certificates()
            .map(|r| serial_hex(r.raw_serial()))
            .collect();
        assert_eq!(listed, [old_b.serial.clone(), new_b.serial.clone()]);
        let reasons: Vec<_> = parsed
            .iter_revoked_certificates()
            .map(|r| r.reason_code().map(|(_, c)| c.0))
            .collect();
        assert_eq!(reasons, [Some(1), Some(1)], "key compromise is code 1");

        let e = dir
            .revoke(
                &RevokeTarget::Name("node-b".into()),
                RevocationReason::Unspecified,
                3,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("already revoked"), "{e}");
        let e = dir
            .revoke(
                &RevokeTarget::Name("node-z".into()),
                RevocationReason::Unspecified,
                3,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("no certificate was issued to \"node-z\""), "{e}");
    }

    #[test]
    fn revoking_by_serial_takes_one_certificate_and_refreshing_keeps_the_list() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::create(tmp.path(), DevCa::generate("t").unwrap(), 7).unwrap();
        let (old, _, _) = dir.issue(Role::Node, "node-b", &[], &[]).unwrap();
        let old_der = cert_der(&tmp.path().join("node-b.pem"));
        let (_, new_pem, _) = dir.issue(Role::Node, "node-b", &[], &[]).unwrap();
        let colons: Vec<String> = old
            .serial
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap().to_uppercase())
            .collect();
        let (revoked, _) = dir
            .revoke(
                &RevokeTarget::Serial(colons.join(":")),
                RevocationReason::Superseded,
                7,
            )
            .unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].serial, old.serial);

        let refreshed = dir.write_crl(1).unwrap();
        assert_eq!((refreshed.number, refreshed.revoked), (3, 1));
        let list = RevocationList::load(&refreshed.path, &ca_der(&dir)).unwrap();
        assert!(list.revokes(&old_der));
        assert!(!list.revokes(&cert_der(&new_pem)));
        assert_eq!(dir.index().unwrap().crl_number, 3);

        let e = dir
            .revoke(
                &RevokeTarget::Serial("0x00:0A:BC".into()),
                RevocationReason::Unspecified,
                7,
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no certificate with serial 0abc was issued"),
            "{e}"
        );
    }

    #[test]
    fn certificates_issued_before_the_index_can_be_revoked_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::create(tmp.path(), DevCa::generate("t").unwrap(), 7).unwrap();
        let legacy = dir.ca().issue(Role::Node, "old-node", &[], &[]).unwrap();
        let (pem, _) = legacy.save(tmp.path(), "old-node").unwrap();
        let (revoked, crl) = dir
            .revoke(
                &RevokeTarget::Name("old-node".into()),
                RevocationReason::Unspecified,
                7,
            )
            .unwrap();
        assert_eq!(revoked[0].serial, legacy.serial);
        assert_eq!(revoked[0].identity, "node:old-node");
        let list = RevocationList::load(&crl.path, &ca_der(&dir)).unwrap();
        assert!(list.revokes(&cert_der(&pem)));
    }

    #[test]
    fn an_expired_list_is_an_error_that_says_what_to_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::create(tmp.path(), DevCa::generate("t").unwrap(), 1).unwrap();
        let path = tmp.path().join(CRL_FILE);
        let in_two_days = OffsetDateTime::now_utc().unix_timestamp() + 2 * 86_400;
        let e = RevocationList::load_at(&path, &ca_der(&dir), in_two_days)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "tls.crl \"{}\" cannot be used: the list expired at 20",
                path.display()
            )),
            "{e}"
        );
        assert!(e.ends_with(REFRESH_HINT), "{e}");
    }

    #[test]
    fn lists_from_another_ca_garbage_and_missing_lists_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CaDir::create(tmp.path(), DevCa::generate("t").unwrap(), 7).unwrap();
        // Same name, other key: `plexus pki init --force` elsewhere.
        let other_tmp = tempfile::tempdir().unwrap();
        let other = CaDir::create(other_tmp.path(), DevCa::generate("t").unwrap(), 7).unwrap();
        let e = RevocationList::load(&other.crl_path(), &ca_der(&dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not signed by that ca's key"), "{e}");
        // Another name altogether.
        let third_tmp = tempfile::tempdir().unwrap();
        let third = CaDir::create(third_tmp.path(), DevCa::generate("u").unwrap(), 7).unwrap();
        let e = RevocationList::load(&third.crl_path(), &ca_der(&dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("which is not a ca in tls.ca"), "{e}");
        // A bundle of two CAs needs a list from each.
        let bundle = [ca_der(&dir), ca_der(&third)].concat();
        let e = RevocationList::load(&dir.crl_path(), &bundle)
            .unwrap_err()
            .to_string();
        assert!(e.contains("it has no list from the ca"), "{e}");
        let both = tmp.path().join("both.pem");
        let text = std::fs::read_to_string(dir.crl_path()).unwrap()
            + &std::fs::read_to_string(third.crl_path()).unwrap();
        std::fs::write(&both, text).unwrap();
        let list = RevocationList::load(&both, &bundle).unwrap();
        assert_eq!(list.numbers(), "1, 1");

        let garbage = tmp.path().join("garbage.pem");
        std::fs::write(&garbage, "not a crl\n").unwrap();
        let e = RevocationList::load(&garbage, &ca_der(&dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no \"BEGIN X509 CRL\" block"), "{e}");
        std::fs::write(
            &garbage,
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let e = RevocationList::load(&garbage, &ca_der(&dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the list cannot be parsed"), "{e}");
    }
}
