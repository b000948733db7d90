import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from bye.detect.api import (BYEDetector, SampleFeatures, analyse, BYESettings, find_backdoor_samples,
                            get_backdoor_scores, get_detector)
from bye.detect.cluster import VerdictRule, cluster_scores, decide
from bye.detect.profile import profile_layers


def poisoned_table(n=200, layers=6, rate=0.1, seed=0, sensitive=(2, 3), drop=1.5):
    """Entropies near ln 64 for clean samples; the poisoned ones collapse in the sensitive layers."""
    rng = np.random.default_rng(seed)
    table = rng.normal(3.6, 0.08, size=(n, layers))
    poisoned = np.zeros(n, dtype=bool)
    poisoned[rng.choice(n, size=int(round(rate * n)), replace=False)] = True
    for layer in sensitive:
        table[poisoned, layer] -= drop + rng.normal(0, 0.05, poisoned.sum())
    return table, poisoned


def published_steps(entropy):
    """The published rules written out step by step, independently of the library."""
    sensitive = []
    for layer in range(entropy.shape[1]):
        gmm = GaussianMixture(n_components=2, random_state=0).fit(entropy[:, layer].reshape(-1, 1))
        mu1, mu2 = gmm.means_.ravel()
        s1, s2 = np.sqrt(gmm.covariances_.ravel())
        if abs(mu1 - mu2) > 2 * (s1 + s2):
            sensitive.append(layer)
    score = entropy[:, sensitive].mean(axis=1)
    gmm = GaussianMixture(n_components=2, random_state=0).fit(score.reshape(-1, 1))
    labels = gmm.predict(score.reshape(-1, 1))
    flagged = labels == int(np.argmin(gmm.means_.ravel()))
    return sensitive, flagged


def test_faithful_to_the_published_rules_on_a_fixed_table():
    entropy, _ = poisoned_table(seed=3)
    sensitive, flagged = published_steps(entropy)
    analysis = analyse(entropy, BYESettings(use_verdict=False))
    assert analysis.profile.sensitive_layers == sensitive == [2, 3]
    assert np.array_equal(analysis.clusters.flagged, flagged)
    assert np.array_equal(find_backdoor_samples(entropy, use_verdict=False), flagged)


def test_flags_exactly_the_collapsed_samples():
    entropy, poisoned = poisoned_table(seed=1)
    result = BYEDetector().detect(SampleFeatures(ids=list(map(str, range(len(entropy)))), entropy=entropy))
    assert result.verdict == "poisoned"
    assert np.array_equal(result.flagged, poisoned)


def test_paper_rule_is_looser_than_the_code_rule():
    entropy, _ = poisoned_table(seed=2, drop=0.35)
    code = profile_layers(entropy, rule="code").sensitive_layers
    paper = profile_layers(entropy, rule="paper", tau=2.0).sensitive_layers
    assert set(code) <= set(paper)
    for stats in profile_layers(entropy, rule="paper").layers:
        expected = abs(stats.means[1] - stats.means[0]) / np.sqrt(stats.sigmas[0] ** 2 + stats.sigmas[1] ** 2)
        assert stats.bsi == pytest.approx(expected)
        assert stats.sensitive == (stats.bsi >= 2.0)


def test_no_sensitive_layer_is_a_clean_outcome_not_a_crash():
    entropy = np.random.default_rng(0).normal(3.6, 0.1, size=(150, 5))
    analysis = analyse(entropy)
    assert analysis.profile.sensitive_layers == []
    assert analysis.verdict.label == "clean" and "no sensitive layer" in analysis.verdict.reasons
    assert not find_backdoor_samples(entropy).any()


def test_clean_submission_keeps_every_sample_while_published_method_removes_a_cluster():
    # A bimodal but balanced clean table (two question types), the failure REFERENCE section 5 reports.
    rng = np.random.default_rng(4)
    entropy = np.concatenate([rng.normal(3.0, 0.05, (100, 4)), rng.normal(3.6, 0.05, (100, 4))])
    assert find_backdoor_samples(entropy, use_verdict=False).sum() == 100
    assert not find_backdoor_samples(entropy).any()


def test_ranked_indices_put_the_lowest_entropy_first():
    entropy, poisoned = poisoned_table(seed=5)
    ranked = find_backdoor_samples(entropy, ranked=True)
    assert set(ranked) == set(np.flatnonzero(poisoned))
    means = entropy[:, [2, 3]].mean(axis=1)
    assert list(ranked) == sorted(ranked, key=lambda i: means[i])


