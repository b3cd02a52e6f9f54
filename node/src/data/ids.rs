//! The set of patients a query may count, and the DataFusion filter that
//! keeps only them.
//!
//! Membership is a hash lookup per row inside the scan: at a million
//! patients this is cheaper in time and memory than a semi join, which
//! would rebuild and repartition a hash table of every id on each query,
//! and the set is kept between queries while the consent files stay as
//! they are.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{HashSet, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::prelude::{cast, try_cast, Expr};

use super::compile::{column, is_int};

/// Patient ids in the data file's terms: integers when its id column is
/// an integer column, text otherwise.
#[derive(Debug)]
pub(crate) enum IdSet {
    Int(HashSet<i64>),
    Text(TextIds),
}

/// Text ids of up to 15 bytes (most hospital ids) are kept inline in the
/// hash table, which halves the memory and the cache misses of a lookup;
/// longer ones on the heap.
#[derive(Debug, Default)]
pub(crate) struct TextIds {
    short: HashSet<u128>,
    long: HashSet<Box<str>>,
}

/// The id's bytes and its length in one integer, when it fits: two ids
/// pack to the same value only when they are equal.
fn pack(id: &str) -> Option<u128> {
    let b = id.as_bytes();
    (b.len() < 16).then(|| {
        let mut buf = [0u8; 16];
        buf[..b.len()].copy_from_slice(b);
        buf[15] = b.len() as u8;
        u128::from_le_bytes(buf)
    })
}

impl TextIds {
    fn insert(&mut self, id: &str) {
        match pack(id) {
            Some(k) => {
                self.short.insert(k);
            }
            None => {
                self.long.get_or_insert_with(id, |id: &str| Box::from(id));
            }
        }
    }

    fn remove(&mut self, id: &str) {
        match pack(id) {
            Some(k) => self.short.remove(&k),
            None => self.long.remove(id),
        };
    }

    /// Every id, for a warehouse query that binds them as one array.
    fn all(&self) -> Vec<String> {
        let short = self.short.iter().map(|k| {
            let b = k.to_le_bytes();
            String::from_utf8_lossy(&b[..usize::from(b[15])]).into_owned()
        });
        short
            .chain(self.long.iter().map(|s| s.to_string()))
            .collect()
    }

    fn contains(&self, id: &str) -> bool {
        match pack(id) {
            Some(k) => self.short.contains(&k),
            None => self.long.contains(id),
        }
    }
}

impl IdSet {
    pub fn for_type(id_type: &DataType) -> Self {
        if is_int(id_type) {
            IdSet::Int(HashSet::default())
        } else {
            IdSet::Text(TextIds::default())
        }
    }

    /// Adds an id read from a consent file; text that is no integer
    /// cannot name anyone in an integer id column and is skipped.
    pub fn insert(&mut self, id: &str) {
        match self {
            IdSet::Int(s) => {
                if let Ok(i) = id.parse() {
                    s.insert(i);
                }
            }
            IdSet::Text(s) => s.insert(id),
        }
    }

    /// Takes out an id read from an opt-out file.
    pub fn remove(&mut self, id: &str) {
        match self {
            IdSet::Int(s) => {
                if let Ok(i) = id.parse::<i64>() {
                    s.remove(&i);
                }
            }
            IdSet::Text(s) => s.remove(id),
        }
    }

    /// The ids as one bound array for a warehouse query.
    pub(crate) fn as_param(&self) -> super::warehouse::Param {
        use super::warehouse::Param;
        match self {
            IdSet::Int(s) => Param::I64s(s.iter().copied().collect()),
            IdSet::Text(s) => Param::Texts(s.all()),
        }
    }

    /// `true` for rows whose id is in the set, `false` otherwise (also for
    /// a missing id), so the filter never sees an unknown.
    pub fn filter(self: &Arc<Self>, id_column: &str, id_type: &DataType) -> Expr {
        let c = column(id_column);
        let (arg, input) = match self.as_ref() {
            IdSet::Int(_) if *id_type == DataType::Int64 => (c, DataType::Int64),
            IdSet::Int(_) => (try_cast(c, DataType::Int64), DataType::Int64),
            IdSet::Text(_) if *id_type == DataType::Utf8View => (c, DataType::Utf8View),
            IdSet::Text(_) => (cast(c, DataType::Utf8View), DataType::Utf8View),
        };
        let set = Arc::clone(self);
        let contains = move |args: &[ColumnarValue]| -> Result<ColumnarValue, DataFusionError> {
            Ok(match &args[0] {
                ColumnarValue::Array(a) => ColumnarValue::Array(Arc::new(set.mask(a)) as ArrayRef),
                ColumnarValue::Scalar(s) => {
                    let a = s.to_array()?;
                    ColumnarValue::Scalar(ScalarValue::Boolean(Some(set.mask(&a).value(0))))
                }
            })
        };
        let udf = create_udf(
            "plexus_consenting",
            vec![input],
            DataType::Boolean,
            Volatility::Immutable,
            Arc::new(contains),
        );
        udf.call(vec![arg])
    }

    fn mask(&self, a: &ArrayRef) -> BooleanArray {
        let bits = match self {
            IdSet::Int(s) => {
                let ids = a.as_primitive::<Int64Type>();
                BooleanBuffer::collect_bool(ids.len(), |i| {
                    ids.is_valid(i) && s.contains(&ids.value(i))
                })
            }
            IdSet::Text(s) => {
                let ids = a.as_string_view();
                BooleanBuffer::collect_bool(ids.len(), |i| {
                    ids.is_valid(i) && s.contains(ids.value(i))
                })
            }
        };
        BooleanArray::new(bits, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ids_short_and_long() {
        let mut s = TextIds::default();
        let ids = [
            "",
            "a",
            "a\0",
            "P000001",
            "123456789012345",
            "1234567890123456",
            "a-much-longer-identifier-0001",
        ];
        ids.iter().for_each(|id| s.insert(id));
        assert!(ids.iter().all(|id| s.contains(id)));
        for other in [
            "b",
            "a\0\0",
            "P00000",
            "12345678901234",
            "1234567890123457",
            "a-much-longer-identifier-0002",
        ] {
            assert!(!s.contains(other), "{other:?}");
        }
        s.remove("a");
        s.remove("a-much-longer-identifier-0001");
        assert!(!s.contains("a") && s.contains("a\0"));
        assert!(!s.contains("a-much-longer-identifier-0001"));
    }
}
