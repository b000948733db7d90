"""Clustering the per-sample scores and deciding whether a submission is poisoned at all.

BYE's score is the mean entropy over the sensitive layers; a two-component model splits the
samples and the low-entropy component is flagged (``"gmm"``, the published choice, or
``"kmeans"``). The published method stops there and so always removes a cluster, even from a
clean submission. :func:`decide` adds the missing verdict: the submission is called poisoned
only when the evidence says the scores really come from two populations, a small one apart
from the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

METHODS = ("gmm", "kmeans")


@dataclass(frozen=True)
class ClusterResult:
    method: str
    flagged: np.ndarray  # (N,) bool: the low-entropy component
    low_mean: float
    high_mean: float
    low_sigma: float
    high_sigma: float
    cut: float  # midpoint between the highest flagged and the lowest kept score

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("flagged")
        data["n_flagged"] = int(self.flagged.sum())
        return data


def cluster_scores(scores: np.ndarray, *, method: str = "gmm", seed: int = 0) -> ClusterResult:
    """Split ``(N,)`` scores (mean entropies) in two; flag the component with the lower mean."""
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; expected one of {METHODS}")
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    values = scores[finite].reshape(-1, 1)
    if len(values) < 2 or np.ptp(values) == 0:
        flagged = np.zeros(len(scores), dtype=bool)
        mean = float(values.mean()) if len(values) else float("nan")
        return ClusterResult(method, flagged, mean, mean, 0.0, 0.0, float("nan"))
    if method == "gmm":
        model = GaussianMixture(n_components=2, random_state=seed).fit(values)
        labels = model.predict(values)
        low = int(np.argmin(model.means_.ravel()))
    else:
        model = KMeans(n_clusters=2, random_state=seed, n_init=10).fit(values)
        labels = model.labels_
        low = int(np.argmin(model.cluster_centers_.ravel()))
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[np.flatnonzero(finite)[labels == low]] = True
    return split_result(scores, flagged, method)


def split_result(scores: np.ndarray, flagged: np.ndarray, method: str) -> ClusterResult:
    """The statistics of a split of ``scores`` into ``flagged`` (the low side) and the other finite ones."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    low_values, high_values = scores[flagged & finite], scores[finite & ~flagged]
    if len(low_values) == 0 or len(high_values) == 0:
        cut = float("nan")
    else:
        cut = float((low_values.max() + high_values.min()) / 2)
    return ClusterResult(
        method=method,
        flagged=flagged & finite,
        low_mean=float(low_values.mean()) if len(low_values) else float("nan"),
        high_mean=float(high_values.mean()) if len(high_values) else float("nan"),
        low_sigma=float(low_values.std()) if len(low_values) else float("nan"),
        high_sigma=float(high_values.std()) if len(high_values) else float("nan"),
        cut=cut,
    )


def robust_scale(values: np.ndarray) -> float:
    """A normal sample's sigma estimated robustly: ``1.4826 MAD``. When more than half the values
    are equal (MAD 0) the mean absolute deviation (x 1.2533) stands in; all values equal give 0."""
    values = np.asarray(values, dtype=np.float64)
    deviation = np.abs(values - np.median(values))
    scale = 1.4826 * np.median(deviation)
    return float(scale if scale > 0 else 1.2533 * deviation.mean())


@dataclass(frozen=True)
class VerdictRule:
    """Thresholds of the "is this submission poisoned at all?" decision (params: ``detect.verdict``).

    All must hold for a "poisoned" verdict:
    * at least one sensitive layer;
    * a two-component Gaussian model of the scores beats one component by ``min_bic_gain``
      (BIC difference);
    * the two components are apart: ``|mu1 - mu2| / sqrt(s1^2 + s2^2) >= min_separation``;
    * the flagged component is a minority: ``0 < flagged fraction <= max_flagged_fraction``;
    * with ``max_prompt_auroc`` set and the questions given, the question text alone does not tell
      the flagged samples from the others: :func:`prompt_auroc` ``<= max_prompt_auroc``.
    """

    min_bic_gain: float = 10.0
    min_separation: float = 2.0
    max_flagged_fraction: float = 0.4
    max_prompt_auroc: float | None = None


@dataclass(frozen=True)
class Verdict:
    poisoned: bool
    reasons: tuple[str, ...]
    evidence: dict

    @property
    def label(self) -> str:
        return "poisoned" if self.poisoned else "clean"


def bic_gain(scores: np.ndarray, *, seed: int = 0) -> float:
    """BIC(1 Gaussian) - BIC(2 Gaussians) on the finite scores: > 0 favours two components."""
    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)].reshape(-1, 1)
    if len(values) < 4 or np.ptp(values) == 0:
        return 0.0
    one = GaussianMixture(n_components=1, random_state=seed).fit(values).bic(values)
    two = GaussianMixture(n_components=2, random_state=seed).fit(values).bic(values)
    return float(one - two)


def dip_pvalue(scores: np.ndarray) -> float:
    """Hartigan's dip test p-value (small = not unimodal); reported as evidence."""
    import diptest

    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 4:
        return 1.0
    return float(diptest.diptest(values)[1])