def test_scores_are_higher_for_more_suspicious_samples():
    entropy, poisoned = poisoned_table(seed=6)
    scores = get_backdoor_scores(entropy)
    assert scores[poisoned].min() > scores[~poisoned].max()


def test_kmeans_clustering_agrees_with_gmm_on_clear_cases():
    entropy, poisoned = poisoned_table(seed=7)
    assert np.array_equal(find_backdoor_samples(entropy, clustering="kmeans"), poisoned)


def test_nan_entropies_do_not_crash_and_are_not_flagged():
    entropy, _ = poisoned_table(seed=8)
    entropy[0, :] = np.nan
    result = get_detector("bye").detect(SampleFeatures(ids=[str(i) for i in range(len(entropy))], entropy=entropy))
    assert not result.flagged[0]


def test_verdict_rejects_a_majority_cluster():
    scores = np.concatenate([np.full(80, 1.0), np.full(20, 3.0)]) + np.random.default_rng(0).normal(0, 0.01, 100)
    clusters = cluster_scores(scores)
    assert clusters.flagged.sum() == 80
    verdict = decide(scores, 1, clusters, VerdictRule(max_flagged_fraction=0.5))
    assert not verdict.poisoned and any("flagged fraction" in r for r in verdict.reasons)


TEMPLATES = ["Is there a {} {}?", "What colour is the {1}?", "How many {1}s are there?",
             "Which shape is further left, the {0} {1} or the other one?"]


