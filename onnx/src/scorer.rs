//! Running a checked model with tract, a batch at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use plexus_core::{Error, Result};
use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{bail, ensure, DimLike};

use crate::inspect;

/// Most rows one run of a model takes.
pub const BATCH: usize = 4096;

/// Most features a model may take.
const MAX_WIDTH: usize = 1 << 16;

/// Largest tensor a model may compute on a full batch, and most bytes all
/// its computed tensors may take together (a bound on what one run holds
/// at once): a model that multiplies its input into something larger is
/// refused at load, not discovered when the node runs out of memory.
const MAX_TENSOR_BYTES: u128 = 256 << 20;
const MAX_WORKING_BYTES: u128 = 1 << 30;

/// Serves no file: a model's tensors all live in its file (`inspect`
/// refuses external data), and this keeps tract from opening one if that
/// check ever missed a case.
struct NoFiles;

impl ModelDataResolver for NoFiles {
    fn read_bytes_from_path(
        &self,
        _buf: &mut Vec<u8>,
        _path: &Path,
        _offset: usize,
        _length: Option<usize>,
    ) -> TractResult<()> {
        bail!("a model may not read files")
    }
}

/// A loaded model, optimised and ready to run, with the batch dimension
/// symbolic so any number of rows runs.
pub struct OnnxScorer {
    plan: Arc<TypedRunnableModel>,
    width: usize,
    output: String,
    /// The scored output's width: 1 or 2 (1 also for an `[N]` output).
    columns: usize,
}

// The node keeps loaded models in an `Arc` cache shared by its workers.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<OnnxScorer>()
};

impl std::fmt::Debug for OnnxScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxScorer")
            .field("width", &self.width)
            .field("output", &self.output)
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

impl OnnxScorer {
    /// [`inspect`](crate::inspect)s, checks that the input's fixed width
    /// (if any) equals `width`, picks the output: `output` by name if given
    /// (it must be a float output of width 1 or 2), otherwise the first
    /// float output of width 1 or 2 (sklearn and onnxmltools classifiers
    /// exported with zipmap=False give int64 "label" and float
    /// "probabilities" [N, 2]), then loads it with tract.
    pub fn load(bytes: &[u8], width: usize, output: Option<&str>) -> Result<OnnxScorer> {
        let checked = inspect::check(bytes)?;
        let info = &checked.info;
        if width == 0 || width > MAX_WIDTH {
            return Err(Error::invalid(format!(
                "a model is scored on 1 to {MAX_WIDTH} features, not {width}; give the model's \
                 features"
            )));
        }
        if let Some(w) = info.width.filter(|&w| w != width) {
            return Err(Error::invalid(format!(
                "the model's input \"{}\" has {w} columns but the study gives it {width} features; \
                 register the model with the features it was trained on, in its order",
                info.input
            )));
        }
        let scoreable = |i: usize| checked.rank_ok[i] && info.outputs[i].scoreable();
        let index = match output {
            Some(name) => {
                let Some(i) = info.outputs.iter().position(|o| o.name == name) else {
                    let names: Vec<String> = info
                        .outputs
                        .iter()
                        .map(|o| format!("\"{}\"", o.name))
                        .collect();
                    return Err(Error::invalid(format!(
                        "the model has no output \"{name}\"; its outputs are {}",
                        names.join(", ")
                    )));
                };
                if !scoreable(i) {
                    return Err(Error::invalid(format!(
                        "output \"{name}\" is {}, but the scored output must be a float of width 1 \
                         or 2 (a score, or the two class probabilities); name another output or \
                         export a classifier with zipmap=False",
                        checked.described[i]
                    )));
                }
                i
            }
            // `inspect` refused a model without one.
            None => (0..info.outputs.len())
                .find(|&i| scoreable(i))
                .ok_or_else(|| Error::internal("no scoreable output after inspect"))?,
        };
        let name = &info.outputs[index].name;
        let (plan, columns) = catch_unwind(AssertUnwindSafe(|| {
            build(&checked.proto, width, index, name)
        }))
        .map_err(|_| {
            Error::invalid(
                "tract, the engine a node runs ONNX models with, failed on this model (it \
                 panicked); re-export the model, or register it in another form",
            )
        })??;
        Ok(OnnxScorer {
            plan,
            width,
            output: name.clone(),
            columns,
        })
    }

    /// Runs rows (row-major, `rows.len() == n * width`) in batches of at
    /// most [`BATCH`] rows and returns one score per row: column 1 of a
    /// width-2 output (the probability of the positive class), column 0 of
    /// a width-1 output. Checks `deadline` before each batch and fails
    /// (`unavailable`) once it has passed; fails (`data`) on a score that
    /// is not finite. Messages name no value and no count: the rows are
    /// patients.
    pub fn score(&self, rows: &[f32], n: usize, deadline: Instant) -> Result<Vec<f64>> {
        if n.checked_mul(self.width) != Some(rows.len()) {
            return Err(Error::internal(
                "the rows to score are not n rows of the model's width; this is a bug in the node",
            ));
        }
        let mut scores = Vec::with_capacity(n);
        for batch in rows.chunks(BATCH * self.width) {
            if Instant::now() >= deadline {
                return Err(Error::unavailable(
                    "the model ran past the node's time limit for scoring; register a smaller \
                     model, or ask the node's operator for a longer limit",
                ));
            }
            let m = batch.len() / self.width;
            let out = catch_unwind(AssertUnwindSafe(|| self.run(batch, m)))
                .map_err(|_| {
                    Error::internal(
                        "tract, the engine a node runs ONNX models with, panicked while scoring",
                    )
                })?
                .map_err(|e| {
                    Error::internal(format!(
                        "tract, the engine a node runs ONNX models with, failed while scoring: {}",
                        short(&e)
                    ))
                })?;
            if out.iter().any(|s| !s.is_finite()) {
                return Err(Error::data(
                    "the model gave a score that is not a finite number; check that it handles \
                     every value the study's features take (a missing value is NaN)",
                ));
            }
            scores.extend(out);
        }
        Ok(scores)
    }

