//! Dev CA, certificate contents and config loading.

mod common;

use std::net::IpAddr;

use plexus_tls::{
    client_config, identity_from_cert, server_config, CertificateDer, DevCa, Identity, Role,
    TlsError, TlsFiles,
};
use rustls_pki_types::pem::PemObject;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[test]
fn issued_certificates_carry_the_identity_and_sans() {
    let ca = DevCa::generate("test ca").unwrap();
    let issued = ca
        .issue(
            Role::Coordinator,
            "coord-1",
            &["localhost".to_owned(), "coord.example".to_owned()],
            &[common::LOCALHOST, "::1".parse::<IpAddr>().unwrap()],
        )
        .unwrap();
    let cert = der(&issued.cert_pem);
    assert_eq!(
        identity_from_cert(&cert).unwrap(),
        Identity::new(Role::Coordinator, "coord-1").unwrap()
    );

    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    let sans: Vec<String> = parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        sans,
        [
            "URI(spiffe://plexus/coordinator/coord-1)",
            "DNSName(localhost)",
            "DNSName(coord.example)",
            "IPAddress(7f:00:00:01)",
            "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)",
        ]
    );
    assert!(!parsed.basic_constraints().unwrap().unwrap().value.ca);
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let days = (parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp())
        / 86_400;
    assert_eq!(
        days, 365,
        "one year plus the back-dating hour, rounded down"
    );

    let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca.ca_cert_der().as_ref()).unwrap();
    assert!(ca_parsed.basic_constraints().unwrap().unwrap().value.ca);
    let ku = ca_parsed.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert_eq!(parsed.issuer(), ca_parsed.subject());
}

#[test]
fn validity_is_configurable() {
    let ca = DevCa::generate("test ca").unwrap();
    let issued = ca
        .issue_with_validity(Role::Researcher, "alice", &[], &[], 2)
        .unwrap();
    let cert = der(&issued.cert_pem);
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    let v = parsed.validity();
    assert_eq!(
        (v.not_after.timestamp() - v.not_before.timestamp()) / 3600,
        49
    );
}

#[test]
fn bad_names_are_refused_at_issue() {
    let ca = DevCa::generate("test ca").unwrap();
    let err = ca.issue(Role::Node, "hospital a", &[], &[]).unwrap_err();
    assert!(matches!(err, TlsError::InvalidName { .. }), "{err}");
    let err = ca
        .issue(Role::Node, "a", &["not a host".to_owned()], &[])
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("dns name \"not a host\" is invalid"),
        "{err}"
    );
}

#[test]
fn ca_saves_loads_and_still_signs_verifiable_certs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("test ca").unwrap();
    let (cert_path, key_path) = ca.save(dir.path()).unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Saving again replaces the files (pki init --force) and re-tightens a loosened key.
    let loose = std::fs::metadata(&cert_path).unwrap().permissions();
    std::fs::set_permissions(&key_path, loose).unwrap();
    ca.save(dir.path()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let loaded = DevCa::load(&cert_path, &key_path).unwrap();
    assert_eq!(loaded.ca_cert_pem(), ca.ca_cert_pem());
    loaded
        .issue(Role::Node, "hospital-b", &[], &[])
        .unwrap()
        .save(dir.path(), "hospital-b")
        .unwrap();
    // The reloaded CA's certificates must chain to the original CA file.
    let files = common::files(dir.path(), &cert_path, "hospital-b");
    client_config(&files).unwrap();
    server_config(&files).unwrap();
}

#[test]
fn loading_a_ca_with_the_wrong_key_or_a_leaf_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, other_key) = DevCa::generate("other")
        .unwrap()
        .save(other.path())
        .unwrap();

    let err = DevCa::load(&pki.node.ca, &other_key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not belong to this certificate"), "{err}");

    let err = DevCa::load(&pki.node.cert, &pki.node.key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("it is not a ca certificate"), "{err}");
}

#[test]
fn tls_files_validate_and_resolve() {
    let files = TlsFiles {
        ca: "pki/ca.pem".into(),
        cert: "/abs/node.pem".into(),
        key: "node.key".into(),
        crl: Some("pki/crl.pem".into()),
    };
    let resolved = files.resolve(std::path::Path::new("/etc/plexus"));
    assert_eq!(
        resolved.crl.as_deref(),
        Some(std::path::Path::new("/etc/plexus/pki/crl.pem"))
    );
    assert_eq!(resolved.ca, std::path::Path::new("/etc/plexus/pki/ca.pem"));
    assert_eq!(resolved.cert, std::path::Path::new("/abs/node.pem"));
    assert_eq!(resolved.key, std::path::Path::new("/etc/plexus/node.key"));

    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    pki.node.validate().unwrap();
    let mut missing = pki.node.clone();
    missing.key = dir.path().join("nope.key");
    let err = missing.validate().unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "tls.key file \"{}\" does not exist (run `plexus pki issue` to create a certificate and key, or fix the path)",
            missing.key.display()
        )
    );
    assert!(server_config(&missing).is_err());
}

#[test]
fn tls_files_reject_unknown_fields() {
    // serde_json is not a dependency here; serde's own map deserializer suffices.
    use serde::de::value::{Error, MapDeserializer};
    use serde::Deserialize;
    let entries = [("ca", "a"), ("cert", "b"), ("key", "c"), ("extra", "1")];
    let err = TlsFiles::deserialize(MapDeserializer::<_, Error>::new(entries.into_iter()))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("unknown field `extra`"), "{err}");
}

#[test]
fn swapped_or_mismatched_files_fail_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());

    let mut swapped = pki.node.clone();
    std::mem::swap(&mut swapped.cert, &mut swapped.key);
    let err = client_config(&swapped).unwrap_err().to_string();
    assert!(err.contains(&swapped.cert.display().to_string()), "{err}");
    assert!(err.contains("no \"BEGIN CERTIFICATE\" block"), "{err}");

    let mut mismatched = pki.node.clone();
    mismatched.key = pki.coordinator.key.clone();
    let err = server_config(&mismatched).unwrap_err().to_string();
    assert!(
        err.starts_with("could not build the tls server configuration"),
        "{err}"
    );
}
