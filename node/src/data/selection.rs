//! Consent as a row selection over the columns in memory.
//!
//! Looking up every row's patient id in the set of admitted ids took half
//! of a node's CPU at a million patients, on the first job of each purpose
//! and day. Instead, when the consent or opt-out file changes, the node
//! joins their records to the rows of the data file once: each record that
//! names a row becomes (row, terms, valid from, withdrawn at), each opt-out
//! a row number. A job's consenting rows for its purpose and day are then
//! one pass over those small records, with the consent terms decided once
//! per distinct text, and no id is hashed or compared.
//!
//! The join is a merge when both files list patients in id order (a
//! hospital's exports usually do), tolerating a few rows and records out
//! of order, and a hash join otherwise, decided as it goes: past those few,
//! it switches to hashing for the rest.

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::io::{Read, Write};

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::buffer::MutableBuffer;
use datafusion::arrow::compute::cast as arrow_cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use plexus_core::{ConsentTerms, Error, Purpose, Result};

use super::compile::is_int;
use super::consent::ConsentSource;
use super::files::FileStamp;

/// One consent record joined to a row of the data file.
#[derive(Debug, Clone, Copy)]
struct RowConsent {
    row: u32,
    terms: u32,
    /// Days since 1970-01-01.
    from: i32,
    /// The day consent ends (exclusive); `i32::MAX` while it stands.
    until: i32,
}

/// The consent and opt-out records of one version of those files, joined
/// to the rows of one version of the data file.
pub(crate) struct ConsentRows {
    pub stamps: ConsentStamps,
    rows: usize,
    records: Vec<RowConsent>,
    terms: Vec<ConsentTerms>,
    /// The text each of `terms` was read from, for saving the join.
    texts: Vec<String>,
    opted_out: Vec<u32>,
}

/// The consent and opt-out files' stamps.
pub(crate) type ConsentStamps = (FileStamp, Option<FileStamp>);

fn day(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - 719_163
}

impl ConsentRows {
    /// Reads the consent and opt-out files of `consent` (as they are at
    /// `stamps`) and joins them to `ids`, the data file's id column.
    pub async fn build(
        consent: &ConsentSource,
        stamps: ConsentStamps,
        ids: &ArrayRef,
        id_type: &DataType,
    ) -> Result<Self> {
        let rows = ids.len();
        if u32::try_from(rows).is_err() {
            return Err(Error::data(
                "the data file has more rows than a node keeps in memory (4 billion); \
                 set data.memory_mib = 0 to read it from disk",
            ));
        }
        let cast = |t: DataType| {
            arrow_cast(ids, &t)
                .map_err(|e| Error::internal(format!("cannot read the id column: {e}")))
        };
        let mut joined = ConsentRows {
            stamps,
            rows,
            // Most patients have one record: no doubling of a million
            // records as they come.
            records: Vec::with_capacity(rows),
            terms: Vec::new(),
            texts: Vec::new(),
            opted_out: Vec::new(),
        };
        if is_int(id_type) {
            let ints = cast(DataType::Int64)?;
            let ints = ints.as_primitive::<Int64Type>();
            let key = |r: usize| ints.is_valid(r).then(|| ints.value(r));
            join(
                consent,
                Rows::new(key, rows),
                |find, id, emit| {
                    if let Ok(k) = id.parse::<i64>() {
                        find.find(&k, emit)
                    }
                },
                &mut joined,
            )
            .await?;
        } else {
            let texts = cast(DataType::Utf8View)?;
            let texts = texts.as_string_view();
            let key = |r: usize| texts.is_valid(r).then(|| texts.value(r));
            join(
                consent,
                Rows::new(key, rows),
                |find, id, emit| find.find(id, emit),
                &mut joined,
            )
            .await?;
        }
        joined.records.shrink_to_fit();
        Ok(joined)
    }

    /// A join of `rows` rows with `records` (row, terms) valid from
    /// 2019-01-01 on, for tests.
    #[cfg(test)]
    pub fn for_test(rows: usize, records: &[(u32, &str)], opted_out: &[u32]) -> Self {
        let stamp = FileStamp {
            len: 0,
            modified_ns: 0,
            changed_ns: 0,
            inode: 0,
        };
        let mut texts: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for &(row, t) in records {
            let i = texts.iter().position(|x| x == t).unwrap_or_else(|| {
                texts.push(t.to_string());
                texts.len() - 1
            });
            out.push(RowConsent {
                row,
                terms: i as u32,
                from: day(NaiveDate::from_ymd_opt(2019, 1, 1).expect("a date")),
                until: i32::MAX,
            });
        }
        ConsentRows {
            stamps: (stamp, None),
            rows,
            records: out,
            terms: texts
                .iter()
                .map(|t| ConsentTerms::parse(t).expect("terms"))
                .collect(),
            texts,
            opted_out: opted_out.to_vec(),
        }
    }