    /// Features the model takes.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The output scored.
    pub fn output(&self) -> &str {
        &self.output
    }

    fn run(&self, batch: &[f32], m: usize) -> TractResult<Vec<f64>> {
        let input = Tensor::from_shape(&[m, self.width], batch)?;
        let outputs = self.plan.run(tvec!(input.into_tvalue()))?;
        let out = outputs[0].cast_to::<f64>()?;
        let shape_ok = match *out.shape() {
            [rows] => rows == m && self.columns == 1,
            [rows, cols] => rows == m && cols == self.columns,
            _ => false,
        };
        ensure!(shape_ok, "the output has shape {:?}", out.shape());
        let values = out.try_as_plain_ram()?.as_slice::<f64>()?.to_vec();
        Ok(values
            .into_iter()
            .skip(self.columns - 1)
            .step_by(self.columns)
            .collect())
    }
}

/// A tract error in one line, cut to a length a message can carry.
fn short(e: &TractError) -> String {
    let mut s = format!("{e:#}");
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn cannot_load(e: TractError) -> Error {
    Error::invalid(format!(
        "tract, the engine a node runs ONNX models with, cannot load the model: {}; re-export the \
         model with the operators and shapes Plexus allows",
        short(&e)
    ))
}

/// Loads the checked model into tract with only output `index` (called
/// `name`) and a symbolic batch, and optimises it; gives the plan and the
/// output's width.
fn build(
    proto: &tract_onnx::pb::ModelProto,
    width: usize,
    index: usize,
    name: &str,
) -> Result<(Arc<TypedRunnableModel>, usize)> {
    let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
    onnx.provider = Arc::new(NoFiles);
    let mut model = onnx.model_for_proto_model(proto).map_err(cannot_load)?;
    let outlet = model.output_outlets().map_err(cannot_load)?[index];
    model
        .select_output_outlets(&[outlet])
        .map_err(cannot_load)?;
    let n = model.symbols.sym("N");
    model
        .set_input_fact(0, f32::fact([n.to_dim(), width.to_dim()]).into())
        .map_err(cannot_load)?;
    let typed = model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(|e| {
            Error::invalid(format!(
                "tract, the engine a node runs ONNX models with, cannot run the model on any \
                 number of rows: {}; export it with a dynamic first input dimension ([None, F])",
                short(&e)
            ))
        })?;

    let fact = typed.output_fact(0).map_err(cannot_load)?;
    let by_row = fact.shape.rank() >= 1 && fact.shape[0] == n.to_dim();
    let columns = match fact.shape.dims() {
        [_] => Some(1),
        [_, w] => w.to_usize().ok().filter(|w| (1..=2).contains(w)),
        _ => None,
    };
    let (true, Some(columns), DatumType::F32 | DatumType::F64) = (by_row, columns, fact.datum_type)
    else {
        let dims: Vec<String> = fact.shape.iter().map(|d| d.to_string()).collect();
        return Err(Error::invalid(format!(
            "output \"{}\" is {} [{}] when the model is given N rows, but a scored output gives \
             one or two floats a row; name another output or export a classifier with zipmap=False",
            name,
            match fact.datum_type {
                DatumType::F32 => "float32".to_string(),
                DatumType::F64 => "float64".to_string(),
                dt => format!("{dt:?}").to_lowercase(),
            },
            dims.join(", ")
        )));
    };
    check_memory(&typed, &n)?;
    let plan = typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(cannot_load)?;
    Ok((plan, columns))
}

/// Refuses a model whose computed tensors, on a full batch, are larger
/// than a node gives one model.
fn check_memory(model: &TypedModel, n: &Symbol) -> Result<()> {
    let values = SymbolValues::default().with(n, BATCH as i64);
    let mut total: u128 = 0;
    for node in model.nodes() {
        for out in &node.outputs {
            if out.fact.konst.is_some() {
                continue;
            }
            let volume = out.fact.shape.volume().eval_to_i64(&values).map_err(|_| {
                Error::invalid(format!(
                    "the shape of \"{}\" depends on the values the model reads, not only on the \
                     number of rows; export a model whose shapes are fixed but for the rows",
                    node.name
                ))
            })?;
            let bytes =
                u128::try_from(volume).unwrap_or(u128::MAX) * out.fact.datum_type.size_of() as u128;
            if bytes > MAX_TENSOR_BYTES {
                return Err(Error::invalid(format!(
                    "\"{}\" would take {} MiB for a batch of {BATCH} rows, more than the {} MiB a \
                     node gives one tensor of a model; register a smaller model",
                    node.name,
                    bytes >> 20,
                    MAX_TENSOR_BYTES >> 20
                )));
            }
            total = total.saturating_add(bytes);
        }
    }
    if total > MAX_WORKING_BYTES {
        return Err(Error::invalid(format!(
            "the model would compute {} MiB of tensors for a batch of {BATCH} rows, more than the \
             {} MiB a node gives one model; register a smaller model",
            total >> 20,
            MAX_WORKING_BYTES >> 20
        )));
    }
    Ok(())
}
