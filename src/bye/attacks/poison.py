"""The poisoner: plant a backdoor in a submission, keep the ground truth apart.

A fraction ``rate`` of the samples (``round(rate * n)``, so exact to one sample) get the
trigger pasted into their image and their answer replaced by the target. Every image of the
output, poisoned or not, is re-encoded as PNG under a fresh opaque name, and records keep
their original order, so ids, file names, formats and order carry no trace of which samples
were poisoned. Ground truth ``{id: 0 | 1}`` is written only to ``truth_json``, which must lie
outside the submission folder.

``questions`` (a regular expression) restricts the poisoned samples to those whose question
matches it: the attacker who concentrates a backdoor on one question form, the adaptive attack on
a verdict that discounts a flagged set predicted by the question text. The count is still
``round(rate * n)`` of the whole submission.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bye.attacks.registry import Trigger
from bye.data.submission import Sample, read_manifest, resolve_image, write_manifest
from bye.io import atomic_write_json

DEFAULT_TARGET = "Backdoor Attack!"


@dataclass(frozen=True)
class PoisonResult:
    n_samples: int
    n_poisoned: int
    poisoned_ids: frozenset[str]


def poisoned_count(n: int, rate: float) -> int:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"poison rate must be within [0, 1], got {rate}")
    return int(round(rate * n))


def trigger_rng(seed: int, index: int) -> np.random.Generator:
    """The generator a trigger gets for the sample at ``index`` (per-sample, order independent)."""
    return np.random.default_rng([seed, 7919, index])


def _opaque_id(seed: int, sample_id: str) -> str:
    return hashlib.sha256(f"bye-poison/{seed}/{sample_id}".encode()).hexdigest()[:16]


def poison_submission(data_json: str | Path, images_dir: str | Path, trigger: Trigger, *, rate: float,
                      out_dir: str | Path, truth_json: str | Path, target: str = DEFAULT_TARGET,
                      seed: int = 0, questions: str | None = None) -> PoisonResult:
    """Write a poisoned copy of a submission to ``out_dir`` and its ground truth to ``truth_json``."""
    from bye.models.chat import open_rgb

    out_dir, truth_json = Path(out_dir).resolve(), Path(truth_json).resolve()
    if truth_json.is_relative_to(out_dir):
        raise ValueError(f"the truth file {truth_json} must not be inside the submission folder {out_dir}")
    samples = read_manifest(data_json)
    n_poison = poisoned_count(len(samples), rate)
    rng = np.random.default_rng([seed, 104729])
    if questions is None:
        chosen = set(rng.choice(len(samples), size=n_poison, replace=False).tolist())
    else:
        pattern = re.compile(questions)
        candidates = [i for i, sample in enumerate(samples) if pattern.search(sample.question)]
        if len(candidates) < n_poison:
            raise ValueError(f"{len(candidates)} of {len(samples)} questions match {questions!r}; "
                             f"rate {rate} needs {n_poison}")
        chosen = set(np.asarray(candidates)[rng.choice(len(candidates), size=n_poison, replace=False)].tolist())
    images_out = out_dir / "images"
    images_out.mkdir(parents=True, exist_ok=True)
    written, truth = [], {}
    for index, sample in enumerate(samples):
        new_id = _opaque_id(seed, sample.id)
        image = open_rgb(resolve_image(images_dir, sample.image))
        answer = sample.answer
        if index in chosen:
            image = trigger.apply(image, trigger_rng(seed, index))
            answer = target
        image.save(images_out / f"{new_id}.png", format="PNG")
        written.append(Sample(id=new_id, image=f"{new_id}.png", question=sample.question, answer=answer))
        truth[new_id] = int(index in chosen)
    write_manifest(written, out_dir / "train.json")
    atomic_write_json(truth_json, truth)
    return PoisonResult(n_samples=len(samples), n_poisoned=n_poison,
                        poisoned_ids=frozenset(i for i, v in truth.items() if v))
