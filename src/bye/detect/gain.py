"""``answer_gain``: how much more the provisional model believes a sample's answer than the base did,
compared with samples that ask similar questions.

For each sample the detector reads

    gain = log p_provisional(answer | image, question) - log p_base(answer | image, question)

(summed over the answer's tokens: the log-likelihood ratio of the whole answer, teacher-forced
exactly as in training; :func:`bye.detect.signals.answer_loglik`). The fine-tune raises every
answer's likelihood, by an amount set mostly by the answer's *type*: a lettered choice gains
little, a colour word a lot, a long answer more than a short one. So the raw gain separates
answer types, not poison. What singles out an all-to-one backdoor is that its target answer is
attached to questions whose clean answers are something else: against the samples that ask
similar questions, a poisoned sample's gain stands out. The score is therefore the residual

    score = gain - median(gain of the ``neighbours`` samples with the most similar questions)

(questions compared by TF-IDF cosine similarity, the sample itself excluded), and, as in BYE, a
two-component model locates the two modes of the scores and the cut goes through the widest
empty interval between them (a wide poisoned component would otherwise also win the clean
component's tails), everything above it flagged. The verdict
is BYE's rule (:func:`bye.detect.cluster.decide`: BIC, separation, minority) plus one condition
measured on clean worlds: an *empty gap* of at least ``min_gap`` kept-sample sigmas between the
highest kept and the lowest flagged score. On a clean submission the residuals are one
population and a two-component fit splits a continuum (gap ~0); a backdoor's samples sit apart.
It keeps BYE's premises: no clean data, no labels, no change to either model, only the base
model and the provisional fine-tune the scan already has.

Where it cannot work: it reads the text side. A target that is a plausible answer to the
questions it is attached to (a colour word on colour questions) gains no more than its
neighbours unless the backdoor itself is learned much better than the task; a poisoned
question type so dense that most of a sample's neighbours are poisoned moves the median; and a
submission whose questions share no words gives neighbours that are not similar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bye.detect.api import DetectionResult, Detector, SampleFeatures, register_detector
from bye.detect.cluster import VerdictRule, cluster_scores, decide, split_result


@dataclass(frozen=True)
class AnswerGainSettings:
    per_token: bool = False  # False: log-likelihood ratio of the whole answer; True: per answer token
    neighbours: int = 20  # compare with this many most similar questions; 0: the raw gain
    clustering: str = "gmm"  # "gmm" | "kmeans"
    seed: int = 0
    min_gap: float = 1.0  # verdict: an empty gap of this many kept-sample sigmas below the flagged ones
    verdict: VerdictRule = VerdictRule()
    use_verdict: bool = True  # False: always remove the high component


def answer_gain(features: SampleFeatures, *, per_token: bool = False) -> np.ndarray:
    """``(N,)`` float64 gain in nats from the extract stage's signals."""
    arrays = {}
    for key in ("answer_loglik", "answer_loglik_base", "answer_tokens"):
        value = features.extra.get(key)
        if value is None:
            raise ValueError(f"the 'answer_gain' detector needs features.extra[{key!r}] "
                             "(extract with signals: [answer_gain]), which is missing")
        arrays[key] = np.asarray(value, dtype=np.float64)
        if arrays[key].shape != (len(features),):
            raise ValueError(f"features.extra[{key!r}] has shape {arrays[key].shape} for {len(features)} samples")
    gain = arrays["answer_loglik"] - arrays["answer_loglik_base"]
    if per_token:
        gain = gain / np.maximum(arrays["answer_tokens"], 1.0)
    return gain


