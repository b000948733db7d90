"""Kill ``dvc repro`` with SIGKILL in the middle of a fine-tune and in the middle of extraction, rerun it.

The rerun must complete, skip the stages that had finished, resume the fine-tune from its last
checkpoint and leave no half-written output; and the scan it ends with must equal, byte for byte,
an uninterrupted rerun of the same stages (the pipeline is deterministic).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tiny import copy_pipeline, repro, venv_env

TINY = {
    "world": {"seed": 0, "n_train": 240, "n_test": 16, "task": "mixed",
              "scene": {"image_size": 32, "min_objects": 2, "max_objects": 4, "noise_std": 4.0}},
    "base": {"model": {"image_size": 32, "patch_size": 8, "vision_hidden": 64, "vision_layers": 2, "vision_heads": 2,
                       "vision_intermediate": 128, "text_hidden": 64, "text_layers": 2, "text_heads": 2,
                       "text_intermediate": 128, "vocab_size": 400},
             "pretrain": {"n_images": 64, "epochs": 1, "batch_size": 16, "seed": 0, "skill_samples": 96,
                          "skill_phase_steps": 2, "skill_final_steps": 4}},
    "finetune": {"rank": 4, "alpha": 8, "batch_size": 4, "epochs": 1, "checkpoint_every": 5, "seed": 0},
    "provisional": {"epochs": 3, "by_method": {}},  # long enough to be killed mid-way
    "extract": {"batch_size": 2, "chunk_size": 8},
    "attack": {"name": "badnets", "rate": 0.1, "seed": 0},
}


def _start(cwd: Path, *targets: str) -> subprocess.Popen:
    return subprocess.Popen(["dvc", "repro", *targets], cwd=cwd, env=venv_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "dvc repro ended before it could be killed:\n" + process.stdout.read()
        assert time.monotonic() < deadline, "timed out waiting to kill"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def pipeline_copy(tmp_path):
    return copy_pipeline(tmp_path / "repo", TINY)


@pytest.mark.slow
def test_sigkill_mid_finetune_and_mid_extraction_then_rerun(pipeline_copy, prefect_server):
    root = pipeline_copy
    checkpoints = root / "models" / "adapters" / ".provisional.checkpoints"
    adapter = root / "models" / "adapters" / "provisional"

    # 1. Killed in the middle of the provisional fine-tune, once a checkpoint is on disk.
    process = _start(root, "provisional_finetune")
    _kill_when(process, lambda: (checkpoints / "state.json").exists())
    assert not adapter.exists()  # no half-written adapter: it appears whole or not at all
    output = repro(root, "provisional_finetune")
    for finished in ("world", "base", "submission", "ingest"):
        assert f"Stage '{finished}' didn't change, skipping" in output, output
    assert "Running stage 'provisional_finetune'" in output
    assert (adapter / "adapter_model.safetensors").is_file() and not checkpoints.exists()
    resumed = _stage_metric(root, "provisional", "resumed_from_step")
    assert resumed > 0, "the fine-tune started over instead of resuming"

    # 2. Killed in the middle of extraction (its progress bar is running).
    process = _start(root, "extract")
    _kill_when(process, lambda: (root / "reports").exists() and _stage_started(root, "extract"))
    assert not (root / "reports" / "extract" / "entropy.csv").exists()
    output = repro(root, "cluster")
    assert "Stage 'provisional_finetune' didn't change, skipping" in output
    scores = (root / "reports" / "cluster" / "scores.csv").read_bytes()
    verdict = (root / "reports" / "cluster" / "verdict.json").read_bytes()

    # 3. Determinism: an uninterrupted rerun of the same stages gives the same scan, byte for byte.
    for stage in ("provisional_finetune", "extract", "profile", "cluster"):
        repro(root, "-f", "-s", stage)
    assert (root / "reports" / "cluster" / "scores.csv").read_bytes() == scores
    assert (root / "reports" / "cluster" / "verdict.json").read_bytes() == verdict


def _stage_started(root: Path, stage: str) -> bool:
    """True once the stage's nested MLflow run exists (the flow is past its setup)."""
    try:
        return bool(_runs(root, stage))
    except Exception:  # the store may be mid-write
        return False


def _runs(root: Path, stage: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bye")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`bye.stage` = '{stage}'",
                              order_by=["attributes.start_time DESC"])


def _stage_metric(root: Path, stage: str, name: str) -> float:
    return _runs(root, stage)[0].data.metrics[name]
