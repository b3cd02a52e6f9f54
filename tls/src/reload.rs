//! Rotation without restart: the server's certificate, key, CA bundle and
//! revocation list are re-read when they change, and new connections get
//! the new config. Connections already open keep theirs.
//!
//! The files are polled (a `stat` of each, see [`DEFAULT_RELOAD_INTERVAL`])
//! rather than watched with inotify: it works the same on every platform,
//! on network file systems and with Kubernetes' symlink-swapped secrets,
//! and costs microseconds per poll. A change is applied once the files
//! have stayed unchanged for one more interval, so a certificate copied
//! before its key is not tried alone; files that do not load are reported
//! once and the previous config stays in use.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use tokio::sync::watch;

use crate::config::{LoadedServer, TlsFiles};
use crate::crl::utc;
use crate::error::Result;

/// How often the coordinator looks at its TLS files by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A revocation list this close to expiry is warned about.
const EXPIRY_WARNING_SECS: i64 = 86_400;

/// The server config new connections get, replaced when the files change.
/// Cheap to clone; every clone sees the same current config.
#[derive(Clone, Debug)]
pub struct ServerTls {
    rx: watch::Receiver<Arc<LoadedServer>>,
}

impl From<Arc<ServerConfig>> for ServerTls {
    /// A config that never changes (tests, tools); its serial is unknown.
    fn from(config: Arc<ServerConfig>) -> Self {
        ServerTls::fixed(LoadedServer {
            config,
            crl: None,
            cert_serial: String::new(),
        })
    }
}

impl ServerTls {
    /// A config that never changes.
    pub fn fixed(loaded: LoadedServer) -> ServerTls {
        let (tx, rx) = watch::channel(Arc::new(loaded));
        // Dropping the sender leaves the value readable; `changed` then never fires.
        drop(tx);
        ServerTls { rx }
    }

    /// Loads `files` (an error if they are unusable now) and starts a task
    /// that polls them every `interval` and swaps in the new config when
    /// they change. The task ends when the last clone is dropped. Must be
    /// called inside a tokio runtime.
    pub fn watch(files: TlsFiles, interval: Duration) -> Result<ServerTls> {
        let seen = Fingerprint::of(&files);
        let loaded = LoadedServer::load(&files)?;
        log_loaded(&files, &loaded, "tls files loaded");
        let (tx, rx) = watch::channel(Arc::new(loaded));
        tokio::spawn(poll(files, tx, interval, seen));
        Ok(ServerTls { rx })
    }

    /// What new connections are accepted with now.
    pub fn current(&self) -> Arc<LoadedServer> {
        self.rx.borrow().clone()
    }

    /// The rustls config new connections are accepted with now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.rx.borrow().config.clone()
    }

    /// Waits until a new config replaces the one this clone saw last, and
    /// returns it. Never returns for a fixed config.
    pub async fn changed(&mut self) -> Arc<LoadedServer> {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.rx.borrow_and_update().clone()
    }
}

/// What a poll compares: each file's [`FileStamp`], or why it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint(Vec<Result<FileStamp, String>>);

/// Size, modification time and (on unix) inode and change time of a file:
/// an in-place rewrite changes the times, a rename into place the inode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    changed_ns: i64,
}

impl Fingerprint {
    fn of(files: &TlsFiles) -> Fingerprint {
        let paths = [
            Some(&files.ca),
            Some(&files.cert),
            Some(&files.key),
            files.crl.as_ref(),
        ];
        Fingerprint(paths.into_iter().flatten().map(|p| stat(p)).collect())
    }
}

fn stat(path: &Path) -> Result<FileStamp, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.kind().to_string())?;
    #[cfg(unix)]
    let (inode, changed_ns) = {
        use std::os::unix::fs::MetadataExt;
        (
            meta.ino(),
            meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec(),
        )
    };
    #[cfg(not(unix))]
    let (inode, changed_ns) = (0, 0);
    Ok(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
        changed_ns,
    })
}

fn log_loaded(files: &TlsFiles, loaded: &LoadedServer, message: &'static str) {
    match &loaded.crl {
        Some(crl) => tracing::info!(
            cert = %files.cert.display(),
            cert_serial = %loaded.cert_serial,
            crl = %crl.path().display(),
            crl_number = %crl.numbers(),
            revoked = crl.revoked_count(),
            crl_next_update = %utc(crl.next_update_unix()),
            "{message}"
        ),
        None => tracing::info!(
            cert = %files.cert.display(),
            cert_serial = %loaded.cert_serial,
            crl = "none",
            "{message}"
        ),
    }
}

/// Which expiry message was logged for the list in use, so each is logged once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Fine,
    Warned,
    Expired,
}