def neighbour_median(values: np.ndarray, questions: list[str], neighbours: int) -> np.ndarray:
    """``(N,)``: for each sample, the median of ``values`` over the ``neighbours`` other samples
    whose questions are most similar (TF-IDF, cosine; ties in a fixed order). With no word in
    any question, or a single sample, the median over all the others."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if len(questions) != n:
        raise ValueError(f"{len(questions)} questions for {n} samples")
    if n < 2:
        return values.copy()
    k = min(neighbours, n - 1)
    try:
        vectors = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b").fit_transform(list(questions))
    except ValueError:  # empty vocabulary: nothing to compare questions by
        return np.array([np.median(np.delete(values, i)) for i in range(n)])
    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(vectors)
    _, rows = index.kneighbors(vectors)
    return np.array([np.median(values[row[row != i][:k]]) for i, row in enumerate(rows)])


def widest_gap_cut(scores: np.ndarray, low: float, high: float) -> float:
    """The middle of the widest empty interval between consecutive finite scores in ``[low, high]``
    (the two modes); ``inf`` (nothing above the cut) when the modes are not two."""
    values = np.sort(scores[np.isfinite(scores)])
    between = values[(values >= low) & (values <= high)]
    if not np.isfinite(low) or not np.isfinite(high) or high <= low or len(between) < 2:
        return float("inf")
    step = int(np.argmax(np.diff(between)))
    return float((between[step] + between[step + 1]) / 2)


def empty_gap(scores: np.ndarray, flagged: np.ndarray) -> float:
    """``(lowest flagged score - highest kept score) / sd(kept scores)``: how far apart the two
    sides of a cut are, in the kept samples' sigmas (0 when nothing or everything is flagged)."""
    finite = np.isfinite(scores)
    high, kept = scores[flagged & finite], scores[~flagged & finite]
    if len(high) == 0 or len(kept) < 2 or kept.std() == 0:
        return 0.0
    return float((high.min() - kept.max()) / kept.std())


@register_detector("answer_gain")
class AnswerGainDetector(Detector):
    """Flags the samples whose answers gained far more likelihood than those of similar questions."""

    signals = ("answer_gain",)
    score_label = "score = answer log-likelihood gain (provisional - base) minus its neighbours' median (nats)"

    def __init__(self, **settings):
        verdict = settings.pop("verdict", None)
        self.settings = AnswerGainSettings(**settings, verdict=VerdictRule(**verdict) if isinstance(verdict, dict)
                                           else (verdict or VerdictRule()))
        if self.settings.neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {self.settings.neighbours}")

    def detect(self, features: SampleFeatures) -> DetectionResult:
        s = self.settings
        gain = answer_gain(features, per_token=s.per_token)
        scores = gain
        if s.neighbours:
            questions = features.extra.get("questions")
            if questions is None:
                raise ValueError("the 'answer_gain' detector needs features.extra['questions'] "
                                 "(or neighbours: 0), which is missing")
            scores = gain - neighbour_median(gain, [str(q) for q in questions], s.neighbours)
        # The two-component model locates the modes (cluster_scores flags the LOW component: hand
        # it minus the score); the cut is the widest empty interval between them.
        modes = cluster_scores(-scores, method=s.clustering, seed=s.seed)
        clusters = split_result(-scores, scores > widest_gap_cut(scores, -modes.high_mean, -modes.low_mean),
                                modes.method)
        verdict = decide(-scores, 1, clusters, s.verdict, seed=s.seed)
        gap = empty_gap(scores, clusters.flagged)
        reasons = list(verdict.reasons)
        if gap < s.min_gap:
            reasons.append(f"no empty gap below the flagged samples ({gap:.2f} < {s.min_gap} kept sigmas)")
        poisoned = not reasons
        flagged = clusters.flagged.copy()
        if s.use_verdict and not poisoned:
            flagged[:] = False
        cut = float(scores[clusters.flagged].min()) if clusters.flagged.any() else float("nan")
        details = {
            "clusters": {"n_flagged": int(clusters.flagged.sum()), "high_mean": -clusters.low_mean,
                         "high_sigma": clusters.low_sigma, "low_mean": -clusters.high_mean,
                         "low_sigma": clusters.high_sigma, "cut": cut},
            "verdict": "poisoned" if poisoned else "clean",
            "verdict_reasons": reasons,
            "evidence": {**{k: v for k, v in verdict.evidence.items() if k != "n_sensitive_layers"}, "gap": gap},
            "settings": asdict(s),
            "columns": {"gain": gain},  # per sample: scores.csv's "gain" column
        }
        label = details["verdict"] if s.use_verdict else ("poisoned" if flagged.any() else "clean")
        return DetectionResult(self.name, np.where(np.isfinite(scores), scores, -np.inf), flagged, label, details)
