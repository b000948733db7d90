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

(questions compared by TF-IDF cosine similarity, the sample itself excluded; ``neighbour_quantile``
replaces the median by a lower quantile, see below), and, as in BYE, a
two-component Gaussian mixture locates the two modes of the scores. The cut is the mixture's
*antimode*, its least dense point between the two means (``cut: antimode``): a backdoor's
scores are a wide component far above a narrow clean one, so the antimode sits at the clean
tail, and the widest empty interval between the modes (``cut: widest_gap``, the earlier rule)
can fall *inside* that wide component. Everything above the cut is flagged. The verdict is
BYE's rule (:func:`bye.detect.cluster.decide`: BIC, separation, minority) plus one condition
measured on clean worlds: the *lift* of the flagged samples, the median flagged score above the
median kept one in kept-sample robust sigmas (1.4826 MAD), must reach ``min_lift``. On a clean
submission the residuals are one population and a two-component fit splits a continuum: the
flagged side's median sits 2.1-2.5 robust sigmas up on three clean worlds, and no clean sample
at all lies beyond 5.1; a backdoor's samples sit 11-19 sigmas up at 5-10 % poison. ``min_lift:
6`` asks the flagged median to lie further out than any sample of those clean worlds did. The
empty gap between the two sides (:func:`empty_gap`) is reported as evidence.
It keeps BYE's premises: no clean data, no labels, no change to either model, only the base
model and the provisional fine-tune the scan already has.

