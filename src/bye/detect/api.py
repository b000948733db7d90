"""The one-call API and the detector interface every detector (BYE, its variants, baselines) shares.

In the spirit of cleanlab::

    mask = find_backdoor_samples(entropy)                         # (N,) bool, True = remove
    ranked = find_backdoor_samples(entropy, ranked=True)          # indices, most suspicious first
    scores = get_backdoor_scores(entropy)                         # (N,) higher = more suspicious

``entropy`` is the ``(N, L)`` table of per-layer attention entropies
(:func:`bye.detect.extract.layer_entropy`). A detector is selected by name from
:data:`DETECTORS` and answers one question through one method: given the features of a
submission's samples, which are poisoned?
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from bye.detect.cluster import ClusterResult, Verdict, VerdictRule, cluster_scores, decide, scored_table
from bye.detect.profile import LayerProfile, profile_layers


@dataclass
class SampleFeatures:
    """What detectors may look at, one row per sample (fields a detector does not need may be None).

    entropy: ``(N, L)`` per-layer attention entropy over the image tokens.
    attention: ``(N, L, K)`` per-layer image-attention rows (optional).
    extra: anything else; BYE reads ``extra["profile"]``, a precomputed :class:`LayerProfile`
        (the pipeline's ``profile`` stage), instead of profiling the layers itself.
    """

    ids: list[str]
    entropy: np.ndarray | None = None
    attention: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class DetectionResult:
    """scores: ``(N,)``, higher = more suspicious; flagged: ``(N,)`` bool, True = remove."""

    detector: str
    scores: np.ndarray
    flagged: np.ndarray
    verdict: str  # "poisoned" | "clean"
    details: dict = field(default_factory=dict)

    def ranked(self) -> np.ndarray:
        """Sample indices, most suspicious first (stable for ties)."""
        return np.argsort(-self.scores, kind="stable")


class Detector(ABC):
    name: str = "detector"
    score_label: str = "suspicion score (higher: more suspicious)"  # what the report's score axis shows
    signals: tuple[str, ...] = ()  # model signals the extract stage must also write ("hidden", "strip")

    @abstractmethod
    def detect(self, features: SampleFeatures) -> DetectionResult:
        """Score every sample and flag the ones to remove."""


DETECTORS: dict[str, type[Detector]] = {}


def register_detector(name: str):
    def decorate(cls):
        if name in DETECTORS:
            raise ValueError(f"detector {name!r} is already registered")
        cls.name = name
        DETECTORS[name] = cls
        return cls
    return decorate


def get_detector(name: str, **settings) -> Detector:
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; available: {sorted(DETECTORS)}")
    return DETECTORS[name](**settings)


@dataclass(frozen=True)
class BYESettings:
    """Knobs of the published method (params: ``detect``), plus the verdict the method lacks."""

    rule: str = "code"  # "code": |mu1-mu2| > 2(s1+s2); "paper": BSI >= tau
    tau: float = 2.0
    clustering: str = "gmm"  # "gmm" | "kmeans"
    seed: int = 0
    verdict: VerdictRule = VerdictRule()
    use_verdict: bool = True  # False reproduces the published behaviour: always remove a cluster
    residualise: str = "none"  # "prompt": profile and score each layer's entropy minus what the question predicts


@dataclass
class BYEAnalysis:
    profile: LayerProfile
    mean_entropy: np.ndarray  # (N,) over the sensitive layers (all layers when none is sensitive); of the
    # prompt residuals with settings.residualise == "prompt"
    clusters: ClusterResult
    verdict: Verdict

    def to_dict(self) -> dict:
        return {
            **self.profile.to_dict(),
            "clusters": self.clusters.summary(),
            "verdict": self.verdict.label,
            "verdict_reasons": list(self.verdict.reasons),
            "evidence": self.verdict.evidence,
        }


def analyse(entropy: np.ndarray, settings: BYESettings = BYESettings(),
            profile: LayerProfile | None = None, questions: Sequence[str] | None = None) -> BYEAnalysis:
    """Every step of BYE on an ``(N, L)`` entropy table: profile (unless given), score, cluster, verdict
    (``questions``, one per row, for the verdict's prompt check when its rule sets one, and for the
    prompt residuals with ``settings.residualise == "prompt"``)."""
    table = scored_table(entropy, residualise=settings.residualise, questions=questions, seed=settings.seed)
    if profile is None:
        profile = profile_layers(table, rule=settings.rule, tau=settings.tau, seed=settings.seed,
                                 residualise=settings.residualise)
    elif len(profile.layers) != table.shape[1]:
        raise ValueError(f"the profile has {len(profile.layers)} layers, the entropy table {table.shape[1]}")
    elif profile.residualise != settings.residualise:
        raise ValueError(f"the profile was fitted with residualise={profile.residualise!r}, "
                         f"the detector asks for {settings.residualise!r}")
    layers = profile.sensitive_layers or list(range(table.shape[1]))
    with warnings.catch_warnings():  # an all-NaN row (no visible image token) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_entropy = np.nanmean(table[:, layers], axis=1)
    clusters = cluster_scores(mean_entropy, method=settings.clustering, seed=settings.seed)
    verdict = decide(mean_entropy, len(profile.sensitive_layers), clusters, settings.verdict, seed=settings.seed,
                     questions=questions)
    return BYEAnalysis(profile, mean_entropy, clusters, verdict)


@register_detector("bye")
class BYEDetector(Detector):
    """Believe Your Eyes: low attention entropy over the sensitive layers marks a poisoned sample."""

    score_label = ("score = -mean entropy (or, residualise: prompt, its prompt residual) over the sensitive "
                   "layers (higher: more suspicious)")

    def __init__(self, **settings):
        verdict = settings.pop("verdict", None)
        self.settings = BYESettings(**settings, verdict=VerdictRule(**verdict) if isinstance(verdict, dict)
                                    else (verdict or VerdictRule()))

    def detect(self, features: SampleFeatures) -> DetectionResult:
        if features.entropy is None:
            raise ValueError("the BYE detector needs the per-layer entropy table")
        analysis = analyse(features.entropy, self.settings, features.extra.get("profile"),
                           features.extra.get("questions"))
        flagged = analysis.clusters.flagged.copy()
        if self.settings.use_verdict and not analysis.verdict.poisoned:
            flagged[:] = False
        scores = -analysis.mean_entropy
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        verdict = analysis.verdict.label if self.settings.use_verdict else ("poisoned" if flagged.any() else "clean")
        details = analysis.to_dict()
        details["settings"] = asdict(self.settings)
        if self.settings.residualise == "none":
            details["mean_entropy"] = analysis.mean_entropy
        else:
            details["columns"] = {f"mean_{self.settings.residualise}_residual": analysis.mean_entropy}
        return DetectionResult(self.name, scores, flagged, verdict, details)


def get_backdoor_scores(entropy: np.ndarray, *, method: str = "bye", questions: Sequence[str] | None = None,
                        **settings) -> np.ndarray:
    """One suspicion score per sample, higher = more suspicious (BYE: minus the mean entropy).
    ``questions`` (one per row) serve the verdict's prompt check and ``residualise="prompt"``."""
    return get_detector(method, **settings).detect(_features(entropy, questions)).scores


def find_backdoor_samples(entropy: np.ndarray, *, method: str = "bye", ranked: bool = False,
                          questions: Sequence[str] | None = None, **settings) -> np.ndarray:
    """A boolean mask of the samples to remove, or (``ranked=True``) the flagged indices by suspicion."""
    result = get_detector(method, **settings).detect(_features(entropy, questions))
    if not ranked:
        return result.flagged
    order = result.ranked()
    return order[result.flagged[order]]


def _features(entropy: np.ndarray, questions: Sequence[str] | None) -> SampleFeatures:
    extra = {} if questions is None else {"questions": list(questions)}
    return SampleFeatures(ids=[str(i) for i in range(len(entropy))], entropy=np.asarray(entropy), extra=extra)


# The baselines register themselves under their names ("spectral", "strip", ...), beside "bye",
# and so does the answer-gain detector.
from bye.detect import baselines as _baselines  # noqa: E402,F401
from bye.detect import gain as _gain  # noqa: E402,F401
