//! What a node keeps between runs in `data.cache_dir`, so that a restart
//! on unchanged files is quick: the consent join and the fact that the
//! data file passed the start-up check of its values.
//!
//! Joining a million consent records to the rows of the data file is most
//! of a node's start-up (reading the id column, reading and checking every
//! consent record, finding each record's rows), and the value check reads
//! every mapped column once. A node restarted on the same data, consent and
//! opt-out files loads the join it saved and skips the check it passed.
//!
//! Either is used only for exactly the files it was made from: its key
//! names each file's path, size, modification and inode change times and
//! inode number (the change time moves whenever a file is written,
//! replaced or restored, whatever its modification time says), the id
//! column and its type (and for the check, the mapping and the
//! dictionary). Any difference, a damaged or truncated file (a CRC-32
//! covers the join), or an older layout, and the node joins or checks
//! again from the files. Both are written only for files that have
//! settled, to a temporary name renamed into place, readable by the
//! node's user only. The join holds what the consent file holds (each
//! row's consent terms and dates, by row number), not patient ids. A
//! folder the node cannot write costs the next start its time, never a
//! job.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::selection::{ConsentRows, ConsentStamps};

/// The join file's first bytes; a new layout takes a new one.
const MAGIC: &[u8; 8] = b"PLXJOIN1";

/// A file of the cache folder named for one data file: `PREFIX-HASH.EXT`,
/// HASH from the data file's path, so nodes whose configs share a folder
/// (and so its default `cache`) keep theirs apart.
fn named(dir: &Path, prefix: &str, data_file: &Path, ext: &str) -> PathBuf {
    let hash = plexus_core::hash::sha256_hex(data_file.as_os_str().as_encoded_bytes());
    dir.join(format!("{prefix}-{}.{ext}", &hash[..16]))
}

/// Writes a file whole under a temporary name, readable by the node's user
/// only, and renames it into place.
fn replace(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = BufWriter::new(options.open(&tmp)?);
    write(&mut out)?;
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path)
}

/// Where the join of one data file is saved: `consent-join-HASH.bin`.
#[derive(Debug, Clone)]
pub(crate) struct SavedJoin {
    path: PathBuf,
}

/// A reader or writer that keeps the CRC-32 of the bytes through it.
struct Crc<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl SavedJoin {
    pub fn in_dir(dir: &Path, data_file: &Path) -> Self {
        SavedJoin {
            path: named(dir, "consent-join", data_file, "bin"),
        }
    }

    /// The join saved for `key`; `None` when there is none, it was made
    /// from other files, or it cannot be read (said in the log).
    pub fn load(&self, key: &[u8], stamps: ConsentStamps) -> Option<ConsentRows> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the saved consent join; joining from the files");
                return None;
            }
        };
        // Read as it is decoded (the file is as large as the join).
        let max_items = file
            .metadata()
            .map_or(0, |m| usize::try_from(m.len() / 4).unwrap_or(usize::MAX));
        let rows = read(BufReader::new(file), key, stamps, max_items);
        if rows.is_none() {
            tracing::info!(path = %self.path.display(), "the saved consent join is of other files or damaged; joining from the files");
        }
        rows
    }

    /// Saves `rows` under `key`, replacing what was saved; a failure is
    /// logged and costs only the next start's time.
    pub fn save(&self, key: &[u8], rows: &ConsentRows) {
        let written = replace(&self.path, |out| {
            let mut w = Crc {
                inner: out,
                crc: crc32fast::Hasher::new(),
            };
            w.write_all(MAGIC)?;
            w.write_all(&(key.len() as u64).to_le_bytes())?;
            w.write_all(key)?;
            rows.write_to(&mut w)?;
            let crc = w.crc.finalize();
            w.inner.write_all(&crc.to_le_bytes())
        });
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot save the consent join, so the next start joins from the files; set data.cache_dir to a folder the node may write (\"\" keeps none)");
        }
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the saved join in place, keeping its key (a test's way to
    /// see which join a node used).
    #[cfg(test)]
    pub fn edit(&self, stamps: ConsentStamps, f: impl FnOnce(ConsentRows) -> ConsentRows) {
        let bytes = std::fs::read(&self.path).unwrap();
        let rest = &bytes[MAGIC.len()..];
        let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        let key = rest[8..8 + len].to_vec();
        let rows = self.load(&key, stamps).unwrap();
        self.save(&key, &f(rows));
    }
}

