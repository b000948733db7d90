"""Detection metrics against ground truth (read only by evaluation, never by a detector)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score


def detection_metrics(truth: np.ndarray, flagged: np.ndarray, scores: np.ndarray | None = None) -> dict:
    """Precision / recall / F1 of ``flagged`` (bool) against ``truth`` (1 = poisoned); AUROC of
    ``scores`` (higher = more suspicious) when both classes are present; removal rate."""
    truth = np.asarray(truth).astype(bool)
    flagged = np.asarray(flagged).astype(bool)
    precision, recall, f1, _ = precision_recall_fscore_support(truth, flagged, average="binary", zero_division=0)
    result = {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "removed": float(flagged.mean()) if len(flagged) else 0.0,
        "n": int(len(truth)),
        "n_poisoned": int(truth.sum()),
        "n_flagged": int(flagged.sum()),
        "kept_clean_fraction": float((~flagged[~truth]).mean()) if (~truth).any() else float("nan"),
    }
    if scores is not None and 0 < truth.sum() < len(truth):
        finite = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf, neginf=-1e300, posinf=1e300)
        result["auroc"] = float(roc_auc_score(truth, finite))
    else:
        result["auroc"] = float("nan")
    return result


def score_scan(scores_csv: str | Path, truth_json: str | Path) -> dict:
    """Metrics of a scan's ``scores.csv`` against a ground-truth file ``{id: 0|1}``."""
    import pandas as pd

    frame = pd.read_csv(scores_csv, dtype={"id": str})
    truth = json.loads(Path(truth_json).read_text())
    missing = set(frame["id"]) - set(truth)
    if missing:
        raise ValueError(f"{len(missing)} scanned ids have no ground truth, e.g. {sorted(missing)[:3]}")
    labels = frame["id"].map(truth).to_numpy()
    return detection_metrics(labels, frame["flagged"].to_numpy(dtype=bool), frame["score"].to_numpy(dtype=float))
