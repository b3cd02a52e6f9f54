//! What the coordinator keeps of its audit log outside the database, so
//! that a database deleted, emptied, replaced by an older copy or edited
//! while the coordinator was stopped is noticed at start-up and the first
//! entry that changed can be named:
//!
//! - the last signed checkpoint, written whole;
//! - the leaf (SHA-256 of the canonical bytes, 32 bytes) of every entry a
//!   checkpoint covered, appended when a checkpoint is signed.
//!
//! Beside a SQLite database `coordinator.db` they are
//! `coordinator.db.checkpoint.json` and `coordinator.db.audit-leaves` (the
//! names of existing deployments). In `coordinator.audit_seal_dir` (set, or
//! by default the config file's folder on PostgreSQL) they are named for
//! the instance, `<instance>.audit-checkpoint.json` and
//! `<instance>.audit-leaves`: coordinators sharing a PostgreSQL database
//! each keep their own seal, on their own disk. A standby's seal is older
//! than the database (the active one appended since); the stored log must
//! still extend it, and the leaves it lacks are written at its first
//! checkpoint after taking over.
//!
//! Neither file is trusted on its own: the checkpoint must carry the
//! coordinator's signature and the leaves must make its root.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plexus_core::merkle::{Checkpoint, Leaf, MerkleLog};
use plexus_core::Error;
use tracing::warn;

use crate::config::CoordinatorConfig;
use crate::error::Result;

pub struct Seal {
    checkpoint: PathBuf,
    leaves: PathBuf,
    /// Leaves written so far (`None` until read).
    written: Mutex<Option<u64>>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::unavailable(format!(
        "cannot {what} {}: {e} (check that the folder of the audit seal exists, is writable by the coordinator and has free space; coordinator.audit_seal_dir names it)",
        path.display()
    ))
}

/// A SQLite database that lives in memory (nothing outside it to seal).
pub fn is_in_memory(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or(url.strip_prefix("sqlite:"))
    else {
        return false;
    };
    let path = rest.split('?').next().unwrap_or(rest);
    path.is_empty() || path.contains(":memory:") || rest.contains("mode=memory")
}

impl Seal {
    /// This coordinator's seal: in `coordinator.audit_seal_dir` when set,
    /// else beside a SQLite database file. None for an in-memory database,
    /// and for PostgreSQL without the field (a config built in code; a
    /// loaded config has it), with a warning that the check is off.
    pub fn for_config(config: &CoordinatorConfig) -> Option<Seal> {
        let c = &config.coordinator;
        if is_in_memory(&c.database_url) {
            return None;
        }
        if let Some(dir) = &c.audit_seal_dir {
            return Some(Seal::named(dir, config.instance()));
        }
        if let Some(rest) = c
            .database_url
            .strip_prefix("sqlite://")
            .or(c.database_url.strip_prefix("sqlite:"))
        {
            let path = rest.split('?').next().unwrap_or(rest);
            return Some(Seal::at(Path::new(path)));
        }
        warn!(
            database = %crate::store::database_name(&c.database_url),
            "no seal of the audit log: coordinator.audit_seal_dir is not set, so a database emptied, replaced or restored from an older backup is not noticed at start; set coordinator.audit_seal_dir to a folder on this coordinator's own disk"
        );
        None
    }

    /// The seal of instance `instance` in folder `dir`.
    pub fn named(dir: &Path, instance: &str) -> Seal {
        Seal {
            checkpoint: dir.join(format!("{instance}.audit-checkpoint.json")),
            leaves: dir.join(format!("{instance}.audit-leaves")),
            written: Mutex::new(None),
        }
    }

    /// The seal of the database file `db`.
    pub fn at(db: &Path) -> Seal {
        let name = db.file_name().unwrap_or_default().to_string_lossy();
        Seal {
            checkpoint: db.with_file_name(format!("{name}.checkpoint.json")),
            leaves: db.with_file_name(format!("{name}.audit-leaves")),
            written: Mutex::new(None),
        }
    }

    pub fn checkpoint_path(&self) -> &Path {
        &self.checkpoint
    }

    pub fn leaves_path(&self) -> &Path {
        &self.leaves
    }

