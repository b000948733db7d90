"""Baseline detectors behind the same :class:`~bye.detect.api.Detector` interface as BYE.

Importing this module registers them in :data:`~bye.detect.api.DETECTORS`:

``spectral``
    Spectral Signatures (Tran et al. 2018) on the decision-position hidden states
    (``extra["hidden"]``) grouped by pseudo-class (``extra["pseudo_labels"]``, the answer).
``activation_clustering``
    Activation Clustering (Chen et al. 2018) on the same hidden states and pseudo-classes.
``strip``
    STRIP (Gao et al. 2019) on ``extra["strip_entropy"]``
    (:func:`bye.detect.signals.strip_entropy`).
``random_drop``, ``none``, ``oracle``
    Reference lines: drop a random fraction, drop nothing, drop exactly the truly poisoned
    (``extra["truth"]``, evaluation only).

Every detector takes its settings as constructor keyword arguments (an unknown one is a
``TypeError``) and returns scores (higher = more suspicious), a flag per sample and a verdict
(``"poisoned"`` when it flags anything, except ``oracle``, which answers the truth).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.sparse.linalg import svds
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score

from bye.detect.api import DetectionResult, Detector, SampleFeatures, register_detector
from bye.detect.cluster import cluster_scores, robust_scale

POOLED = "<pooled>"  # the group of the pseudo-classes too small to stand alone
FULL_SVD_LIMIT = 2000  # beyond this min(n, H), the top singular vector comes from Lanczos (svds)


# ---------------------------------------------------------------- helpers

def _feature(features: SampleFeatures, key: str, detector: str) -> np.ndarray:
    """``features.extra[key]`` as an array with one row per sample, or a ValueError naming the key."""
    value = features.extra.get(key)
    if value is None:
        raise ValueError(f"the {detector!r} detector needs features.extra[{key!r}], which is missing")
    array = np.asarray(value)
    if len(array) != len(features):
        raise ValueError(f"features.extra[{key!r}] has {len(array)} rows for {len(features)} samples")
    return array


def _hidden(features: SampleFeatures, detector: str) -> np.ndarray:
    hidden = _feature(features, "hidden", detector).astype(np.float64)
    if hidden.ndim != 2:
        raise ValueError(f"features.extra['hidden'] must be (N, H), got shape {hidden.shape}")
    if not np.isfinite(hidden).all():
        raise ValueError("features.extra['hidden'] holds non-finite values")
    return hidden


def _groups(labels: np.ndarray, min_size: int, *, pool: bool) -> list[tuple[str, np.ndarray]]:
    """``(name, indices)`` per pseudo-class of at least ``min_size`` samples (first-seen order),
    then, with ``pool``, one group of all the smaller ones (if it holds any sample)."""
    labels = np.asarray([str(label) for label in labels], dtype=object)
    names, first, inverse, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")  # sample indices grouped by class, ascending within
    bounds = np.concatenate([[0], np.cumsum(counts)])
    groups, small = [], []
    for k in np.argsort(first, kind="stable"):
        members = order[bounds[k]:bounds[k + 1]]
        if counts[k] >= min_size:
            groups.append((str(names[k]), members))
        else:
            small.append(members)
    if pool and small:
        groups.append((POOLED, np.sort(np.concatenate(small))))
    return groups


def _budget(rate: float, n: int) -> int:
    """``floor(rate * n)``, immune to ``1.5 * 0.1 * 20 = 3.0000000000000004``-style noise."""
    return max(0, min(n, math.floor(rate * n + 1e-9)))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` highest scores (ties: lower index first)."""
    mask = np.zeros(len(scores), dtype=bool)
    if k > 0:
        mask[np.argsort(-scores, kind="stable")[:k]] = True
    return mask


def _result(name: str, scores: np.ndarray, flagged: np.ndarray, details: dict) -> DetectionResult:
    return DetectionResult(name, np.asarray(scores, dtype=np.float64), np.asarray(flagged, dtype=bool),
                           "poisoned" if flagged.any() else "clean", details)


