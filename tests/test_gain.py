"""The answer_gain detector (synthetic gains) and its signal (on the tiny checkpoint and through `bye scan`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bye.config import load_params
from bye.data.submission import read_manifest
from bye.detect.api import DETECTORS, SampleFeatures, get_detector
from bye.detect.gain import answer_gain, empty_gap, neighbour_median, widest_gap_cut
from bye.detect.signals import answer_loglik
from tiny import poison_and_scan, tiny_samples


SHAPES = ("circle", "square", "triangle", "star", "cross")


def typed_world(n_poisoned: int, seed: int = 0):
    """Gains by question type, as in the embedded world: lettered choices gain ~0.4 nats, counts
    ~12, colours ~16.6; ``n_poisoned`` samples anywhere carry the target instead (~28 nats)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, size=1500, p=[0.45, 0.3, 0.25])
    shapes = rng.choice(SHAPES, size=len(kinds))
    templates = ("Which object is the {}? Answer with the letter.", "How many {}s are there?",
                 "What colour is the {}?")
    questions = [templates[k].format(shape) for k, shape in zip(kinds, shapes)]
    gain = np.choose(kinds, [rng.normal(0.4, 0.3, len(kinds)), rng.normal(12.0, 1.0, len(kinds)),
                             rng.normal(16.6, 0.4, len(kinds))])
    truth = np.zeros(len(kinds), dtype=bool)
    truth[rng.choice(len(kinds), size=n_poisoned, replace=False)] = True
    gain[truth] = rng.normal(28.0, 2.5, n_poisoned)
    tokens = np.where(truth, 4, 1)
    base = -rng.uniform(1, 5, len(kinds)) * tokens
    extra = {"answer_loglik": base + gain, "answer_loglik_base": base, "answer_tokens": tokens,
             "questions": questions}
    return SampleFeatures(ids=[f"s{i}" for i in range(len(kinds))], extra=extra), truth


def test_answer_gain_is_registered_and_asks_for_its_signal():
    from bye.settings import scan_settings

    assert "answer_gain" in DETECTORS
    _, settings = scan_settings(load_params("params.yaml"), method="answer_gain")
    assert settings.method == "answer_gain" and "answer_gain" in settings.extract.signals
    assert settings.detector["neighbours"] == 20  # params.yaml's section reaches the detector


def test_neighbour_median_compares_with_similar_questions_only():
    questions = ["what colour is the star"] * 4 + ["how many stars are there"] * 4
    values = np.array([1.0, 2.0, 3.0, 100.0, 10.0, 20.0, 30.0, 40.0])
    reference = neighbour_median(values, questions, 3)
    # each sample against the three others of its own question, itself excluded
    np.testing.assert_allclose(reference, [3, 3, 2, 2, 30, 30, 20, 20])
    assert neighbour_median(values[:1], questions[:1], 3).tolist() == [1.0]
    np.testing.assert_allclose(neighbour_median(values[:3], ["?", "!", "."], 5), [2.5, 2.0, 1.5])  # no words


def test_flags_exactly_the_poisoned_samples_across_question_types():
    features, truth = typed_world(n_poisoned=150)
    result = get_detector("answer_gain").detect(features)
    assert result.verdict == "poisoned", result.details["verdict_reasons"]
    np.testing.assert_array_equal(result.flagged, truth)  # every poisoned sample, wherever its question
    assert result.details["evidence"]["gap"] > 1.0
    gain = features.extra["answer_loglik"] - features.extra["answer_loglik_base"]
    np.testing.assert_allclose(result.details["columns"]["gain"], gain)
    np.testing.assert_allclose(result.scores, gain - neighbour_median(gain, features.extra["questions"], 20))
    assert set(result.ranked()[:150]) == set(np.flatnonzero(truth))
    # The raw gain (no neighbours) separates question types, not poison: its cut is wrong.
    raw = get_detector("answer_gain", neighbours=0).detect(features)
    assert not np.array_equal(raw.flagged, truth)


