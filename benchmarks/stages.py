"""The matrix's cached stages beyond the cell (``benchmarks/cell.py``), DVC stages of ``benchmarks/dvc.yaml``:

* ``own``: for a detector with its own provisional length (``provisional.by_method``, e.g.
  answer_gain's), that model and its signals on the cell's submission (not the shared model's
  cell: the two are independent);
* ``after`` (10 % poison): a detector's filtered submission, fine-tuned as the product would
  (``finetune``), with clean accuracy and attack success rate on the test split. The references
  (``none``, ``oracle``) need only the submission, a detector with its own model only that model.

    python benchmarks/stages.py own --trigger badnets --rate 0.1
    python benchmarks/stages.py after --trigger badnets --detector answer_gain

Detectors never see the ground truth, except the oracle (the reference line).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cell import cell_dir, features_of
from common import world_arguments
from submission import read_truth, submission_files

from bye.config import load_params
from bye.data.submission import read_manifest, write_manifest
from bye.detect.api import DETECTORS, DetectionResult, SampleFeatures, get_detector
from bye.detect.scan import extract_submission
from bye.io import atomic_write_json
from bye.metrics import detection_metrics
from bye.models.evaluate import run_evaluation
from bye.models.finetune import finetune
from bye.settings import eval_settings, lora_settings, scan_settings, trigger

HERE = Path(__file__).parent
OWN, AFTER = HERE / "own", HERE / "after"
AFTER_RATE = 0.1
REFERENCES = ("none", "oracle")  # read no model


def own_dir(trigger_name: str, rate: float) -> Path:
    return OWN / f"{trigger_name}-{rate:g}"


def own_methods(params: dict) -> dict:
    """Detectors whose own provisional settings (``provisional.by_method``) differ from the shared ones."""
    shared = lora_settings(params, provisional=True)
    named = sorted((params.get("provisional") or {}).get("by_method") or {})
    return {m: s for m in named if (s := lora_settings(params, provisional=True, method=m)) != shared}


def build_own(trigger_name: str, rate: float, *, base: Path, params: dict) -> Path:
    """Each ``own_methods`` detector's provisional model and signals, on the cell's submission."""
    out = own_dir(trigger_name, rate)
    data, images = submission_files(trigger_name, rate)
    for method, lora in own_methods(params).items():
        began = time.perf_counter()
        summary = finetune(data, images, base, out / method / "adapter", lora)
        extract_submission(data, images, base, out / method / "adapter", out / method / "extract",
                           settings=scan_settings(params, method=method)[1].extract)
        atomic_write_json(out / method / "own.json", {
            "method": method, "trigger": trigger_name, "rate": rate, "epochs": lora.epochs,
            "seconds": time.perf_counter() - began, "provisional_finetune_seconds": summary["train_seconds"]})
    return out


def detector_settings(name: str, params: dict) -> dict:
    return scan_settings(params, method=name)[1].detector


def run_detector(name: str, features: SampleFeatures, truth: np.ndarray, params: dict) -> DetectionResult:
    """``name`` on ``features``; only the oracle is handed the ground truth."""
    if name == "oracle":
        features = replace(features, extra={**features.extra, "truth": truth})
    return get_detector(name, **detector_settings(name, params)).detect(features)


def detector_features(trigger_name: str, rate: float, name: str, params: dict) -> tuple[SampleFeatures, np.ndarray] | None:
    """What ``name`` reads in a cell: nothing but the sample ids for the references (``none``,
    ``oracle``), its own provisional model's signals when it has one (None while they are not
    computed for the length ``params`` asks for), else the shared model's."""
    if name in REFERENCES:
        ids = [s.id for s in read_manifest(submission_files(trigger_name, rate)[0])]
        return SampleFeatures(ids=ids), read_truth(trigger_name, rate, ids)
    if name in own_methods(params):
        extract = own_dir(trigger_name, rate) / name / "extract"
        return features_of(trigger_name, rate, extract) if own_epochs(trigger_name, rate, name) == \
            own_methods(params)[name].epochs else None
    return features_of(trigger_name, rate)


