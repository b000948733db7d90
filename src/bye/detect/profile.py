"""Bimodal layer profiling: which layers' entropies split the submission in two.

Per layer, a two-component 1-D Gaussian mixture is fitted to that layer's entropies over all
samples (``GaussianMixture(n_components=2, random_state=seed)``, as the public code). A layer is
*sensitive* when its two components are far apart by the selected rule:

* ``"code"`` (default, the public code's rule): ``|mu1 - mu2| > 2 (sigma1 + sigma2)``;
* ``"paper"`` (Eq. 7 with the square root REFERENCE §1 argues for):
  ``BSI = |mu1 - mu2| / sqrt(sigma1^2 + sigma2^2) >= tau`` with ``tau = 2.0``.

No sensitive layer is a result, not an error. The table profiled is the entropy itself, or with
``residualise="prompt"`` (an extension, not the published method) each layer's entropy minus what
the question text predicts of it (:func:`bye.detect.cluster.prompt_residuals`); the profile records which.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.mixture import GaussianMixture

RULES = ("code", "paper")


@dataclass(frozen=True)
class LayerStats:
    layer: int
    means: tuple[float, float]  # low-entropy component first
    sigmas: tuple[float, float]
    weights: tuple[float, float]
    gap: float  # |mu1 - mu2|
    bsi: float  # |mu1 - mu2| / sqrt(sigma1^2 + sigma2^2)
    code_margin: float  # |mu1 - mu2| - 2 (sigma1 + sigma2); > 0 passes the code's rule
    sensitive: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerProfile:
    rule: str
    tau: float
    layers: tuple[LayerStats, ...]
    residualise: str = "none"  # the table profiled: "none" (the entropies) or "prompt" (their prompt residuals)

    @property
    def sensitive_layers(self) -> list[int]:
        return [s.layer for s in self.layers if s.sensitive]

    def to_dict(self) -> dict:
        return {"rule": self.rule, "tau": self.tau, "residualise": self.residualise,
                "sensitive_layers": self.sensitive_layers, "layers": [s.to_dict() for s in self.layers]}

    @classmethod
    def from_dict(cls, record: dict) -> LayerProfile:
        """The inverse of :meth:`to_dict` (non-finite numbers may come back as strings: "nan")."""
        def pair(values):
            return tuple(float(v) for v in values)

        layers = tuple(LayerStats(int(s["layer"]), pair(s["means"]), pair(s["sigmas"]), pair(s["weights"]),
                                  float(s["gap"]), float(s["bsi"]), float(s["code_margin"]), bool(s["sensitive"]))
                       for s in record["layers"])
        return cls(rule=record["rule"], tau=float(record["tau"]), layers=layers,
                   residualise=record.get("residualise", "none"))


def fit_two_gaussians(values: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means, sigmas, weights) of a two-component mixture, sorted by mean; NaNs are left out."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)].reshape(-1, 1)
    mixture = GaussianMixture(n_components=2, random_state=seed).fit(values)
    means = mixture.means_.ravel()
    sigmas = np.sqrt(mixture.covariances_.reshape(-1))
    order = np.argsort(means)
    return means[order], sigmas[order], mixture.weights_[order]


def profile_layers(entropy: np.ndarray, *, rule: str = "code", tau: float = 2.0, seed: int = 0,
                   residualise: str = "none") -> LayerProfile:
    """Fit each layer of an ``(N, L)`` entropy table; mark the sensitive ones. ``residualise`` only
    labels the result: say "prompt" when ``entropy`` is the table of prompt residuals."""
    if rule not in RULES:
        raise ValueError(f"unknown separation rule {rule!r}; expected one of {RULES}")
    entropy = np.asarray(entropy, dtype=np.float64)
    stats = []
    for layer in range(entropy.shape[1]):
        column = entropy[:, layer]
        if np.isfinite(column).sum() < 4 or np.nanstd(column) == 0:
            stats.append(LayerStats(layer, (np.nan, np.nan), (np.nan, np.nan), (np.nan, np.nan),
                                    0.0, 0.0, -np.inf, False))
            continue
        means, sigmas, weights = fit_two_gaussians(column, seed=seed)
        gap = float(abs(means[1] - means[0]))
        bsi = gap / float(np.sqrt(sigmas[0] ** 2 + sigmas[1] ** 2) + 1e-12)
        code_margin = gap - 2.0 * float(sigmas[0] + sigmas[1])
        sensitive = code_margin > 0 if rule == "code" else bsi >= tau
        stats.append(LayerStats(layer, tuple(map(float, means)), tuple(map(float, sigmas)),
                                tuple(map(float, weights)), gap, bsi, code_margin, bool(sensitive)))
    return LayerProfile(rule=rule, tau=tau, layers=tuple(stats), residualise=residualise)
