//! Reading a model file as hostile: what it is, and whether a node may run
//! it, without running it.

use std::collections::{BTreeSet, HashMap, HashSet};

use plexus_core::{Error, Result};
use prost::Message;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use tract_onnx::pb::type_proto::Value as Type;
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, ValueInfoProto};

use crate::operators::{allowed_list, domain_name, hint, is_allowed};
use crate::{tensors, trees, MAX_MODEL_BYTES};

/// What a model file is: its input, its outputs and what it computes with.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxInfo {
    /// The one input's name.
    pub input: String,
    /// The input's second dimension when fixed (the input is float32
    /// `[N, F]`; N may be dynamic).
    pub width: Option<usize>,
    /// In graph order.
    pub outputs: Vec<OnnxOutput>,
    /// Distinct `domain:op` used, sorted (domain "" shown as "ai.onnx").
    pub operators: Vec<String>,
    /// `producer_name producer_version`, trimmed.
    pub producer: String,
}

/// One output of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxOutput {
    pub name: String,
    /// float32 or float64.
    pub float: bool,
    /// Its second dimension when fixed; 1 for a one-dimensional `[N]`
    /// output.
    pub width: Option<usize>,
}

impl OnnxOutput {
    /// Whether a score can be read from it: floats, one or two per row (or
    /// as many as tract finds when it loads the model).
    pub(crate) fn scoreable(&self) -> bool {
        self.float && matches!(self.width, None | Some(1) | Some(2))
    }

    /// What it is, for messages: `int64 [N]`, `float32 [N, 3]`.
    fn describe(v: &ValueInfoProto) -> String {
        let Some(Type::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return "not a tensor".into();
        };
        let shape = match &t.shape {
            None => "of unknown shape".into(),
            Some(s) => {
                let dims: Vec<String> = s
                    .dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(Dim::DimValue(v)) => v.to_string(),
                        Some(Dim::DimParam(p)) if !p.is_empty() => p.clone(),
                        _ => "?".into(),
                    })
                    .collect();
                format!("[{}]", dims.join(", "))
            }
        };
        format!("{} {shape}", tensors::type_name(t.elem_type))
    }
}

/// A model that passed [`inspect`], with its decoded file.
pub(crate) struct Checked {
    pub proto: ModelProto,
    pub info: OnnxInfo,
    /// Per output, its description for messages.
    pub described: Vec<String>,
    /// Whether an output's rank is one or two (or unknown).
    pub rank_ok: Vec<bool>,
}

/// Checks a model file without running it, and says what it is.
///
/// Refuses a file over [`MAX_MODEL_BYTES`] or that does not decode as an
/// ONNX `ModelProto`; a model without a graph, with model-local functions,
/// training graphs or sparse initializers; more or fewer than one graph
/// input that is not an initializer, or an input that is not float32 of
/// rank 2; a node whose (domain, op_type) is not in [`ALLOWED_OPERATORS`]
/// (the message names the operator and the node, and lists the allowed
/// ones); an attribute carrying a graph or graphs (subgraphs); a tensor
/// (initializer or `Constant` value) with external data, of a
/// non-numeric type, or holding other than what its dimensions say; a
/// node other than `Constant` that computes from constants only; a
/// `TreeEnsembleClassifier` whose trees tract would walk out of bounds or
/// forever; and a model without a float output of width 1 or 2 (or of a
/// width known only when loaded). Every message says what is wrong and
/// what to do.
///
/// [`ALLOWED_OPERATORS`]: crate::ALLOWED_OPERATORS
pub fn inspect(bytes: &[u8]) -> Result<OnnxInfo> {
    check(bytes).map(|c| c.info)
}

