"""Helpers for tests on the tiny checkpoint and world (the fixtures themselves are in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]


def tiny_samples(tiny_base: Path, tiny_world: Path, n: int):
    """``(model, processor, images, questions, answers)``: the tiny base model, freshly loaded (a
    test may change it), and the first ``n`` training samples of the tiny world."""
    from bye.data.submission import images_dir_for, read_manifest, resolve_image
    from bye.models.chat import open_rgb
    from bye.models.loading import load_for_inference

    model, processor = load_for_inference(tiny_base)
    samples = read_manifest(tiny_world / "train.json")[:n]
    images = [open_rgb(resolve_image(images_dir_for(tiny_world / "train.json"), s.image)) for s in samples]
    return model, processor, images, [s.question for s in samples], [s.answer for s in samples]


def poison_and_scan(tiny_world: Path, tiny_base: Path, tmp_path: Path, *, attack: str, params: str,
                    scan_args: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """``bye poison`` the tiny world's train split (20 %, seed 1), then ``bye scan`` it with the
    given params file text; returns ``(submission folder, scan folder)``. Both commands must succeed."""
    from click.testing import CliRunner

    from bye.cli import main

    runner = CliRunner()
    poisoned = tmp_path / "submission"
    result = runner.invoke(main, ["poison", str(tiny_world / "train.json"), "--attack", attack, "--rate", "0.2",
                                  "--out", str(poisoned), "--truth", str(tmp_path / "truth.json"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    (tmp_path / "params.yaml").write_text(params)
    out = tmp_path / "scan"
    result = runner.invoke(main, ["scan", str(poisoned / "train.json"), "--base", str(tiny_base), "--out", str(out),
                                  "--params", str(tmp_path / "params.yaml"), *scan_args])
    assert result.exit_code == 0, result.output
    return poisoned, out


def venv_env() -> dict:
    """The environment with this interpreter's scripts (dvc, prefect) first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def copy_pipeline(root: Path, params: dict) -> Path:
    """A DVC project at ``root`` with the repository's code, ``dvc.yaml`` and ``params.yaml``, each
    section of ``params`` laid over the file's."""
    import yaml

    root.mkdir(parents=True)
    for name in ("src", "tasks", "flows"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", root)
    merged = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in params.items():
        merged[section] = {**merged.get(section, {}), **values}
    (root / "params.yaml").write_text(yaml.safe_dump(merged))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, check=True, env=venv_env())
    return root


def repro(root: Path, *args: str) -> str:
    """``dvc repro ARGS`` in ``root``; its output. It must succeed."""
    process = subprocess.run(["dvc", "repro", *args], cwd=root, env=venv_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=900)
    assert process.returncode == 0, process.stdout
    return process.stdout
