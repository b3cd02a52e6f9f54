//! Model files a node refuses, each with a message naming what is wrong.

use std::time::{Duration, Instant};

use plexus_core::{Error, ErrorCode};
use plexus_onnx::{inspect, OnnxScorer, MAX_MODEL_BYTES};
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{
    AttributeProto, FunctionProto, GraphProto, ModelProto, SparseTensorProto,
    StringStringEntryProto,
};

use crate::graphs::{self, *};

fn refused(m: &ModelProto) -> Error {
    inspect(&encode(m)).expect_err("refused")
}

fn assert_says(e: &Error, code: ErrorCode, parts: &[&str]) {
    assert_eq!(e.code, code, "{e}");
    for p in parts {
        assert!(e.message.contains(p), "{p:?} not in: {e}");
    }
}

fn graph(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().expect("a graph")
}

#[test]
fn bytes_that_are_not_a_model() {
    let e = inspect(&[0xff; 64]).unwrap_err();
    assert_says(&e, ErrorCode::Invalid, &["not an ONNX model", "ModelProto"]);
    let e = inspect(b"").unwrap_err();
    assert_says(&e, ErrorCode::Invalid, &["has no graph"]);
}

#[test]
fn a_truncated_file() {
    let bytes = encode(&graphs::logistic());
    let e = inspect(&bytes[..bytes.len() / 2]).unwrap_err();
    assert_says(&e, ErrorCode::Invalid, &["not an ONNX model", "whole"]);
}

#[test]
fn a_file_over_the_limit() {
    let bytes = vec![0u8; MAX_MODEL_BYTES + 1];
    let e = inspect(&bytes).unwrap_err();
    assert_says(&e, ErrorCode::Invalid, &["16777217 bytes", "16 MiB"]);
}

#[test]
fn an_operator_not_on_the_list() {
    let mut m = graphs::logistic();
    node_mut(&mut m, "logistic").op_type = "Loop".into();
    let e = refused(&m);
    assert_says(
        &e,
        ErrorCode::Policy,
        &[
            "operator ai.onnx:Loop",
            "node \"logistic\"",
            "may not loop",
            "only these operators: ai.onnx: Abs, Add,",
            "ai.onnx.ml: LinearClassifier",
        ],
    );

    let mut m = graphs::logistic();
    node_mut(&mut m, "bias").domain = "com.example".into();
    let e = refused(&m);
    assert_says(
        &e,
        ErrorCode::Policy,
        &["operator com.example:Add", "node \"bias\""],
    );

    // tract reads op types whatever their domain; the list does not.
    let mut m = graphs::logistic();
    node_mut(&mut m, "bias").domain = "ai.onnx.ml".into();
    assert_says(
        &refused(&m),
        ErrorCode::Policy,
        &["operator ai.onnx.ml:Add"],
    );
}

#[test]
fn operators_exporters_write_that_tract_lacks_say_what_to_do() {
    let mut m = graphs::softmax();
    let zipmap = ml_node(
        "ZipMap",
        "zipmap",
        &["probabilities"],
        &["output_probability"],
    );
    graph(&mut m).node.push(zipmap);
    assert_says(
        &refused(&m),
        ErrorCode::Policy,
        &["ai.onnx.ml:ZipMap", "zipmap=False"],
    );

    let mut m = graphs::tree();
    node_mut(&mut m, "forest").op_type = "TreeEnsembleRegressor".into();
    assert_says(
        &refused(&m),
        ErrorCode::Policy,
        &["TreeEnsembleRegressor", "as a Plexus model, not as ONNX"],
    );
}

fn subgraph() -> GraphProto {
    GraphProto {
        name: "branch".into(),
        node: vec![node("Identity", "inner", &["x"], &["y"])],
        output: vec![matrix("y", 3)],
        ..Default::default()
    }
}