# ---------------------------------------------------------------- Spectral Signatures

@dataclass(frozen=True)
class SpectralSettings:
    """expected_rate: the paper's eps (an upper bound on the poisoned fraction of a class).

    rule: ``"budget"`` (the paper): in every group, remove the ``floor(budget_factor * eps * n)``
    samples with the highest scores. ``"outlier"`` (not in the paper; gives the baseline a
    verdict): in every group, remove only the samples whose projection on the top singular
    vector is a robust outlier (``|p - median| / (1.4826 MAD) > z_threshold``), at most the
    paper's budget, highest scores first; a clean class then loses (almost) nothing.
    """

    expected_rate: float = 0.1
    budget_factor: float = 1.5
    rule: str = "budget"
    z_threshold: float = 3.5
    min_class_size: int = 2
    seed: int = 0  # the Lanczos start vector of very large groups only


def _top_direction(centred: np.ndarray, seed: int) -> np.ndarray:
    """The top right-singular vector of a centred ``(n, H)`` block."""
    if min(centred.shape) > FULL_SVD_LIMIT:
        _, _, vt = svds(centred, k=1, tol=1e-10, random_state=seed)
    else:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[0]


def _robust_z(values: np.ndarray) -> np.ndarray:
    """``|v - median| / (1.4826 MAD)`` (1.4826 MAD estimates a normal sample's sigma). When more
    than half the values are equal (MAD 0) the mean absolute deviation (x 1.2533) stands in;
    all values equal gives 0."""
    deviation = np.abs(values - np.median(values))
    scale = robust_scale(values)
    return deviation / scale if scale > 0 else np.zeros_like(deviation)


@register_detector("spectral")
class SpectralDetector(Detector):
    signals = ("hidden",)
    """Spectral Signatures: a backdoor leaves a trace along the top singular direction of a class.

    Per pseudo-class with at least ``min_class_size`` (2) samples, the smaller ones pooled in
    one group: centre the hidden states, project on the top right-singular vector, score =
    squared projection (``details["raw_scores"]``; what the flags rank within a group). Raw
    scores are not comparable across groups, so the returned ``scores`` are the squared robust
    z-scores of the projections within their group (about chi-square(1) for a clean group; 0 for
    a lone pooled sample). Flags follow ``rule`` (see :class:`SpectralSettings`).
    """

    def __init__(self, **settings):
        self.settings = SpectralSettings(**settings)
        if self.settings.rule not in ("budget", "outlier"):
            raise ValueError(f"unknown spectral rule {self.settings.rule!r}; expected 'budget' or 'outlier'")
        if not 0.0 <= self.settings.expected_rate <= 1.0:
            raise ValueError(f"expected_rate must be in [0, 1], got {self.settings.expected_rate}")

    def detect(self, features: SampleFeatures) -> DetectionResult:
        s = self.settings
        hidden = _hidden(features, self.name)
        labels = _feature(features, "pseudo_labels", self.name)
        n = len(features)
        raw, scores, flagged = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
        classes = []
        for name, members in _groups(labels, max(2, s.min_class_size), pool=True):
            budget = _budget(s.budget_factor * s.expected_rate, len(members))
            summary = {"class": name, "n": int(len(members)), "budget": budget, "n_flagged": 0}
            classes.append(summary)
            if len(members) < 2:
                continue
            centred = hidden[members] - hidden[members].mean(axis=0)
            if not np.any(centred):
                continue
            projection = centred @ _top_direction(centred, s.seed)
            score = projection ** 2
            raw[members] = score
            z = _robust_z(projection)
            scores[members] = z ** 2
            if s.rule == "budget":
                chosen = _top(score, budget)
            else:
                outlier = z > s.z_threshold
                chosen = _top(np.where(outlier, score, -np.inf), min(budget, int(outlier.sum())))
            flagged[members] = chosen
            summary.update(n_flagged=int(chosen.sum()), top_eigenvalue=float(score.mean()))
        details = {"settings": asdict(s), "classes": classes, "raw_scores": raw}
        return _result(self.name, scores, flagged, details)


