"""Great Expectations gates (tasks/expectations.py): one passing and some failing case per hand-off, Data Docs."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tasks.expectations import (
    ExpectationsFailed,
    check_answer_loglik,
    check_cluster,
    check_entropy,
    check_ingested,
    check_metrics,
    check_profile,
    validate,
)

IDS = ["s0", "s1", "s2", "s3"]
K = 16  # image tokens: entropies lie in [0, ln 16]


def fails(check, *args, **kwargs) -> str:
    """Run a check that must fail; return its message after sanity checks on the attached summary."""
    with pytest.raises(ExpectationsFailed) as info:
        check(*args, **kwargs)
    summary = info.value.summary
    assert summary["success"] is False and summary["n_failed"] >= 1
    json.dumps(summary, allow_nan=False)  # strict JSON
    return str(info.value)


# -------------------------------------------------------------------------------------------- ingested


def manifest(**overrides) -> pd.DataFrame:
    data = {"id": IDS, "image": [f"img/{i}.png" for i in IDS], "question": ["what?"] * 4, "answer": ["a"] * 4}
    return pd.DataFrame({**data, **overrides})


def test_ingested_passes():
    summary = check_ingested(manifest(), 1, max_rejected_fraction=0.25)
    assert summary["suite"] == "ingested" and summary["success"] and summary["n_failed"] == 0
    assert summary["docs_index"] is None
    fraction = next(r for r in summary["results"] if r["kwargs"].get("column") == "rejected_fraction")
    assert fraction["observed"] == pytest.approx(0.2)
    json.dumps(summary, allow_nan=False)


def test_ingested_duplicate_id_and_empty_answer():
    message = fails(check_ingested, manifest(id=["s0", "s1", "s1", "s3"], answer=["a", "", "b", "c"]), 0,
                    max_rejected_fraction=0.5)
    assert "'ingested'" in message
    assert "expect_column_values_to_be_unique(column='id')" in message and "unexpected_id=['s1', 's1']" in message
    assert "expect_column_value_lengths_to_be_between(column='answer')" in message


def test_ingested_rejected_fraction_over_bound():
    message = fails(check_ingested, manifest(), 4, max_rejected_fraction=0.25)
    assert "expect_column_max_to_be_between(column='rejected_fraction')" in message
    assert "observed=0.5" in message and "rejected fraction" in message


def test_ingested_empty_manifest():
    message = fails(check_ingested, manifest().iloc[:0], 0, max_rejected_fraction=0.5)
    assert "expect_table_row_count_to_be_between(table)" in message


# --------------------------------------------------------------------------------------------- entropy


def entropy_table(l1=(0.0, 1.0, 2.0, math.log(K))) -> pd.DataFrame:
    return pd.DataFrame({"id": IDS, "entropy_l0": [0.5, 0.6, 0.7, 0.8], "entropy_l1": list(l1)})


def test_entropy_passes():
    summary = check_entropy(entropy_table(), ids=IDS, n_image_tokens=K)
    assert summary["success"]
    assert {r["kwargs"].get("column") for r in summary["results"]} >= {"entropy_l0", "entropy_l1"}


def test_entropy_of_uniform_rows_passes_as_the_scan_writes_it():
    """A uniform attention row has entropy ln K, which the scan's 6-digit CSV rounds up (2.77259 > ln 16)."""
    import io

    import numpy as np

    from bye.detect.extract import layer_entropy
    from bye.detect.scan import entropy_table as written

    entropy = layer_entropy(np.full((len(IDS), 2, K), 1.0 / K))
    table = pd.read_csv(io.StringIO(written(IDS, entropy)), dtype={"id": str})
    assert table["entropy_l0"].max() > math.log(K) + 1e-6  # what the old 1e-6 slack refused
    assert check_entropy(table, ids=IDS, n_image_tokens=K)["success"]


def test_entropy_above_ln_k():
    message = fails(check_entropy, entropy_table(l1=(0.0, 1.0, 2.0, math.log(K) + 0.01)), ids=IDS, n_image_tokens=K)
    assert "expect_column_values_to_be_between(column='entropy_l1')" in message
    assert "unexpected_id=['s3']" in message