    /// The join without `row`'s consent records (tests tell joins apart
    /// by it).
    #[cfg(test)]
    pub fn without(mut self, row: u32) -> Self {
        self.records.retain(|r| r.row != row);
        self
    }

    /// Rows of the data file the join was made for.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes the join for [`super::saved`]: little-endian counts, the
    /// texts of the terms, the records, the opted-out rows.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&(self.rows as u64).to_le_bytes())?;
        w.write_all(&(self.texts.len() as u64).to_le_bytes())?;
        for t in &self.texts {
            w.write_all(&(t.len() as u64).to_le_bytes())?;
            w.write_all(t.as_bytes())?;
        }
        w.write_all(&(self.records.len() as u64).to_le_bytes())?;
        let mut chunk = Vec::with_capacity(16 * 4096);
        for part in self.records.chunks(4096) {
            chunk.clear();
            for r in part {
                chunk.extend_from_slice(&r.row.to_le_bytes());
                chunk.extend_from_slice(&r.terms.to_le_bytes());
                chunk.extend_from_slice(&r.from.to_le_bytes());
                chunk.extend_from_slice(&r.until.to_le_bytes());
            }
            w.write_all(&chunk)?;
        }
        w.write_all(&(self.opted_out.len() as u64).to_le_bytes())?;
        for row in &self.opted_out {
            w.write_all(&row.to_le_bytes())?;
        }
        Ok(())
    }

    /// A join as [`Self::write_to`] wrote it; `None` unless every part is
    /// there and consistent (rows and terms in range, terms that parse).
    /// Reads no further than the join; `max_items` bounds the room made for
    /// any count read (the file's bytes / 4 will do).
    pub fn read_from(r: &mut impl Read, stamps: ConsentStamps, max_items: usize) -> Option<Self> {
        fn u64_at(r: &mut impl Read) -> Option<u64> {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).ok()?;
            Some(u64::from_le_bytes(b))
        }
        let rows = usize::try_from(u64_at(r)?).ok()?;
        u32::try_from(rows).ok()?;
        // A damaged count must not allocate more than the file could hold
        // before the read fails at its end.
        let room = |n: usize| n.min(max_items);
        let n_texts = usize::try_from(u64_at(r)?).ok()?;
        let mut texts = Vec::with_capacity(room(n_texts));
        let mut terms = Vec::with_capacity(room(n_texts));
        for _ in 0..n_texts {
            let len = usize::try_from(u64_at(r)?).ok()?;
            if len > 1 << 20 {
                return None;
            }
            let mut b = vec![0u8; len];
            r.read_exact(&mut b).ok()?;
            let text = String::from_utf8(b).ok()?;
            terms.push(ConsentTerms::parse(&text).ok()?);
            texts.push(text);
        }
        let n = usize::try_from(u64_at(r)?).ok()?;
        let mut records = Vec::with_capacity(room(n));
        // In chunks of 4,096 records: a million reads of 16 bytes took
        // twice as long.
        let mut chunk = vec![0u8; 16 * 4096];
        let mut left = n;
        while left > 0 {
            let take = left.min(4096);
            let bytes = &mut chunk[..16 * take];
            r.read_exact(bytes).ok()?;
            for b in bytes.chunks_exact(16) {
                let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
                let (row, t) = (word(0), word(4));
                if row as usize >= rows || t as usize >= terms.len() {
                    return None;
                }
                records.push(RowConsent {
                    row,
                    terms: t,
                    from: word(8) as i32,
                    until: word(12) as i32,
                });
            }
            left -= take;
        }
        let n = usize::try_from(u64_at(r)?).ok()?;
        let mut opted_out = Vec::with_capacity(room(n));
        for _ in 0..n {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).ok()?;
            let row = u32::from_le_bytes(b);
            if row as usize >= rows {
                return None;
            }
            opted_out.push(row);
        }
        Some(ConsentRows {
            stamps,
            rows,
            records,
            terms,
            texts,
            opted_out,
        })
    }

    /// Rows of patients whose consent covers `purpose` on `today` and who
    /// have not opted out.
    pub fn select(&self, purpose: &Purpose, today: NaiveDate) -> BooleanArray {
        let covers: Vec<bool> = self.terms.iter().map(|t| t.covers(purpose)).collect();
        let today = day(today);
        let mut bits = MutableBuffer::new_null(self.rows);
        let slice = bits.as_slice_mut();
        for r in &self.records {
            if covers[r.terms as usize] && r.from <= today && today < r.until {
                slice[r.row as usize / 8] |= 1 << (r.row % 8);
            }
        }
        for &row in &self.opted_out {
            slice[row as usize / 8] &= !(1 << (row % 8));
        }
        let buffer = datafusion::arrow::buffer::BooleanBuffer::new(bits.into(), 0, self.rows);
        BooleanArray::new(buffer, None)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.records.capacity() * std::mem::size_of::<RowConsent>() + self.opted_out.capacity() * 4
    }
}

