//! The line format the node's two records share (the privacy ledger and
//! the job log), and the one way they are written.
//!
//! Each record is one JSON object on one line, readable by any JSON tool,
//! ending with two fields this module adds: `prev`, the hash of the record
//! before it, and `hash`, the SHA-256 (hex) of the line's bytes up to and
//! including `prev` (the line as written with `,"hash":"…"` left out). So a
//! record checks itself (a torn or edited line does not hash to its
//! `hash`), and each record names the one before it (a line removed,
//! inserted or moved in the middle breaks the chain at the next line). A cut
//! at the end, or a file rewritten with a fresh chain, is caught by the
//! signed checkpoints each record keeps beside it.
//!
//! Files written before records were chained hold "legacy" lines: JSON
//! objects without `prev` and `hash`. They are read as a prefix only (no
//! legacy line after the first chained one), and folded into the chain, so
//! the first chained record's `prev` covers them: an edit to a legacy line
//! breaks the chain at the first chained record.
//!
//! Writing: a record is written in one `write` and synced before the caller
//! may act on it. A write that fails (disk full, I/O error) is cut back off
//! the file before anything else is appended, so no record ever follows a
//! fragment; while the cut itself fails, every append first retries it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plexus_core::hash::sha256_hex;

use crate::disk::GroupSync;

/// The `prev` of the first record of a file.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"` + 64 hex + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;
/// `"prev":"` + 64 hex + `"}`.
const PREV_SUFFIX_LEN: usize = 8 + 64 + 2;

/// Seals a serialised JSON object as the record following `prev`: the
/// line to write (without its newline) and the record's hash.
pub fn seal(object: &[u8], prev: &str) -> (Vec<u8>, String) {
    debug_assert!(object.first() == Some(&b'{') && object.last() == Some(&b'}'));
    let mut line = object[..object.len() - 1].to_vec();
    if object.len() > 2 {
        line.push(b',');
    }
    line.extend_from_slice(format!("\"prev\":\"{prev}\"}}").as_bytes());
    let hash = sha256_hex(&line);
    line.pop();
    line.extend_from_slice(format!(",\"hash\":\"{hash}\"}}").as_bytes());
    (line, hash)
}

/// What one line is.
#[derive(Debug, PartialEq)]
enum Kind {
    /// A sealed record, with its hash.
    Chained(String),
    /// A record from before the chain.
    Legacy,
}

fn is_hex64(b: &[u8]) -> bool {
    b.len() == 64
        && b.iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Checks one line against the record before it (`prev`), saying what is
/// wrong in words for an operator.
fn check(line: &[u8], prev: &str, legacy_allowed: bool) -> Result<Kind, String> {
    let n = line.len();
    let sealed = n > HASH_SUFFIX_LEN
        && line.ends_with(b"\"}")
        && line[n - HASH_SUFFIX_LEN..].starts_with(b",\"hash\":\"")
        && is_hex64(&line[n - 66..n - 2]);
    if !sealed {
        if line.windows(7).any(|w| w == b"\"hash\":") {
            return Err("its \"hash\" field is damaged or not last on the line".into());
        }
        if !legacy_allowed {
            return Err(
                "it carries no \"hash\" (an unchained line is only read before the first chained record)"
                    .into(),
            );
        }
        return match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => Ok(Kind::Legacy),
            _ => Err("it is not a JSON object".into()),
        };
    }
    let hash = std::str::from_utf8(&line[n - 66..n - 2]).expect("hex is utf-8");
    let mut body = line[..n - HASH_SUFFIX_LEN].to_vec();
    body.push(b'}');
    if sha256_hex(&body) != hash {
        return Err(
            "its bytes do not hash to its \"hash\" (the line was edited or damaged)".into(),
        );
    }
    let m = body.len();
    let linked = m > PREV_SUFFIX_LEN
        && body[m - PREV_SUFFIX_LEN..].starts_with(b"\"prev\":\"")
        && is_hex64(&body[m - 66..m - 2]);
    if !linked {
        return Err("it carries no \"prev\" before its \"hash\"".into());
    }
    if &body[m - 66..m - 2] != prev.as_bytes() {
        return Err(
            "its \"prev\" is not the hash of the record before it (a line before it was removed, added, moved or edited)"
                .into(),
        );
    }
    Ok(Kind::Chained(hash.to_string()))
}

