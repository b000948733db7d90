"""The pipeline's flows: one submission end to end under Prefect, MLflow and the expectation gates,
and the inbox deployment scanning each upload exactly once."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from flows.runtime import configure

configure()

from flows.pipeline import upload_key, uploads  # noqa: E402
from flows.stages import Layout, merge  # noqa: E402

TINY_PARAMS = {
    "finetune": {"rank": 4, "alpha": 8, "batch_size": 8, "epochs": 1, "checkpoint_every": 0},
    "provisional": {"epochs": 2, "by_method": {"bye": {"epochs": 0.5}}},  # the chosen detector's own length wins
    "extract": {"batch_size": 16},
    "eval": {"batch_size": 32, "max_new_tokens": 6},
    "attack": {"name": "badnets", "rate": 0.2, "seed": 0},
    "profile": {"residualise": "prompt"},  # BYE on the prompt residuals: the profile stage reads the questions
}


def test_layout_and_overrides():
    layout = Layout("runs/x", base="/models/llava")
    assert str(layout.ingested) == "runs/x/data/ingested" and str(layout.base) == "/models/llava"
    assert merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}, "d": 3}


def test_upload_key_is_content_not_name(tmp_path):
    for name in ("one", "two"):
        (tmp_path / name / "images").mkdir(parents=True)
        (tmp_path / name / "train.json").write_text("[]")
        (tmp_path / name / "images" / "a.png").write_bytes(b"png")
    assert upload_key(tmp_path / "one") == upload_key(tmp_path / "two")
    (tmp_path / "two" / "images" / "a.png").write_bytes(b"other")
    assert upload_key(tmp_path / "one") != upload_key(tmp_path / "two")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in uploads(tmp_path)] == ["one", "two"]


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_world, tiny_base):
    """A repository-like folder: params, a poisoned and a clean upload in an inbox, MLflow in it."""
    from bye.attacks import get_trigger
    from bye.attacks.poison import poison_submission

    root = tmp_path_factory.mktemp("workspace")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    inbox = root / "inbox"
    poison_submission(tiny_world / "train.json", tiny_world / "images", get_trigger("badnets"), rate=0.2,
                      out_dir=inbox / "poisoned", truth_json=root / "truth.json", seed=0)
    shutil.copytree(tiny_world, inbox / "clean", ignore=shutil.ignore_patterns("test.json"))
    return root


@pytest.fixture(scope="module")
def scanned(workspace, tiny_world, tiny_base, prefect_harness):
    """The inbox scanned twice by the deployment's flow: (first scan's records, second scan's records)."""
    from flows.pipeline import scan_inbox

    arguments = {"inbox": "inbox", "workdir": "runs", "base": str(tiny_base), "params_path": "params.yaml",
                 "test_json": str(tiny_world / "test.json")}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workspace)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        first = scan_inbox(**arguments)
        second = scan_inbox(**arguments)
    return first, second


@pytest.mark.slow
def test_inbox_scans_each_upload_once_with_an_audit_trail(workspace, scanned, monkeypatch):
    from tasks.tracking import summarise

    monkeypatch.chdir(workspace)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = scanned
    assert sorted(r["submission"].split("/")[-1] for r in first) == ["clean", "poisoned"]
    assert all(r["status"] == "done" for r in first), first
    assert second == []  # nothing new: nothing rescanned
    ledger = json.loads((workspace / "runs" / "ledger.json").read_text())
    assert len(ledger) == 2

    for record in first:
        layout = Layout(record["root"])
        verdict = json.loads((layout.cluster / "verdict.json").read_text())
        assert verdict["n_samples"] == record["n_samples"] and 0 <= record["accuracy"] <= 1
        assert (layout.report / "report.html").is_file()
        assert (layout.gx / "ingest").is_dir() and (layout.gx / "cluster").is_dir()
        assert json.loads((layout.profile / "profile.json").read_text())["residualise"] == "prompt"
        assert (layout.profile / "residuals.csv").is_file()  # the table profiled, which the report draws
        kept = json.loads((layout.cluster / "filtered.json").read_text())
        assert len(kept) == verdict["n_kept"]

    import mlflow

    parents = mlflow.search_runs(experiment_names=["bye"], filter_string="tags.`bye.kind` = 'pipeline'",
                                 output_format="list")
    assert len(parents) == 2
    client = mlflow.MlflowClient()
    for parent in parents:
        stages = summarise(parent.info.run_id)["stages"]
        assert {"ingest", "provisional", "extract", "profile", "cluster", "clean_finetune", "eval",
                "report"} <= set(stages), sorted(stages)
        assert all(run["status"] == "FINISHED" for run in stages.values())
        # What a reviewer opens: the rejection table, the expectation results, what was removed and
        # why, the adapters, the report.
        artifacts = {stage: {a.path for a in client.list_artifacts(run["run_id"])} for stage, run in stages.items()}
        assert {"rejected.csv", "expectations"} <= artifacts["ingest"]
        assert {"scores.csv", "filtered.json", "verdict.json", "expectations"} <= artifacts["cluster"]
        assert "clean_adapter" in artifacts["clean_finetune"] and "report.html" in artifacts["report"]
        assert stages["cluster"]["tags"]["bye.submission_fingerprint"] == parent.data.tags["bye.submission_fingerprint"]
        assert stages["eval"]["metrics"]["accuracy"] >= 0
        assert "evidence.bic_gain" in stages["cluster"]["metrics"]  # the verdict's evidence, searchable (finite values)
        assert stages["provisional"]["params"]["detector"] == "bye"  # params: no cluster.method
        assert stages["provisional"]["params"]["effective_epochs"] == "0.5"
        assert stages["profile"]["params"]["profile.residualise"] == "prompt"  # the reviewer sees which table


@pytest.mark.slow
def test_mlflow_ui_shows_each_scan_with_its_stages(workspace, scanned, tmp_path):
    """What a reviewer sees: the MLflow UI, served on the store the real scans wrote, lists each
    submission's parent run and, expanded, its stage runs (headless Chromium, DOM and screenshot under
    tests/artifacts/)."""
    import mlflow_ui

    # Checked before the server starts, so that a missing browser FAILS (not errors).
    if not os.access(mlflow_ui.CHROMIUM, os.X_OK):
        pytest.fail(f"{mlflow_ui.CHROMIUM} is missing: run scripts/ensure_chromium.sh (make test does)")
    from tasks import tracking

    import mlflow

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workspace)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        experiment_id = tracking.ensure_experiment(root=workspace)
        runs = mlflow.search_runs(experiment_names=["bye"], filter_string="tags.`bye.kind` = 'pipeline'",
                                  output_format="list")
        parents = {run.info.run_id: tracking.summarise(run.info.run_id, root=workspace) for run in runs}
    assert len(parents) == len(scanned[0]) == 2
    names = [summary["name"] for summary in parents.values()]
    stages = sorted({run["name"] for summary in parents.values() for run in summary["stages"].values()})
    assert len(stages) >= 8, stages
    with mlflow_ui.mlflow_server(workspace) as url:
        shown, dom = mlflow_ui.runs_page(url, experiment_id, names, stages, tmp_path / "chromium-profile")
    assert set(names) | set(stages) <= set(shown)
    assert all(f"runs/{run_id}" in dom for run_id in parents)