/// The join in a saved file if it is whole and saved under `key`.
fn read(
    from: impl Read,
    key: &[u8],
    stamps: ConsentStamps,
    max_items: usize,
) -> Option<ConsentRows> {
    let mut r = Crc {
        inner: from,
        crc: crc32fast::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).ok()?;
    let mut len = [0u8; 8];
    r.read_exact(&mut len).ok()?;
    if magic != *MAGIC || u64::from_le_bytes(len) != key.len() as u64 {
        return None;
    }
    let mut saved_key = vec![0u8; key.len()];
    r.read_exact(&mut saved_key).ok()?;
    if saved_key != key {
        return None;
    }
    let rows = ConsentRows::read_from(&mut r, stamps, max_items)?;
    let crc = r.crc.finalize();
    let mut end = Vec::new();
    r.inner.read_to_end(&mut end).ok()?;
    (end == crc.to_le_bytes()).then_some(rows)
}

/// That the data file passed the start-up check of its values, for one
/// version of the file, the mapping and the dictionary:
/// `values-checked-HASH.txt`, holding the SHA-256 of what was checked.
#[derive(Debug, Clone)]
pub(crate) struct SavedCheck {
    path: PathBuf,
}

impl SavedCheck {
    pub fn in_dir(dir: &Path, data_file: &Path) -> Self {
        SavedCheck {
            path: named(dir, "values-checked", data_file, "txt"),
        }
    }

    /// Whether the check passed for `key`.
    pub fn passed(&self, key: &str) -> bool {
        std::fs::read_to_string(&self.path)
            .is_ok_and(|saved| saved == plexus_core::hash::sha256_hex(key.as_bytes()))
    }

    /// Remembers that the check passed for `key`.
    pub fn remember(&self, key: &str) {
        let hash = plexus_core::hash::sha256_hex(key.as_bytes());
        if let Err(e) = replace(&self.path, |out| out.write_all(hash.as_bytes())) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot note that the data file passed its check, so the next start checks it again; set data.cache_dir to a folder the node may write (\"\" keeps none)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::files::FileStamp;

    fn stamps() -> ConsentStamps {
        let s = FileStamp {
            len: 1,
            modified_ns: 2,
            changed_ns: 3,
            inode: 4,
        };
        (s, None)
    }

    #[test]
    fn a_damaged_or_foreign_file_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let saved = SavedJoin::in_dir(dir.path(), Path::new("/data/patients.parquet"));
        let join = ConsentRows::for_test(10, &[(0, "GRU"), (3, "HMB"), (9, "GRU")], &[3]);
        saved.save(b"key", &join);
        let file = std::fs::read(saved.path()).unwrap();
        let whole =
            |bytes: &[u8], key: &[u8]| read(bytes, key, stamps(), bytes.len() / 4).is_some();
        assert!(whole(&file, b"key"));
        assert_eq!(saved.load(b"key", stamps()).unwrap().rows(), 10);
        // Made from other files.
        assert!(!whole(&file, b"kez"));
        assert!(!whole(&file, b"ke"));
        // Any byte changed, or cut short anywhere, or something after it.
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x20;
            assert!(!whole(&bad, b"key"), "byte {i}");
            assert!(!whole(&file[..i], b"key"), "cut at {i}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(!whole(&longer, b"key"));
    }

    #[test]
    fn a_join_loads_as_it_was_saved_whatever_its_counts() {
        // Two rows, 100 records of one patient, more kinds of terms than
        // rows: all of it comes back.
        let terms = ["GRU", "HMB", "HMB;NPU", "DS:MONDO:0005160"];
        let records: Vec<(u32, &str)> = (0..100).map(|i| (i % 2, terms[i as usize % 4])).collect();
        let join = ConsentRows::for_test(2, &records, &[1, 1]);
        let dir = tempfile::tempdir().unwrap();
        let saved = SavedJoin::in_dir(dir.path(), Path::new("patients.csv"));
        saved.save(b"k", &join);
        let back = saved.load(b"k", stamps()).unwrap();
        let bytes = |j: &ConsentRows| {
            let mut out = Vec::new();
            j.write_to(&mut out).unwrap();
            out
        };
        assert_eq!(bytes(&back), bytes(&join));
    }

    #[test]
    fn a_check_passes_only_for_what_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let check = SavedCheck::in_dir(dir.path(), Path::new("/data/patients.parquet"));
        assert!(!check.passed("file v1"));
        check.remember("file v1");
        assert!(check.passed("file v1"));
        assert!(!check.passed("file v2"));
        // Another data file's check is kept apart.
        let other = SavedCheck::in_dir(dir.path(), Path::new("/data/other.parquet"));
        assert!(!other.passed("file v1"));
    }
}