/// Joins the records of `consent`, then its opt-outs, to rows (into
/// `out`'s records and opted-out rows): `rows_of`
/// calls its last argument with each row of the id given as the files'
/// text (none for text that names no row), through `find`, which both
/// passes share (its sort check and hash table are made once).
async fn join<K: Ord + Hash + Copy, F: Fn(usize) -> Option<K>>(
    consent: &ConsentSource,
    mut find: Rows<K, F>,
    rows_of: impl Fn(&mut Rows<K, F>, &str, &mut dyn FnMut(u32)),
    out: &mut ConsentRows,
) -> Result<()> {
    let ConsentRows {
        records,
        terms,
        texts,
        opted_out,
        ..
    } = out;
    consent
        .each_record(|r| {
            if r.terms_index == terms.len() {
                terms.push(r.terms.clone());
                texts.push(r.terms_text.to_string());
            }
            let (from, until) = (day(r.valid_from), r.withdrawn_at.map_or(i32::MAX, day));
            let terms = r.terms_index as u32;
            rows_of(&mut find, r.id, &mut |row| {
                records.push(RowConsent {
                    row,
                    terms,
                    from,
                    until,
                })
            });
        })
        .await?;
    find.rewind();
    consent
        .each_opt_out(|id| rows_of(&mut find, id, &mut |row| opted_out.push(row)))
        .await
}

/// Finds the rows of an id: by merging while both the rows and the ids
/// asked come in order, by a hash table of row numbers once they do not
/// (4 bytes a row: keyed by the rows' own ids, never copied).
///
/// A file in id order but for a few rows (ids of different lengths sorted
/// as text, "P-999999" before "P-1000000"; rows appended after the sort; a
/// missing id) still merges: those rows are set aside in a small table of
/// their own, and an id asked out of order is found by a binary search.
/// Past [`strays_allowed`] of either, the hash table is built: a file with one
/// stray row in a million (the benchmark's) joined in 110 ms instead of
/// 354 ms hashing.
struct Rows<K, F> {
    key: F,
    n: usize,
    sorted: bool,
    /// The first row whose id is not below the last one asked, or the
    /// place a binary search found.
    cursor: usize,
    /// Rows out of order, when there are some and not too many.
    strays: Option<Strays<K>>,
    /// Ids asked out of order so far, each found by a binary search.
    searches: usize,
    /// First row of each id, and the next row with the same id.
    hash: Option<(HashTable<u32>, Vec<u32>)>,
    hasher: DefaultHashBuilder,
}

/// Rows out of order (an id below an earlier one, or none).
struct Strays<K> {
    /// A bit per row: set for a stray.
    bits: Vec<u64>,
    /// The stray rows of each id, in row order.
    of: HashMap<K, Vec<u32>>,
}

const NONE: u32 = u32::MAX;

/// Rows set aside, or ids asked out of order, before a merge gives way to
/// the hash table: one in 64 (and a few more for small files).
fn strays_allowed(n: usize) -> usize {
    n / 64 + 16
}