    /// Fails unless the seal can be written (its folder exists and is
    /// writable): found at start, not at the first checkpoint, whose
    /// failure would fail the jobs that ask for it.
    pub fn check_writable(&self) -> Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .append(true)
            .open(&self.leaves)
            .map(drop)
            .map_err(|e| io_error("open", &self.leaves, e).into())
    }

    /// The sealed checkpoint, if there is one.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let text = match std::fs::read_to_string(&self.checkpoint) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &self.checkpoint, e).into()),
        };
        let c = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(format!(
                "{} is not a checkpoint: {e}; it is written whole, so it was edited: restore it from backup, or run `plexus-coordinator audit-repair` to record the break",
                self.checkpoint.display()
            ))
        })?;
        Ok(Some(c))
    }

    /// The sealed leaves that make `checkpoint`'s tree, when the file
    /// holds them; `None` when it holds fewer or others (then they cannot
    /// name an entry).
    pub fn leaves_of(&self, checkpoint: &Checkpoint) -> Result<Option<Vec<Leaf>>> {
        let mut bytes = Vec::new();
        match std::fs::File::open(&self.leaves) {
            Ok(mut f) => f
                .read_to_end(&mut bytes)
                .map_err(|e| io_error("read", &self.leaves, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &self.leaves, e).into()),
        };
        let size = checkpoint.head.size as usize;
        if bytes.len() / 32 < size {
            return Ok(None);
        }
        let leaves: Vec<Leaf> = bytes
            .chunks_exact(32)
            .take(size)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let ok = MerkleLog::from_leaves(leaves.iter().copied()).head() == checkpoint.head;
        Ok(ok.then_some(leaves))
    }

    /// Seals a newly signed checkpoint: the leaves it covers that are not
    /// written yet, then the checkpoint (written whole).
    pub fn record(&self, checkpoint: &Checkpoint, leaves: &[Leaf]) -> Result<()> {
        let mut written = self.written.lock().expect("seal lock");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.leaves)
            .map_err(|e| io_error("open", &self.leaves, e))?;
        let size = (checkpoint.head.size as usize).min(leaves.len());
        let have = match *written {
            Some(n) => (n as usize).min(size),
            None => {
                // First record of this run: keep what the file holds only
                // as far as it matches the tree (a standby's seal from an
                // earlier active period is a prefix; anything else is
                // written again rather than extended).
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)
                    .map_err(|e| io_error("read", &self.leaves, e))?;
                bytes
                    .chunks_exact(32)
                    .zip(&leaves[..size])
                    .take_while(|(a, b)| *a == &b[..])
                    .count()
            }
        };
        // A torn last leaf (a crash mid-write) is overwritten.
        f.set_len(have as u64 * 32)
            .and_then(|_| f.seek(SeekFrom::Start(have as u64 * 32)).map(|_| ()))
            .map_err(|e| io_error("write", &self.leaves, e))?;
        let new: Vec<u8> = leaves[have..size].iter().flatten().copied().collect();
        f.write_all(&new)
            .and_then(|_| f.sync_all())
            .map_err(|e| io_error("write", &self.leaves, e))?;
        *written = Some(size as u64);
        drop(written);
        self.write_checkpoint(checkpoint)
    }

    /// Replaces the seal with `checkpoint` and exactly `leaves` (after a
    /// repair).
    pub fn replace(&self, checkpoint: &Checkpoint, leaves: &[Leaf]) -> Result<()> {
        let tmp = self.leaves.with_extension("audit-leaves.tmp");
        let bytes: Vec<u8> = leaves.iter().flatten().copied().collect();
        write_whole(&tmp, &self.leaves, &bytes)?;
        *self.written.lock().expect("seal lock") = Some(leaves.len() as u64);
        self.write_checkpoint(checkpoint)
    }

    fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()> {
        let tmp = self.checkpoint.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(checkpoint).expect("serialises");
        write_whole(&tmp, &self.checkpoint, &text)
    }
}

