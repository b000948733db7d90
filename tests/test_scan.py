import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bye.cli import main
from bye.data.submission import read_manifest
from tiny import poison_and_scan


def test_scan_cli_writes_scores_filtered_manifest_and_verdict(tiny_world, tiny_base, tmp_path):
    runner = CliRunner()
    poisoned, out = poison_and_scan(tiny_world, tiny_base, tmp_path, attack="badnets",
                                    params="finetune: {rank: 4, alpha: 8, batch_size: 8, checkpoint_every: 0}\n"
                                           "provisional: {epochs: 1}\nextract: {batch_size: 8}\n")
    params = tmp_path / "params.yaml"
    samples = read_manifest(poisoned / "train.json")
    scores = pd.read_csv(out / "scores.csv", dtype={"id": str})
    assert list(scores["id"]) == [s.id for s in samples]
    assert {"id", "score", "flagged", "mean_entropy", "entropy_l0", "entropy_l1"} <= set(scores.columns)
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["verdict"] in {"poisoned", "clean"}
    assert verdict["n_samples"] == len(samples) == verdict["n_flagged"] + verdict["n_kept"]
    kept = read_manifest(out / "filtered.json")
    assert [s.id for s in kept] == list(scores.loc[~scores["flagged"], "id"])
    assert (out / "provisional_adapter" / "adapter_model.safetensors").is_file()
    # The staged commands (what the pipeline runs) reproduce the one-shot scan from its files.
    for args in (["extract", str(poisoned / "train.json"), "--base", str(tiny_base), "--adapter",
                  str(out / "provisional_adapter"), "--out", str(tmp_path / "ex")],
                 ["profile", str(tmp_path / "ex" / "entropy.csv"), "--out", str(tmp_path / "pr")],
                 ["cluster", str(poisoned / "train.json"), "--features", str(tmp_path / "ex"),
                  "--profile", str(tmp_path / "pr" / "profile.json"), "--out", str(tmp_path / "cl")]):
        result = runner.invoke(main, [*args, "--params", str(params)])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "cl" / "scores.csv").read_text() == (out / "scores.csv").read_text()
    # residualise: prompt profiles the entropies' prompt residuals: the profile stage needs the submission.
    residual = tmp_path / "residual.yaml"
    residual.write_text(params.read_text() + "profile: {residualise: prompt}\n")
    staged = [["profile", str(tmp_path / "ex" / "entropy.csv"), "--out", str(tmp_path / "rp")],
              ["cluster", str(poisoned / "train.json"), "--features", str(tmp_path / "ex"),
               "--profile", str(tmp_path / "rp" / "profile.json"), "--out", str(tmp_path / "rc")]]
    refused = runner.invoke(main, [*staged[0], "--params", str(residual)])
    assert refused.exit_code != 0 and "needs the samples' questions" in str(refused.exception)
    for args in ([*staged[0], "--data", str(poisoned / "train.json")], staged[1]):
        result = runner.invoke(main, [*args, "--params", str(residual)])
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "rp" / "profile.json").read_text())["residualise"] == "prompt"
    written = pd.read_csv(tmp_path / "rp" / "residuals.csv", dtype={"id": str})  # the table profiled
    assert list(written["id"]) == [s.id for s in samples] and "residual_l1" in written.columns
    again = runner.invoke(main, [*staged[0], "--params", str(params)])  # profiled again without residuals
    assert again.exit_code == 0, again.output
    assert not (tmp_path / "rp" / "residuals.csv").exists()
    residual_scores = pd.read_csv(tmp_path / "rc" / "scores.csv", dtype={"id": str})
    assert "mean_prompt_residual" in residual_scores.columns and "mean_entropy" not in residual_scores.columns
    assert np.allclose(residual_scores["score"], -residual_scores["mean_prompt_residual"])
    mixed = runner.invoke(main, ["cluster", str(poisoned / "train.json"), "--features", str(tmp_path / "ex"),
                                 "--profile", str(tmp_path / "pr" / "profile.json"), "--out", str(tmp_path / "mixed"),
                                 "--params", str(residual)])
    assert mixed.exit_code != 0 and "residualise" in str(mixed.exception)  # a raw profile, a residual detector
    with np.load(tmp_path / "ex" / "attention.npz") as saved:
        assert saved["attention"].shape == (len(samples), 2, 16) and list(saved["grid"]) == [4, 4]
        assert list(saved["ids"]) == [s.id for s in samples]
    # Entropy is a distribution's entropy over 16 image tokens: within [0, ln 16].
    entropies = scores.filter(like="entropy_l").to_numpy()
    assert (entropies >= 0).all() and (entropies <= 2.7726 + 1e-6).all()

    result = runner.invoke(main, ["score-scan", str(out / "scores.csv"), "--truth", str(tmp_path / "truth.json"),
                                  "--out", str(tmp_path / "detection.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "detection.json").read_text())
    assert metrics["n_poisoned"] == round(0.2 * len(samples))
    assert 0.0 <= metrics["auroc"] <= 1.0


def test_poison_cli_refuses_truth_inside_the_submission(tiny_world, tmp_path):
    result = CliRunner().invoke(main, ["poison", str(tiny_world / "train.json"), "--attack", "badnets",
                                       "--out", str(tmp_path / "sub"), "--truth", str(tmp_path / "sub" / "t.json")])
    assert result.exit_code != 0 and "must not be inside" in result.output


def test_world_cli_is_deterministic(tmp_path):
    runner = CliRunner()
    for name in ("a", "b"):
        result = runner.invoke(main, ["world", str(tmp_path / name), "--n-train", "5", "--n-test", "2", "--seed", "3"])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "train.json").read_bytes() == (tmp_path / "b" / "train.json").read_bytes()


def test_scan_with_a_baseline_detector_extracts_the_signals_it_needs(tiny_world, tiny_base, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("finetune: {rank: 4, alpha: 8, batch_size: 8, checkpoint_every: 0}\n"
                      "provisional: {epochs: 1}\nextract: {batch_size: 8}\n")
    for method, key in (("spectral", "hidden"), ("strip", "strip_entropy")):
        out = tmp_path / method
        result = CliRunner().invoke(main, ["scan", str(tiny_world / "train.json"), "--base", str(tiny_base),
                                           "--out", str(out), "--method", method, "--params", str(params)])
        assert result.exit_code == 0, result.output
        verdict = json.loads((out / "verdict.json").read_text())
        assert verdict["method"] == method
        with np.load(out / "signals.npz") as signals:
            assert signals[key].shape[0] == verdict["n_samples"]
    result = CliRunner().invoke(main, ["scan", str(tiny_world / "train.json"), "--base", str(tiny_base),
                                       "--out", str(tmp_path / "x"), "--method", "nope", "--params", str(params)])
    assert result.exit_code != 0 and "unknown detector" in str(result.exception)


def test_submission_images_open_lazily_and_match_eager_loading(tiny_world):
    from bye.data.submission import read_manifest
    from bye.detect.scan import SubmissionImages
    from bye.models.chat import open_rgb

    samples = read_manifest(tiny_world / "train.json")
    images = SubmissionImages(samples, tiny_world / "images")
    assert len(images) == len(samples)
    eager = [open_rgb(tiny_world / "images" / s.image) for s in samples[:3]]
    assert [np.asarray(i).tolist() for i in images[:3]] == [np.asarray(i).tolist() for i in eager]
    assert np.array_equal(np.asarray(images[-1]), np.asarray(open_rgb(tiny_world / "images" / samples[-1].image)))
    escaping = [type(samples[0])(id="x", image="../train.json", question="q", answer="a")]
    lazy = SubmissionImages(escaping, tiny_world / "images")  # paths are resolved when an image is opened
    with pytest.raises(ValueError, match="leaves the image folder"):
        lazy[0]
    with pytest.raises(ValueError, match="leaves the image folder"):
        lazy[:1]