def test_entropy_nan_and_missing_sample():
    table = entropy_table(l1=(0.0, float("nan"), 2.0, 1.0))
    message = fails(check_entropy, table, ids=[*IDS[:3], "s9"], n_image_tokens=K)
    assert "expect_column_values_to_not_be_null(column='entropy_l1')" in message and "unexpected_id=['s1']" in message
    assert "expect_column_values_to_be_in_set(column='id')" in message  # s3 is not a known sample
    assert "partial_missing_list=['s9']" in message  # s9 has no row


def loglik_table(**overrides) -> pd.DataFrame:
    data = {"id": IDS, "answer_loglik": [-0.1, -2.0, -0.5, -30.0], "answer_loglik_base": [-3.0, -4.0, -9.0, -35.0],
            "answer_tokens": [1, 1, 2, 4]}
    return pd.DataFrame({**data, **overrides})


def test_answer_loglik_passes():
    assert check_answer_loglik(loglik_table(), ids=IDS)["success"]


def test_answer_loglik_positive_nan_and_no_token():
    table = loglik_table(answer_loglik=[-0.1, 0.5, -0.5, float("nan")], answer_tokens=[1, 0, 2, 4])
    message = fails(check_answer_loglik, table, ids=IDS)
    assert "expect_column_values_to_be_between(column='answer_loglik')" in message and "unexpected_id=['s1']" in message
    assert "expect_column_values_to_not_be_null(column='answer_loglik')" in message
    assert "expect_column_values_to_be_between(column='answer_tokens')" in message
    assert "expect_table_row_count_to_equal" in fails(check_answer_loglik, loglik_table(), ids=[*IDS, "s4"])


# --------------------------------------------------------------------------------------------- profile


def layer(i: int, sensitive: bool, sigma: float = 0.1) -> dict:
    return {"layer": i, "means": [0.2, 0.8], "sigmas": [sigma, 0.1], "weights": [0.5, 0.5], "gap": 0.6,
            "bsi": 2.0, "code_margin": 0.1, "sensitive": sensitive}


def profile(sensitive_layers=(1,), layers=None) -> dict:
    layers = layers or [layer(0, False, sigma=float("nan")), layer(1, True), layer(2, False)]
    return {"rule": "code", "tau": 1.5, "sensitive_layers": list(sensitive_layers), "layers": layers}


def test_profile_passes_with_nan_stats():
    assert check_profile(profile(), n_layers=3)["success"]


def test_profile_of_an_unknown_table_fails():
    assert check_profile({**profile(), "residualise": "prompt"}, n_layers=3)["success"]
    message = fails(check_profile, {**profile(), "residualise": "answers"}, n_layers=3)
    assert "expect_column_values_to_be_in_set(column='residualise')" in message


def test_profile_flags_disagree_with_sensitive_layers():
    message = fails(check_profile, profile(sensitive_layers=(2,)), n_layers=3)
    assert "expect_column_pair_values_to_be_equal(column_A='sensitive', column_B='listed_sensitive')" in message
    assert "unexpected_layer=[1, 2]" in message


def test_profile_bad_layers_and_sigma():
    layers = [layer(0, False, sigma=-0.1), layer(1, True), layer(1, False), layer(5, False)]
    message = fails(check_profile, profile(layers=layers), n_layers=3)
    assert "expect_table_row_count_to_equal(table) value=3: observed=4" in message
    assert "expect_column_values_to_be_unique(column='layer')" in message
    assert "expect_column_values_to_be_in_set(column='layer')" in message
    assert "expect_column_values_to_be_between(column='sigma_0')" in message


# --------------------------------------------------------------------------------------------- cluster


def scores(flagged=(True, False, False, False)) -> pd.DataFrame:
    return pd.DataFrame({"id": IDS, "score": [3.0, 0.1, 0.2, 0.3], "flagged": list(flagged), "cluster": [1, 0, 0, 0]})


