import json

import numpy as np
import pytest

from bye.metrics import detection_metrics, score_scan


def test_detection_metrics_on_a_hand_made_case():
    truth = np.array([1, 1, 0, 0, 0, 0])
    flagged = np.array([1, 0, 1, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.3, 0.8, 0.1, 0.2, 0.0])
    m = detection_metrics(truth, flagged, scores)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.5)
    assert m["removed"] == pytest.approx(2 / 6) and m["kept_clean_fraction"] == pytest.approx(0.75)
    # pairs (poisoned, clean) ranked right: 0.9 beats all 4; 0.3 beats 0.1, 0.2, 0.0 -> 7 of 8
    assert m["auroc"] == pytest.approx(7 / 8)


def test_nothing_flagged_gives_zero_recall_not_an_error():
    m = detection_metrics(np.array([1, 0, 0]), np.zeros(3, dtype=bool))
    assert m["recall"] == 0 and m["f1"] == 0 and np.isnan(m["auroc"])


def test_score_scan_joins_by_id(tmp_path):
    (tmp_path / "scores.csv").write_text("id,score,flagged\nb,2.0,True\na,1.0,False\nc,0.5,False\n")
    (tmp_path / "truth.json").write_text(json.dumps({"a": 0, "b": 1, "c": 0}))
    m = score_scan(tmp_path / "scores.csv", tmp_path / "truth.json")
    assert m["f1"] == 1.0 and m["auroc"] == 1.0


def test_score_scan_refuses_ids_without_truth(tmp_path):
    (tmp_path / "scores.csv").write_text("id,score,flagged\nz,2.0,True\n")
    (tmp_path / "truth.json").write_text("{}")
    with pytest.raises(ValueError, match="no ground truth"):
        score_scan(tmp_path / "scores.csv", tmp_path / "truth.json")