def questions_and_modes(n=400, seed=0):
    """Questions of four templates; the clean entropy of the "Is there" ones sits lower (a prompt mode)."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 4, n)
    colours, shapes = ["red", "blue", "green"], ["circle", "square", "cross"]
    questions = [TEMPLATES[k].format(colours[rng.integers(3)], shapes[rng.integers(3)]) for k in kinds]
    entropy = rng.normal(3.6, 0.08, size=(n, 4))
    entropy[kinds == 0, 2:] -= 1.0
    return entropy, questions, kinds == 0


def test_prompt_auroc_tells_a_prompt_mode_from_a_random_subset():
    from bye.detect.cluster import prompt_auroc

    _, questions, mode = questions_and_modes()
    assert prompt_auroc(questions, mode) > 0.95
    random = np.random.default_rng(1).random(len(questions)) < 0.1  # what a poisoner picks
    assert 0.35 < prompt_auroc(questions, random) < 0.65
    assert np.isnan(prompt_auroc(questions, np.arange(len(questions)) == 0))  # one flagged sample: no fold


def test_verdict_calls_a_prompt_mode_clean_only_when_told_to_check_it():
    entropy, questions, mode = questions_and_modes()
    features = SampleFeatures(ids=[str(i) for i in range(len(entropy))], entropy=entropy,
                              extra={"questions": questions})
    published = get_detector("bye").detect(features)  # the rule off (the default): the mode is "poisoned"
    assert published.verdict == "poisoned" and np.array_equal(published.flagged, mode)
    checked = get_detector("bye", verdict={"max_prompt_auroc": 0.75}).detect(features)
    assert checked.verdict == "clean" and not checked.flagged.any()
    assert checked.details["evidence"]["prompt_auroc"] > 0.95
    assert any("question text alone" in r for r in checked.details["verdict_reasons"])
    # A trigger's collapse, on a random tenth of the same questions, is still found.
    poisoned_entropy, poisoned = poisoned_table(n=len(entropy), layers=4, sensitive=(2, 3), seed=5)
    found = get_detector("bye", verdict={"max_prompt_auroc": 0.75}).detect(
        SampleFeatures(ids=features.ids, entropy=poisoned_entropy, extra={"questions": questions}))
    assert found.verdict == "poisoned" and np.array_equal(found.flagged, poisoned)
    assert found.details["evidence"]["prompt_auroc"] < 0.75


def test_prompt_residuals_remove_a_prompt_mode_and_keep_a_trigger():
    """Clean attention with a prompt mode ("Is there" questions lower in layers 2-3) and a trigger's
    collapse in layer 3 on a random tenth: on the entropies the mode is what splits the layers and the
    prompt check calls it clean; on the prompt residuals the mode is gone and the trigger is found."""
    entropy, questions, mode = questions_and_modes(n=600, seed=3)
    poisoned = np.random.default_rng(7).random(len(entropy)) < 0.1
    entropy[poisoned, 3] -= 1.0
    features = SampleFeatures(ids=[str(i) for i in range(len(entropy))], entropy=entropy,
                              extra={"questions": questions})
    raw = get_detector("bye", verdict={"max_prompt_auroc": 0.75}).detect(features)
    assert raw.verdict == "clean" and 2 in raw.details["sensitive_layers"]
    found = get_detector("bye", residualise="prompt", verdict={"max_prompt_auroc": 0.75}).detect(features)
    assert found.details["sensitive_layers"] == [3] and found.details["residualise"] == "prompt"
    assert found.verdict == "poisoned" and np.array_equal(found.flagged, poisoned)
    assert found.details["columns"]["mean_prompt_residual"].shape == (len(entropy),)
    assert np.array_equal(find_backdoor_samples(entropy, questions=questions, residualise="prompt",
                                                verdict={"max_prompt_auroc": 0.75}), poisoned)


def test_prompt_residuals_are_cross_fitted_deterministic_and_keep_nans():
    from bye.detect.cluster import prompt_residuals, scored_table

    entropy, questions, mode = questions_and_modes(n=300, seed=4)
    entropy[5, 1] = np.nan
    residuals = prompt_residuals(entropy, questions, seed=2)
    assert np.isnan(residuals[5, 1]) and np.isfinite(np.delete(residuals[:, 1], 5)).all()
    assert np.array_equal(residuals, prompt_residuals(entropy, questions, seed=2), equal_nan=True)
    # The mode is gone from layer 2 (1 nat before), not from the raw table.
    assert abs(residuals[mode, 2].mean() - residuals[~mode, 2].mean()) < 0.1
    assert entropy[~mode, 2].mean() - entropy[mode, 2].mean() > 0.9
    # Cross-fitted: one sample whose question is its own, with an outlying entropy, is not fitted away.
    questions[0], entropy[0, 0] = "zebra zebra", entropy[:, 0].mean() + 2.0
    assert prompt_residuals(entropy, questions)[0, 0] > 1.5
    assert np.array_equal(scored_table(entropy), entropy, equal_nan=True)
    with pytest.raises(ValueError, match="questions"):
        scored_table(entropy, residualise="prompt")
    with pytest.raises(ValueError, match="unknown residualise"):
        scored_table(entropy, residualise="answers")
    with pytest.raises(ValueError, match="questions for"):
        prompt_residuals(entropy, questions[:-1])


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown detector"):
        get_detector("nope")
    with pytest.raises(ValueError, match="separation rule"):
        profile_layers(np.zeros((10, 2)), rule="nope")
    with pytest.raises(ValueError, match="clustering method"):
        cluster_scores(np.arange(10.0), method="nope")


def test_a_saved_profile_reloads_and_gives_the_same_detection(tmp_path):
    """The pipeline profiles in one stage and clusters in the next: the JSON round trip changes nothing."""
    import json

    from bye.detect.profile import LayerProfile
    from bye.detect.scan import _jsonable

    entropy, poisoned = poisoned_table(seed=11)
    entropy[:, 5] = 3.0  # a degenerate layer: NaN statistics must survive the round trip too
    profile = profile_layers(entropy)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(_jsonable(profile.to_dict())))
    reloaded = LayerProfile.from_dict(json.loads(path.read_text()))
    assert reloaded.sensitive_layers == profile.sensitive_layers == [2, 3]
    ids = [str(i) for i in range(len(entropy))]
    direct = get_detector("bye").detect(SampleFeatures(ids=ids, entropy=entropy))
    staged = get_detector("bye").detect(SampleFeatures(ids=ids, entropy=entropy, extra={"profile": reloaded}))
    assert np.array_equal(direct.flagged, staged.flagged) and np.array_equal(direct.flagged, poisoned)
    with pytest.raises(ValueError, match="layers"):
        analyse(entropy[:, :3], BYESettings(), reloaded)
    with pytest.raises(ValueError, match="residualise='none'"):  # a profile of the entropies, a residual detector
        analyse(entropy, BYESettings(residualise="prompt"), reloaded, questions=[f"q{i % 3}" for i in range(len(ids))])