def own_epochs(trigger_name: str, rate: float, name: str) -> float | None:
    """The provisional length ``name``'s own model in a cell was trained for (None: not trained)."""
    path = own_dir(trigger_name, rate) / name / "own.json"
    return json.loads(path.read_text())["epochs"] if path.exists() else None


def finetune_and_evaluate(data: Path, images: Path, adapter: Path, trigger_name: str, *, world: Path, base: Path,
                          params: dict, reuse: Sequence[Path] = ()) -> tuple[dict, dict]:
    """The product's clean fine-tune on ``data`` (``finetune`` params; an adapter in ``reuse`` with the
    same fingerprint is copied), then clean accuracy and ``trigger_name``'s ASR on the world's test split:
    ``(fine-tune summary, evaluation metrics)``."""
    summary = finetune(data, images, base, adapter, lora_settings(params), reuse=list(reuse), progress=False)
    metrics = run_evaluation(world / "test.json", world / "images", base, adapter, eval_settings(params),
                             trigger=trigger(trigger_name, params), target=params.get("attack", {}).get("target"),
                             progress=False)
    return summary, metrics


def build_after(trigger_name: str, detector: str, *, world: Path, base: Path, params: dict) -> Path:
    """The clean fine-tune on ``detector``'s filtered submission, with its accuracy and ASR."""
    cell, out = cell_dir(trigger_name, AFTER_RATE), AFTER / f"{trigger_name}-{detector}"
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    found = detector_features(trigger_name, AFTER_RATE, detector, params)
    if found is None:
        raise SystemExit(f"{detector} has its own provisional model: run `stages.py own` for {cell.name} first")
    features, truth = found
    result = run_detector(detector, features, truth, params)
    data, images = submission_files(trigger_name, AFTER_RATE)
    samples = read_manifest(data)
    if result.flagged.any():
        data = out / "filtered.json"
        write_manifest([s for s, f in zip(samples, result.flagged) if not f], data)
    # the same training set as the undefended model (the cell's, when provisional = finetune) or as
    # another filtered set (the oracle's; the clean subset is the same for every trigger) gives the
    # same adapter: copied, not trained again (finetune checks the fingerprint of the inputs)
    oracle = AFTER / f"{trigger_name}-oracle" / "adapter"
    others = sorted(p for p in AFTER.glob("*/adapter") if p.parent != out and p != oracle)
    summary, metrics = finetune_and_evaluate(data, images, out / "adapter", trigger_name, world=world, base=base,
                                             params=params, reuse=[cell / "adapter", oracle, *others])
    detection = detection_metrics(truth, result.flagged)
    atomic_write_json(out / "after.json", {
        "trigger": trigger_name, "rate": AFTER_RATE, "detector": detector, "verdict": result.verdict,
        "removed": detection["removed"], "f1": detection["f1"], "accuracy": metrics["accuracy"], "asr": metrics["asr"],
        "reused_from": summary.get("reused_from"), "seconds": time.perf_counter() - began,
        "provisional_epochs": own_epochs(trigger_name, AFTER_RATE, detector) if detector in own_methods(params)
        else lora_settings(params, provisional=True).epochs})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    own = world_arguments(sub.add_parser("own"), rate=None)
    own.add_argument("--trigger", required=True)
    own.add_argument("--rate", type=float, required=True)
    after = world_arguments(sub.add_parser("after"), rate=None)
    after.add_argument("--trigger", required=True)
    after.add_argument("--detector", required=True, choices=sorted(DETECTORS))
    args = parser.parse_args()
    params = load_params(args.params)
    if args.command == "own":
        print(build_own(args.trigger, args.rate, base=args.base, params=params))
    else:
        print(build_after(args.trigger, args.detector, world=args.world, base=args.base, params=params))


if __name__ == "__main__":
    main()