/// The hash a legacy line takes in the chain.
fn fold(prev: &str, line: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(66 + line.len());
    bytes.extend_from_slice(prev.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(line);
    sha256_hex(&bytes)
}

/// One good record as read.
#[derive(Debug)]
pub struct Read<T> {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line's bytes, without its newline.
    pub bytes: Vec<u8>,
    pub value: T,
}

/// A last line cut short by a crash while it was written.
#[derive(Debug, Clone)]
pub struct Torn {
    pub line: usize,
    /// Where it starts: the file's good length.
    pub at: u64,
    pub reason: String,
}

/// A whole file read and checked.
#[derive(Debug)]
pub struct Scan<T> {
    pub path: PathBuf,
    pub records: Vec<Read<T>>,
    /// The chain's hash after each record: `heads[i]` after `records[i]`.
    pub heads: Vec<String>,
    /// Records read from before the chain (a prefix of `records`).
    pub legacy: usize,
    /// The length of the file's good records (where the next one goes).
    pub good_len: u64,
    pub torn: Option<Torn>,
    /// The last record is whole but its newline was not written.
    pub unterminated: bool,
}

impl<T> Scan<T> {
    /// The hash the next record names as `prev`.
    pub fn head(&self) -> &str {
        self.heads.last().map(String::as_str).unwrap_or(GENESIS)
    }
}

/// Reads and checks every line of `path` (a missing file is empty). A bad
/// line stops the read with a message naming the file and line; a bad last
/// line that lacks its newline is a torn write, returned in
/// [`Scan::torn`] for the caller to decide on. `what` names the file for
/// people ("privacy ledger"), `parse` turns a line into a record.
pub fn scan<T>(
    path: &Path,
    what: &str,
    mut parse: impl FnMut(&[u8]) -> Result<T, String>,
) -> std::io::Result<Result<Scan<T>, String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut scan = Scan {
        path: path.to_path_buf(),
        records: Vec::new(),
        heads: Vec::new(),
        legacy: 0,
        good_len: 0,
        torn: None,
        unterminated: false,
    };
    let mut start = 0usize;
    let mut number = 0usize;
    while start < bytes.len() {
        number += 1;
        let (end, terminated) = match bytes[start..].iter().position(|b| *b == b'\n') {
            Some(i) => (start + i, true),
            None => (bytes.len(), false),
        };
        let line = &bytes[start..end];
        let next = if terminated { end + 1 } else { end };
        if line.iter().all(u8::is_ascii_whitespace) && terminated {
            // A blank line holds no record (older files may have one).
            start = next;
            scan.good_len = next as u64;
            continue;
        }
        let prev = scan.head().to_string();
        let checked = check(line, &prev, scan.legacy == scan.records.len())
            .and_then(|kind| parse(line).map(|value| (kind, value)));
        match checked {
            Ok((kind, value)) => {
                let head = match kind {
                    Kind::Chained(hash) => hash,
                    Kind::Legacy => {
                        scan.legacy += 1;
                        fold(&prev, line)
                    }
                };
                scan.heads.push(head);
                scan.records.push(Read {
                    line: number,
                    bytes: line.to_vec(),
                    value,
                });
                scan.good_len = next as u64;
                scan.unterminated = !terminated;
            }
            Err(reason) if !terminated => {
                scan.torn = Some(Torn {
                    line: number,
                    at: start as u64,
                    reason,
                });
            }
            Err(reason) => {
                return Ok(Err(format!(
                    "line {number} of the {what} {} is not a valid record: {reason}",
                    path.display()
                )))
            }
        }
        start = next;
    }
    Ok(Ok(scan))
}

/// Appends sealed records to one file, never after a fragment, with group
/// commit ([`GroupSync`]): a record is written under its owner's lock and
/// made durable after it, so records written meanwhile share one sync.
#[derive(Debug)]
pub struct Appender {
    path: PathBuf,
    file: File,
    /// The file's length after its last good record.
    len: u64,
    head: String,
    /// A failed write may have left bytes after `len`.
    dirty: bool,
    sync: Arc<GroupSync>,
    /// Test hook: the next this many appends write half their line and
    /// fail as a full disk would.
    fail_next: u32,
}

