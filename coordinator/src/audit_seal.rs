//! What the coordinator keeps of its audit log outside the database, so
//! that a database deleted, replaced by an older copy or edited while the
//! coordinator was stopped is noticed at start-up and the first entry that
//! changed can be named: beside a SQLite database `coordinator.db`,
//!
//! - `coordinator.db.checkpoint.json`: the last signed checkpoint;
//! - `coordinator.db.audit-leaves`: the leaf (SHA-256 of the canonical
//!   bytes, 32 bytes) of every entry a checkpoint covered, appended when
//!   a checkpoint is signed.
//!
//! Neither is trusted on its own: the checkpoint must carry the
//! coordinator's signature and the leaves must make its root. A
//! PostgreSQL database has no seal (its coordinators share one database
//! and each has its own disk); its checkpoints table is the reference.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use plexus_core::merkle::{Checkpoint, Leaf, MerkleLog};
use plexus_core::Error;

use crate::error::Result;

pub struct Seal {
    checkpoint: PathBuf,
    leaves: PathBuf,
    /// Leaves written so far (`None` until read).
    written: Mutex<Option<u64>>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::unavailable(format!(
        "cannot {what} {}: {e} (check the database folder and its free space)",
        path.display()
    ))
}

impl Seal {
    /// The seal beside a SQLite database file; none for PostgreSQL or an
    /// in-memory database.
    pub fn for_database(url: &str) -> Option<Seal> {
        let path = url.strip_prefix("sqlite://")?;
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path.contains(":memory:") {
            return None;
        }
        Some(Seal::at(Path::new(path)))
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
        let have = match *written {
            Some(n) => n,
            None => {
                let len = f
                    .metadata()
                    .map_err(|e| io_error("read", &self.leaves, e))?
                    .len();
                len / 32
            }
        };
        let size = (checkpoint.head.size as usize).min(leaves.len());
        let have = (have as usize).min(size);
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