pub(crate) fn check(bytes: &[u8]) -> Result<Checked> {
    if bytes.len() > MAX_MODEL_BYTES {
        return Err(Error::invalid(format!(
            "the model file is {} bytes, more than the {} MiB a study may register; register a \
             smaller model (fewer trees or features, or weights in float32)",
            bytes.len(),
            MAX_MODEL_BYTES / (1024 * 1024)
        )));
    }
    let proto = ModelProto::decode(bytes).map_err(|e| {
        Error::invalid(format!(
            "the file is not an ONNX model: it does not decode as an ONNX ModelProto ({e}); \
             register the .onnx file the exporter wrote, whole"
        ))
    })?;
    if !proto.functions.is_empty() {
        let names: Vec<&str> = proto
            .functions
            .iter()
            .filter_map(|f| f.name.as_deref())
            .collect();
        return Err(Error::policy(format!(
            "the model defines local functions ({}); a Plexus model is one plain graph: export it \
             with the functions inlined",
            names.join(", ")
        )));
    }
    if !proto.training_info.is_empty() {
        return Err(Error::policy(
            "the model carries training graphs; export the inference graph only",
        ));
    }
    let Some(graph) = &proto.graph else {
        return Err(Error::invalid(
            "the model has no graph; register the .onnx file the exporter wrote, whole",
        ));
    };
    if !graph.sparse_initializer.is_empty() {
        return Err(Error::invalid(format!(
            "the model has sparse initializers (\"{}\"), which a node cannot load; export the \
             weights as dense tensors",
            graph.sparse_initializer[0]
                .values
                .as_ref()
                .map_or("", |v| v.name.as_str())
        )));
    }
    for t in &graph.initializer {
        tensors::check(t, &format!("initializer \"{}\"", t.name))?;
    }
    let mut operators = BTreeSet::new();
    for (i, node) in graph.node.iter().enumerate() {
        check_node(node, i)?;
        operators.insert(format!("{}:{}", domain_name(&node.domain), node.op_type));
    }

    let initialized: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initialized.contains(i.name.as_str()))
        .collect();
    let [input] = inputs[..] else {
        let names: Vec<String> = inputs.iter().map(|i| format!("\"{}\"", i.name)).collect();
        return Err(Error::invalid(format!(
            "the model has {} inputs{}{}; a Plexus model takes one input, a float32 [N, F] matrix \
             with a row a patient and a column a feature: export it with a single input",
            inputs.len(),
            if names.is_empty() { "" } else { " " },
            names.join(", ")
        )));
    };
    let width = check_input(input)?;
    check_names(graph, &input.name)?;
    check_computes_from_input(graph, &input.name)?;

    let mut outputs = Vec::new();
    let mut described = Vec::new();
    let mut rank_ok = Vec::new();
    for o in &graph.output {
        let (output, rank) = output_of(o);
        outputs.push(output);
        described.push(OnnxOutput::describe(o));
        rank_ok.push(matches!(rank, None | Some(1) | Some(2)));
    }
    if !outputs
        .iter()
        .zip(&rank_ok)
        .any(|(o, &r)| r && o.scoreable())
    {
        let list: Vec<String> = outputs
            .iter()
            .zip(&described)
            .map(|(o, d)| format!("\"{}\" ({d})", o.name))
            .collect();
        return Err(Error::invalid(format!(
            "the model has no float output of width 1 or 2 to score with (its outputs: {}); export \
             a classifier with zipmap=False so its probabilities are a float [N, 2] tensor, or a \
             model whose score is a float [N, 1] tensor",
            if list.is_empty() { "none".to_string() } else { list.join(", ") }
        )));
    }

    let producer = format!("{} {}", proto.producer_name, proto.producer_version)
        .trim()
        .to_string();
    let info = OnnxInfo {
        input: input.name.clone(),
        width,
        outputs,
        operators: operators.into_iter().collect(),
        producer,
    };
    Ok(Checked {
        proto,
        info,
        described,
        rank_ok,
    })
}