/// A record written into the file and not yet known to be durable: what
/// [`Appender::write`] returns. [`Written::durable`] waits for its sync;
/// until it returns nothing may act on the record (release, reply).
#[derive(Debug)]
#[must_use = "a written record is durable only once `durable` returns"]
pub struct Written {
    line: Vec<u8>,
    ticket: Ticket,
}

impl Written {
    /// Waits until the record is on disk; returns its line (without its
    /// newline).
    pub fn durable(self) -> std::io::Result<Vec<u8>> {
        self.ticket.wait()?;
        Ok(self.line)
    }

    /// [`Written::durable`] for async callers ([`GroupSync::wait_async`]).
    pub async fn durable_async(self) -> std::io::Result<Vec<u8>> {
        self.ticket.wait_async().await?;
        Ok(self.line)
    }

    /// The line written (without its newline).
    pub fn line(&self) -> &[u8] {
        &self.line
    }
}

/// Everything written to a file up to some point, to wait for.
#[derive(Debug)]
#[must_use = "nothing is durable until `wait` returns"]
pub struct Ticket {
    end: u64,
    sync: Arc<GroupSync>,
}

impl Ticket {
    /// A ticket for the first `end` bytes of the file `sync` syncs.
    pub(crate) fn new(sync: Arc<GroupSync>, end: u64) -> Ticket {
        Ticket { end, sync }
    }

    /// Returns once everything the ticket covers is on disk.
    pub fn wait(self) -> std::io::Result<()> {
        self.sync.wait(self.end)
    }

    /// [`Ticket::wait`] for async callers.
    pub async fn wait_async(self) -> std::io::Result<()> {
        self.sync.wait_async(self.end).await
    }
}

