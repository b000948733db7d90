"""Where the text-side detector should fail: backdoor targets that are plausible answers.

    python benchmarks/target.py --trigger badnets --rate 0.1 --targets A,red

For each target, poison the demo world's train split with the trigger at the rate, run the
provisional fine-tune and the extraction once (attention and the answer log-likelihoods), then
score every detector named by ``--methods`` against the ground truth. A lettered target is the
clean answer of every multiple-choice question; a colour word that of every colour question.
Writes ``benchmarks/results/target.json`` and ``target.md``; the machine is described inside.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import machine_line, read_truth_file, world_arguments

from bye.attacks.poison import poison_submission
from bye.config import load_params
from bye.data.submission import read_manifest
from bye.detect.api import get_detector
from bye.detect.scan import extract_submission, read_features
from bye.io import atomic_write_json, atomic_write_text
from bye.metrics import detection_metrics
from bye.models.finetune import finetune
from bye.settings import attack_settings, scan_settings, trigger

RESULTS = Path(__file__).parent / "results"


def run_target(target: str, args, params: dict, work: Path) -> dict:
    submission, truth_json = work / "submission", work / "truth.json"
    settings = {**attack_settings(params), "rate": args.rate, "target": target}
    poison_submission(args.world / "train.json", args.world / "images", trigger(args.trigger, params),
                      out_dir=submission, truth_json=truth_json, **settings)
    data, images = submission / "train.json", submission / "images"
    lora, scan = scan_settings(params)
    finetune(data, images, args.base, work / "adapter", lora, progress=False)
    extract_submission(data, images, args.base, work / "adapter", work / "extract", progress=False,
                       settings=replace(scan.extract, signals=("answer_gain",), keep_attention=False))
    features = read_features(read_manifest(data), work / "extract")
    truth = read_truth_file(truth_json, features.ids)
    rows = {}
    for method in args.methods.split(","):
        result = get_detector(method, **scan_settings(params, method=method)[1].detector).detect(features)
        metrics = detection_metrics(truth, result.flagged, result.scores)
        rows[method] = {k: metrics[k] for k in ("f1", "precision", "recall", "auroc", "removed")}
        rows[method]["verdict"] = result.verdict
        print(target, method, rows[method], flush=True)
    return rows


def main() -> None:
    parser = world_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--trigger", default="badnets")
    parser.add_argument("--targets", default="A,red")
    parser.add_argument("--methods", default="answer_gain,bye")
    args = parser.parse_args()
    params = load_params(args.params)
    began = time.perf_counter()
    results = {}
    for target in args.targets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            results[target] = run_target(target, args, params, Path(tmp))
    record = {"trigger": args.trigger, "rate": args.rate, "targets": results, "seconds": time.perf_counter() - began,
              "machine": machine_line()}
    atomic_write_json(RESULTS / "target.json", record)
    lines = [f"# Backdoor targets against detectors ({args.trigger}, {args.rate:.0%} poison)", "",
             f"Machine: {record['machine']}. Total {record['seconds'] / 60:.1f} min.", "",
             "| target | detector | F1 | precision | recall | AUROC | removed | verdict |", "|---|---|---|---|---|---|---|---|"]
    for target, rows in results.items():
        for method, m in rows.items():
            lines.append(f"| {target} | {method} | {m['f1']:.2f} | {m['precision']:.2f} | {m['recall']:.2f} "
                         f"| {m['auroc']:.3f} | {m['removed']:.1%} | {m['verdict']} |")
    atomic_write_text(RESULTS / "target.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