impl<K: Ord + Hash + Copy, F: Fn(usize) -> Option<K>> Rows<K, F> {
    fn new(key: F, n: usize) -> Self {
        let mut sorted = true;
        let mut top: Option<K> = None;
        let mut stray_rows: Vec<u32> = Vec::new();
        for r in 0..n {
            match key(r) {
                Some(k) if top.is_none_or(|t| t <= k) => top = Some(k),
                _ => {
                    if stray_rows.len() == strays_allowed(n) {
                        sorted = false;
                        break;
                    }
                    stray_rows.push(r as u32);
                }
            }
        }
        let strays = (sorted && !stray_rows.is_empty()).then(|| {
            let mut bits = vec![0u64; n.div_ceil(64)];
            let mut of: HashMap<K, Vec<u32>> = HashMap::new();
            for &r in &stray_rows {
                bits[r as usize / 64] |= 1 << (r % 64);
                if let Some(k) = key(r as usize) {
                    of.entry(k).or_default().push(r);
                }
            }
            Strays { bits, of }
        });
        Rows {
            key,
            n,
            sorted,
            cursor: 0,
            strays,
            searches: 0,
            hash: None,
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Merging starts again from the first row, for a second list of ids.
    fn rewind(&mut self) {
        self.cursor = 0;
    }

    fn stray(&self, r: usize) -> bool {
        self.strays
            .as_ref()
            .is_some_and(|s| s.bits[r / 64] & (1 << (r % 64)) != 0)
    }

    /// The first row at or after `r` that is in order (`n` if none).
    fn in_order_from(&self, mut r: usize) -> usize {
        while r < self.n && self.stray(r) {
            r += 1;
        }
        r
    }

    fn find<Q>(&mut self, k: &Q, emit: &mut dyn FnMut(u32))
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        if self.sorted {
            self.merge(k, emit);
        } else {
            self.hashed(k, emit);
        }
    }

    /// [`Rows::find`] while the rows are in order but for the strays.
    fn merge<Q>(&mut self, k: &Q, emit: &mut dyn FnMut(u32))
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        let below = |rows: &Self, r: usize| (rows.key)(r).is_some_and(|d| d.borrow() < k);
        // Merging is right while every row of `k` is at or after the
        // cursor: the row in order before it holds a smaller id.
        let before = (0..self.cursor).rev().find(|&r| !self.stray(r));
        if before.is_some_and(|r| !below(self, r)) {
            self.searches += 1;
            if self.searches > strays_allowed(self.n) {
                self.sorted = false;
                return self.hashed(k, emit);
            }
            // The first row in order whose id is not below `k`.
            let (mut lo, mut hi) = (0, self.n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let r = self.in_order_from(mid);
                if r < self.n && below(self, r) {
                    lo = r + 1;
                } else {
                    hi = mid;
                }
            }
            self.cursor = lo;
        }
        loop {
            self.cursor = self.in_order_from(self.cursor);
            if self.cursor < self.n && below(self, self.cursor) {
                self.cursor += 1;
            } else {
                break;
            }
        }
        let strays: &[u32] = match &self.strays {
            Some(s) => s.of.get(k).map_or(&[], Vec::as_slice),
            None => &[],
        };
        let mut strays = strays.iter().copied().peekable();
        let mut r = self.cursor;
        while r < self.n {
            if self.stray(r) {
                r += 1;
                continue;
            }
            if (self.key)(r).is_none_or(|d| d.borrow() != k) {
                break;
            }
            // Each id's rows in row order, strays among them.
            while let Some(s) = strays.next_if(|&s| (s as usize) < r) {
                emit(s);
            }
            emit(r as u32);
            r += 1;
        }
        strays.for_each(emit);
    }

    /// [`Rows::find`] by the hash table of every row, built the first time.
    fn hashed<Q>(&mut self, k: &Q, emit: &mut dyn FnMut(u32))
    where
        K: Borrow<Q>,
        Q: Ord + Hash + ?Sized,
    {
        let key = |r: usize| (self.key)(r);
        let (n, hasher) = (self.n, &self.hasher);
        let hash_of = |r: u32| key(r as usize).map_or(0, |d| hasher.hash_one(d.borrow()));
        let (heads, next) = self.hash.get_or_insert_with(|| {
            let mut heads: HashTable<u32> = HashTable::with_capacity(n);
            let mut next = vec![NONE; n];
            // Rows go in last to first, so each id's chain runs in row order.
            for r in (0..n).rev() {
                let Some(d) = key(r) else { continue };
                let h = hasher.hash_one(d.borrow());
                match heads.find_mut(h, |&o| key(o as usize) == Some(d)) {
                    Some(head) => {
                        next[r] = *head;
                        *head = r as u32;
                    }
                    None => {
                        heads.insert_unique(h, r as u32, |&o| hash_of(o));
                    }
                }
            }
            (heads, next)
        });
        let h = hasher.hash_one(k);
        let found = heads.find(h, |&o| key(o as usize).is_some_and(|d| d.borrow() == k));
        let mut r = found.copied().unwrap_or(NONE);
        while r != NONE {
            emit(r);
            r = next[r as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of each id asked, by the merge-or-hash finder and by a scan.
    fn check(data: &[Option<i64>], asked: &[i64]) {
        let key = |r: usize| data[r];
        let mut find = Rows::new(key, data.len());
        // A second pass after rewinding, as the opt-outs follow the consent
        // records, finds the same rows.
        for pass in 0..2 {
            for k in asked {
                let mut got = Vec::new();
                find.find(k, &mut |r| got.push(r));
                let want: Vec<u32> = (0..data.len())
                    .filter(|&r| data[r] == Some(*k))
                    .map(|r| r as u32)
                    .collect();
                assert_eq!(got, want, "pass {pass}: id {k} of {asked:?} in {data:?}");
            }
            find.rewind();
        }
    }

    #[test]
    fn merge_and_hash_find_the_same_rows() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m) as i64
        };
        for case in 0..500 {
            let n = next(40) as usize;
            let mut data: Vec<Option<i64>> = (0..n).map(|_| Some(next(30))).collect();
            let mut asked: Vec<i64> = (0..next(40)).map(|_| next(35)).collect();
            // Most exports come sorted; some not, some with a missing id.
            if case % 3 != 0 {
                data.sort();
            }
            if case % 4 != 0 {
                asked.sort();
            }
            if case % 7 == 0 && n > 0 {
                data[next(n as u64) as usize] = None;
            }
            // Sorted but for a few rows or ids moved elsewhere.
            if case % 5 == 1 && n > 1 {
                for _ in 0..=next(3) {
                    let (a, b) = (next(n as u64) as usize, next(n as u64) as usize);
                    data.swap(a, b);
                }
            }
            if case % 5 == 2 && asked.len() > 1 {
                let (a, b) = (next(asked.len() as u64), next(asked.len() as u64));
                asked.swap(a as usize, b as usize);
            }
            check(&data, &asked);
        }
    }

