//! The operators a model may use: pure computation that tract implements,
//! nothing that loops, branches into a subgraph, draws random numbers or
//! reads anything but its input.
//!
//! `Shape` is left out although tract implements it: tract computes
//! whatever follows from a shape while it loads the model, before any limit
//! applies, so a file could make a node allocate without bound at load
//! (see `inspect::check_computes_from_input`). A model reshapes with a
//! constant shape instead (`[-1, k]`).

/// (domain, op_type) pairs a model may use; "" and "ai.onnx" are the default domain.
pub const ALLOWED_OPERATORS: &[(&str, &str)] = &[
    ("", "Abs"),
    ("", "Add"),
    ("", "ArgMax"),
    ("", "BatchNormalization"),
    ("", "Cast"),
    ("", "Clip"),
    ("", "Concat"),
    ("", "Constant"),
    ("", "Div"),
    ("", "Elu"),
    ("", "Equal"),
    ("", "Erf"),
    ("", "Exp"),
    ("", "Flatten"),
    ("", "Gather"),
    ("", "Gemm"),
    ("", "Greater"),
    ("", "HardSigmoid"),
    ("", "Identity"),
    ("", "LeakyRelu"),
    ("", "Less"),
    ("", "Log"),
    ("", "LogSoftmax"),
    ("", "MatMul"),
    ("", "Max"),
    ("", "Min"),
    ("", "Mul"),
    ("", "Neg"),
    ("", "Not"),
    ("", "Pow"),
    ("", "ReduceMax"),
    ("", "ReduceMean"),
    ("", "ReduceSum"),
    ("", "Relu"),
    ("", "Reshape"),
    ("", "Sigmoid"),
    ("", "Slice"),
    ("", "Softmax"),
    ("", "Sqrt"),
    ("", "Squeeze"),
    ("", "Sub"),
    ("", "Sum"),
    ("", "Tanh"),
    ("", "Transpose"),
    ("", "Unsqueeze"),
    ("", "Where"),
    ("ai.onnx.ml", "LinearClassifier"),
    ("ai.onnx.ml", "LinearRegressor"),
    ("ai.onnx.ml", "Normalizer"),
    ("ai.onnx.ml", "TreeEnsembleClassifier"),
];

/// The default domain's two spellings made one.
pub(crate) fn domain_name(domain: &str) -> &str {
    if domain.is_empty() {
        "ai.onnx"
    } else {
        domain
    }
}

pub(crate) fn is_allowed(domain: &str, op_type: &str) -> bool {
    let domain = domain_name(domain);
    ALLOWED_OPERATORS
        .iter()
        .any(|&(d, op)| domain_name(d) == domain && op == op_type)
}

/// The allowed operators as a message lists them, by domain.
pub(crate) fn allowed_list() -> String {
    let mut by_domain: Vec<(&str, Vec<&str>)> = Vec::new();
    for &(domain, op) in ALLOWED_OPERATORS {
        let domain = domain_name(domain);
        match by_domain.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, ops)) => ops.push(op),
            None => by_domain.push((domain, vec![op])),
        }
    }
    by_domain
        .into_iter()
        .map(|(domain, ops)| format!("{domain}: {}", ops.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What to do about an operator that is not allowed, for the ones
/// exporters commonly write.
pub(crate) fn hint(domain: &str, op_type: &str) -> &'static str {
    match (domain_name(domain), op_type) {
        ("ai.onnx.ml", "ZipMap") => {
            "; export the classifier with zipmap=False (skl2onnx: options={id(model): {'zipmap': False}}; \
             onnxmltools: zipmap=False) so its probabilities are a float tensor"
        }
        ("ai.onnx.ml", "TreeEnsembleRegressor") => {
            "; tract, the engine a node runs ONNX models with, does not implement it: register a \
             Plexus-trained tree model as a Plexus model, not as ONNX, and export other regression \
             forests as classifiers where the outcome is binary"
        }
        ("ai.onnx.ml", "Scaler") | ("ai.onnx.ml", "Binarizer") => {
            "; tract, the engine a node runs ONNX models with, does not implement it: fold the \
             scaling into the model (for a linear model, into its coefficients) or export the \
             estimator without the preprocessing step"
        }
        ("ai.onnx", "Loop") | ("ai.onnx", "If") | ("ai.onnx", "Scan") => {
            "; a model may not loop or branch into subgraphs: export a plain feed-forward graph"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_of_the_default_domain_are_one() {
        assert!(is_allowed("", "MatMul"));
        assert!(is_allowed("ai.onnx", "MatMul"));
        assert!(!is_allowed("ai.onnx.ml", "MatMul"));
        assert!(is_allowed("ai.onnx.ml", "TreeEnsembleClassifier"));
        assert!(!is_allowed("", "TreeEnsembleClassifier"));
        assert!(!is_allowed("com.example", "Add"));
    }

    #[test]
    fn the_list_names_every_domain_once() {
        let list = allowed_list();
        assert!(list.starts_with("ai.onnx: Abs, Add,"));
        assert_eq!(list.matches("ai.onnx.ml:").count(), 1);
        assert!(list.contains("ai.onnx.ml: LinearClassifier"));
    }

    #[test]
    fn the_list_is_sorted_and_without_duplicates() {
        let mut sorted = ALLOWED_OPERATORS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ALLOWED_OPERATORS);
    }
}
