//! `plexus pki ...`: the development CA. Issues certificates, records them
//! in the folder's `index.json`, revokes them and keeps `crl.pem`, the
//! revocation list every coordinator and node loads as `tls.crl`, fresh.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context};

use plexus_tls::{CaDir, DevCa, RevocationReason, RevokeTarget, Role};

use crate::output;

/// `plexus pki init`: a CA, an empty revocation list and the coordinator's
/// job-signing key pair.
pub fn init(dir: &Path, force: bool, crl_days: u32) -> anyhow::Result<()> {
    if dir.join(plexus_tls::CA_CERT_FILE).exists() && !force {
        bail!(
            "{} already holds a CA; use --force to replace it (every certificate it issued stops working)",
            dir.display()
        );
    }
    check_days(crl_days)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = CaDir::create(dir, DevCa::generate("Plexus development CA")?, crl_days)?;
    let (key, key_path, pub_path) = plexus_tls::SigningKey::generate_into(dir, "coordinator")?;
    println!(
        "wrote {} and {} (keep the key secret)",
        dir.join(plexus_tls::CA_CERT_FILE).display(),
        dir.join(plexus_tls::CA_KEY_FILE).display()
    );
    println!(
        "wrote the empty certificate revocation list {} (tls.crl of every party; valid for {crl_days} days, refresh it with `plexus pki crl`)",
        ca.crl_path().display()
    );
    println!(
        "wrote the coordinator's job-signing key {} (secret; coordinator.signing_key) and its public half {} (every node pins it as coordinator.signing_key): {}",
        key_path.display(),
        pub_path.display(),
        key.public_hex()
    );
    Ok(())
}

/// `plexus pki issue`: a certificate recorded in the index.
pub fn issue(
    dir: &Path,
    role: Role,
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
) -> anyhow::Result<()> {
    let ca = CaDir::open(dir)?;
    let earlier: Vec<String> = ca
        .index()?
        .certificates
        .into_iter()
        .filter(|e| e.name() == name && e.revoked.is_none())
        .map(|e| e.serial)
        .collect();
    let (issued, cert, key) = ca.issue(role, name, dns, ips)?;
    println!(
        "issued {role} certificate for \"{name}\", serial {}: {} and {}",
        issued.serial,
        cert.display(),
        key.display()
    );
    for serial in earlier {
        println!(
            "the certificate issued to \"{name}\" before (serial {serial}) stays valid; once the new one is installed, retire it with `plexus pki revoke --dir {} --serial {serial} --reason superseded`",
            dir.display()
        );
    }
    Ok(())
}

/// `plexus pki revoke`: records the revocation and rewrites `crl.pem`.
pub fn revoke(
    dir: &Path,
    target: RevokeTarget,
    reason: RevocationReason,
    crl_days: u32,
) -> anyhow::Result<()> {
    check_days(crl_days)?;
    let ca = CaDir::open(dir)?;
    let (revoked, crl) = ca.revoke(&target, reason, crl_days)?;
    for e in &revoked {
        println!(
            "revoked {} (serial {}, reason {reason})",
            e.identity, e.serial
        );
    }
    println!(
        "wrote {} (list number {}, {} revoked, valid until {})",
        crl.path.display(),
        crl.number,
        crl.revoked,
        unix_text(crl.next_update_unix)
    );
    println!(
        "copy it to every coordinator and node whose tls.crl names it: the coordinator refuses the certificate within seconds and cuts a node connected with it; nodes use it from their next connection"
    );
    Ok(())
}

/// `plexus pki crl`: the same revocations, freshly signed.
pub fn crl(dir: &Path, crl_days: u32) -> anyhow::Result<()> {
    check_days(crl_days)?;
    let crl = CaDir::open(dir)?.write_crl(crl_days)?;
    println!(
        "wrote {} (list number {}, {} revoked, valid until {}); copy it to every coordinator and node whose tls.crl names it before the old one expires",
        crl.path.display(),
        crl.number,
        crl.revoked,
        unix_text(crl.next_update_unix)
    );
    Ok(())
}

/// `plexus pki list`: what the CA issued and revoked.
pub fn list(dir: &Path) -> anyhow::Result<()> {
    let index = CaDir::open(dir)?.index()?;
    let mut t = output::new_table(vec![
        "identity", "serial", "issued", "expires", "revoked", "reason",
    ]);
    for e in &index.certificates {
        let (revoked, reason) = match &e.revoked {
            Some(r) => (unix_text(r.revoked_unix), r.reason.to_string()),
            None => ("-".into(), "-".into()),
        };
        t.add_row(vec![
            e.identity.clone(),
            e.serial.clone(),
            unix_text(e.issued_unix),
            unix_text(e.not_after_unix),
            revoked,
            reason,
        ]);
    }
    println!("{t}");
    println!("last revocation list written: number {}", index.crl_number);
    Ok(())
}

fn check_days(days: u32) -> anyhow::Result<()> {
    if !(1..=366).contains(&days) {
        bail!(
            "--days {days} is out of range: a revocation list is valid for 1 to 366 days ({} is the default)",
            plexus_tls::CRL_VALIDITY_DAYS
        );
    }
    Ok(())
}

fn unix_text(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}
