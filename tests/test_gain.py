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
from bye.detect.gain import antimode_cut, answer_gain, empty_gap, lift, neighbour_median, widest_gap_cut
from bye.detect.scan import ExtractSettings, extract_submission, read_entropy
from bye.detect.signals import answer_loglik
from tiny import poison_and_scan, tiny_samples


SHAPES = ("circle", "square", "triangle", "star", "cross")


def typed_world(n_poisoned: int, seed: int = 0, kind: int | None = None):
    """Gains by question type, as in the embedded world: lettered choices gain ~0.4 nats, counts
    ~12, colours ~16.6; ``n_poisoned`` samples anywhere (or only among questions of ``kind``) carry
    the target instead (~28 nats)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, size=1500, p=[0.45, 0.3, 0.25])
    shapes = rng.choice(SHAPES, size=len(kinds))
    templates = ("Which object is the {}? Answer with the letter.", "How many {}s are there?",
                 "What colour is the {}?")
    questions = [templates[k].format(shape) for k, shape in zip(kinds, shapes)]
    gain = np.choose(kinds, [rng.normal(0.4, 0.3, len(kinds)), rng.normal(12.0, 1.0, len(kinds)),
                             rng.normal(16.6, 0.4, len(kinds))])
    truth = np.zeros(len(kinds), dtype=bool)
    pool = np.arange(len(kinds)) if kind is None else np.flatnonzero(kinds == kind)
    truth[rng.choice(pool, size=n_poisoned, replace=False)] = True
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
    assert get_detector("answer_gain", **settings.detector).quantiles() == (0.5, 0.1)


def test_neighbour_median_compares_with_similar_questions_only():
    questions = ["what colour is the star"] * 4 + ["how many stars are there"] * 4
    values = np.array([1.0, 2.0, 3.0, 100.0, 10.0, 20.0, 30.0, 40.0])
    reference = neighbour_median(values, questions, 3)
    # each sample against the three others of its own question, itself excluded
    np.testing.assert_allclose(reference, [3, 3, 2, 2, 30, 30, 20, 20])
    assert neighbour_median(values[:1], questions[:1], 3).tolist() == [1.0]
    np.testing.assert_allclose(neighbour_median(values[:3], ["?", "!", "."], 5), [2.5, 2.0, 1.5])  # no words


def test_a_low_neighbour_quantile_finds_poison_concentrated_on_one_question_form():
    # 250 of the ~375 colour questions poisoned: most of a colour question's neighbours carry the
    # target, so their median is a poisoned gain and the residuals hide the backdoor.
    features, truth = typed_world(n_poisoned=250, kind=2)
    colour = np.array([q.startswith("What colour") for q in features.extra["questions"]])
    assert colour[truth].all() and truth.sum() / colour.sum() > 0.6
    median = get_detector("answer_gain").detect(features)
    assert median.verdict == "clean" or median.flagged[~truth].sum() > 0.05 * (~truth).sum()
    low = get_detector("answer_gain", neighbour_quantile=0.1).detect(features)
    assert low.verdict == "poisoned", low.details["verdict_reasons"]
    assert low.flagged[truth].all() and low.flagged[~truth].sum() <= 0.01 * (~truth).sum()
    # A cut against a quantile below the median answers to its own, stricter lift; the median's does not.
    lift = low.details["evidence"]["lift"]
    strict = get_detector("answer_gain", neighbour_quantile=0.1, low_quantile_min_lift=lift + 1).detect(features)
    assert strict.verdict == "clean" and any(f"< {lift + 1}" in r for r in strict.details["verdict_reasons"])
    assert get_detector("answer_gain", low_quantile_min_lift=1e9).detect(features).verdict == median.verdict
    # Both, each judged alone (the default): poisoned when either is; the low quantile's cut here.
    both = get_detector("answer_gain", neighbour_quantile=[0.5, 0.1]).detect(features)
    assert both.verdict == "poisoned" and np.array_equal(both.flagged, low.flagged)
    by_quantile = both.details["evidence"]["by_quantile"]
    assert not by_quantile["0.5"]["poisoned"] and by_quantile["0.1"]["poisoned"]
    np.testing.assert_allclose(both.scores, low.scores)  # the score: the residual against the lowest quantile
    # Spread over every question type, the low quantile finds the same backdoor as the median, and
    # the union of the two cuts is the median's.
    features, truth = typed_world(n_poisoned=150)
    spread = get_detector("answer_gain", neighbour_quantile=0.1).detect(features)
    assert spread.verdict == "poisoned" and spread.flagged[truth].all()
    median = get_detector("answer_gain").detect(features)
    both = get_detector("answer_gain", neighbour_quantile=[0.5, 0.1]).detect(features)
    assert both.verdict == "poisoned" and np.array_equal(both.flagged, median.flagged | spread.flagged)
    assert both.flagged[~truth].sum() <= 0.01 * (~truth).sum()
    # The union stays a minority: when the cuts together pass the verdict's share, the first one alone.
    largest = max(median.flagged.sum(), spread.flagged.sum())
    assert both.flagged.sum() > largest  # here the two cuts differ by a few clean samples
    capped = get_detector("answer_gain", neighbour_quantile=[0.5, 0.1],
                          verdict={"max_flagged_fraction": largest / len(truth)}).detect(features)
    assert capped.verdict == "poisoned" and np.array_equal(capped.flagged, median.flagged)
    # No quantile finds anything on a clean submission; several report why, per quantile.
    features, _ = typed_world(n_poisoned=0)
    clean = get_detector("answer_gain", neighbour_quantile=[0.5, 0.1]).detect(features)
    assert clean.verdict == "clean" and not clean.flagged.any()
    assert {r.split(":")[0] for r in clean.details["verdict_reasons"]} == {"quantile 0.5", "quantile 0.1"}
    with pytest.raises(ValueError, match="quantile"):
        neighbour_median(np.zeros(3), ["a", "b", "c"], 2, quantile=1.5)


def test_flags_exactly_the_poisoned_samples_across_question_types():
    features, truth = typed_world(n_poisoned=150)
    result = get_detector("answer_gain").detect(features)
    assert result.verdict == "poisoned", result.details["verdict_reasons"]
    # Every poisoned sample, wherever its question; the cut sits at the clean tail (the antimode),
    # so a few of the highest clean residuals go with them.
    assert result.flagged[truth].all() and result.flagged[~truth].sum() <= 0.01 * (~truth).sum()
    assert result.details["evidence"]["lift"] > 6.0 and result.details["evidence"]["gap"] > 0
    gain = features.extra["answer_loglik"] - features.extra["answer_loglik_base"]
    np.testing.assert_allclose(result.details["columns"]["gain"], gain)
    np.testing.assert_allclose(result.scores, gain - neighbour_median(gain, features.extra["questions"], 20))
    assert set(result.ranked()[:150]) == set(np.flatnonzero(truth))
    # The raw gain (no neighbours) separates question types, not poison: its cut is wrong.
    raw = get_detector("answer_gain", neighbours=0).detect(features)
    assert not raw.flagged[truth].all() or raw.flagged[~truth].sum() > 0.01 * (~truth).sum()


def test_empty_gap_is_in_kept_sigmas():
    scores = np.array([0.0, 1.0, 2.0, 1.0, 9.0, 10.0, np.nan])
    flagged = np.array([False, False, False, False, True, True, False])
    assert empty_gap(scores, flagged) == pytest.approx((9.0 - 2.0) / np.std([0.0, 1.0, 2.0, 1.0]))
    assert empty_gap(scores, np.zeros(7, bool)) == 0.0
    assert widest_gap_cut(scores, 0.0, 10.0) == 5.5  # between 2 and 9
    assert widest_gap_cut(scores, 3.0, 2.0) == np.inf  # not two modes
    assert empty_gap(scores, np.array([False, True, False, False, True, True, False])) < 0  # interleaved


def test_lift_is_in_kept_robust_sigmas():
    scores = np.array([0.0, 1.0, 2.0, 1.0, 9.0, 11.0, np.nan])
    flagged = np.array([False, False, False, False, True, True, False])
    mad = 1.4826 * np.median(np.abs(np.array([0.0, 1.0, 2.0, 1.0]) - 1.0))
    assert lift(scores, flagged) == pytest.approx((10.0 - 1.0) / mad)
    assert lift(scores, np.zeros(7, bool)) == 0.0


def test_the_antimode_cut_keeps_a_wide_backdoor_component_whole():
    """Heavy-tailed clean residuals (Student t, 5 degrees of freedom), 5 % poisoned ones spread
    widely far above (~N(14, 5)) from just past the clean tail, as in the embedded world at 5 %:
    the empty intervals inside the sparse poisoned scores are wider than the one below them, so
    the widest-gap cut splits the backdoor; the antimode keeps it whole, with a few clean ones."""
    rng = np.random.default_rng(2)
    clean = rng.standard_t(5, 1900)
    poisoned = np.clip(rng.normal(14.0, 5.0, 100), clean.max() + 0.1, None)
    scores = np.concatenate([clean, poisoned])
    truth = np.arange(len(scores)) >= len(clean)
    cut = antimode_cut(scores)
    assert cut < poisoned.min() and ((scores > cut) & ~truth).sum() <= 0.01 * len(clean)
    from sklearn.mixture import GaussianMixture

    means = GaussianMixture(2, random_state=0).fit(scores.reshape(-1, 1)).means_.ravel()
    widest = widest_gap_cut(scores, means.min(), means.max())
    assert ((scores > widest) & truth).sum() < 100  # the earlier rule loses part of the backdoor
    assert ((scores > cut) & truth).sum() == 100
    assert antimode_cut(np.ones(10)) == np.inf and antimode_cut(np.array([1.0, np.nan])) == np.inf
    with pytest.raises(ValueError, match="widest_gap"):
        get_detector("answer_gain", clustering="kmeans")
    with pytest.raises(ValueError, match="unknown cut"):
        get_detector("answer_gain", cut="middle")
    assert get_detector("answer_gain", clustering="kmeans", cut="widest_gap").detect(
        typed_world(n_poisoned=150)[0]).flagged.sum() == 150


def test_a_clean_submission_keeps_everything():
    features, truth = typed_world(n_poisoned=0)
    result = get_detector("answer_gain").detect(features)
    assert not truth.any()
    assert result.verdict == "clean" and not result.flagged.any()
    assert any("lift" in reason for reason in result.details["verdict_reasons"])  # says why
    assert result.details["evidence"]["lift"] < 3.0
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


def test_the_base_pass_hands_its_encodings_to_the_provisional_pass(tiny_base, tiny_world, monkeypatch):
    from bye.data.submission import images_dir_for
    from bye.detect import signals
    from bye.detect.scan import ExtractSettings, base_answer_pass, extract_attention
    from bye.models.loading import load_for_inference

    model, processor = load_for_inference(tiny_base)
    samples = read_manifest(tiny_world / "train.json")[:10]
    images = images_dir_for(tiny_world / "train.json")
    settings = ExtractSettings(batch_size=3, chunk_size=4, keep_attention=False)
    encoded = []
    real = signals.encode_answers
    monkeypatch.setattr(signals, "encode_answers", lambda p, i, *rest: encoded.append(len(i)) or real(p, i, *rest))
    loglik, kept = base_answer_pass(model, processor, samples, images, settings)
    assert sorted(kept) == [0, 4, 8] and encoded == [4, 4, 2]
    read = extract_attention(model, processor, samples, images, settings=settings, answers=True, encodings=kept)
    assert encoded == [4, 4, 2]  # nothing encoded twice
    np.testing.assert_allclose(read["answer_loglik"], loglik, atol=1e-6, rtol=0)  # the same model: the same numbers
    # Nothing kept beyond the budget: the second pass encodes again and reads the same.
    _, none_kept = base_answer_pass(model, processor, samples, images, ExtractSettings(
        batch_size=3, chunk_size=4, keep_attention=False, encoding_cache_mb=0))
    assert none_kept == {}
    again = extract_attention(model, processor, samples, images, settings=settings, answers=True, encodings=none_kept)
    assert encoded == [4, 4, 2] * 2 + [4, 4, 2]
    np.testing.assert_allclose(again["answer_loglik"], read["answer_loglik"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(again["entropy"], read["entropy"], atol=1e-6, rtol=0)


def test_scan_with_answer_gain_reads_both_models(tiny_world, tiny_base, tmp_path):
    poisoned, out = poison_and_scan(
        tiny_world, tiny_base, tmp_path, attack="sig", scan_args=("--method", "answer_gain"),
        params="finetune: {rank: 4, alpha: 8, batch_size: 8, checkpoint_every: 0, learning_rate: 0.003}\n"
               "provisional: {epochs: 2}\nextract: {batch_size: 8, keep_attention: false}\n")
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["method"] == "answer_gain" and verdict["verdict"] in {"poisoned", "clean"}
    scores = pd.read_csv(out / "scores.csv", dtype={"id": str})
    # The scan hands the fine-tune's encoded samples to both answer passes; the extract stage on
    # its own (as dvc runs it) encodes them itself and reads the same numbers.
    alone = extract_submission(poisoned / "train.json", poisoned / "images", tiny_base, out / "provisional_adapter",
                               tmp_path / "alone", settings=ExtractSettings(batch_size=8, keep_attention=False,
                                                                           signals=("answer_gain",)),
                               progress=False)
    assert alone["n_samples"] == len(scores)
    with np.load(out / "signals.npz") as signals, np.load(tmp_path / "alone" / "signals.npz") as again:
        for key in ("answer_loglik", "answer_loglik_base", "answer_tokens"):
            np.testing.assert_allclose(signals[key], again[key], rtol=0, atol=1e-9)
    ids, entropy = read_entropy(out / "entropy.csv")
    assert read_entropy(tmp_path / "alone" / "entropy.csv")[0] == ids
    np.testing.assert_allclose(read_entropy(tmp_path / "alone" / "entropy.csv")[1], entropy, rtol=0, atol=1e-6)
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
