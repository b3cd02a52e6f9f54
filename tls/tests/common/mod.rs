//! Throwaway PKI shared by the integration tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use plexus_tls::{DevCa, Role, TlsFiles};

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A CA in `dir/ca.pem` plus `coordinator` and `hospital-a` (node) certificates.
pub struct Pki {
    pub ca: DevCa,
    pub coordinator: TlsFiles,
    pub node: TlsFiles,
}

pub fn files(dir: &Path, ca: &Path, stem: &str) -> TlsFiles {
    TlsFiles {
        ca: ca.to_owned(),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    }
}

pub fn pki(dir: &Path) -> Pki {
    let ca = DevCa::generate("plexus test ca").unwrap();
    let (ca_pem, _) = ca.save(dir).unwrap();
    ca.issue(
        Role::Coordinator,
        "coordinator",
        &["localhost".to_owned()],
        &[LOCALHOST],
    )
    .unwrap()
    .save(dir, "coordinator")
    .unwrap();
    ca.issue(Role::Node, "hospital-a", &[], &[])
        .unwrap()
        .save(dir, "hospital-a")
        .unwrap();
    Pki {
        coordinator: files(dir, &ca_pem, "coordinator"),
        node: files(dir, &ca_pem, "hospital-a"),
        ca,
    }
}
