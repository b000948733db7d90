"""The benchmark matrix: every trigger x poison rate x detector, on the same provisional models.

One *cell* per (trigger, rate): poison the world's train split, fine-tune the provisional model on
it, and keep every per-sample signal a detector may read (attention entropy and maps, the
decision position's hidden state, STRIP entropy, each answer's log-likelihood under the base
and the provisional model). Then every registered detector runs on every cell's features;
detectors never see the ground truth (except the oracle, the reference line).

    python benchmarks/matrix.py cell --trigger badnets --rate 0.1     # one cell (what DVC runs)
    python benchmarks/matrix.py summarise                              # all cells x detectors

Cells live in ``benchmarks/cells/<trigger>-<rate>/`` (DVC outputs of ``benchmarks/dvc.yaml``, so
``dvc repro`` there recomputes only what changed); results in ``benchmarks/results/matrix.json``
and ``matrix.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bye.config import load_params
from bye.data.submission import read_manifest
from bye.detect.api import DETECTORS, SampleFeatures, get_detector
from bye.detect.scan import extract_submission, read_features
from bye.io import atomic_write_json, atomic_write_text
from bye.metrics import detection_metrics
from bye.models.finetune import finetune
from bye.settings import attack_settings, scan_settings, trigger

HERE = Path(__file__).parent
CELLS, RESULTS = HERE / "cells", HERE / "results"


def cell_dir(trigger_name: str, rate: float) -> Path:
    return CELLS / f"{trigger_name}-{rate:g}"


def build_cell(trigger_name: str, rate: float, *, world: Path, base: Path, params: dict) -> Path:
    from bye.attacks.poison import poison_submission

    out = cell_dir(trigger_name, rate)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    settings = {**attack_settings(params), "rate": rate}
    poison_submission(world / "train.json", world / "images", trigger(trigger_name, params), out_dir=out / "submission",
                      truth_json=out / "truth.json", **settings)
    data = out / "submission" / "train.json"
    lora, scan = scan_settings(params)
    summary = finetune(data, out / "submission" / "images", base, out / "adapter", lora)
    extract_submission(data, out / "submission" / "images", base, out / "adapter", out / "extract",
                       settings=replace(scan.extract, signals=("answer_gain", "hidden", "strip"), keep_attention=True))
    atomic_write_json(out / "cell.json", {"trigger": trigger_name, "rate": rate, "seconds": time.perf_counter() - began,
                                          "provisional_finetune_seconds": summary["train_seconds"]})
    return out


def features_of(out: Path) -> tuple[SampleFeatures, np.ndarray]:
    features = read_features(read_manifest(out / "submission" / "train.json"), out / "extract")
    truth_map = json.loads((out / "truth.json").read_text())
    with np.load(out / "extract" / "attention.npz") as saved:
        features.attention = saved["attention"].astype(np.float32)
    return features, np.array([truth_map[i] for i in features.ids])


def detector_settings(name: str, params: dict) -> dict:
    _, scan = scan_settings(params, method=name)
    return scan.detector


def summarise(params: dict) -> dict:
    matrix: dict = {}
    cells = sorted(p for p in CELLS.glob("*-*") if (p / "cell.json").exists())
    for out in cells:
        cell = json.loads((out / "cell.json").read_text())
        features, truth = features_of(out)
        features.extra["truth"] = truth
        for name in sorted(DETECTORS):
            try:
                result = get_detector(name, **detector_settings(name, params)).detect(features)
            except ValueError as error:  # a feature this cell lacks
                print(f"{out.name} {name}: skipped ({error})")
                continue
            scores = np.nan_to_num(result.scores, nan=-np.inf, neginf=-1e9, posinf=1e9)
            metrics = detection_metrics(truth, result.flagged, scores)
            matrix.setdefault(name, {}).setdefault(cell["trigger"], {})[f"{cell['rate']:g}"] = {
                "f1": metrics["f1"], "precision": metrics["precision"], "recall": metrics["recall"],
                "auroc": metrics["auroc"], "removed": metrics["removed"], "verdict": result.verdict}
    record = {"matrix": matrix, "cells": [c.name for c in cells],
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, no GPU"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / "matrix.json", record)
    atomic_write_text(RESULTS / "matrix.md", markdown(matrix))
    figure(matrix, RESULTS / "matrix.png")
    return record


def figure(matrix: dict, path: Path) -> None:
    """F1 (and AUROC) per trigger per detector, one row of heatmaps per poison rate."""
    from matplotlib.figure import Figure

    detectors = sorted(matrix)
    triggers = sorted({t for per in matrix.values() for t in per})
    rates = sorted({r for per in matrix.values() for rates in per.values() for r in rates}, key=float)
    fig = Figure(figsize=(2 + 0.75 * len(triggers) * 2, 1 + 0.45 * len(detectors) * len(rates)), layout="constrained")
    axes = fig.subplots(len(rates), 2, squeeze=False)
    for row, rate in enumerate(rates):
        for col, key in enumerate(("f1", "auroc")):
            values = np.array([[matrix[d].get(t, {}).get(rate, {}).get(key, np.nan) for t in triggers]
                               for d in detectors], dtype=float)
            ax = axes[row, col]
            ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, "—" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if np.isnan(v) or v < 0.6 else "black")
            ax.set_xticks(range(len(triggers)), triggers, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(detectors)), detectors, fontsize=8)
            ax.set_title(f"{key.upper()} at {float(rate):.0%} poison", fontsize=9)
    fig.savefig(path, dpi=110, metadata={"Software": None})


def markdown(matrix: dict) -> str:
    cells = sorted({(t, r) for per in matrix.values() for t, rates in per.items() for r in rates})
    header = "| detector | " + " | ".join(f"{t} {float(r):.0%}" for t, r in cells) + " |"
    lines = [header, "|---|" + "---|" * len(cells)]
    for name, per in sorted(matrix.items()):
        row = []
        for t, r in cells:
            m = per.get(t, {}).get(r)
            row.append("—" if m is None else f"F1 {m['f1']:.2f} / AUROC {m['auroc']:.2f} / rm {m['removed']:.0%}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("cell")
    one.add_argument("--trigger", required=True)
    one.add_argument("--rate", type=float, required=True)
    sub.add_parser("summarise")
    for p in (one,):
        p.add_argument("--world", type=Path, default=Path("data/world"))
        p.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    if args.command == "cell":
        print(build_cell(args.trigger, args.rate, world=args.world, base=args.base, params=params))
    else:
        print(json.dumps(summarise(params)["matrix"], indent=1))


if __name__ == "__main__":
    main()
