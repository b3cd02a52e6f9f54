"""Trains and exports the models plexus-onnx's tests load (onnx/tests/exported.rs).

    python export_models.py OUT_DIR

Trains a scikit-learn LogisticRegression and a LightGBM LGBMClassifier on a
fixed synthetic data set, exports both to ONNX with zipmap=False (so their
probabilities are a float [N, 2] tensor), and writes to OUT_DIR:

    logistic.onnx, lightgbm.onnx   the models
    rows.csv                       rows to score, no header, one a line (float32)
    logistic.csv, lightgbm.csv     each model's predict_proba[:, 1] for those rows
"""

import os
import sys

import lightgbm
import numpy as np
import onnxmltools
from onnxmltools.convert.common.data_types import FloatTensorType as MlFloatTensorType
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

FEATURES = 4
# The highest default-domain opset onnxmltools 1.16 writes.
OPSET = 15


def data(rng, n):
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    z = 0.8 * x[:, 0] - 1.2 * x[:, 1] + 0.5 * x[:, 2] * x[:, 3] + rng.normal(scale=0.5, size=n)
    return x, (z > 0).astype(np.int64)


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(20240611)
    x, y = data(rng, 600)
    rows, _ = data(rng, 64)

    logistic = LogisticRegression().fit(x, y)
    onx = convert_sklearn(
        logistic,
        initial_types=[("input", FloatTensorType([None, FEATURES]))],
        options={id(logistic): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    with open(os.path.join(out, "logistic.onnx"), "wb") as f:
        f.write(onx.SerializeToString())

    gbm = lightgbm.LGBMClassifier(n_estimators=20, max_depth=3, random_state=0, verbose=-1).fit(x, y)
    onx = onnxmltools.convert_lightgbm(
        gbm,
        initial_types=[("input", MlFloatTensorType([None, FEATURES]))],
        zipmap=False,
        target_opset=OPSET,
    )
    with open(os.path.join(out, "lightgbm.onnx"), "wb") as f:
        f.write(onx.SerializeToString())

    np.savetxt(os.path.join(out, "rows.csv"), rows, delimiter=",", fmt="%.9g")
    for name, model in [("logistic", logistic), ("lightgbm", gbm)]:
        p = model.predict_proba(rows.astype(np.float64))[:, 1]
        np.savetxt(os.path.join(out, name + ".csv"), p, fmt="%.17g")


if __name__ == "__main__":
    main(*sys.argv[1:])
