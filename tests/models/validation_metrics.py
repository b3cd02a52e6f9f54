"""scikit-learn's validation metrics of predictions, per group (tests/tests/it/validation.rs).

    python validation_metrics.py PREDICTIONS_CSV THRESHOLDS OUT_JSON

PREDICTIONS_CSV has a header "p,y,group" (group: a label such as "all",
"sex=F" or a site; a row may appear under several groups). THRESHOLDS is
comma-separated. Writes, per group:

    auc          sklearn.metrics.roc_auc_score
    brier        sklearn.metrics.brier_score_loss
    slope, intercept
                 the calibration slope and its intercept: a logistic
                 regression of y on logit(p) (p clipped to [1e-9, 1 - 1e-9],
                 as Plexus does), sklearn LogisticRegression without penalty,
                 solved by Newton's method (newton-cholesky) to tol 1e-14
    citl         calibration in the large: the intercept of a logistic
                 regression with logit(p) as offset, by Newton's method here
                 (scikit-learn has no offset)
    thresholds   for each threshold t: tp, fp, tn, fn of calling p >= t
                 positive (sklearn.metrics.confusion_matrix)
"""

import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

CLIP = 1e-9


def citl(z, y):
    c = 0.0
    for _ in range(100):
        mu = 1.0 / (1.0 + np.exp(-(c + z)))
        step = np.sum(y - mu) / np.sum(mu * (1.0 - mu))
        c += step
        if abs(step) < 1e-15:
            break
    return c


def metrics(p, y, thresholds):
    z = np.log(np.clip(p, CLIP, 1 - CLIP) / (1 - np.clip(p, CLIP, 1 - CLIP)))
    fit = LogisticRegression(penalty=None, solver="newton-cholesky", tol=1e-14, max_iter=1000)
    fit.fit(z.reshape(-1, 1), y)
    out = {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "auc": float(roc_auc_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "slope": float(fit.coef_[0][0]),
        "intercept": float(fit.intercept_[0]),
        "citl": float(citl(z, y)),
        "thresholds": [],
    }
    for t in thresholds:
        tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]).ravel()
        out["thresholds"].append(
            {"threshold": t, "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}
        )
    return out


def main(path, thresholds, out):
    thresholds = [float(t) for t in thresholds.split(",")]
    rows = [line.strip().split(",") for line in open(path).readlines()[1:] if line.strip()]
    groups = {}
    for p, y, g in rows:
        groups.setdefault(g, ([], []))
        groups[g][0].append(float(p))
        groups[g][1].append(int(y))
    result = {
        g: metrics(np.array(p, dtype=np.float64), np.array(y, dtype=np.int64), thresholds)
        for g, (p, y) in groups.items()
    }
    json.dump(result, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
