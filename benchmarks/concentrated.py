"""Poison concentrated on one question form (``attack.questions``): is it still found, and what does
answer_gain's neighbour quantile change?

An attacker who picks which samples to poison can spend the whole budget on one question form
("Is there ...?"). answer_gain compares each answer's gain with the median gain of the samples
that ask the most similar questions; once most of those are poisoned, the median is a poisoned
gain and the residuals hide the backdoor. Each cell poisons the demo world (``--world``) with a
trigger at a rate, optionally only among questions matching a pattern, runs the product's scan
with answer_gain (its own provisional length, ``provisional.by_method``), and scores the kept
extraction with every ``neighbours:quantile`` variant; ``--clean`` adds kept clean-world scans
(``verdict.py --method answer_gain --keep``) for the variants' false alarms.

    python benchmarks/concentrated.py --cells "badnets:0.1,badnets:0.1:^Is there" \\
        --variants 20:0.5,20:0.1 --keep .cache/concentrated --clean .cache/verdict_rebuilt/seed-1 \\
        [--out benchmarks/results/concentrated.json]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from common import machine, machine_line, read_truth_file, with_overrides

from bye.attacks.poison import poison_submission
from bye.config import load_params
from bye.data.submission import read_manifest
from bye.detect.api import get_detector
from bye.detect.scan import read_features, scan_submission
from bye.io import atomic_write_json, atomic_write_text
from bye.metrics import detection_metrics
from bye.settings import attack_settings, scan_settings, trigger

RESULTS = Path(__file__).parent / "results"


def key(neighbours: int, quantiles: tuple[float, ...]) -> str:
    return f"{neighbours}:" + "+".join(f"{q:g}" for q in quantiles)


def parse_cell(text: str) -> tuple[str, float, str | None]:
    name, rate, *pattern = text.strip().split(":", 2)
    return name, float(rate), (pattern[0] if pattern else None)


def score(features, truth: np.ndarray | None, detector: dict, neighbours: int, quantile: tuple[float, ...]) -> dict:
    result = get_detector("answer_gain", **{**detector, "neighbours": neighbours, "neighbour_quantile": quantile}
                          ).detect(features)
    record = {"verdict": result.verdict, "removed": float(result.flagged.mean()),
              "lift": result.details["evidence"].get("lift"), "reasons": list(result.details["verdict_reasons"])}
    if truth is not None:
        scores = np.nan_to_num(result.scores, nan=-np.inf, neginf=-1e9, posinf=1e9)
        metrics = detection_metrics(truth, result.flagged, scores)
        record.update({k: metrics[k] for k in ("precision", "recall", "f1", "auroc")})
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", required=True, help="comma-separated TRIGGER:RATE[:QUESTION_PATTERN]")
    parser.add_argument("--variants", default="20:0.5,20:0.1",
                        help="comma-separated NEIGHBOURS:QUANTILE[+QUANTILE...] (several: poisoned when any is)")
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--keep", type=Path, required=True, help="one folder per cell; a rerun reuses its scan")
    parser.add_argument("--clean", type=Path, nargs="*", default=[], help="kept clean-world folders (verdict.py)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS / "concentrated.json")
    args = parser.parse_args()
    params = with_overrides(load_params(args.params), args.overrides)
    lora, settings = scan_settings(params, method="answer_gain")
    variants = [(int(n), tuple(float(x) for x in q.split("+"))) for n, q in (v.split(":") for v in args.variants.split(","))]
    began = time.perf_counter()
    rows = []
    for cell in args.cells.split(","):
        name, rate, pattern = parse_cell(cell)
        folder = args.keep / "-".join(filter(None, [name, f"{rate:g}", pattern and pattern.strip("^").replace(" ", "_")]))
        submission, truth_json, scan = folder / "submission", folder / "truth.json", folder / "scan"
        if not (scan / "verdict.json").exists():
            poison_submission(args.world / "train.json", args.world / "images", trigger(name, params),
                              out_dir=submission, truth_json=truth_json,
                              **{**attack_settings(params), "rate": rate, "questions": pattern})
            scan_submission(submission / "train.json", submission / "images", args.base, scan,
                            finetune_settings=lora, settings=settings, progress=False)
        samples = read_manifest(submission / "train.json")
        features = read_features(samples, scan)
        truth = read_truth_file(truth_json, features.ids)
        form = None if pattern is None else float(truth.sum() / sum(bool(re.search(pattern, s.question))
                                                                    for s in samples))
        row = {"trigger": name, "rate": rate, "questions": pattern, "poisoned": int(truth.sum()),
               "share_of_form": form, "variants": {key(n, q): score(features, truth, settings.detector, n, q)
                                                   for n, q in variants}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    clean = []
    for folder in args.clean:
        scan = folder / f"scan-{lora.epochs:g}ep"  # verdict.py's scan with answer_gain's provisional length
        features = read_features(read_manifest(folder / "world" / "train.json"), scan)
        clean.append({"world": folder.name, "variants": {key(n, q): score(features, None, settings.detector, n, q)
                                                         for n, q in variants}})
        print(json.dumps(clean[-1]), flush=True)
    summary = {"machine": machine(), "base": str(args.base), "overrides": args.overrides,
               "provisional_epochs": lora.epochs, "cells": rows, "clean": clean,
               "seconds": time.perf_counter() - began}
    atomic_write_json(args.out, summary)
    atomic_write_text(args.out.with_suffix(".md"), markdown(summary, variants))


def markdown(summary: dict, variants: list[tuple[int, tuple[float, ...]]]) -> str:
    keys = [key(n, q) for n, q in variants]
    head = " | ".join(f"neighbours {k.replace(':', ', quantile ').replace('+', ' or ')}" for k in keys)
    lines = ["# Poison concentrated on one question form: answer_gain's neighbour quantile", "",
             f"Machine: {machine_line()}. Base `{summary['base']}`, the product's {summary['provisional_epochs']:g}-epoch "
             "provisional model per cell. Each variant: F1 (precision / recall), removed, verdict, lift.", "",
             f"| trigger | rate | poisoned questions | share of that form poisoned | {head} |",
             "|---|---|---|---|" + "---|" * len(keys)]
    for row in summary["cells"]:
        cells = [f"{r['f1']:.2f} ({r['precision']:.2f} / {r['recall']:.2f}), {r['removed']:.1%}, {r['verdict']}, "
                 f"{r['lift']:.1f}" for r in (row["variants"][k] for k in keys)]
        share = "—" if row["share_of_form"] is None else f"{row['share_of_form']:.0%}"
        lines.append(f"| {row['trigger']} | {row['rate']:g} | {row['questions'] or 'any'} | {share} | "
                     + " | ".join(cells) + " |")
    if summary["clean"]:
        lines += ["", f"| clean world | {head} |", "|---|" + "---|" * len(keys)]
        for row in summary["clean"]:
            cells = [f"{r['verdict']}, removed {r['removed']:.1%}, lift {r['lift']:.2f}"
                     for r in (row["variants"][k] for k in keys)]
            lines.append(f"| {row['world']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