# ---------------------------------------------------------------- Activation Clustering

@dataclass(frozen=True)
class ActivationClusteringSettings:
    """reduce: ``"ica"`` (FastICA, the authors' choice) or ``"pca"``, to ``n_components`` (10)
    dimensions; max_size: the smaller of the two clusters is poisoned when its share of the
    class is at most this (0.35, the authors' "relative size" analysis); min_silhouette: when
    set, it must also be a real split, a silhouette score above this (the authors' toolkit, ART,
    combines the two with 0.1); off by default, as the published size rule has no such gate;
    min_class_size: smaller pseudo-classes are not analysed."""

    n_components: int = 10
    reduce: str = "ica"
    max_size: float = 0.35
    min_silhouette: float | None = None
    min_class_size: int = 10
    seed: int = 0


@register_detector("activation_clustering")
class ActivationClusteringDetector(Detector):
    signals = ("hidden",)
    """Activation Clustering: poisoned samples of a class form their own small cluster.

    Per pseudo-class with at least ``min_class_size`` samples (smaller ones are left alone:
    score 0, never flagged): reduce the hidden states to ``n_components`` dimensions, split them
    with 2-means; the smaller cluster is flagged when its relative size is ``<= max_size``
    (and, with ``min_silhouette``, the split's silhouette score exceeds it).
    Score = distance (in the reduced space) to the larger cluster's centre divided by the class's
    largest such distance (in [0, 1]), plus 1 for a flagged sample: the method itself only
    decides per cluster, and distances of different classes' reduced spaces do not compare, so
    the flagged samples rank first and distance orders the rest within each tier.
    """

    def __init__(self, **settings):
        self.settings = ActivationClusteringSettings(**settings)
        if self.settings.reduce not in ("ica", "pca"):
            raise ValueError(f"unknown reduction {self.settings.reduce!r}; expected 'ica' or 'pca'")

    def _reduce(self, block: np.ndarray) -> np.ndarray:
        s = self.settings
        k = max(1, min(s.n_components, block.shape[0] - 1, block.shape[1]))
        centred = block - block.mean(axis=0)
        if s.reduce == "pca":
            return PCA(n_components=k, random_state=s.seed).fit_transform(centred)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return FastICA(n_components=k, whiten="unit-variance", max_iter=1000, tol=5e-3,
                           random_state=s.seed).fit_transform(centred)

    def detect(self, features: SampleFeatures) -> DetectionResult:
        s = self.settings
        hidden = _hidden(features, self.name)
        labels = _feature(features, "pseudo_labels", self.name)
        n = len(features)
        scores, flagged = np.zeros(n), np.zeros(n, dtype=bool)
        classes = []
        for name, members in _groups(labels, max(3, s.min_class_size), pool=False):
            summary = {"class": name, "n": int(len(members)), "n_flagged": 0}
            classes.append(summary)
            block = hidden[members]
            if np.ptp(block, axis=0).max() == 0:
                continue
            reduced = self._reduce(block)
            cluster = KMeans(n_clusters=2, n_init=10, random_state=s.seed).fit(reduced)
            sizes = np.bincount(cluster.labels_, minlength=2)
            if sizes.min() == 0:
                continue
            large = int(np.argmax(sizes))
            distance = np.linalg.norm(reduced - cluster.cluster_centers_[large], axis=1)
            relative = float(sizes.min() / len(members))
            silhouette = float(silhouette_score(reduced, cluster.labels_, sample_size=min(len(members), 2000),
                                                random_state=s.seed))
            poisoned = relative <= s.max_size and (s.min_silhouette is None or silhouette > s.min_silhouette)
            small = cluster.labels_ != large
            scores[members] = distance / distance.max() + (small if poisoned else 0.0)
            if poisoned:
                flagged[members[small]] = True
            summary.update(n_flagged=int(sizes.min()) if poisoned else 0, small_cluster_share=relative,
                           silhouette=silhouette)
        details = {"settings": asdict(s), "classes": classes}
        return _result(self.name, scores, flagged, details)


