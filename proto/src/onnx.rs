//! Trained models written as ONNX, the format every runtime reads: a
//! Plexus GBDT becomes one `TreeEnsembleRegressor` (ai.onnx.ml) giving the
//! score, and for a logistic loss a `Sigmoid` after it giving the
//! probability.
//!
//! The input `features` is float32 `[N, F]`: the model's features in its
//! order, numeric covariates as they are and each level's indicator as 0
//! or 1 (the model's `features` list, also in the file's metadata under
//! `plexus.features`). ONNX tree ensembles compare in float32, so a value
//! within float32 rounding of a threshold may go the other way than in
//! Plexus's own (float64) scoring.

use plexus_core::models::gbdt::{GbdtModel, Loss, Slot};

/// The ONNX messages Plexus writes (a subset of onnx.proto).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("onnx");
}

use pb::attribute_proto::AttributeType;
use pb::tensor_proto::DataType;

/// ONNX IR version 8 with opset 17 and ai.onnx.ml 3: read by ONNX Runtime
/// from 1.13 and by tract.
const IR_VERSION: i64 = 8;
const OPSET: i64 = 17;
const ML_OPSET: i64 = 3;

fn attribute(name: &str, kind: AttributeType) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

fn ints(name: &str, v: Vec<i64>) -> pb::AttributeProto {
    pb::AttributeProto {
        ints: v,
        ..attribute(name, AttributeType::Ints)
    }
}

fn floats(name: &str, v: Vec<f32>) -> pb::AttributeProto {
    pb::AttributeProto {
        floats: v,
        ..attribute(name, AttributeType::Floats)
    }
}

fn strings(name: &str, v: Vec<&str>) -> pb::AttributeProto {
    pb::AttributeProto {
        strings: v.into_iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..attribute(name, AttributeType::Strings)
    }
}

fn string(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        s: Some(v.as_bytes().to_vec()),
        ..attribute(name, AttributeType::String)
    }
}

fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        i: Some(v),
        ..attribute(name, AttributeType::Int)
    }
}

/// A float tensor value of shape `[N, width]`, N named "N".
fn float_matrix(name: &str, width: i64) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = |v: Value| Dimension {
        value: Some(v),
        denotation: None,
    };
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        dim(Value::DimParam("N".into())),
                        dim(Value::DimValue(width)),
                    ],
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn entry(key: &str, value: String) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: Some(key.into()),
        value: Some(value),
    }
}

/// The model as an ONNX file's bytes.
pub fn gbdt_to_onnx(model: &GbdtModel) -> Vec<u8> {
    // Every slot that holds a node gets an id, dense within its tree in
    // heap order; a split sends values below its threshold to the true
    // (left) child.
    let mut n = NodeLists::default();
    for (t, tree) in model.trees.iter().enumerate() {
        let mut id = vec![-1i64; tree.slots.len()];
        let mut next = 0;
        for (s, slot) in tree.slots.iter().enumerate() {
            if !matches!(slot, Slot::Empty) {
                id[s] = next;
                next += 1;
            }
        }
        for (s, slot) in tree.slots.iter().enumerate() {
            let (feature, threshold, mode, left, right) = match *slot {
                Slot::Split { feature, threshold } => (
                    i64::from(feature),
                    threshold_f32(model.features[feature as usize].thresholds[threshold as usize]),
                    "BRANCH_LT",
                    id[2 * s + 1],
                    id[2 * s + 2],
                ),
                Slot::Leaf { value } => {
                    n.target_treeids.push(t as i64);
                    n.target_nodeids.push(id[s]);
                    n.target_weights.push(value as f32);
                    (0, 0.0, "LEAF", 0, 0)
                }
                // A tree still being grown is never part of a model.
                Slot::Empty | Slot::Open => continue,
            };
            n.treeids.push(t as i64);
            n.nodeids.push(id[s]);
            n.featureids.push(feature);
            n.values.push(threshold);
            n.modes.push(mode);
            n.trueids.push(left);
            n.falseids.push(right);
        }
    }
    let leaves = n.target_nodeids.len();
    let ensemble = pb::NodeProto {
        input: vec!["features".into()],
        output: vec!["score".into()],
        name: Some("trees".into()),
        op_type: Some("TreeEnsembleRegressor".into()),
        domain: Some("ai.onnx.ml".into()),
        attribute: vec![
            int("n_targets", 1),
            string("aggregate_function", "SUM"),
            string("post_transform", "NONE"),
            floats("base_values", vec![model.base_score as f32]),
            ints("nodes_treeids", n.treeids),
            ints("nodes_nodeids", n.nodeids),
            ints("nodes_featureids", n.featureids),
            strings("nodes_modes", n.modes),
            floats("nodes_values", n.values),
            ints("nodes_truenodeids", n.trueids),
            ints("nodes_falsenodeids", n.falseids),
            ints("target_treeids", n.target_treeids),
            ints("target_nodeids", n.target_nodeids),
            ints("target_ids", vec![0; leaves]),
            floats("target_weights", n.target_weights),
        ],
        ..Default::default()
    };
    let mut nodes = vec![ensemble];
    let mut outputs = vec![float_matrix("score", 1)];
    if model.loss == Loss::Logistic {
        nodes.push(pb::NodeProto {
            input: vec!["score".into()],
            output: vec!["probability".into()],
            name: Some("probability".into()),
            op_type: Some("Sigmoid".into()),
            domain: Some(String::new()),
            ..Default::default()
        });
        outputs.push(float_matrix("probability", 1));
    }
    let features = serde_json::to_string(&model.features).expect("features serialise");
    let doc = format!(
        "Gradient-boosted trees trained by Plexus ({} loss). Input \"features\": float32 [N, {}], the model's features in order (metadata plexus.features): numeric covariates as they are, each level's indicator as 0 or 1. Output \"score\" is the summed trees plus the base score{}.",
        model.loss.as_str(),
        model.features.len(),
        if model.loss == Loss::Logistic {
            "; \"probability\" is its logistic"
        } else {
            ", the prediction"
        }
    );
    let model_proto = pb::ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            },
            pb::OperatorSetIdProto {
                domain: Some("ai.onnx.ml".into()),
                version: Some(ML_OPSET),
            },
        ],
        producer_name: Some("plexus".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(doc),
        graph: Some(pb::GraphProto {
            node: nodes,
            name: Some("plexus_gbdt".into()),
            input: vec![float_matrix("features", model.features.len() as i64)],
            output: outputs,
            ..Default::default()
        }),
        metadata_props: vec![
            entry("plexus.loss", model.loss.as_str().into()),
            entry("plexus.features", features),
        ],
        ..Default::default()
    };
    prost::Message::encode_to_vec(&model_proto)
}