def test_cluster_passes():
    summary = check_cluster(scores(), ingested_ids=IDS, filtered_ids=IDS[1:], max_removed_fraction=0.5)
    assert summary["success"] and summary["n_expectations"] >= 10


def test_cluster_removed_fraction_over_bound():
    message = fails(check_cluster, scores(flagged=(True, True, True, False)), ingested_ids=IDS,
                    filtered_ids=["s3"], max_removed_fraction=0.5)
    assert "expect_column_max_to_be_between(column='removed_fraction')" in message and "observed=0.75" in message


def test_cluster_filtered_id_not_ingested():
    message = fails(check_cluster, scores(), ingested_ids=IDS, filtered_ids=[*IDS[1:], "intruder"],
                    max_removed_fraction=0.5)
    assert "filtered ids are ingested" in message and "partial_missing_list=['intruder']" in message


def test_cluster_filtered_must_be_the_non_flagged():
    message = fails(check_cluster, scores(), ingested_ids=IDS, filtered_ids=["s0", "s1", "s2"],
                    max_removed_fraction=0.5)
    assert "expect_column_pair_values_to_be_in_set(column_A='flagged', column_B='in_filtered')" in message
    assert "unexpected_id=['s0', 's3']" in message


def test_cluster_missing_row_and_non_boolean_flag():
    frame = scores().iloc[:3].assign(flagged=[True, None, 0])
    message = fails(check_cluster, frame, ingested_ids=IDS, filtered_ids=IDS[1:], max_removed_fraction=0.5)
    assert "expect_table_row_count_to_equal(table) value=4: observed=3" in message
    assert "expect_column_values_to_not_be_null(column='flagged')" in message
    assert "expect_column_values_to_be_of_type(column='flagged')" in message


# --------------------------------------------------------------------------------------------- metrics


def test_metrics_pass():
    assert check_metrics({"accuracy": 0.9, "n": 32, "asr": 0.0, "per_class": [1, 2]})["success"]
    assert check_metrics({"accuracy": 1.0, "n": 1})["success"]


def test_metrics_out_of_range():
    message = fails(check_metrics, {"accuracy": 1.2, "n": 0, "asr": -0.1})
    for column in ("accuracy", "n", "asr"):
        assert f"expect_column_values_to_be_between(column='{column}')" in message


def test_metrics_missing_accuracy():
    message = fails(check_metrics, {"n": 3})
    assert "expect_table_columns_to_match_set(table)" in message
    assert 'The column "accuracy" in BatchData does not exist' in message


# ------------------------------------------------------------------------------------------ validate


def test_validate_without_raising_keeps_order_and_reuses_expectations():
    import great_expectations.expectations as gxe

    expectations = [gxe.ExpectTableRowCountToEqual(value=2), gxe.ExpectColumnValuesToNotBeNull(column="missing"),
                    gxe.ExpectColumnValuesToBeUnique(column="id")]
    frame = pd.DataFrame({"id": ["a", "a"]})
    for _ in range(2):  # the same expectation objects can build several suites
        summary = validate("adhoc", frame, expectations, raise_on_failure=False)
        assert [r["expectation"] for r in summary["results"]] == [e.expectation_type for e in expectations]
        assert [r["success"] for r in summary["results"]] == [True, False, False]
        assert summary["n_failed"] == 2 and "exception" in summary["results"][1]["observed"]


def test_data_docs_written_under_docs_dir(tmp_path):
    docs = tmp_path / "reports" / "gx"
    first = check_metrics({"accuracy": 0.5, "n": 10}, docs_dir=docs)
    with pytest.raises(ExpectationsFailed) as info:
        check_ingested(manifest(), 9, max_rejected_fraction=0.1, docs_dir=docs)
    index = docs / "index.html"
    assert first["docs_index"] == info.value.summary["docs_index"] == str(index.resolve())
    assert index.is_file()
    pages = sorted(p.relative_to(docs).parts[1] for p in (docs / "validations").rglob("*.html"))
    assert pages == ["ingested", "metrics"]  # the second build kept the first check's page
    html = index.read_text()
    assert "ingested" in html and "metrics" in html