impl Appender {
    /// Opens `path` for appending after a [`scan`] of it, cutting off
    /// whatever follows its good records (a torn last line) and ending a
    /// whole last record that lost its newline.
    pub fn open<T>(scan: &Scan<T>) -> std::io::Result<Appender> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&scan.path)?;
        let mut len = scan.good_len;
        if file.metadata()?.len() != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        if scan.unterminated {
            (&file).write_all(b"\n")?;
            file.sync_data()?;
            len += 1;
        }
        let sync = Arc::new(GroupSync::new(&file, len)?);
        Ok(Appender {
            path: scan.path.clone(),
            file,
            len,
            head: scan.head().to_string(),
            dirty: false,
            sync,
            fail_next: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hash of the last record.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Seals `object` after the last record and writes it (to the page
    /// cache); [`Written::durable`] then waits for it to reach the disk.
    /// On an error the file is cut back to its last good record, or the
    /// cut is retried before the next write.
    pub fn write(&mut self, object: &[u8]) -> std::io::Result<Written> {
        if let Some((why, _)) = self.sync.failed() {
            return Err(std::io::Error::other(why));
        }
        self.repair()?;
        let (mut line, hash) = seal(object, &self.head);
        line.push(b'\n');
        let written = if self.fail_next > 0 {
            self.fail_next -= 1;
            let _ = self.file.write_all(&line[..line.len() / 2]);
            Err(std::io::Error::from_raw_os_error(28))
        } else {
            self.file.write_all(&line)
        };
        if let Err(e) = written {
            self.dirty = true;
            let _ = self.repair();
            return Err(e);
        }
        self.len += line.len() as u64;
        self.sync.wrote(self.len);
        self.head = hash;
        line.pop();
        Ok(Written {
            line,
            ticket: self.ticket(),
        })
    }

    /// A ticket for every record written so far: a record that others act
    /// on before their own write (a kept answer, a checkpoint) is durable
    /// once it is waited for.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            end: self.len,
            sync: self.sync.clone(),
        }
    }

    /// [`Appender::write`] and wait until it is durable, holding `self`:
    /// for start-up and tools, where nothing else writes.
    pub fn append(&mut self, object: &[u8]) -> std::io::Result<Vec<u8>> {
        self.write(object)?.durable()
    }

    /// Cuts a failed write's bytes off the file.
    pub fn repair(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.set_len(self.len)?;
            self.file.sync_all()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// After a failed sync: cuts the file back to what the last good sync
    /// made durable. The records after it, though written, are gone, so
    /// the owner must read its state again from the file (and open a new
    /// appender): returns true when that is needed.
    fn cut_to_durable(&mut self) -> std::io::Result<bool> {
        let Some((_, durable)) = self.sync.failed() else {
            return Ok(false);
        };
        self.file.set_len(durable)?;
        self.file.sync_all()?;
        Ok(true)
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` appends fail like a full
    /// disk, each after writing half its line.
    pub fn fail_next(&mut self, n: u32) {
        self.fail_next = n;
    }
}

/// A record file as the node holds it: its [`Appender`] (none when opened
/// read-only, by a tool beside a running node) and why the last write
/// failed, until one succeeds. The privacy ledger and the job log each hold
/// one, so a failed write is remembered, repaired and faked (the test hook)
/// the same way in both.
#[derive(Debug)]
pub struct Writer {
    file: Option<Appender>,
    trouble: Option<String>,
}

/// What [`Writer::recover`] did.
#[derive(Debug, PartialEq)]
pub enum Recovered {
    /// Nothing was wrong, or a failed write was cut off: the owner's state
    /// holds.
    InPlace,
    /// A failed sync: the file was cut back to its last durable record, so
    /// the owner reads its state again from the file.
    Reload,
}

impl Writer {
    /// `file` is `None` for a read-only opening.
    pub fn new(file: Option<Appender>) -> Writer {
        Writer {
            file,
            trouble: None,
        }
    }

    /// The hash of the last record written, `None` when read-only.
    pub fn head(&self) -> Option<&str> {
        self.file.as_ref().map(Appender::head)
    }

    /// A ticket for every record written so far ([`Appender::ticket`]),
    /// `None` when read-only.
    pub fn ticket(&self) -> Option<Ticket> {
        self.file.as_ref().map(Appender::ticket)
    }

    /// Writes `object` ([`Appender::write`]) and remembers how that went:
    /// a failure, in the words `problem` gives it, until a write succeeds.
    /// `None` when the file was opened read-only (nothing is written,
    /// nothing remembered). The caller waits for [`Written::durable`] after
    /// letting go of its lock; a failed sync is then this writer's trouble
    /// until [`Writer::recover`], without being told.
    pub fn write(
        &mut self,
        object: &[u8],
        problem: impl FnOnce(&std::io::Error) -> String,
    ) -> Option<std::io::Result<Written>> {
        let written = self.file.as_mut()?.write(object);
        self.trouble = written.as_ref().err().map(problem);
        Some(written)
    }

    /// Remembers a write that failed without reaching the file.
    pub fn failed(&mut self, problem: String) {
        self.trouble = Some(problem);
    }

    /// Why the last write failed, while none has succeeded since; a failed
    /// sync counts until [`Writer::recover`].
    pub fn trouble(&self) -> Option<String> {
        self.trouble.clone().or_else(|| {
            let (why, _) = self.file.as_ref()?.sync.failed()?;
            Some(format!("cannot write {}: {why}", self.path_display()))
        })
    }

    fn path_display(&self) -> String {
        self.file
            .as_ref()
            .map(|f| f.path.display().to_string())
            .unwrap_or_default()
    }

    /// After a failed write, once the disk takes writes again: cuts the
    /// failed write's leftovers off (if that did not happen at once) and
    /// forgets the failure. After a failed sync, cuts the file back to its
    /// last durable record and says the owner must read it again.
    pub fn recover(&mut self) -> std::io::Result<Recovered> {
        let Some(f) = self.file.as_mut() else {
            self.trouble = None;
            return Ok(Recovered::InPlace);
        };
        if f.cut_to_durable()? {
            return Ok(Recovered::Reload);
        }
        if self.trouble.is_none() {
            return Ok(Recovered::InPlace);
        }
        f.repair()?;
        self.trouble = None;
        Ok(Recovered::InPlace)
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` writes fail as on a full
    /// disk.
    pub fn fail_next(&mut self, n: u32) {
        if let Some(f) = self.file.as_mut() {
            f.fail_next(n);
        }
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` syncs fail (EIO).
    pub fn fail_next_syncs(&self, n: u32) {
        if let Some(f) = self.file.as_ref() {
            f.sync.fail_next_syncs(n);
        }
    }
}

/// Whether an I/O error means the disk is full (the node waits for space).
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28) | Some(122)) || e.kind() == std::io::ErrorKind::StorageFull
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8]) -> Result<serde_json::Value, String> {
        serde_json::from_slice(line).map_err(|e| e.to_string())
    }

    #[test]
    fn sealed_lines_are_json_chained_and_self_checking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let s = scan(&path, "test file", parse).unwrap().unwrap();
        let mut a = Appender::open(&s).unwrap();
        a.append(br#"{"n":1}"#).unwrap();
        let second = a.append(br#"{"n":2}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&second).unwrap();
        assert_eq!(v["n"], 2);
        assert_eq!(v["hash"].as_str().unwrap().len(), 64);
        let s = scan(&path, "test file", parse).unwrap().unwrap();
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.head(), a.head());
        assert_eq!(s.records[1].value["prev"].as_str().unwrap(), s.heads[0]);

        // A field edited in the first line: named by its line.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"n\":1", "\"n\":7", 1)).unwrap();
        let e = scan(&path, "test file", parse).unwrap().unwrap_err();
        assert!(
            e.contains("line 1 of the test file") && e.contains("edited"),
            "{e}"
        );

        // The first line removed: the second no longer follows anything.
        let second_line = text.lines().nth(1).unwrap();
        std::fs::write(&path, format!("{second_line}\n")).unwrap();
        let e = scan(&path, "test file", parse).unwrap().unwrap_err();
        assert!(e.contains("line 1") && e.contains("\"prev\""), "{e}");
    }

    #[test]
    fn a_failed_write_is_cut_off_and_never_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let s = scan(&path, "test file", parse).unwrap().unwrap();
        let mut a = Appender::open(&s).unwrap();
        a.append(br#"{"n":1}"#).unwrap();
        let good = std::fs::metadata(&path).unwrap().len();
        a.fail_next(1);
        let e = a.append(br#"{"n":2}"#).unwrap_err();
        assert!(is_full(&e), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        a.append(br#"{"n":3}"#).unwrap();
        let s = scan(&path, "test file", parse).unwrap().unwrap();
        let ns: Vec<i64> = s
            .records
            .iter()
            .map(|r| r.value["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, [1, 3]);
        assert!(s.torn.is_none());
    }

    #[test]
    fn a_torn_last_line_is_reported_and_legacy_lines_are_a_prefix_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"old\":1}\n{\"old\":2}\n").unwrap();
        let s = scan(&path, "test file", parse).unwrap().unwrap();
        assert_eq!((s.records.len(), s.legacy), (2, 2));
        let mut a = Appender::open(&s).unwrap();
        a.append(br#"{"n":1}"#).unwrap();
        drop(a);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"n\":2,\"pr").unwrap();
        drop(f);
        let s = scan(&path, "test file", parse).unwrap().unwrap();
        assert_eq!((s.records.len(), s.legacy), (3, 2));
        assert_eq!(s.torn.as_ref().unwrap().line, 4);
        let mut a = Appender::open(&s).unwrap();
        a.append(br#"{"n":3}"#).unwrap();
        let s = scan(&path, "test file", parse).unwrap().unwrap();
        assert_eq!(s.records.len(), 4);
        assert!(s.torn.is_none());

        // An edited legacy line breaks the chain at the first chained record.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"old\":2", "\"old\":3", 1)).unwrap();
        let e = scan(&path, "test file", parse).unwrap().unwrap_err();
        assert!(e.contains("line 3"), "{e}");

        // A crash that left the file longer than its data (zeros at the
        // end) is a torn last line too.
        let mut zeros = text.clone().into_bytes();
        zeros.extend_from_slice(&[0u8; 64]);
        std::fs::write(&path, &zeros).unwrap();
        let s = scan(&path, "test file", parse).unwrap().unwrap();
        assert_eq!((s.records.len(), s.torn.as_ref().unwrap().line), (4, 5));

        // An unchained line after a chained one is not read.
        std::fs::write(&path, format!("{text}{{\"old\":4}}\n")).unwrap();
        let e = scan(&path, "test file", parse).unwrap().unwrap_err();
        assert!(e.contains("line 5") && e.contains("unchained"), "{e}");
    }
}
