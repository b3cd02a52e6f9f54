"""Scores an ONNX model with ONNX Runtime, for the model tests.

    python score_onnx.py MODEL.onnx FEATURES.csv OUT.csv

FEATURES.csv has no header, a row a patient and a column a feature (the
model's input, float32). The model is first checked with onnx's checker.
OUT.csv gets one line per patient with every output of the model, in the
model's output order, as 17 significant digits.
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort


def main(model_path, features_path, out_path):
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    x = np.loadtxt(features_path, delimiter=",", dtype=np.float32, ndmin=2)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = session.run(None, {name: x})
    columns = np.column_stack([np.asarray(o, dtype=np.float64).reshape(len(x), -1) for o in outputs])
    np.savetxt(out_path, columns, delimiter=",", fmt="%.17g")


if __name__ == "__main__":
    main(*sys.argv[1:])
