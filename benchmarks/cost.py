"""Cost benchmark: detection quality against the provisional fine-tune's length, and the overhead.

The provisional fine-tune is what BYE adds to the training bill. For each provisional length
(``--epochs``), on one poisoned world: fine-tune the provisional model, extract the attention,
run the detector, and report F1 / AUROC next to the seconds each step took. The clean fine-tune
(the ``finetune`` section's full length, on the same submission) is timed once in the same run,
so the overhead ratio ``(provisional + extraction + detection) / clean fine-tune`` compares
numbers from the same machine and the same minute.

    python benchmarks/cost.py --trigger badnets --rate 0.1 --epochs 0.5,1,2,3

Writes ``benchmarks/results/cost.json`` and ``cost.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from matrix import RESULTS, detector_settings, features_of  # benchmarks/ is the script's folder

from bye.attacks.poison import poison_submission
from bye.config import load_params
from bye.detect.api import get_detector
from bye.detect.scan import extract_submission
from bye.io import atomic_write_json, atomic_write_text
from bye.metrics import detection_metrics
from bye.models.finetune import finetune
from bye.settings import attack_settings, lora_settings, scan_settings, trigger
from threat import machine


def run(*, world: Path, base: Path, params: dict, trigger_name: str, rate: float, epochs: list[float],
        method: str) -> dict:
    record: dict = {"trigger": trigger_name, "rate": rate, "method": method, "machine": machine(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sub = tmp / "submission"
        poison_submission(world / "train.json", world / "images", trigger(trigger_name, params), out_dir=sub,
                          truth_json=tmp / "truth.json", **attack_settings(params, rate=rate))
        data, images = sub / "train.json", sub / "images"
        began = time.perf_counter()
        finetune(data, images, base, tmp / "clean", lora_settings(params), progress=False)
        record["clean_finetune_seconds"] = clean = time.perf_counter() - began
        record["clean_finetune_epochs"] = lora_settings(params).epochs
        _, scan = scan_settings(params, method=method)
        for n_epochs in epochs:
            cell = tmp / f"e{n_epochs:g}"
            t0 = time.perf_counter()
            finetune(data, images, base, cell / "adapter", lora_settings(params, provisional=True, epochs=n_epochs),
                     progress=False)
            t1 = time.perf_counter()
            extract_submission(data, images, base, cell / "adapter", cell / "extract",
                               settings=replace(scan.extract, keep_attention=True), progress=False)
            (cell / "truth.json").write_bytes((tmp / "truth.json").read_bytes())
            (cell / "submission").symlink_to(sub)
            t2 = time.perf_counter()
            features, truth = features_of(cell)
            result = get_detector(method, **detector_settings(method, params)).detect(features)
            t3 = time.perf_counter()
            scores = np.nan_to_num(result.scores, nan=-np.inf, neginf=-1e9, posinf=1e9)
            metrics = detection_metrics(truth, result.flagged, scores)
            row = {"epochs": n_epochs, "f1": metrics["f1"], "auroc": metrics["auroc"], "removed": metrics["removed"],
                   "verdict": result.verdict, "provisional_seconds": t1 - t0, "extract_seconds": t2 - t1,
                   "detect_seconds": t3 - t2, "overhead_ratio": (t3 - t0) / clean}
            record["runs"].append(row)
            print(json.dumps(row), flush=True)
    return record


def markdown(record: dict) -> str:
    lines = [f"# Cost benchmark: {record['trigger']} at {record['rate']:.0%} poison, detector `{record['method']}`", "",
             f"Clean fine-tune ({record['clean_finetune_epochs']:g} epochs): {record['clean_finetune_seconds']:.0f} s. "
             f"Machine: {record['machine']}.", "",
             "| provisional epochs | F1 | AUROC | removed | verdict | provisional s | extract s | detect s "
             "| overhead / clean fine-tune |", "|---|---|---|---|---|---|---|---|---|"]
    for r in record["runs"]:
        lines.append(f"| {r['epochs']:g} | {r['f1']:.2f} | {r['auroc']:.3f} | {r['removed']:.1%} | {r['verdict']} "
                     f"| {r['provisional_seconds']:.0f} | {r['extract_seconds']:.0f} | {r['detect_seconds']:.1f} "
                     f"| {r['overhead_ratio']:.2f}x |")
    lines += ["", "Target (issue: cheaper provisional fine-tune): overhead <= 0.5x the clean fine-tune, and the "
              "cheapest length within one F1 point of the best as the default."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--trigger", default="badnets")
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--epochs", default="0.5,1,2,3", help="comma-separated provisional lengths")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    method = params.get("cluster", {}).get("method", "bye")
    record = run(world=args.world, base=args.base, params=params, trigger_name=args.trigger, rate=args.rate,
                 epochs=[float(e) for e in args.epochs.split(",")], method=method)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "cost.json", record)
    atomic_write_text(RESULTS / "cost.md", markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