#[test]
fn an_if_with_subgraphs() {
    let mut m = graphs::logistic();
    let mut cond = node("If", "choose", &["c"], &["chosen"]);
    for branch in ["then_branch", "else_branch"] {
        cond.attribute.push(AttributeProto {
            name: branch.into(),
            g: Some(subgraph()),
            ..Default::default()
        });
    }
    graph(&mut m).node.push(cond);
    assert_says(
        &refused(&m),
        ErrorCode::Policy,
        &["operator ai.onnx:If", "node \"choose\"", "subgraphs"],
    );

    // A subgraph on an allowed operator is refused too.
    let mut m = graphs::logistic();
    node_mut(&mut m, "logistic").attribute.push(AttributeProto {
        name: "body".into(),
        graphs: vec![subgraph()],
        ..Default::default()
    });
    assert_says(
        &refused(&m),
        ErrorCode::Policy,
        &[
            "attribute \"body\" of node \"logistic\"",
            "carries a subgraph",
        ],
    );
}

#[test]
fn weights_in_an_external_file() {
    let mut m = graphs::logistic();
    let w = &mut graph(&mut m).initializer[0];
    w.float_data.clear();
    w.data_location = Some(DataLocation::External as i32);
    w.external_data = vec![StringStringEntryProto {
        key: "location".into(),
        value: "/etc/passwd".into(),
    }];
    assert_says(
        &refused(&m),
        ErrorCode::Policy,
        &["initializer \"w\"", "external file", "may not read files"],
    );

    // external_data entries alone, without data_location, in a Constant.
    let mut m = graphs::logistic();
    let mut b = floats("", &[1], &[]);
    b.external_data = vec![StringStringEntryProto {
        key: "location".into(),
        value: "b.bin".into(),
    }];
    let mut konst = node("Constant", "bias_value", &[], &["b2"]);
    konst.attribute.push(AttributeProto {
        name: "value".into(),
        t: Some(b),
        ..Default::default()
    });
    graph(&mut m).node.insert(0, konst);
    assert_says(
        &refused(&m),
        ErrorCode::Policy,
        &[
            "attribute \"value\" of node \"bias_value\"",
            "external file",
        ],
    );
}

#[test]
fn sparse_initializers_and_local_functions() {
    let mut m = graphs::logistic();
    graph(&mut m).sparse_initializer.push(SparseTensorProto {
        values: Some(floats("s", &[1], &[1.0])),
        indices: Some(ints("", &[1], &[0])),
        dims: vec![4],
    });
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &["sparse initializers (\"s\")"],
    );

    let mut m = graphs::logistic();
    m.functions.push(FunctionProto {
        name: Some("helper".into()),
        ..Default::default()
    });
    assert_says(
        &refused(&m),
        ErrorCode::Policy,
        &["local functions (helper)", "inlined"],
    );
}

#[test]
fn inputs_other_than_one_float_matrix() {
    let mut m = graphs::logistic();
    graph(&mut m).input.push(matrix("y", 3));
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &["2 inputs \"x\", \"y\"", "a single input"],
    );

    // An initializer listed among the inputs is not an input.
    let mut m = graphs::logistic();
    graph(&mut m)
        .input
        .push(value("w", DataType::Float, &[Some(3), Some(1)]));
    inspect(&encode(&m)).unwrap();

    let mut m = graphs::logistic();
    graph(&mut m).input = vec![value("x", DataType::Int64, &[None, Some(3)])];
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &["input \"x\" is int64, not float32"],
    );

    let mut m = graphs::logistic();
    graph(&mut m).input = vec![value("x", DataType::Float, &[None, Some(3), Some(1)])];
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &["input \"x\" has rank 3, not 2"],
    );
}

#[test]
fn a_width_other_than_the_studys() {
    let e = OnnxScorer::load(&encode(&graphs::logistic()), 4, None).unwrap_err();
    assert_says(
        &e,
        ErrorCode::Invalid,
        &["input \"x\" has 3 columns", "gives it 4 features"],
    );
}