Where it cannot work: it reads the text side. A target that is a plausible answer to the
questions it is attached to (a colour word on colour questions) gains no more than its
neighbours unless the backdoor itself is learned much better than the task; a poisoned
question type so dense that most of a sample's neighbours are poisoned moves the median (an
attacker who spends the whole budget on one question form: ``bye poison --questions``); and a
submission whose questions share no words gives neighbours that are not similar. Against the
dense form, a ``neighbour_quantile`` below 0.5 compares each gain with a low quantile of its
neighbours', which stays a clean value while fewer than about ``1 - q`` of them are poisoned;
alone it loses weak backdoors (1 % poison) that the median finds, so several quantiles can be
given: each one's residuals are cut and judged by the full verdict on their own (a quantile below
the median with the stricter ``low_quantile_min_lift``: on clean multiple-choice-only worlds such a
cut's flagged side reached a lift of 8.2, while every backdoor it caught sat at 13 or more), the submission
is poisoned when any is, the flagged set is the union of those cuts (the first passing cut alone
when the union would exceed the verdict's minority share) and the score the residual against the
lowest quantile. A form poisoned through and through looks, to the answers alone,
like a customer teaching a new answer for that form: no neighbourhood tells them apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bye.detect.api import DetectionResult, Detector, SampleFeatures, register_detector
from bye.detect.cluster import VerdictRule, cluster_scores, decide, robust_scale, split_result


@dataclass(frozen=True)
class AnswerGainSettings:
    per_token: bool = False  # False: log-likelihood ratio of the whole answer; True: per answer token
    neighbours: int = 20  # compare with this many most similar questions; 0: the raw gain
    neighbour_quantile: float | tuple[float, ...] = 0.5  # ... with this quantile of their gains (0.5: the
    # median); several: each one's residuals cut and judged alone, poisoned when any is (the union flagged)
    clustering: str = "gmm"  # "gmm" | "kmeans"
    seed: int = 0
    cut: str = "antimode"  # "antimode": least dense point of the mixture | "widest_gap": widest empty interval
    min_lift: float = 6.0  # verdict: flagged median this many kept robust sigmas above the kept median
    low_quantile_min_lift: float = 10.0  # the same for a cut against a quantile below the median
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


def neighbour_median(values: np.ndarray, questions: list[str], neighbours: int, quantile: float = 0.5) -> np.ndarray:
    """``(N,)``: for each sample, the median (or ``quantile``) of ``values`` over the ``neighbours``
    other samples whose questions are most similar (TF-IDF, cosine; ties in a fixed order). With no
    word in any question, or a single sample, over all the others."""
    return neighbour_quantiles(values, questions, neighbours, (quantile,))[0]


def neighbour_quantiles(values: np.ndarray, questions: list[str], neighbours: int,
                        quantiles: tuple[float, ...]) -> list[np.ndarray]:
    """:func:`neighbour_median` for several quantiles, the neighbours found once."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    for quantile in quantiles:
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"the neighbour quantile must be within [0, 1], got {quantile}")
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if len(questions) != n:
        raise ValueError(f"{len(questions)} questions for {n} samples")
    if n < 2:
        return [values.copy() for _ in quantiles]

    def statistics(rows: list[np.ndarray]) -> list[np.ndarray]:  # np.median itself for 0.5: bit-identical
        return [np.array([float(np.median(values[row]) if q == 0.5 else np.quantile(values[row], q)) for row in rows])
                for q in quantiles]

    k = min(neighbours, n - 1)
    try:
        vectors = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b").fit_transform(list(questions))
    except ValueError:  # empty vocabulary: nothing to compare questions by
        return statistics([np.delete(np.arange(n), i) for i in range(n)])
    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(vectors)
    _, rows = index.kneighbors(vectors)
    return statistics([row[row != i][:k] for i, row in enumerate(rows)])


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


def antimode_cut(scores: np.ndarray, *, seed: int = 0, points: int = 2001) -> float:
    """The least dense point between the two means of a two-component Gaussian mixture of the
    finite ``scores`` (on a grid of ``points``); ``inf`` (nothing above it) when there are not two."""
    from scipy.stats import norm
    from sklearn.mixture import GaussianMixture

    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)].reshape(-1, 1)
    if len(values) < 4 or np.ptp(values) == 0:
        return float("inf")
    mixture = GaussianMixture(n_components=2, random_state=seed).fit(values)
    means, sigmas = mixture.means_.ravel(), np.sqrt(mixture.covariances_.ravel())
    grid = np.linspace(means.min(), means.max(), points)
    density = sum(w * norm.pdf(grid, m, s) for w, m, s in zip(mixture.weights_, means, sigmas))
    return float(grid[int(np.argmin(density))])


def lift(scores: np.ndarray, flagged: np.ndarray) -> float:
    """``(median flagged - median kept) / (1.4826 MAD of the kept)``: how far up the flagged side
    sits, in the kept samples' robust sigmas (0 when nothing or everything is flagged)."""
    finite = np.isfinite(scores)
    high, kept = scores[flagged & finite], scores[~flagged & finite]
    if len(high) == 0 or len(kept) < 2:
        return 0.0
    spread = robust_scale(kept)
    return float((np.median(high) - np.median(kept)) / spread) if spread > 0 else float("inf")


CUTS = ("antimode", "widest_gap")


@register_detector("answer_gain")
class AnswerGainDetector(Detector):
    """Flags the samples whose answers gained far more likelihood than those of similar questions."""

    signals = ("answer_gain",)
    score_label = ("score = answer log-likelihood gain (provisional - base) minus its neighbours' median "
                   "(or lowest neighbour_quantile) (nats)")

    def __init__(self, **settings):
        verdict = settings.pop("verdict", None)
        self.settings = AnswerGainSettings(**settings, verdict=VerdictRule(**verdict) if isinstance(verdict, dict)
                                           else (verdict or VerdictRule()))
        if self.settings.neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {self.settings.neighbours}")
        if self.settings.cut not in CUTS:
            raise ValueError(f"unknown cut {self.settings.cut!r}; expected one of {CUTS}")
        if self.settings.cut == "antimode" and self.settings.clustering != "gmm":
            raise ValueError("cut: antimode reads the Gaussian mixture's density; k-means needs cut: widest_gap")

    def quantiles(self) -> tuple[float, ...]:
        q = self.settings.neighbour_quantile
        return tuple(float(x) for x in q) if isinstance(q, (list, tuple)) else (float(q),)

    def split(self, scores: np.ndarray, quantile: float = 0.5) -> dict:
        """Cut one residual vector and judge it: the flagged side, the verdict's reasons and evidence."""
        s = self.settings
        min_lift = s.min_lift if quantile >= 0.5 else s.low_quantile_min_lift
        # The two-component model locates the modes; the cut goes between them (cluster_scores and
        # split_result take the flagged side as the LOW one: hand them minus the score).
        if s.cut == "antimode":
            cut = antimode_cut(scores, seed=s.seed)
        else:
            modes = cluster_scores(-scores, method=s.clustering, seed=s.seed)
            cut = widest_gap_cut(scores, -modes.high_mean, -modes.low_mean)
        clusters = split_result(-scores, scores > cut, s.clustering)
        verdict = decide(-scores, 1, clusters, s.verdict, seed=s.seed)
        gap, up = empty_gap(scores, clusters.flagged), lift(scores, clusters.flagged)
        reasons = list(verdict.reasons)
        if up < min_lift:
            reasons.append(f"the flagged samples do not stand out (lift {up:.2f} < {min_lift} kept robust sigmas)")
        return {"clusters": clusters, "reasons": reasons, "evidence": {
            **{k: v for k, v in verdict.evidence.items() if k != "n_sensitive_layers"}, "lift": up, "gap": gap}}

    def detect(self, features: SampleFeatures) -> DetectionResult:
        s = self.settings
        gain = answer_gain(features, per_token=s.per_token)
        if not s.neighbours:  # the raw gain: no neighbours, so no quantile of theirs
            quantiles, residuals = (0.5,), [gain]
        else:
            questions = features.extra.get("questions")
            if questions is None:
                raise ValueError("the 'answer_gain' detector needs features.extra['questions'] "
                                 "(or neighbours: 0), which is missing")
            quantiles = self.quantiles()
            residuals = [gain - baseline for baseline in
                         neighbour_quantiles(gain, [str(q) for q in questions], s.neighbours, quantiles)]
        splits = [self.split(r, q) for r, q in zip(residuals, quantiles)]
        passing = [i for i, one in enumerate(splits) if not one["reasons"]]
        poisoned = bool(passing)
        chosen = splits[passing[0]] if passing else splits[0]  # the evidence reported on top
        clusters = chosen["clusters"]
        # What the cuts would remove: without the verdict every quantile's cut (the published
        # behaviour: always remove), else the cuts that pass (the first one's when none does).
        sources = range(len(splits)) if not s.use_verdict else (passing or [0])
        candidate = np.logical_or.reduce([splits[i]["clusters"].flagged for i in sources])
        if s.use_verdict and candidate.mean() > s.verdict.max_flagged_fraction:
            candidate = chosen["clusters"].flagged.copy()  # each cut is a minority; keep their union one too
        if len(splits) == 1:
            reasons = splits[0]["reasons"]
        else:
            reasons = [] if poisoned else [f"quantile {quantiles[i]:g}: {r}" for i, one in enumerate(splits)
                                           for r in one["reasons"]]
        # One score per sample: the residual against the lowest quantile, the largest of them.
        scores = residuals[int(np.argmin(quantiles))]
        lowest = float(scores[candidate].min()) if candidate.any() else float("nan")
        details = {
            "clusters": {"n_flagged": int(candidate.sum()), "high_mean": -clusters.low_mean,
                         "high_sigma": clusters.low_sigma, "low_mean": -clusters.high_mean,
                         "low_sigma": clusters.high_sigma, "cut": lowest},
            "verdict": "poisoned" if poisoned else "clean",
            "verdict_reasons": reasons,
            "evidence": chosen["evidence"],
            "settings": asdict(s),
            "columns": {"gain": gain},  # per sample: scores.csv's "gain" column
        }
        if len(splits) > 1:
            details["evidence"] = {**chosen["evidence"], "by_quantile": {
                f"{q:g}": {**one["evidence"], "poisoned": not one["reasons"], "n_flagged": int(one["clusters"].flagged.sum())}
                for q, one in zip(quantiles, splits)}}
        flagged = candidate if poisoned or not s.use_verdict else np.zeros(len(gain), dtype=bool)
        label = details["verdict"] if s.use_verdict else ("poisoned" if flagged.any() else "clean")
        return DetectionResult(self.name, np.where(np.isfinite(scores), scores, -np.inf), flagged, label, details)
