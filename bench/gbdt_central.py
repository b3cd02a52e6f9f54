"""The centralised baseline of `plexus-bench trees`: LightGBM trained on
the union of the sites' complete cases, with the features Plexus used and
the same settings, and both models' AUC on held-out patients.

    python gbdt_central.py DIR FEATURES TREES DEPTH

DIR holds train.bin and holdout.bin (rows of FEATURES feature values then
the outcome, little-endian float64) and plexus.bin (Plexus's predicted
probability for each held-out row). Prints one JSON object: fit_seconds
(LightGBM's fit alone, on the machine's cores), auc_lightgbm, auc_plexus,
lightgbm (its version).
"""

import json
import os
import sys
import time

import lightgbm as lgb
import numpy as np
from sklearn.metrics import roc_auc_score


def load(path, width):
    m = np.fromfile(path, dtype="<f8")
    return m.reshape(-1, width)


def main(folder, features, trees, depth):
    features, trees, depth = int(features), int(trees), int(depth)
    train = load(os.path.join(folder, "train.bin"), features + 1)
    held = load(os.path.join(folder, "holdout.bin"), features + 1)
    plexus = np.fromfile(os.path.join(folder, "plexus.bin"), dtype="<f8")
    x, y = train[:, :features], train[:, features]
    hx, hy = held[:, :features], held[:, features]
    model = lgb.LGBMClassifier(
        n_estimators=trees,
        max_depth=depth,
        num_leaves=2**depth,
        learning_rate=0.1,
        reg_lambda=1.0,
        min_child_weight=1.0,
        min_child_samples=5,
        max_bin=32,
        n_jobs=os.cpu_count(),
        verbose=-1,
    )
    started = time.perf_counter()
    model.fit(x, y)
    fit = time.perf_counter() - started
    print(
        json.dumps(
            {
                "fit_seconds": fit,
                "auc_lightgbm": roc_auc_score(hy, model.predict_proba(hx)[:, 1]),
                "auc_plexus": roc_auc_score(hy, plexus),
                "lightgbm": lgb.__version__,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