# ---------------------------------------------------------------- STRIP

@dataclass(frozen=True)
class StripSettings:
    """rule: ``"budget"`` (default): flag the ``floor(budget_factor * expected_rate * N)``
    lowest-entropy samples (STRIP sets its threshold from clean data, which there is none of;
    the budget bounds the false positives the same way ``spectral`` does). ``"gmm"``: flag the
    low-entropy component of a 2-component Gaussian mixture (:func:`bye.detect.cluster.cluster_scores`,
    as BYE does on its own score), which always flags a component, clean or not."""

    expected_rate: float = 0.1
    budget_factor: float = 1.5
    rule: str = "budget"
    seed: int = 0  # the mixture's initialisation


@register_detector("strip")
class StripDetector(Detector):
    signals = ("strip",)
    """STRIP: a prediction that stays put whatever image is blended in is held by a trigger.

    Score = minus ``extra["strip_entropy"]`` (a NaN entropy scores ``-inf`` and is never flagged).
    """

    def __init__(self, **settings):
        self.settings = StripSettings(**settings)
        if self.settings.rule not in ("budget", "gmm"):
            raise ValueError(f"unknown strip rule {self.settings.rule!r}; expected 'budget' or 'gmm'")

    def detect(self, features: SampleFeatures) -> DetectionResult:
        s = self.settings
        entropy = _feature(features, "strip_entropy", self.name).astype(np.float64)
        if entropy.ndim != 1:
            raise ValueError(f"features.extra['strip_entropy'] must be (N,), got shape {entropy.shape}")
        finite = np.isfinite(entropy)
        scores = np.where(finite, -entropy, -np.inf)
        if s.rule == "budget":
            k = min(_budget(s.budget_factor * s.expected_rate, len(entropy)), int(finite.sum()))
            flagged = _top(scores, k)
            details = {"budget": k}
        else:
            clusters = cluster_scores(entropy, method="gmm", seed=s.seed)
            flagged = clusters.flagged & finite
            details = {"clusters": clusters.summary()}
        cut = float(entropy[flagged].max()) if flagged.any() else float("nan")
        details.update(settings=asdict(s), entropy_cut=cut)
        return _result(self.name, scores, flagged, details)


# ---------------------------------------------------------------- reference lines

@register_detector("random_drop")
class RandomDropDetector(Detector):
    """Flags ``round(fraction * N)`` samples at random: the highest of ``N`` uniform scores drawn
    with ``numpy.random.default_rng(seed)``."""

    def __init__(self, *, fraction: float = 0.2, seed: int = 0):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.fraction, self.seed = fraction, seed

    def detect(self, features: SampleFeatures) -> DetectionResult:
        n = len(features)
        scores = np.random.default_rng(self.seed).random(n)
        flagged = _top(scores, int(round(self.fraction * n)))
        return _result(self.name, scores, flagged, {"settings": {"fraction": self.fraction, "seed": self.seed}})


@register_detector("none")
class NoDetector(Detector):
    """Keeps everything: scores 0, nothing flagged, verdict clean."""

    def __init__(self):
        pass

    def detect(self, features: SampleFeatures) -> DetectionResult:
        n = len(features)
        return DetectionResult(self.name, np.zeros(n), np.zeros(n, dtype=bool), "clean", {})


@register_detector("oracle")
class OracleDetector(Detector):
    """Flags exactly the truly poisoned samples (``extra["truth"]``, 0/1): the upper reference line."""

    def __init__(self):
        pass

    def detect(self, features: SampleFeatures) -> DetectionResult:
        truth = _feature(features, "truth", self.name)
        if truth.ndim != 1 or not np.isin(truth, (0, 1)).all():
            raise ValueError("features.extra['truth'] must be (N,) of 0/1")
        flagged = truth.astype(bool)
        return DetectionResult(self.name, flagged.astype(np.float64), flagged,
                               "poisoned" if flagged.any() else "clean", {"n_poisoned": int(flagged.sum())})