/// The smallest float32 at or above `t`: a float32 input is below it
/// exactly when it is below `t`, so the ONNX trees send every value
/// representable in float32 the way Plexus does.
fn threshold_f32(t: f64) -> f32 {
    let r = t as f32;
    if f64::from(r) < t {
        r.next_up()
    } else {
        r
    }
}

#[derive(Default)]
struct NodeLists {
    treeids: Vec<i64>,
    nodeids: Vec<i64>,
    featureids: Vec<i64>,
    values: Vec<f32>,
    modes: Vec<&'static str>,
    trueids: Vec<i64>,
    falseids: Vec<i64>,
    target_treeids: Vec<i64>,
    target_nodeids: Vec<i64>,
    target_weights: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::models::gbdt::{Feature, Tree};
    use prost::Message;

    #[test]
    fn a_model_becomes_one_tree_ensemble_and_a_sigmoid() {
        let mut tree = Tree::open_root(2);
        tree.slots[0] = Slot::Split {
            feature: 1,
            threshold: 0,
        };
        tree.slots[1] = Slot::Leaf { value: -0.5 };
        tree.slots[2] = Slot::Split {
            feature: 0,
            threshold: 1,
        };
        tree.slots[5] = Slot::Leaf { value: 0.25 };
        tree.slots[6] = Slot::Leaf { value: 0.75 };
        let model = GbdtModel {
            loss: Loss::Logistic,
            base_score: -1.0,
            learning_rate: 0.1,
            features: vec![
                Feature {
                    name: "age".into(),
                    variable: "age".into(),
                    level: None,
                    thresholds: vec![50.0, 60.0],
                },
                Feature {
                    name: "diabetes=true".into(),
                    variable: "diabetes".into(),
                    level: Some(1),
                    thresholds: vec![0.5],
                },
            ],
            trees: vec![tree],
        };
        let bytes = gbdt_to_onnx(&model);
        let back = pb::ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = back.graph.unwrap();
        assert_eq!(graph.node.len(), 2);
        let trees = &graph.node[0];
        let get = |name: &str| trees.attribute.iter().find(|a| a.name() == name).unwrap();
        assert_eq!(get("nodes_nodeids").ints, [0, 1, 2, 3, 4]);
        assert_eq!(get("nodes_truenodeids").ints, [1, 0, 3, 0, 0]);
        assert_eq!(get("nodes_falsenodeids").ints, [2, 0, 4, 0, 0]);
        assert_eq!(get("nodes_values").floats, [0.5, 0.0, 60.0, 0.0, 0.0]);
        assert_eq!(get("target_nodeids").ints, [1, 3, 4]);
        assert_eq!(get("target_weights").floats, [-0.5, 0.25, 0.75]);
        assert_eq!(graph.output[1].name(), "probability");
        assert!(back.metadata_props[1].value().contains("diabetes=true"));
    }
}
