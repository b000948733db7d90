"""tasks.tracking: one parent run per (submission, params, commit), one nested run per stage, all under tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasks import tracking

FP = "0123456789abcdef"
PARAMS = {"extract": {"layers": [2, 3], "heads": "all"}, "cluster": {"k": 2, "method": "gmm"}, "seed": 7}


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory):
    """An empty MLflow database, created once: creating the schema takes seconds, copying it does not."""
    path = tmp_path_factory.mktemp("template")
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{path / 'mlflow.db'}").search_experiments()  # tables are created on first use
    return path / "mlflow.db"


@pytest.fixture
def root(tmp_path, monkeypatch, empty_db):
    """A fresh store in tmp_path; no tracking env leaks in or out."""
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
                 tracking.PARENT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # anything written relative to the cwd lands here, not in the repo
    return tmp_path


def _stage(root, stage, params=PARAMS, **kw):
    return tracking.stage_run(stage, fingerprint=FP, params=params, submission="data/submission", root=root, **kw)


def test_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even if /tmp sits in a work tree
    assert tracking.git_commit(tmp_path) == "unknown"
    assert tracking.params_hash({"b": 1, "a": {"y": 2, "x": 1}}) == tracking.params_hash({"a": {"x": 1, "y": 2}, "b": 1})
    assert len(tracking.params_hash(PARAMS)) == 12 and tracking.params_hash(PARAMS) != tracking.params_hash({})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_two_stages_share_one_parent(root):
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with _stage(root, "extract") as run:
        run.metrics({"n_samples": 96, "entropy": {"mean": 1.5, "max": float("nan")}, "note": "text"})
        run.folder(adapter, "adapter")
        run.json({"layers": [2, 3]}, "extract/summary.json")
    with _stage(root, "cluster") as run:
        run.params({"extra": {"flag": True}})
        run.params({"cluster": PARAMS["cluster"]})  # the section again, as flows/stages.py does: same values, fine
        run.table(pd.DataFrame({"sample": ["a", "b"], "score": [0.1, 0.9]}), "scores/scores.csv", mlflow_table=True)
        run.tag("bye.flagged", 1)
    parent = tracking.parent_run(FP, PARAMS, submission="data/submission", root=root)  # a third caller: same one

    summary = tracking.summarise(parent, root)
    assert summary["name"] == "scan submission 01234567" and summary["status"] == "FINISHED"
    assert summary["tags"] | {"bye.status": "finished cluster", "bye.last_stage": "cluster"} == summary["tags"]
    assert summary["tags"]["bye.kind"] == "pipeline" and summary["tags"]["bye.submission"] == "data/submission"
    assert summary["tags"]["bye.params_hash"] == tracking.params_hash(PARAMS)
    assert summary["tags"]["bye.git_commit"] == "unknown"
    assert summary["params"]["cluster.k"] == "2" and summary["params"]["extract.layers"] == "[2, 3]"
    assert [r["stage"] for r in summary["runs"]] == [r["name"] for r in summary["runs"]] == ["extract", "cluster"]
    extract, cluster = summary["stages"]["extract"], summary["stages"]["cluster"]
    for stage in (extract, cluster):
        assert stage["status"] == "FINISHED" and stage["tags"]["bye.kind"] == "stage"
        assert stage["tags"]["bye.submission_fingerprint"] == FP
    assert extract["params"] == {"extract.layers": "[2, 3]", "extract.heads": "all"}  # the stage's own section
    assert extract["metrics"] == {"n_samples": 96.0, "entropy.mean": 1.5}  # NaN and text dropped
    assert cluster["params"] == {"cluster.k": "2", "cluster.method": "gmm", "extra.flag": "true"}
    assert cluster["tags"]["bye.flagged"] == "1"

    client = tracking._client(root)
    assert {f.path for f in client.list_artifacts(extract["run_id"])} == {"adapter", "extract"}
    assert [f.path for f in client.list_artifacts(extract["run_id"], "adapter")] == ["adapter/adapter_config.json"]
    assert {f.path for f in client.list_artifacts(cluster["run_id"], "scores")} == {"scores/scores.csv",
                                                                                  "scores/scores.json"}
    csv = client.download_artifacts(cluster["run_id"], "scores/scores.csv", str(root))
    assert pd.read_csv(csv)["score"].tolist() == [0.1, 0.9]
    experiment = client.get_experiment_by_name("bye")
    assert experiment.artifact_location == (root / "mlruns").resolve().as_uri()
    assert (root / "mlruns" / cluster["run_id"] / "artifacts" / "scores" / "scores.csv").is_file()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # mlflow.set_tracking_uri did not leak


def test_separate_processes_join_one_parent(root):
    """Stages run as separate DVC processes: the second finds the parent by its tags, not from memory."""
    code = ("import sys; from tasks import tracking; "
            "cm = tracking.stage_run('ingest', fingerprint=sys.argv[1], params={'seed': 7}, "
            "submission='data/submission', root=sys.argv[2])\n"
            "with cm as run: run.metrics({'n': 1}); print(run.parent_run_id)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code, FP, str(root)], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    with _stage(root, "extract", params={"seed": 7}) as run:
        pass
    assert run.parent_run_id == done.stdout.split()[-1]
    assert list(tracking.summarise(run.parent_run_id, root)["stages"]) == ["ingest", "extract"]


def test_other_params_make_another_parent(root):
    with _stage(root, "extract") as first:
        pass
    with _stage(root, "extract", params={**PARAMS, "seed": 8}) as second:
        pass
    assert first.parent_run_id != second.parent_run_id
    runs = tracking._client(root).search_runs([tracking.ensure_experiment(root=root)], "tags.`bye.kind` = 'pipeline'")
    assert len(runs) == 2


def test_explicit_parent(root, monkeypatch):
    client = tracking._client(root)
    own = client.create_run(tracking.ensure_experiment(root=root), run_name="deployment").info.run_id
    with _stage(root, "ingest", parent_run_id=own) as run:
        assert run.parent_run_id == own
    monkeypatch.setenv(tracking.PARENT_ENV, own)
    monkeypatch.setenv("MLFLOW_RUN_ID", own)  # would make mlflow.start_run resume `own`: ignored, then restored
    with _stage(root, "extract") as run:
        assert run.parent_run_id == own and run.run_id != own
    assert os.environ["MLFLOW_RUN_ID"] == own
    summary = tracking.summarise(own, root)
    assert list(summary["stages"]) == ["ingest", "extract"]
    assert summary["status"] == "RUNNING"  # the owner's to end
    experiment_id = tracking.ensure_experiment(root=root)
    assert client.search_runs([experiment_id], "tags.`bye.kind` = 'pipeline'") == []  # none created by key


def test_failure_marks_runs_and_propagates(root):
    with pytest.raises(RuntimeError, match="boom"):
        with _stage(root, "cluster") as run:
            run.metrics({"partial": 1})
            raise RuntimeError("boom")
    summary = tracking.summarise(run.parent_run_id, root)
    assert summary["status"] == "FAILED"
    assert summary["tags"]["bye.status"] == "failed at cluster" and summary["tags"]["bye.last_stage"] == "cluster"
    [stage] = summary["runs"]
    assert stage["status"] == "FAILED" and stage["metrics"] == {"partial": 1.0}
    import mlflow

    assert mlflow.active_run() is None
    with _stage(root, "cluster") as retry:  # a rerun joins the same parent and clears the failure
        pass
    assert retry.parent_run_id == run.parent_run_id
    summary = tracking.summarise(run.parent_run_id, root)
    assert summary["tags"]["bye.status"] == "finished cluster" and summary["status"] == "FINISHED"
    assert [r["status"] for r in summary["runs"]] == ["FAILED", "FINISHED"]
    assert summary["stages"]["cluster"]["run_id"] == retry.run_id


def test_flatten_and_param_values():
    assert tracking.flatten({"a": {"b": {"c": 1}}, "d": {}}) == {"a.b.c": 1, "d": {}}
    assert tracking._param_value("x" * 7000) == "x" * 6000
    assert tracking._param_value(json.loads("null")) == "null"
    assert tracking._key("a b/c:d(e)") == "a b/c:d_e_"
