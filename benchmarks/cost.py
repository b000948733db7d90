"""What the provisional fine-tune costs and buys: detection quality against its training length.

    python benchmarks/cost.py --triggers sig,badnets --rate 0.1 --epochs 0.5,1,2,3 [--method answer_gain]

For each trigger, poison the demo world's train split once; then, for each provisional length, run
the whole scan (provisional LoRA fine-tune, attention extraction, profile, cluster with the default
detector, or ``--method``) and score it against the ground truth. The clean fine-tune on the same submission is
timed once in the same run, so the filtering overhead is a ratio of two times measured side by side.
Writes ``benchmarks/results/cost.json`` and ``cost.md``; the machine is described inside.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from common import machine_line, world_arguments, write_results

from bye.attacks.poison import poison_submission
from bye.config import load_params
from bye.detect.scan import scan_submission
from bye.metrics import detection_metrics
from bye.models.finetune import finetune
from bye.settings import attack_settings, lora_settings, scan_settings, trigger

RESULTS = Path(__file__).parent / "results"


def sweep(trigger_name: str, rate: float, epochs: list[float], *, world: Path, base: Path, params: dict,
          work: Path, method: str | None = None) -> dict:
    submission, truth_json = work / trigger_name / "submission", work / trigger_name / "truth.json"
    poison_submission(world / "train.json", world / "images", trigger(trigger_name, params), out_dir=submission,
                      truth_json=truth_json, **{**attack_settings(params), "rate": rate})
    data, images = submission / "train.json", submission / "images"
    truth_map = json.loads(truth_json.read_text())
    began = time.perf_counter()
    finetune(data, images, base, work / trigger_name / "clean_adapter", lora_settings(params), progress=False)
    reference = time.perf_counter() - began
    rows = []
    lora, settings = scan_settings(params, method=method)
    for length in epochs:
        out = work / trigger_name / f"scan-{length:g}"
        record = scan_submission(data, images, base, out, finetune_settings=replace(lora, epochs=length),
                                 settings=settings, progress=False)
        scores = pd.read_csv(out / "scores.csv")
        truth = np.array([truth_map[i] for i in scores["id"].astype(str)])
        metrics = detection_metrics(truth, scores["flagged"].to_numpy(bool), scores["score"].to_numpy(float))
        seconds = record["timings_seconds"]
        overhead = sum(seconds.values())
        rows.append({"epochs": length, "f1": metrics["f1"], "precision": metrics["precision"],
                     "recall": metrics["recall"], "auroc": metrics["auroc"], "removed": metrics["removed"],
                     "verdict": record["verdict"], "seconds": seconds, "overhead_seconds": overhead,
                     "overhead_ratio": overhead / reference})
        print(trigger_name, rows[-1], flush=True)
    return {"clean_finetune_seconds": reference, "clean_finetune_epochs": lora_settings(params).epochs,
            "rows": rows}


def cheapest(results: dict, tolerance: float = 0.01) -> float | None:
    """The shortest provisional length whose F1 is within ``tolerance`` of the best on every trigger."""
    lengths = sorted({row["epochs"] for r in results.values() for row in r["rows"]})
    for length in lengths:
        if all(next(row["f1"] for row in r["rows"] if row["epochs"] == length)
               >= max(row["f1"] for row in r["rows"]) - tolerance for r in results.values()):
            return length
    return None


def markdown(record: dict) -> str:
    lines = [f"# Provisional fine-tune length against detection ({record['method']}, {record['rate']:.0%} poison)", "",
             f"Machine: {record['machine']}. Total {record['seconds'] / 60:.1f} min. Overhead = provisional "
             "fine-tune + extraction + profile/cluster, as a ratio of the clean fine-tune "
             f"({record['clean_finetune_epochs']:g} epochs) timed in the same run.", "",
             "| trigger | provisional epochs | F1 | precision | recall | AUROC | removed | verdict | overhead (s) | "
             "overhead / clean fine-tune |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in record["triggers"].items():
        for row in result["rows"]:
            lines.append(f"| {name} | {row['epochs']:g} | {row['f1']:.2f} | {row['precision']:.2f} | {row['recall']:.2f} "
                         f"| {row['auroc']:.3f} | {row['removed']:.1%} | {row['verdict']} | "
                         f"{row['overhead_seconds']:.0f} | {row['overhead_ratio']:.2f}x |")
    best = record["cheapest_within_one_point"]
    lines += ["", f"Cheapest length within one F1 point of the best on every trigger: "
              f"{'none' if best is None else f'{best:g} epochs'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = world_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--triggers", default="sig,badnets")
    parser.add_argument("--epochs", default="0.5,1,2,3")
    parser.add_argument("--method", default=None, help="detector (default: params' cluster.method)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/cost.json, cost_METHOD.json")
    args = parser.parse_args()
    params = load_params(args.params)
    method = scan_settings(params, method=args.method)[1].method
    out = args.out or RESULTS / ("cost.json" if method == "bye" else f"cost_{method}.json")
    epochs = [float(e) for e in args.epochs.split(",")]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: sweep(name, args.rate, epochs, world=args.world, base=args.base, params=params, work=Path(tmp),
                                 method=method)
                   for name in args.triggers.split(",")}
    record = {"method": method, "rate": args.rate, "triggers": results, "cheapest_within_one_point": cheapest(results),
              "clean_finetune_epochs": lora_settings(params).epochs, "seconds": time.perf_counter() - began,
              "machine": machine_line()}
    write_results(out, record, markdown(record))


if __name__ == "__main__":
    main()