#[test]
fn an_output_that_is_missing_or_not_a_score() {
    let bytes = encode(&graphs::softmax());
    let e = OnnxScorer::load(&bytes, 2, Some("proba")).unwrap_err();
    assert_says(
        &e,
        ErrorCode::Invalid,
        &["no output \"proba\"", "\"label\", \"probabilities\""],
    );
    let e = OnnxScorer::load(&bytes, 2, Some("label")).unwrap_err();
    assert_says(&e, ErrorCode::Invalid, &["output \"label\" is int64 [N]"]);

    let mut m = graphs::softmax();
    graph(&mut m).output.remove(1);
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &[
            "no float output of width 1 or 2",
            "\"label\" (int64 [N])",
            "zipmap=False",
        ],
    );
}

#[test]
fn a_deadline_already_past() {
    let scorer = OnnxScorer::load(&encode(&graphs::logistic()), 3, None).unwrap();
    let past = Instant::now() - Duration::from_millis(1);
    let e = scorer.score(&[0.0; 3], 1, past).unwrap_err();
    assert_says(
        &e,
        ErrorCode::Unavailable,
        &["ran past the node's time limit for scoring"],
    );
    let e = scorer.score(&[0.0; 4], 1, past).unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal, "{e}");
}

#[test]
fn a_model_that_pools_rows() {
    // mean(x · w) over the rows: one number for the whole batch.
    let mut m = graphs::logistic();
    let mut mean = node("ReduceMean", "pool", &["z"], &["pooled"]);
    mean.attribute.push(attr_ints("axes", &[0]));
    graph(&mut m).node.push(mean);
    graph(&mut m).output = vec![value("pooled", DataType::Float, &[Some(1), Some(1)])];
    inspect(&encode(&m)).unwrap();
    let e = OnnxScorer::load(&encode(&m), 3, None).unwrap_err();
    assert_says(
        &e,
        ErrorCode::Invalid,
        &[
            "output \"pooled\" is float32 [1, 1] when the model is given N rows",
            "one or two floats a row",
        ],
    );
}

#[test]
fn a_model_that_grows_past_the_memory_a_node_gives_it() {
    // Each Concat doubles the width: 3 · 2^24 floats a row.
    let mut m = graphs::logistic();
    let g = graph(&mut m);
    let mut last = "x".to_string();
    for i in 0..24 {
        let mut c = node(
            "Concat",
            &format!("double{i}"),
            &[&last, &last],
            &[&format!("d{i}")],
        );
        c.attribute.push(attr_int("axis", 1));
        g.node.push(c);
        last = format!("d{i}");
    }
    let mut sum = node("ReduceMean", "mean", &[&last], &["total"]);
    sum.attribute.push(attr_ints("axes", &[1]));
    g.node.push(sum);
    g.output = vec![matrix("total", 1)];
    let e = OnnxScorer::load(&encode(&m), 3, None).unwrap_err();
    assert_says(
        &e,
        ErrorCode::Invalid,
        &["MiB for a batch of 4096 rows", "register a smaller model"],
    );
}

#[test]
fn strings() {
    let mut m = graphs::logistic();
    let mut cast = node("Cast", "to_text", &["score"], &["text"]);
    cast.attribute.push(attr_int("to", DataType::String as i64));
    graph(&mut m).node.push(cast);
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &["Cast \"to_text\" casts to string"],
    );

    let mut m = graphs::logistic();
    let mut konst = node("Constant", "name", &[], &["n"]);
    konst.attribute.push(attr_string("value_string", "x"));
    graph(&mut m).node.push(konst);
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &["Constant \"name\" is a string"],
    );

    let mut m = graphs::logistic();
    graph(&mut m).initializer[1] = tract_onnx::pb::TensorProto {
        name: "b".into(),
        dims: vec![1],
        data_type: DataType::String as i32,
        raw_data: b"0.25".to_vec(),
        ..Default::default()
    };
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &["initializer \"b\" is of type string"],
    );
}

