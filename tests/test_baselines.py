"""bye.detect.baselines (on synthetic features) and bye.detect.signals (on the tiny checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bye.detect import baselines  # noqa: F401  (registers the baselines)
from bye.detect.api import DETECTORS, SampleFeatures, get_detector
from bye.detect.signals import (
    blend,
    decision_hidden,
    first_token_entropy,
    overlay_partners,
    strip_entropy,
)
from tiny import tiny_samples

BASELINES = ("spectral", "activation_clustering", "strip", "random_drop", "none", "oracle")


# ---------------------------------------------------------------- synthetic features

def shifted_set(seed: int = 0, hidden: int = 32, shift: float = 8.0):
    """Three pseudo-classes (200, 150, 150 samples) around their own centres, plus three
    singletons; 10% of class "A" is moved along one direction (the backdoor)."""
    rng = np.random.default_rng(seed)
    sizes = {"A": 200, "B": 150, "C": 150, "x": 1, "y": 1, "z": 1}
    labels = np.concatenate([[name] * size for name, size in sizes.items()])
    centres = {name: rng.normal(0, 3, hidden) for name in sizes}
    states = np.stack([centres[label] for label in labels]) + rng.normal(0, 1, (len(labels), hidden))
    truth = np.zeros(len(labels), dtype=int)
    truth[rng.choice(200, size=20, replace=False)] = 1  # class "A" comes first
    direction = rng.normal(size=hidden)
    states[truth == 1] += shift * direction / np.linalg.norm(direction)
    return states.astype(np.float32), labels, truth


def features_of(**extra) -> SampleFeatures:
    n = len(next(iter(extra.values())))
    return SampleFeatures(ids=[str(i) for i in range(n)], extra=extra)


def precision_recall(flagged, truth):
    hits = (flagged & truth.astype(bool)).sum()
    return hits / max(flagged.sum(), 1), hits / truth.sum()


def test_all_baselines_are_registered_next_to_bye():
    assert set(BASELINES) | {"bye"} <= set(DETECTORS)
    for name in BASELINES:
        assert DETECTORS[name].name == name


@pytest.mark.parametrize("name,settings", [("spectral", {"rule": "outlier"}),
                                           ("activation_clustering", {}),
                                           ("activation_clustering", {"reduce": "pca"})])
def test_hidden_state_detectors_find_the_shifted_samples(name, settings):
    states, labels, truth = shifted_set()
    result = get_detector(name, **settings).detect(features_of(hidden=states, pseudo_labels=labels))
    precision, recall = precision_recall(result.flagged, truth)
    assert recall >= 0.9 and precision >= 0.8, (precision, recall)
    assert result.verdict == "poisoned" and result.detector == name
    assert result.scores.shape == truth.shape and np.isfinite(result.scores).all()
    # The ranking puts the shifted samples first.
    assert truth[result.ranked()[:20]].mean() >= 0.9


def test_spectral_paper_rule_removes_one_and_a_half_eps_of_every_class(monkeypatch):
    states, labels, truth = shifted_set()
    result = get_detector("spectral").detect(features_of(hidden=states, pseudo_labels=labels))
    per_class = {c["class"]: c for c in result.details["classes"]}
    assert {name: c["n_flagged"] for name, c in per_class.items()} == {"A": 30, "B": 22, "C": 22, "<pooled>": 0}
    assert per_class["<pooled>"]["n"] == 3
    assert result.flagged.sum() == 74 and result.flagged[truth == 1].all()
    # Paper scores: squared projection on the top right-singular vector of the centred class.
    members = np.flatnonzero(labels == "A")
    centred = states[members].astype(np.float64) - states[members].astype(np.float64).mean(0)
    top = np.linalg.svd(centred, full_matrices=False)[2][0]
    np.testing.assert_allclose(result.details["raw_scores"][members], (centred @ top) ** 2, rtol=1e-6)
    # Large groups take the Lanczos path (scipy svds): the same vector to rounding.
    monkeypatch.setattr(baselines, "FULL_SVD_LIMIT", 5)
    lanczos = get_detector("spectral").detect(features_of(hidden=states, pseudo_labels=labels))
    np.testing.assert_array_equal(lanczos.flagged, result.flagged)
    np.testing.assert_allclose(lanczos.details["raw_scores"], result.details["raw_scores"], rtol=1e-6, atol=1e-9)
    # A larger eps removes more.
    wider = get_detector("spectral", expected_rate=0.2).detect(features_of(hidden=states, pseudo_labels=labels))
    assert wider.flagged.sum() == 60 + 45 + 45


def test_hidden_state_detectors_leave_clean_classes_alone():
    states, labels, truth = shifted_set()
    clean = truth == 0
    features = features_of(hidden=states[clean], pseudo_labels=labels[clean])
    for name, settings in (("spectral", {"rule": "outlier"}), ("activation_clustering", {"min_silhouette": 0.1})):
        result = get_detector(name, **settings).detect(features)
        assert result.flagged.sum() <= 2, name
    # The published size rule alone splits off a third of a clean Gaussian class here.
    sizes = get_detector("activation_clustering").detect(features).details["classes"]
    assert [c["class"] for c in sizes if c["n_flagged"]] == ["A"]
    # With the gate, the shifted samples are still found.
    states, labels, truth = shifted_set()
    gated = get_detector("activation_clustering", min_silhouette=0.1).detect(
        features_of(hidden=states, pseudo_labels=labels))
    assert precision_recall(gated.flagged, truth) == (1.0, 1.0)


def test_strip_flags_the_low_entropy_samples():
    rng = np.random.default_rng(0)
    entropy = rng.uniform(1.5, 3.0, 100)
    low = np.zeros(100, dtype=bool)
    low[rng.choice(100, 10, replace=False)] = True
    entropy[low] = rng.uniform(0.05, 0.3, 10)
    entropy[np.flatnonzero(~low)[0]] = np.nan  # an unreadable sample is never flagged
    result = get_detector("strip").detect(features_of(strip_entropy=entropy))
    assert result.flagged[low].all() and result.flagged.sum() == 15  # floor(1.5 * 0.1 * 100)
    assert not result.flagged[np.isnan(entropy)].any()
    finite = np.isfinite(entropy)
    np.testing.assert_array_equal(result.scores[finite], -entropy[finite])
    assert set(result.ranked()[:10]) == set(np.flatnonzero(low))
    gmm = get_detector("strip", rule="gmm").detect(features_of(strip_entropy=entropy))
    np.testing.assert_array_equal(gmm.flagged, low)
    assert get_detector("strip", expected_rate=0.05).detect(features_of(strip_entropy=entropy)).flagged.sum() == 7


def test_random_drop_is_a_seeded_fraction():
    features = features_of(anything=np.zeros(50))
    first = get_detector("random_drop", seed=1).detect(features)
    again = get_detector("random_drop", seed=1).detect(features)
    other = get_detector("random_drop", seed=2).detect(features)
    assert first.flagged.sum() == 10 and other.flagged.sum() == 10
    np.testing.assert_array_equal(first.flagged, again.flagged)
    np.testing.assert_array_equal(first.scores, again.scores)
    assert not np.array_equal(first.flagged, other.flagged)
    assert first.flagged[first.ranked()[:10]].all()  # the flags are the top scores
    assert get_detector("random_drop", fraction=0.5).detect(features).flagged.sum() == 25


def test_none_and_oracle_are_the_reference_lines():
    truth = np.array([0, 1, 0, 0, 1])
    features = features_of(truth=truth)
    none = get_detector("none").detect(features)
    assert not none.flagged.any() and (none.scores == 0).all() and none.verdict == "clean"
    oracle = get_detector("oracle").detect(features)
    np.testing.assert_array_equal(oracle.flagged, truth.astype(bool))
    assert oracle.verdict == "poisoned"
    assert get_detector("oracle").detect(features_of(truth=np.zeros(4))).verdict == "clean"


@pytest.mark.parametrize("name,present,missing", [
    ("spectral", {"pseudo_labels": ["a"] * 4}, "hidden"),
    ("spectral", {"hidden": np.zeros((4, 3))}, "pseudo_labels"),
    ("activation_clustering", {"pseudo_labels": ["a"] * 4}, "hidden"),
    ("activation_clustering", {"hidden": np.zeros((4, 3))}, "pseudo_labels"),
    ("strip", {"hidden": np.zeros((4, 3))}, "strip_entropy"),
    ("oracle", {"strip_entropy": np.zeros(4)}, "truth"),
])
def test_a_missing_feature_is_named(name, present, missing):
    with pytest.raises(ValueError, match=f"'{missing}'"):
        get_detector(name).detect(features_of(**present))


def test_settings_are_checked():
    with pytest.raises(TypeError):
        get_detector("spectral", eps=0.1)
    with pytest.raises(TypeError):
        get_detector("random_drop", rate=0.1)
    with pytest.raises(ValueError):
        get_detector("strip", rule="median")
    with pytest.raises(ValueError, match="rows"):
        get_detector("strip").detect(SampleFeatures(ids=["a", "b"], extra={"strip_entropy": np.zeros(3)}))


# ---------------------------------------------------------------- signals on the tiny checkpoint

@pytest.fixture(scope="module")
def tiny(tiny_base, tiny_world):
    model, processor, images, questions, answers = tiny_samples(tiny_base, tiny_world, 6)
    # The briefly pre-trained model's decision states differ little between samples and its
    # first-token distribution is almost uniform. A random head (untied from the embeddings) that
    # reads only what varies around their mean makes STRIP's entropies differ between samples
    # and overlays, so the comparisons below are between different numbers.
    mean = torch.from_numpy(decision_hidden(model, processor, images, questions)).double().mean(0)
    mean /= mean.norm()
    generator = torch.Generator().manual_seed(0)
    head = torch.randn(model.lm_head.weight.shape, generator=generator, dtype=torch.float64) * 4.0
    model.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(head - torch.outer(head @ mean, mean))
    assert len({len(processor.tokenizer(q)["input_ids"]) for q in questions}) > 1  # batches get padded
    return model, processor, images, questions, answers


def _single_forward(model, processor, image, question):
    from bye.models.chat import encode_prompt

    with torch.no_grad():
        return model(**encode_prompt(processor, image, question), use_cache=False, output_hidden_states=True)


def test_decision_hidden_is_the_last_prompt_state_batched_or_not(tiny):
    model, processor, images, questions, _ = tiny
    hidden = decision_hidden(model, processor, images, questions, batch_size=4)  # batches of 4 and 2
    assert hidden.shape == (6, model.config.text_config.hidden_size) and hidden.dtype == np.float32
    assert np.isfinite(hidden).all()
    single = decision_hidden(model, processor, images, questions, batch_size=1)
    np.testing.assert_allclose(hidden, single, atol=1e-4, rtol=0)
    reference = _single_forward(model, processor, images[2], questions[2]).hidden_states[-1][0, -1].numpy()
    np.testing.assert_allclose(hidden[2], reference, atol=1e-4, rtol=0)


def test_overlay_partners_never_pick_the_sample_itself():
    partners = overlay_partners(7, 4, seed=3)
    assert partners.shape == (7, 4)
    assert all(i not in row and len(set(row)) == 4 for i, row in enumerate(partners))
    np.testing.assert_array_equal(partners, overlay_partners(7, 4, seed=3))
    assert not np.array_equal(partners, overlay_partners(7, 4, seed=4))
    few = overlay_partners(3, 5, seed=0)  # fewer others than overlays: drawn with replacement
    assert all(i not in row for i, row in enumerate(few))
    with pytest.raises(ValueError):
        overlay_partners(1, 2)


def test_strip_entropy_batched_equals_one_by_one_and_is_seeded(tiny):
    model, processor, images, questions, _ = tiny
    entropy = strip_entropy(model, processor, images, questions, n_overlays=2, seed=0, batch_size=5)
    assert entropy.shape == (6,) and np.isfinite(entropy).all()
    assert (entropy >= 0).all() and (entropy <= np.log(model.config.text_config.vocab_size) + 1e-6).all()
    single = strip_entropy(model, processor, images, questions, n_overlays=2, seed=0, batch_size=1)
    np.testing.assert_allclose(entropy, single, atol=1e-4, rtol=0)
    again = strip_entropy(model, processor, images, questions, n_overlays=2, seed=0, batch_size=5)
    np.testing.assert_array_equal(entropy, again)
    # Sample 0 by hand: its partners' images blended in, its own question, the first token's entropy.
    by_hand = [first_token_entropy(_single_forward(model, processor, blend(images[0], images[j], 0.5),
                                                   questions[0]).logits[:, -1])[0]
               for j in overlay_partners(6, 2, seed=0)[0]]
    assert entropy[0] == pytest.approx(np.mean(by_hand), abs=1e-4)
    assert np.ptp(entropy) > 0.5  # the comparisons above are not between equal numbers
    other = strip_entropy(model, processor, images, questions, n_overlays=2, seed=1, batch_size=5)
    assert np.abs(entropy - other).max() > 5e-3


def test_signals_feed_the_detectors(tiny):
    model, processor, images, questions, answers = tiny
    features = features_of(hidden=decision_hidden(model, processor, images, questions),
                           pseudo_labels=np.array(answers),
                           strip_entropy=strip_entropy(model, processor, images, questions, n_overlays=1))
    for name in ("spectral", "activation_clustering", "strip"):
        result = get_detector(name).detect(features)
        assert result.scores.shape == (6,) and result.flagged.dtype == bool
        assert result.verdict in {"poisoned", "clean"}