/// tmp, fsync, rename, fsync of the folder: the old file or the new one.
fn write_whole(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(tmp).map_err(|e| io_error("write", tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_error("write", tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| io_error("replace", path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync the folder of", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config as `CoordinatorConfig::load` reads it from `base`.
    fn loaded(base: &Path, coordinator: &str) -> CoordinatorConfig {
        let text = format!(
            "[coordinator]\nsigning_key = \"k\"\n{coordinator}\n[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n"
        );
        let mut c: CoordinatorConfig = toml::from_str(&text).unwrap();
        c.resolve(base);
        c
    }

    #[test]
    fn a_sqlite_seal_keeps_its_names_beside_the_database() {
        let c = loaded(Path::new("/srv"), "database_url = \"sqlite://state/c.db\"");
        assert_eq!(c.coordinator.audit_seal_dir, None);
        let s = Seal::for_config(&c).unwrap();
        assert_eq!(
            s.checkpoint_path(),
            Path::new("/srv/state/c.db.checkpoint.json")
        );
        assert_eq!(s.leaves_path(), Path::new("/srv/state/c.db.audit-leaves"));
        let memory = loaded(Path::new("/srv"), "database_url = \"sqlite::memory:\"");
        assert!(Seal::for_config(&memory).is_none());
    }

    #[test]
    fn a_postgres_seal_is_in_the_config_folder_named_for_the_instance() {
        let pg = "database_url = \"postgres://plexus:secret@db:5432/plexus\"";
        let c = loaded(
            Path::new("/etc/plexus"),
            &format!("{pg}\ninstance = \"coordinator-b\""),
        );
        assert_eq!(
            c.coordinator.audit_seal_dir.as_deref(),
            Some(Path::new("/etc/plexus"))
        );
        let s = Seal::for_config(&c).unwrap();
        assert_eq!(
            s.checkpoint_path(),
            Path::new("/etc/plexus/coordinator-b.audit-checkpoint.json")
        );
        assert_eq!(
            s.leaves_path(),
            Path::new("/etc/plexus/coordinator-b.audit-leaves")
        );
        // Without `instance`, the id; a relative folder from the config's.
        let c = loaded(
            Path::new("/etc/plexus"),
            &format!("{pg}\nid = \"hub\"\naudit_seal_dir = \"seal\""),
        );
        let s = Seal::for_config(&c).unwrap();
        assert_eq!(
            s.checkpoint_path(),
            Path::new("/etc/plexus/seal/hub.audit-checkpoint.json")
        );
        // Built in code without the field: no seal (and a warning).
        let mut c = c;
        c.coordinator.audit_seal_dir = None;
        assert!(Seal::for_config(&c).is_none());
    }

    fn leaf(i: u8) -> Leaf {
        plexus_core::merkle::leaf_of(&[i])
    }

    fn checkpoint_of(leaves: &[Leaf]) -> Checkpoint {
        let head = MerkleLog::from_leaves(leaves.iter().copied()).head();
        Checkpoint::sign_with(|_| vec![0; 64], "test", head, 0)
    }

    /// A standby's seal from an earlier active period is a prefix of the
    /// tree: its first checkpoint after taking over writes the leaves it
    /// lacks. A file that is not a prefix is written again from where it
    /// stops matching, so the sealed leaves make the checkpoint's root.
    #[test]
    fn the_first_record_writes_the_leaves_the_seal_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let tree: Vec<Leaf> = (0..5).map(leaf).collect();
        let s = Seal::named(dir.path(), "a");
        s.record(&checkpoint_of(&tree[..2]), &tree[..2]).unwrap();
        drop(s);
        let s = Seal::named(dir.path(), "a");
        let c = checkpoint_of(&tree);
        s.record(&c, &tree).unwrap();
        assert_eq!(s.leaves_of(&c).unwrap().unwrap(), tree);
        assert_eq!(s.checkpoint().unwrap().unwrap(), c);

        // Leaves that went astray from the second on.
        let bytes: Vec<u8> = [tree[0], leaf(9), leaf(9)]
            .iter()
            .flatten()
            .copied()
            .collect();
        std::fs::write(s.leaves_path(), bytes).unwrap();
        let s = Seal::named(dir.path(), "a");
        s.record(&c, &tree).unwrap();
        assert_eq!(s.leaves_of(&c).unwrap().unwrap(), tree);
        assert_eq!(std::fs::metadata(s.leaves_path()).unwrap().len(), 5 * 32);
    }
}