def prompt_auroc(questions: Sequence[str], flagged: np.ndarray, *, seed: int = 0, folds: int = 5) -> float:
    """How well the question text alone tells the flagged samples from the others: the cross-validated
    AUROC of a bag-of-words logistic regression (word 1-2 grams, ``folds`` stratified folds). A
    poisoner picks its samples whatever their question, so a flagged set of poisoned samples scores
    near 0.5; a mode of clean attention that one question form brings (all "Is there ...?" questions
    attending alike) scores near 1. NaN when either side has fewer than two samples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    target = np.asarray(flagged, dtype=bool)
    k = int(min(folds, target.sum(), (~target).sum()))
    if k < 2:
        return float("nan")
    split = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    probability = cross_val_predict(_on_question_words(LogisticRegression(max_iter=1000)), [str(q) for q in questions],
                                    target, cv=split, method="predict_proba")
    return float(roc_auc_score(target, probability[:, 1]))


def _on_question_words(estimator):
    """``estimator`` on the question text as word 1-2 gram TF-IDF features."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), estimator)


RESIDUALISE = ("none", "prompt")


def prompt_residuals(table: np.ndarray, questions: Sequence[str], *, seed: int = 0, folds: int = 5,
                     alpha: float = 1.0) -> np.ndarray:
    """Each column of an ``(N, L)`` table (the per-layer entropies) minus what the question text alone
    predicts of it: a ridge regression on word 1-2 gram TF-IDF features, cross-fitted over ``folds``
    shuffled folds (a sample's prediction never comes from a model that saw it).

    Clean attention has modes that the prompt brings (every "Is there ...?" question attending
    more narrowly than the colour questions; README, "Detection (BYE)"); a poisoner picks its
    samples whatever their question, so the trigger's collapse stays in the residual while the
    prompt's modes leave it. NaN entries (no visible image token) stay NaN and are left out of the fit.
    An attack that poisons only one question form is, in part, removed with the prompt's modes."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    table = np.asarray(table, dtype=np.float64)
    questions = [str(q) for q in questions]
    if len(questions) != len(table):
        raise ValueError(f"{len(questions)} questions for {len(table)} rows")
    residuals = np.full_like(table, np.nan)
    for column in range(table.shape[1]):
        values = table[:, column]
        rows = np.flatnonzero(np.isfinite(values))
        k = min(folds, len(rows))
        if k < 2:
            residuals[rows, column] = values[rows] - values[rows].mean() if len(rows) else values[rows]
            continue
        for train, test in KFold(n_splits=k, shuffle=True, random_state=seed).split(rows):
            try:
                model = _on_question_words(Ridge(alpha=alpha)).fit([questions[i] for i in rows[train]],
                                                                   values[rows[train]])
                predicted = model.predict([questions[i] for i in rows[test]])
            except ValueError:  # no word in any training question: the text predicts only the mean
                predicted = values[rows[train]].mean()
            residuals[rows[test], column] = values[rows[test]] - predicted
    return residuals


def decide(scores: np.ndarray, n_sensitive_layers: int, clusters: ClusterResult, rule: VerdictRule = VerdictRule(),
           *, seed: int = 0, questions: Sequence[str] | None = None) -> Verdict:
    n = int(np.isfinite(scores).sum())
    flagged_fraction = float(clusters.flagged.sum() / n) if n else 0.0
    spread = float(np.sqrt(clusters.low_sigma ** 2 + clusters.high_sigma ** 2))
    separation = float(abs(clusters.high_mean - clusters.low_mean) / spread) if spread > 0 else (
        float("inf") if clusters.high_mean != clusters.low_mean else 0.0)
    evidence = {
        "n_sensitive_layers": n_sensitive_layers,
        "bic_gain": bic_gain(scores, seed=seed) if n_sensitive_layers else 0.0,
        "separation": separation,
        "flagged_fraction": flagged_fraction,
        "dip_pvalue": dip_pvalue(scores) if n_sensitive_layers else 1.0,
    }
    reasons = []
    if n_sensitive_layers == 0:
        reasons.append("no sensitive layer")
    if evidence["bic_gain"] < rule.min_bic_gain:
        reasons.append(f"one population explains the scores (BIC gain {evidence['bic_gain']:.1f} < {rule.min_bic_gain})")
    if separation < rule.min_separation:
        reasons.append(f"components overlap (separation {separation:.2f} < {rule.min_separation})")
    if not 0 < flagged_fraction <= rule.max_flagged_fraction:
        reasons.append(f"flagged fraction {flagged_fraction:.3f} outside (0, {rule.max_flagged_fraction}]")
    if rule.max_prompt_auroc is not None and questions is not None:
        if len(questions) != len(scores):
            raise ValueError(f"{len(questions)} questions for {len(scores)} scores")
        evidence["prompt_auroc"] = prompt_auroc(questions, clusters.flagged, seed=seed)
        if evidence["prompt_auroc"] > rule.max_prompt_auroc:
            reasons.append(f"the question text alone tells the flagged samples apart (prompt AUROC "
                           f"{evidence['prompt_auroc']:.2f} > {rule.max_prompt_auroc}): a mode of the prompts, "
                           "not of a trigger")
    return Verdict(poisoned=not reasons, reasons=tuple(reasons), evidence=evidence)


def scored_table(entropy: np.ndarray, *, residualise: str = "none", questions: Sequence[str] | None = None,
                 seed: int = 0) -> np.ndarray:
    """The ``(N, L)`` table BYE profiles and scores: the entropies themselves (``"none"``, the published
    method) or their prompt residuals (``"prompt"``, :func:`prompt_residuals`; needs the questions)."""
    if residualise not in RESIDUALISE:
        raise ValueError(f"unknown residualise {residualise!r}; expected one of {RESIDUALISE}")
    if residualise == "none":
        return np.asarray(entropy, dtype=np.float64)
    if questions is None:
        raise ValueError(f"residualise={residualise!r} needs the samples' questions")
    return prompt_residuals(entropy, questions, seed=seed)