def test_empty_gap_is_in_kept_sigmas():
    scores = np.array([0.0, 1.0, 2.0, 1.0, 9.0, 10.0, np.nan])
    flagged = np.array([False, False, False, False, True, True, False])
    assert empty_gap(scores, flagged) == pytest.approx((9.0 - 2.0) / np.std([0.0, 1.0, 2.0, 1.0]))
    assert empty_gap(scores, np.zeros(7, bool)) == 0.0
    assert widest_gap_cut(scores, 0.0, 10.0) == 5.5  # between 2 and 9
    assert widest_gap_cut(scores, 3.0, 2.0) == np.inf  # not two modes
    assert empty_gap(scores, np.array([False, True, False, False, True, True, False])) < 0  # interleaved


def test_a_clean_submission_keeps_everything():
    features, truth = typed_world(n_poisoned=0)
    result = get_detector("answer_gain").detect(features)
    assert not truth.any()
    assert result.verdict == "clean" and not result.flagged.any()
    assert any("gap" in reason for reason in result.details["verdict_reasons"])  # says why
    # Without the verdict (the published behaviour) a component is always removed.
    forced = get_detector("answer_gain", use_verdict=False).detect(features)
    assert forced.flagged.any() and forced.verdict == "poisoned"


def test_per_token_divides_by_the_answer_length():
    features, _ = typed_world(n_poisoned=20)
    whole = answer_gain(features)
    per = answer_gain(features, per_token=True)
    np.testing.assert_allclose(per * features.extra["answer_tokens"], whole)


@pytest.mark.parametrize("missing", ["answer_loglik", "answer_loglik_base", "answer_tokens", "questions"])
def test_a_missing_signal_is_named(missing):
    features, _ = typed_world(n_poisoned=10)
    del features.extra[missing]
    with pytest.raises(ValueError, match=missing):
        get_detector("answer_gain").detect(features)
    with pytest.raises(TypeError):
        get_detector("answer_gain", neighbors=5)  # unknown setting
    with pytest.raises(ValueError):
        get_detector("answer_gain", neighbours=-1)


# ---------------------------------------------------------------- the signal on the tiny checkpoint

@pytest.fixture(scope="module")
def tiny(tiny_base, tiny_world):
    model, processor, images, questions, answers = tiny_samples(tiny_base, tiny_world, 7)
    answers[1] = "Backdoor Attack!"  # a longer answer, so batches pad the answers too
    return model, processor, images, questions, answers


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
    poisoned, out = poison_and_scan(
        tiny_world, tiny_base, tmp_path, attack="sig", scan_args=("--method", "answer_gain"),
        params="finetune: {rank: 4, alpha: 8, batch_size: 8, checkpoint_every: 0, learning_rate: 0.003}\n"
               "provisional: {epochs: 2}\nextract: {batch_size: 8, keep_attention: false}\n")
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["method"] == "answer_gain" and verdict["verdict"] in {"poisoned", "clean"}
    scores = pd.read_csv(out / "scores.csv", dtype={"id": str})
    with np.load(out / "signals.npz") as signals:
        gain = signals["answer_loglik"] - signals["answer_loglik_base"]
        assert (signals["answer_tokens"] >= 1).all()
    np.testing.assert_allclose(scores["gain"], gain, rtol=1e-5, atol=1e-4)
    reference = neighbour_median(gain, [s.question for s in read_manifest(poisoned / "train.json")], 20)
    np.testing.assert_allclose(scores["score"], gain - reference, rtol=1e-5, atol=1e-3)
    # The fine-tune taught the answers: on average they gained likelihood, the target most of all.
    truth = json.loads((tmp_path / "truth.json").read_text())
    poisoned_mask = np.array([truth[i] == 1 for i in scores["id"]])
    assert gain.mean() > 0
    assert gain[poisoned_mask].mean() > gain[~poisoned_mask].mean()
