"""Helpers for tests on the tiny checkpoint and world (the fixtures themselves are in conftest.py)."""

from __future__ import annotations

from pathlib import Path


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
