"""Trains the models the model_performance tests validate (tests/tests/it/validation.rs).

    python validation_models.py DATA_CSV OUT_DIR

DATA_CSV has a header: the outcome "y", feature columns named "c:NAME"
(read by the categorical-only logistic model) and "x:NAME" (read by the
logistic model and LightGBM), in the order the models take them. Writes to
OUT_DIR, exported with zipmap=False so each gives float probabilities [N, 2]:

    logistic_cat.onnx   scikit-learn LogisticRegression on the c: columns
    logistic.onnx       scikit-learn LogisticRegression on the x: columns
    lightgbm.onnx       LightGBM LGBMClassifier on the x: columns
    forbidden.onnx      a one-node model calling an operator no runtime
                        should run ("ReadFile" in domain "com.example")
"""

import os
import sys

import lightgbm
import numpy as np
import onnx
import onnxmltools
from onnx import TensorProto, helper
from onnxmltools.convert.common.data_types import FloatTensorType as MlFloatTensorType
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

# The highest default-domain opset onnxmltools 1.16 writes.
OPSET = 15


def sklearn_onnx(model, width):
    return convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, width]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )


def main(data, out):
    os.makedirs(out, exist_ok=True)
    header = open(data).readline().strip().split(",")
    table = np.loadtxt(data, delimiter=",", skiprows=1, ndmin=2)
    y = table[:, header.index("y")].astype(np.int64)
    cat = [i for i, h in enumerate(header) if h.startswith("c:")]
    cont = [i for i, h in enumerate(header) if h.startswith("x:")]
    xc = table[:, cat].astype(np.float32)
    xx = table[:, cont].astype(np.float32)

    m = LogisticRegression().fit(xc, y)
    open(os.path.join(out, "logistic_cat.onnx"), "wb").write(
        sklearn_onnx(m, len(cat)).SerializeToString()
    )
    m = LogisticRegression(max_iter=1000).fit(xx, y)
    open(os.path.join(out, "logistic.onnx"), "wb").write(
        sklearn_onnx(m, len(cont)).SerializeToString()
    )
    gbm = lightgbm.LGBMClassifier(
        n_estimators=30, max_depth=3, learning_rate=0.1, random_state=0, verbose=-1
    ).fit(xx, y)
    onx = onnxmltools.convert_lightgbm(
        gbm,
        initial_types=[("input", MlFloatTensorType([None, len(cont)]))],
        zipmap=False,
        target_opset=OPSET,
    )
    open(os.path.join(out, "lightgbm.onnx"), "wb").write(onx.SerializeToString())

    graph = helper.make_graph(
        [helper.make_node("ReadFile", ["input"], ["probabilities"], domain="com.example")],
        "forbidden",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(cont)])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 1)],
    )
    open(os.path.join(out, "forbidden.onnx"), "wb").write(model.SerializeToString())


if __name__ == "__main__":
    main(*sys.argv[1:])