/// Refuses a tensor name defined twice, or an output never defined.
///
/// tract takes the last definition of a name, so a node giving a constant
/// the input's name would otherwise pass for computing from the input; and
/// it assumes every output is defined.
fn check_names(graph: &GraphProto, input: &str) -> Result<()> {
    let mut defined: HashSet<&str> = HashSet::from([input]);
    let again = |name: &str, by: String| {
        Error::invalid(format!(
            "the name \"{name}\" is given to two tensors (again by {by}); an ONNX graph names each \
             tensor once: re-export the model"
        ))
    };
    for t in &graph.initializer {
        if !defined.insert(&t.name) {
            return Err(again(&t.name, format!("initializer \"{}\"", t.name)));
        }
    }
    for (i, node) in graph.node.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if !defined.insert(out) {
                return Err(again(out, format!("node \"{}\"", node_name(node, i))));
            }
        }
    }
    if let Some(o) = graph
        .output
        .iter()
        .find(|o| !defined.contains(o.name.as_str()))
    {
        return Err(Error::invalid(format!(
            "output \"{}\" is not computed by any node; re-export the model",
            o.name
        )));
    }
    Ok(())
}

/// Refuses a node other than `Constant` that computes from constants only.
///
/// tract computes such a node while it loads the model (its eager constant
/// folding), and checks the size of what it computed only afterwards: a
/// broadcast of two small constants, or many nodes each copying a large
/// one, would have a node allocate without bound before any limit of
/// `OnnxScorer::load` applies. Exporters fold constants themselves, so a
/// model that still computes from constants alone is not one they write.
fn check_computes_from_input(graph: &GraphProto, input: &str) -> Result<()> {
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for name in node.input.iter().filter(|n| !n.is_empty()) {
            consumers.entry(name.as_str()).or_default().push(i);
        }
    }
    let mut live = vec![false; graph.node.len()];
    let mut todo = vec![input];
    while let Some(name) = todo.pop() {
        for &i in consumers.get(name).map(Vec::as_slice).unwrap_or_default() {
            if !live[i] {
                live[i] = true;
                todo.extend(graph.node[i].output.iter().map(String::as_str));
            }
        }
    }
    let constant = graph.node.iter().enumerate().find(|&(i, n)| {
        !(live[i] || n.op_type == "Constant" && domain_name(&n.domain) == "ai.onnx")
    });
    if let Some((i, node)) = constant {
        return Err(Error::invalid(format!(
            "node \"{}\" ({}) computes from constants only, not from the model's input; export \
             the model with its constants folded (torch.onnx.export(..., do_constant_folding=True), \
             or onnxsim)",
            node_name(node, i),
            node.op_type
        )));
    }
    Ok(())
}

/// How messages name the node at `index`.
fn node_name(node: &NodeProto, index: usize) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else if let Some(out) = node.output.first().filter(|o| !o.is_empty()) {
        format!("#{index}, giving {out}")
    } else {
        format!("#{index}")
    }
}