async fn poll(
    files: TlsFiles,
    tx: watch::Sender<Arc<LoadedServer>>,
    interval: Duration,
    mut applied: Fingerprint,
) {
    let files = Arc::new(files);
    let mut pending: Option<Fingerprint> = None;
    let mut failed: Option<Fingerprint> = None;
    let mut expiry = Expiry::Fine;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = tx.closed() => return,
        }
        let f = files.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || Fingerprint::of(&f)).await else {
            continue;
        };
        if now == applied {
            pending = None;
            expiry = check_expiry(&tx.borrow(), expiry);
            continue;
        }
        // Act only on files that stayed the same for a whole interval.
        if pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue;
        }
        if failed.as_ref() == Some(&now) {
            continue;
        }
        let f = files.clone();
        let Ok(loaded) = tokio::task::spawn_blocking(move || LoadedServer::load(&f)).await else {
            continue;
        };
        match loaded {
            Ok(loaded) => {
                log_loaded(
                    &files,
                    &loaded,
                    "tls files changed; new connections use the new certificate and revocation list",
                );
                tx.send_replace(Arc::new(loaded));
                applied = now;
                pending = None;
                failed = None;
                expiry = Expiry::Fine;
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    "tls files changed but cannot be used; new connections keep the previous certificate and revocation list until the files are fixed"
                );
                failed = Some(now);
            }
        }
    }
}

/// Logs once when the list in use is about to expire, and once when it has:
/// from then on rustls refuses every handshake (an expired list is an error).
fn check_expiry(loaded: &LoadedServer, logged: Expiry) -> Expiry {
    let Some(crl) = &loaded.crl else {
        return logged;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let left = crl.next_update_unix() - now;
    if left <= 0 && logged != Expiry::Expired {
        tracing::error!(
            crl = %crl.path().display(),
            expired_at = %utc(crl.next_update_unix()),
            "the certificate revocation list has expired: every new connection is refused until a fresh one is installed; run `plexus pki crl` where the ca is kept and copy the new crl.pem here"
        );
        return Expiry::Expired;
    }
    if left > 0 && left < EXPIRY_WARNING_SECS && logged == Expiry::Fine {
        tracing::warn!(
            crl = %crl.path().display(),
            expires_at = %utc(crl.next_update_unix()),
            "the certificate revocation list expires within a day; run `plexus pki crl` where the ca is kept and copy the new crl.pem here"
        );
        return Expiry::Warned;
    }
    logged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CaDir, DevCa, Role, TlsFiles};

    fn setup(dir: &Path) -> (CaDir, TlsFiles) {
        let ca = CaDir::create(dir, DevCa::generate("t").unwrap(), 7).unwrap();
        ca.issue(Role::Coordinator, "coordinator", &["localhost".into()], &[])
            .unwrap();
        let files = TlsFiles::in_dir(dir, "coordinator");
        assert!(files.crl.is_some());
        (ca, files)
    }

    #[tokio::test]
    async fn a_rotated_certificate_replaces_the_config_and_broken_files_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, files) = setup(tmp.path());
        let interval = Duration::from_millis(50);
        let mut tls = ServerTls::watch(files.clone(), interval).unwrap();
        let first = tls.current();

        let (rotated, _, _) = ca
            .issue(Role::Coordinator, "coordinator", &["localhost".into()], &[])
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), tls.changed())
            .await
            .expect("the rotated certificate was not picked up");
        assert_eq!(next.cert_serial, rotated.serial);
        assert_ne!(next.cert_serial, first.cert_serial);

        // A broken key: the config in use stays.
        std::fs::write(&files.key, "not a key").unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), tls.changed()).await;
        assert!(got.is_err(), "a broken file replaced the config");
        assert_eq!(tls.current().cert_serial, rotated.serial);
    }

    #[tokio::test]
    async fn a_new_revocation_list_is_picked_up() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, files) = setup(tmp.path());
        let (node, node_pem, _) = ca.issue(Role::Node, "node-b", &[], &[]).unwrap();
        let mut tls = ServerTls::watch(files, Duration::from_millis(50)).unwrap();
        let node_der = crate::load_certs(&node_pem).unwrap().remove(0);
        assert!(!tls.current().crl.as_ref().unwrap().revokes(&node_der));
        ca.revoke(
            &crate::RevokeTarget::Serial(node.serial),
            crate::RevocationReason::KeyCompromise,
            7,
        )
        .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), tls.changed())
            .await
            .expect("the new crl was not picked up");
        assert!(next.crl.as_ref().unwrap().revokes(&node_der));
    }

    #[test]
    fn fingerprints_change_with_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, files) = setup(tmp.path());
        let before = Fingerprint::of(&files);
        assert_eq!(before, Fingerprint::of(&files));
        ca.write_crl(7).unwrap();
        assert_ne!(before, Fingerprint::of(&files));
    }
}
