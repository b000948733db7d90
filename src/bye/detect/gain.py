"""``answer_gain``: how much more the provisional model believes a sample's answer than the base did.

A backdoor is an easy rule (trigger -> one fixed answer) that the provisional fine-tune learns
far faster and more completely than the visual task itself (the observation behind Anti-Backdoor
Learning, Li et al. 2021). For each sample the detector reads

    gain = log p_provisional(answer | image, question) - log p_base(answer | image, question)

(summed over the answer's tokens: the log-likelihood ratio of the whole answer, teacher-forced
exactly as in training; :func:`bye.detect.signals.answer_loglik`). Poisoned samples carry an answer
the base model had no reason to expect and that the provisional model now gives with near
certainty, so their gain is large; clean answers gain what the task taught, which is limited by
how well the model learns the task. It keeps BYE's premises: no clean data, no labels, no change
to either model, only the two models the service already has.

Like BYE, the scores are split by a two-component model (the high-gain component is flagged) and
the same verdict rule (:func:`bye.detect.cluster.decide`) decides whether anything is removed.

Where it cannot work: it reads the text side, so a target answer that the clean task also
teaches (a plausible answer such as "yes") gains little more than its clean copies; and a clean
sample with a long, newly learned answer gains a lot. ``per_token`` divides by the number of
answer tokens, which removes the length effect and with it much of the signal of a long target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bye.detect.api import DetectionResult, Detector, SampleFeatures, register_detector
from bye.detect.cluster import VerdictRule, cluster_scores, decide


@dataclass(frozen=True)
class AnswerGainSettings:
    per_token: bool = False  # False: log-likelihood ratio of the whole answer; True: per answer token
    clustering: str = "gmm"  # "gmm" | "kmeans"
    seed: int = 0
    verdict: VerdictRule = VerdictRule()
    use_verdict: bool = True  # False: always remove the high-gain component


def answer_gain(features: SampleFeatures, *, per_token: bool = False) -> np.ndarray:
    """``(N,)`` float64 gain in nats (higher = more suspicious) from the extract stage's signals."""
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


@register_detector("answer_gain")
class AnswerGainDetector(Detector):
    """Flags the samples whose answers the provisional fine-tune made far more likely than the rest."""

    signals = ("answer_gain",)
    score_label = "score = answer log-likelihood, provisional - base (nats; higher: more suspicious)"

    def __init__(self, **settings):
        verdict = settings.pop("verdict", None)
        self.settings = AnswerGainSettings(**settings, verdict=VerdictRule(**verdict) if isinstance(verdict, dict)
                                           else (verdict or VerdictRule()))

    def detect(self, features: SampleFeatures) -> DetectionResult:
        s = self.settings
        gain = answer_gain(features, per_token=s.per_token)
        # cluster_scores flags the LOW component: hand it minus the gain
        clusters = cluster_scores(-gain, method=s.clustering, seed=s.seed)
        verdict = decide(-gain, 1, clusters, s.verdict, seed=s.seed)
        flagged = clusters.flagged.copy()
        if s.use_verdict and not verdict.poisoned:
            flagged[:] = False
        evidence = {k: v for k, v in verdict.evidence.items() if k != "n_sensitive_layers"}
        details = {
            "clusters": {**clusters.summary(), "cut_gain": -clusters.cut},
            "verdict": verdict.label,
            "verdict_reasons": list(verdict.reasons),
            "evidence": evidence,
            "settings": asdict(s),
            "gain_quantiles": {f"q{q}": float(np.nanpercentile(gain, q)) for q in (1, 50, 99)} if len(gain) else {},
        }
        label = verdict.label if s.use_verdict else ("poisoned" if flagged.any() else "clean")
        return DetectionResult(self.name, np.where(np.isfinite(gain), gain, -np.inf), flagged, label, details)