fn check_node(node: &NodeProto, index: usize) -> Result<()> {
    let name = node_name(node, index);
    if !is_allowed(&node.domain, &node.op_type) {
        return Err(Error::policy(format!(
            "operator {}:{} of node \"{name}\" is not allowed in a Plexus model{}; a model may use \
             only these operators: {}",
            domain_name(&node.domain),
            node.op_type,
            hint(&node.domain, &node.op_type),
            allowed_list()
        )));
    }
    for a in &node.attribute {
        if a.g.is_some() || !a.graphs.is_empty() {
            return Err(Error::policy(format!(
                "attribute \"{}\" of node \"{name}\" ({}) carries a subgraph; a Plexus model may \
                 not branch or loop into subgraphs: export a plain feed-forward graph",
                a.name, node.op_type
            )));
        }
        if a.sparse_tensor.is_some() || !a.sparse_tensors.is_empty() {
            return Err(Error::invalid(format!(
                "attribute \"{}\" of node \"{name}\" ({}) is a sparse tensor, which a node cannot \
                 load; export the weights as dense tensors",
                a.name, node.op_type
            )));
        }
        if !a.ref_attr_name.is_empty() {
            return Err(Error::invalid(format!(
                "attribute \"{}\" of node \"{name}\" refers to a function's attribute, and a \
                 Plexus model has no functions; export a plain graph",
                a.name
            )));
        }
        let what = format!("attribute \"{}\" of node \"{name}\"", a.name);
        for t in a.t.iter().chain(&a.tensors) {
            tensors::check(t, &what)?;
        }
    }
    match (domain_name(&node.domain), node.op_type.as_str()) {
        ("ai.onnx", "Constant") => {
            if let Some(a) = node
                .attribute
                .iter()
                .find(|a| a.name == "value_string" || a.name == "value_strings")
            {
                return Err(Error::invalid(format!(
                    "Constant \"{name}\" is a string ({}); a model computes on numbers only",
                    a.name
                )));
            }
        }
        ("ai.onnx", "Cast") => {
            let to = node.attribute.iter().find(|a| a.name == "to").map(|a| a.i);
            let to = to.and_then(|to| i32::try_from(to).ok());
            if !to.is_some_and(tensors::is_numeric) {
                return Err(Error::invalid(format!(
                    "Cast \"{name}\" casts to {}; a model computes on numbers only (float, integer \
                     or bool)",
                    to.map_or("no type".into(), tensors::type_name)
                )));
            }
        }
        ("ai.onnx.ml", "TreeEnsembleClassifier") => trees::check_classifier(node, &name)?,
        _ => {}
    }
    Ok(())
}

/// The input's fixed width, if any, once it is float32 of rank 2.
fn check_input(input: &ValueInfoProto) -> Result<Option<usize>> {
    let wanted = "a Plexus model takes a float32 [N, F] matrix, a row a patient and a column a \
                  feature: export it with a float32 input of shape [None, F] (skl2onnx: \
                  FloatTensorType([None, F]))";
    let Some(Type::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(Error::invalid(format!(
            "input \"{}\" is not a tensor; {wanted}",
            input.name
        )));
    };
    if t.elem_type != DataType::Float as i32 {
        return Err(Error::invalid(format!(
            "input \"{}\" is {}, not float32; {wanted}",
            input.name,
            tensors::type_name(t.elem_type)
        )));
    }
    let dims = match &t.shape {
        Some(s) if s.dim.len() == 2 => &s.dim,
        Some(s) => {
            return Err(Error::invalid(format!(
                "input \"{}\" has rank {}, not 2; {wanted}",
                input.name,
                s.dim.len()
            )))
        }
        None => {
            return Err(Error::invalid(format!(
                "input \"{}\" has no shape; {wanted}",
                input.name
            )))
        }
    };
    match dims[1].value {
        Some(Dim::DimValue(w)) if w > 0 => Ok(Some(w as usize)),
        Some(Dim::DimValue(w)) => Err(Error::invalid(format!(
            "input \"{}\" has {w} columns; {wanted}",
            input.name
        ))),
        _ => Ok(None),
    }
}

/// An output as [`OnnxInfo`] shows it, with its rank when known.
fn output_of(o: &ValueInfoProto) -> (OnnxOutput, Option<usize>) {
    let tensor = o
        .r#type
        .as_ref()
        .and_then(|t| t.value.as_ref())
        .map(|Type::TensorType(t)| t);
    let float = tensor.is_some_and(|t| {
        t.elem_type == DataType::Float as i32 || t.elem_type == DataType::Double as i32
    });
    let dims = tensor.and_then(|t| t.shape.as_ref()).map(|s| &s.dim);
    let width = match dims.map(|d| d.as_slice()) {
        Some([_]) => Some(1),
        Some([_, d]) => match d.value {
            Some(Dim::DimValue(w)) if w >= 0 => Some(w as usize),
            _ => None,
        },
        _ => None,
    };
    let output = OnnxOutput {
        name: o.name.clone(),
        float,
        width,
    };
    (output, dims.map(|d| d.len()))
}
