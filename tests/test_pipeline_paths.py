"""``dvc repro`` on a customer's upload and a checkpoint of another family, named in params ``pipeline``.

The demo's own stages (world, base, poisoned submission) must not run, nor write where the
params point; the scan, the fine-tunes and the evaluation read the named checkpoint, upload and
test folder; DVC tracks them as dependencies, and every stage's MLflow run names the checkpoint.
"""

from __future__ import annotations

import json
import zipfile

import mlflow
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from bye.cli import main
from bye.data.submission import read_manifest
from families import build_gemma3
from tiny import copy_pipeline, repro

PARAMS = {
    "finetune": {"rank": 4, "alpha": 8, "batch_size": 8, "epochs": 1, "checkpoint_every": 0, "seed": 0},
    "provisional": {"epochs": 1, "by_method": {}},
    "extract": {"batch_size": 8},
    "eval": {"batch_size": 16, "max_new_tokens": 4},
    "attack": {"name": "badnets", "rate": 0.2, "seed": 0},
}


@pytest.mark.slow
def test_repro_scans_the_upload_and_checkpoint_that_params_name(tiny_world, prefect_server, tmp_path):
    checkpoint = tmp_path / "gemma3"
    model, processor = build_gemma3()
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    folder = tmp_path / "upload"
    result = CliRunner().invoke(main, ["poison", str(tiny_world / "train.json"), "--attack", "badnets", "--rate", "0.2",
                                       "--out", str(folder), "--truth", str(tmp_path / "truth.json")])
    assert result.exit_code == 0, result.output
    upload = tmp_path / "upload.zip"  # an archive, as a customer sends it
    with zipfile.ZipFile(upload, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder))
    root = copy_pipeline(tmp_path / "repo", {**PARAMS, "pipeline": {
        "base": str(checkpoint), "submission": str(upload), "test": str(tiny_world)}})

    output = repro(root, "report")
    for demo in ("world", "base", "submission"):
        assert f"Running stage '{demo}'" not in output, output
    assert not (root / "models" / "base").exists() and not (root / "data" / "world").exists()
    assert not (root / "data" / "submission").exists() and not (root / "data" / "truth").exists()

    ids = [s.id for s in read_manifest(folder / "train.json")]
    scores = pd.read_csv(root / "reports" / "cluster" / "scores.csv", dtype={"id": str})
    assert list(scores["id"]) == ids
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    assert metrics["n"] == len(read_manifest(tiny_world / "test.json")) and "asr" in metrics
    by_family = metrics["asr_by_family"]  # where the backdoor fires: short answers, multiple choice
    assert by_family and sum(v["n"] for v in by_family.values()) == metrics["n_asr"]
    from tasks import tracking  # the reviewer sees it in the eval stage's MLflow run

    evals = tracking._client(root).search_runs([tracking.ensure_experiment(root=root)], "tags.`bye.stage` = 'eval'")
    assert evals and {f"{family}_asr" for family in by_family} <= set(evals[0].data.metrics)
    assert (root / "reports" / "report" / "report.html").is_file()

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert str(checkpoint) in [d["path"] for d in lock["provisional_finetune"]["deps"]]
    assert str(upload) in [d["path"] for d in lock["ingest"]["deps"]]
    assert str(tiny_world) in [d["path"] for d in lock["eval"]["deps"]]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bye").experiment_id],
                              filter_string="tags.`bye.kind` = 'stage'")
    assert {r.data.tags["bye.stage"] for r in runs} >= {"provisional", "extract", "cluster", "eval"}
    assert {r.data.tags["bye.base"] for r in runs} == {str(checkpoint)}
    assert "Running stage" not in repro(root, "report")  # nothing changed, nothing reruns
