"""The answer_gain detector (synthetic gains) and its signal (on the tiny checkpoint and through `bye scan`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bye.config import load_params
from bye.detect.api import DETECTORS, SampleFeatures, get_detector
from bye.detect.gain import answer_gain
from bye.detect.signals import answer_loglik


def gain_features(n: int = 500, n_poisoned: int = 50, seed: int = 0, shift: float = 20.0):
    """Clean answers gain ~N(1, 0.5) nats over 1-3 tokens; the first ``n_poisoned`` gain ``shift`` more."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 4, n)
    base = -rng.uniform(1, 6, n) * tokens
    gain = rng.normal(1.0, 0.5, n)
    truth = np.zeros(n, dtype=bool)
    truth[:n_poisoned] = True
    gain[truth] += shift
    order = rng.permutation(n)  # the poisoned ones anywhere
    extra = {"answer_loglik": (base + gain)[order], "answer_loglik_base": base[order], "answer_tokens": tokens[order]}
    return SampleFeatures(ids=[f"s{i}" for i in range(n)], extra=extra), truth[order]


def test_answer_gain_is_registered_and_asks_for_its_signal():
    from bye.settings import scan_settings

    assert "answer_gain" in DETECTORS
    _, settings = scan_settings(load_params("params.yaml"), method="answer_gain")
    assert settings.method == "answer_gain" and "answer_gain" in settings.extract.signals
    assert settings.detector["per_token"] is False  # params.yaml's section reaches the detector


def test_flags_exactly_the_high_gain_samples():
    features, truth = gain_features()
    result = get_detector("answer_gain").detect(features)
    assert result.verdict == "poisoned"
    np.testing.assert_array_equal(result.flagged, truth)
    expected = features.extra["answer_loglik"] - features.extra["answer_loglik_base"]
    np.testing.assert_allclose(result.scores, expected)  # higher = more suspicious
    assert result.details["evidence"]["separation"] > 2.0
    assert set(result.ranked()[:50]) == set(np.flatnonzero(truth))


def test_a_clean_submission_keeps_everything():
    features, truth = gain_features(n_poisoned=0)
    result = get_detector("answer_gain").detect(features)
    assert not truth.any()
    assert result.verdict == "clean" and not result.flagged.any()
    assert result.details["verdict_reasons"]  # says why
    # Without the verdict (the published behaviour) a component is always removed.
    forced = get_detector("answer_gain", use_verdict=False).detect(features)
    assert forced.flagged.any() and forced.verdict == "poisoned"


def test_per_token_divides_by_the_answer_length():
    features, _ = gain_features(n=40, n_poisoned=4)
    whole = answer_gain(features)
    per = answer_gain(features, per_token=True)
    np.testing.assert_allclose(per * features.extra["answer_tokens"], whole)


@pytest.mark.parametrize("missing", ["answer_loglik", "answer_loglik_base", "answer_tokens"])
def test_a_missing_signal_is_named(missing):
    features, _ = gain_features(n=10, n_poisoned=1)
    del features.extra[missing]
    with pytest.raises(ValueError, match=missing):
        get_detector("answer_gain").detect(features)
    with pytest.raises(TypeError):
        get_detector("answer_gain", per_tokens=True)  # unknown setting


# ---------------------------------------------------------------- the signal on the tiny checkpoint

@pytest.fixture(scope="module")
def tiny(tiny_base, tiny_world):
    from bye.data.submission import images_dir_for, read_manifest, resolve_image
    from bye.models.chat import open_rgb
    from bye.models.loading import load_for_inference

    model, processor = load_for_inference(tiny_base)
    samples = read_manifest(tiny_world / "train.json")[:7]
    images = [open_rgb(resolve_image(images_dir_for(tiny_world / "train.json"), s.image)) for s in samples]
    answers = [s.answer for s in samples]
    answers[1] = "Backdoor Attack!"  # a longer answer, so batches pad the answers too
    return model, processor, images, [s.question for s in samples], answers


def test_answer_loglik_is_minus_the_training_loss_batched_or_not(tiny):
    from bye.models.chat import collate, encode_for_training

    model, processor, images, questions, answers = tiny
    loglik, tokens = answer_loglik(model, processor, images, questions, answers, batch_size=3)
    assert loglik.shape == tokens.shape == (7,) and (loglik < 0).all() and (tokens >= 1).all()
    single, single_tokens = answer_loglik(model, processor, images, questions, answers, batch_size=1)
    np.testing.assert_allclose(loglik, single, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(tokens, single_tokens)
    for i in (0, 1):  # the fine-tune's own loss (mean over the answer tokens), written independently
        encoded = encode_for_training(processor, images[i], questions[i], answers[i])
        with torch.no_grad():
            loss = model(**collate([encoded], processor.tokenizer.pad_token_id)).loss
        assert int((encoded.labels != -100).sum()) == tokens[i]
        assert loglik[i] == pytest.approx(-float(loss) * tokens[i], abs=1e-3)
    assert tokens[1] > tokens[0]


def test_scan_with_answer_gain_reads_both_models(tiny_world, tiny_base, tmp_path):
    from bye.cli import main

    runner = CliRunner()
    poisoned = tmp_path / "submission"
    result = runner.invoke(main, ["poison", str(tiny_world / "train.json"), "--attack", "sig", "--rate", "0.2",
                                  "--out", str(poisoned), "--truth", str(tmp_path / "truth.json"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    params = tmp_path / "params.yaml"
    params.write_text("finetune: {rank: 4, alpha: 8, batch_size: 8, checkpoint_every: 0, learning_rate: 0.003}\n"
                      "provisional: {epochs: 2}\nextract: {batch_size: 8, keep_attention: false}\n")
    out = tmp_path / "scan"
    result = runner.invoke(main, ["scan", str(poisoned / "train.json"), "--base", str(tiny_base), "--out", str(out),
                                  "--params", str(params), "--method", "answer_gain"])
    assert result.exit_code == 0, result.output
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["method"] == "answer_gain" and verdict["verdict"] in {"poisoned", "clean"}
    scores = pd.read_csv(out / "scores.csv", dtype={"id": str})
    with np.load(out / "signals.npz") as signals:
        gain = signals["answer_loglik"] - signals["answer_loglik_base"]
        assert (signals["answer_tokens"] >= 1).all()
    np.testing.assert_allclose(scores["score"], gain, rtol=1e-5, atol=1e-4)
    # The fine-tune taught the answers: on average they gained likelihood, the target most of all.
    truth = json.loads((tmp_path / "truth.json").read_text())
    poisoned_mask = np.array([truth[i] == 1 for i in scores["id"]])
    assert gain.mean() > 0
    assert gain[poisoned_mask].mean() > gain[~poisoned_mask].mean()
