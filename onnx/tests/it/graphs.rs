//! Small ONNX models built in Rust, to score and to refuse.

use prost::Message;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::pb::tensor_shape_proto::Dimension;
use tract_onnx::pb::type_proto::{Tensor as TensorType, Value as TypeValue};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// A dimension of a declared shape: `None` is the symbolic batch `N`.
pub fn dim(d: Option<i64>) -> Dimension {
    Dimension {
        value: Some(match d {
            Some(v) => DimValue::DimValue(v),
            None => DimValue::DimParam("N".into()),
        }),
        ..Default::default()
    }
}

pub fn value(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorType {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto {
                    dim: dims.iter().map(|&d| dim(d)).collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A float32 `[N, width]` value.
pub fn matrix(name: &str, width: i64) -> ValueInfoProto {
    value(name, DataType::Float, &[None, Some(width)])
}

pub fn floats(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

pub fn ints(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn ml_node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        domain: "ai.onnx.ml".into(),
        ..node(op, name, inputs, outputs)
    }
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

pub fn attr_floats(name: &str, floats: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Floats as i32,
        floats: floats.to_vec(),
        ..Default::default()
    }
}

pub fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn attr_strings(name: &str, strings: &[&str]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Strings as i32,
        strings: strings.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

/// A model of one graph, opset 15 and ai.onnx.ml 3.
pub fn model(
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
    input: Vec<ValueInfoProto>,
    output: Vec<ValueInfoProto>,
) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 15,
            },
            OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 3,
            },
        ],
        producer_name: "plexus-onnx-tests".into(),
        producer_version: "1".into(),
        graph: Some(GraphProto {
            name: "test".into(),
            node: nodes,
            initializer,
            input,
            output,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn encode(m: &ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

pub const LOGISTIC_W: [f32; 3] = [0.5, -1.25, 2.0];
pub const LOGISTIC_B: f32 = 0.25;

/// `score = sigmoid(x · w + b)`, `x` float32 `[N, 3]`, `score` `[N, 1]`.
pub fn logistic() -> ModelProto {
    model(
        vec![
            node("MatMul", "linear", &["x", "w"], &["xw"]),
            node("Add", "bias", &["xw", "b"], &["z"]),
            node("Sigmoid", "logistic", &["z"], &["score"]),
        ],
        vec![
            floats("w", &[3, 1], &LOGISTIC_W),
            floats("b", &[1], &[LOGISTIC_B]),
        ],
        vec![matrix("x", 3)],
        vec![matrix("score", 1)],
    )
}

pub const SOFTMAX_W: [f32; 4] = [1.0, -1.0, 0.5, 0.75];
pub const SOFTMAX_B: [f32; 2] = [0.1, -0.2];

/// Two classes: `probabilities = softmax(x · W + b)` `[N, 2]` after an
/// int64 `label` `[N]` (its argmax), as a classifier exported with
/// zipmap=False gives them.
pub fn softmax() -> ModelProto {
    let mut argmax = node("ArgMax", "argmax", &["probabilities"], &["label"]);
    argmax.attribute = vec![attr_int("axis", 1), attr_int("keepdims", 0)];
    let mut softmax = node("Softmax", "softmax", &["z"], &["probabilities"]);
    softmax.attribute = vec![attr_int("axis", 1)];
    model(
        vec![
            node("MatMul", "linear", &["x", "w"], &["xw"]),
            node("Add", "bias", &["xw", "b"], &["z"]),
            softmax,
            argmax,
        ],
        vec![
            floats("w", &[2, 2], &SOFTMAX_W),
            floats("b", &[2], &SOFTMAX_B),
        ],
        vec![matrix("x", 2)],
        vec![
            value("label", DataType::Int64, &[None]),
            matrix("probabilities", 2),
        ],
    )
}

/// One tree on feature 0 of `x` `[N, 2]`: `x0 <= 0.5` gives 0.2, else
/// 0.9, both to class 0 of labels [0, 1], as binary exporters write it.
pub fn tree() -> ModelProto {
    let mut t = ml_node(
        "TreeEnsembleClassifier",
        "forest",
        &["x"],
        &["label", "probabilities"],
    );
    t.attribute = vec![
        attr_ints("classlabels_int64s", &[0, 1]),
        attr_ints("nodes_treeids", &[0, 0, 0]),
        attr_ints("nodes_nodeids", &[0, 1, 2]),
        attr_ints("nodes_featureids", &[0, 0, 0]),
        attr_floats("nodes_values", &[0.5, 0.0, 0.0]),
        attr_strings("nodes_modes", &["BRANCH_LEQ", "LEAF", "LEAF"]),
        attr_ints("nodes_truenodeids", &[1, 0, 0]),
        attr_ints("nodes_falsenodeids", &[2, 0, 0]),
        attr_ints("class_treeids", &[0, 0]),
        attr_ints("class_nodeids", &[1, 2]),
        attr_ints("class_ids", &[0, 0]),
        attr_floats("class_weights", &[0.2, 0.9]),
        attr_string("post_transform", "NONE"),
    ];
    model(
        vec![t],
        vec![],
        vec![matrix("x", 2)],
        vec![
            value("label", DataType::Int64, &[None]),
            matrix("probabilities", 2),
        ],
    )
}

/// The one node of `m`'s graph called `name`.
pub fn node_mut<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut NodeProto {
    m.graph
        .as_mut()
        .expect("a graph")
        .node
        .iter_mut()
        .find(|n| n.name == name)
        .expect("the node")
}

/// Replaces an attribute of a node.
pub fn set_attr(node: &mut NodeProto, a: AttributeProto) {
    node.attribute.retain(|old| old.name != a.name);
    node.attribute.push(a);
}
