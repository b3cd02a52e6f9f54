//! The daemons' config text -> parsed strictly -> resolved against a folder
//! -> validated, as `plexus-coordinator --config` (and, built with
//! `--features node`, `plexus-node --config`) do at start-up. The folder's
//! sibling `pki/` holds a real throwaway CA, certificates and signing key
//! under the names deploy/*.toml use, so valid seeds get through every check.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use plexus_coordinator::config::CoordinatorConfig;
use plexus_tls::{CaDir, DevCa, Role};

/// `<temp>/deploy`, whose `../pki` is laid out as `plexus pki init` does.
fn base() -> &'static PathBuf {
    static BASE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &BASE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let pki = dir.path().join("pki");
            let deploy = dir.path().join("deploy");
            std::fs::create_dir_all(&pki).expect("pki folder");
            std::fs::create_dir_all(deploy.join("state")).expect("deploy folder");
            let ca = CaDir::create(
                &pki,
                DevCa::generate("Plexus fuzz CA").expect("a CA"),
                plexus_tls::CRL_VALIDITY_DAYS,
            )
            .expect("the CA folder");
            plexus_tls::SigningKey::generate_into(&pki, "coordinator").expect("signing key");
            ca.issue(
                Role::Coordinator,
                "coordinator",
                &["localhost".to_string()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            )
            .expect("coordinator certificate");
            for node in ["hospital-a", "hospital-b", "hospital-c"] {
                ca.issue(Role::Node, node, &[], &[])
                    .expect("node certificate");
            }
            (dir, deploy)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mut c) = toml::from_str::<CoordinatorConfig>(text) {
        c.resolve(base());
        let _ = c.validate();
    }
    #[cfg(feature = "node")]
    if let Ok(mut n) = toml::from_str::<plexus_node::config::NodeConfig>(text) {
        n.resolve(base());
        if n.validate().is_ok() {
            let _ = n.policy.validate_variables(plexus_fuzz::dictionary());
        }
    }
});