#[test]
fn trees_tract_would_walk_out_of_bounds_or_forever() {
    let forest = |change: &dyn Fn(&mut tract_onnx::pb::NodeProto)| {
        let mut m = graphs::tree();
        change(node_mut(&mut m, "forest"));
        let e = refused(&m);
        assert_eq!(e.code, ErrorCode::Invalid, "{e}");
        assert!(
            e.message.starts_with("TreeEnsembleClassifier \"forest\""),
            "{e}"
        );
        e.message
    };
    let m = forest(&|n| set_attr(n, attr_ints("class_ids", &[0, 7])));
    assert!(m.contains("not one of its 2 classes"), "{m}");
    let m = forest(&|n| {
        set_attr(
            n,
            attr_strings("nodes_modes", &["BRANCH_LEQ", "BRANCH_LT", "LEAF"]),
        );
        set_attr(n, attr_ints("nodes_truenodeids", &[1, 0, 0]));
        set_attr(n, attr_ints("nodes_falsenodeids", &[2, 2, 0]));
        set_attr(n, attr_ints("class_nodeids", &[2, 2]));
    });
    assert!(m.contains("cycle in tree 0"), "{m}");
    let m = forest(&|n| set_attr(n, attr_ints("nodes_falsenodeids", &[9, 0, 0])));
    assert!(m.contains("does not exist"), "{m}");
    let m = forest(&|n| {
        set_attr(n, attr_ints("nodes_nodeids", &[0, 1, 5]));
        set_attr(n, attr_ints("nodes_falsenodeids", &[5, 0, 0]));
        set_attr(n, attr_ints("class_nodeids", &[1, 5]));
    });
    assert!(m.contains("numbers the nodes of tree 0"), "{m}");
    let m = forest(&|n| set_attr(n, attr_ints("class_nodeids", &[1, 0])));
    assert!(m.contains("node 0 of tree 0, which is not a leaf"), "{m}");
    let m = forest(&|n| set_attr(n, attr_ints("nodes_featureids", &[-1, 0, 0])));
    assert!(m.contains("negative or too large"), "{m}");
}

#[test]
fn computing_from_constants_alone() {
    // tract would compute this outer product, 2^20 by 2^20, while loading.
    let mut m = graphs::logistic();
    let g = graph(&mut m);
    g.initializer
        .push(floats("column", &[1 << 20, 1], &vec![1.0; 1 << 20]));
    g.initializer
        .push(floats("row", &[1, 1 << 20], &vec![1.0; 1 << 20]));
    g.node
        .push(node("Add", "outer", &["column", "row"], &["big"]));
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &[
            "node \"outer\" (Add) computes from constants only",
            "do_constant_folding=True",
        ],
    );

    // A shape, which tract computes from too, is not on the list.
    let mut m = graphs::logistic();
    graph(&mut m)
        .node
        .push(node("Shape", "shape", &["x"], &["dims"]));
    assert_says(
        &refused(&m),
        ErrorCode::Policy,
        &["operator ai.onnx:Shape of node \"shape\""],
    );
}

#[test]
fn names_given_twice_or_never() {
    // A constant named like the input would pass for computing from it.
    let mut m = graphs::logistic();
    let mut konst = node("Constant", "shadow", &[], &["x"]);
    konst.attribute.push(AttributeProto {
        name: "value".into(),
        t: Some(floats("", &[1, 3], &[1.0, 2.0, 3.0])),
        ..Default::default()
    });
    graph(&mut m).node.insert(0, konst);
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &["the name \"x\" is given to two tensors (again by node \"shadow\")"],
    );

    let mut m = graphs::logistic();
    graph(&mut m).output.push(matrix("nowhere", 1));
    assert_says(
        &refused(&m),
        ErrorCode::Invalid,
        &["output \"nowhere\" is not computed"],
    );
}