    #[test]
    fn a_sorted_file_with_a_few_rows_out_of_order_still_merges() {
        // Ids of different lengths sorted as text, and a missing id.
        let mut data: Vec<Option<i64>> = (0..1000).map(Some).collect();
        data[10] = None;
        data.swap(500, 501);
        data.push(Some(3));
        let asked: Vec<i64> = (0..1100)
            .rev()
            .step_by(7)
            .chain((0..1100).step_by(3))
            .collect();
        check(&data, &asked);
        let key = |r: usize| data[r];
        let find = Rows::new(key, data.len());
        assert!(find.sorted);
        // Rows 10 (no id), 501 (500 after 501) and 1000 (a second 3).
        assert_eq!(find.strays.as_ref().map(|s| s.of.len()), Some(2));
        // Too many strays: hashed.
        let shuffled: Vec<Option<i64>> = (0..1000).map(|i| Some((i * 7919) % 1000)).collect();
        let key = |r: usize| shuffled[r];
        assert!(!Rows::new(key, shuffled.len()).sorted);
    }

    #[test]
    fn ids_asked_out_of_order_are_searched_then_hashed() {
        let data: Vec<Option<i64>> = (0..200).map(|i| Some(i / 2)).collect();
        let key = |r: usize| data[r];
        let mut find = Rows::new(key, data.len());
        let rows_of = |find: &mut Rows<i64, _>, id: i64| {
            let mut got = Vec::new();
            find.find(&id, &mut |r| got.push(r));
            got
        };
        let mut rows_of = |id: i64| rows_of(&mut find, id);
        assert_eq!(rows_of(50), [100, 101]);
        assert_eq!(rows_of(3), [6, 7]);
        assert_eq!(rows_of(4), [8, 9]);
        for i in (0..100).rev() {
            assert_eq!(rows_of(i), [2 * i as u32, 2 * i as u32 + 1]);
        }
        assert_eq!(rows_of(99), [198, 199]);
        assert!(
            !find.sorted,
            "past {} searches the rows are hashed",
            strays_allowed(200)
        );
    }

    #[test]
    fn text_ids_merge_and_search_when_out_of_order() {
        let data = ["P01", "P02", "P02", "P05", "P07"];
        let key = |r: usize| Some(data[r]);
        let mut find = Rows::new(key, data.len());
        let mut rows_of = |id: &str| {
            let mut got = Vec::new();
            find.find(id, &mut |r| got.push(r));
            got
        };
        assert_eq!(rows_of("P02"), [1, 2]);
        assert_eq!(rows_of("P02"), [1, 2]);
        assert_eq!(rows_of("P03"), Vec::<u32>::new());
        assert_eq!(rows_of("P07"), [4]);
        // Out of order: found by a binary search, then merged from there.
        assert_eq!(rows_of("P01"), [0]);
        assert_eq!(rows_of("P05"), [3]);
        assert_eq!(rows_of("P09"), Vec::<u32>::new());
    }
}
